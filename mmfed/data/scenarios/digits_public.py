"""`digits-public`: public pretraining data for `digits-av`, disjoint from every digits-av site by
construction. `make run` pretrains on it before the private federation (mmfed.train.pretrained).

digits-av deals all 1,797 scikit-learn digit images to its sites, so no scikit-learn image can be public.
Here no record comes from any dataset:

- images: the digits 0-9 typeset in the fonts installed with Pillow (its built-in default font) and
  matplotlib (DejaVu, STIX, Computer Modern), each with its own seeded jitter (stroke width, rotation,
  shear, an elastic warp, aspect), then reduced the way the UCI optdigits images behind scikit-learn's
  digits were (their published preprocessing): the digit scaled to fill the height of a 32x32 bitmap,
  4x4 blocks counted -> 8x8, 0..16;
- audio: the spoken digit, through digits-av's own pipeline (espeak-ng + seeded rate, pitch, intonation,
  timing, gain and noise jitter), in espeak-ng voices that no digits-av voice uses — and with voice
  variants none of them uses (PUBLIC_VOICES).

One folder per public voice (the scenario's natural sites), ~20% of each digit in `test` (the split the
pretraining's hyper-parameters were chosen on). Layout under `root`, like digits-av:

    root/.digits-public.json                  marker: generator version, seed, voices, fonts, size
    root/voice_<k>_<voice-slug>/manifest.csv   id,label,split,image,audio,text,video,voice,font
    root/voice_<k>_<voice-slug>/images/<id>.png, audio/<id>.wav

<id> is `p<k>-<nnnn>`. Generated once, atomically and under a lock (mmfed.data.scenarios.build).
"""

from __future__ import annotations

import functools
import io
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mmfed.data.manifest import write_manifest
from mmfed.data.scenarios import BUILTINS
from mmfed.data.scenarios.build import build_once
from mmfed.data.scenarios.digits_av import AUDIO_SAMPLE_RATE, DIGITS_AV_VOICES, WORDS, Voice, _utterance
from mmfed.errors import ConfigError, DataError

SCENARIO = "digits-public"
GENERATOR_VERSION = 1  # bump when the output changes: existing generations and pretrained models rebuild
MARKER_NAME = ".digits-public.json"
TEST_FRACTION = 0.2
PER_VOICE = 300  # samples per voice (30 per digit): 1,800 in all
LABELS = list(BUILTINS[SCENARIO].labels)

# Accents digits-av uses too, but never with the same variant, and only variants (m2, f1, m4, f5, m6, m5)
# that no digits-av voice has: PUBLIC_VOICES ∩ DIGITS_AV_VOICES = ∅ by name and by variant (tested).
PUBLIC_VOICES: tuple[Voice, ...] = (
    Voice("en+m2", rate=175, pitch=50),
    Voice("en-us+f1", rate=165, pitch=55),
    Voice("en-gb-scotland+m4", rate=180, pitch=45),
    Voice("en-029+f5", rate=170, pitch=58),
    Voice("en-gb-x-rp+m6", rate=160, pitch=50),
    Voice("en-us-nyc+m5", rate=190, pitch=52),
)
# matplotlib's bundled fonts (mpl-data/fonts/ttf), and Pillow's own default font ("pillow")
FONTS: tuple[str, ...] = (
    "pillow",
    "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique",
    "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic",
    "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique",
    "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta",
    "cmr10", "cmss10", "cmtt10", "cmb10",
)  # fmt: skip
GLYPH = 64  # font size the digits are drawn at before the reduction to 8x8


def public_voices_disjoint() -> bool:
    """No public voice is a digits-av voice, and no public voice variant is one a digits-av voice uses."""
    site_names = {v.name for v in DIGITS_AV_VOICES}
    site_variants = {v.name.partition("+")[2] for v in DIGITS_AV_VOICES}
    return all(v.name not in site_names and v.name.partition("+")[2] not in site_variants
               for v in PUBLIC_VOICES)  # fmt: skip


def voice_dir(index: int, voice: Voice) -> str:
    return f"voice_{index}_{voice.slug}"


def generate_digits_public(root: Path, seed: int = 0, per_voice: int | None = None) -> list[Path]:
    """Build the public set under `root` (once) and return its voice folders in order (per_voice samples
    each, PER_VOICE when not given)."""
    per_voice = PER_VOICE if per_voice is None else per_voice
    if per_voice < 20:
        raise ConfigError("samples_per_voice", f"digits-public needs at least 20 per voice; got {per_voice}")
    return build_once(
        Path(root), _marker(seed, per_voice), lambda tmp: _write(tmp, seed, per_voice), MARKER_NAME
    )


def _marker(seed: int, per_voice: int) -> dict:
    import PIL

    return {
        "scenario": SCENARIO,
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "per_voice": per_voice,
        "voices": [asdict(v) for v in PUBLIC_VOICES],
        "fonts": list(FONTS),
        "pillow": PIL.__version__,  # glyph rasterisation may change with Pillow/FreeType
        "audio_sample_rate": AUDIO_SAMPLE_RATE,
    }


