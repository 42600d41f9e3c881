"""Summary of ``benchmarks/experiments/tta.py``: plain vs test-time-augmented probabilities of the same fits, and
the rule of ``benchmarks/experiments/results/tta-prereg.md`` applied to labelqa's F1. Writes
``benchmarks/experiments/results/tta-summary.json``.

    .venv/bin/python benchmarks/experiments/tta_summary.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def decide(diffs: list[float]) -> str:
    """The pre-registered rule on labelqa's per-run F1 differences (TTA minus plain)."""
    n = len(diffs)
    if n < 6:
        return "undecided (fewer than six runs)"
    at_least = sum(d >= 0 for d in diffs)
    mean = float(np.mean(diffs))
    if at_least >= math.ceil(0.75 * n) and mean >= 0.01:
        return "default"
    if at_least >= math.ceil(0.5 * n) and mean >= 0.005:
        return "option"
    return "rejected"


def main() -> int:
    files = sorted(RESULTS.glob("*-tta.json"))
    runs, diffs = [], []
    for f in files:
        d = json.loads(f.read_text())
        row = {"run": f.name, "n_flipped": d["n_flipped"], "tta_predict_s": d["tta_predict_s"], "fit_s": d["fit_s"]}
        for tag in ("plain", "tta"):
            m = d[tag]["methods"]
            best = max((x for x in m if x not in ("labelqa", "random")), key=lambda x: m[x]["f1"])
            row[tag] = {"labelqa_f1": m["labelqa"]["f1"], "labelqa_n_flagged": m["labelqa"]["n_flagged"],
                        "estimated_errors": d[tag]["estimated_errors"],
                        "best_other": {"method": best, "f1": m[best]["f1"]},
                        "labelqa_beats_best_other": m["labelqa"]["f1"] > m[best]["f1"],
                        "f1": {x: v["f1"] for x, v in m.items()},
                        "member_accuracy_clean": d[tag]["member_accuracy_clean"]}
        row["labelqa_f1_difference"] = row["tta"]["labelqa_f1"] - row["plain"]["labelqa_f1"]
        diffs.append(row["labelqa_f1_difference"])
        runs.append(row)
    methods = list(runs[0]["plain"]["f1"]) if runs else []
    out = {"rule": "benchmarks/experiments/results/tta-prereg.md", "n_runs": len(runs),
           "labelqa_tta_at_least_as_good": int(sum(d >= 0 for d in diffs)),
           "labelqa_mean_difference": float(np.mean(diffs)) if diffs else None,
           "decision": decide(diffs),
           "mean_difference_by_method": {m: float(np.mean([r["tta"]["f1"][m] - r["plain"]["f1"][m] for r in runs]))
                                         for m in methods},
           "mean_member_accuracy_difference": float(np.mean(
               [np.mean([r["tta"]["member_accuracy_clean"][a] - r["plain"]["member_accuracy_clean"][a]
                         for a in r["plain"]["member_accuracy_clean"]]) for r in runs])) if runs else None,
           "runs": runs}
    dest = RESULTS / "tta-summary.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    for r in runs:
        p, t = r["plain"], r["tta"]
        print(f"{r['run'][:-9]:70s} labelqa {p['labelqa_f1']:.3f} -> {t['labelqa_f1']:.3f}  "
              f"best other {p['best_other']['method']} {p['best_other']['f1']:.3f} / "
              f"{t['best_other']['method']} {t['best_other']['f1']:.3f}  "
              f"est {p['estimated_errors']} -> {t['estimated_errors']} ({r['n_flipped']})")
    print(f"TTA at least as good on {out['labelqa_tta_at_least_as_good']} of {len(runs)}, mean "
          f"{out['labelqa_mean_difference']:+.3f} -> {out['decision']}; wrote {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
