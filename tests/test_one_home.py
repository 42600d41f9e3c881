"""One definition of each shared thing: verdicts, model-input preprocessing, our own outputs, and the local
peers and tools that the demo, the tests and the benchmarks start (``harness``, never test code)."""

from __future__ import annotations

import ast
import os
import re
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from dicom_io import codes
from dicom_io.results.series import is_own_output
from dicom_io.sop import ANNOTATION_STORAGE, is_annotation
from models.preprocess import to_model_input
from models.verdict import FLAGGED, Verdict


def test_the_dicom_code_table_covers_exactly_the_verdicts():
    assert set(codes.VERDICT_CODES) == {v.value for v in Verdict}
    assert codes.FLAGGED_VERDICTS == {v.value for v in FLAGGED}
    assert len({c.value for c in codes.VERDICT_CODES.values()}) == len(Verdict)
    assert set(codes.VERDICT_COUNT_CODES) == set(codes.VERDICT_CODES)


def test_annotation_sop_classes_include_extensible_sr_and_label_map_seg():
    assert "1.2.840.10008.5.1.4.1.1.88.35" in ANNOTATION_STORAGE  # the pipeline's old copy lacked it
    assert is_annotation("1.2.840.10008.5.1.4.1.1.66.7")
    assert not is_annotation("1.2.840.10008.5.1.4.1.1.88.59")  # KOS carries no label


@pytest.mark.parametrize(("manufacturer", "series", "own"), [
    ("labelqa", 9901, True), ("labelqa", "9906", True), ("labelqa", 1, False), ("labelqa", 200, False),
    ("labelqa", 9907, False),  # a reviewer's corrected annotation is an annotation
    ("ACME", 9901, False), (None, None, False), ("labelqa", "x", False),
])
def test_own_output_rule(manufacturer, series, own):
    assert is_own_output(manufacturer, series) is own


def test_a_dicom_read_frame_and_the_same_file_read_for_training_give_the_same_model_input(tmp_path):
    """The train/serve skew check: training reads the PNG, the audit reads the dicomized image."""
    from dicom_io.annotations import read_study
    from models.data import load_dataset
    from service.demo.dicomize import dicomize

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(2):
            # non-square, smooth + noise, so that any difference in filtering or rounding shows
            yy, xx = np.mgrid[:70, :53]
            img = (127 + 100 * np.sin(xx / 5.0 + i) * np.cos(yy / 7.0) + rng.normal(0, 10, (70, 53))).clip(0, 255)
            Image.fromarray(img.astype(np.uint8), mode="L").save(tmp_path / "data" / cls / f"{i}.png")
    size = 32
    train = load_dataset(tmp_path / "data", size, cache_dir=None)
    by_id = {i: train.images[k] for k, i in enumerate(train.ids)}
    res = dicomize(tmp_path / "data", tmp_path / "dcm")
    manifest = (tmp_path / "dcm" / "manifest.csv").read_text().splitlines()[1:]
    n = 0
    for line in manifest:
        src, study, image_uid = line.split(",")[:3]
        aset = read_study(tmp_path / "dcm" / study, None, pixel_transform=lambda a: to_model_input(a, size))
        (sample,) = aset.samples
        assert sample.provenance.image_uid == image_uid
        np.testing.assert_allclose(sample.pixels, by_id[src], atol=1e-5)
        n += 1
    assert n == res.n_images == 4
    ds = pydicom.dcmread(next((tmp_path / "dcm").rglob("IMG_*.dcm")))
    assert (ds.Rows, ds.Columns) == (70, 53)


def test_every_private_code_value_is_defined_once():
    import re

    from dicom_io import codes

    text = open(codes.__file__).read()
    values = re.findall(r'_c\("(LQA-[0-9]+)"', text)
    assert values and len(values) == len(set(values)), sorted(v for v in values if values.count(v) > 1)


# -- the local peers and tools: one harness (harness), no test code outside tests/ ---------------------
_REPO = Path(__file__).resolve().parents[1]
_SHIPPED_AND_BENCHMARKS = ("benchmarks", "service", "dicom_io", "models", "scripts")


