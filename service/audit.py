"""The one glue from DICOM studies to audit results: annotations -> model bundle -> SR/SC/KOS.

``audit_study`` is used by the service pipeline (one stable study) and ``audit_dicom_dir`` by the
offline ``labelqa audit --bundle B --dicom DIR --out OUT``, which needs no network: it writes the
result objects to ``OUT/dicom/`` and the verdicts to ``OUT/verdicts.json``.

An audit is three steps with typed records between them, so the middle one can run elsewhere (a
Ray worker holding the bundle, :mod:`service.executor_ray`): :func:`read_study_input` (files ->
:class:`StudyInput`, on the gateway), :func:`infer` (:class:`InferenceBatch` of arrays ->
:class:`InferenceResult`, wherever the models are), :func:`write_study_results` (-> result
datasets and verdict rows, on the gateway). Masks take the same three steps: :func:`read_mask_input`
(:class:`MaskInput`), :func:`infer_masks` (:class:`MaskBatch` -> :class:`MaskResult`),
:func:`write_mask_results`; :func:`model_step` is the middle step for either. The read and write
steps need the bundle's description only (class names, input size, version, thresholds), not its weights.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.detector import VERDICTS as LABEL_VERDICTS
from models.verdict import Verdict

__all__ = [
    "LABEL_NOT_IN_BUNDLE", "StudyAudit", "StudyInput", "InferenceBatch", "InferenceResult", "MaskInput", "MaskBatch",
    "MaskResult", "ModelBatch", "ModelResult", "InferFn", "resolve_vocabulary", "algorithm_info", "is_segmentation",
    "read_study_input", "make_batch", "infer", "write_study_results", "model_step", "warm_up", "audit_study",
    "audit_masks", "read_mask_input", "make_mask_batch", "infer_masks", "write_mask_results", "audit_dicom_dir",
]

log = logging.getLogger(__name__)

LABEL_NOT_IN_BUNDLE = "label_not_in_bundle"


@dataclass
class StudyAudit:
    """What one study's audit produced: result datasets, verdict rows, issue records."""

    study_uid: str | None
    datasets: list[Any] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    issues: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StudyInput:
    """The read step's output for one study: samples to judge (labels the bundle knows) and their files."""

    study_uid: str | None
    by_uid: dict[str, Path]  # SOP Instance UID -> file, for the write step
    samples: list[Any] = field(default_factory=list)  # dicom_io.annotations Sample
    issues: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class InferenceBatch:
    """What the model step needs: arrays and labels only (it travels through Ray's object store)."""

    images: np.ndarray  # (N, H, W) float32 in [0, 1], the bundle's input size
    given: list[str]  # given label (class name) per image
    groups: list[str]  # annotator per image (cohort findings need more than one)

    def __len__(self) -> int:
        return len(self.given)


@dataclass
class InferenceResult:
    """The model step's output: a verdict per image of the batch, in order, and cohort findings."""

    verdicts: list[Any]  # models.bundle.SampleVerdict (scores, Grad-CAM heatmaps)
    cohort: dict[tuple[str, str], str] = field(default_factory=dict)  # (annotator, class) -> finding
    seconds: float = 0.0
    worker: dict[str, Any] | None = None  # where it ran, when not in this process (node id, pid)


@dataclass
class MaskInput:
    """The read step's output for one study's masks: per (SEG, source frame) the masks of the bundle's
    classes (``dicom_io.annotations`` MaskSample), and the study's files."""

    study_uid: str | None
    by_uid: dict[str, Path]  # SOP Instance UID -> file, for the write step
    frames: list[list[Any]] = field(default_factory=list)  # one list of MaskSample per audited frame
    issues: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class MaskBatch:
    """What the mask model step needs: each frame's pixels on its native grid, the given masks, spacing."""

    images: list[np.ndarray]
    given: list[dict[str, np.ndarray]]  # class name -> bool mask of the image's size
    spacings: list[tuple[float, float] | None]

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class MaskResult:
    """The mask model step's output: per frame of the batch, in order, a verdict per class of the bundle."""

    verdicts: list[list[Any]]  # models.seg MaskVerdict (consensus mask, regions, Dice, HD95)
    seconds: float = 0.0
    worker: dict[str, Any] | None = None  # where it ran, when not in this process (node id, pid)


