"""`grid-av`: real GRID audio-visual sentence clips (video + audio + text), dealt into a few sites.

Reads a folder laid out like `shared/data/grid_av_samples`:

    transcripts.csv   file,code,transcript,command,color,preposition,letter,digit,adverb
    video/*.mpg       MPEG-1 video (360x288, 25 fps) with an MP2 stereo 44.1 kHz audio track

The label is the GRID command word (bin, lay, place, set). The transcript, used as the text modality,
starts with that word, so text alone leaks the label: with 11 clips this scenario is a smoke test that
every modality path (video, audio, text) loads and trains on real data, not a benchmark.

Writes under `root` (built once, atomically, under a lock: mmfed.data.scenarios.build):

    root/.mmfed-scenario.json        marker: generator version, seed, num_sites, site names
    root/site_<k>/manifest.csv       id,label,split,image,audio,text,video,tabular,speaker_clip
    root/site_<k>/labels.txt         bin, lay, place, set
    root/site_<k>/video/<code>.mpg   a byte copy of the clip
    root/site_<k>/audio/<code>.wav   its audio track, mixed to mono, 16 kHz, 16-bit PCM

<id> is the transcript's `code` (e.g. `bbaf2n`); `speaker_clip` is the source file name. The clips are
shuffled (seeded) and dealt round-robin to `num_sites` sites; in each site the last clip dealt is `test`
and the others `train` (a site with a single clip keeps it for training).

Licence: GRID (Cooke, Barker, Cunningham, Shao 2006) is distributed under CC BY 4.0; the generated sites
are derived from it and keep that licence and attribution. See the data folder's SOURCE.md.
"""

from __future__ import annotations

import csv
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmfed.data.manifest import write_manifest
from mmfed.data.scenarios import BUILTINS
from mmfed.data.scenarios.build import build_once
from mmfed.errors import ConfigError, DataError

SCENARIO = "grid-av"
GENERATOR_VERSION = "grid-av/1"  # bump when the output changes, so existing builds are replaced
LABELS = list(BUILTINS["grid-av"].labels)  # the task's classes, declared once
AUDIO_SAMPLE_RATE = 16000
TRANSCRIPTS = "transcripts.csv"
REQUIRED_COLUMNS = ("file", "code", "transcript", "command")
_CODE = re.compile(r"^[A-Za-z0-9_-]+$")  # the code becomes a file name: keep it to a safe alphabet
_LAYOUT = f"--data-dir must hold {TRANSCRIPTS} (columns {','.join(REQUIRED_COLUMNS)},...) and video/*.mpg"


@dataclass(frozen=True)
class Clip:
    code: str
    command: str
    transcript: str
    video: Path
    row: int  # 1-based data row of transcripts.csv (header not counted)


def read_transcripts(data_dir: Path) -> list[Clip]:
    """Every clip listed in transcripts.csv, checked (columns, command words, codes, files present)."""
    path = data_dir / TRANSCRIPTS
    if not path.is_file():
        raise DataError(f"{path}: not found. {_LAYOUT}")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}: column(s) {', '.join(missing)} missing from the header. {_LAYOUT}")
        reader.fieldnames = header
        rows = [(reader.line_num, {k: (v or "").strip() for k, v in r.items() if k}) for r in reader]
    clips: list[Clip] = []
    seen: dict[str, int] = {}
    for index, (line, cells) in enumerate(rows, start=1):
        if not any(cells.values()):
            continue  # blank line
        where = f"{path}, row {index} (line {line})"
        code, command, transcript = cells["code"], cells["command"].lower(), cells["transcript"]
        if not _CODE.match(code):
            raise DataError(f"{where}: code {code!r} must be letters, digits, '_' or '-' (it names files)")
        if code in seen:
            raise DataError(f"{where}: code {code!r} already used on row {seen[code]}; codes must be unique")
        seen[code] = index
        if command not in LABELS:
            raise DataError(
                f"{where}: unknown command word {cells['command']!r}; GRID commands are "
                f"{', '.join(LABELS)}. Fix the row or remove it"
            )
        words = transcript.lower().split()
        if not words or words[0] != command:  # the label must be the sentence's command word
            raise DataError(f"{where}: transcript {transcript!r} does not start with command {command!r}")
        video = data_dir / cells["file"]
        if not cells["file"] or not video.is_file():
            raise DataError(f"{where}: video {cells['file']!r} not found in {data_dir}; fix the file column")
        clips.append(Clip(code, command, transcript, video, index))
    if not clips:
        raise DataError(f"{path}: lists no clips. {_LAYOUT}")
    return clips


