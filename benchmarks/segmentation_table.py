"""The tables of docs/segmentation.md from benchmarks/results/segmentation/*.json, and a summary JSON.

Seed 0 of every set and rate was the development split (the method was chosen on it); seeds 1 and 2
are the evaluation split: ``eval`` for the runs that existed when the current mask score was chosen
(they had been scored with the earlier one), ``fresh`` for those fitted after (``FRESH_RUNS``); ``test`` for
the runs fitted as the tests of the rules on the mask priority, the order labelqa's AUPRC measures (``TEST_RUNS``),
and ``later`` for the other runs fitted after the first of them (seeds 5-10). The summary adds, per set, the
paired AUPRC difference to each cleanlab score over the judged runs (mean, bootstrap 95% interval, runs at least
level).
Writes ``benchmarks/results/segmentation/summary.json`` (per set and split: the targets met or not,
with the numbers) and prints the markdown tables.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/segmentation_table.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DIR = Path(__file__).parent / "results" / "segmentation"
CLEANLAB = ("cleanlab_softmin", "cleanlab_num_pixel_issues")
BASELINES = ("dual_consistency", "cleanlab_softmin", "cleanlab_num_pixel_issues", "mean_prob_dice",
             "single_model_dice")
DEV_SEEDS = (0,)
FRESH_RUNS = frozenset({f"{s}_0.1_s{seed}" for s in ("drive", "chase", "hc18") for seed in (1, 2)}
                       | {"drive_0.05_s2", "busi_0.05_s2", "busi_0.1_s2"}
                       | {"hc18_0.05_s3", "hc18_0.1_s3", "chase_0.05_s3", "drive_0.05_s3"}
                       | {"hc18_0.05_s4", "hc18_0.1_s4", "chase_0.05_s4", "drive_0.05_s4"})
"""Runs fitted after the mask score with confidently wrong pixels was chosen (never seen by any choice); the
seed-3 runs were fitted while the per-class choice of the score (tried and rejected) was decided, and scored
only after that decision was committed; the seed-4 runs likewise for the count of pixels wrong under confident
learning's thresholds (tried and rejected). For the worklist order (the mask priority) every run of seeds 0-4 was
development data; its test split is ``TEST_RUNS``."""


TEST_RUNS = frozenset({"hc18_0.05_s5", "hc18_0.05_s6", "hc18_0.1_s5", "hc18_0.1_s6", "drive_0.05_s5", "chase_0.05_s5"}
                      | {f"busi_{r}_s{seed}" for r in ("0.05", "0.1") for seed in (6, 7)}
                      | {f"hc18_{r}_s{seed}" for r in ("0.05", "0.1") for seed in (11, 12)}
                      | {"drive_0.05_s10", "chase_0.05_s10"})
"""The test of the mask priority named in ``PRIORITY_RULE`` (benchmarks/segmentation_dev.py): every run of seeds 0-4
was development data for that order; these were scored only after it was committed. The BUSI seed-6 and seed-7 runs
are ``UNJUDGED_RULE``'s test (the order of classes the models cannot judge), fitted after it was committed. Runs
of seed 5 and above not named here (``later``) were fitted after that commit too, and reported as they came. The
HC18 seed-11 and seed-12 runs and DRIVE and CHASE_DB1 5% seed 10 are ``SHAPE_RULE``'s test (a flag whose suggested
mask is shaped unlike the class's masks ranks among the rest), scored only after it was committed; for that rule
every run of seeds 0-10 was development data."""


def split_of(run: str, seed: int) -> str:
    if run in TEST_RUNS:
        return "test"
    if seed >= 5:
        return "later"
    return "dev" if seed in DEV_SEEDS else ("fresh" if run in FRESH_RUNS else "eval")


def _f(x: float | None, d: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{d}f}"


def load(results_dir: Path = DIR) -> list[dict]:
    runs = []
    for f in sorted(results_dir.glob("*.json")):
        if f.name == "summary.json":
            continue
        r = json.loads(f.read_text())
        r["_name"] = f.stem
        runs.append(r)
    order = {"drive": 0, "chase": 1, "hc18": 2, "busi": 3}
    runs.sort(key=lambda r: (order.get(r["benchmark"]["set"], 9), r["_name"].count("_e"),
                             r["settings"]["noise_rate"], r["settings"]["seed"]))
    return runs


def run_row(r: dict) -> dict:
    m = r["methods"]
    comp = r["competence"][0]
    lq = m["labelqa"]
    best_cl = max(m[x]["auprc"] or 0.0 for x in CLEANLAB)
    best_f1 = max(m[x]["f1"] for x in BASELINES)
    return {
        "run": r["_name"], "set": r["benchmark"]["set"], "rate": r["settings"]["noise_rate"],
        "seed": r["settings"]["seed"], "split": split_of(r["_name"], r["settings"]["seed"]),
        "planted": r["n_corrupted_units"], "units": r["n_units"], "judged": comp["judged"],
        "median_dice": comp["median_dice"], "detection_rate": comp["detection_rate"],
        "member_dice_vs_clean": r["member_dice_vs_clean"]["median"][0],
        "estimated_errors": r["estimated_errors_per_class"][0],
        "flags": lq["n_flagged"], "flags_per_planted": lq["flags_per_planted"], "f1": lq["f1"],
        "precision": lq["precision"], "recall": lq["recall"], "auprc": lq["auprc"],
        "auprc_cleanlab_softmin": m["cleanlab_softmin"]["auprc"],
        "auprc_cleanlab_npi": m["cleanlab_num_pixel_issues"]["auprc"],
        "auprc_ahead_of_cleanlab": (lq["auprc"] or 0.0) >= best_cl, "best_baseline_f1": best_f1,
        "f1_ahead_of_baselines": lq["f1"] >= best_f1, "f1_dual": m["dual_consistency"]["f1"],
        "pixel_auprc_labelqa": r["pixel"]["labelqa"]["auprc"], "pixel_auprc_cleanlab": r["pixel"]["cleanlab"]["auprc"],
        "seconds_fit": r["timing_s"]["fit"], "seconds_score": r["timing_s"]["score"],
        "observer": r.get("observer_study", {}).get("spearman_tile"),
        "per_kind": {k: (v["auprc"], m["cleanlab_softmin"]["per_kind"].get(k, {}).get("auprc"))
                     for k, v in lq["per_kind"].items()},
    }


def markdown(rows: list[dict]) -> str:
    head = ("| set | rate | seed | split | planted / masks | members' median OOF Dice (vs clean) | judged | "
            "est. errors | flags / planted | labelqa F1 | best baseline F1 | labelqa AUPRC | cleanlab softmin | "
            "cleanlab num_pixel_issues | pixel AUPRC labelqa / cleanlab | s fit + score |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for x in rows:
        judged = "yes" if x["judged"] else "**no**"
        fpp = _f(x["flags_per_planted"], 2)
        bold = "**" if x["auprc_ahead_of_cleanlab"] and x["judged"] else ""
        lines.append(
            f"| {x['set']}{' (weak)' if '_e' in x['run'] else ''} | {x['rate']:g} | {x['seed']} | {x['split']} | "
            f"{x['planted']} / {x['units']} | {_f(x['median_dice'], 2)} ({_f(x['member_dice_vs_clean'], 2)}) | "
            f"{judged} | {x['estimated_errors']:.1f} | {x['flags']} ({fpp}) | {_f(x['f1'])} | "
            f"{_f(x['best_baseline_f1'])} | {bold}{_f(x['auprc'])}{bold} | {_f(x['auprc_cleanlab_softmin'])} | "
            f"{_f(x['auprc_cleanlab_npi'])} | {_f(x['pixel_auprc_labelqa'])} / {_f(x['pixel_auprc_cleanlab'])} | "
            f"{x['seconds_fit']:.0f} + {x['seconds_score']:.0f} |")
    return "\n".join(lines)


def kinds_table(rows: list[dict]) -> str:
    """Per planted kind, labelqa's AUPRC vs cleanlab softmin's, mean over the judged runs of each set."""
    sets = list(dict.fromkeys(x["set"] for x in rows))
    kinds = sorted({k for x in rows for k in x["per_kind"]})
    lines = ["| set | " + " | ".join(kinds) + " |", "|" + "|".join(["---"] * (len(kinds) + 1)) + "|"]
    for s in sets:
        sel = [x for x in rows if x["set"] == s and "_e" not in x["run"]]
        cells = []
        for k in kinds:
            a = [x["per_kind"][k][0] for x in sel if k in x["per_kind"] and x["per_kind"][k][0] is not None]
            b = [x["per_kind"][k][1] for x in sel if k in x["per_kind"] and x["per_kind"][k][1] is not None]
            cells.append(f"{np.mean(a):.2f} / {np.mean(b):.2f}" if a and b else "n/a")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(a: list[float], b: list[float], n_boot: int = 10000, seed: int = 0) -> dict:
    """labelqa's AUPRC minus a baseline's over the same runs: mean, a bootstrap 95% interval of the mean (runs
    resampled), and on how many runs labelqa is at least level."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if not len(d):
        return {"n": 0}
    boot = np.random.default_rng(seed).choice(d, (n_boot, len(d))).mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"n": int(len(d)), "mean": float(d.mean()), "ci95": [float(lo), float(hi)],
            "at_least_level": int((d >= 0).sum()), "min": float(d.min()), "max": float(d.max())}


