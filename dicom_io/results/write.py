"""Writing one study's audit results as DICOM: TID 1500 QA report SR, heatmap Secondary Captures, Quality Issue KOS.

With audited masks (``AuditedMask``): a mask overlay Secondary Capture per flagged mask, suggested-correction
SEGs (the consensus of the flagged masks), the flagged source frames in the KOS and one group per mask
in the SR.

``write_results`` takes plain records (``AuditedAnnotation``, ``AlgorithmInfo``) and the source and
annotation datasets, and returns the result objects with deterministic UIDs (``uids.py``): the same
inputs and bundle give the same UIDs, changed results give new ones. No torch here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset

from dicom_io import codes
from dicom_io.annotations.seg import read_seg_masks
from dicom_io.header import normalised
from dicom_io.results.geometry import has_plane_geometry
from dicom_io.results.heatmap import heatmap_sc
from dicom_io.results.kos import quality_issue_kos
from dicom_io.results.overlay import mask_overlay_sc
from dicom_io.results.pause import with_gc_paused
from dicom_io.results.pmap import saliency_map
from dicom_io.results.records import AlgorithmInfo, AuditedAnnotation, AuditedMask
from dicom_io.results.roi_sr import DrawnFlag, drawn_flags_sr, label_flag, mask_flag
from dicom_io.results.seg_out import NO_GEOMETRY_NOTE, suggested_segs
from dicom_io.results.series import (
    DRAWN_SR_SERIES_NUMBER,
    HEATMAP_SERIES_NUMBER,
    KOS_SERIES_NUMBER,
    MANUFACTURER,
    OVERLAY_SERIES_NUMBER,
    PMAP_SERIES_NUMBER,
    SR_SERIES_NUMBER,
    SUGGESTION_SEG_SERIES_NUMBER,
    found_text,
)
from dicom_io.results.sr import qa_report_sr
from dicom_io.results.uids import derived_uid, digest

__all__ = ["clean_header", "ResultSet", "write_results", "save_results", "find_saved", "file_kind"]

log = logging.getLogger("dicom_io.results")


def clean_header(ds: Dataset) -> Dataset:
    """A shallow copy without header values that real files carry but highdicom rejects: odd dates,
    times and sexes (``dicom_io.header``: normalised or emptied), an empty SpecificCharacterSet (the
    default repertoire); the given dataset is left as it is."""
    ds = normalised(ds)
    if "SpecificCharacterSet" not in ds or ds.SpecificCharacterSet:
        return ds
    out = Dataset()
    for elem in ds:
        if elem.keyword != "SpecificCharacterSet":
            out.add(elem)
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    return out


class ResultSet(list[Dataset]):
    """The result objects of one study (a list of datasets, in writing order) and what each is for.

    ``heatmaps``: index into ``audited`` -> heatmap SC UID; ``overlays``: index into ``masks`` -> overlay
    SC UID; ``suggestions``: index into ``masks`` -> (suggestion SEG UID, segment number);
    ``report_uid`` / ``kos_uid`` / ``drawn_uid``: the QA report SR, the Quality Issue KOS and the SR that
    draws the flags (None when there is none). The review keeps these: nothing parses the report to
    learn them again.
    """

    def __init__(self, datasets: Sequence[Dataset] = (), *, report_uid: str | None = None,
                 kos_uid: str | None = None, drawn_uid: str | None = None,
                 heatmaps: Mapping[int, str] | None = None,
                 overlays: Mapping[int, str] | None = None,
                 suggestions: Mapping[int, tuple[str, int]] | None = None) -> None:
        super().__init__(datasets)
        self.report_uid = report_uid
        self.kos_uid = kos_uid
        self.drawn_uid = drawn_uid
        self.heatmaps: dict[int, str] = dict(heatmaps or {})
        self.overlays: dict[int, str] = dict(overlays or {})
        self.suggestions: dict[int, tuple[str, int]] = dict(suggestions or {})


@with_gc_paused
def write_results(
    source_images: Mapping[str, Dataset],
    annotation_datasets: Mapping[str, Dataset],
    audited: Sequence[AuditedAnnotation],
    algorithm: AlgorithmInfo,
    cohort_findings: Sequence[str] = (),
    *,
    heatmaps_for_hard_cases: bool = False,
    parametric_maps: bool = False,
    member_panels: bool = False,
    manufacturer: str = MANUFACTURER,
    masks: Sequence[AuditedMask] = (),
    cannot_judge: Sequence[str] = (),
) -> ResultSet:
    """The result objects of one study: heatmap SCs, mask overlay SCs, suggested-correction SEGs, then the
    KOS (if anything is flagged), then the QA report SR, then (when a flag has a shape) the SR that draws
    the flags on their source images (``roi_sr``; the QA report references it, the KOS selects it); with
    which object belongs to which record (:class:`ResultSet`).

    ``masks``: audited masks (``audited`` may then be empty). Each flagged one (suspected mask error)
    gets an overlay SC (given outline, consensus outline, disagreement in colour) when its given and
    consensus masks are known (``given`` None: read from its SEG), and its consensus goes into a
    suggested-correction SEG; its source frame is selected in the KOS.

    ``cannot_judge``: one sentence per class whose masks the models cannot judge (the SR summary states each).

    Heatmap SCs are made for suspected label errors with a heatmap (and for hard cases when asked);
    ``parametric_maps`` adds a Parametric Map of the raw saliency beside each SC where the source
    allows one (it has a Frame of Reference), after the SCs. ``member_panels`` adds, beside each heatmap
    SC, one SC showing every ensemble member's map (when the records carry ``member_heatmaps``).
    Raises ValueError when a record refers to a source image or annotation that was not given, or when
    the records span more than one study.
    """
    if not audited and not masks:
        raise ValueError("no audited annotations: nothing to report")
    every: list[AuditedAnnotation | AuditedMask] = [*audited, *masks]
    studies = {a.study_uid for a in every}
    if len(studies) != 1:
        raise ValueError(f"write_results works on one study at a time, got {len(studies)}")
    study_uid = studies.pop()
    for a in every:
        if a.image_uid not in source_images:
            raise ValueError(f"source image {a.image_uid} of annotation {a.annotation_uid} was not given")
        if a.annotation_uid not in annotation_datasets:
            raise ValueError(f"annotation object {a.annotation_uid} was not given")
    source_images = {uid: clean_header(ds) for uid, ds in source_images.items()}
    annotation_datasets = {uid: clean_header(ds) for uid, ds in annotation_datasets.items()}
    run_key = digest(
        study_uid, algorithm.bundle_hash, algorithm.name, algorithm.version, algorithm.parameters,
        [a.key() for a in audited], list(cohort_findings), heatmaps_for_hard_cases,
        *([[m.key() for m in masks]] if masks else []), *([list(cannot_judge)] if cannot_judge else []),
    )  # parametric_maps is left out on purpose: adding maps keeps the SR/SC/KOS UIDs
    heat_series = derived_uid(run_key, "series", "heatmap")
    found = found_text(sum(a.verdict in codes.FLAGGED_VERDICTS for a in audited), sum(m.flagged for m in masks),
                       sum(x.verdict == "hard_case" for x in every))
    heat_description = ("labelqa heatmaps (NOT FOR DIAGNOSIS): "
                        + found_text(sum(a.verdict in codes.FLAGGED_VERDICTS for a in audited)))
    heatmaps: dict[int, Dataset] = {}
    flagged_sources: list[Dataset] = []
    for i, a in enumerate(audited):
        flagged = a.verdict in codes.FLAGGED_VERDICTS
        wants = flagged or (heatmaps_for_hard_cases and a.verdict == "hard_case")
        if flagged:
            flagged_sources.append(source_images[a.image_uid])
        if not wants or a.heatmap is None:
            continue
        caption = f"{a.verdict.replace('_', ' ')}: given {a.given_code().meaning}, models {a.consensus_code().meaning}"
        heatmaps[i] = heatmap_sc(
            source_images[a.image_uid],
            a.frame,
            np.asarray(a.heatmap, dtype=np.float32),
            caption=caption[:80],
            series_instance_uid=heat_series,
            series_number=HEATMAP_SERIES_NUMBER,
            sop_instance_uid=derived_uid(run_key, "heatmap", i),
            instance_number=len(heatmaps) + 1,
            manufacturer=manufacturer,
            series_description=heat_description,
        )
    out: list[Dataset] = list(heatmaps.values())
    if member_panels:
        for i in list(heatmaps):
            a = audited[i]
            if not a.member_heatmaps:
                continue
            members = {k: np.asarray(v, dtype=np.float32) for k, v in sorted(a.member_heatmaps.items())}
            out.append(heatmap_sc(
                source_images[a.image_uid], a.frame, np.asarray(a.heatmap, dtype=np.float32), caption="",
                series_instance_uid=heat_series, series_number=HEATMAP_SERIES_NUMBER,
                sop_instance_uid=derived_uid(run_key, "members", i, digest(*members.values())),
                instance_number=1000 + i, manufacturer=manufacturer, members=members,
                series_description=heat_description,
            ))
    if parametric_maps:
        pm_series = derived_uid(run_key, "series", "pmap")
        for i in heatmaps:
            a = audited[i]
            pm = saliency_map(
                source_images[a.image_uid], np.asarray(a.heatmap, dtype=np.float32),
                series_instance_uid=pm_series, series_number=PMAP_SERIES_NUMBER,
                sop_instance_uid=derived_uid(run_key, "pmap", i), instance_number=i + 1,
                manufacturer=manufacturer, software_version=algorithm.version,
            )
            if pm is not None:
                out.append(pm)
    givens: dict[int, np.ndarray] = {}
    overlays, suggestions, suggestion_segs = _mask_objects(
        source_images, annotation_datasets, masks, algorithm, run_key, manufacturer, givens)
    out += list(overlays.values()) + suggestion_segs
    suggestion_notes = {i: NO_GEOMETRY_NOTE for i, m in enumerate(masks)
                        if m.flagged and m.consensus is not None and i not in suggestions
                        and not has_plane_geometry(source_images[m.image_uid])}
    drawn = _drawn_flags(source_images, audited, masks, givens, algorithm, run_key, manufacturer, found)
    flagged_frames: dict[str, list[int]] = {}
    for a in audited:
        if a.verdict in codes.FLAGGED_VERDICTS and a.frame is not None:
            flagged_frames.setdefault(a.image_uid, []).append(int(a.frame))
    flagged_masks = [m for m in masks if m.flagged]
    for m in flagged_masks:
        flagged_sources.append(source_images[m.image_uid])
        if m.frame is not None:
            flagged_frames.setdefault(m.image_uid, []).append(int(m.frame))
    kos_uid = None
    if flagged_sources:
        kos_uid = derived_uid(run_key, "kos")
        flagged_heatmaps = [heatmaps[i] for i, a in enumerate(audited)
                            if i in heatmaps and a.verdict in codes.FLAGGED_VERDICTS]
        n = len({ds.SOPInstanceUID for ds in flagged_sources})
        description = f"labelqa: {n} image(s) with suspected annotation errors, and their saliency heatmaps"
        if flagged_masks:
            description = (f"labelqa: {n} image(s) with suspected annotation errors ({len(flagged_masks)} "
                           "suspected mask error(s)), their heatmaps, mask overlays and suggested corrections")
        if drawn is not None:
            description += "; the flags drawn on the images"
        out.append(
            quality_issue_kos(
                flagged_sources + flagged_heatmaps + list(overlays.values()) + suggestion_segs
                + ([drawn] if drawn is not None else []),
                description=description,
                series_description=f"labelqa quality issues: {found}",
                series_instance_uid=derived_uid(run_key, "series", "kos"),
                series_number=KOS_SERIES_NUMBER,
                sop_instance_uid=kos_uid,
                manufacturer=manufacturer,
                frames=flagged_frames,
            )
        )
    used_sources = {a.image_uid: source_images[a.image_uid] for a in every}
    used_annotations = {a.annotation_uid: annotation_datasets[a.annotation_uid] for a in every}
    out.append(
        qa_report_sr(
            sources=used_sources,
            annotations=used_annotations,
            audited=audited,
            heatmaps=heatmaps,
            tracking_uids=[derived_uid(run_key, "tracking", i) for i in range(len(audited))],
            summary_uid=derived_uid(run_key, "tracking", "summary"),
            algorithm=algorithm,
            cohort_findings=cohort_findings,
            series_instance_uid=derived_uid(run_key, "series", "sr"),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=derived_uid(run_key, "sr"),
            device_uid=derived_uid("labelqa-device", algorithm.name, algorithm.bundle_hash),
            manufacturer=manufacturer,
            masks=masks,
            mask_tracking_uids=[derived_uid(run_key, "tracking", "mask", i) for i in range(len(masks))],
            overlays=overlays,
            suggestions=suggestions,
            suggestion_notes=suggestion_notes,
            drawn=drawn,
            series_description=f"labelqa QA: {found}",
            cannot_judge=cannot_judge,
        )
    )
    report_uid = str(out[-1].SOPInstanceUID)
    if drawn is not None:
        out.append(drawn)
    log.info("results for study %s: %d heatmap(s), %d mask overlay(s), %d suggested SEG(s), %s KOS, 1 SR, %s drawn SR",
             study_uid, len(heatmaps), len(overlays), len(suggestion_segs), "1" if flagged_sources else "no",
             "1" if drawn is not None else "no")
    return ResultSet(out, report_uid=report_uid, kos_uid=kos_uid,
                     drawn_uid=None if drawn is None else str(drawn.SOPInstanceUID),
                     heatmaps={i: str(ds.SOPInstanceUID) for i, ds in heatmaps.items()},
                     overlays={i: str(ds.SOPInstanceUID) for i, ds in overlays.items()},
                     suggestions={i: (str(seg.SOPInstanceUID), int(n)) for i, (seg, n) in suggestions.items()})


def _given_from_seg(seg: Dataset, m: AuditedMask, shape: tuple[int, int]) -> np.ndarray | None:
    """The given mask of ``m`` read back from its SEG (its segment numbers on its source frame), or None."""
    try:
        records, _ = read_seg_masks(seg, None)
    except Exception:  # a SEG we cannot read again: no overlay rather than no results
        return None
    wanted = set(m.segment_numbers) or ({m.segment_number} if m.segment_number is not None else set())
    out = np.zeros(shape, bool)
    for r in records:
        frame = None if r.frame == 1 and m.frame is None else r.frame
        if r.image_uid == m.image_uid and frame == m.frame and set(r.segment_numbers) & wanted:
            if r.mask.shape != shape:
                return None
            out |= r.mask
    return out


def _mask_objects(
    sources: Mapping[str, Dataset],
    annotations: Mapping[str, Dataset],
    masks: Sequence[AuditedMask],
    algorithm: AlgorithmInfo,
    run_key: str,
    manufacturer: str,
    givens: dict[int, np.ndarray],
) -> tuple[dict[int, Dataset], dict[int, tuple[Dataset, int]], list[Dataset]]:
    """Overlay SCs (by mask index), suggestion (SEG, segment number) by mask index, and the suggestion SEGs;
    ``givens`` receives the given mask of each flagged mask on its source grid (by mask index)."""
    flagged = [i for i, m in enumerate(masks) if m.flagged]
    overlays: dict[int, Dataset] = {}
    overlay_description = f"labelqa mask overlays (NOT FOR DIAGNOSIS): {found_text(0, len(flagged))}"
    series = derived_uid(run_key, "series", "overlay")
    for i in flagged:
        m = masks[i]
        if m.consensus is None:
            continue
        src = sources[m.image_uid]
        shape = (int(src.Rows), int(src.Columns))
        given = m.given if m.given is not None else _given_from_seg(annotations[m.annotation_uid], m, shape)
        if given is None or given.shape != shape or m.consensus.shape != shape:
            log.warning("no overlay for mask %d of %s: masks not on the source grid %s", i, m.annotation_uid, shape)
            continue
        givens[i] = given
        dice = "" if m.dice is None else f", Dice {m.dice:.2f}"
        caption = f"{m.class_name}: {(m.kind or m.verdict).replace('_', ' ')}{dice}"
        overlays[i] = mask_overlay_sc(
            src, m.frame, given, m.consensus, caption=caption[:80], regions=m.regions,
            series_instance_uid=series, series_number=OVERLAY_SERIES_NUMBER,
            sop_instance_uid=derived_uid(run_key, "overlay", i), instance_number=len(overlays) + 1,
            manufacturer=manufacturer, series_description=overlay_description,
        )
    segs, where = suggested_segs(
        sources, annotations, [masks[i] for i in flagged], algorithm=algorithm, run_key=run_key,
        series_number=SUGGESTION_SEG_SERIES_NUMBER, manufacturer=manufacturer,
    )
    suggestions = {flagged[j]: v for j, v in where.items()}
    return overlays, suggestions, segs


def _drawn_flags(
    sources: Mapping[str, Dataset],
    audited: Sequence[AuditedAnnotation],
    masks: Sequence[AuditedMask],
    givens: Mapping[int, np.ndarray],
    algorithm: AlgorithmInfo,
    run_key: str,
    manufacturer: str,
    found: str,
) -> Dataset | None:
    """The SR drawing every flag that has a shape (``roi_sr``), or None when none has."""
    flags: list[DrawnFlag] = []
    for i, a in enumerate(audited):
        if a.verdict in codes.FLAGGED_VERDICTS:
            f = label_flag(a, sources[a.image_uid], tracking_uid=derived_uid(run_key, "drawn", i),
                           number=len(flags) + 1)
            flags += [f] if f is not None else []
    for i, m in enumerate(masks):
        if m.flagged:
            f = mask_flag(m, sources[m.image_uid], givens.get(i), tracking_uid=derived_uid(run_key, "drawn", "mask", i),
                          number=len(flags) + 1)
            flags += [f] if f is not None else []
    if not flags:
        return None
    return drawn_flags_sr(
        flags, algorithm=algorithm, series_instance_uid=derived_uid(run_key, "series", "drawn"),
        series_number=DRAWN_SR_SERIES_NUMBER, sop_instance_uid=derived_uid(run_key, "drawn"),
        device_uid=derived_uid("labelqa-device", algorithm.name, algorithm.bundle_hash), manufacturer=manufacturer,
        series_description=f"labelqa flags on the images: {found}",
    )


_KINDS: dict[str, str] = {
    uid.SecondaryCaptureImageStorage: "SC", uid.ParametricMapStorage: "PM", uid.SegmentationStorage: "SEG",
}


def file_kind(ds: Dataset) -> str:
    """Short file-name prefix of a result object: SR (QA report), ROI (the SR drawing the flags), KO, SC, PM or
    SEG (else its Modality)."""
    if str(ds.get("Modality", "")) == "SR" and ds.get("SeriesNumber") == DRAWN_SR_SERIES_NUMBER:
        return "ROI"
    return _KINDS.get(str(ds.SOPClassUID), str(ds.get("Modality", "XX")))


def save_results(datasets: Sequence[Dataset], out_dir: Path) -> list[Path]:
    """Write result datasets as DICOM files ``<kind>_<SOPInstanceUID>.dcm`` into ``out_dir``: the one way
    labelqa saves what it writes (audits, the service, reviews).

    kind: SR (QA report), ROI (the flags drawn on the images, an SR), KO (Quality Issue KOS), SC (heatmap or
    mask overlay Secondary Capture), PM (Parametric Map), SEG (suggested-correction or corrected segmentation).
    Each file appears whole (written beside, then renamed); a file already there is kept, since result UIDs
    are deterministic (the same UID means the same object).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        p = out_dir / f"{file_kind(ds)}_{ds.SOPInstanceUID}.dcm"
        if not p.exists():
            tmp = p.with_name(p.name + ".tmp")
            ds.save_as(tmp, enforce_file_format=True)
            tmp.replace(p)
        paths.append(p)
    return paths


def find_saved(root: Path, sop_instance_uid: str) -> Path | None:
    """The file :func:`save_results` wrote for an object into a folder under ``root`` (one per study), or None."""
    return next(iter(sorted(Path(root).glob(f"*/*_{sop_instance_uid}.dcm"))), None)
