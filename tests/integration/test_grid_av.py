"""The `grid-av` scenario: 11 real GRID clips (video + audio + transcript) dealt into sites."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch

from mmfed.config import AudioSpec, VideoSpec
from mmfed.data.audio import AudioProcessor
from mmfed.data.manifest import load_manifest
from mmfed.data.scenarios.build import MARKER
from mmfed.data.scenarios.grid_av import LABELS, deal, generate_grid_av, read_transcripts
from mmfed.data.video import VideoProcessor
from mmfed.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
N_CLIPS = 11


@pytest.fixture(scope="module")
def grid_data(shared_data) -> Path:
    return shared_data / "grid_av_samples"


@pytest.fixture(scope="module")
def transcripts(grid_data) -> dict[str, dict[str, str]]:
    with (grid_data / "transcripts.csv").open(newline="") as fh:
        return {r["code"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def built(grid_data, tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("grid") / "grid-av-s0"
    return root, generate_grid_av(root, grid_data, seed=0, num_sites=3)


@pytest.fixture(scope="module")
def manifests(built):
    return [load_manifest(site, labels=LABELS) for site in built[1]]


def _copy_data(src: Path, dst: Path) -> Path:
    """A writable copy (copytree would keep the shared data's read-only modes)."""
    (dst / "video").mkdir(parents=True)
    shutil.copyfile(src / "transcripts.csv", dst / "transcripts.csv")
    for clip in (src / "video").glob("*.mpg"):
        shutil.copyfile(clip, dst / "video" / clip.name)
    return dst


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_sites_cover_every_clip_once(built, manifests, transcripts, grid_data):
    root, sites = built
    assert [s.name for s in sites] == ["site_0", "site_1", "site_2"]
    assert all(s.parent == root for s in sites)
    ids = [s.id for m in manifests for s in m.samples]
    assert sorted(ids) == sorted(transcripts) and len(ids) == N_CLIPS
    assert sorted(len(m.samples) for m in manifests) == [3, 4, 4]  # round-robin
    for m in manifests:
        assert m.labels == LABELS and not m.skipped
        assert [s.split for s in m.samples].count("test") == 1
        assert m.samples[-1].split == "test"  # the last clip dealt
        assert m.extra_columns == ["speaker_clip"]
        n = len(m.samples)
        assert m.modality_counts() == {"image": 0, "audio": n, "text": n, "video": n, "tabular": 0}
        for s in m.samples:
            row = transcripts[s.id]
            assert LABELS[s.label] == row["command"]
            assert s.text == row["transcript"]
            assert s.extra["speaker_clip"] == Path(row["file"]).name
            assert s.video == (m.site_dir / "video" / f"{s.id}.mpg").resolve()
            # a byte copy of the source clip (id2_vcd_swwp2s.mpg is renamed to its code)
            assert s.video.read_bytes() == (grid_data / row["file"]).read_bytes()


def test_audio_is_mono_16k_speech(manifests):
    for m in manifests:
        for s in m.samples:
            info = soundfile.info(str(s.audio))
            assert (info.channels, info.samplerate, info.subtype) == (1, 16000, "PCM_16")
            assert 2.9 <= info.duration <= 3.0, (s.audio, info.duration)
            y, _ = soundfile.read(str(s.audio), dtype="float32")
            rms = float(np.sqrt(np.mean(y**2)))
            assert rms > 0.01, (s.audio, rms)  # real speech (~0.08-0.15), not a silent track


def test_processors_decode_the_build(manifests, tmp_path):
    video = VideoProcessor(VideoSpec())
    audio = AudioProcessor(AudioSpec(sample_rate=16000, duration_s=3.0), cache_dir=tmp_path)
    for m in manifests:
        for s in m.samples:
            v = video(s.video)
            assert v.shape == (3, 8, 48, 48) and torch.isfinite(v).all()
            assert v.std() > 0.05  # a face, not a blank frame
            a = audio(s.audio)
            assert a.shape == (1, 40, 1 + 48000 // 128) and np.isfinite(a).all()


def test_second_call_reuses_the_build(built, grid_data):
    root, sites = built
    before = _files(root)
    assert generate_grid_av(root, grid_data, seed=0, num_sites=3) == sites
    assert _files(root) == before  # nothing rewritten
    assert (root / MARKER).is_file()


def test_deal_is_seeded_and_splits_per_site(grid_data):
    clips = read_transcripts(grid_data)
    codes = lambda dealt: [[(c.code, split) for c, split in site] for site in dealt]  # noqa: E731
    assert codes(deal(clips, 3, seed=0)) == codes(deal(clips, 3, seed=0))
    assert codes(deal(clips, 3, seed=0)) != codes(deal(clips, 3, seed=1))
    one = deal(clips, 1, seed=0)
    assert [split for _, split in one[0]] == ["train"] * 10 + ["test"]
    each = deal(clips, N_CLIPS, seed=0)  # a site with a single clip keeps it for training
    assert all(len(site) == 1 and site[0][1] == "train" for site in each)


@pytest.mark.parametrize("num_sites", [0, -1, N_CLIPS + 1])
def test_bad_site_count(grid_data, tmp_path, num_sites):
    with pytest.raises(ConfigError, match="sites"):
        generate_grid_av(tmp_path / "out", grid_data, num_sites=num_sites)
    assert not (tmp_path / "out").exists()


def test_garbage_video_names_the_file(grid_data, tmp_path):
    data = _copy_data(grid_data, tmp_path / "data")
    (data / "video" / "lbax4n.mpg").write_bytes(b"this is not an mpeg stream" * 100)
    with pytest.raises(DataError, match=r"lbax4n\.mpg.*row 4"):
        generate_grid_av(tmp_path / "out", data)
    assert not (tmp_path / "out").exists()  # checked before anything is created


def test_missing_video_names_the_file_and_row(grid_data, tmp_path):
    data = _copy_data(grid_data, tmp_path / "data")
    (data / "video" / "pwij3p.mpg").unlink()
    with pytest.raises(DataError, match=r"row 8 .*pwij3p\.mpg"):
        generate_grid_av(tmp_path / "out", data)
    assert not (tmp_path / "out").exists()


def test_missing_transcripts_names_the_file(grid_data, tmp_path):
    data = _copy_data(grid_data, tmp_path / "data")
    (data / "transcripts.csv").unlink()
    with pytest.raises(DataError, match=r"transcripts\.csv: not found"):
        generate_grid_av(tmp_path / "out", data)
    assert not (tmp_path / "out").exists()


def test_unknown_command_names_the_row(grid_data, tmp_path):
    data = _copy_data(grid_data, tmp_path / "data")
    path = data / "transcripts.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace(",set,white,", ",jump,white,").replace(",set white", ",jump white")
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=r"transcripts\.csv, row 3 \(line 4\).*'jump'.*bin, lay, place, set"):
        generate_grid_av(tmp_path / "out", data)
    assert not (tmp_path / "out").exists()


def test_clip_without_audio_track(grid_data, tmp_path):
    data = _copy_data(grid_data, tmp_path / "data")
    target = data / "video" / "sbia1a.mpg"
    # remux the video stream alone: a real, decodable MPEG-1 file without sound
    with (
        av.open(str(grid_data / "video" / "sbia1a.mpg")) as src,
        av.open(str(target), "w", format="mpeg") as dst,
    ):
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    with pytest.raises(DataError, match=r"sbia1a\.mpg.*no audio track"):
        generate_grid_av(tmp_path / "out", data)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_grid_av_federation_trains_video_audio_and_text_under_dp(grid_data, tmp_path):
    """Every modality path (video, audio, text encoders + attention fusion) trains for 2 DP rounds."""
    import json

    import numpy as np
    from localgrid import run_federation
    from safetensors.numpy import load_file

    from mmfed.audit.check import audit_ledger
    from mmfed.federation.config import FederationConfig
    from mmfed.privacy.budget import LEDGER
    from mmfed.site import sitelog

    cfg = FederationConfig(
        scenario="grid-av",
        data_dir=str(grid_data),
        sites=3,
        rounds=2,
        batch_size=4,
        local_epochs=2,
        fusion="attention",
        noise_multiplier=1.0,
        min_sites=3,
        site_wait_s=2,
        cache_dir=str(tmp_path / "cache"),
        run_dir=str(tmp_path / "run"),
        state_dir=str(tmp_path / "state"),
    )
    summary = run_federation(cfg)
    assert summary["rounds_completed"] == 2 and summary["stopped"] is None
    config = json.load(open(tmp_path / "run" / "config.json"))
    assert config["model"]["modalities"] == ["audio", "text", "video"]
    first = load_file(str(tmp_path / "run" / "checkpoints" / "round_0001.safetensors"))
    second = load_file(str(tmp_path / "run" / "checkpoints" / "round_0002.safetensors"))
    for modality in ("video", "audio", "text"):
        keys = [k for k in first if k.startswith(f"encoders.{modality}.")]
        assert keys and any(not np.array_equal(first[k], second[k]) for k in keys), modality
    rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    fits = [r for r in rows if r["kind"] == "fit"]
    assert len(fits) == 6 and all(r["status"] == "accepted" and r["epsilon_prv"] > 0 for r in fits)
    assert not any("loss" in r for r in fits)  # under DP the train loss stays at the site, in its log
    for site in summary["site_epsilon"]:
        home = tmp_path / "state" / site
        released = [e for e in sitelog.entries(home) if e["event"] == "released"]
        assert len(released) == 2 and all(np.isfinite(e["loss"]) for e in released)
        assert len(open(home / LEDGER).read().splitlines()) == 2
        assert audit_ledger(home / LEDGER, home).ok
