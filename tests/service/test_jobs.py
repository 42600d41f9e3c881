"""Audit jobs: leases, re-queue after a crash, no double runs, superseding, the in-process executor."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from dicom_io.db import make_engine
from service.runtime.executor import InProcessExecutor, Outcome
from service.runtime.jobs import DONE, FAILED, QUEUED, RUNNING, SUPERSEDED, JobStore, owner_id
from tests.conftest import wait_for


@pytest.fixture
def url(db_url):
    """The job table's database: SQLite and a real PostgreSQL (the same tests on both)."""
    return db_url


def test_enqueue_coalesces_queued_jobs_of_a_study(url):
    js = JobStore(make_engine(url))
    a = js.enqueue("1.2.3")
    b = js.enqueue("1.2.3", trigger="reopened")
    assert a.id == b.id
    assert js.get(a.id).trigger == "stable+reopened"
    assert js.counts()[QUEUED] == 1


def test_claim_is_exclusive_and_one_study_runs_once_at_a_time(url):
    js = JobStore(make_engine(url))
    j = js.enqueue("1.2.3")
    got = js.claim("w1")
    assert got.id == j.id and got.state == RUNNING and got.attempts == 1
    assert js.claim("w2") is None
    js.enqueue("1.2.3", trigger="reopened")  # a late instance while the audit runs
    assert js.claim("w2") is None, "second audit of a running study must wait"
    assert js.finish(j.id, "w1", DONE, n_samples=1, n_flagged=0, result={"rows": []})
    nxt = js.claim("w2")
    assert nxt is not None and nxt.trigger == "reopened"


def test_concurrent_claims_from_threads_never_share_a_job(url):
    js = JobStore(make_engine(url))
    for i in range(30):
        js.enqueue(f"1.2.{i}")
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        while (job := js.claim(f"w{k}")) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 30


def test_expired_lease_is_requeued_and_finish_by_old_owner_is_refused(url):
    js = JobStore(make_engine(url), lease_s=60)
    j = js.enqueue("1.2.3")
    js.claim("w1")
    assert js.requeue_stale() == []  # lease still valid
    assert js.requeue_stale(now=time.time() + 61) == [j.id]  # the sweep a minute later
    again = js.claim("w2")
    assert again.id == j.id and again.attempts == 2
    assert not js.finish(j.id, "w1", DONE), "the old owner lost its lease"
    assert js.finish(j.id, "w2", DONE)


def test_startup_requeues_jobs_of_a_dead_local_process(url):
    js = JobStore(make_engine(url), lease_s=3600)
    j = js.enqueue("1.2.3")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = owner_id(0).split(":")[0]
    js.claim(f"{host}:{dead.stdout.strip()}:0")
    alive = js.enqueue("1.2.4")
    js.claim(owner_id(0))  # a job of this (live) process: not touched by a non-startup sweep
    assert js.requeue_stale() == [j.id]
    assert js.get(alive.id).state == RUNNING


def test_too_many_attempts_fail_with_reason(url):
    js = JobStore(make_engine(url), lease_s=60, max_attempts=2)
    j = js.enqueue("1.2.3")
    for _ in range(2):
        js.claim("w")
        js.requeue_stale(now=time.time() + 61)  # each lease has run out
    job = js.get(j.id)
    assert job.state == FAILED and "2 attempts" in job.reason


def test_done_supersedes_earlier_results(url):
    js = JobStore(make_engine(url))
    a = js.enqueue("1.2.3")
    js.claim("w")
    js.finish(a.id, "w", DONE, result={"n": 1})
    b = js.enqueue("1.2.3", trigger="reopened")
    js.claim("w")
    js.finish(b.id, "w", DONE, result={"n": 2})
    assert js.get(a.id).superseded_by == b.id
    assert js.latest_for_study("1.2.3", (DONE,)).result == {"n": 2}


def test_executor_runs_each_job_once_and_keeps_models_warm(url):
    js = JobStore(make_engine(url))
    loads: list[int] = []
    runs: list[str] = []

    def warmup(ctx):
        ctx.cached("bundle", lambda: loads.append(ctx.index) or "model")

    def fn(job, ctx):
        assert ctx.cached("bundle", lambda: pytest.fail("reloaded")) == "model"
        runs.append(job.study_uid)
        if job.study_uid.endswith(".bad"):
            raise ValueError("broken study")
        return Outcome(n_samples=1, result={"study": job.study_uid})

    ex = InProcessExecutor(js, fn, workers=2, warmup=warmup, poll_s=0.1)
    ex.start()
    for i in range(6):
        js.enqueue(f"1.2.{i}")
        ex.notify()
    js.enqueue("1.2.bad")
    ex.notify()
    wait_for(lambda: not js.pending(), 60, "every job run")
    ex.stop()
    assert sorted(loads) == [0, 1]
    assert sorted(runs) == sorted([f"1.2.{i}" for i in range(6)] + ["1.2.bad"])
    c = js.counts()
    assert c[DONE] == 6 and c[FAILED] == 1 and c[SUPERSEDED] == 0
    bad = js.latest_for_study("1.2.bad")
    assert "ValueError: broken study" in bad.reason
    assert ex.status()["models_loaded"] is True