ModelBatch = InferenceBatch | MaskBatch
ModelResult = InferenceResult | MaskResult
InferFn = Callable[[ModelBatch], ModelResult]
"""The model step run elsewhere (a Ray actor): a label or a mask batch in, its result out."""


def resolve_vocabulary(bundle: Any, bundle_path: Path | None = None, vocabulary: Any = None) -> Any:
    """The label vocabulary: the one given (object or file), the bundle's own file, or its class names."""
    from dicom_io.vocabulary import Vocabulary, load_vocabulary

    if vocabulary is not None and not isinstance(vocabulary, (str, Path)):
        return vocabulary
    if vocabulary is not None:
        return load_vocabulary(Path(vocabulary))
    if bundle_path is not None:
        for name in ("vocabulary.toml", "configs/vocabulary.toml", "vocabulary.json", "configs/vocabulary.json"):
            p = Path(bundle_path) / name
            if p.is_file():
                return load_vocabulary(p)
    return Vocabulary.from_class_names(list(bundle.class_names))


def algorithm_info(bundle: Any) -> Any:
    """TID 4019 description of a bundle: name, version, content hash, thresholds."""
    from dicom_io.results import AlgorithmInfo

    params: dict[str, Any] = {"image_size": getattr(bundle, "image_size", None),
                              "classes": ",".join(getattr(bundle, "class_names", []))}
    thresholds = getattr(bundle, "thresholds", None) or {}
    if hasattr(thresholds, "to_dict"):
        thresholds = thresholds.to_dict()
    for k, v in sorted(thresholds.items()):
        if k in ("precision_steps", "score_knots", "competence"):  # in the bundle; too long for the SR (the
            continue  # competence is stated as "cannot judge" findings)
        params[f"threshold.{k}"] = json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else v
    archs = getattr(bundle, "archs", None)
    if archs:
        params["members"] = ",".join(archs)
    meta = getattr(bundle, "meta", {})
    default = "labelqa mask-error detector" if is_segmentation(bundle) else "labelqa annotation-error detector"
    name = str(meta.get("name", default))
    version = getattr(bundle, "version", None) or meta.get("version", "0")
    return AlgorithmInfo(name=name[:64], version=str(version), bundle_hash=str(bundle.content_hash),
                         parameters=params)


def is_segmentation(bundle: Any) -> bool:
    """Whether ``bundle`` audits masks (a ``models.seg`` bundle) rather than class labels."""
    return getattr(bundle, "meta", {}).get("task") == "segmentation"


def _headers(files: Iterable[Path]) -> dict[str, Path]:
    """SOP Instance UID -> path for the readable DICOM files (our own result objects left out)."""
    import pydicom

    from dicom_io.results.series import is_own_output_dataset

    out: dict[str, Path] = {}
    for p in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True,
                                 specific_tags=["SOPInstanceUID", "Manufacturer", "SeriesNumber", "Modality"])
        except Exception:  # noqa: BLE001 - read_study reports unreadable files as issues
            continue
        if is_own_output_dataset(ds):
            continue
        if "SOPInstanceUID" in ds:
            out[str(ds.SOPInstanceUID)] = Path(p)
    return out


def _code(vocabulary: Any, name: str) -> Any:
    try:
        return vocabulary.code_for(name)
    except (KeyError, AttributeError):
        return name


def _study_input(aset: Any, by_uid: dict[str, Path], classes: set[str]) -> StudyInput:
    """Split a read study's samples into those the bundle can judge and issues for the others."""
    si = StudyInput(aset.study_uid, by_uid, issues=[i.to_dict() for i in aset.issues])
    for s in aset.samples:
        if s.label not in classes:
            si.issues.append({"code": LABEL_NOT_IN_BUNDLE, "annotation_uid": s.provenance.annotation_uid,
                              "image_uid": s.provenance.image_uid,
                              "message": f"label {s.label!r} is not a class of the bundle ({sorted(classes)})"})
            continue
        si.samples.append(s)
    return si


