"""Executors: who runs the audit jobs queued in the job table.

:class:`Executor` is the interface: the service queues jobs in the database (:mod:`service.runtime.jobs`)
and calls :meth:`Executor.notify`; an executor claims jobs with a lease, runs the job function and
records the outcome. :class:`InProcessExecutor` is the embedded default (a pool of worker threads in
the service process, each with its own warm models); :class:`service.runtime.executor_ray.RayExecutor` keeps
the same claim loop and sends the model step to Ray actors (the job table stays the truth). A job
function that raises :class:`JobRetry` (e.g. its remote worker died) hands the job back to the queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from dicom_io.hooks import checkpoint
from service.runtime.jobs import DONE, FAILED, FINAL_STATES, Job, JobStore, owner_id

__all__ = ["Outcome", "WorkerContext", "JobFunction", "JobRetry", "Executor", "InProcessExecutor"]

log = logging.getLogger("labelqa.executor")

_T = TypeVar("_T")


@dataclass
class Outcome:
    """What a job function reports back: a final state, a reason, counts and a JSON-ready result."""

    state: str = DONE
    reason: str | None = None
    n_samples: int | None = None
    n_flagged: int | None = None
    result: dict[str, Any] | None = None


@dataclass
class WorkerContext:
    """Per-worker state kept across jobs: the place to keep loaded models warm."""

    index: int
    owner: str
    cache: dict[str, object] = field(default_factory=dict)

    def cached(self, key: str, load: Callable[[], _T]) -> _T:
        """Return ``cache[key]``, loading it once with ``load()``."""
        if key not in self.cache:
            self.cache[key] = load()
        return cast(_T, self.cache[key])  # what ``load`` gave for this key


JobFunction = Callable[[Job, WorkerContext], Outcome]


class JobRetry(Exception):
    """Raised by a job function when the job should run again (another attempt), not fail.

    The job goes back to the queue (``JobStore.release``: failed after ``max_attempts``); nothing
    of the interrupted attempt is recorded.
    """


class Executor(Protocol):
    """Runs queued audit jobs. Implementations: :class:`InProcessExecutor` (default), ``RayExecutor``."""

    def start(self) -> None:
        """Start the workers (they pick up queued jobs, including those left by a previous run)."""

    def notify(self) -> None:
        """Tell the workers that a job was queued."""

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; give running jobs up to ``timeout`` seconds, then hand them back to the queue."""

    def status(self) -> dict[str, object]:
        """JSON-ready state for /health: workers, busy workers, whether models are loaded."""


