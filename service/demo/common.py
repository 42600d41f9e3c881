"""What every demo task shares: the demo's settings, data and report, and the registry of demo tasks.

A demo task (:class:`DemoTask`) makes its synthetic studies with planted errors, trains its bundle,
and turns the audits into the rows the demo prints; :func:`demo_task` finds the one ``--task`` names.
The label task is :mod:`service.demo.labels`, the mask task :mod:`service.demo.masks` (``--dims 3``:
:mod:`service.demo.volumes`); the loop around them (service, sending, waiting, reports) is
:mod:`service.demo.run`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from models.verdict import FLAGGED
from service.demo.dicomize import planted_classes
from service.runtime.jobs import DONE

if TYPE_CHECKING:  # annotation-only types
    from service.runtime.jobs import Job, JobStore

__all__ = ["REPO", "DEMO_ARCHS", "DemoError", "DemoConfig", "DemoData", "DemoReport", "DemoTask", "register_demo",
           "demo_task", "demo_tasks", "demo_config", "tally", "unaudited_mask_rows", "collect_mask_rows"]

REPO = Path(__file__).resolve().parents[2]
DEMO_ARCHS = "densenet-tiny,resnet-tiny,efficientnet-tiny"


class DemoError(RuntimeError):
    """The demo could not run; the message says what to do."""


@dataclass
class DemoConfig:
    """Sizes and switches of one demo run (small enough for a few minutes on 2 CPU cores)."""

    data_dir: Path = Path("labelqa-demo")
    studies: int = 40
    train_images: int = 320
    image_size: int = 48
    classes: int = 2
    noise_rate: float = 0.125
    epochs: int = 5
    batch_size: int = 16
    archs: str = DEMO_ARCHS
    seed: int = 0
    device: str = "auto"
    orthanc: bool = False
    sender: str = "auto"  # auto | storescu | pynetdicom
    timeout_s: float = 900.0
    keep_running: bool = False
    database_url: str | None = None  # an existing (e.g. PostgreSQL) database; default: SQLite in the run dir
    executor: str = "inprocess"  # inprocess | ray
    ray_address: str | None = None  # HOST:PORT of a Ray head; None with executor "ray": a local Ray
    task: str = "labels"  # labels (SR class labels) | segmentation (SEG masks)
    dims: int = 2  # segmentation: 2 (one image per study) or 3 (a CT series per study, one SEG over it)
    viewer: bool = False  # with orthanc: serve OHIF over its DICOMweb and keep running

    def bundle_key(self) -> str:
        """Cache key of the trained bundle: everything that changes it."""
        parts = {"n": self.train_images, "size": self.image_size, "classes": self.classes, "epochs": self.epochs,
                 "archs": self.archs, "seed": self.seed, "noise": self.noise_rate, "batch": self.batch_size, "v": 4,
                 "task": self.task, "dims": self.dims}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class DemoData:
    studies_dir: Path
    manifest: list[dict[str, str]]
    vocabulary: Path
    train_npz: Path
    class_names: list[str]


@dataclass
class DemoReport:
    """What the demo prints (``--json`` prints it as one document)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    executor: dict[str, object] = field(default_factory=dict)  # kind, nodes, jobs_by_node


class DemoTask(Protocol):
    """One kind of annotation in the demo."""

    name: ClassVar[str]
    """The ``--task`` value."""
    dimension: ClassVar[int]
    """The ``--dims`` value."""
    noun: ClassVar[str]
    """What one row is, plural ("annotations", "masks")."""
    errors: ClassVar[str]
    """What the planted errors are ("label errors", "mask errors")."""
    defaults: ClassVar[dict[str, Any]]
    """This task's own defaults of :class:`DemoConfig` fields (sizes, epochs, members)."""

    def make_data(self, cfg: DemoConfig, work: Path) -> DemoData:
        """The training data (with planted errors) and the DICOM studies to audit (with planted errors)."""
        ...

    def describe_data(self, cfg: DemoConfig, data: DemoData) -> str:
        """One line on the studies made."""
        ...

    def train_bundle(self, cfg: DemoConfig, data: DemoData, out: Path, echo: Callable[[str], None]) -> Path:
        """Fit the demo's bundle into ``out`` (a fresh folder)."""
        ...

    def collect(self, report: DemoReport, jobs: JobStore, data: DemoData, study_uids: list[str]) -> None:
        """One report row per audited annotation, with whether its error was planted; the summary."""
        ...

    def render_rows(self, report: DemoReport) -> list[str]:
        """The table of the text output."""
        ...


_TASKS: dict[tuple[str, int], DemoTask] = {}