def read_study_input(files: Iterable[Path], bundle: Any, vocabulary: Any) -> StudyInput:
    """Read step: one study's files -> the samples to audit (``bundle``: class names and ``prepare_frame``)."""
    from dicom_io.annotations import read_study

    by_uid = _headers(Path(f) for f in files)
    aset = read_study([by_uid[u] for u in by_uid], vocabulary, pixel_transform=bundle.prepare_frame)
    return _study_input(aset, by_uid, set(bundle.class_names))


def make_batch(inputs: Sequence[StudyInput], bundle: Any) -> InferenceBatch:
    """The samples of ``inputs`` (in order) as one batch of model inputs."""
    samples = [s for si in inputs for s in si.samples]
    size = int(bundle.image_size)
    images = (np.stack([bundle.prepare_frame(s.pixels) for s in samples]) if samples
              else np.zeros((0, size, size), np.float32))
    return InferenceBatch(images, [s.label for s in samples],
                          [s.provenance.observer or "unknown observer" for s in samples])


def infer(bundle: Any, batch: InferenceBatch, *, device: str = "auto", batch_size: int = 64) -> InferenceResult:
    """Model step: the loaded bundle's verdicts (and cohort findings) for a batch."""
    t0 = time.perf_counter()
    verdicts = bundle.audit(batch.images, batch.given, batch_size=batch_size, device=device)
    log.info("audited %d annotation(s) in %.1f s", len(batch), time.perf_counter() - t0)
    cohort = _cohort_text(bundle, batch.images, batch.given, batch.groups, batch_size=batch_size, device=device)
    return InferenceResult(list(verdicts), cohort, time.perf_counter() - t0)


def write_study_results(inputs: Sequence[StudyInput], result: InferenceResult | None, bundle: Any, vocabulary: Any,
                        *, heatmaps_for_hard_cases: bool = False, parametric_maps: bool = False,
                        member_panels: bool = False) -> list[StudyAudit]:
    """Write step: each study's result datasets (SR/SC/KOS) and verdict rows from the batch's verdicts.

    ``result`` holds one verdict per sample of ``inputs`` in order (None when there were no samples).
    """
    import pydicom

    from dicom_io.results import AuditedAnnotation, write_results

    out = [StudyAudit(si.study_uid, issues=list(si.issues)) for si in inputs]
    n = sum(len(si.samples) for si in inputs)
    if n == 0:
        return out
    if result is None or len(result.verdicts) != n:
        got = 0 if result is None else len(result.verdicts)
        raise ValueError(f"the model step returned {got} verdicts for {n} samples")
    algorithm = algorithm_info(bundle)
    cohort = result.cohort
    start = 0
    for si, sa in zip(inputs, out, strict=True):
        pairs = list(zip(si.samples, result.verdicts[start:start + len(si.samples)], strict=True))
        start += len(si.samples)
        if not pairs:
            continue
        audited = []
        for s, v in pairs:
            pv = s.provenance
            audited.append(AuditedAnnotation(
                study_uid=pv.study_uid, annotation_uid=pv.annotation_uid,
                annotation_sop_class_uid=pv.annotation_sop_class_uid, source=pv.source, image_uid=pv.image_uid,
                image_sop_class_uid=pv.image_sop_class_uid, frame=pv.frame, segment_number=pv.segment_number,
                content_path=pv.content_path, given_label=_code(vocabulary, v.given_label),
                consensus_label=_code(vocabulary, v.consensus_label), verdict=v.verdict, agreement=v.agreement,
                p_given=v.p_given, priority=v.priority, n_disagree=v.n_disagree, n_members=v.n_members,
                consensus_prob=v.consensus_prob, heatmap=v.heatmap,
                member_heatmaps=getattr(v, "member_heatmaps", None),
            ))
            sa.rows.append({
                "study_uid": pv.study_uid, "annotation_uid": pv.annotation_uid, "source": pv.source,
                "segment_number": pv.segment_number, "content_path": pv.content_path, "image_uid": pv.image_uid,
                "frame": pv.frame, "given_label": v.given_label, "consensus_label": v.consensus_label,
                "verdict": v.verdict, "agreement": v.agreement, "p_given": v.p_given,
                "consensus_prob": v.consensus_prob, "n_disagree": v.n_disagree, "n_members": v.n_members,
                "priority": v.priority, "score": v.score,
                "member_probs": {a: dict(zip(bundle.class_names, ps, strict=False))
                                 for a, ps in (getattr(v, "member_probs", None) or {}).items()},
            })
        needed = {a.image_uid for a in audited} | {a.annotation_uid for a in audited}
        missing = sorted(u for u in needed if u not in si.by_uid)
        if missing:
            raise ValueError(f"study {sa.study_uid}: files of {missing} not found among the inputs")
        loaded = {u: pydicom.dcmread(si.by_uid[u]) for u in needed}
        sources = {a.image_uid: loaded[a.image_uid] for a in audited}
        annotations = {a.annotation_uid: loaded[a.annotation_uid] for a in audited}
        observers = {s.provenance.observer or "unknown observer" for s, _ in pairs}
        labels = {v.given_label for _, v in pairs}
        findings = [text for (grp, cls), text in cohort.items() if grp in observers and cls in labels]
        sa.datasets = write_results(sources, annotations, audited, algorithm, findings,
                                    heatmaps_for_hard_cases=heatmaps_for_hard_cases, parametric_maps=parametric_maps,
                                    member_panels=member_panels)
    return out


