"""Prometheus metrics of the service (served at ``GET /metrics``).

Counters and the latency histogram are updated as things happen; the gauges that mirror the
database (jobs by state, outbox depth, instances stored) are read when Prometheus scrapes, so they
are right after a restart too. Each service has its own registry (tests run several in one process).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from service.runtime.jobs import Job, JobStore

__all__ = ["LATENCY_BUCKETS", "Metrics"]

log = logging.getLogger("labelqa.metrics")

LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class _DatabaseCollector:
    """Gauges read from the database at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self) -> list:
        return []

    def collect(self):  # noqa: ANN201 - prometheus collector protocol
        m = self.m
        if m.jobs is not None:
            g = GaugeMetricFamily("labelqa_jobs", "Audit jobs by state.", labels=["state"])
            try:
                for state, n in m.jobs.counts().items():
                    g.add_metric([state], n)
            except Exception as e:  # noqa: BLE001 - a scrape must not fail the service
                log.warning("metrics: cannot count jobs: %s", e)
            yield g
        for name, help_text, fn in (
            ("labelqa_instances_received", "DICOM instances stored by the listener.", m.instances_received),
            ("labelqa_outbox_depth", "Result objects waiting for delivery.", m.outbox_depth),
            ("labelqa_outbox_failed", "Result objects dead-lettered after all attempts.", m.outbox_failed),
        ):
            if fn is None:
                continue
            try:
                value = float(fn())
            except Exception as e:  # noqa: BLE001
                log.warning("metrics: cannot read %s: %s", name, e)
                continue
            yield GaugeMetricFamily(name, help_text, value=value)


class Metrics:
    """The service's metrics on a registry of its own."""

    def __init__(
        self,
        jobs: JobStore | None = None,
        *,
        instances_received: Callable[[], float] | None = None,
        outbox_depth: Callable[[], float] | None = None,
        outbox_failed: Callable[[], float] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.jobs = jobs
        self.instances_received = instances_received
        self.outbox_depth = outbox_depth
        self.outbox_failed = outbox_failed
        self.studies_stable = Counter(
            "labelqa_studies_stable", "Study stable events received from the store.", registry=self.registry
        )
        self.jobs_finished = Counter(
            "labelqa_jobs_finished", "Audit jobs finished, by final state.", ["state"], registry=self.registry
        )
        self.audit_latency = Histogram(
            "labelqa_audit_latency_seconds",
            "Seconds from the study's last instance (stable event minus quiet period) to results written.",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.audit_duration = Histogram(
            "labelqa_audit_duration_seconds", "Seconds a worker spent on one audit job.",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.registry.register(_DatabaseCollector(self))

    def observe_job(self, job: Job) -> None:
        """Record a finished job: its state, run time and end-to-end latency."""
        self.jobs_finished.labels(job.state).inc()
        if job.duration_s is not None:
            self.audit_duration.observe(job.duration_s)
        if job.finished_at is not None and job.last_instance_at is not None:
            self.audit_latency.observe(max(0.0, job.finished_at - job.last_instance_at))
