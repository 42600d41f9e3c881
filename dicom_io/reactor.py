"""Event-driven waits for pynetdicom's polling loops on the listener's associations.

pynetdicom runs two threads per association, and both poll: the DUL thread sleeps ``1 ms``
between ``select(timeout=0)`` checks of the socket and of its queue of outgoing primitives, and
the association thread sleeps ``1 ms`` between checks of its queue of decoded DIMSE messages. A
C-STORE crosses both loops twice (request in, response out), so it waits for several sleeps, and a
shorter sleep buys latency with CPU that a 2-core gateway needs for hashing and fsync.

Here each sleep of an accepted association's loops becomes a wait that *wakes on the event it was
polling for*:

- the DUL thread blocks in ``select`` on its socket and on a wake-up socket that is written
  whenever the association thread hands the DUL a primitive to send (``send_pdu``);
- the association thread blocks on the condition of its DIMSE message queue.

The wait is bounded by ``max_wait_s`` so that what does not wake them (an A-RELEASE or A-ABORT
taken from the other queue, the ARTIM timer, a kill) is seen as soon as it is with pynetdicom's own
1 ms sleep. Threads other than the listener's association threads (our outgoing associations,
the user's threads) keep pynetdicom's sleep. If pynetdicom's internals change shape, ``attach``
returns False and pynetdicom's polling is left as it is.
"""

from __future__ import annotations

import queue
import select
import socket
import ssl
import threading
import time
import weakref
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from pynetdicom.dul import DULServiceProvider

__all__ = ["attach", "install"]

_ATTR = "_labelqa_wait"


class _ReactorTime:
    """Stand-in for the ``time`` module inside ``pynetdicom.dul`` / ``pynetdicom.association``."""

    def __init__(self, max_wait_s: float, cap_s: float | None = None) -> None:
        self.max_wait_s = max_wait_s
        self.cap_s = cap_s  # cap on the other sleeps of the module (None: unchanged)

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        wait = getattr(threading.current_thread(), _ATTR, None)
        if wait is not None and seconds <= 0.001:  # the reactor loops' own sleeps, not shutdown delays
            wait(self.max_wait_s)
        else:
            time.sleep(seconds if self.cap_s is None else min(seconds, self.cap_s))


class _DulWait:
    """Wait of a DUL thread: until its socket is readable, a primitive is queued to send, or timeout."""

    def __init__(self, dul: DULServiceProvider) -> None:
        self._dul = weakref.ref(dul)
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        weakref.finalize(dul, _close, self._r, self._w)

    def wake(self) -> None:
        try:
            self._w.send(b"\0")
        except (BlockingIOError, OSError):  # already signalled (buffer full) or closed
            pass

    def __call__(self, timeout: float) -> None:
        dul = self._dul()
        if dul is None:
            time.sleep(timeout)
            return
        if dul.to_provider_queue.qsize() or dul.event_queue.qsize():
            return
        sock = getattr(dul.socket, "socket", None)
        if sock is None or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            if sock is None:
                time.sleep(timeout)
            return
        try:
            ready, _, _ = select.select([sock, self._r], [], [], timeout)
        except (OSError, ValueError):  # the socket was closed under us: pynetdicom's own check reports it
            return
        if self._r in ready:
            try:
                while self._r.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass


class _AssocWait:
    """Wait of an association thread: until a decoded DIMSE message is queued, or timeout."""

    def __init__(self, msg_queue: queue.Queue) -> None:
        self._q = msg_queue

    def __call__(self, timeout: float) -> None:
        q = self._q
        with q.not_empty:
            if not q._qsize():  # type: ignore[attr-defined]  # the stdlib's unlocked size
                q.not_empty.wait(timeout)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def install(max_wait_s: float, requestor_sleep_s: float = 0.0002) -> bool:
    """Replace the ``time`` module seen by pynetdicom's DUL and association loops (process-wide).

    Threads that ``attach`` marked wait on events for at most ``max_wait_s``. The other sleeps of
    ``pynetdicom.association`` (our outgoing associations waiting for a response) are capped at
    ``requestor_sleep_s``; the DUL's other sleeps are unchanged. Returns False where pynetdicom no
    longer has that shape (that module is left as it is).
    """
    import pynetdicom.association as pa
    import pynetdicom.dul as pd

    ok = True
    for mod, cap in ((pd, None), (pa, requestor_sleep_s)):
        current = getattr(mod, "time", None)
        if isinstance(current, _ReactorTime):
            current.max_wait_s, current.cap_s = max_wait_s, cap
        elif current is time:
            mod.time = _ReactorTime(max_wait_s, cap)  # type: ignore[attr-defined]  # duck-types time
        else:
            ok = False
    return ok


def attach(assoc: object) -> bool:
    """Make an accepted association's two loops wait on events (call before ``assoc.start()``)."""
    dul = getattr(assoc, "dul", None)
    dimse = getattr(assoc, "dimse", None)
    msg_queue = getattr(dimse, "msg_queue", None)
    send_pdu = getattr(dul, "send_pdu", None)
    if not (
        isinstance(dul, threading.Thread)
        and isinstance(assoc, threading.Thread)
        and isinstance(msg_queue, queue.Queue)
        and hasattr(dul, "to_provider_queue")
        and hasattr(dul, "event_queue")
        and callable(send_pdu)
    ):
        return False
    dul_wait = _DulWait(cast("DULServiceProvider", dul))  # duck-typed above

    def send_pdu_and_wake(primitive: object) -> None:
        send_pdu(primitive)
        dul_wait.wake()

    dul.send_pdu = send_pdu_and_wake  # type: ignore[attr-defined]  # instance attribute shadows the method
    setattr(dul, _ATTR, dul_wait)
    setattr(assoc, _ATTR, _AssocWait(msg_queue))
    return True
