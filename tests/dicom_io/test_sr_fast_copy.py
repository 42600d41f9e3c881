"""The QA report built with the pickle copy of its content is the document highdicom builds itself,
and the garbage collector is paused only while a study's results are written."""

from __future__ import annotations

import copy
import gc
import io
import threading

import highdicom as hd
from pydicom.dataset import Dataset

from dicom_io.results import roi_sr as roi_module
from dicom_io.results import sr as sr_module
from dicom_io.results import write_results
from dicom_io.results.pause import gc_paused
from harness.studies import ALGORITHM, COHORT, make_study

CLOCK = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def _bytes(ds: Dataset) -> bytes:
    """The encoded document without the clock readings highdicom stamps at construction."""
    ds = copy.deepcopy(ds)
    for kw in CLOCK:
        if kw in ds:
            delattr(ds, kw)
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            del item.ContributionDateTime
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_the_report_is_byte_for_byte_the_one_highdicom_builds(monkeypatch):
    sources, annotations, audited = make_study()
    fast = write_results(sources, annotations, audited, ALGORITHM, COHORT)
    calls: list[str] = []

    def plain(*, content, **kwargs):  # highdicom's own constructor, its deepcopy included
        calls.append(type(content).__name__)
        return hd.sr.Comprehensive3DSR(content=content, **kwargs)

    monkeypatch.setattr(sr_module, "comprehensive_3d_sr", plain)
    monkeypatch.setattr(roi_module, "comprehensive_3d_sr", plain)
    slow = write_results(sources, annotations, audited, ALGORITHM, COHORT)
    assert len(calls) == 2, "the plain constructor was not used for both SRs (report, drawn flags)"
    by_uid = {str(ds.SOPInstanceUID): ds for ds in slow}
    reports = [ds for ds in fast if ds.Modality == "SR"]
    assert len(reports) == 2
    for ds in reports:
        assert _bytes(ds) == _bytes(by_uid[str(ds.SOPInstanceUID)])


def test_the_pickle_copy_is_independent_and_of_the_asked_class():
    item = hd.sr.TextContentItem(name=hd.sr.CodedConcept("121106", "DCM", "Comment"), value="x",
                                 relationship_type="CONTAINS")
    copied = sr_module._pickle_copy(item, type(item))
    assert type(copied) is type(item) and copied is not item
    copied.TextValue = "changed"
    assert item.TextValue == "x"


def test_gc_is_paused_inside_and_resumed_after_nested_and_concurrent_blocks():
    assert gc.isenabled()
    inside = threading.Event()
    release = threading.Event()

    def other() -> None:
        with gc_paused():
            inside.set()
            release.wait(30)

    t = threading.Thread(target=other)
    with gc_paused():
        assert not gc.isenabled()
        t.start()
        assert inside.wait(30)
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert not gc.isenabled(), "another thread's block is still open"
    release.set()
    t.join(30)
    assert gc.isenabled()


def test_gc_left_off_by_the_caller_stays_off():
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_write_results_runs_with_gc_paused(monkeypatch):
    seen: list[bool] = []
    real = sr_module.comprehensive_3d_sr

    def spy(**kwargs):
        seen.append(gc.isenabled())
        return real(**kwargs)

    monkeypatch.setattr(sr_module, "comprehensive_3d_sr", spy)
    sources, annotations, audited = make_study()
    write_results(sources, annotations, audited, ALGORITHM, COHORT)
    assert seen and not any(seen)
    assert gc.isenabled()
