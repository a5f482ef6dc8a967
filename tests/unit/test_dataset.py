import torch

from mmfed.config import DataSpec
from mmfed.data.dataset import Collate, MultimodalDataset, Processors, modality_shapes
from mmfed.data.manifest import load_manifest, write_manifest
from mmfed.data.scenarios.synthetic import synthetic_site


def test_presence_mask_and_collate_of_mixed_modality_samples(tmp_path):
    site = synthetic_site(tmp_path / "syn", 0, samples=6, modalities=("image", "audio", "text"))
    full = load_manifest(site)
    # rewrite the manifest so samples carry different modality sets
    rows = []
    for i, s in enumerate(full.samples):
        row = {"id": s.id, "label": str(s.label), "split": s.split}
        if i % 3 != 1:
            row["image"] = s.image.relative_to(site.resolve()).as_posix()
        if i % 3 != 2:
            row["audio"] = s.audio.relative_to(site.resolve()).as_posix()
        if i % 2 == 0:
            row["text"] = s.text
        rows.append(row)
    write_manifest(site, rows)
    samples = load_manifest(site).samples
    spec = DataSpec()
    procs = Processors(spec, ("image", "audio", "text"), cache_dir=tmp_path / "cache")
    ds = MultimodalDataset(samples, procs)
    batch = Collate(spec, procs.modalities)([ds[i] for i in range(len(ds))])
    assert batch["presence"].tolist() == [[i % 3 != 1, i % 3 != 2, i % 2 == 0] for i in range(6)]
    for key, (shape, dtype) in modality_shapes(spec, procs.modalities).items():
        assert batch[key].shape == (6, *shape) and batch[key].dtype == dtype
    assert batch["image"][1].abs().sum() == 0 and batch["image"][0].abs().sum() > 0  # absent -> zeros
    assert batch["audio"][2].abs().sum() == 0 and batch["text_ids"][1].sum() == 0
    assert batch["label"].tolist() == [s.label for s in samples]


def test_run_modalities_subset_and_samples_without_any_are_left_out(tmp_path):
    site = synthetic_site(tmp_path / "syn", 1, samples=4, modalities=("image", "text"))
    rows = [{"id": "a", "label": "1", "split": "train", "text": "only text"}]
    rows += [
        {
            "id": s.id,
            "label": str(s.label),
            "split": s.split,
            "image": s.image.name and f"image/{s.image.name}",
        }
        for s in load_manifest(site).samples
    ]
    write_manifest(site, rows)
    procs = Processors(DataSpec(), ["image"])
    ds = MultimodalDataset(load_manifest(site).samples, procs)
    assert len(ds) == 4 and ds.dropped_no_modality == 1
    assert set(ds[0]) == {"label", "presence", "image"}


def test_empty_batch_is_well_formed():
    spec = DataSpec()
    batch = Collate(spec, ("image", "audio", "video"))([])
    assert batch["label"].shape == (0,) and batch["presence"].shape == (0, 3)
    assert batch["audio"].shape == (0, 1, spec.audio.n_features, spec.audio.frames)
    assert batch["video"].shape == (0, 3, 8, 48, 48)


def test_augmented_dataset_is_reproducible_under_torch_seed(tmp_path):
    site = synthetic_site(tmp_path / "syn", 2, samples=3, modalities=("image", "audio"))
    procs = Processors(DataSpec(), ("image", "audio"), cache_dir=tmp_path / "c")
    ds = MultimodalDataset(load_manifest(site).samples, procs, augment=True)
    torch.manual_seed(5)
    a = ds[0]
    torch.manual_seed(5)
    b = ds[0]
    assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["image"], b["image"])


def test_modality_dropout_hides_exactly_one_of_several_modalities(tmp_path):
    site = synthetic_site(tmp_path / "syn", 3, samples=20, modalities=("image", "audio"))
    procs = Processors(DataSpec(), ("image", "audio"), cache_dir=tmp_path / "c")
    samples = load_manifest(site).samples
    always = MultimodalDataset(samples, procs, modality_dropout=0.999)
    torch.manual_seed(0)
    items = [always[i] for i in range(len(always))]
    assert all(int(it["presence"].sum()) == 1 for it in items)
    assert {tuple(it["presence"].tolist()) for it in items} == {(True, False), (False, True)}
    assert all(("image" in it) == bool(it["presence"][0]) for it in items)
    never = MultimodalDataset(samples, procs)
    assert all(bool(never[i]["presence"].all()) for i in range(len(never)))
    image_only = MultimodalDataset(samples, Processors(DataSpec(), ["image"]), modality_dropout=0.999)
    assert all(bool(image_only[i]["presence"].all()) for i in range(3))  # never drops the only modality
