"""Delivery speed of the results outbox to a real dcmtk storescp, with and without TCP_NODELAY.

Runs everything inside a private network namespace (storescp binds all interfaces): N copies of a
labelqa QA report SR are queued in a fresh SQLite outbox and delivered with ``Outbox.run_until_idle``;
the same with the SCU's TCP_NODELAY switched off. Writes benchmarks/results/outbox_delivery.json.

    .venv/bin/python benchmarks/outbox_delivery.py [--n 300] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

INNER = r"""
import json, sys, time
from pathlib import Path
import dicom_io.scu as scu
from dicom_io.db import make_engine
from dicom_io.outbox import Outbox
from dicom_io.settings import OutboxSettings
files, port, batch, nodelay, db = json.loads(sys.argv[1])
if not nodelay:  # measure what TCP_NODELAY on our socket is worth
    import functools
    import dicom_io.outbox as ob
    ob.store_files = functools.partial(scu.store_files, tcp_nodelay=False)
class D:
    name, kind, ae_title, host, tls, url = "scp", "dicom", "STORESCP", "127.0.0.1", False, None
D.port = port
box = Outbox(make_engine(f"sqlite:///{db}"), [D], settings=OutboxSettings(batch_size=batch, poll_interval_s=0.05))
box.enqueue([Path(f) for f in files])
t0 = time.perf_counter()
counts = box.run_until_idle(600)
print(json.dumps({"seconds": time.perf_counter() - t0, "counts": counts}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    import pydicom

    from dicom_io.results import save_results, write_results
    from harness.commands import labelqa_env
    from harness.peers import start_storescp
    from harness.studies import ALGORITHM, COHORT, make_study
    from service.demo.peers import NetNamespace, free_port

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources, annotations, audited = make_study()
        paths = save_results(write_results(sources, annotations, audited, ALGORITHM, COHORT), tmp / "res")
        sr = pydicom.dcmread(next(p for p in paths if p.name.startswith("SR_")))
        files = []
        for i in range(args.n):
            sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = f"2.25.{10**30 + i}"
            p = tmp / "many" / f"{i:05d}.dcm"
            p.parent.mkdir(exist_ok=True)
            sr.save_as(p, enforce_file_format=True)
            files.append(str(p))
        size = Path(files[0]).stat().st_size
        ns = NetNamespace()
        try:
            for nodelay in (True, False):
                port = free_port()
                scp = start_storescp(ns, tmp / f"rx_{nodelay}", port)
                try:
                    db = tmp / f"outbox_{nodelay}.sqlite"
                    r = ns.run([sys.executable, "-c", INNER, json.dumps([files, port, args.batch, nodelay, str(db)])],
                               env=labelqa_env(), timeout=900, cwd=str(REPO))
                    if r.returncode != 0:
                        raise SystemExit(r.stderr[-3000:])
                    out = json.loads(r.stdout.strip().splitlines()[-1])
                    received = len(scp.received())
                finally:
                    scp.stop()
                runs.append({"tcp_nodelay": nodelay, "objects": args.n, "received": received,
                             "seconds": round(out["seconds"], 3),
                             "objects_per_s": round(args.n / out["seconds"], 1), "counts": out["counts"]})
                print(runs[-1])
        finally:
            ns.stop()
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "what": "labelqa outbox -> dcmtk storescp (TCP_NODELAY=1 in its env), one SQLite outbox, loopback in a "
                "private network namespace; includes DB bookkeeping per object",
        "object_bytes": size, "batch_size": args.batch, "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": runs,
    }
    out = REPO / "benchmarks" / "results" / "outbox_delivery.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
