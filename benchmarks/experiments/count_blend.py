"""After-the-fact check of a blended count (issue 5, eighth session; not adopted).

On the MRI 64 px runs the earlier confident-joint cut beat the simulated-flips cut 10 of 13 times by flagging more;
this scores the obvious blend on saved crossfit predictions: labelqa's ranking (the simulated-flips score, only
where the weighted consensus disagrees with the label), cut at N = the mean of the two cuts' flag counts. Writes
``benchmarks/experiments/results/count-blend.json``.

    .venv/bin/python benchmarks/experiments/count_blend.py benchmarks/results/predictions/*crossfit3*.npz
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np

from models.detector import DetectorConfig, fit_thresholds, score_samples
from models.evaluate import member_probs


def f1(flags: np.ndarray, truth: np.ndarray) -> float:
    tp = int((flags & truth).sum())
    p, r = tp / max(int(flags.sum()), 1), tp / max(int(truth.sum()), 1)
    return 0.0 if tp == 0 else 2 * p * r / (p + r)


def blend(path: Path) -> dict:
    z = np.load(path)
    probs = member_probs(z)
    noisy, flipped = z["noisy"], z["flipped"].astype(bool)
    groups = [str(g) for g in z["groups"]]
    nan = np.full(len(noisy), np.nan)
    unanimous = np.sum([p.argmax(1) != noisy for p in probs.values()], 0) == len(probs)
    sc = {}
    for cut in ("simulated_flips", "confident_joint"):
        cfg = DetectorConfig(cut=cut)
        th = fit_thresholds(probs, noisy, nan, unanimous, cfg, seed=0)
        sc[cut] = score_samples(probs, noisy, nan, th, cfg, groups=groups)
    sf, cj = sc["simulated_flips"], sc["confident_joint"]
    n = int(round((sf.labelqa_flag.sum() + cj.labelqa_flag.sum()) / 2))
    eligible = sf.consensus != noisy
    flags = np.zeros(len(noisy), dtype=bool)
    flags[np.argsort(-np.where(eligible, sf.score, -np.inf), kind="stable")[:n]] = True
    flags &= eligible
    return {"run": path.name, "n_true": int(flipped.sum()),
            "f1_simulated_flips": f1(sf.labelqa_flag, flipped), "f1_confident_joint": f1(cj.labelqa_flag, flipped),
            "f1_blend": f1(flags, flipped), "n_simulated_flips": int(sf.labelqa_flag.sum()),
            "n_confident_joint": int(cj.labelqa_flag.sum()), "n_blend": n}


def main() -> int:
    files = [Path(f) for f in sys.argv[1:]]
    runs = [blend(f) for f in files]
    for r in runs:
        print(f"{r['run'][:70]:70s} sf {r['f1_simulated_flips']:.3f} cj {r['f1_confident_joint']:.3f} "
              f"blend {r['f1_blend']:.3f}  n {r['n_simulated_flips']}/{r['n_confident_joint']}/{r['n_blend']} "
              f"true {r['n_true']}")
    d = np.array([r["f1_blend"] - r["f1_simulated_flips"] for r in runs])
    out = {"command": shlex.join([".venv/bin/python", "benchmarks/experiments/count_blend.py", *sys.argv[1:]]),
           "n_runs": len(runs), "blend_at_least_as_good": int((d >= 0).sum()), "mean_difference": float(d.mean()),
           "runs": runs}
    (Path(__file__).resolve().parent / "results" / "count-blend.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"blend at least as good as the simulated-flips cut on {out['blend_at_least_as_good']} of {len(runs)}, "
          f"mean {out['mean_difference']:+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
