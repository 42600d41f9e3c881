"""Writing one study's results for audited 3-D masks (segments of SEGs over series), per segment, not per frame.

For every audited segment the QA report holds one TID 1411 group on the segment and its series
(:func:`dicom_io.results.sr.volume_group`: Dice, HD95 and volumes against the consensus, the
predicted Dice, the slice range, the regions with their slices). For every flagged segment: its
consensus goes into one suggestion SEG over the whole series per audited SEG
(:func:`dicom_io.results.seg_volume_out.suggestion_seg_volume`); its key slices (where the given mask
and the consensus differ most; how many is ``key_slices``) get overlay Secondary Captures; its worst
slice gets a drawn flag (the SR viewers draw, :mod:`dicom_io.results.roi_sr`); the KOS selects the key
slices with their overlays, the suggestion SEG and the drawn flags. The key-slice overlay and the
drawn flag are the 2-D writers', given the slice as a 2-D audited mask. UIDs are deterministic.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
from pydicom.dataset import Dataset

from dicom_io.results.kos import quality_issue_kos
from dicom_io.results.overlay import mask_overlay_sc
from dicom_io.results.pause import with_gc_paused
from dicom_io.results.records import AlgorithmInfo, AuditedMask, AuditedVolumeMask
from dicom_io.results.roi_sr import DrawnFlag, drawn_flags_sr, mask_flag
from dicom_io.results.seg_volume_out import suggestion_seg_volume
from dicom_io.results.series import (
    DRAWN_SR_SERIES_NUMBER,
    KOS_SERIES_NUMBER,
    MANUFACTURER,
    OVERLAY_SERIES_NUMBER,
    SR_SERIES_NUMBER,
    SUGGESTION_SEG_SERIES_NUMBER,
)
from dicom_io.results.sr import qa_report_sr
from dicom_io.results.uids import derived_uid, digest
from dicom_io.results.write import ResultSet, clean_header, found_text

__all__ = ["KEY_SLICES", "slice_view", "write_volume_results"]

log = logging.getLogger("dicom_io.results")

KEY_SLICES = 3
"""Key slices with an overlay per flagged segment, by default."""


def slice_view(v: AuditedVolumeMask, k: int) -> AuditedMask:
    """Slice ``k`` of an audited segment as a 2-D audited mask on its source frame (for the 2-D writers)."""
    uid, frame = v.slice_source(k)
    return AuditedMask(
        study_uid=v.study_uid, annotation_uid=v.annotation_uid, annotation_sop_class_uid=v.annotation_sop_class_uid,
        image_uid=uid, class_name=v.class_name, verdict=v.verdict, kind=v.kind, dice=v.dice, hd95_mm=v.hd95_mm,
        agreement=v.agreement, priority=v.priority, score=v.score, frame=frame, segment_number=v.segment_number,
        class_code=v.class_code, consensus=None if v.consensus is None else v.consensus[k],
        given=None if v.given is None else v.given[k], spacing=(v.spacing[1], v.spacing[2]),
    )


@with_gc_paused
def write_volume_results(
    source_images: Mapping[str, Dataset],
    annotation_datasets: Mapping[str, Dataset],
    volumes: Sequence[AuditedVolumeMask],
    algorithm: AlgorithmInfo,
    *,
    key_slices: int = KEY_SLICES,
    manufacturer: str = MANUFACTURER,
    cannot_judge: Sequence[str] = (),
) -> ResultSet:
    """The result objects of one study's audited segments: key-slice overlay SCs, suggestion SEGs, the KOS
    (if a segment is flagged), the QA report SR, and the drawn flags SR (when one has a shape).

    ``source_images`` must hold every slice of every audited segment's series. Returns a
    :class:`~dicom_io.results.write.ResultSet` whose ``overlays`` name each flagged segment's worst-slice
    overlay and ``suggestions`` its segment in the suggestion SEG (by index into ``volumes``).
    ``cannot_judge``: one sentence per class whose masks the models cannot judge (the SR summary states each).
    Raises ValueError for an empty list, records of more than one study, or a source not given.
    """
    if not volumes:
        raise ValueError("no audited segments: nothing to report")
    studies = {v.study_uid for v in volumes}
    if len(studies) != 1:
        raise ValueError(f"write_volume_results works on one study at a time, got {len(studies)}")
    study_uid = studies.pop()
    for v in volumes:
        missing = [u for u in v.slice_uids if u not in source_images]
        if missing:
            raise ValueError(f"{len(missing)} slice(s) of series {v.series_uid} were not given (first {missing[0]})")
        if v.annotation_uid not in annotation_datasets:
            raise ValueError(f"annotation object {v.annotation_uid} was not given")
    sources = {u: clean_header(ds) for u, ds in source_images.items()}
    annotations = {u: clean_header(ds) for u, ds in annotation_datasets.items()}
    run_key = digest(study_uid, algorithm.bundle_hash, algorithm.name, algorithm.version, algorithm.parameters,
                     [v.key() for v in volumes], key_slices, *([list(cannot_judge)] if cannot_judge else []))
    flagged = [i for i, v in enumerate(volumes) if v.flagged]
    found = found_text(0, len(flagged), sum(v.verdict == "hard_case" for v in volumes))

    # one suggestion SEG over the series per audited SEG, a segment per flagged segment
    suggestions: dict[int, tuple[Dataset, int]] = {}
    by_annotation: dict[str, list[int]] = defaultdict(list)
    for i in flagged:
        if volumes[i].consensus is not None:
            by_annotation[volumes[i].annotation_uid].append(i)
    segs: list[Dataset] = []
    for ann, idx in by_annotation.items():
        first = volumes[idx[0]]
        names = list(dict.fromkeys(volumes[i].class_name for i in idx))
        masks: dict[str, np.ndarray] = {}
        for i in idx:
            consensus = volumes[i].consensus
            if consensus is not None:
                masks.setdefault(volumes[i].class_name, consensus)
        numbers = {volumes[i].class_name: volumes[i].segment_number for i in idx
                   if volumes[i].segment_number is not None}
        try:
            seg = suggestion_seg_volume(
                list({u: sources[u] for u in first.slice_uids}.values()), first.slice_uids, first.slice_frames,
                masks, algorithm=algorithm, run_key=derived_uid(run_key, "suggestion", ann),
                annotation=annotations[ann], segment_numbers=numbers,  # type: ignore[arg-type]
                series_number=SUGGESTION_SEG_SERIES_NUMBER, manufacturer=manufacturer)
        except ValueError as e:  # masks off the grid, sources neither slices nor one multi-frame image
            log.warning("no suggestion SEG for %s: %s", ann, e)
            continue
        segs.append(seg)
        for i in idx:
            suggestions[i] = (seg, names.index(volumes[i].class_name) + 1)

    # overlays on the key slices, and a drawn flag on the worst one
    overlays: dict[int, list[Dataset]] = {}
    flags: list[DrawnFlag] = []
    series = derived_uid(run_key, "series", "overlay")
    description = f"labelqa mask overlays (NOT FOR DIAGNOSIS): {found}"
    for i in flagged:
        v = volumes[i]
        if v.consensus is None or v.given is None:
            continue
        for rank, k in enumerate(v.key_slices[:key_slices]):
            view = slice_view(v, k)
            src = sources[view.image_uid]
            dice = "" if v.dice is None else f", Dice {v.dice:.2f}"
            caption = (f"{v.class_name}: {(v.kind or v.verdict).replace('_', ' ')}{dice}, slice {k + 1} of "
                       f"{len(v.slice_uids)}")
            overlays.setdefault(i, []).append(mask_overlay_sc(
                src, view.frame, view.given, view.consensus, caption=caption[:80],  # type: ignore[arg-type]
                series_instance_uid=series, series_number=OVERLAY_SERIES_NUMBER,
                sop_instance_uid=derived_uid(run_key, "overlay", i, k), instance_number=1000 * i + rank + 1,
                manufacturer=manufacturer, series_description=description))
            if rank == 0:
                f = mask_flag(view, src, view.given, tracking_uid=derived_uid(run_key, "drawn", i),
                              number=len(flags) + 1)
                flags += [f] if f is not None else []
    drawn = None
    if flags:
        drawn = drawn_flags_sr(
            flags, algorithm=algorithm, series_instance_uid=derived_uid(run_key, "series", "drawn"),
            series_number=DRAWN_SR_SERIES_NUMBER, sop_instance_uid=derived_uid(run_key, "drawn"),
            device_uid=derived_uid("labelqa-device", algorithm.name, algorithm.bundle_hash), manufacturer=manufacturer,
            series_description=f"labelqa flags on the images: {found}")
    out: list[Dataset] = [o for os in overlays.values() for o in os] + segs

    key_sources: dict[str, Dataset] = {}
    frames: dict[str, list[int]] = {}
    for i in flagged:
        v = volumes[i]
        for k in v.key_slices[:key_slices]:
            uid, frame = v.slice_source(k)
            key_sources.setdefault(uid, sources[uid])
            if frame is not None:
                frames.setdefault(uid, []).append(int(frame))
    kos_uid = None
    if flagged:
        kos_uid = derived_uid(run_key, "kos")
        out.append(quality_issue_kos(
            list(key_sources.values()) + [o for os in overlays.values() for o in os] + segs
            + ([drawn] if drawn is not None else []),
            description=f"labelqa: {len(flagged)} segment(s) with suspected mask errors: their key slices, overlays "
                        "and suggested corrections" + ("; the flags drawn on the images" if drawn is not None else ""),
            series_description=f"labelqa quality issues: {found}",
            series_instance_uid=derived_uid(run_key, "series", "kos"), series_number=KOS_SERIES_NUMBER,
            sop_instance_uid=kos_uid, manufacturer=manufacturer, frames=frames))
    report = qa_report_sr(
        sources=key_sources, annotations={v.annotation_uid: annotations[v.annotation_uid] for v in volumes},
        audited=[], heatmaps={}, tracking_uids=[], summary_uid=derived_uid(run_key, "tracking", "summary"),
        algorithm=algorithm, cohort_findings=[], series_instance_uid=derived_uid(run_key, "series", "sr"),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=derived_uid(run_key, "sr"),
        device_uid=derived_uid("labelqa-device", algorithm.name, algorithm.bundle_hash), manufacturer=manufacturer,
        drawn=drawn, series_description=f"labelqa QA: {found}", volumes=volumes,
        volume_tracking_uids=[derived_uid(run_key, "tracking", "segment", i) for i in range(len(volumes))],
        volume_overlays=overlays, volume_suggestions=suggestions, cannot_judge=cannot_judge)
    out.append(report)
    if drawn is not None:
        out.append(drawn)
    log.info("results for study %s: %d segment(s), %d flagged, %d overlay(s), %d suggestion SEG(s)", study_uid,
             len(volumes), len(flagged), sum(map(len, overlays.values())), len(segs))
    return ResultSet(out, report_uid=str(report.SOPInstanceUID), kos_uid=kos_uid,
                     drawn_uid=None if drawn is None else str(drawn.SOPInstanceUID),
                     overlays={i: str(os[0].SOPInstanceUID) for i, os in overlays.items()},
                     suggestions={i: (str(seg.SOPInstanceUID), n) for i, (seg, n) in suggestions.items()})


