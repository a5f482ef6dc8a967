"""The house rules, checked: lower layers never import higher ones, no module over 400 lines (data tables
aside), no function over 80 lines, and no module-level state shared by the sites a process serves."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mmfed"
# lower numbers are lower layers; a module may import its own layer and those below it
LAYERS = {
    "errors": 0, "files": 0, "config": 0, "task": 0, "screens": 0,
    "checkpoint": 1, "protected": 1, "runs": 1, "data": 1,
    "models": 2,
    "privacy": 3,
    "train": 4,
    "pki": 5, "federation": 5,
    "site": 6,
    "server": 7,
    "audit": 8, "use": 8, "cli": 9,
}  # fmt: skip
DATA_TABLES = {"data/deid_tables.py"}  # word lists and patterns: long by nature
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmfed."):
            found.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.module == "mmfed":
            found += [f"mmfed.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("mmfed.")]
    return found


def test_every_package_has_a_layer():
    assert {_layer(p) for p in MODULES if p.name != "__init__.py" or p.parent != PACKAGE} <= set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_lower_layer_imports_a_higher_one(path):
    mine = LAYERS[_layer(path)] if path.parent != PACKAGE or path.name != "__init__.py" else 0
    upward = [m for m in _imports(ast.parse(path.read_text())) if LAYERS[m.split(".")[1]] > mine]
    assert not upward, f"{_name(path)} (layer {mine}) imports {upward}"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_modules_and_functions_stay_small(path):
    text = path.read_text()
    if _name(path) not in DATA_TABLES:
        assert len(text.splitlines()) <= 400, f"{_name(path)}: split it by job"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 80
    ]
    assert not long, f"{_name(path)}: {long}"


def test_no_model_is_shared_between_the_sites_a_process_serves():
    import torch

    from mmfed.federation.config import FederationConfig
    from mmfed.site.loading import load_site

    cfg = FederationConfig(scenario="synthetic", sites=2, samples_per_site=12, modalities="image")
    first, second = (load_site(cfg, {"partition-id": i, "num-partitions": 2}) for i in range(2))
    assert first.model is not second.model
    with torch.no_grad():
        next(first.model.parameters()).add_(1.0)
    assert not torch.equal(next(first.model.parameters()), next(second.model.parameters()))
