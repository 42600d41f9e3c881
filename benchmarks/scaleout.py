"""Scale-out benchmark: audits per hour in-process vs on 1 and 2 Ray worker processes; ingest on
PostgreSQL vs SQLite vs Orthanc. All on this machine, in one run, so the ratios compare like with like.

Audits: ``--studies`` DICOM studies of ``--images`` annotated synthetic images each (image + TID 1500
SR per image, ``service.demo.dicomize``), audited with the small test bundle (``harness.small_demo``:
3 tiny members, 32 px, trained once and cached). Each executor gets a fresh store and SQLite index
holding every study, its models warm (actors ready) before the clock starts, then all jobs queued at
once; the rate is studies / wall time until the last job is done (reading, inference, writing the
SR/SC/KOS, as the service does it). Executors: ``InProcessExecutor`` with 1 and 2 worker threads, and
``RayExecutor`` with 1 and 2 actors on a local Ray node (``ray start --head`` with a ``labelqa_gpu``
resource of 2 and 2 CPUs) whose actors share no disk with the gateway (bundle bytes, sample arrays
through the object store).

Ingest: ``benchmarks/ingest.py``'s sender (dcmtk ``storescu``, one association, TCP_NODELAY=1, N
copies of CT_small.dcm) against ``labelqa serve`` on SQLite (default), on PostgreSQL (a local server
with durable defaults: fsync, synchronous commit; unix socket) and Orthanc, in rotating order.

Ray and Orthanc listen on all interfaces, so the script re-executes itself under ``unshare -n``
(loopback only; root needed). Writes ``benchmarks/results/scaleout.json``.

    .venv/bin/python benchmarks/scaleout.py [--studies 24] [--images 4] [--rounds 3] [--n 300]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def make_studies(root: Path, n_studies: int, per_study: int, names: list[str]) -> Path:
    import numpy as np
    from PIL import Image

    from models.synthetic import make_shapes
    from service.demo.dicomize import dicomize

    data = make_shapes(n_studies * per_study, n_classes=len(names), size=32, seed=21)
    src = root / "png"
    for i, (img, lab) in enumerate(zip(data.images, data.labels, strict=True)):
        d = src / names[int(lab)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(d / f"s{i // per_study:03d}_i{i}.png")
    out = root / "dicom"
    dicomize(src, out, noise_rate=0.1, seed=3, group_by=r"(s\d+)_", modality="OT")
    return out


def audit_rate(kind: str, workers: int, studies_dir: Path, bundle: Path, vocabulary: Path, work: Path,
               ray_address: str | None) -> dict[str, Any]:
    """Audit every study with one executor; studies per hour and where the audits ran."""
    from dicom_io.db import make_engine
    from dicom_io.store import StudyStore
    from service.audit import AUDITOR
    from service.runtime.jobs import DONE, JobStore
    from service.runtime.pipeline import Pipeline
    from service.settings import load_settings

    data_dir = work / f"{kind}-{workers}"
    over: dict[str, Any] = {"store": {"data_dir": data_dir},
                            "audit": {"bundle": bundle, "vocabulary": vocabulary, "device": "cpu", "workers": workers}}
    if kind == "ray":
        over["executor"] = {"kind": "ray", "address": ray_address, "actors": workers, "num_cpus": 1,
                            "resources": {"labelqa_gpu": 1}}
    settings = load_settings(None, over)
    store = StudyStore(data_dir, None, 3600.0)
    for p in sorted(studies_dir.rglob("*.dcm")):
        store.put(p.read_bytes())
    studies = store.studies()
    jobs = JobStore(make_engine(settings.store.resolved_database_url()))
    pipe = Pipeline(settings, jobs, auditor=AUDITOR, store=store)
    pipe.start()
    try:
        deadline = time.monotonic() + 600
        while not pipe.executor.status().get("models_loaded") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # the in-process warm-up inference of every worker
        t0 = time.perf_counter()
        for uid in studies:
            jobs.enqueue(uid, trigger="benchmark")
        pipe.executor.notify()
        while jobs.pending() and time.monotonic() < deadline + 1800:
            time.sleep(0.05)
        dt = time.perf_counter() - t0
        status = pipe.executor.status()
    finally:
        pipe.stop()
        store.close()
    done = [jobs.latest_for_study(u) for u in studies]
    ok = sum(1 for j in done if j is not None and j.state == DONE)
    return {"executor": kind, "workers": workers, "studies": len(studies), "done": ok, "seconds": round(dt, 2),
            "studies_per_hour": round(3600 * ok / dt, 1), "jobs_by_node": status.get("jobs_by_node")}


class _LabelqaPostgres:
    """benchmarks/ingest.py's labelqa receiver, with the index on PostgreSQL."""

    name, aec = "labelqa_postgresql", "LABELQA"

    def __init__(self, server: Any) -> None:
        self.server = server
        self.url = ""

    def start(self, work: Path, port: int) -> subprocess.Popen:
        from ingest import NODELAY_ENV

        from service.demo.peers import free_port

        self.url = self.server.url(self.server.new_database())
        env = {**NODELAY_ENV, "PYTHONPATH": str(REPO), "LABELQA_API__PORT": str(free_port()),
               "LABELQA_LOG_LEVEL": "WARNING", "LABELQA_STORE__DATABASE_URL": self.url}
        cmd = [sys.executable, "-m", "service", "serve", "--port", str(port), "--data-dir", str(work / "data")]
        return subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=open(work / "log", "wb"))

    def count(self, work: Path, port: int) -> int:
        from sqlalchemy import create_engine, text

        eng = create_engine(self.url)
        try:
            with eng.connect() as c:
                return int(c.execute(text("SELECT count(*) FROM instances")).scalar_one())
        finally:
            eng.dispose()


