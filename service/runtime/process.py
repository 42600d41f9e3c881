"""The service process: the study store, the DICOM listener and pluggable components, run until a signal.

``run_service`` is what ``labelqa serve`` runs. Other parts (HTTP API, audit pipeline, outbox
sender) plug in as *components*: objects with ``start()`` and ``stop()``, or factories
``(service) -> component`` that get the running ``Service`` (its settings and store) to build one.

Start order: store (stability timer) -> components (in the given order) -> listener, so that
everything downstream is ready before the first instance is accepted. Stop order is the reverse:
the listener stops accepting first (running associations get a grace period, then are aborted),
then components in reverse order, then the store.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from dicom_io.scp import Listener
from dicom_io.store import StudyStable, StudyStore
from service.migrations import upgrade
from service.settings import Settings

__all__ = ["Component", "ComponentSpec", "thread_component", "Service", "configure_logging", "run_service"]

log = logging.getLogger("labelqa.service")


@runtime_checkable
class Component(Protocol):
    """Something the service starts after the store and stops before it."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


ComponentSpec = Component | Callable[["Service"], Component]


class _ThreadComponent:
    """Adapter: run ``target(stop_event)`` in a thread; stop sets the event and joins."""

    def __init__(self, name: str, target: Callable[[threading.Event], object]) -> None:
        self.name, self.target = name, target
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.target(self.stop_event)
        except Exception:
            log.exception("component %s crashed", self.name)

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=30)


def thread_component(name: str, target: Callable[[threading.Event], object]) -> Component:
    """Wrap a ``run_forever(stop_event)`` style function as a component."""
    return _ThreadComponent(name, target)


class Service:
    """The store, the listener and the plugged-in components of one labelqa process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        upgrade(settings.store.resolved_database_url())  # the schema first (Alembic), then its users
        self.store = StudyStore(
            settings.store.data_dir,
            settings.store.resolved_database_url(),
            settings.store.stable_after_s,
            fsync_directory=settings.store.fsync_directory,
            max_inflated_mb=settings.store.max_inflated_mb,
            inflate_budget_mb=settings.store.inflate_budget_mb,
            gateway_lease_s=settings.store.gateway_lease_s,
        )
        self.listener = Listener(settings.listener, self.store)
        self.components: list[Component] = []
        self._started: list[Component] = []

    def add(self, spec: ComponentSpec) -> Component:
        """Add a component (or build one from a factory that takes this service)."""
        comp = spec if isinstance(spec, Component) else spec(self)
        self.components.append(comp)
        return comp

    def start(self) -> None:
        self.store.start()
        for comp in self.components:
            comp.start()
            self._started.append(comp)
        self.listener.start()

    def stop(self) -> None:
        try:
            self.listener.stop()
        finally:
            for comp in reversed(self._started):
                try:
                    comp.stop()
                except Exception:
                    log.exception("stopping component %r failed", comp)
            self._started.clear()
            self.store.close()


def configure_logging(level: str) -> None:
    """Plain line logs to stderr; pynetdicom's own chatter only from WARNING up unless DEBUG."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)


def run_service(
    settings: Settings,
    *,
    on_study_stable: Callable[[StudyStable], None] | None = None,
    components: Iterable[ComponentSpec] = (),
    stop_event: threading.Event | None = None,
    ready: Callable[[Service], None] | None = None,
) -> int:
    """Run the service until SIGTERM/SIGINT (or ``stop_event``); returns the exit code.

    ``on_study_stable`` subscribes to the store's study-stable events. ``components`` are started
    after the store and before the listener. ``ready(service)`` is called once everything runs.
    """
    stop = stop_event or threading.Event()
    svc = Service(settings)
    if on_study_stable is not None:
        svc.store.subscribe(on_study_stable)
    for spec in components:
        svc.add(spec)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):

            def _handler(signum, _frame, _stop=stop) -> None:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                _stop.set()

            previous[sig] = signal.signal(sig, _handler)
    try:
        svc.start()
        if ready is not None:
            ready(svc)
        while not stop.wait(timeout=1.0):
            pass
    finally:
        svc.stop()
        for signum, h in previous.items():
            signal.signal(signum, h)
    log.info("stopped")
    return 0
