"""Tabular: an inline manifest cell `name=value;name=value` (e.g. `age=54;sex=M`) -> a fixed-length
vector, as described by `TabularSpec` (mmfed.config)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mmfed.config import TabularSpec

if TYPE_CHECKING:
    import torch


def parse_cell(cell: str) -> tuple[dict[str, str], str | None]:
    """'age=54; sex=M' -> ({'age': '54', 'sex': 'M'}, None), or ({}, the problem) for a malformed cell."""
    fields: dict[str, str] = {}
    for part in cell.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            return {}, f"{part.strip()!r} is not name=value; write e.g. age=54;sex=M"
        if name in fields:
            return {}, f"{name!r} is given twice"
        fields[name] = value
    return fields, None


class TabularProcessor:
    def __init__(self, spec: TabularSpec):
        spec.validate()
        self.spec = spec

    def problem(self, cell: str) -> str | None:
        """Why this cell cannot be encoded (None when it can): checked for every sample before training."""
        fields, problem = parse_cell(cell)
        if problem:
            return problem
        for name, _ in self.spec.numeric:
            value = fields.get(name, "")
            if value:
                try:
                    number = float(value)
                except ValueError:
                    return f"{name}={value!r} is not a number; leave it empty when unknown"
                if not math.isfinite(number):
                    return f"{name}={value!r} is not a finite number"
        for name, values in self.spec.categorical:
            value = fields.get(name, "")
            if value and value not in values:
                return f"{name}={value!r} is not one of {', '.join(values)}; leave it empty when unknown"
        return None

    def __call__(self, cell: str) -> torch.Tensor:
        """[width] float32: (value / scale, known) per numeric feature, one-hot per categorical one."""
        import torch  # here, not at the top: the manifest reader (parse_cell) must stay torch-free

        fields, _ = parse_cell(cell)
        out: list[float] = []
        for name, scale in self.spec.numeric:
            value = fields.get(name, "")
            out += [float(value) / scale, 1.0] if value else [0.0, 0.0]
        for name, values in self.spec.categorical:
            out += [1.0 if fields.get(name) == v else 0.0 for v in values]
        return torch.tensor(out, dtype=torch.float32)
