"""Does the training-time margin add to the out-of-fold probabilities? (area under the margin)

Every fit records, per sample and architecture, the mean margin (logit of the given label minus the
largest other logit) on the augmented training batches over all epochs, averaged over the members
that trained on the sample (``predictions.npz`` → ``train_margin``; Pleiss et al. 2020: a wrong
label is learned late, so its margin stays low). It is a second view of each label, from members
that *did* see it, next to labelqa's suspicion ``s = 1 - p_w(given)`` from members that did not.

For each saved run that has it, this reports, within each given class (labelqa cuts per class), the
average precision of ``s``, of ``-margin`` and of ``1 - p_w(given) * sigmoid(margin)``, and the F1
when labelqa's own per-class flag counts (simulated-flips cut, before the cohort step) are kept but
the samples are chosen by each score (the count cannot come from the margin: flips cannot be
simulated for a signal that depends on the label a member trained with).
Writes ``benchmarks/experiments/results/train-margin.json``.

    .venv/bin/python benchmarks/experiments/train_margin.py benchmarks/results/predictions/*.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

from models.detector import DetectorConfig, member_weights, simulated_flip_cut, weighted_mean


def analyse(path: Path, cfg: DetectorConfig) -> dict | None:
    z = np.load(path, allow_pickle=False)
    if "train_margin" not in z.files or len(np.unique(z["fold"])) < 2:
        return None
    archs = [str(a) for a in z["archs"]]
    probs = {a: z["probs"][i] for i, a in enumerate(archs)}
    given, flipped = z["noisy"], z["flipped"].astype(bool)
    n = len(given)
    w = member_weights(probs, given, cfg.weak_margin, cfg.weighting)
    pw = weighted_mean(probs, w)
    cut = simulated_flip_cut(pw, given, cfg.tail_floor, only_if_consensus_disagrees=cfg.only_if_consensus_disagrees,
                             source_prior=cfg.source_prior, tail_min_count=cfg.tail_min_count, count_z=cfg.count_z)
    flags = cut["flags"]
    s = 1.0 - pw[np.arange(n), given]
    tm = z["train_margin"].astype(np.float64)
    tm = np.where(np.isfinite(tm), tm, np.nanmedian(tm, axis=1, keepdims=True))  # never trained on: neutral
    wa = np.array([w[a] for a in archs])
    margin = (wa[:, None] * tm).sum(0) / max(wa.sum(), 1e-12)
    scores = {"suspicion": s, "neg_margin": -margin, "combined": 1.0 - (1.0 - s) / (1.0 + np.exp(-margin))}
    out: dict = {"predictions": path.name, "n_samples": int(n), "n_flipped": int(flipped.sum()),
                 "labelqa_flagged": int(flags.sum())}
    for name, sc in scores.items():
        tp, aps = 0, []
        for c in range(pw.shape[1]):
            idx = np.flatnonzero(given == c)
            k = int(flags[idx].sum())
            tp += int(flipped[idx[np.argsort(-sc[idx], kind="stable")[:k]]].sum())
            if flipped[idx].any() and (~flipped[idx]).any():
                aps.append(average_precision_score(flipped[idx], sc[idx]))
        out[name] = {"f1_at_labelqa_counts": float(2 * tp / (flags.sum() + flipped.sum())),
                     "mean_within_class_ap": float(np.mean(aps))}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("predictions", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train-margin.json")
    a = ap.parse_args()
    cfg = DetectorConfig()
    runs = [r for r in (analyse(p, cfg) for p in a.predictions) if r is not None]
    for r in runs:
        print(r["predictions"][:60], {k: (round(v["f1_at_labelqa_counts"], 3), round(v["mean_within_class_ap"], 3))
                                      for k, v in r.items() if isinstance(v, dict)})
    a.out.write_text(json.dumps({"command": "benchmarks/experiments/train_margin.py " + " ".join(sys.argv[1:]),
                                 "detector": cfg.to_dict(), "runs": runs}, indent=2))
    print(f"wrote {a.out} ({len(runs)} runs with train_margin)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