def _audit_sets(sets: Sequence[Any], by_uid: dict[str, Path], bundle: Any, vocabulary: Any, *, device: str,
                batch_size: int, heatmaps_for_hard_cases: bool, parametric_maps: bool = False,
                member_panels: bool = False) -> list[StudyAudit]:
    """Run the bundle once over every sample of every set, then write each study's results."""
    classes = set(bundle.class_names)
    return _infer_and_write([_study_input(aset, by_uid, classes) for aset in sets], bundle, vocabulary, None,
                            device=device, batch_size=batch_size, heatmaps_for_hard_cases=heatmaps_for_hard_cases,
                            parametric_maps=parametric_maps, member_panels=member_panels)


def _infer_and_write(inputs: list[StudyInput], bundle: Any, vocabulary: Any, infer_fn: InferFn | None, *,
                     device: str, batch_size: int, **write: bool) -> list[StudyAudit]:
    """Infer once over every sample of ``inputs`` (here, or with ``infer_fn``), then write each study."""
    batch = make_batch(inputs, bundle)
    result = None
    if len(batch):
        got = infer_fn(batch) if infer_fn is not None else infer(bundle, batch, device=device, batch_size=batch_size)
        if not isinstance(got, InferenceResult):
            raise TypeError(f"the model step returned {type(got).__name__} for a label batch")
        result = got
    return write_study_results(inputs, result, bundle, vocabulary, **write)


def model_step(bundle: Any, batch: ModelBatch, *, device: str = "auto", batch_size: int = 64) -> ModelResult:
    """The model step for either kind of batch, with a loaded bundle (in process, or on a Ray actor)."""
    if isinstance(batch, MaskBatch):
        return infer_masks(bundle, batch, device=device)
    return infer(bundle, batch, device=device, batch_size=batch_size)


def warm_up(bundle: Any, device: str = "auto") -> None:
    """One tiny inference, so that the first study does not pay for lazy initialisation."""
    size = int(bundle.image_size)
    if is_segmentation(bundle):
        infer_masks(bundle, MaskBatch([np.zeros((size, size), np.float32)], [{}], [None]), device=device)
    else:
        bundle.audit(np.zeros((1, size, size), np.float32), [bundle.class_names[0]], batch_size=1, device=device)