def ingest_rates(rounds: int, n: int, tmp: Path) -> dict[str, Any]:
    from ingest import NODELAY_ENV, Labelqa, Orthanc, make_instances, stop, wait_echo

    from harness.postgres import start_pg_server
    from service.demo.peers import free_port

    server = start_pg_server(durable=True)  # its own /tmp dir: user postgres must reach it
    receivers: list[Any] = [Labelqa(), _LabelqaPostgres(server), Orthanc()]
    rates: dict[str, list[float]] = {r.name: [] for r in receivers}
    counts: dict[str, list[int]] = {r.name: [] for r in receivers}
    try:
        files = make_instances(tmp / "instances", n)
        for rnd in range(rounds):
            order = receivers[rnd % len(receivers):] + receivers[: rnd % len(receivers)]
            for rc in order:
                work = Path(tempfile.mkdtemp(prefix=f"{rc.name}-", dir=tmp))
                port = free_port()
                proc = rc.start(work, port)
                try:
                    wait_echo(port, rc.aec, proc)
                    t0 = time.perf_counter()
                    r = subprocess.run(["storescu", "-aec", rc.aec, "127.0.0.1", str(port), *map(str, files)],
                                       env=NODELAY_ENV, capture_output=True, text=True, timeout=900)
                    dt = time.perf_counter() - t0
                    if r.returncode != 0:
                        raise RuntimeError(f"{rc.name}: storescu failed: {r.stderr[-2000:]}")
                    got = rc.count(work, port)
                finally:
                    stop(proc)
                rates[rc.name].append(round(n / dt, 1))
                counts[rc.name].append(got)
                print(f"ingest round {rnd + 1} {rc.name:20s} {n / dt:7.1f} instances/s ({got} stored)", flush=True)
                shutil.rmtree(work, ignore_errors=True)
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"instances": n, "rounds": rounds, "instances_per_s": rates, "stored_counts": counts,
            "median_instances_per_s": med,
            "ratio_postgresql_over_sqlite": round(med["labelqa_postgresql"] / med["labelqa"], 3),
            "ratio_sqlite_over_orthanc": round(med["labelqa"] / med["orthanc"], 3),
            "ratio_postgresql_over_orthanc": round(med["labelqa_postgresql"] / med["orthanc"], 3)}


