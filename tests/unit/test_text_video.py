import csv

import numpy as np
import pytest
import torch

from mmfed.config import TextSpec, VideoSpec
from mmfed.data.text import TextProcessor, load_tokenizer
from mmfed.data.video import VideoProcessor, sample_indices
from mmfed.errors import DataError


@pytest.fixture(scope="module")
def clinical_note(shared_data):
    with (shared_data / "covid_chestxray_subset" / "metadata_subset.csv").open(newline="") as fh:
        notes = [r["clinical_notes"] for r in csv.DictReader(fh) if len(r["clinical_notes"]) > 200]
    return notes[0]


def test_clinical_note_tokenised_offline_and_truncated(clinical_note):
    ids, mask = TextProcessor(TextSpec(max_length=32))(clinical_note)
    assert ids.shape == mask.shape == (32,) and ids.dtype == torch.long
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP], truncated to fit
    assert mask.sum() == 32


def test_short_text_is_padded_and_round_trips():
    ids, mask = TextProcessor(TextSpec(max_length=16))("Cough and fever")
    assert mask.tolist() == [1] * 5 + [0] * 11 and ids[5:].eq(0).all()
    assert load_tokenizer().decode(ids[1:4]) == "cough and fever"


def test_grid_clip_sampled_resized(shared_data, tmp_path):
    clip = shared_data / "grid_av_samples" / "video" / "bbaf2n.mpg"
    proc = VideoProcessor(VideoSpec(frames=8, size=48), tmp_path)
    x = proc(clip)
    assert x.shape == (3, 8, 48, 48) and x.dtype == torch.float32
    assert -1 <= x.min() and x.max() <= 1
    assert (x[:, 0] - x[:, -1]).abs().mean() > 0.01  # frames from different times differ
    assert torch.equal(proc(clip), x)  # cached result is identical
    grey = VideoProcessor(VideoSpec(frames=4, size=32, channels=1))(clip)
    assert grey.shape == (1, 4, 32, 32)


def test_uniform_frame_sampling():
    assert sample_indices(75, 5).tolist() == [7, 22, 37, 52, 67]
    assert sample_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]  # short clip: frames repeat
    idx = sample_indices(1000, 8)
    assert np.all(np.diff(idx) == 125)


def test_corrupt_video_names_file(tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    with pytest.raises(DataError, match="clip.mp4"):
        VideoProcessor(VideoSpec())(bad)
