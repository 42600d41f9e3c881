"""Latency and throughput of the whole service: study received -> QA report SR stored in Orthanc.

Setup (all real, on this machine, CPU, embedded defaults unless stated): Orthanc (Debian) and
``labelqa serve`` in a private network namespace (loopback only); labelqa's outbox delivers results
to Orthanc by C-STORE. Studies are made by ``dicomize`` from the demo's synthetic images (one image
+ one TID 1500 SR label per image) and sent with dcmtk ``storescu`` (TCP_NODELAY=1) to labelqa.

- latency: from the last instance of a study received by labelqa (its index's ``received_at``) to
  the SR visible in Orthanc (REST polled every 50 ms), for a 1-image and a 50-image study, median
  of ``--repeats`` (new studies each time: different seeds), for each way the study becomes complete
  (``--signals``): ``none`` (the quiet period), ``release`` (sent by a calling AE listed in
  ``[listener] whole_study_aes``: the association's release completes it), ``rest`` (the sender posts
  ``/studies/<uid>/complete`` once ``storescu`` returned);
- throughput: ``--throughput-studies`` one-image studies sent in one association; studies/hour
  from the first instance received to the last SR stored in Orthanc.

The model bundle is the demo's (``labelqa demo`` settings, cached under ``--work``). Without a
signal the quiet period that makes a study "stable" is part of the latency: ``--stable-after``
(default: the embedded default, 5 s) is recorded in the JSON.

    python benchmarks/latency.py --out benchmarks/results/latency.json

Needs root (``unshare -n``), dcmtk and Orthanc.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import func, select  # noqa: E402

from dicom_io.db import make_engine  # noqa: E402
from dicom_io.store import InstanceRow  # noqa: E402
from harness.commands import labelqa_cmd, labelqa_env  # noqa: E402
from service.demo import DemoConfig, make_demo_data, shapes_npz, train_demo_bundle  # noqa: E402
from service.demo.dicomize import dicomize  # noqa: E402
from service.demo.peers import (  # noqa: E402
    NetNamespace,
    free_port,  # noqa: E402
    start_orthanc,
)
from service.settings import StoreSettings  # noqa: E402


def make_study_set(work: Path, cfg: DemoConfig, n_images: int, seed: int, one_study: bool) -> tuple[Path, list[str]]:
    """``n_images`` annotated images as DICOM: one study holding all (one_study) or one study each."""
    npz = work / f"src-{n_images}-{seed}-{int(one_study)}.npz"
    shapes_npz(npz, n_images, cfg, seed=seed)
    out = work / f"studies-{n_images}-{seed}-{int(one_study)}"
    if out.exists():
        shutil.rmtree(out)
    dicomize(npz, out, noise_rate=0.1 if n_images >= 10 else 0.0, seed=seed, group_by=r"(src)" if one_study else None)
    uids = sorted({line.split(",")[1] for line in (out / "manifest.csv").read_text().splitlines()[1:]})
    return out, uids


def sr_in_orthanc(orthanc, study_uid: str) -> bool:
    found = orthanc.rest("POST", "/tools/find", {"Level": "Series", "Expand": True,
                                                 "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}})
    return any(s["MainDicomTags"].get("Manufacturer") == "labelqa" and s["MainDicomTags"].get("SeriesNumber") == "9901"
               for s in found)


def last_received(engine, study_uid: str) -> float | None:
    with engine.connect() as c:
        return c.execute(select(func.max(InstanceRow.received_at)).where(InstanceRow.study_uid == study_uid)).scalar()


def first_received(engine, study_uids: list[str]) -> float | None:
    with engine.connect() as c:
        q = select(func.min(InstanceRow.received_at)).where(InstanceRow.study_uid.in_(study_uids))
        return c.execute(q).scalar()


ROUTER_AE = "ROUTER"  # listed in [listener] whole_study_aes
TOKEN = "Bench7latencyQx3Zr"


def send(ns, src: Path, port: int, aet: str = "BENCH") -> None:
    r = ns.run(["storescu", "-aet", aet, "-aec", "LABELQA", "-R", "+sd", "+r", "+sp", "*.dcm", "127.0.0.1",
                str(port), str(src)], timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"storescu failed: {r.stderr[-1000:]}")


def say_complete(ns, api_port: int, study_uid: str) -> None:
    r = ns.run(["curl", "-s", "-f", "-X", "POST", "-H", f"Authorization: Bearer {TOKEN}",
                f"http://127.0.0.1:{api_port}/studies/{study_uid}/complete"], timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"POST /studies/{study_uid}/complete failed: {r.stdout} {r.stderr}")


def wait_all_sr(orthanc, uids: list[str], timeout: float) -> float:
    pending = set(uids)
    deadline = time.monotonic() + timeout
    while pending:
        for u in list(pending):
            if sr_in_orthanc(orthanc, u):
                pending.discard(u)
        if not pending:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} SR(s) missing after {timeout} s")
        time.sleep(0.05)
    return time.time()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/labelqa-latency"))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "latency.json")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--big", type=int, default=50, help="Images in the large study.")
    ap.add_argument("--throughput-studies", type=int, default=100)
    ap.add_argument("--stable-after", type=float, default=StoreSettings().stable_after_s)
    ap.add_argument("--signals", default="none,release,rest",
                    help="How studies become complete: none (quiet period), release, rest (comma-separated).")
    args = ap.parse_args()
    cmdline = " ".join([Path(sys.executable).name, *sys.argv])
    args.work.mkdir(parents=True, exist_ok=True)

    cfg = DemoConfig(data_dir=args.work / "demo", device="cpu")
    data = make_demo_data(cfg, cfg.data_dir)
    t0 = time.perf_counter()
    bundle, cached = train_demo_bundle(cfg, data, cfg.data_dir, echo=print)
    print(f"bundle {bundle} ({'cached' if cached else f'trained in {time.perf_counter() - t0:.0f} s'})")

    ns = NetNamespace()
    run = args.work / "run"
    if run.exists():
        shutil.rmtree(run)
    o_dicom, o_http, lq_port, lq_api = free_port(), free_port(), free_port(), free_port()
    signals = [x.strip() for x in args.signals.split(",") if x.strip()]
    orthanc = start_orthanc(ns, run / "orthanc", o_dicom, o_http, dicomweb=False,
                            modalities={"labelqa": ["LABELQA", "127.0.0.1", lq_port]})
    data_dir = run / "labelqa"
    toml = run / "labelqa.toml"
    toml.write_text(
        f'[store]\ndata_dir = "{data_dir}"\nstable_after_s = {args.stable_after}\n'
        f'[listener]\nport = {lq_port}\nwhole_study_aes = ["{ROUTER_AE}"]\n'
        f'[audit]\nbundle = "{bundle}"\nvocabulary = "{data.vocabulary}"\n'
        f'[api]\nport = {lq_api}\ntoken = "{TOKEN}"\n'
        f'[[outbox.destinations]]\nname = "orthanc"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {o_dicom}\n'
    )
    log = open(run / "serve.log", "w")  # noqa: SIM115
    serve = ns.popen([*labelqa_cmd(), "serve", "--config", str(toml)], env=labelqa_env(), stdout=log,
                     stderr=subprocess.STDOUT)
    results: dict = {}
    try:
        ns.wait_port(lq_port, 120)
        engine = make_engine(f"sqlite:///{data_dir / 'index.sqlite'}")
        time.sleep(3)  # workers warm (bundle loaded) before the first study
        latency: dict[str, dict[str, list[float]]] = {}
        for k, signal in enumerate(signals):
            latency[signal] = {}
            for n in (1, args.big):
                key = f"{n}_image_study"
                latency[signal][key] = []
                for rep in range(args.repeats):
                    seed = 10_000 + 1000 * k + 100 * n + rep
                    src, (uid,) = make_study_set(args.work, cfg, n, seed=seed, one_study=True)
                    send(ns, src, lq_port, aet=ROUTER_AE if signal == "release" else "BENCH")
                    if signal == "rest":
                        say_complete(ns, lq_api, uid)
                    t_sr = wait_all_sr(orthanc, [uid], 600)
                    t_last = last_received(engine, uid)
                    latency[signal][key].append(t_sr - t_last)
                    print(f"{signal} {key} #{rep + 1}: {t_sr - t_last:.2f} s")
        src, uids = make_study_set(args.work, cfg, args.throughput_studies, seed=77, one_study=False)
        send(ns, src, lq_port)
        t_end = wait_all_sr(orthanc, uids, 3600)
        span = t_end - first_received(engine, uids)
        results = {
            "benchmark": "latency: last instance received by labelqa -> QA report SR stored in Orthanc",
            "command": cmdline,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "device": "cpu",
                        "load_avg_at_end": os.getloadavg()},
            "settings": {"stable_after_s": args.stable_after, "workers": 1, "batch_size": 64,
                         "bundle": {"archs": cfg.archs, "image_size": cfg.image_size, "train_images": cfg.train_images,
                                    "epochs": cfg.epochs}, "repeats": args.repeats},
            "latency_s": {sig: {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
                                for k, v in by.items()} for sig, by in latency.items()},
            "latency_minus_quiet_period_s": {k: statistics.median(v) - args.stable_after
                                             for k, v in latency.get("none", {}).items()},
            "signals": {"none": "the quiet period ([store] stable_after_s)",
                        "release": "the release of a whole-study router's association ([listener] whole_study_aes)",
                        "rest": "POST /studies/<uid>/complete after the last instance was acknowledged"},
            "target_with_signal_s": 2.0,
            "throughput": {"studies": len(uids), "seconds": span, "studies_per_hour": 3600 * len(uids) / span},
            "target": "MONAI Deploy guideline for emergency cases: under 10 minutes per study",
        }
    finally:
        serve.terminate()
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
        log.close()
        orthanc.stop()
        ns.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("latency_s", "throughput")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
