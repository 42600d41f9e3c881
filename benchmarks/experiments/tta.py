"""Test-time augmentation: do the same members, averaged over fixed small views of each image, find more flips?

Research benchmark (issue 5, eighth session; decision rule in
``benchmarks/experiments/results/tta-prereg.md``, committed before any run). Averaging two seeds per
architecture helped (+0.031, ``seed-average-summary.json``) because one fit of light members is noisy;
test-time augmentation is a cheaper variance reduction (no extra training: each
member predicts ``TTA_VIEWS`` — the identity, four 3% shifts, two 0.08 rad rotations, two 7% zooms — and its
probabilities are averaged). The comparison is paired: **one fit**, its out-of-fold probabilities computed once
plain and once with test-time augmentation, every method scored on each. Fit-to-fit noise, which swamped the
second-fit test, cancels. ``dual_consistency`` is not scored (no Grad-CAM here).

Writes ``benchmarks/experiments/results/<dataset>-<settings>-seed<k>-tta.json`` (plain vs tta: every method's precision,
recall, F1 and n flagged; the estimated error count; member accuracy on the clean labels; seconds) and both sets
of probabilities as ``predictions/tta/<same stem>.npz``.

    nice -n 5 .venv/bin/python benchmarks/experiments/tta.py --datasets mri --seeds 6 --noise-model uniform --threads 1
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # refit.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # detector.py
from detector import DATASETS, dataset_path, settings_tag  # noqa: E402
from refit import scored  # noqa: E402

from models.data import load_dataset, stratified_subsample  # noqa: E402
from models.detector import DetectorConfig  # noqa: E402
from models.ensemble import parse_archs  # noqa: E402
from models.evaluate import corrupt_labels  # noqa: E402
from models.train import TTA_VIEWS, TrainConfig, fit_ensemble, predict_probs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def tta_probs(fit, images: np.ndarray, views: int) -> dict[str, np.ndarray]:
    """Out-of-fold probabilities of a crossfit ``Fit`` again, each member averaged over ``views`` views."""
    out = {a: np.zeros_like(p) for a, p in fit.probs.items()}
    for m in fit.members:
        te = np.flatnonzero(fit.fold == m.fold)
        out[m.arch][te] = predict_probs(m.model, images[te], tta=views)
    return out


def run_one(a: argparse.Namespace, ds: str, seed: int) -> dict:
    data = load_dataset(dataset_path(ds, a.work_dir), a.image_size)
    if a.max_samples and a.max_samples < len(data):
        data = data.subset(stratified_subsample(data.labels, a.max_samples, seed))
    k = len(data.class_names)
    noisy, flipped = corrupt_labels(data.labels, k, a.noise_rate, a.noise_model, seed)
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size)
    t0 = time.perf_counter()
    fit = fit_ensemble(parse_archs(a.archs), data.images, noisy, k, cfg, mode="crossfit", folds=a.folds, seed=seed,
                       device="cpu")
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    probs_tta = tta_probs(fit, data.images, a.views)
    t_tta = time.perf_counter() - t0
    out = {"dataset": DATASETS[ds], "seed": seed, "n_samples": len(noisy), "n_classes": k,
           "n_flipped": int(flipped.sum()), "views": a.views, "tta_views": [list(v) for v in TTA_VIEWS[:a.views]],
           "train": cfg.to_dict(), "fit_s": round(t_fit, 1), "plain_predict_s": round(fit.timing["predict"], 1),
           "tta_predict_s": round(t_tta, 1)}
    for tag, probs in (("plain", fit.probs), ("tta", probs_tta)):
        out[tag], r = scored(probs, noisy, flipped, data.labels, DetectorConfig(), seed, data.groups)
        out[tag]["cohort_findings"] = len(r["cohort_findings"])
    pred_dir = RESULTS / "predictions" / "tta"
    pred_dir.mkdir(parents=True, exist_ok=True)
    archs = list(fit.archs)
    np.savez_compressed(pred_dir / f"{stem(a, ds, seed)}.npz", archs=np.array(archs),
                        probs=np.stack([fit.probs[x] for x in archs]),
                        probs_tta=np.stack([probs_tta[x] for x in archs]), fold=fit.fold, noisy=noisy,
                        truth=data.labels, flipped=flipped, groups=np.array(data.groups), ids=np.array(data.ids))
    return out


def stem(a: argparse.Namespace, ds: str, seed: int) -> str:
    return f"{DATASETS[ds]}-{settings_tag(a)}-seed{seed}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["mri"], choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[6])
    ap.add_argument("--max-samples", type=int, default=2000, help="0 = the whole data set")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--archs", default="densenet-small,resnet10,efficientnet-small")
    ap.add_argument("--noise-rate", type=float, default=0.05)
    ap.add_argument("--noise-model", default="uniform")
    ap.add_argument("--views", type=int, default=len(TTA_VIEWS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "labelqa" / "bench-runs")
    a = ap.parse_args()
    a.mode, a.repeats = "crossfit", 1
    import torch

    torch.set_num_threads(a.threads)
    for seed in a.seeds:
        for ds in a.datasets:
            out = run_one(a, ds, seed)
            out["command"] = shlex.join([".venv/bin/python", "benchmarks/experiments/tta.py", *sys.argv[1:]])
            dest = RESULTS / f"{stem(a, ds, seed)}-tta.json"
            dest.write_text(json.dumps(out, indent=1) + "\n")
            print(f"{dest.name}: fit {out['fit_s']:.0f}s, tta {out['tta_predict_s']:.0f}s; "
                  f"estimated errors {out['plain']['estimated_errors']:.1f} -> {out['tta']['estimated_errors']:.1f} "
                  f"(true {out['n_flipped']})", flush=True)
            for m in out["plain"]["methods"]:
                print(f"  {m:12s} {out['plain']['methods'][m]['f1']:.3f} -> {out['tta']['methods'][m]['f1']:.3f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
