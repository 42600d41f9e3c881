"""Test hooks: named points where a test holds a step until it has acted; inert unless configured.

A test that needs a moment (an audit in the middle of its model step, a batch the peer confirmed
but the outbox has not recorded, a received file written but not yet fsync'd) makes that moment
happen instead of polling for it and hoping the window is still open. It sets
``LABELQA_TEST_HOOKS`` to a directory in the environment of the process under test and arms the
points it needs there (``<dir>/<name>.armed``; the other points pass). Each time that process
reaches an armed point, say ``model-step``, the ``k``-th arrival (counted across every process
sharing the directory) creates ``<dir>/model-step.<k>.reached`` and waits until
``<dir>/model-step.<k>.release`` or ``<dir>/model-step.release`` (every arrival) exists, at most
``LABELQA_TEST_HOOKS_TIMEOUT_S`` seconds (default 600; then it goes on, with a warning). Plain
files work across processes, network namespaces and the Ray worker nodes of one machine. Without
the variable a point costs one environment lookup.

The points (where, and what is true while one is held):

``store-before-fsync``
    :meth:`dicom_io.store.StudyStore.put`: a received instance's bytes are in its temporary file;
    not fsync'd, renamed or indexed, and the sender has no answer yet.
``outbox-after-send``
    :class:`dicom_io.outbox.Outbox`: the peer confirmed a batch; its rows are not yet marked delivered.
``job-start``
    ``service.runtime.executor.InProcessExecutor``: a job is claimed (running, leased, heartbeating)
    and its job function has not started.
``model-step``
    ``service.runtime.executor_ray.AuditActor.infer``: an audit's model step has reached its Ray
    actor; the model has not run.
``reconcile``
    :meth:`dicom_io.store.StudyStore.reconcile` (the first pass): a starting gateway has read the
    index rows and not yet listed the files; it has removed nothing and declared nothing stable.

:class:`HookDir` is the test's side of the same files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["ENV", "TIMEOUT_ENV", "POINTS", "checkpoint", "HookDir"]

log = logging.getLogger(__name__)

ENV = "LABELQA_TEST_HOOKS"
TIMEOUT_ENV = "LABELQA_TEST_HOOKS_TIMEOUT_S"
POINTS = ("store-before-fsync", "outbox-after-send", "job-start", "model-step", "reconcile")


def checkpoint(name: str) -> None:
    """Hold here while a test asks to (see the module docstring); returns at once when not configured.

    Parameters
    ----------
    name
        The point, one of :data:`POINTS`.
    """
    root = os.environ.get(ENV)
    if not root:
        return
    d = Path(root)
    if not (d / f"{name}.armed").exists():
        return
    k = 1
    while True:  # this arrival's number: the first <name>.<k>.reached this call creates
        try:
            os.close(os.open(d / f"{name}.{k}.reached", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            break
        except FileExistsError:
            k += 1
    deadline = time.monotonic() + float(os.environ.get(TIMEOUT_ENV, "600"))
    mine, every = d / f"{name}.{k}.release", d / f"{name}.release"
    while not (mine.exists() or every.exists()):
        if time.monotonic() > deadline:
            log.warning("test hook %s (arrival %d) was not released in time; going on", name, k)
            return
        time.sleep(0.005)


class HookDir:
    """A test's side of the hook files in ``path``: arm points, pass ``env()`` to the process under
    test, wait for an arrival, act, release it.

    Parameters
    ----------
    path
        The directory (created here); one per process or node whose points are counted together.
    points
        The points to arm now (the others let every arrival pass).
    """

    def __init__(self, path: Path | str, points: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        for name in points:
            self.arm(name)

    def arm(self, name: str) -> None:
        """Make arrivals at point ``name`` hold (arm before the process under test can reach it)."""
        if name not in POINTS:
            raise ValueError(f"no test hook named {name!r}; the points are {', '.join(POINTS)}")
        (self.path / f"{name}.armed").touch()

    def env(self) -> dict[str, str]:
        """The environment variable that arms the points of a process started with it."""
        return {ENV: str(self.path)}

    def arrivals(self, name: str) -> int:
        """How many times point ``name`` has been reached so far."""
        return len(list(self.path.glob(f"{name}.*.reached")))

    def wait_reached(self, name: str, k: int = 1, timeout: float = 600.0,
                     alive: Callable[[], str | None] | None = None) -> None:
        """Wait until the ``k``-th arrival at ``name`` holds there.

        Parameters
        ----------
        name, k
            The point and the arrival (1 is the first).
        timeout
            Seconds to wait at most.
        alive
            Checked while waiting: a string (e.g. "the service exited: <log>") ends the wait at once
            with that message; None goes on waiting.

        Raises
        ------
        AssertionError
            When the process under test died or ``timeout`` passed first.
        """
        target = self.path / f"{name}.{k}.reached"
        deadline = time.monotonic() + timeout
        while not target.exists():
            why = alive() if alive is not None else None
            if why:
                raise AssertionError(f"waiting for test hook {name} (arrival {k}): {why}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for test hook {name} (arrival {k}); "
                                     f"{self.arrivals(name)} arrival(s) so far")
            time.sleep(0.01)

    def release(self, name: str, k: int | None = None) -> None:
        """Let arrival ``k`` at ``name`` go on (also when it comes later); ``k=None``: every arrival."""
        (self.path / (f"{name}.release" if k is None else f"{name}.{k}.release")).touch()

    def let_pass(self, name: str, n: int) -> None:
        """Release the first ``n`` arrivals at ``name`` in advance (arrival ``n + 1`` is the one held)."""
        for k in range(1, n + 1):
            self.release(name, k)
