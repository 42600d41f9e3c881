"""Which right masks does labelqa's mask order put high on every seed, and how much of the gap to cleanlab do they
make? (no fitting)

The planted benchmark counts every mask it did not corrupt as right. A right mask that labelqa's worklist order (the
mask ``priority``) ranks high on every run of a set is a property of the data set (an image where the members see
something the annotation protocol leaves out), not of a seed. For every saved run of a set
(``benchmarks/segmentation.py`` saved their out-of-fold probabilities), re-scored with this checkout's defaults:
per unplanted mask, on how many runs labelqa flags it as a suspected error and on how many it lies within the first
``2 x planted`` places of labelqa's order and of cleanlab's ``num_pixel_issues`` order. For each mask flagged on at
least ``--share`` of the runs (the recurrent ones), the AUPRC of labelqa's order and of both cleanlab scores with
that image left out of the evaluation for every method (a sensitivity analysis: the image is chosen by where
labelqa fails, so these numbers are not the benchmark's result). JSON to
``benchmarks/results/segmentation_recurrent_<set>.json`` with the command.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/segmentation_recurrent.py benchmarks/results/seg_predictions/hc18_*.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("predictions", nargs="+", type=Path)
    ap.add_argument("--share", type=float, default=0.75, help="recurrent: flagged on at least this share of the runs")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    from models.evaluate import _auprc
    from models.seg.detector import SegDetectorConfig, learn_seg_cut, score_masks
    from models.seg.evaluate import _cleanlab_scores, load_predictions, to_channels
    from models.verdict import Verdict

    sets = {f.stem.split("_")[0] for f in a.predictions}
    if len(sets) != 1:
        raise SystemExit(f"one data set at a time (got {sorted(sets)})")
    name = sets.pop()
    runs: dict[str, dict] = {}
    flagged, top_lq, top_npi = Counter(), Counter(), Counter()
    stems: list[str] | None = None
    for f in sorted(a.predictions):
        d = load_predictions(f)
        if stems is None:
            stems = d["stems"]
        elif d["stems"] != stems:
            raise SystemExit(f"{f}: another image order than the first run's")
        k = d["probs"].shape[2]
        g, t = to_channels(d["noisy"], k), to_channels(d["clean"], k)
        truth = (g != t).any((2, 3)).reshape(-1)
        cfg = SegDetectorConfig(seed=int(d["settings"].get("seed", 0)))
        th = learn_seg_cut(d["probs"], d["noisy"], cfg, archs=d["archs"], class_names=d["class_names"])
        vs = score_masks(d["probs"], d["noisy"], d["spacing"], class_names=d["class_names"], archs=d["archs"],
                         thresholds=th, cfg=cfg, keep_arrays=False, distances=False)
        pbar = d["probs"].mean(0)
        scores = {"labelqa": np.array([v.priority for v in vs]),
                  "cleanlab_softmin": 1.0 - _cleanlab_scores(pbar, g)[0],
                  "cleanlab_num_pixel_issues": 1.0 - _cleanlab_scores(pbar, g, "num_pixel_issues")[0]}
        n_top = 2 * int(truth.sum())
        rank = {m: np.argsort(np.argsort(-s, kind="stable"), kind="stable") for m, s in scores.items()}
        for u in np.flatnonzero(~truth):
            flagged[int(u)] += vs[u].verdict == Verdict.SUSPECTED_MASK_ERROR
            top_lq[int(u)] += int(rank["labelqa"][u] < n_top)
            top_npi[int(u)] += int(rank["cleanlab_num_pixel_issues"][u] < n_top)
        runs[f.stem] = {"truth": truth, "scores": scores, "k": k}
        print(f.stem, {m: round(_auprc(s, truth), 3) for m, s in scores.items()}, flush=True)
    n = len(runs)
    recurrent = sorted((u for u, c in flagged.items() if c >= a.share * n), key=lambda u: -flagged[u])
    kk = next(iter(runs.values()))["k"]

    def stem_of(u: int) -> str:  # units are image-major: image u // K, class u % K
        return f"{(stems or [])[u // kk]} (class {u % kk + 1})"

    table = [{"unit": u, "image": stem_of(u), "flagged": flagged[u], "top_labelqa": top_lq[u],
              "top_num_pixel_issues": top_npi[u]} for u, _ in flagged.most_common(10)]
    per_run = {}
    for stem, r in runs.items():
        keep = np.ones(len(r["truth"]), bool)
        keep[recurrent] = False
        row = {}
        for tag, sel in (("all", np.ones_like(keep)), ("without_recurrent", keep)):
            au = {m: _auprc(s[sel], r["truth"][sel]) for m, s in r["scores"].items()}
            row[tag] = {**au, "labelqa_at_least_cleanlab": bool(
                au["labelqa"] >= max(au["cleanlab_softmin"], au["cleanlab_num_pixel_issues"]))}
        per_run[stem] = row

    def summary(tag: str) -> dict:
        rows = [r[tag] for r in per_run.values()]
        diff = np.array([r["labelqa"] - r["cleanlab_num_pixel_issues"] for r in rows])
        return {"labelqa_at_least_cleanlab": f"{sum(r['labelqa_at_least_cleanlab'] for r in rows)}/{len(rows)}",
                "mean_auprc": {m: float(np.mean([r[m] for r in rows]))
                               for m in rows[0] if m != "labelqa_at_least_cleanlab"},
                "mean_labelqa_minus_num_pixel_issues": float(diff.mean())}

    out = {"command": "PYTHONPATH=$PWD .venv/bin/python benchmarks/segmentation_recurrent.py "
                      + " ".join(str(p) for p in sys.argv[1:]),
           "set": name, "n_runs": n, "share": a.share,
           "most_flagged_unplanted": table,
           "recurrent": [{"unit": u, "image": stem_of(u)} for u in recurrent],
           "summary": {"all": summary("all"), "without_recurrent": summary("without_recurrent")},
           "runs": per_run}
    path = a.out or Path(__file__).parent / "results" / f"segmentation_recurrent_{name}.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("most_flagged_unplanted", "recurrent", "summary")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
