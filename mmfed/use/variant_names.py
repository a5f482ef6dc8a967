"""The names of export variants (`--variants`), parsed without importing torch: float, onnx, int8,
int8-static, pruneN and pruneN-structured (N: 1-99 percent)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mmfed.errors import MMFedError

_PRUNE = re.compile(r"^prune(\d{1,2})(-structured)?$")


@dataclass(frozen=True)
class Pruning:
    percent: int  # of the pruned layers' weights (unstructured) or of each layer's output channels
    structured: bool = False

    @property
    def name(self) -> str:
        return f"prune{self.percent}" + ("-structured" if self.structured else "")

    @property
    def method(self) -> str:
        if self.structured:
            return "L2-norm structured: output channels of each Conv, output rows of each Linear"
        return "L1 magnitude, unstructured, global over the pruned layers"

    @classmethod
    def parse(cls, name: str) -> Pruning | None:
        """`prune50` / `prune80-structured`; None when `name` is no pruning variant; an error when it is
        one with a share out of range."""
        match = _PRUNE.match(name)
        if match is None:
            return None
        percent = int(match.group(1))
        if not 1 <= percent <= 99:
            raise MMFedError(f"--variants {name!r}: prune a share of 1 to 99 percent, e.g. prune50")
        return cls(percent, match.group(2) is not None)


FIXED = ("float", "onnx", "int8", "int8-static")
DEFAULT = "float,onnx,int8,prune50,prune80"
TOLERANCE = 1e-4  # the largest |p_onnx - p_torch| an ONNX file may have on any record and class


def parse_variants(text: str) -> list[str]:
    """The variants asked for, in order, `float` first; `onnx` added when an int8 one needs it."""
    names: list[str] = []
    for name in (part.strip() for part in text.split(",")):
        if not name or name in names:
            continue
        if name not in FIXED and Pruning.parse(name) is None:
            raise MMFedError(
                f"--variants: unknown variant {name!r}; use float, onnx, int8, int8-static, pruneN (N% of "
                "the weights, 1-99, e.g. prune50) or pruneN-structured (N% of each layer's channels)"
            )
        names.append(name)
    if not names:
        raise MMFedError(f"--variants {text!r}: name at least one variant, e.g. {DEFAULT}")
    if any(n.startswith("int8") for n in names) and "onnx" not in names:
        names.insert(0, "onnx")  # the int8 files are made from the float ONNX graph
    return ["float", *(n for n in names if n != "float")]