def probe_clip(clip: Clip) -> None:
    """Fail before building if a clip cannot be opened, has no picture or no sound (~5 ms a clip)."""
    import av

    what = f"{clip.video} (transcripts.csv row {clip.row})"
    try:
        with av.open(str(clip.video)) as container:
            if not container.streams.video:
                raise DataError(f"{what}: no video stream; replace the file with the GRID clip")
            if not container.streams.audio:
                raise DataError(f"{what}: no audio track; GRID clips carry one, use the original file")
            if next(container.decode(video=0), None) is None:  # a header alone is not a video
                raise DataError(f"{what}: the video holds no frames; replace the file with the GRID clip")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises many types
        raise DataError(f"{what}: cannot decode video ({exc!r}); replace it with the GRID clip") from exc


def extract_audio(clip: Clip, sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """The clip's first audio track as mono float32 in [-1, 1] at `sample_rate`."""
    import av

    what = f"{clip.video} (transcripts.csv row {clip.row})"
    try:
        with av.open(str(clip.video)) as container:
            if not container.streams.audio:
                raise DataError(f"{what}: no audio track; GRID clips carry one, use the original file")
            stream = container.streams.audio[0]
            # resample each channel; the mono mix is done below as a plain mean, because swresample's
            # stereo->mono matrix (0.707 per channel) can exceed full scale on float output
            resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=sample_rate)
            chunks = [o.to_ndarray() for f in container.decode(stream) for o in resampler.resample(f)]
            chunks += [o.to_ndarray() for o in resampler.resample(None)]  # flush the resampler's tail
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises many types
        raise DataError(f"{what}: cannot decode the audio track ({exc!r}); use the original file") from exc
    if not chunks:
        raise DataError(f"{what}: the audio track holds no samples; use the original file")
    y = np.concatenate(chunks, axis=1).mean(axis=0)
    # resampling overshoots slightly at near-full-scale peaks; clip so 16-bit PCM does not wrap
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def deal(clips: list[Clip], num_sites: int, seed: int) -> list[list[tuple[Clip, str]]]:
    """Seeded shuffle, round-robin into sites; the last clip dealt to a site of 2+ clips is its test."""
    order = np.random.default_rng(seed).permutation(len(clips))
    sites: list[list[Clip]] = [[] for _ in range(num_sites)]
    for position, index in enumerate(order):
        sites[position % num_sites].append(clips[int(index)])
    return [
        [(c, "test" if len(site) > 1 and i == len(site) - 1 else "train") for i, c in enumerate(site)]
        for site in sites
    ]


def _write(root: Path, clips: list[Clip], num_sites: int, seed: int) -> list[Path]:
    import soundfile

    sites = []
    for k, dealt in enumerate(deal(clips, num_sites, seed)):
        site = root / f"site_{k}"
        (site / "video").mkdir(parents=True)
        (site / "audio").mkdir()
        rows = []
        for clip, split in dealt:
            shutil.copyfile(clip.video, site / "video" / f"{clip.code}.mpg")
            wav = site / "audio" / f"{clip.code}.wav"
            soundfile.write(wav, extract_audio(clip), AUDIO_SAMPLE_RATE, subtype="PCM_16")
            rows.append(
                {
                    "id": clip.code,
                    "label": clip.command,
                    "split": split,
                    "video": f"video/{clip.code}.mpg",
                    "audio": f"audio/{clip.code}.wav",
                    "text": clip.transcript,
                    "speaker_clip": clip.video.name,
                }
            )
        write_manifest(site, rows, labels=LABELS)
        sites.append(site)
    return sites


def generate_grid_av(root: Path, data_dir: Path, seed: int = 0, num_sites: int = 3) -> list[Path]:
    """Site directories `site_0..site_<num_sites-1>` under `root`, built once per (seed, num_sites)."""
    data_dir = Path(data_dir)
    if isinstance(num_sites, bool) or not isinstance(num_sites, int) or num_sites < 1:
        raise ConfigError("num_sites", f"need at least 1 site, got {num_sites!r}")
    # fail early, before creating anything, if the data dir is wrong
    clips = read_transcripts(data_dir)
    if num_sites > len(clips):
        raise ConfigError(
            "num_sites", f"{num_sites} sites but {data_dir} has only {len(clips)} clips; use 1..{len(clips)}"
        )
    for clip in clips:
        probe_clip(clip)
    settings = {"scenario": SCENARIO, "generator": GENERATOR_VERSION, "seed": seed, "num_sites": num_sites}
    return build_once(Path(root), settings, lambda tmp: _write(tmp, clips, num_sites, seed))


def build_sites(request) -> tuple[list[Path], None]:
    """mmfed.data.scenarios.BUILTINS' entry point (one build per site count)."""
    root = request.root(SCENARIO)
    root = root.with_name(f"{root.name}-n{request.num_sites}")
    return generate_grid_av(root, request.data_dir, request.seed, request.num_sites), None
