"""Compare settings of labelqa's error count (``DetectorConfig`` keys) on saved predictions, paired.

Two kinds of evidence, reported apart:

- **runs**: each saved run's own noisy labels (members trained on them: the noise is *trained in*);
- **re-labellings**: the design runs (the 5%-uniform crossfit runs that informed the detector's
  constants) re-labelled after the fact, ``--relabel`` times each with 5% uniform and 5% c -> c+1
  flips (seeds 1000, 1001, ...). Members never saw these flips, so their scores follow the simulated
  flips exactly and only chance differs: this checks that a change is neutral where the current
  constants were fitted, not that it helps.

For every variant: labelqa's F1 per run, the paired difference from the first variant (mean and
standard error over the re-labellings), and for each run the best other method's F1. Writes JSON.

    .venv/bin/python benchmarks/experiments/count_constants.py \\
        --out benchmarks/experiments/results/count-constants.json \\
        --variants '{"current": {}, "count_z=1": {"count_z": 1.0}}' \\
        --runs benchmarks/results/predictions/*asymmetric5*.npz benchmarks/results/predictions/*uniform10*.npz
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from models.detector import DetectorConfig
from models.evaluate import corrupt_labels, member_probs, rescore_labels

PRED = Path(__file__).resolve().parents[1] / "results" / "predictions"  # the detector runs' saved predictions
# The runs that informed the count's constants (tail_floor, source_prior, tail_min_count, count_z).
DESIGN_EXCLUDE = ("seed3", "seed4", "seed5", "kermany_xray_3class", "s32-nall", "asymmetric", "uniform10", "insample")


def design_runs() -> list[Path]:
    runs = [p for p in sorted(PRED.glob("*.npz")) if not any(h in p.name for h in DESIGN_EXCLUDE)]
    return runs + sorted(PRED.glob("sklearn_digits-*-seed[012].npz"))


def load(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
    """(member probabilities, noisy labels, true labels, planted-flip mask, groups) of a saved run."""
    z = np.load(path, allow_pickle=False)
    probs = member_probs(z)
    groups = [str(g) for g in z["groups"]] if "groups" in z.files else None
    return probs, z["noisy"], z["truth"], z["flipped"].astype(bool), groups


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", required=True,
                    help="JSON object: name -> DetectorConfig overrides (the first is the reference)")
    ap.add_argument("--runs", nargs="*", type=Path, default=[], help="saved predictions scored on their own labels")
    ap.add_argument("--relabel", type=int, default=4, help="re-labellings per design run and noise model")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    variants = {k: DetectorConfig(**v) for k, v in json.loads(a.variants).items()}
    names = list(variants)
    runs = []
    for path in a.runs:
        probs, noisy, _truth, flipped, groups = load(path)
        f1, best = {}, None
        for name, cfg in variants.items():
            m = rescore_labels(probs, noisy, flipped, cfg, groups=groups)["methods"]
            f1[name] = m["labelqa"]["f1"]
            best = max((v["f1"], k) for k, v in m.items() if k != "labelqa")  # baselines do not depend on cfg
        runs.append({"run": path.stem, "labelqa_f1": f1, "best_other": {"method": best[1], "f1": best[0]}})
        print(f"{path.stem[:70]:70s} " + " ".join(f"{f1[n]:.3f}" for n in names) + f" | {best[1]} {best[0]:.3f}",
              flush=True)
    rel = {n: [] for n in names}
    for path in design_runs():
        probs, _noisy, truth, _flipped, groups = load(path)
        k = next(iter(probs.values())).shape[1]
        for model in ("uniform", "asymmetric") if k >= 3 else ("uniform",):
            for r in range(a.relabel):
                noisy, flipped = corrupt_labels(truth, k, 0.05, model, seed=1000 + r)
                for name, cfg in variants.items():
                    rel[name].append(rescore_labels(probs, noisy, flipped.astype(bool), cfg, seed=r, groups=groups)
                                     ["methods"]["labelqa"]["f1"])
    ref = np.array(rel[names[0]])
    summary = {}
    for name in names:
        d = np.array(rel[name]) - ref
        own = [r["labelqa_f1"][name] for r in runs]
        summary[name] = {
            "overrides": json.loads(a.variants)[name],
            "runs_mean_f1": float(np.mean(own)) if own else None,
            "runs_beating_best_other": int(sum(r["labelqa_f1"][name] > r["best_other"]["f1"] for r in runs)),
            "relabel_mean_f1": float(ref.mean() + d.mean()),
            "relabel_diff_vs_first": float(d.mean()),
            "relabel_diff_se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0,
        }
        s = summary[name]
        print(f"{name:24s} runs mean {s['runs_mean_f1'] or float('nan'):.3f} wins {s['runs_beating_best_other']}/"
              f"{len(runs)} | re-labellings {s['relabel_mean_f1']:.4f} diff {s['relabel_diff_vs_first']:+.4f} "
              f"+- {s['relabel_diff_se']:.4f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({
        "command": " ".join(shlex.quote(x) for x in [".venv/bin/python", "benchmarks/experiments/count_constants.py",
                                                     *sys.argv[1:]]),
        "n_relabellings": len(ref), "design_runs": [p.stem for p in design_runs()], "runs": runs,
        "summary": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
