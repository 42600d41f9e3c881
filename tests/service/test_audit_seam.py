"""The audit seam: one registry of audit tasks, a study parsed once, rows that say which result object is theirs."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from models.bundles import BundleInfo
from service.audit import LABEL_TASK, MASK_TASK, task_for

REPO = Path(__file__).resolve().parents[2]


def _info(meta: dict) -> BundleInfo:
    return BundleInfo(Path("/nowhere"), {"class_names": ["a"], "content_hash": "x", **meta})


@pytest.mark.parametrize(("meta", "task"), [
    ({"task": "labels", "dims": 2}, LABEL_TASK),
    ({"task": "label error detection for 2-D image classification annotations"}, LABEL_TASK),  # older bundles
    ({"task": "segmentation", "dims": 2}, MASK_TASK),
    ({"task": "segmentation"}, MASK_TASK),
])
def test_each_kind_of_bundle_has_its_audit_task(meta, task):
    assert task_for(_info(meta)) is task


def test_a_kind_no_task_audits_is_a_clear_error():
    with pytest.raises(ValueError, match="no audit task for 4-D"):
        task_for(_info({"task": "segmentation", "dims": 4}))


def _string_branches(path: Path, literal: str) -> list[int]:
    """Lines where ``literal`` is compared with ``==``/``!=``/``in`` (a branch on the kind of annotation)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            if any(isinstance(p, ast.Constant) and p.value == literal for p in parts):
                out.append(node.lineno)
    return out


def test_no_package_branches_on_the_kind_of_annotation():
    """The task registries decide which audit, demo or command runs; nothing compares with "segmentation"."""
    found = {}
    for top in ("service", "dicom_io", "models"):
        for path in sorted((REPO / top).rglob("*.py")):
            lines = _string_branches(path, "segmentation") + _string_branches(path, "labels")
            if lines:
                found[str(path.relative_to(REPO))] = lines
    assert not found, found


@pytest.mark.slow
def test_an_audited_study_parses_each_input_file_once_and_rows_name_their_result_objects(small_demo, monkeypatch):
    from models.bundles import load_bundle
    from service.audit import ResultOptions, audit_study, resolve_vocabulary

    bundle = load_bundle(small_demo.bundle)
    vocabulary = resolve_vocabulary(bundle, small_demo.bundle, small_demo.data.vocabulary)
    studies = sorted({p.parent.parent for p in small_demo.data.studies_dir.rglob("*.dcm")})
    files = sorted(p for s in studies[:4] for p in s.rglob("*.dcm"))
    reads: Counter[str] = Counter()
    real = pydicom.dcmread

    def counting(fp, *a, **kw):
        reads[str(fp)] += 1
        return real(fp, *a, **kw)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    audits = []
    for s in studies[:4]:
        study_files = sorted(s.rglob("*.dcm"))
        audits.append(audit_study(study_files, bundle, vocabulary, device="cpu",
                                  options=ResultOptions(heatmaps_for_hard_cases=True)))
    assert {str(f) for f in files} == set(reads), "every input file is read"
    assert set(reads.values()) == {1}, {k: v for k, v in reads.items() if v != 1}
    for sa in audits:
        assert sa.rows, sa.issues
        by_uid = {str(ds.SOPInstanceUID): ds for ds in sa.datasets}
        assert by_uid[sa.report_uid].Modality == "SR"
        for row in sa.rows:
            if row.flagged:
                assert row.heatmap_uid is not None, row
            if row.heatmap_uid is not None:  # flagged, or a hard case with heatmaps_for_hard_cases
                assert by_uid[row.heatmap_uid].SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
                assert row.verdict in ("suspected_label_error", "hard_case")
                assert by_uid[row.heatmap_uid].SourceImageSequence[0].ReferencedSOPInstanceUID == row.image_uid