def run(a: argparse.Namespace, command: str) -> dict[str, Any]:
    import torch
    from ingest import machine, tool_version

    from harness.postgres import pg_bindir
    from harness.ray_cluster import RayCluster, ray_env
    from harness.small_demo import small_demo_for
    from service.demo.peers import HostNetwork

    # One intra-op thread per audit worker, as Ray gives each 1-CPU actor (OMP_NUM_THREADS=1): on a
    # shared, loaded machine a 2-thread OpenMP pool per worker ran the in-process audits 10x slower.
    torch.set_num_threads(1)
    info = machine()
    info["torch_threads_per_worker"] = 1
    result: dict[str, Any] = {"benchmark": "scaleout", "command": command, "machine": info}
    with tempfile.TemporaryDirectory(prefix="lqscale") as tmp_s:
        tmp = Path(tmp_s)
        small = small_demo_for(Path(tempfile.gettempdir()) / "labelqa-bench-small-demo")
        studies = make_studies(tmp / "data", a.studies, a.images, list(small.data.class_names))
        cluster = RayCluster(HostNetwork(), ray_env())  # the benchmark already runs under unshare -n
        audits = []
        try:
            # one node: 2 CPUs and 2 units of labelqa_gpu (the actors' resource), the gateway is its driver
            cluster.start_head(num_cpus=2, resources={"labelqa_gpu": 2})
            for rnd in range(a.audit_rounds):
                plan = [("inprocess", 1), ("ray", 1), ("inprocess", 2), ("ray", 2)]
                plan = plan[rnd % len(plan):] + plan[: rnd % len(plan)]
                for kind, w in plan:
                    r = audit_rate(kind, w, studies, small.bundle, small.data.vocabulary, tmp / f"r{rnd}",
                                   cluster.address)
                    r["round"] = rnd + 1
                    audits.append(r)
                    print(f"audit round {rnd + 1} {kind:9s} x{w}: {r['studies_per_hour']:8.0f} studies/h "
                          f"({r['done']}/{r['studies']} in {r['seconds']} s)", flush=True)
        finally:
            cluster.stop()

        def med(kind: str, w: int) -> float:
            return statistics.median(r["studies_per_hour"] for r in audits if r["executor"] == kind
                                     and r["workers"] == w)

        result["audits"] = {
            "what": f"{a.studies} studies of {a.images} annotated images (image + SR each), small test bundle "
                    "(3 tiny members, 32 px), CPU; models warm before the clock; studies/h = done / wall time",
            "runs": audits,
            "median_studies_per_hour": {f"{k}_{w}": med(k, w) for k, w in
                                        [("inprocess", 1), ("inprocess", 2), ("ray", 1), ("ray", 2)]},
        }
        m = result["audits"]["median_studies_per_hour"]
        result["audits"]["ratio_ray_2_over_ray_1"] = round(m["ray_2"] / m["ray_1"], 3)
        result["audits"]["ratio_ray_1_over_inprocess_1"] = round(m["ray_1"] / m["inprocess_1"], 3)
        result["audits"]["ratio_ray_2_over_inprocess_2"] = round(m["ray_2"] / m["inprocess_2"], 3)
        result["ingest"] = ingest_rates(a.rounds, a.n, tmp)
        result["ingest"]["what"] = (f"{a.n} copies of CT_small.dcm, dcmtk storescu over one association "
                                    "(TCP_NODELAY=1); labelqa serve (SQLite default / PostgreSQL 15 with fsync and "
                                    "synchronous commit, unix socket) and Orthanc; rotating order")
    info["loadavg_at_end"] = os.getloadavg()
    import ray

    result["versions"] = {"ray": ray.__version__, "postgresql": tool_version(
        [str(Path(pg_bindir() or "") / "postgres"),
         "--version"]), "labelqa_commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                                          capture_output=True, text=True).stdout.strip()}
    result["note"] = ("one machine: the Ray workers share its CPU cores with the gateway, so the ratios show the "
                      "executor's overhead and how 2 actors use 2 cores, not what a GPU node adds")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"audits": result["audits"]["median_studies_per_hour"],
                      "ingest": result["ingest"]["median_instances_per_s"]}, indent=2))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=24)
    ap.add_argument("--images", type=int, default=4, help="annotated images per study")
    ap.add_argument("--audit-rounds", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="ingest rounds")
    ap.add_argument("--n", type=int, default=300, help="instances per ingest run")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scaleout.json")
    ap.add_argument("--inside-netns", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    command = (f".venv/bin/python benchmarks/scaleout.py --studies {a.studies} --images {a.images} "
               f"--audit-rounds {a.audit_rounds} --rounds {a.rounds} --n {a.n}")
    if not a.inside_netns:
        inner = [sys.executable, str(Path(__file__).resolve()), "--inside-netns", "--studies", str(a.studies),
                 "--images", str(a.images), "--audit-rounds", str(a.audit_rounds), "--rounds", str(a.rounds),
                 "--n", str(a.n), "--out", str(a.out.resolve())]
        script = "ip link set lo up && exec " + " ".join(f"'{x}'" for x in inner)
        return subprocess.call(["unshare", "-n", "sh", "-c", script], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    run(a, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