def _cohort_text(bundle: Any, images: np.ndarray, given: list[str], groups: list[str], **kw: Any
                 ) -> dict[tuple[str, str], str]:
    """Systematic-disagreement findings per (annotator, given class), as one sentence each.

    Only computed when the annotations come from more than one annotator (it costs a second pass).
    """
    if len(set(groups)) < 2 or not hasattr(bundle, "cohort_findings"):
        return {}
    try:
        found = bundle.cohort_findings(images, given, groups, **kw)
    except Exception as e:  # noqa: BLE001 - optional; the verdicts stand without it
        log.warning("cohort findings unavailable: %s", e)
        return {}
    out = {}
    for c in found:
        out[(str(c["group"]), str(c["given_class"]))] = (
            f"annotator group {c['group']!r}, given label {c['given_class']!r}: every model disagrees with "
            f"{100 * c['unanimous_disagreement_rate']:.0f}% of {c['n']} annotations (rest "
            f"{100 * c['rest_rate']:.0f}%); a systematic difference, not individual errors "
            f"({c['flagged_before']} -> {c['flagged_after']} flagged)"
        )
    return out


def audit_study(files: Iterable[Path], bundle: Any, vocabulary: Any, *, device: str = "auto", batch_size: int = 64,
                heatmaps_for_hard_cases: bool = False, parametric_maps: bool = False, member_panels: bool = False,
                infer_fn: InferFn | None = None) -> StudyAudit:
    """Audit one study's files: result datasets (SR/SC/KOS, and SEG/SC for masks), verdict rows, issues.

    A segmentation bundle audits the study's SEG masks (:func:`audit_masks`); a label bundle its
    labels. ``infer_fn`` runs the model step elsewhere (default: with ``bundle`` here); then ``bundle``
    needs only its description (class names, input size, thresholds), not its weights.
    """
    files = [Path(f) for f in files]
    if is_segmentation(bundle):
        sa = audit_masks(files, bundle, vocabulary, device=device, infer_fn=infer_fn)
    else:
        (sa,) = _infer_and_write([read_study_input(files, bundle, vocabulary)], bundle, vocabulary, infer_fn,
                                 device=device, batch_size=batch_size, heatmaps_for_hard_cases=heatmaps_for_hard_cases,
                                 parametric_maps=parametric_maps, member_panels=member_panels)
    for issue in sa.issues:
        log.info("study %s: %s (%s)", sa.study_uid, issue.get("code"), issue.get("message"))
    return sa


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def audit_masks(files: Iterable[Path], bundle: Any, vocabulary: Any, *, device: str = "auto",
                infer_fn: InferFn | None = None) -> StudyAudit:
    """Audit the SEG masks of one study with a segmentation bundle.

    Every (source frame, class of the bundle) a SEG refers to is one mask: the given mask (empty when
    the SEG has no pixel of the class there) against the members' consensus on the frame's native
    grid. Results: a TID 1411 group per mask in the QA report, an overlay SC and the consensus as a
    suggested-correction SEG for each suspected mask error, the flagged frames in the KOS. The same
    three steps as for labels: :func:`read_mask_input`, :func:`infer_masks` (here, or ``infer_fn``),
    :func:`write_mask_results`.
    """
    from dicom_io.annotations import read_study

    by_uid = _headers(Path(f) for f in files)
    aset = read_study([by_uid[u] for u in by_uid], vocabulary, masks=True, mask_classes=list(bundle.class_names))
    return _infer_and_write_masks(read_mask_input(aset, by_uid, list(bundle.class_names)), bundle, vocabulary,
                                  infer_fn, device=device)


def read_mask_input(aset: Any, by_uid: dict[str, Path], classes: list[str]) -> MaskInput:
    """Read step for masks: a read study's mask samples grouped by (SEG, source frame); issues for the
    classes the bundle does not know."""
    mi = MaskInput(aset.study_uid, by_uid, issues=[i.to_dict() for i in aset.issues])
    frames: dict[tuple[str, str, int | None], list[Any]] = {}
    for m in aset.mask_samples:
        if m.class_name not in classes:
            mi.issues.append({"code": LABEL_NOT_IN_BUNDLE, "annotation_uid": m.provenance.annotation_uid,
                              "image_uid": m.provenance.image_uid,
                              "message": f"class {m.class_name!r} is not a class of the bundle ({classes})"})
            continue
        if m.pixels.size == 0:
            continue
        frames.setdefault((m.provenance.annotation_uid, m.provenance.image_uid, m.provenance.frame), []).append(m)
    mi.frames = list(frames.values())
    return mi


