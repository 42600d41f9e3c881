"""Gateways sharing one index database: who is alive, so that none touches what another is writing.

Several ``labelqa serve`` processes (gateways) may share one data dir and one PostgreSQL index. Each
registers in ``store_gateways`` when its store starts and renews its lease every third of
``[store] gateway_lease_s``; one whose lease ran out is taken for dead. The store uses this to leave
alone, at reconciliation, the temp files of live gateways (their names carry the gateway id) and
fresh files that have no index row yet, and to leave the studies that a live gateway is receiving to
that gateway: only the gateway that stored a study's latest instance declares it complete, and the
studies of a dead one are taken over. Clocks of the gateways' machines are assumed synchronised
(NTP): leases and quiet periods are compared in wall-clock time.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

from sqlalchemy import Engine, Float, Integer, String, delete, select, update
from sqlalchemy.orm import Mapped, mapped_column

from dicom_io.db import Base, insert_ignore

__all__ = ["GatewayRow", "GatewayRegistry", "new_gateway_id"]

log = logging.getLogger("labelqa.store")


def new_gateway_id() -> str:
    """A fresh gateway id (12 hex digits: it is part of the names of the gateway's temp files)."""
    return uuid.uuid4().hex[:12]


class GatewayRow(Base):
    """A gateway (a store writing into the shared data dir) and the time it last renewed its lease."""

    __tablename__ = "store_gateways"
    gateway_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)


class GatewayRegistry:
    """This gateway's entry in ``store_gateways``, and the others that are alive."""

    def __init__(self, engine: Engine, gateway_id: str, lease_s: float) -> None:
        self.engine, self.gateway_id, self.lease_s = engine, gateway_id, float(lease_s)
        self._live: set[str] = set()

    def live_others(self, *, refresh: bool = True) -> set[str]:
        """The ids of the other gateways whose lease runs (``refresh`` False: as last read)."""
        if refresh:
            with self.engine.connect() as c:
                rows = c.execute(select(GatewayRow.gateway_id).where(
                    GatewayRow.heartbeat_at > time.time() - self.lease_s,
                    GatewayRow.gateway_id != self.gateway_id)).scalars()
                self._live = set(rows)
        return set(self._live)

    def renew(self) -> None:
        """Register, or renew the lease; forget gateways dead for ten leases."""
        now = time.time()
        with self.engine.begin() as c:
            done = c.execute(update(GatewayRow).where(GatewayRow.gateway_id == self.gateway_id)
                             .values(heartbeat_at=now)).rowcount
            if not done:
                c.execute(insert_ignore(c, GatewayRow).values(
                    gateway_id=self.gateway_id, host=socket.gethostname()[:255], pid=os.getpid(), started_at=now,
                    heartbeat_at=now))
                log.info("gateway %s registered (lease %.0f s)", self.gateway_id, self.lease_s)
            c.execute(delete(GatewayRow).where(GatewayRow.heartbeat_at < now - 10 * self.lease_s))

    def deregister(self) -> None:
        """Remove this gateway's entry (it stops writing)."""
        with self.engine.begin() as c:
            c.execute(delete(GatewayRow).where(GatewayRow.gateway_id == self.gateway_id))