def _write(out: Path, seed: int, per_voice: int) -> list[Path]:
    import soundfile
    from PIL import Image

    folders = []
    for k, voice in enumerate(PUBLIC_VOICES):
        folder = out / voice_dir(k, voice)
        (folder / "images").mkdir(parents=True)
        (folder / "audio").mkdir()
        digits = np.arange(per_voice) % 10  # balanced: per_voice // 10 of each digit (+ the remainder)
        fonts = np.random.default_rng([seed, 2, k]).integers(0, len(FONTS), per_voice)
        seen = {d: 0 for d in range(10)}
        rows = []
        for i, (digit, font) in enumerate(zip(digits.tolist(), fonts.tolist(), strict=True)):
            sample_id = f"p{k}-{i:04d}"
            image = render_digit(digit, FONTS[font], np.random.default_rng([seed, 3, k, i]))
            Image.fromarray(np.rint(image * (255.0 / 16.0)).astype(np.uint8)).save(
                folder / "images" / f"{sample_id}.png"
            )
            wave = _utterance(WORDS[digit], voice, np.random.default_rng([seed, 4, k, i]))
            buffer = io.BytesIO()
            soundfile.write(buffer, wave, AUDIO_SAMPLE_RATE, subtype="PCM_16", format="WAV")
            (folder / "audio" / f"{sample_id}.wav").write_bytes(buffer.getvalue())
            n_digit = int(np.sum(digits == digit))
            # the first ~20% of each digit, at least one, and one left to train on
            test = seen[digit] < min(max(1, round(TEST_FRACTION * n_digit)), n_digit - 1)
            seen[digit] += 1
            rows.append({
                "id": sample_id,
                "label": str(digit),
                "split": "test" if test else "train",
                "image": f"images/{sample_id}.png",
                "audio": f"audio/{sample_id}.wav",
                "voice": voice.name,
                "font": FONTS[font],
            })  # fmt: skip
        write_manifest(folder, rows, LABELS)
        folders.append(folder)
    return folders


@functools.lru_cache(maxsize=len(FONTS))
def _font(name: str):
    from PIL import ImageFont

    if name == "pillow":
        return ImageFont.load_default(size=GLYPH)  # Pillow's own (needs FreeType, which its wheels have)
    import importlib.resources

    path = importlib.resources.files("matplotlib") / "mpl-data" / "fonts" / "ttf" / f"{name}.ttf"
    try:
        return ImageFont.truetype(str(path), GLYPH)
    except OSError as exc:
        raise DataError(f"digits-public: font {path} cannot be read ({exc}); reinstall matplotlib") from None


def render_digit(digit: int, font: str, rng: np.random.Generator) -> np.ndarray:
    """One typeset digit, jittered and reduced like optdigits: 8x8 int array of 0..16 on-pixel counts."""
    from PIL import Image, ImageDraw
    from scipy.ndimage import gaussian_filter, map_coordinates

    size = 2 * GLYPH
    canvas = Image.new("L", (size, size), 0)
    stroke = int(rng.integers(1, 4))  # pen width
    ImageDraw.Draw(canvas).text(
        (GLYPH, GLYPH), str(digit), fill=255, font=_font(font), anchor="mm", stroke_width=stroke,
        stroke_fill=255,
    )  # fmt: skip
    # rotation and shear about the centre (PIL takes the inverse map, output -> input)
    angle, shear = np.deg2rad(rng.uniform(-12.0, 12.0)), rng.uniform(-0.3, 0.3)
    a, b, d, e = np.cos(angle), -np.sin(angle) + shear, np.sin(angle), np.cos(angle)
    c = GLYPH - a * GLYPH - b * GLYPH
    f = GLYPH - d * GLYPH - e * GLYPH
    affine = (a, b, c, d, e, f)
    canvas = canvas.transform(canvas.size, Image.Transform.AFFINE, affine, Image.Resampling.BILINEAR)
    pixels = np.asarray(canvas, dtype=np.float32) / 255.0
    # an elastic warp (smooth random displacement field): strokes bend like a hand's
    sigma, alpha = 8.0, rng.uniform(0.0, 5.0)
    dy, dx = (gaussian_filter(rng.uniform(-1, 1, pixels.shape), sigma) * alpha * sigma for _ in range(2))
    yy, xx = np.mgrid[0:size, 0:size]
    bitmap = map_coordinates(pixels, [yy + dy, xx + dx], order=1) > 0.5
    ys, xs = np.nonzero(bitmap)
    if not ys.size:  # cannot happen for a digit glyph; refuse rather than write an empty image
        raise DataError(f"digits-public: digit {digit} in font {font} rendered empty")
    bitmap = bitmap[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    # the digit fills the bitmap's height; its width keeps the aspect (jittered), centred
    height, width = bitmap.shape
    width = int(np.clip(round(width * 32 / height * rng.uniform(0.8, 1.25)), 4, 32))
    scaled = Image.fromarray(bitmap.astype(np.uint8) * 255).resize((width, 32), Image.Resampling.BILINEAR)
    full = np.zeros((32, 32), dtype=bool)
    left = (32 - width) // 2
    full[:, left : left + width] = np.asarray(scaled) > 127
    return full.reshape(8, 4, 8, 4).sum(axis=(1, 3))


def build_sites(request) -> tuple[list[Path], None]:
    """mmfed.data.scenarios.BUILTINS' entry point (samples-per-site is ignored: the set has its size)."""
    return generate_digits_public(request.root(SCENARIO), seed=request.seed), None