def make_mask_batch(mi: MaskInput) -> MaskBatch:
    """The frames of ``mi`` (in order) as one batch of arrays."""
    return MaskBatch([g[0].pixels for g in mi.frames], [{m.class_name: m.given_mask for m in g} for g in mi.frames],
                     [g[0].spacing for g in mi.frames])


def infer_masks(bundle: Any, batch: MaskBatch, *, device: str = "auto") -> MaskResult:
    """Mask model step: the loaded segmentation bundle's verdicts for a batch of frames."""
    t0 = time.perf_counter()
    verdicts = bundle.audit(batch.images, batch.given, batch.spacings, device=device)
    log.info("audited %d mask(s) on %d frame(s) in %.1f s", sum(map(len, batch.given)), len(batch),
             time.perf_counter() - t0)
    return MaskResult(list(verdicts), time.perf_counter() - t0)


def _infer_and_write_masks(mi: MaskInput, bundle: Any, vocabulary: Any, infer_fn: InferFn | None, *,
                           device: str) -> StudyAudit:
    if not mi.frames:
        return StudyAudit(mi.study_uid, issues=list(mi.issues))
    batch = make_mask_batch(mi)
    got = infer_fn(batch) if infer_fn is not None else infer_masks(bundle, batch, device=device)
    if not isinstance(got, MaskResult):
        raise TypeError(f"the model step returned {type(got).__name__} for a mask batch")
    return write_mask_results(mi, got, bundle, vocabulary)


def write_mask_results(mi: MaskInput, result: MaskResult, bundle: Any, vocabulary: Any) -> StudyAudit:
    """Write step for masks: the study's result datasets (SR, suggested SEG, overlay SC, KOS) and rows."""
    import pydicom

    from dicom_io.results import AuditedMask, write_results

    sa = StudyAudit(mi.study_uid, issues=list(mi.issues))
    if len(result.verdicts) != len(mi.frames):
        raise ValueError(f"the model step returned {len(result.verdicts)} frames of verdicts for {len(mi.frames)}")
    th: Any = getattr(bundle, "thresholds", None)
    unjudged: dict[str, str] = th.cannot_judge(list(bundle.class_names)) if hasattr(th, "cannot_judge") else {}
    audited = []
    for g, vs in zip(mi.frames, result.verdicts, strict=True):
        by_class = {v.class_name: v for v in vs}
        for m in g:
            v = by_class[m.class_name]
            pv = m.provenance
            regions = [{**r.to_row(), "bbox": tuple(r.bbox)} for r in v.regions]
            hd95 = _finite(v.hd95_consensus) if v.distance_unit == "mm" else None
            audited.append(AuditedMask.from_sample(
                m, verdict=str(v.verdict), kind=None if v.kind is None else str(v.kind),
                dice=_finite(v.dice_consensus), hd95_mm=hd95, agreement=_finite(v.agreement_dice),
                priority=float(v.priority), score=_finite(v.score), consensus=v.consensus, regions=regions,
                class_code=_code(vocabulary, m.class_name),
            ))
            sa.rows.append({
                "study_uid": pv.study_uid, "annotation_uid": pv.annotation_uid, "source": "seg",
                "segment_number": pv.segment_number, "image_uid": pv.image_uid, "frame": pv.frame,
                "class": m.class_name, "given_label": m.class_name, "verdict": str(v.verdict),
                "kind": None if v.kind is None else str(v.kind), "dice": _finite(v.dice_consensus),
                "hd95": _finite(v.hd95_consensus), "distance_unit": v.distance_unit,
                "agreement": _finite(v.agreement_dice), "priority": float(v.priority), "score": _finite(v.score),
                "given_area_px": int(v.given_area_px), "consensus_area_px": int(v.consensus_area_px),
                "regions": [{k: r[k] for k in ("kind", "area_px", "area_mm2")} | {"bbox": list(r["bbox"])}
                            for r in regions],
                **({"cannot_judge": unjudged[m.class_name]} if m.class_name in unjudged else {}),
            })
    needed = {a.image_uid for a in audited} | {a.annotation_uid for a in audited}
    loaded = {u: pydicom.dcmread(mi.by_uid[u]) for u in needed}
    sources = {a.image_uid: loaded[a.image_uid] for a in audited}
    annotations = {a.annotation_uid: loaded[a.annotation_uid] for a in audited}
    present = {m.class_name for g in mi.frames for m in g}
    sa.datasets = write_results(sources, annotations, [], algorithm_info(bundle), masks=audited,
                                cannot_judge=[t for c, t in unjudged.items() if c in present])
    return sa