@cache
def _python_files(*tops: str) -> list[Path]:
    """The repository's Python files under ``tops`` (all when empty), never descending into dot folders
    (``.venv``, ``.git``: walking them costs a second per call)."""
    roots = [_REPO / t for t in tops] if tops else [_REPO]
    found: list[Path] = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
            found += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return sorted(found)


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _imports_tests(tree: ast.AST) -> list[str]:
    """``import tests...``, ``from tests... import``, ``__import__("tests...")``, ``import_module("tests...")``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name == "tests" or a.name.startswith("tests.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "tests" or node.module.startswith("tests."):
                found.append(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            arg = node.args[0].value
            if name in ("__import__", "import_module") and isinstance(arg, str) and arg.split(".")[0] == "tests":
                found.append(arg)
    return found


def test_no_shipped_module_or_benchmark_imports_the_tests():
    offenders = {}
    for path in _python_files(*_SHIPPED_AND_BENCHMARKS):
        found = _imports_tests(_tree(path))
        if found:
            offenders[str(path.relative_to(_REPO))] = found
    assert not offenders, f"import test code (move it to harness/): {offenders}"


def test_the_import_check_sees_every_form():
    src = "import tests\nfrom tests.conftest import x\nimport tests.a as b\n__import__('tests.pg')\n" \
          "importlib.import_module('tests.x')\nfrom harness import peers\nimport testsuite\n"
    assert _imports_tests(ast.parse(src)) == ["tests", "tests.conftest", "tests.a", "tests.pg", "tests.x"]


def _calls(node: ast.AST) -> set[str]:
    """Names of the functions and methods called under ``node``."""
    return {getattr(c.func, "id", None) or getattr(c.func, "attr", "")
            for c in ast.walk(node) if isinstance(c, ast.Call)}


def test_only_one_class_launches_orthanc():
    """The Orthanc executable is looked up in one function, and one class starts it (demo, tests, benchmarks)."""
    lookup = re.compile(r"""which\(\s*["']Orthanc["']\s*\)|/usr/sbin/Orthanc""")
    here = Path(__file__).resolve()
    looked_up = sorted(str(p.relative_to(_REPO)) for p in _python_files() if p.resolve() != here
                       and lookup.search(p.read_text(encoding="utf-8")))
    assert looked_up == ["service/demo/peers.py"], looked_up
    launchers = []
    for path in _python_files():
        for cls in (n for n in ast.walk(_tree(path)) if isinstance(n, ast.ClassDef)):
            calls = _calls(cls)
            if "orthanc_binary" in calls and calls & {"popen", "Popen", "run", "call", "check_call"}:
                launchers.append(f"{path.relative_to(_REPO)}::{cls.name}")
    assert launchers == ["service/demo/peers.py::Orthanc"], launchers


@pytest.mark.parametrize("name", ["free_port", "labelqa_cmd", "labelqa_env", "NetNamespace", "start_storescp",
                                  "start_orthanc", "start_pg_server", "RayCluster", "make_study", "small_demo_for",
                                  "LocalArchive", "can_unshare_net"])
def test_each_harness_helper_is_defined_once(name: str):
    homes = _definitions().get(name, [])
    assert len(homes) == 1 and homes[0].startswith(("harness/", "service/demo/peers.py")), homes


@cache
def _definitions() -> dict[str, list[str]]:
    """Function and class name -> the files that define it (one walk over the repository)."""
    out: dict[str, list[str]] = {}
    for path in _python_files():
        for n in ast.walk(_tree(path)):
            if isinstance(n, ast.FunctionDef | ast.ClassDef):
                out.setdefault(n.name, []).append(str(path.relative_to(_REPO)))
    return out


def _library_modules() -> list[Path]:
    """The shipped modules whose names others import: everything but package faces, CLI modules,
    ``__main__`` and the migration scripts."""
    return [p for p in _python_files("service", "dicom_io", "models")
            if p.name != "__init__.py" and "cli" not in p.parts and p.name != "__main__.py"
            and "migrations" not in p.parts]


def test_every_library_module_declares_its_public_names():
    missing, unknown = [], {}
    for path in _library_modules():
        tree = _tree(path)
        decl = [n for n in tree.body if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)]
        if not decl:
            missing.append(str(path.relative_to(_REPO)))
            continue
        names = set(ast.literal_eval(decl[0].value))
        bound = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
                 for a in n.names}
        for n in tree.body:
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                bound.add(n.name)
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) else []):
                bound |= {e.id for e in ast.walk(t) if isinstance(e, ast.Name)}
        if names - bound:
            unknown[str(path.relative_to(_REPO))] = sorted(names - bound)
    assert not missing, f"modules without __all__: {missing}"
    assert not unknown, f"__all__ names nothing of that name: {unknown}"
