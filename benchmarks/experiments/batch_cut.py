"""Should a bundle re-estimate its cut on the batch it audits? Measured on saved crossfit predictions.

A bundle learns its cut (error count, per-class suspicion cuts) on its training data and applies it to
new data. A batch sent for audit may carry a different error rate. In a crossfit run every sample's
probabilities come from members that never saw it, so a saved run can play both parts: one random
half is the bundle's training data (its labels as the run planted them, 5% uniform flips; the cut is
fitted there), the other half is an audit batch whose true labels get *new* uniform flips at rate r
after the fact. The batch is then scored with the stored cut (``bundle``) and with the cut
re-estimated on the batch itself (``batch``, ``models.detector.refit_cut``). Writes
``benchmarks/experiments/results/batch-cut.json``: F1 and flag counts per run, rate and choice, and means.

    .venv/bin/python benchmarks/experiments/batch_cut.py benchmarks/results/predictions/*crossfit*.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from models.detector import DetectorConfig, batch_cut_ok, fit_thresholds, refit_cut, score_samples
from models.evaluate import corrupt_labels


def _f1(flags: np.ndarray, truth: np.ndarray) -> float:
    tp = int((flags & truth).sum())
    return 0.0 if tp == 0 else 2 * tp / (int(flags.sum()) + int(truth.sum()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("predictions", nargs="+", type=Path)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.10, 0.20])
    ap.add_argument("--repeats", type=int, default=3, help="random halves per run")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "batch-cut.json")
    a = ap.parse_args()
    cfg = DetectorConfig()
    rows = []
    for f in a.predictions:
        z = np.load(f, allow_pickle=False)
        if len(np.unique(z["fold"])) < 2:  # insample: probabilities saw the labels
            continue
        probs = {str(x): z["probs"][i] for i, x in enumerate(z["archs"])}
        truth, run_noisy = z["truth"], z["noisy"]
        n, k = len(truth), int(z["probs"].shape[-1])
        for rep in range(a.repeats):
            rng = np.random.default_rng(100 + rep)
            perm = rng.permutation(n)
            tr, au = np.sort(perm[: n // 2]), np.sort(perm[n // 2:])
            p_tr = {m: p[tr] for m, p in probs.items()}
            p_au = {m: p[au] for m, p in probs.items()}
            n_dis = np.sum([p.argmax(1) != run_noisy[tr] for p in p_tr.values()], axis=0)
            th = fit_thresholds(p_tr, run_noisy[tr], np.full(len(tr), np.nan), n_dis == len(p_tr), cfg)
            for rate in a.rates:
                given, flipped = corrupt_labels(truth[au], k, rate, "uniform", seed=2000 + rep)
                nan = np.full(len(au), np.nan)
                row = {"predictions": f.name, "repeat": rep, "rate": rate, "n_batch": len(au),
                       "n_flipped": int(flipped.sum()), "batch_ok": bool(batch_cut_ok(given, k, cfg))}
                choices = {"bundle": th}
                if row["batch_ok"]:
                    choices["batch"] = refit_cut(th, p_au, given, cfg)
                for name, t in choices.items():
                    flags = score_samples(p_au, given, nan, t, cfg).labelqa_flag
                    row[name] = {"f1": _f1(flags, flipped), "n_flagged": int(flags.sum()),
                                 "false_flags": int((flags & ~flipped).sum()),
                                 "n_estimated_errors": int(t.n_estimated_errors)}
                rows.append(row)
                print(f.name[:52], rep, rate, {c: (round(row[c]["f1"], 3), row[c]["n_flagged"])
                                               for c in choices}, flush=True)
    means: dict = {}
    for rate in a.rates:
        sel = [r for r in rows if r["rate"] == rate and r["batch_ok"]]
        if sel:
            means[str(rate)] = {c: {"f1": float(np.mean([r[c]["f1"] for r in sel])),
                                    "n_flagged": float(np.mean([r[c]["n_flagged"] for r in sel])),
                                    "false_flags": float(np.mean([r[c]["false_flags"] for r in sel])),
                                    "n_flipped": float(np.mean([r["n_flipped"] for r in sel]))}
                                for c in ("bundle", "batch")}
            means[str(rate)]["n_runs"] = len(sel)
    a.out.write_text(json.dumps({"command": "benchmarks/experiments/batch_cut.py " + " ".join(sys.argv[1:]),
                                 "detector": cfg.to_dict(), "means_where_batch_ok": means, "rows": rows}, indent=2))
    for rate, m in means.items():
        print(f"rate {rate}: bundle F1 {m['bundle']['f1']:.3f} ({m['bundle']['n_flagged']:.0f} flags) | "
              f"batch F1 {m['batch']['f1']:.3f} ({m['batch']['n_flagged']:.0f} flags) | "
              f"flipped {m['bundle']['n_flipped']:.0f} | {m['n_runs']} runs")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
