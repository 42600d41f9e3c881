"""The worklist's order of labels against labelqa's score, active label cleaning and cleanlab (no fitting).

For every saved label run (``predictions.npz``: out-of-fold member probabilities, agreement, planted
flips), the detector is re-run with this checkout's defaults and the AUPRC of the planted flips is
measured for: the worklist's ``priority`` (labelqa's score since this change), ALC's priority (the worklist's
order before it), cleanlab's ``find_label_issues`` ranking, and, for the record, the verdict-first order that
the mask worklist uses (suspected errors, hard cases, the rest, each by labelqa's score), which was the first
candidate for labels and measured worse than the score alone. The committed runs' predictions:
``git archive 8bfbb68 benchmarks/results/predictions | tar -x -C DIR``. JSON to
``benchmarks/results/worklist_order_labels.json`` with the command.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/worklist_order.py DIR/benchmarks/results/predictions/*.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

KEYS = ("labelqa_priority", "labelqa", "alc", "cleanlab", "verdict_first")
LEVEL = {"suspected_label_error": 2.0, "hard_case": 1.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("predictions", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "worklist_order_labels.json")
    a = ap.parse_args()
    from models.detector import DetectorConfig, fit_thresholds, score_samples
    from models.evaluate import _auprc, compare_methods, member_probs

    out: dict = {"command": "PYTHONPATH=$PWD .venv/bin/python benchmarks/worklist_order.py "
                            + " ".join(str(p) for p in sys.argv[1:]), "runs": {}}
    for f in a.predictions:
        seed = int(f.stem.rsplit("seed", 1)[1]) if "seed" in f.stem else 0
        z = np.load(f, allow_pickle=False)
        probs, noisy, flipped, cfg = member_probs(z), z["noisy"], z["flipped"].astype(bool), DetectorConfig()
        n_dis = np.sum([p.argmax(1) != noisy for p in probs.values()], axis=0)
        th = fit_thresholds(probs, noisy, z["agreement"], n_dis == len(probs), cfg, seed=seed)
        sc = score_samples(probs, noisy, z["agreement"], th, cfg, spearman=z["spearman"], iou=z["iou"],
                           groups=[str(g) for g in z["groups"]])
        m = compare_methods(probs, noisy, flipped, sc, th, seed)["methods"]
        first = np.array([LEVEL.get(str(v), 0.0) for v in sc.verdict]) + 0.999 * np.clip(sc.score, 0.0, 1.0)
        out["runs"][f.stem] = r = {k: m[k]["auprc"] for k in KEYS[:4]}
        r["verdict_first"] = _auprc(first, flipped)
        r["priority_at_least_alc"] = bool(r["labelqa_priority"] >= r["alc"])
        r["verdict_first_at_least_alc"] = bool(r["verdict_first"] >= r["alc"])
        r["priority_at_least_cleanlab"] = bool(r["labelqa_priority"] >= r["cleanlab"])
        print(f.stem, {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
    runs = list(out["runs"].values())
    out["summary"] = {"n_runs": len(runs),
                      "mean_auprc": {k: float(np.mean([r[k] for r in runs])) for k in KEYS},
                      "priority_at_least_alc": sum(r["priority_at_least_alc"] for r in runs),
                      "verdict_first_at_least_alc": sum(r["verdict_first_at_least_alc"] for r in runs),
                      "priority_at_least_cleanlab": sum(r["priority_at_least_cleanlab"] for r in runs)}
    print(json.dumps(out["summary"], indent=1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
