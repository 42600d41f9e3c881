"""The method's development record: detector variants re-scored on the saved development runs (no fitting).

The development split is seed 0 of every set and rate (``benchmarks/segmentation.py`` saved their
out-of-fold probabilities), plus the deliberately weak BUSI run (3 epochs); the evaluation seeds 1
and 2 are not read here. For each variant of ``SegDetectorConfig`` (the mask score, what the error
count simulates from, the competence constants) and each run: AUPRC, F1, flags / planted, whether
the class is judged, against cleanlab's two scores on the same probabilities. JSON to
``benchmarks/results/segmentation/dev/variants.json``.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/segmentation_dev.py benchmarks/results/seg_predictions/*_s0*.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

VARIANTS: dict[str, dict] = {
    "suspicion (before)": {"score": "suspicion", "simulate_from": "consensus", "min_dice": 0.0, "min_detection": 0.0,
                           "flag_margin": 1e9},
    "suspicion, given-sim": {"score": "suspicion"},
    "softmin": {"score": "softmin"},
    "evidence": {"score": "evidence"},
    "blend (suspicion + evidence)": {"score": "blend"},
    "blend, consensus-sim": {"score": "blend", "simulate_from": "consensus"},
    "blend_softmin (suspicion + cleanlab softmin)": {"score": "blend_softmin"},
    "blend3 (suspicion + evidence + softmin)": {"score": "blend3"},
    "blend, no flag cap": {"score": "blend", "flag_margin": 1e9},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("predictions", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "segmentation" / "dev"
                    / "variants.json")
    a = ap.parse_args()
    from models.evaluate import _auprc
    from models.seg.detector import SegDetectorConfig, learn_seg_cut, score_masks
    from models.seg.evaluate import _cleanlab_scores, load_predictions
    from models.seg.train import to_channels
    from models.verdict import Verdict

    out: dict = {"command": "PYTHONPATH=$PWD .venv/bin/python benchmarks/segmentation_dev.py "
                            + " ".join(str(p) for p in sys.argv[1:]), "variants": VARIANTS, "runs": {}}
    for f in a.predictions:
        d = load_predictions(f)
        if int(d["settings"]["seed"]) != 0:
            raise SystemExit(f"{f}: not a development run (seed 0 only)")
        truth = (d["noisy"] != d["clean"]).any((1, 2))
        g = to_channels(d["noisy"], 1)
        pbar = d["probs"].mean(0)
        run: dict = {"planted": int(truth.sum()), "units": int(len(truth)),
                     "cleanlab_softmin": _auprc(1 - _cleanlab_scores(pbar, g)[0], truth),
                     "cleanlab_num_pixel_issues": _auprc(1 - _cleanlab_scores(pbar, g, "num_pixel_issues")[0], truth),
                     "variants": {}}
        for name, kw in VARIANTS.items():
            cfg = SegDetectorConfig(seed=0, **kw)
            th = learn_seg_cut(d["probs"], d["noisy"], cfg, class_names=d["class_names"])
            vs = score_masks(d["probs"], d["noisy"], thresholds=th, cfg=cfg, keep_arrays=False, distances=False)
            flags = np.array([v.verdict == Verdict.SUSPECTED_MASK_ERROR for v in vs])
            tp = int((flags & truth).sum())
            prec, rec = tp / max(flags.sum(), 1), tp / max(truth.sum(), 1)
            run["variants"][name] = {
                "auprc": _auprc(np.array([v.score for v in vs]), truth),
                "auprc_raw": _auprc(np.array([v.raw_score for v in vs]), truth),
                "flags": int(flags.sum()), "flags_per_planted": float(flags.sum() / max(truth.sum(), 1)),
                "f1": 2 * prec * rec / (prec + rec) if tp else 0.0,
                "estimated_errors": th.estimated_errors_per_class[0], "judged": th.competence[0]["judged"],
                "median_dice": th.competence[0]["median_dice"], "detection_rate": th.competence[0]["detection_rate"]}
        out["runs"][f.stem] = run
        print(f.stem, run["cleanlab_softmin"], run["cleanlab_num_pixel_issues"],
              {k: (round(v["auprc"] or 0, 3), v["flags"], v["judged"]) for k, v in run["variants"].items()},
              flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
