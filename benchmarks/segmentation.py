"""Segmentation-mask QA on real retinal vessel masks (DRIVE, CHASE_DB1): planted errors and a second observer.

One run: observer 1's masks of a set, resized to ``--size`` and cut into ``--tile`` squares (the
mask unit), a share ``--rate`` of them corrupted (every kind of ``models.seg.corruption`` except
wrong_class: one class), the ensemble cross-fitted with whole images per fold, and
``models.seg.evaluate.compare_seg_methods`` (labelqa vs cleanlab's segmentation scores and the
baselines, in the same run). Then the unplanted disagreement: on the uncorrupted tiles that observer
2 also drew, Spearman's rho between each method's score of observer 1's mask and
1 - Dice(observer 1, observer 2), per tile and per image (mean score). One core
(``torch.set_num_threads(1)``); JSON to benchmarks/results/segmentation_<set>_<rate>_s<seed>.json.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/segmentation.py --set drive --rate 0.05 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def observer_study(tiles1, tiles2, verdicts, noisy_truth, cl_score, k: int = 1) -> dict:
    """Spearman of scores of observer 1's (uncorrupted) tiles vs their disagreement with observer 2."""
    from scipy.stats import spearmanr

    pos2 = {s: i for i, s in enumerate(tiles2.stems)}
    idx = [i for i, s in enumerate(tiles1.stems) if s in pos2 and not noisy_truth[i]]
    if len(idx) < 10:
        return {"n_tiles": len(idx), "note": "too few tiles with a second observer"}
    a = tiles1.masks[idx] > 0
    b = tiles2.masks[[pos2[tiles1.stems[i]] for i in idx]] > 0
    tot = a.sum((1, 2)) + b.sum((1, 2))
    dice = np.where(tot > 0, 2 * (a & b).sum((1, 2)) / np.maximum(tot, 1), 1.0)
    dis = 1.0 - dice
    sc = {"labelqa_score": np.array([verdicts[i].score for i in idx]),
          "labelqa_suspicion": np.array([verdicts[i].suspicion for i in idx]),
          "cleanlab_softmin": np.array([cl_score[i] for i in idx]),
          "mean_prob_dice": np.array([1.0 - verdicts[i].dice_consensus for i in idx])}
    images = sorted({tiles1.stems[i].split("@")[0] for i in idx})
    img_of = np.array([images.index(tiles1.stems[i].split("@")[0]) for i in idx])
    img_dis = np.array([1 - 2 * (a[img_of == j] & b[img_of == j]).sum()
                        / max(a[img_of == j].sum() + b[img_of == j].sum(), 1) for j in range(len(images))])
    out: dict = {"n_tiles": len(idx), "n_images": len(images), "mean_dice_obs1_obs2": float(dice.mean()),
                 "image_dice_obs1_obs2": {im: round(1 - float(d), 4) for im, d in zip(images, img_dis, strict=True)},
                 "spearman_tile": {}, "spearman_image": {}}
    for name, v in sc.items():
        out["spearman_tile"][name] = float(spearmanr(v, dis).statistic)
        per_img = np.array([v[img_of == j].mean() for j in range(len(images))])
        out["spearman_image"][name] = float(spearmanr(per_img, img_dis).statistic) if len(images) >= 4 else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=["drive", "chase"], required=True)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--archs", default="unet-tiny,segresnet-tiny,attentionunet-tiny")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--save-probs", type=Path, default=None,
                    help="Also save the out-of-fold probabilities and masks (npz) for rescoring without refitting.")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from models.seg.corruption import DEFAULT_KINDS
    from models.seg.data import load_retina, tile_dataset
    from models.seg.detector import SegDetectorConfig
    from models.seg.evaluate import SegEvalSettings, _cleanlab_scores, evaluate_segmentation, seg_summary_table
    from models.seg.train import SegTrainConfig, to_channels

    t0 = time.time()
    tiles = tile_dataset(load_retina(a.set, 1, a.size), a.tile)
    s = SegEvalSettings(dataset=f"retina:{a.set}:observer1", noise_rate=a.rate,
                        kinds=tuple(k for k in DEFAULT_KINDS if k != "wrong_class"), seed=a.seed,
                        image_size=a.tile, folds=a.folds, archs=tuple(a.archs.split(",")), epochs=a.epochs,
                        device=a.device, train=SegTrainConfig(epochs=a.epochs), detector=SegDetectorConfig(seed=a.seed))
    groups = [st.split("@")[0] for st in tiles.stems]
    res, verdicts, fit, noisy = evaluate_segmentation(tiles, s, None, progress=True, groups=groups)
    truth = (noisy != tiles.masks).any((1, 2))
    if a.save_probs:
        np.savez_compressed(a.save_probs, probs=fit.probs.astype(np.float16), noisy=noisy, clean=tiles.masks,
                            stems=np.array(tiles.stems))
    cl_img, _ = _cleanlab_scores(fit.probs.mean(0), to_channels(noisy, 1))
    stems1 = sorted({g for g in groups})
    try:
        obs2 = load_retina(a.set, 2, a.size, stems=stems1)
        res["observer_study"] = observer_study(tiles, tile_dataset(obs2, a.tile), verdicts, truth, 1.0 - cl_img)
    except ValueError as e:
        res["observer_study"] = {"note": str(e)}
    res["benchmark"] = {"set": a.set, "size": a.size, "tile": a.tile, "n_tiles": len(tiles),
                        "n_source_images": len(stems1),
                        "command": "PYTHONPATH=$PWD .venv/bin/python benchmarks/segmentation.py " + " ".join(
                            sys.argv[1:] if argv is None else argv),
                        "wall_s": round(time.time() - t0, 1), "threads": a.threads}
    out = a.out or Path(__file__).parent / "results" / f"segmentation_{a.set}_{a.rate:g}_s{a.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(seg_summary_table(res))
    print(json.dumps({k: res["observer_study"].get(k) for k in ("spearman_tile", "spearman_image", "n_tiles")}))
    print(f"wrote {out} in {res['benchmark']['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
