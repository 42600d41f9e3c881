"""Sessions ended on the server: a logged-out session cookie stops working at once, on every gateway.

Session cookies are signed, not stored (``service.http.auth``); without this a cookie copied before
logout would keep working until it expires (``[auth] session_max_age_s``). Logout records the
session's id (a hash of its per-session secret, never the secret) until the cookie would have
expired anyway, in the service database (table ``revoked_sessions``) when there is one, so that
every gateway on the database refuses it; in memory otherwise.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine, Float, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from dicom_io.db import Base, ensure_schema, insert_ignore

__all__ = ["RevokedSessionRow", "SessionRevocations"]


class RevokedSessionRow(Base):
    """A session ended by logout, until its cookie would have expired."""

    __tablename__ = "revoked_sessions"
    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class SessionRevocations:
    """The ended sessions: in the database ``engine`` when given, else in memory."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine
        self._memory: dict[str, float] = {}
        self._lock = threading.Lock()
        if engine is not None:
            ensure_schema(engine)

    def revoke(self, session_id: str, expires_at: float) -> None:
        """End ``session_id`` (until ``expires_at``, epoch seconds); expired entries are dropped."""
        now = time.time()
        if self.engine is None:
            with self._lock:
                self._memory = {k: t for k, t in self._memory.items() if t > now}
                self._memory[session_id] = expires_at
            return
        with self.engine.begin() as c:
            c.execute(delete(RevokedSessionRow).where(RevokedSessionRow.expires_at <= now))
            c.execute(insert_ignore(c, RevokedSessionRow).values(session_id=session_id, expires_at=expires_at))

    def is_revoked(self, session_id: str) -> bool:
        """Whether ``session_id`` was ended by logout."""
        if self.engine is None:
            with self._lock:
                return session_id in self._memory
        with self.engine.connect() as c:
            q = select(RevokedSessionRow.session_id).where(RevokedSessionRow.session_id == session_id)
            return c.execute(q).first() is not None