def summary(rows: list[dict]) -> dict:
    out: dict = {}
    for x in rows:
        key = f"{x['set']}{' weak' if '_e' in x['run'] else ''}"
        d = out.setdefault(key, {"runs": []})
        d["runs"].append({k: x[k] for k in ("run", "split", "judged", "flags_per_planted", "f1", "best_baseline_f1",
                                            "auprc", "auprc_cleanlab_softmin", "auprc_cleanlab_npi",
                                            "auprc_ahead_of_cleanlab", "f1_ahead_of_baselines")})
    for d in out.values():
        judged = [r for r in d["runs"] if r["judged"]]
        # the targets hold where the models can judge; elsewhere labelqa flags nothing and its order is cleanlab's
        # softmin (UNJUDGED_RULE), level with it by construction
        d["auprc_ahead_of_cleanlab_where_judged"] = (
            f"{sum(r['auprc_ahead_of_cleanlab'] for r in judged)}/{len(judged)}")
        d["f1_ahead_of_baselines_where_judged"] = f"{sum(r['f1_ahead_of_baselines'] for r in judged)}/{len(judged)}"
        d["judged"] = f"{len(judged)}/{len(d['runs'])}"
        d["flags_per_planted_in_0.5_2_where_judged"] = (
            f"{sum(0.5 <= (r['flags_per_planted'] or 0) <= 2 for r in judged)}/{len(judged)}")
        # the set-level view of the per-seed target: the paired AUPRC difference over the judged runs
        d["auprc_minus_cleanlab_where_judged"] = {
            name: paired([r["auprc"] or 0.0 for r in judged], [r[key] or 0.0 for r in judged])
            for name, key in (("softmin", "auprc_cleanlab_softmin"), ("num_pixel_issues", "auprc_cleanlab_npi"))}
    return out


if __name__ == "__main__":
    rows = [run_row(r) for r in load()]
    print(markdown(rows))
    print()
    print(kinds_table([x for x in rows if x["judged"]]))
    (DIR / "summary.json").write_text(json.dumps({"dev_seeds": list(DEV_SEEDS), "fresh_runs": sorted(FRESH_RUNS),
                                                  "sets": summary(rows),
                                                  "runs": rows}, indent=2))
