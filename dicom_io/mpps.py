"""Modality Performed Procedure Step SCP: a sender's word that a study is complete.

A modality (or a router speaking for it) creates an MPPS when it starts an acquisition (N-CREATE,
status IN PROGRESS) and sets it COMPLETED when it is done (N-SET), naming the study (Scheduled Step
Attributes) and the instances it made (Performed Series Sequence). labelqa takes COMPLETED as the
signal that the study is complete: it is audited once the named instances are stored (at once when
they are), with no quiet period (``StudyStore.complete``). DISCONTINUED changes nothing: the quiet
period decides. The steps are kept in memory: after a restart an N-SET for an unknown step is
still used when it names its instances or study.

Statuses (PS3.4 F.7.2): 0x0000 success; 0x0111 duplicate SOP instance (N-CREATE of a known step);
0x0112 no such SOP instance (N-SET of an unknown step naming nothing usable); 0x0110 the step is
already COMPLETED or DISCONTINUED; 0x0106 invalid attribute value (a status other than IN PROGRESS,
COMPLETED, DISCONTINUED).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

__all__ = ["MppsStep", "MppsScp", "studies_and_instances"]

log = logging.getLogger("labelqa.mpps")

_DUPLICATE, _NO_SUCH_INSTANCE, _INVALID_VALUE, _FINAL = 0x0111, 0x0112, 0x0106, 0x0110
_STATES = ("IN PROGRESS", "COMPLETED", "DISCONTINUED")


@dataclass
class MppsStep:
    """One performed procedure step: its status, the studies and instances it names."""

    status: str
    studies: set[str] = field(default_factory=set)
    instances: set[str] = field(default_factory=set)


def studies_and_instances(ds: Dataset) -> tuple[set[str], set[str]]:
    """The Study Instance UIDs (Scheduled Step Attributes) and SOP Instance UIDs (Performed Series) an
    MPPS dataset names."""
    studies = {str(s.StudyInstanceUID) for s in ds.get("ScheduledStepAttributesSequence") or []
               if s.get("StudyInstanceUID")}
    instances = set()
    for series in ds.get("PerformedSeriesSequence") or []:
        for key in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            instances |= {str(r.ReferencedSOPInstanceUID) for r in series.get(key) or []
                          if r.get("ReferencedSOPInstanceUID")}
    return studies, instances


class MppsScp:
    """The N-CREATE / N-SET handlers of the MPPS SOP class; ``complete(studies, instances)`` is called
    when a step is COMPLETED."""

    def __init__(self, complete: Callable[[set[str], set[str]], object]) -> None:
        self._complete = complete
        self._steps: dict[str, MppsStep] = {}
        self._lock = threading.Lock()

    def on_n_create(self, uid: str, attributes: Dataset) -> tuple[int, Dataset | None]:
        """Handle an N-CREATE: record the step (status, ids); returns (status, attribute list)."""
        status = str(attributes.get("PerformedProcedureStepStatus", "") or "IN PROGRESS").upper()
        if status not in _STATES:
            return _INVALID_VALUE, None
        studies, instances = studies_and_instances(attributes)
        with self._lock:
            if uid in self._steps:
                return _DUPLICATE, None
            self._steps[uid] = MppsStep(status, studies, instances)
        log.info("MPPS %s created (%s): %d study(ies), %d instance(s)", uid, status, len(studies), len(instances))
        if status == "COMPLETED":
            self._done(uid, studies, instances)
        return 0x0000, attributes

    def on_n_set(self, uid: str, modifications: Dataset) -> tuple[int, Dataset | None]:
        """Handle an N-SET: update the step; COMPLETED completes its studies. Returns (status, attributes)."""
        status = str(modifications.get("PerformedProcedureStepStatus", "") or "").upper()
        if status and status not in _STATES:
            return _INVALID_VALUE, None
        studies, instances = studies_and_instances(modifications)
        with self._lock:
            step = self._steps.get(uid)
            if step is None:  # unknown (e.g. created before a restart): usable if it names something
                if not (studies or instances):
                    return _NO_SUCH_INSTANCE, None
                step = self._steps[uid] = MppsStep("IN PROGRESS")
            if step.status in ("COMPLETED", "DISCONTINUED"):
                return _FINAL, None
            step.studies |= studies
            step.instances |= instances
            if status:
                step.status = status
            final = step.status
            studies, instances = set(step.studies), set(step.instances)
        if final == "COMPLETED":
            self._done(uid, studies, instances)
        return 0x0000, modifications

    def _done(self, uid: str, studies: Iterable[str], instances: Iterable[str]) -> None:
        studies, instances = set(studies), set(instances)
        log.info("MPPS %s completed: %d study(ies), %d instance(s)", uid, len(studies), len(instances))
        try:
            self._complete(studies, instances)
        except Exception:  # the quiet period still completes the study
            log.exception("MPPS %s: marking its study complete failed", uid)
