"""Summary of the second-fit runs (``benchmarks/experiments/refit.py``) and the pre-registered rule they were
tested with.

Reads every ``results/<stem>-refit.json`` (and ``-refit-random.json``, the random-exclusion control) and writes
``results/second-fit-summary.json``: per run, labelqa and the best other method on the first and the second fit,
the control where it ran, and the rule of ``results/second-fit-prereg.md`` applied to the ten runs it names
(second fit at least as good on >= 7 of 10 and a mean paired difference >= +0.02). Also, marked exploratory
(not pre-registered): labelqa and cleanlab on the mean of the two fits' probabilities.

    .venv/bin/python benchmarks/experiments/refit_summary.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.detector import DetectorConfig
from models.evaluate import member_probs, rescore_labels

RUNS = Path(__file__).resolve().parents[1] / "results"  # benchmarks/detector.py runs and their saved predictions
RESULTS = Path(__file__).resolve().parent / "results"  # this experiment's outputs
TAG = "crossfit3-s64-n2000-e10-b32"
PREREGISTERED = ([f"brain_tumor_mri_4class_224-{TAG}-asymmetric5-seed{s}" for s in (0, 2, 4)]
                 + [f"kermany_xray_3class-{TAG}-asymmetric5-seed{s}" for s in (0, 1, 2, 4)]
                 + [f"brain_tumor_mri_4class_224-{TAG}-uniform10-seed{s}" for s in (0, 1)]
                 + [f"chest_xray_pneumonia_kermany_224-{TAG}-uniform10-seed1"])


def paired_rule(diff: np.ndarray, at_least_key: str) -> dict:
    """The pre-registered rule shared by the second-fit and seed-average tests: the variant at least as good on
    >= 7 of the 10 runs and a mean paired difference >= +0.02."""
    return {"runs": len(diff), at_least_key: int((diff >= 0).sum()),
            "mean_paired_diff": round(float(diff.mean()), 4) if len(diff) else None,
            "passes": bool(len(diff) == 10 and (diff >= 0).sum() >= 7 and diff.mean() >= 0.02)}


def _best_other(methods: dict) -> tuple[str, float]:
    name = max((m for m in methods if m not in ("labelqa", "random")), key=lambda m: methods[m]["f1"])
    return name, methods[name]["f1"]


def _mean_of_fits(stem: str) -> dict:
    z1 = np.load(RUNS / "predictions" / f"{stem}.npz")
    z2 = np.load(RESULTS / "predictions" / "refit" / f"{stem}.npz")
    second = member_probs(z2)
    probs = {a: (p + second[a]) / 2 for a, p in member_probs(z1).items()}
    r = rescore_labels(probs, z1["noisy"], z1["flipped"].astype(bool), DetectorConfig(),
                       seed=int(stem.rsplit("seed", 1)[1]), groups=[str(g) for g in z1["groups"]])
    return {m: round(r["methods"][m]["f1"], 4) for m in ("labelqa", "cleanlab")}


def run_row(stem: str) -> dict | None:
    f = RESULTS / f"{stem}-refit.json"
    if not f.is_file():
        return None
    d = json.loads(f.read_text())
    a, b = d["first_fit"]["methods"], d["second_fit"]["methods"]
    row = {"run": stem, "excluded": d["excluded"], "excluded_flipped": d["excluded_flipped"],
           "n_flipped": d["n_flipped"],
           "estimated_errors": [d["first_fit"]["estimated_errors"], d["second_fit"]["estimated_errors"]],
           "labelqa_f1": [a["labelqa"]["f1"], b["labelqa"]["f1"]],
           "best_other_first_fit": _best_other(a), "best_other_second_fit": _best_other(b),
           "cleanlab_f1": [a["cleanlab"]["f1"], b["cleanlab"]["f1"]],
           "exploratory_mean_of_fits_f1": _mean_of_fits(stem)}
    c = RESULTS / f"{stem}-refit-random.json"
    if c.is_file():
        row["control_random_labelqa_f1"] = json.loads(c.read_text())["second_fit"]["methods"]["labelqa"]["f1"]
    return row


def main() -> int:
    stems = sorted(p.name[: -len("-refit.json")] for p in RESULTS.glob("*-refit.json"))
    rows = [r for r in map(run_row, stems) if r]
    pre = [r for r in rows if r["run"] in PREREGISTERED]
    diff = np.array([r["labelqa_f1"][1] - r["labelqa_f1"][0] for r in pre])
    rule = paired_rule(diff, "second_at_least_first")
    out = {"rule": "second fit >= first on >= 7 of the 10 pre-registered runs and mean paired diff >= +0.02 "
                   "(results/second-fit-prereg.md)", "preregistered": rule, "runs": rows,
           "command": ".venv/bin/python benchmarks/experiments/refit_summary.py"}
    (RESULTS / "second-fit-summary.json").write_text(json.dumps(out, indent=1) + "\n")
    print("| run | excluded (flips) | labelqa 1st -> 2nd | random control | best other 1st / 2nd |"
          " cleanlab 1st -> 2nd | mean of fits (exploratory) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ctl, mf = r.get("control_random_labelqa_f1"), r["exploratory_mean_of_fits_f1"]
        star = "" if r["run"] in PREREGISTERED else " (5th session)"
        print(f"| {r['run'].replace('-' + TAG, '')}{star} | {r['excluded']} ({r['excluded_flipped']}) | "
              f"{r['labelqa_f1'][0]:.3f} -> {r['labelqa_f1'][1]:.3f} | {'-' if ctl is None else f'{ctl:.3f}'} | "
              f"{r['best_other_first_fit'][0]} {r['best_other_first_fit'][1]:.3f} / "
              f"{r['best_other_second_fit'][0]} {r['best_other_second_fit'][1]:.3f} | "
              f"{r['cleanlab_f1'][0]:.3f} -> {r['cleanlab_f1'][1]:.3f} | "
              f"{mf['labelqa']:.3f} / {mf['cleanlab']:.3f} |")
    print(json.dumps(rule))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
