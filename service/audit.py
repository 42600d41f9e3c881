"""The one glue from DICOM studies to audit results: annotations -> model bundle -> SR/SC/KOS.

``audit_study`` is used by the service pipeline (one stable study) and ``audit_dicom_dir`` by the
offline ``labelqa audit --bundle B --dicom DIR --out OUT``, which needs no network: it writes the
result objects to ``OUT/dicom/`` and the verdicts to ``OUT/verdicts.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.detector import VERDICTS as LABEL_VERDICTS
from models.verdict import Verdict

log = logging.getLogger(__name__)

LABEL_NOT_IN_BUNDLE = "label_not_in_bundle"


@dataclass
class StudyAudit:
    """What one study's audit produced: result datasets, verdict rows, issue records."""

    study_uid: str | None
    datasets: list[Any] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    issues: list[dict[str, Any]] = field(default_factory=list)


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
    for k, v in sorted((getattr(bundle, "thresholds", None) or {}).items()):
        if k == "precision_steps":  # the ranking's step functions: in the bundle, too long for the SR
            continue
        params[f"threshold.{k}"] = json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else v
    archs = getattr(bundle, "archs", None)
    if archs:
        params["members"] = ",".join(archs)
    name = str(getattr(bundle, "meta", {}).get("name", "labelqa annotation-error detector"))
    return AlgorithmInfo(name=name[:64], version=str(bundle.version), bundle_hash=str(bundle.content_hash),
                         parameters=params)


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


def _audit_sets(sets: Sequence[Any], by_uid: dict[str, Path], bundle: Any, vocabulary: Any, *, device: str,
                batch_size: int, heatmaps_for_hard_cases: bool, parametric_maps: bool = False,
                member_panels: bool = False) -> list[StudyAudit]:
    """Run the bundle once over every sample of every set, then write each study's results."""
    import pydicom

    from dicom_io.results import AuditedAnnotation, write_results

    classes = set(bundle.class_names)
    out: list[StudyAudit] = []
    todo: list[tuple[StudyAudit, Any]] = []
    for aset in sets:
        sa = StudyAudit(aset.study_uid, issues=[i.to_dict() for i in aset.issues])
        out.append(sa)
        for s in aset.samples:
            if s.label not in classes:
                sa.issues.append({"code": LABEL_NOT_IN_BUNDLE, "annotation_uid": s.provenance.annotation_uid,
                                  "image_uid": s.provenance.image_uid,
                                  "message": f"label {s.label!r} is not a class of the bundle ({sorted(classes)})"})
                continue
            todo.append((sa, s))
    if not todo:
        return out
    images = np.stack([bundle.prepare_frame(s.pixels) for _, s in todo])
    given = [s.label for _, s in todo]
    t0 = time.perf_counter()
    verdicts = bundle.audit(images, given, batch_size=batch_size, device=device)
    log.info("audited %d annotation(s) in %.1f s", len(todo), time.perf_counter() - t0)
    cohort = _cohort_text(bundle, images, given, [s.provenance.observer or "unknown observer" for _, s in todo],
                          batch_size=batch_size, device=device)
    per_study: dict[int, list[tuple[Any, Any]]] = defaultdict(list)
    for (sa, s), v in zip(todo, verdicts, strict=True):
        per_study[id(sa)].append((s, v))
    algorithm = algorithm_info(bundle)
    for sa in out:
        pairs = per_study.get(id(sa), [])
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
        missing = sorted(u for u in needed if u not in by_uid)
        if missing:
            raise ValueError(f"study {sa.study_uid}: files of {missing} not found among the inputs")
        loaded = {u: pydicom.dcmread(by_uid[u]) for u in needed}
        sources = {a.image_uid: loaded[a.image_uid] for a in audited}
        annotations = {a.annotation_uid: loaded[a.annotation_uid] for a in audited}
        observers = {s.provenance.observer or "unknown observer" for s, _ in pairs}
        labels = {v.given_label for _, v in pairs}
        findings = [text for (grp, cls), text in cohort.items() if grp in observers and cls in labels]
        sa.datasets = write_results(sources, annotations, audited, algorithm, findings,
                                    heatmaps_for_hard_cases=heatmaps_for_hard_cases, parametric_maps=parametric_maps,
                                    member_panels=member_panels)
    return out


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
                heatmaps_for_hard_cases: bool = False, parametric_maps: bool = False, member_panels: bool = False
                ) -> tuple[list[Any], list[dict[str, Any]]]:
    """Audit one study's files: (result datasets SR/SC/KOS, verdict rows). No annotations: ([], [])."""
    from dicom_io.annotations import read_study

    files = [Path(f) for f in files]
    by_uid = _headers(files)
    aset = read_study([by_uid[u] for u in by_uid], vocabulary, pixel_transform=bundle.prepare_frame)
    (sa,) = _audit_sets([aset], by_uid, bundle, vocabulary, device=device, batch_size=batch_size,
                        heatmaps_for_hard_cases=heatmaps_for_hard_cases, parametric_maps=parametric_maps,
                        member_panels=member_panels)
    for issue in sa.issues:
        log.info("study %s: %s (%s)", sa.study_uid, issue.get("code"), issue.get("message"))
    return sa.datasets, sa.rows


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
        "bundle": {"path": str(bundle_path), "content_hash": bundle.content_hash, "version": bundle.version},
        "studies": sum(1 for sa in audits if sa.study_uid), "annotations": len(items), "verdicts": counts,
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
