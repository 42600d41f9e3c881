"""The review service: decisions made through it are written back to the PACS (a corrected SR or SEG, the
QA report reissued VERIFIED) through the outbox; it also serves the annotation files the item view shows."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from dicom_io.results import find_saved, save_results
from dicom_io.results.revision import (
    Correction,
    ReviewedItem,
    Reviewer,
    RevisionError,
    corrected_annotation,
    verified_report,
)
from dicom_io.results.seg_out import read_suggestion
from dicom_io.settings import SegSettings
from dicom_io.store import InstanceRow
from dicom_io.vocabulary import Vocabulary, load_vocabulary
from service.review.decisions import DecisionOutcome
from service.review.store import ReviewStore
from service.review.tables import Decision, DecisionError
from service.review.volume import VolumeMasks, is_volume_item, volume_correction

if TYPE_CHECKING:  # annotation-only types
    from pydicom.dataset import Dataset
    from pydicom.sr.coding import Code

    from dicom_io.outbox import Outbox
    from service.runtime.jobs import JobStore
    from service.settings import Settings

__all__ = ["ReviewService"]

log = logging.getLogger("labelqa.review")


class ReviewService:
    """The review workbench's back end: the store kept in step with the audits, and write-back.

    A decision that changes something is written back at once (a superseding annotation for
    "label_wrong", the QA report reissued VERIFIED for every decisive answer) through the outbox; a
    write-back interrupted by a crash is still "pending" in the table and :meth:`resume` redoes it.
    """

    def __init__(self, engine: Engine, *, jobs: JobStore | None = None, data_dir: Path | None = None,
                 outbox: Outbox | None = None, deliver: bool = True, vocabulary: Vocabulary | None = None,
                 organization: str = "labelqa QA",
                 display_names: dict[str, str] | None = None) -> None:
        self.store = ReviewStore(engine)
        self.engine = engine
        self.jobs = jobs
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.outbox = outbox
        self.deliver = deliver
        self._vocabulary = vocabulary
        self.organization = organization
        self.display_names = display_names or {}
        self._wb_lock = threading.Lock()
        self.volume_masks = VolumeMasks(self)
        """The given and suggested masks of volume items, slice by slice (read once per segment, cached)."""

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine, *, jobs: JobStore | None = None,
                      outbox: Outbox | None = None) -> ReviewService:
        names = {u.name: (u.display_name or u.name) for u in settings.auth.users}
        svc = cls(engine, jobs=jobs, data_dir=Path(settings.store.data_dir), outbox=outbox,
                  deliver=bool(settings.outbox.destinations), organization=settings.auth.organization,
                  display_names=names)
        svc._settings = settings
        return svc

    _settings: Settings | None = None

    @property
    def seg_limits(self) -> SegSettings:
        """The ``[seg]`` bounds on reading one SEG (the defaults without settings)."""
        return self._settings.seg if self._settings is not None else SegSettings()

    # ---------------------------------------------------------------- vocabulary

    def vocabulary(self) -> Vocabulary | None:
        """The label vocabulary (configured file, the bundle's own, else the labels seen), loaded once."""
        if self._vocabulary is None:
            vocab = None
            s = self._settings
            if s is not None:
                candidates = [s.audit.vocabulary] if s.audit.vocabulary else []
                if s.audit.bundle:
                    b = Path(s.audit.bundle)
                    candidates += [b / n for n in ("vocabulary.toml", "configs/vocabulary.toml", "vocabulary.json",
                                                   "configs/vocabulary.json")]
                for c in candidates:
                    if c and Path(c).is_file():
                        vocab = load_vocabulary(Path(c))
                        break
            if vocab is None:
                labels = self.store.labels()
                if not labels:
                    return None  # nothing audited yet: try again later
                vocab = Vocabulary.from_class_names(labels)
            self._vocabulary = vocab
        return self._vocabulary

    def class_names(self) -> list[str]:
        v = self.vocabulary()
        names = list(v.class_names) if v is not None else []
        return names + [x for x in self.store.labels() if x not in names]

    def _code(self, label: str) -> Code | str:
        v = self.vocabulary()
        try:
            return v.code_for(label).to_pydicom() if v is not None else label
        except KeyError:
            return label

    # ---------------------------------------------------------------- reading

    def sync(self) -> int:
        if self.jobs is None:
            return 0
        return self.store.sync(self.jobs)

    def instance_path(self, sop_instance_uid: str | None) -> Path | None:
        """The stored file of an instance (the study store's index), or None."""
        if not sop_instance_uid or self.data_dir is None:
            return None

        with Session(self.engine) as s:
            rel = s.scalar(select(InstanceRow.path).where(InstanceRow.sop_instance_uid == sop_instance_uid))
        if rel is not None:
            p = self.data_dir / rel
            return p if p.is_file() else None
        return find_saved(self.data_dir / "results", sop_instance_uid)  # our own result objects

    def resolve(self, annotation_uid: str, *, item_id: int | None = None, segment_number: int | None = None,
                content_path: str | None = None) -> dict[str, Any]:
        """The one audited row an annotation UID (and segment / content path) names; DecisionError otherwise."""
        rows = self.store.find(annotation_uid, segment_number, content_path)
        if item_id is not None:
            rows = [r for r in rows if r["id"] == item_id]
        current = [r for r in rows if r["current"]] or rows
        if not current:
            raise LookupError(f"annotation {annotation_uid} has not been audited")
        if len(current) > 1:
            raise DecisionError(f"annotation {annotation_uid} has {len(current)} audited parts: give segment_number "
                                "or content_path (or item_id)")
        return current[0]

    # ---------------------------------------------------------------- deciding and writing back

    def decide(self, item_id: int, decision: str, reviewer: str, *, corrected_label: str | None = None,
               comment: str | None = None, corrected_mask: str | None = None) -> DecisionOutcome:
        """Record a decision; write it back when it changed something."""
        out = self.store.decide(item_id, decision, reviewer, corrected_label=corrected_label, comment=comment,
                                allowed_labels=self.class_names() or None, corrected_mask=corrected_mask)
        if out.changed and out.decision["writeback_state"] == "pending":
            out.decision = self.writeback(item_id) or out.decision
        return out

    def resume(self) -> int:
        """Redo the write-backs still pending (after a restart); returns how many were done."""
        n = 0
        for item_id in self.store.pending_writebacks():
            if self.writeback(item_id) is not None:
                n += 1
        return n

    def _reviewer(self, name: str, at: float) -> Reviewer:
        return Reviewer(self.display_names.get(name, name), self.organization,
                        datetime.fromtimestamp(at, tz=UTC))

    def writeback(self, item_id: int) -> dict[str, Any] | None:
        """Write the decision on ``item_id`` back: files under results/<study>/review/, queued in the outbox.

        Returns the decision dict after the write-back (state done or failed), None when there is none.
        """
        with self._wb_lock:
            item = self.store.item(item_id)
            if item is None or item["decision"] is None:
                return None
            d = item["decision"]
            if d["writeback_state"] != "pending":
                return d
            detail: dict[str, object] = {"version": d["version"]}
            try:
                if self.data_dir is None:
                    raise RevisionError("no data dir: nothing can be written")
                out_dir = self.data_dir / "results" / item["study_uid"] / "review"
                written: list[Path] = []
                reviewer = self._reviewer(d["reviewer"], d["decided_at"])
                corrected = self._corrected_version(item, reviewer, d)
                if corrected is not None:
                    written += save_results([corrected], out_dir)
                    detail["corrected_uid"] = str(corrected.SOPInstanceUID)
                    detail["corrected_sop_class_uid"] = str(corrected.SOPClassUID)
                    detail["corrected_path"] = str(written[-1])
                report_path = self.instance_path(item["report_uid"])
                if report_path is not None:
                    decided = [x for x in self.store.study_decisions(item["study_uid"])
                               if x["report_uid"] == item["report_uid"]]
                    reviewed = [ReviewedItem(x["annotation_uid"], x["segment_number"], x["decision"]["decision"],
                                             self._code(x["decision"]["corrected_label"])
                                             if x["decision"]["corrected_label"] else None,
                                             x["decision"]["comment"], x["decision"]["reviewer"],
                                             corrected_mask=x["decision"].get("corrected_mask"),
                                             image_uid=x["image_uid"] if x["source"] == "seg" else None,
                                             frame=x["frame"] if x["source"] == "seg" else None)
                                for x in decided]
                    previous = self._previous_reports(decided, item_id)
                    rep = verified_report(pydicom.dcmread(report_path), reviewed, reviewer,
                                          previous=[pydicom.dcmread(p, stop_before_pixels=True) for p in previous[-1:]],
                                          key=[len(previous)], instance_number=2 + len(previous))
                    written += save_results([rep], out_dir)
                    detail["report_uid"] = str(rep.SOPInstanceUID)
                    detail["report_path"] = str(written[-1])
                detail["files"] = [str(p) for p in written]
                if self.outbox is not None and self.deliver and written:
                    self.outbox.enqueue(written)
                    detail["queued"] = True
                self.store.set_writeback(item_id, "done", detail)
                log.info("review: wrote back item=%d: %s", item_id,
                         ", ".join(k for k in ("corrected_uid", "report_uid") if k in detail))
            except (RevisionError, OSError, ValueError, KeyError) as e:
                log.error("review: write-back of item %d failed: %s", item_id, e)
                detail["error"] = f"{type(e).__name__}: {e}"
                self.store.set_writeback(item_id, "failed", detail)
            return self.store.item(item_id)["decision"]  # type: ignore[index]

    def current_correction(self, annotation_uid: str) -> Path | None:
        """The newest corrected version of ``annotation_uid`` written back (the file the PACS received),
        when every current decision on it has been written back; None otherwise (or when none was needed)."""
        parts = [x for x in self.store.find(annotation_uid) if x["current"] and x["decision"]]
        if not parts or any(x["decision"]["writeback_state"] != "done" for x in parts):
            return None
        written = sorted((x["decision"]["decided_at"], Path(p)) for x in parts
                         if (p := (x["decision"].get("writeback") or {}).get("corrected_path")) and Path(p).is_file())
        return written[-1][1] if written else None

    def _corrected_version(self, item: dict[str, Any], reviewer: Reviewer, d: dict[str, Any]) -> Dataset | None:
        """The next version of the annotation object with every current correction on it, or None when
        it needs none (no correction now, and none written before)."""
        parts = [x for x in self.store.find(item["annotation_uid"]) if x["current"] and x["decision"]]
        fixes = []
        extra_sources: dict[str, Dataset] = {}  # a whole-segment correction: the headers of its series' slices
        for x in parts:
            dx = x["decision"]
            if dx["decision"] != Decision.LABEL_WRONG:
                continue
            label = self._code(dx["corrected_label"]) if dx["corrected_label"] else None
            if dx.get("corrected_mask") == "suggestion" and is_volume_item(x):  # the whole segment, every slice
                fix, headers = volume_correction(self.volume_masks, x, label)
                fixes.append(fix)
                extra_sources.update(headers)
            elif dx.get("corrected_mask") == "suggestion":
                fixes.append(Correction(label, x["content_path"], x["segment_number"], mask=self.suggested_mask(x),
                                        image_uid=x["image_uid"], frame=x["frame"]))
            elif label is not None:
                fixes.append(Correction(label, x["content_path"], x["segment_number"]))
        before = sorted((x["decision"]["decided_at"], Path(p)) for x in parts
                        if (p := (x["decision"].get("writeback") or {}).get("corrected_path")) and Path(p).is_file())
        if not fixes and not before:
            return None
        src = self.instance_path(item["annotation_uid"])
        if src is None:
            raise RevisionError(f"annotation {item['annotation_uid']} is not in the store")
        original = pydicom.dcmread(src)
        sources = dict(extra_sources)  # headers are enough to rebuild a SEG over them
        if any(f.mask is not None for f in fixes):  # the SEG is rebuilt from its source images
            for series in original.get("ReferencedSeriesSequence") or []:
                for ref in series.get("ReferencedInstanceSequence") or []:
                    uid = str(ref.ReferencedSOPInstanceUID)
                    if uid not in sources and (p := self.instance_path(uid)) is not None:
                        sources[uid] = pydicom.dcmread(p)
        previous = [pydicom.dcmread(before[-1][1], stop_before_pixels=True)] if before else []
        version = 1 + len({p for _, p in before})
        return corrected_annotation(original, fixes, reviewer, predecessors=previous,
                                    key=[item["id"], d["version"], version], instance_number=version, sources=sources)

    def suggested_mask(self, item: dict[str, Any]) -> np.ndarray:
        """The suggested (consensus) mask of a flagged SEG mask item on its source frame: bool (rows,
        columns), read from the audit's suggestion SEG (never recomputed). RevisionError when there is none."""
        uid = item.get("suggestion_uid")
        if not uid:
            raise RevisionError(f"item {item['id']} has no suggested mask")
        path = self.instance_path(uid)
        if path is None:
            raise RevisionError(f"suggestion SEG {uid} of item {item['id']} is not among the results")
        try:
            return read_suggestion(pydicom.dcmread(path), str(item["given_label"]), str(item["image_uid"]),
                                   item["frame"])
        except ValueError as e:
            raise RevisionError(str(e)) from None

    @staticmethod
    def _previous_reports(decided: list[dict[str, Any]], item_id: int) -> list[Path]:
        """Reissued reports of the study written so far, oldest first (the last one is superseded next)."""
        found = []
        for x in decided:
            wb = x["decision"].get("writeback") or {}
            p = wb.get("report_path")
            if p and Path(p).is_file():
                found.append((x["decision"]["decided_at"], Path(p)))
        return [p for _, p in sorted(found)]

    def stats(self) -> dict[str, object]:
        return self.store.loop_stats()