def register_demo(task: DemoTask) -> DemoTask:
    _TASKS[(task.name, task.dimension)] = task
    return task


def demo_tasks() -> list[str]:
    return list(dict.fromkeys(name for name, _ in _TASKS))


def demo_task(name: str, dims: int = 2) -> DemoTask:
    """The demo task ``--task name --dims dims`` names (DemoError for an unknown one)."""
    if (name, 2) not in _TASKS and (name, 3) not in _TASKS:
        raise DemoError(f"--task must be one of {', '.join(demo_tasks())}, not {name!r}")
    if (name, dims) not in _TASKS:
        offered = ", ".join(str(d) for t, d in sorted(_TASKS) if t == name)
        raise DemoError(f"--dims {dims} is not offered for --task {name} (offered: {offered})")
    return _TASKS[(name, dims)]


def demo_config(**given: Any) -> DemoConfig:
    """The demo's settings: ``given`` values, else the task's own defaults, else :class:`DemoConfig`'s.

    A value equal to :class:`DemoConfig`'s default counts as not given (the command line's defaults are
    those), so ``--task segmentation`` alone runs the mask demo at its own sizes.
    """
    base = DemoConfig()
    task = demo_task(str(given.get("task", base.task)), int(given.get("dims") or base.dims))
    values = {**task.defaults, **{k: v for k, v in given.items() if v != getattr(base, k)}, "task": task.name,
              "dims": task.dimension}
    return DemoConfig(**values)


def unaudited_mask_rows(report: DemoReport, uid: str, manifest_row: dict[str, str], class_names: list[str],
                        job: Job | None, planted_in: set[str]) -> None:
    """One row per class of a study whose audit did not finish (its state, or "missing", as the verdict)."""
    note = manifest_row.get("mask_corruption") or None
    for cls in class_names:
        report.rows.append({"study_uid": uid, "annotation_uid": manifest_row.get("annotation_uid"), "class": cls,
                            "verdict": job.state if job else "missing", "kind": None, "dice": None,
                            "planted_error": cls in planted_in, "planted": note,
                            "reason": job.reason if job else None})


def collect_mask_rows(report: DemoReport, jobs: JobStore, data: DemoData, study_uids: list[str], task: str,
                      extra: Callable[[Mapping[str, object], dict[str, str], bool], dict[str, object]]) -> None:
    """One report row per audited mask (2-D: per class and frame; 3-D: per segment) with its verdict, kind,
    Dice to the consensus and whether its error was planted (the manifest's ``mask_corruption``), plus
    ``extra(row, manifest_row, planted)``; a study whose audit did not finish gets a row per class."""
    by_study = {r["study_uid"]: r for r in data.manifest}
    for uid in study_uids:
        job = jobs.latest_for_study(uid)
        m = by_study.get(uid, {})
        note = m.get("mask_corruption", "")
        planted_in = planted_classes(note)
        result = (job.result or {}) if job is not None else {}
        if job is None or job.state != DONE:
            unaudited_mask_rows(report, uid, m, data.class_names, job, planted_in)
            continue
        for row in result.get("rows", []):
            cls = str(row.get("class"))
            planted = cls in planted_in
            report.rows.append({
                "study_uid": uid, "annotation_uid": row.get("annotation_uid"),
                "segment_number": row.get("segment_number"), "class": cls, "given_label": cls,
                "verdict": str(row.get("verdict")), "kind": row.get("kind"), "dice": row.get("dice"),
                "agreement": row.get("agreement"), "priority": row.get("priority"), "planted_error": planted,
                "planted": (note or None) if planted else None, **extra(row, m, planted),
            })
        report.outputs.setdefault("result_files", []).extend(result.get("outputs", []))
    tally(report, len(study_uids), task)


def tally(report: DemoReport, n_studies: int, task: str) -> None:
    """The report's summary from its rows: verdict counts, planted errors found and missed, false alarms."""
    counts: dict[str, int] = {}
    tp = fp = fn = 0
    for r in report.rows:
        verdict = str(r["verdict"])
        counts[verdict] = counts.get(verdict, 0) + 1
        flagged, planted = verdict in FLAGGED, bool(r["planted_error"])
        tp += flagged and planted
        fp += flagged and not planted
        fn += (not flagged) and planted
    report.summary = {
        "task": task, "studies": n_studies, "annotations": len(report.rows),
        "planted_errors": sum(1 for r in report.rows if r["planted_error"]), "verdicts": counts,
        "flagged_and_planted": tp, "flagged_not_planted": fp, "planted_not_flagged": fn,
        "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
    }
