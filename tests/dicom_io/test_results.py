"""Result objects (SR, heatmap SC, KOS): validity (dciodvfy, dsrdump), TID 1500 structure, round trip, UIDs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io import codes
from dicom_io.results import AlgorithmInfo, AuditedAnnotation, save_results, write_results
from harness.studies import ALGORITHM, COHORT, NORMAL, PNEUMONIA, heatmap_blob, make_study
from tests.conftest import have, requires_dciodvfy, requires_dcmtk


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[list[pydicom.Dataset], list[Path], list[AuditedAnnotation]]:
    sources, annotations, audited = make_study()
    datasets = write_results(sources, annotations, audited, ALGORITHM, COHORT)
    paths = save_results(datasets, tmp_path_factory.mktemp("results"))
    return datasets, paths, audited


def _by_modality(paths: list[Path], modality: str) -> list[Path]:
    return [p for p in paths if p.name.startswith(modality + "_")]


@requires_dciodvfy
def test_every_result_object_passes_dciodvfy(written):
    _, paths, _ = written
    assert {p.name.split("_")[0] for p in paths} == {"SR", "ROI", "SC", "KO"}
    for p in paths:
        r = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True)
        errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]
        assert errors == [], f"{p.name}: {errors}"


@requires_dcmtk
def test_sr_passes_dsrdump_verbose_without_errors(written):
    _, paths, _ = written
    (sr,) = _by_modality(paths, "SR")
    r = subprocess.run(["dsrdump", "-v", str(sr)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("E:")] == []


def _items(seq):
    return [(it.ValueType, it.ConceptNameCodeSequence[0].CodeValue, it) for it in seq]


def test_sr_has_the_required_tid1500_content(written):
    datasets, _, audited = written
    sr = next(ds for ds in datasets if ds.Modality == "SR")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.ConceptNameCodeSequence[0].CodeValue == codes.ANNOTATION_QUALITY_AUDIT.value
    root = _items(sr.ContentSequence)
    # language, observer context (device), procedure reported, image library, imaging measurements
    assert any(vt == "CODE" and cv == "121049" for vt, cv, _ in root)  # Language of Content Item
    assert any(vt == "CODE" and cv == "121005" and it.ConceptCodeSequence[0].CodeValue == "121007"
               for vt, cv, it in root)  # Observer Type = Device
    assert any(vt == "UIDREF" and cv == "121012" for vt, cv, _ in root)  # Device Observer UID
    proc = [it for vt, cv, it in root if vt == "CODE" and cv == "121058"]
    assert proc and proc[0].ConceptCodeSequence[0].CodeValue == codes.ANNOTATION_QUALITY_AUDIT.value
    library = [it for vt, cv, it in root if vt == "CONTAINER" and cv == "111028"]
    assert library, "Image Library missing"
    lib_uids = {
        img.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for grp in library[0].ContentSequence for img in grp.ContentSequence if img.ValueType == "IMAGE"
    }
    assert {a.image_uid for a in audited} <= lib_uids
    (measurements,) = [it for vt, cv, it in root if vt == "CONTAINER" and cv == "126010"]
    groups = [it for it in measurements.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == "125007"]
    assert len(groups) == len(audited) + 1  # one per annotation + the study summary
    for g in groups:
        names = {cv for _, cv, _ in _items(g.ContentSequence)}
        assert {"112039", "112040", "121071", "111001", "111003"} <= names  # tracking id/UID, finding, algorithm
    # the algorithm's parameters are stated once, in the study summary (the last group), not in every group
    params = [[it.TextValue for _, cv, it in _items(g.ContentSequence) if cv == "111002"] for g in groups]
    assert params[:-1] == [[]] * (len(groups) - 1)
    assert f"bundle_hash={ALGORITHM.bundle_hash}" in params[-1]
    assert "agreement_threshold=0.5" in params[-1]
    seg_group = groups[0]
    segs = [it for vt, _, it in _items(seg_group.ContentSequence)
            if vt == "IMAGE" and "ReferencedSegmentNumber" in it.ReferencedSOPSequence[0]]
    assert segs and segs[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == audited[0].annotation_uid
    sr_group = groups[1]
    comps = [it for vt, _, it in _items(sr_group.ContentSequence) if vt == "COMPOSITE"]
    assert comps and comps[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == audited[1].annotation_uid
    # every referenced instance is listed as evidence
    evidence = {ref.ReferencedSOPInstanceUID for st in sr.CurrentRequestedProcedureEvidenceSequence
                for se in st.ReferencedSeriesSequence for ref in se.ReferencedSOPSequence}
    assert {a.annotation_uid for a in audited} | {a.image_uid for a in audited} <= evidence


def test_srread_round_trip_recovers_every_verdict_and_score(written):
    import highdicom as hd

    from dicom_io.results.sr import read_report

    datasets, paths, audited = written
    (sr_path,) = _by_modality(paths, "SR")
    report = read_report(hd.sr.srread(sr_path))
    assert report["title"] == "Annotation quality audit"
    assert len(report["items"]) == len(audited)
    heat_uids = {ds.SOPInstanceUID for ds in datasets if ds.Modality == "OT"}
    for got, want in zip(report["items"], audited, strict=True):
        assert got["verdict"] == want.verdict
        assert got["given_label"] == want.given_code()
        assert got["consensus_label"] == want.consensus_code()
        m = got["measurements"]
        assert m[codes.P_GIVEN_LABEL.meaning] == pytest.approx(want.p_given)
        assert m[codes.REANNOTATION_PRIORITY.meaning] == pytest.approx(want.priority)
        assert m[codes.N_MEMBERS_DISAGREEING.meaning] == want.n_disagree
        assert m[codes.N_MEMBERS.meaning] == want.n_members
        if want.agreement is None:
            assert codes.SALIENCY_AGREEMENT.meaning not in m
        else:
            assert m[codes.SALIENCY_AGREEMENT.meaning] == pytest.approx(want.agreement)
        assert got["source_image_uid"] == want.image_uid
        assert got["annotation_uid"] == want.annotation_uid
        assert got["segment_number"] == want.segment_number
        if want.verdict == "suspected_label_error":
            assert got["heatmap_uid"] in heat_uids
    assert report["summary"] == {
        codes.COUNT_SUSPECTED.meaning: 1.0, codes.COUNT_HARD.meaning: 1.0, codes.COUNT_CONSISTENT.meaning: 1.0
    }
    assert report["cohort_findings"] == COHORT


def test_heatmap_sc_is_rgb_burned_in_same_study_own_series(written):
    datasets, _, audited = written
    scs = [ds for ds in datasets if ds.Modality == "OT"]
    assert len(scs) == 1  # one suspected label error; hard cases only on request
    sc = scs[0]
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
    assert sc.BurnedInAnnotation == "YES"
    assert sc.StudyInstanceUID == audited[0].study_uid
    assert sc.SeriesInstanceUID != next(ds for ds in datasets if ds.Modality == "SR").SeriesInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == audited[0].image_uid
    px = sc.pixel_array
    assert px.shape[2] == 3 and px.std() > 0
    # the warning line (yellow text) is burned into the band below the image, away from viewers' top controls
    assert not ((px[:14, ..., 0] > 200) & (px[:14, ..., 1] > 200) & (px[:14, ..., 2] < 80)).any()
    band = px[-30:-16]
    assert ((band[..., 0] > 200) & (band[..., 1] > 200) & (band[..., 2] < 80)).sum() > 20


def test_kos_title_is_quality_issue_and_never_a_rejection_note(written):
    datasets, _, audited = written
    (kos,) = [ds for ds in datasets if ds.Modality == "KO"]
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == ("113010", "DCM", "Quality Issue")
    assert title.CodeValue != "113001"
    selected = {it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for it in kos.ContentSequence
                if it.ValueType == "IMAGE"}
    flagged = {a.image_uid for a in audited if a.verdict == "suspected_label_error"}
    heat = {ds.SOPInstanceUID for ds in datasets if ds.Modality == "OT"}
    assert selected == flagged | heat


def test_same_inputs_and_bundle_give_the_same_uids_changed_results_new_ones():
    sources, annotations, audited = make_study()
    first = [ds.SOPInstanceUID for ds in write_results(sources, annotations, audited, ALGORITHM, COHORT)]
    again = [ds.SOPInstanceUID for ds in write_results(sources, annotations, audited, ALGORITHM, COHORT)]
    assert first == again
    audited[1].priority = 1.7
    changed = [ds.SOPInstanceUID for ds in write_results(sources, annotations, audited, ALGORITHM, COHORT)]
    assert not set(changed) & set(first)
    other_bundle = AlgorithmInfo(ALGORITHM.name, ALGORITHM.version, "sha256:" + "cd" * 32, ALGORITHM.parameters)
    rebundled = [ds.SOPInstanceUID for ds in write_results(sources, annotations, audited, other_bundle, COHORT)]
    assert not set(rebundled) & set(changed)


def test_bad_input_gives_clear_errors():
    sources, annotations, audited = make_study()
    with pytest.raises(ValueError, match="source image .* was not given"):
        write_results({}, annotations, audited, ALGORITHM)
    with pytest.raises(ValueError, match="annotation object .* was not given"):
        write_results(sources, {}, audited, ALGORITHM)
    with pytest.raises(ValueError, match="nothing to report"):
        write_results(sources, annotations, [], ALGORITHM)
    with pytest.raises(ValueError, match="unknown verdict"):
        AuditedAnnotation(**{**audited[0].__dict__, "verdict": "maybe"})


@pytest.mark.skipif(not have("dsr2html"), reason="dcmtk dsr2html not installed")
def test_dsr2html_output_contains_each_verdict(written):
    _, paths, _ = written
    (sr,) = _by_modality(paths, "SR")
    r = subprocess.run(["dsr2html", str(sr)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for verdict, code in codes.VERDICT_CODES.items():
        if verdict in {a.verdict for a in written[2]}:
            assert code.meaning in r.stdout


def test_conformance_statement_lists_every_private_code(repo):
    text = (repo / "docs" / "conformance.md").read_text()
    assert codes.SCHEME in text
    for code in codes.ALL_CODES:
        assert f"`{code.value}`" in text and code.meaning in text, code


@pytest.mark.slow
def test_report_html_command_shows_every_verdict_and_the_heatmap(written, tmp_path):
    from harness.commands import labelqa_cmd, labelqa_env

    _, paths, audited = written
    (sr,) = _by_modality(paths, "SR")
    out = tmp_path / "report.html"
    r = subprocess.run([*labelqa_cmd(), "report", str(sr), "--html", str(out)], capture_output=True, text=True,
                       env=labelqa_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    for verdict in {a.verdict for a in audited}:
        assert codes.VERDICT_CODES[verdict].meaning in text
    assert text.count("data:image/png;base64,") == 1  # the one heatmap, inline
    assert COHORT[0] in text
    bad = tmp_path / "not.dcm"
    bad.write_bytes(b"nope")
    r = subprocess.run([*labelqa_cmd(), "report", str(bad), "--html", str(out)], capture_output=True, text=True,
                       env=labelqa_env(), timeout=120)
    assert r.returncode == 2 and "not a readable" in r.stderr


@requires_dciodvfy
def test_multiframe_source_frame_is_referenced_everywhere(tmp_path):
    """Frame 3 of a real Enhanced MR (pydicom test file) labelled by an SR: SC, SR and KOS point at frame 3."""
    import highdicom as hd
    from pydicom.data import get_testdata_file
    from pydicom.sr.codedict import codes as dcm

    from dicom_io.results.sr import read_report

    mr = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="frame label"),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(dcm.DCM.Finding, PNEUMONIA)],
        source_images=[hd.sr.SourceImageForMeasurementGroup(mr.SOPClassUID, mr.SOPInstanceUID, [3])],
    )
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(),
                                     procedure_reported=dcm.LN.CTUnspecifiedBodyRegion, imaging_measurements=[group])
    ann = hd.sr.Comprehensive3DSR(evidence=[mr], content=report[0], series_instance_uid=hd.UID(), series_number=5,
                                  sop_instance_uid=hd.UID(), instance_number=1, manufacturer="annotator")
    item = AuditedAnnotation(
        study_uid=mr.StudyInstanceUID, annotation_uid=ann.SOPInstanceUID, annotation_sop_class_uid=ann.SOPClassUID,
        source="sr", content_path="1", image_uid=mr.SOPInstanceUID, frame=3, given_label=PNEUMONIA,
        consensus_label=NORMAL, verdict="suspected_label_error", agreement=0.7, p_given=0.1, priority=1.5,
        n_disagree=2, n_members=2, heatmap=heatmap_blob(8, 8, 2, 5),
    )
    datasets = write_results({mr.SOPInstanceUID: mr}, {ann.SOPInstanceUID: ann}, [item], ALGORITHM)
    paths = save_results(datasets, tmp_path)
    sc = next(ds for ds in datasets if ds.Modality == "OT")
    assert sc.SourceImageSequence[0].ReferencedFrameNumber == 3
    sr_path = next(p for p in paths if p.name.startswith("SR_"))
    (got,) = read_report(pydicom.dcmread(sr_path))["items"]
    assert got["frame"] == 3 and got["source_image_uid"] == mr.SOPInstanceUID
    for p in paths:
        r = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True)
        assert [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")] == [], p.name


@requires_dciodvfy
def test_parametric_map_of_raw_saliency_is_optional_valid_and_keeps_other_uids(tmp_path):
    sources, annotations, audited = make_study()
    plain = write_results(sources, annotations, audited, ALGORITHM, COHORT)
    with_pm = write_results(sources, annotations, audited, ALGORITHM, COHORT, parametric_maps=True)
    pms = [ds for ds in with_pm if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"]
    assert len(pms) == 1 and not [ds for ds in plain if ds.SOPClassUID == pms[0].SOPClassUID]
    assert [ds.SOPInstanceUID for ds in with_pm if ds is not pms[0]] == [ds.SOPInstanceUID for ds in plain]
    pm = pms[0]
    assert pm.StudyInstanceUID == audited[0].study_uid and pm.FrameOfReferenceUID == sources[
        audited[0].image_uid].FrameOfReferenceUID
    values = pm.pixel_array
    assert values.shape == (sources[audited[0].image_uid].Rows, sources[audited[0].image_uid].Columns)
    assert 0.0 <= values.min() and values.max() <= 1.0
    # the peak sits where the heatmap peaks (blob centre (6, 9) on a 16x16 grid)
    peak = np.unravel_index(np.argmax(values), values.shape)
    assert abs(peak[0] / values.shape[0] - 6.5 / 16) < 0.08 and abs(peak[1] / values.shape[1] - 9.5 / 16) < 0.08
    (path,) = [p for p in save_results(with_pm, tmp_path) if p.name.startswith("PM_")]
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    assert [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")] == []


@requires_dcmtk
def test_dcmtk_renders_the_heatmap_sc_as_we_drew_it(written, tmp_path):
    """An independent decoder (dcmtk dcm2pnm, what dcmtk-based viewers use) shows the same RGB pixels."""
    from PIL import Image

    _, paths, _ = written
    (sc_path,) = [p for p in paths if p.name.startswith("SC_")]
    out = tmp_path / "sc.png"
    r = subprocess.run(["dcm2pnm", "+on", str(sc_path), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        rendered = np.asarray(im.convert("RGB"))
    assert np.array_equal(rendered, pydicom.dcmread(sc_path).pixel_array)


@requires_dciodvfy
def test_member_panel_sc_shows_every_member_beside_the_consensus(tmp_path):
    sources, annotations, audited = make_study()
    audited[0].member_heatmaps = {"densenet121": heatmap_blob(16, 16, 6, 9),
                                  "resnet18": heatmap_blob(16, 16, 5, 10) * 3.0}
    plain = write_results(sources, annotations, audited, ALGORITHM, COHORT)
    with_panel = write_results(sources, annotations, audited, ALGORITHM, COHORT, member_panels=True)
    extra = [ds for ds in with_panel if ds.SOPInstanceUID not in {d.SOPInstanceUID for d in plain}]
    assert len(extra) == 1 and len(with_panel) == len(plain) + 1
    panel, single = extra[0], next(ds for ds in plain if ds.Modality == "OT")
    assert panel.SeriesInstanceUID == single.SeriesInstanceUID and panel.BurnedInAnnotation == "YES"
    assert panel.Rows == single.Rows and panel.Columns == 3 * single.Columns  # consensus + 2 members
    (path,) = save_results([panel], tmp_path)
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    assert [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")] == []


@requires_dcmtk
def test_dsr2html_prints_concept_names_with_their_values(written):
    """Every container is SEPARATE: dcmtk's HTML (and OHIF's text view) name each value."""
    from html import unescape

    _, paths, audited = written
    (sr,) = _by_modality(paths, "SR")
    r = subprocess.run(["dsr2html", str(sr)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    import re

    text = re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", r.stdout)))
    assert f"Given label: {audited[0].given_code().meaning}" in text
    assert f"Model consensus label: {audited[0].consensus_code().meaning}" in text
    assert "Consensus probability of the given label: 0.07 {score}" in text
    assert "Number of ensemble members disagreeing: 3" in text
    assert text.count(f"bundle_hash={ALGORITHM.bundle_hash}") == 1  # the parameters once, in the summary


def test_drawn_sr_draws_each_flag_on_its_source_image(written):
    """The SR that viewers draw: rooted at 126000, one planar ROI group per flag with tracking id and UID, a
    closed SCOORD outline selected from the source image on the heatmap's hot region, five values at most."""
    from dicom_io.results.roi_sr import MAX_VALUES
    from dicom_io.results.shapes import hot_region

    datasets, _, audited = written
    (drawn,) = [ds for ds in datasets if ds.get("SeriesNumber") == 9908]
    report = next(ds for ds in datasets if ds.get("SeriesNumber") == 9901)
    assert drawn.ConceptNameCodeSequence[0].CodeValue == "126000"
    assert drawn.SeriesDescription == "labelqa flags on the images: 1 suspected error, 1 hard case"
    (measurements,) = [it for it in drawn.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == "126010"]
    groups = list(measurements.ContentSequence)
    assert len(groups) == 1  # the one suspected label error; hard cases and consistent ones are not drawn
    items = _items(groups[0].ContentSequence)
    assert {"112039", "112040", "121071"} <= {cv for _, cv, _ in items}
    (scoord,) = [it for vt, _, it in items if vt == "SCOORD"]
    assert scoord.GraphicType == "POLYLINE" and scoord.ConceptNameCodeSequence[0].CodeValue == "111030"
    pts = np.asarray(scoord.GraphicData, float).reshape(-1, 2)
    assert np.array_equal(pts[0], pts[-1])  # closed
    assert scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == audited[0].image_uid
    # the outline encloses the hot region of the 16 x 16 heatmap, scaled to the 128 x 128 image
    rows, cols = np.nonzero(hot_region(audited[0].heatmap))
    assert pts[:, 0].min() == 8 * cols.min() and pts[:, 0].max() == 8 * (cols.max() + 1)
    assert pts[:, 1].min() == 8 * rows.min() and pts[:, 1].max() == 8 * (rows.max() + 1)
    nums = [it for vt, _, it in items if vt == "NUM"]
    assert 1 <= len(nums) <= MAX_VALUES
    units = {it.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue for it in nums}
    assert units <= {"%", "{score}"}
    # every container SEPARATE; the QA report links it
    containers = [it for it in _walk(drawn) if it.get("ValueType") == "CONTAINER"]
    assert drawn.ContinuityOfContent == "SEPARATE" and all(c.ContinuityOfContent == "SEPARATE" for c in containers)
    links = [it for it in _walk(report) if it.get("ValueType") == "COMPOSITE"
             and it.ConceptNameCodeSequence[0].CodeValue == codes.FLAGS_DRAWN.value]
    assert [ln.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for ln in links] == [drawn.SOPInstanceUID]


def test_no_drawn_sr_without_a_shape():
    """A 126000 report with a group without a shape crashes OHIF 3.13: without any shape, none is written."""
    from dicom_io.results.roi_sr import drawn_flags_sr

    sources, annotations, audited = make_study()
    audited[0].heatmap = None  # the one flag has nothing to draw
    datasets = write_results(sources, annotations, audited, ALGORITHM, COHORT)
    assert [ds.SeriesNumber for ds in datasets if ds.Modality == "SR"] == [9901]
    with pytest.raises(ValueError, match="no flag has a shape"):
        drawn_flags_sr([], algorithm=ALGORITHM, series_instance_uid="1.2.3", series_number=9908,
                       sop_instance_uid="1.2.3.4", device_uid="1.2.3.5", manufacturer="labelqa")


def _walk(ds):
    for it in ds.get("ContentSequence") or []:
        yield it
        yield from _walk(it)