class InProcessExecutor:
    """A pool of worker threads in this process, each claiming jobs from the :class:`JobStore`.

    ``warmup(ctx)`` runs once per worker before its first job (load the model bundle there so it
    stays warm); ``fn(job, ctx)`` runs one job and returns an :class:`Outcome`. Exceptions become
    ``failed`` jobs with the error as reason; the worker goes on.
    """

    def __init__(
        self,
        jobs: JobStore,
        fn: JobFunction,
        workers: int = 1,
        *,
        warmup: Callable[[WorkerContext], None] | None = None,
        poll_s: float = 2.0,
        on_finished: Callable[[Job, Outcome], None] | None = None,
    ) -> None:
        self.jobs = jobs
        self.fn = fn
        self.n_workers = workers
        self.warmup = warmup
        self.poll_s = poll_s
        self.on_finished = on_finished
        self._wake = threading.Condition()
        self._pending_wakeups = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.contexts: list[WorkerContext] = []
        self._busy: dict[int, int | None] = {}
        self._warm: dict[int, bool] = {}
        self.warmup_error: str | None = None

    # -- interface -----------------------------------------------------------------------------
    def start(self) -> None:
        requeued = self.jobs.requeue_stale(startup=True)
        if requeued:
            log.info("re-queued %d job(s) left running by a previous run: %s", len(requeued), requeued)
        self._stop.clear()
        for i in range(self.n_workers):
            ctx = WorkerContext(index=i, owner=owner_id(i))
            self.contexts.append(ctx)
            self._busy[i] = None
            self._warm[i] = False
            t = threading.Thread(target=self._loop, args=(ctx,), name=f"labelqa-worker-{i}", daemon=True)
            self._threads.append(t)
            t.start()

    def notify(self) -> None:
        with self._wake:
            self._pending_wakeups += 1
            self._wake.notify_all()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for ctx in self.contexts:
            job_id = self._busy.get(ctx.index)
            if job_id is not None:
                # Still running after the grace period: hand it back so the next start runs it again.
                self.jobs.release(job_id, ctx.owner, "service stopped during the job")

    def status(self) -> dict[str, object]:
        return {
            "kind": "in-process",
            "workers": self.n_workers,
            "busy": sum(1 for v in self._busy.values() if v is not None),
            "models_loaded": bool(self._warm) and all(self._warm.values()),
            "warmup_error": self.warmup_error,
        }

    # -- worker --------------------------------------------------------------------------------
    def _wait(self) -> None:
        with self._wake:
            if self._pending_wakeups == 0 and not self._stop.is_set():
                self._wake.wait(self.poll_s)
            self._pending_wakeups = max(0, self._pending_wakeups - 1)

    def _loop(self, ctx: WorkerContext) -> None:
        if self.warmup is not None:
            try:
                self.warmup(ctx)
                self._warm[ctx.index] = True
            except Exception as e:  # noqa: BLE001 - report, keep serving (jobs will fail with the reason)
                self.warmup_error = f"{type(e).__name__}: {e}"
                log.error("worker %d: warm-up failed: %s", ctx.index, self.warmup_error)
        else:
            self._warm[ctx.index] = True
        last_heartbeat_check = 0.0
        while not self._stop.is_set():
            if time.monotonic() - last_heartbeat_check > max(5.0, self.jobs.lease_s / 4):
                # Leases of crashed peers (other processes / hosts) expire: pick their jobs up again.
                self.jobs.requeue_stale()
                last_heartbeat_check = time.monotonic()
            try:
                job = self.jobs.claim(ctx.owner)
            except Exception as e:  # noqa: BLE001 - database busy or gone for a moment
                log.warning("worker %d: cannot claim a job: %s", ctx.index, e)
                job = None
            if job is None:
                self._wait()
                continue
            self._run(job, ctx)

    def _run(self, job: Job, ctx: WorkerContext) -> None:
        self._busy[ctx.index] = job.id
        stop_beat = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job.id, ctx.owner, stop_beat), daemon=True)
        beat.start()
        log.info("job %d: audit of study %s started (attempt %d)", job.id, job.study_uid, job.attempts)
        retry: str | None = None
        try:
            checkpoint("job-start")  # test hook (dicom_io.hooks); inert unless configured
            outcome = self.fn(job, ctx)
            if outcome.state not in FINAL_STATES:
                outcome = Outcome(state=FAILED, reason=f"job function returned state {outcome.state!r}")
        except JobRetry as e:
            retry = str(e) or "retry"
        except Exception as e:  # noqa: BLE001 - one bad study must not stop the worker
            log.exception("job %d: audit of study %s failed", job.id, job.study_uid)
            outcome = Outcome(state=FAILED, reason=f"{type(e).__name__}: {e}")
        finally:
            stop_beat.set()
            beat.join()
        if retry is not None:
            self.jobs.release(job.id, ctx.owner, retry)
            self._busy[ctx.index] = None
            log.warning("job %d: handed back to the queue (%s)", job.id, retry)
            return
        ok = self.jobs.finish(
            job.id, ctx.owner, outcome.state, reason=outcome.reason, n_samples=outcome.n_samples,
            n_flagged=outcome.n_flagged, result=outcome.result,
        )
        self._busy[ctx.index] = None
        if not ok:
            log.warning("job %d: lease lost before the job finished; its result is not recorded", job.id)
            return
        log.info("job %d: %s (%s)", job.id, outcome.state, outcome.reason or "ok")
        if self.on_finished is not None:
            try:
                done = self.jobs.get(job.id)
                if done is not None:
                    self.on_finished(done, outcome)
            except Exception:  # noqa: BLE001
                log.exception("job %d: on_finished hook failed", job.id)

    def _heartbeat(self, job_id: int, owner: str, stop: threading.Event) -> None:
        interval = max(0.5, self.jobs.lease_s / 3)
        while not stop.wait(interval):
            if not self.jobs.heartbeat(job_id, owner):
                log.warning("job %d: lease lost", job_id)
                return