def audit_dicom_dir(bundle_path: Path | str, dicom_dir: Path | str, out_dir: Path | str, *,
                    vocabulary: Path | str | None = None, device: str = "auto", batch_size: int = 64,
                    heatmaps_for_hard_cases: bool = False, parametric_maps: bool = False,
                    member_panels: bool = False) -> dict[str, Any]:
    """Audit every study under ``dicom_dir`` offline: ``out_dir/dicom/*.dcm`` + ``out_dir/verdicts.json``.

    Returns the summary written into verdicts.json (without the per-annotation items).
    """
    from dicom_io.annotations import read_studies
    from dicom_io.results import save_results
    from models.bundle import load_bundle

    t0 = time.perf_counter()
    dicom_dir, out_dir = Path(dicom_dir), Path(out_dir)
    if not dicom_dir.is_dir():
        raise ValueError(f"{dicom_dir} is not a folder of DICOM studies")
    bundle = load_bundle(bundle_path)
    vocab = resolve_vocabulary(bundle, Path(bundle_path), vocabulary)
    by_uid = _headers(p for p in sorted(dicom_dir.rglob("*")) if p.is_file())
    if is_segmentation(bundle):
        sets = read_studies(list(by_uid.values()), vocab, masks=True, mask_classes=list(bundle.class_names))
        classes = list(bundle.class_names)
        audits = [_infer_and_write_masks(read_mask_input(aset, by_uid, classes), bundle, vocab, None, device=device)
                  for aset in sets]
    else:
        sets = read_studies(list(by_uid.values()), vocab, pixel_transform=bundle.prepare_frame)
        audits = _audit_sets(sets, by_uid, bundle, vocab, device=device, batch_size=batch_size,
                             heatmaps_for_hard_cases=heatmaps_for_hard_cases, parametric_maps=parametric_maps,
                             member_panels=member_panels)
    written: list[str] = []
    for sa in audits:
        written += [str(p.relative_to(out_dir)) for p in save_results(sa.datasets, out_dir / "dicom")]
    items = [r for sa in audits for r in sa.rows]
    counts = {str(v): n for v in Verdict if (n := sum(r["verdict"] == v for r in items)) or v in LABEL_VERDICTS}
    summary = {
        "bundle": {"path": str(bundle_path), "content_hash": bundle.content_hash,
                   "version": getattr(bundle, "version", None) or bundle.meta.get("version")},
        "studies": sum(1 for sa in audits if sa.study_uid), "annotations": len(items), "verdicts": counts,
        **({"cannot_judge": cj} if (cj := sorted({str(r["cannot_judge"]) for r in items if r.get("cannot_judge")}))
           else {}),
        "objects": written, "issues": [dict(i, study_uid=sa.study_uid) for sa in audits for i in sa.issues],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "verdicts.json").write_text(json.dumps({**summary, "items": items}, indent=2, default=_json))
    log.info("audited %d annotation(s) of %d study(ies): %s; %d object(s) in %s", len(items), summary["studies"],
             counts, len(written), out_dir / "dicom")
    return summary


def _json(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return str(v)
