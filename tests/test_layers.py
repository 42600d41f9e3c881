"""The import rules of the tree (docs/architecture.md, "Wings and what each may import").

``dicom_io`` and ``models`` never import each other or ``service``; inside ``service`` a wing imports
only wings below it (function-local imports count too): settings and migrations at the bottom, then
the runtime, the audit, the review, HTTP, the serve wiring, the demo and the CLI on top.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

WINGS = [  # bottom to top; a wing may import the wings before it
    ("service.settings", "service.migrations"),
    ("service.runtime",),
    ("service.audit",),
    ("service.review",),
    ("service.http",),
    ("service.serve",),
    ("service.demo",),
    ("service.cli", "service.__main__"),
]
RANK = {w: i for i, ws in enumerate(WINGS) for w in ws}


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in the file)."""
    out: dict[str, set[str]] = {}
    for top in ("service", "dicom_io", "models"):
        for path in sorted((REPO / top).rglob("*.py")):
            found: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module)
            out[_module(path)] = {m for m in found if m.split(".")[0] in ("service", "dicom_io", "models")}
    return out


def _wing(module: str) -> str | None:
    for w in sorted(RANK, key=len, reverse=True):
        if module == w or module.startswith(w + "."):
            return w
    return None


def test_every_service_module_is_in_a_wing():
    loose = sorted(m for m in _imports() if m.startswith("service") and m != "service" and _wing(m) is None)
    assert not loose, f"modules outside the wings (add them to one): {loose}"


@pytest.mark.parametrize("layer", ["dicom_io", "models"])
def test_dicom_io_and_models_import_neither_each_other_nor_service(layer: str):
    bad = {m: sorted(d for d in deps if d.split(".")[0] != layer)
           for m, deps in _imports().items() if m.split(".")[0] == layer}
    assert not {m: d for m, d in bad.items() if d}, bad


def _upward(imports: dict[str, set[str]]) -> list[str]:
    """``module -> dependency`` pairs where the dependency's wing is above the module's."""
    bad = []
    for m, deps in imports.items():
        wm = _wing(m)
        for d in deps:
            wd = _wing(d)
            if wm is not None and wd is not None and RANK[wd] > RANK[wm]:
                bad.append(f"{m} -> {d}")
    return sorted(bad)


def test_no_wing_imports_a_wing_above_it():
    bad = _upward(_imports())
    assert not bad, "\n".join(bad)


def test_the_rule_finds_an_upward_import():
    fake = {"service.runtime.pipeline": {"service.review.store", "service.runtime.jobs"},
            "service.http.api": {"service.review.store"}}
    assert _upward(fake) == ["service.runtime.pipeline -> service.review.store"]
