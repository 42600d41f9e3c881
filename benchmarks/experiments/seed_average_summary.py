"""Summary of the seed-average test (``benchmarks/experiments/refit.py --control seed``) and its pre-registered rule.

Reads every ``results/<stem>-refit-seed.json`` and writes ``results/seed-average-summary.json``: per run, labelqa's
F1 on the first fit, on the second seed alone and on the member-wise mean of the two fits; the best other method on
the first fit and on the mean of fits; the estimated error count. Applies the rule of
``results/seed-average-prereg.md`` to the ten runs it names (mean of fits at least as good as the first fit on
>= 7 of 10 and a mean paired difference >= +0.02), and reports beside it the mean of the first and the
flags-excluded second fit (``refit_summary.py``'s exploratory column) on the same runs.

    .venv/bin/python benchmarks/experiments/seed_average_summary.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from refit_summary import PREREGISTERED, TAG, _best_other, paired_rule

RESULTS = Path(__file__).resolve().parent / "results"


def run_row(stem: str) -> dict | None:
    f = RESULTS / f"{stem}-refit-seed.json"
    if not f.is_file():
        return None
    d = json.loads(f.read_text())
    fits = {t: d[t]["methods"] for t in ("first_fit", "second_fit", "mean_of_fits")}
    row = {"run": stem, "n_flipped": d["n_flipped"], "fit_seed": d["fit_seed"],
           "labelqa_f1": {t: m["labelqa"]["f1"] for t, m in fits.items()},
           "cleanlab_f1": {t: m["cleanlab"]["f1"] for t, m in fits.items()},
           "best_other": {t: _best_other(m) for t, m in fits.items()},
           "estimated_errors": {t: d[t]["estimated_errors"] for t in fits}}
    s = RESULTS / "second-fit-summary.json"
    if s.is_file():
        prev = {r["run"]: r for r in json.loads(s.read_text())["runs"]}
        if stem in prev:
            row["mean_with_flags_excluded_fit_f1"] = prev[stem]["exploratory_mean_of_fits_f1"]["labelqa"]
    return row


def main() -> int:
    rows = [r for r in map(run_row, PREREGISTERED) if r]
    f1 = {t: np.array([r["labelqa_f1"][t] for r in rows]) for t in ("first_fit", "second_fit", "mean_of_fits")}
    diff = f1["mean_of_fits"] - f1["first_fit"]
    rule = paired_rule(diff, "mean_of_fits_at_least_first")
    if rows:
        singles = (f1["first_fit"] + f1["second_fit"]) / 2
        rule["reported"] = {
            "second_minus_first_mean": round(float((f1["second_fit"] - f1["first_fit"]).mean()), 4),
            "second_minus_first_sd": round(float((f1["second_fit"] - f1["first_fit"]).std(ddof=1)), 4)
            if len(rows) > 1 else None,
            "mean_of_fits_minus_mean_of_singles": round(float((f1["mean_of_fits"] - singles).mean()), 4),
            "labelqa_beats_best_other_first_fit": sum(r["labelqa_f1"]["first_fit"] > r["best_other"]["first_fit"][1]
                                                      for r in rows),
            "labelqa_beats_best_other_mean_of_fits": sum(
                r["labelqa_f1"]["mean_of_fits"] > r["best_other"]["mean_of_fits"][1] for r in rows)}
    out = {"rule": "mean of two seeds >= first fit on >= 7 of the 10 pre-registered runs and mean paired diff "
                   ">= +0.02 (results/seed-average-prereg.md)", "preregistered": rule, "runs": rows,
           "command": ".venv/bin/python benchmarks/experiments/seed_average_summary.py"}
    (RESULTS / "seed-average-summary.json").write_text(json.dumps(out, indent=1) + "\n")
    print("| run | labelqa 1st / 2nd seed / mean of fits | best other 1st | best other, mean of fits |"
          " est. errors (true) 1st / mean | mean with flags-excluded fit |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        q, b, e = r["labelqa_f1"], r["best_other"], r["estimated_errors"]
        mx = r.get("mean_with_flags_excluded_fit_f1")
        print(f"| {r['run'].replace('-' + TAG, '')} | {q['first_fit']:.3f} / {q['second_fit']:.3f} / "
              f"{q['mean_of_fits']:.3f} | {b['first_fit'][0]} {b['first_fit'][1]:.3f} | "
              f"{b['mean_of_fits'][0]} {b['mean_of_fits'][1]:.3f} | "
              f"{e['first_fit']:.0f} / {e['mean_of_fits']:.0f} ({r['n_flipped']}) | "
              f"{'-' if mx is None else f'{mx:.3f}'} |")
    print(json.dumps(rule))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
