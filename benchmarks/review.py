"""The review workbench measured: worklist and item latency at 100,000 audited annotations; the retrain loop.

``latency``: an index of ``--rows`` audited annotations (5% flagged, 4 classes, 3 modalities, dates,
20 series, ``--decided`` of them decided) in SQLite, served by the real app (uvicorn on 127.0.0.1,
bearer login on). httpx sends ``--requests`` sequential requests per case and records p50/p99 of
the wall time: the first worklist page, flagged only, a filtered page (class + modality), a deep
keyset page (cursor after 1,000 pages), an offset page (page 500), the worklist HTML page, the item
API for random items, and a decision POST.

``retrain``: ``models.retrain.run_retrain`` on a shared data set at 32 px on CPU (simulated reviewer on
labelqa's priority order vs random at each budget, ensemble retrained, clean test accuracy).

    python benchmarks/review.py latency --out benchmarks/results/review-latency.json
    python benchmarks/review.py retrain --dataset ../shared/data/classification/chest_xray_pneumonia_kermany_224 \\
        --out benchmarks/results/review-retrain-xray.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def build_index(db_url: str, rows: int, decided: int, seed: int = 0) -> list[int]:
    from dicom_io.db import make_engine
    from service.review import ReviewStore

    rng = random.Random(seed)
    store = ReviewStore(make_engine(db_url))
    labels = ["normal", "pneumonia", "glioma", "meningioma"]
    mods = ["DX", "MR", "CT"]
    series = [f"1.2.826.0.1.3680043.10.1.{i}" for i in range(20)]

    def gen():
        for i in range(rows):
            flagged = rng.random() < 0.05
            g = rng.choice(labels)
            yield {"annotation_uid": f"1.2.826.0.1.3680043.10.2.{i}", "study_uid": f"1.2.826.0.1.3680043.10.3.{i // 3}",
                   "image_uid": f"1.2.826.0.1.3680043.10.4.{i}", "verdict": "suspected_label_error" if flagged else
                   rng.choice(["consistent"] * 9 + ["hard_case"]),
                   "priority": (2.0 if flagged else 0.0) + rng.random(), "given_label": g,
                   "consensus_label": rng.choice(labels) if flagged else g, "agreement": rng.random(),
                   "p_given": rng.random(), "n_disagree": 3 if flagged else 0, "n_members": 3,
                   "modality": rng.choice(mods), "study_date": f"2024{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
                   "series_uid": rng.choice(series), "series_description": "bench"}

    t0 = time.perf_counter()
    store.bulk_index(gen())
    ids = list(range(1, rows + 1))
    for i in rng.sample(ids, decided):
        store.decide(i, rng.choice(["label_right", "unsure"]), "bench")
    print(f"indexed {rows} rows, {decided} decisions in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return ids


def latency(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from dicom_io.db import make_engine
    from service.demo.peers import free_port
    from service.http import ApiServer, Auth, HttpContext, create_app
    from service.review import ReviewService
    from service.runtime.jobs import JobStore

    work = Path(tempfile.mkdtemp(prefix="labelqa-review-bench-"))
    db = f"sqlite:///{work / 'index.sqlite'}"
    ids = build_index(db, args.rows, args.decided)
    engine = make_engine(db)

    class U:
        name, role, token, display_name = "bench", "reviewer", "Bn8Tq3Wz6Xk1Lm5P", None

    auth = Auth([U()])
    review = ReviewService(engine, jobs=JobStore(engine), data_dir=work)
    app = create_app(HttpContext(jobs=JobStore(engine), auth=auth, review=review))
    port = free_port()
    server = ApiServer(app, "127.0.0.1", port)
    server.start()
    base = f"http://127.0.0.1:{port}"
    h = {"Authorization": "Bearer Bn8Tq3Wz6Xk1Lm5P"}
    rng = random.Random(1)
    out: dict[str, Any] = {}
    with httpx.Client(base_url=base, headers=h, timeout=30) as c:
        # a deep cursor: 1,000 pages of 50 in
        cursor = None
        for _ in range(1000):
            cursor = c.get("/api/worklist", params={"limit": 50, **({"cursor": cursor} if cursor else {})}
                           ).json()["next_cursor"]
        # a browser session for the HTML page
        sess = httpx.Client(base_url=base, timeout=30)
        sess.post("/login", data={"name": "bench", "token": "Bn8Tq3Wz6Xk1Lm5P"})
        uid_of = {}
        cases = {
            "worklist_first_page": lambda: c.get("/api/worklist", params={"limit": 50}),
            "worklist_flagged": lambda: c.get("/api/worklist", params={"verdict": "flagged", "limit": 50}),
            "worklist_label_modality": lambda: c.get("/api/worklist", params={"label": "glioma", "modality": "MR",
                                                                                 "limit": 50}),
            "worklist_undecided": lambda: c.get("/api/worklist", params={"status": "undecided", "limit": 50}),
            "worklist_deep_cursor": lambda: c.get("/api/worklist", params={"limit": 50, "cursor": cursor}),
            "worklist_offset_page_500": lambda: c.get("/api/worklist", params={"limit": 50, "offset": 50 * 499}),
            "worklist_html_page": lambda: sess.get("/review", params={"verdict": "flagged"}),
            "item_api": lambda: c.get(f"/api/items/{rng.choice(ids)}"),
        }

        def decide() -> Any:
            i = rng.choice(ids)
            if i not in uid_of:
                uid_of[i] = c.get(f"/api/items/{i}").json()["annotation_uid"]
            return c.post(f"/api/annotations/{uid_of[i]}/decision",
                          json={"decision": rng.choice(["label_right", "unsure"])})

        cases["decision_post"] = decide
        for name, fn in cases.items():
            for _ in range(5):
                fn()
            times = []
            for _ in range(args.requests):
                t = time.perf_counter()
                r = fn()
                times.append(1000 * (time.perf_counter() - t))
                assert r.status_code == 200, (name, r.status_code, r.text[:200])
            out[name] = {"p50_ms": round(_pct(times, 0.5), 2), "p99_ms": round(_pct(times, 0.99), 2),
                         "mean_ms": round(statistics.fmean(times), 2), "n": len(times)}
            print(f"{name:28s} p50 {out[name]['p50_ms']:7.2f} ms  p99 {out[name]['p99_ms']:7.2f} ms", file=sys.stderr)
        total = c.get("/api/worklist", params={"limit": 1}).json()["total"]
        sess.close()
    server.stop()
    return {"rows": args.rows, "total_reported": total, "decided": args.decided, "requests_per_case": args.requests,
            "database": "sqlite (WAL)", "server": "uvicorn, 1 process, 127.0.0.1, bearer auth",
            "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "load_average_1min_after": round(os.getloadavg()[0], 2), "cases": out}


def retrain(args: argparse.Namespace) -> dict[str, Any]:
    from models.retrain import RetrainSettings, run_retrain, summary_table
    from models.train import TrainConfig

    s = RetrainSettings(dataset=str(args.dataset), image_size=args.image_size, max_samples=args.max_samples,
                        noise_rate=args.noise_rate, budgets=tuple(float(b) for b in args.budgets.split(",")),
                        archs=tuple(args.archs.split(",")), folds=3, seed=args.seed, device="cpu",
                        train=TrainConfig(epochs=args.epochs, batch_size=32, lr=3e-3))
    r = run_retrain(s)
    print(summary_table(r), file=sys.stderr)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("latency")
    a.add_argument("--rows", type=int, default=100_000)
    a.add_argument("--decided", type=int, default=2000)
    a.add_argument("--requests", type=int, default=200)
    a.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("retrain")
    b.add_argument("--dataset", type=Path, required=True)
    b.add_argument("--image-size", type=int, default=32)
    b.add_argument("--max-samples", type=int, default=800)
    b.add_argument("--noise-rate", type=float, default=0.1)
    b.add_argument("--budgets", default="0.05,0.1,0.2")
    b.add_argument("--archs", default="densenet-tiny,resnet-tiny,efficientnet-tiny")
    b.add_argument("--epochs", type=int, default=6)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.cmd == "retrain":
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res = latency(args) if args.cmd == "latency" else retrain(args)
    res = {"command": "python benchmarks/review.py " + " ".join(sys.argv[1:]), "seconds": time.perf_counter() - t0,
           **res}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
