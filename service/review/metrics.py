"""The review loop measured: flag precision and errors confirmed per review from real decisions, the
efficacy curve, and the Prometheus gauges."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, and_, func, or_, select
from sqlalchemy.orm import Session

from service.review.tables import (
    AuditedRow,
    Decision,
    DecisionRow,
)

__all__ = ["LoopStats", "ReviewCollector"]

log = logging.getLogger("labelqa.review")


class LoopStats:
    """The loop's numbers from the decisions (a part of :class:`service.review.ReviewStore`)."""

    engine: Engine
    _stats: tuple[object, dict[str, Any]] | None

    _stamp: Callable[[Session], tuple[object, ...]]  # the worklist's change stamp

    def loop_stats(self, fractions: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)) -> dict[str, Any]:
        """Flag precision and errors confirmed per review from real decisions, and the efficacy curve.

        ``flag_precision``: of the flagged items with a decisive answer (wrong/right), the share confirmed
        wrong. ``errors_per_review``: confirmed errors per decision made. ``efficacy``: for a budget of
        each fraction of the current audited items taken in priority order, the share of all confirmed
        errors it contains.
        """
        with Session(self.engine) as s:
            stamp = (self._stamp(s), tuple(fractions))
            if self._stats is not None and self._stats[0] == stamp:
                return self._stats[1]
            n_items = int(s.scalar(select(func.count()).select_from(AuditedRow).where(AuditedRow.current.is_(True)))
                          or 0)
            by = s.execute(select(AuditedRow.flagged, DecisionRow.decision, func.count())
                           .join(DecisionRow, DecisionRow.item_id == AuditedRow.id)
                           .group_by(AuditedRow.flagged, DecisionRow.decision)).all()
            # ranks (0-based, in worklist order) of the confirmed errors among the current items
            wrong = s.execute(select(AuditedRow.priority, AuditedRow.id)
                              .join(DecisionRow, DecisionRow.item_id == AuditedRow.id)
                              .where(DecisionRow.decision == Decision.LABEL_WRONG, AuditedRow.current.is_(True))).all()
            ranks = []
            for p, i in wrong:
                above = s.scalar(select(func.count()).select_from(AuditedRow).where(
                    AuditedRow.current.is_(True),
                    or_(AuditedRow.priority > p, and_(AuditedRow.priority == p, AuditedRow.id > i))))
                ranks.append(int(above or 0))
        counts: dict[str, int] = {str(d): 0 for d in Decision}
        flagged_wrong = flagged_right = 0
        for flagged, dec, n in by:
            counts[dec] = counts.get(dec, 0) + int(n)
            if flagged and dec == Decision.LABEL_WRONG:
                flagged_wrong += int(n)
            if flagged and dec == Decision.LABEL_RIGHT:
                flagged_right += int(n)
        decided = sum(counts.values())
        precision = flagged_wrong / (flagged_wrong + flagged_right) if flagged_wrong + flagged_right else None
        errors = counts[Decision.LABEL_WRONG]
        efficacy = []
        for frac in fractions:
            budget = int(round(frac * n_items))
            found = sum(1 for r in ranks if r < budget)
            efficacy.append({"fraction": frac, "budget": budget,
                             "found": found, "share": (found / len(ranks)) if ranks else None})
        out = {"items": n_items, "decided": decided, "decisions": counts, "flag_precision": precision,
               "errors_confirmed": errors, "errors_per_review": errors / decided if decided else None,
               "efficacy": efficacy}
        self._stats = (stamp, out)
        return out


class ReviewCollector:
    """Prometheus gauges of the review loop, read at scrape time (register on the service's registry)."""

    def __init__(self, store: LoopStats) -> None:
        self.store = store

    def describe(self) -> list:
        return []

    def collect(self):  # noqa: ANN201 - prometheus collector protocol
        from prometheus_client.core import GaugeMetricFamily

        try:
            st = self.store.loop_stats()
        except Exception as e:  # noqa: BLE001 - a scrape must not fail the service
            log.warning("metrics: cannot read review stats: %s", e)
            return
        g = GaugeMetricFamily("labelqa_review_decisions", "Review decisions by kind.", labels=["decision"])
        for k, v in st["decisions"].items():
            g.add_metric([k], v)
        yield g
        yield GaugeMetricFamily("labelqa_review_items", "Audited annotations in the worklist.", value=st["items"])
        if st["flag_precision"] is not None:
            yield GaugeMetricFamily("labelqa_review_flag_precision",
                                    "Share of reviewed flags confirmed as label errors (wrong / (wrong + right)).",
                                    value=st["flag_precision"])
        if st["errors_per_review"] is not None:
            yield GaugeMetricFamily("labelqa_review_errors_per_review", "Label errors confirmed per decision made.",
                                    value=st["errors_per_review"])
        eff = GaugeMetricFamily("labelqa_review_efficacy",
                                "Share of the confirmed label errors within the top fraction of the worklist.",
                                labels=["fraction"])
        for pt in st["efficacy"]:
            if pt["share"] is not None:
                eff.add_metric([f"{pt['fraction']:g}"], pt["share"])
        yield eff
