"""Segmentation-mask QA on the real 2-D sets: planted errors, the members' competence, a second observer.

Sets (``../shared/data/segmentation``, SOURCES.md there):

- ``drive``, ``chase``: retinal vessels (DRIVE 40 images, CHASE_DB1 28), observer 1's masks resized
  to ``--size`` and cut into ``--tile`` squares (the mask unit), whole images per fold;
  observer 2 (DRIVE's test half, all of CHASE_DB1) for the unplanted disagreement;
- ``hc18``: fetal head ultrasound, 316 filled ellipses; the repeat images of one fetus
  (``NNN_HC``, ``NNN_2HC``, ...) share a fold;
- ``busi``: breast ultrasound lesions, 102 images, 20 masks empty; the duplicate pair (benign (433)
  = malignant (145)) shares a fold (``models.seg.data.fold_groups``).

One run = ``labelqa evaluate --task segmentation``'s steps (``models.seg.evaluate``): a share
``--rate`` of the masks corrupted (every kind except wrong_class: one class), the ensemble
cross-fitted on them, the out-of-fold probabilities saved
(``benchmarks/results/seg_predictions/<set>_<rate>_s<seed>.npz``, not committed: 2-15 MB each), then
scored by :func:`score_run`, which re-reads only that file, so a changed detector is re-scored
without fitting (``--rescore``). Image size and epochs come from ``models.seg.recipe`` (the CLI's
defaults) unless given. One core (``torch.set_num_threads(1)``); JSON to
``benchmarks/results/segmentation/<set>_<rate>_s<seed>.json`` with the command.

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python benchmarks/segmentation.py --set busi --rate 0.05 --seed 0
    PYTHONPATH=$PWD .venv/bin/python benchmarks/segmentation.py --rescore benchmarks/results/seg_predictions/*.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
PRED_DIR = HERE / "results" / "seg_predictions"
OUT_DIR = HERE / "results" / "segmentation"
SETS = {"drive": "vessel", "chase": "vessel", "hc18": "fetal head", "busi": "lesion"}
FOLDERS = {"hc18": "fetal_head_us_hc18", "busi": "breast_lesion_us_busi"}


def run_name(set_name: str, rate: float, seed: int) -> str:
    return f"{set_name}_{rate:g}_s{seed}"


def load_set(name: str, a: argparse.Namespace):
    """(data on the model grid, fold groups, recipe dict, extra arrays for the npz)."""
    from models.preprocess import to_model_input
    from models.seg.data import (
        SegDataset,
        default_data_root,
        fold_groups,
        load_retina,
        read_segmentation_items,
        resize_label_map,
        tile_dataset,
    )
    from models.seg.recipe import seg_recipe

    extra: dict[str, np.ndarray] = {}
    if name in ("drive", "chase"):
        tiles = tile_dataset(load_retina(name, 1, a.size), a.tile)
        tiles.class_names = [SETS[name]]
        rec = seg_recipe([], n_images=len(tiles), folds=a.folds, image_size=a.tile, epochs=a.epochs)
        srcs = sorted({s.split("@")[0] for s in tiles.stems})
        try:
            obs2 = tile_dataset(load_retina(name, 2, a.size, stems=srcs), a.tile)
            extra = {"obs2_masks": obs2.masks.astype(np.int16), "obs2_stems": np.array(obs2.stems)}
        except ValueError:
            pass
        return tiles, fold_groups(tiles), rec, extra
    items, _names = read_segmentation_items(default_data_root() / FOLDERS[name])
    rec = seg_recipe([lab for _s, _im, lab in items], folds=a.folds, image_size=a.image_size, epochs=a.epochs)
    data = SegDataset(np.stack([to_model_input(im, rec.image_size) for _s, im, _lab in items]).astype(np.float32),
                      np.stack([resize_label_map(lab, rec.image_size, 1) for _s, _im, lab in items]),
                      [SETS[name]], [s for s, _im, _lab in items])
    key = (lambda s: s.split("_")[0]) if name == "hc18" else None  # NNN_HC, NNN_2HC: one fetus
    return data, fold_groups(data, key), rec, extra


def observer_study(stems1: list[str], masks1: np.ndarray, stems2: list[str], masks2: np.ndarray,
                   corrupted: np.ndarray, scores: dict[str, np.ndarray]) -> dict:
    """Spearman of the scores of observer 1's (uncorrupted) tiles vs their disagreement with observer 2,
    per tile and per image (mean score)."""
    from scipy.stats import spearmanr

    pos2 = {s: i for i, s in enumerate(stems2)}
    idx = [i for i, s in enumerate(stems1) if s in pos2 and not corrupted[i]]
    if len(idx) < 10:
        return {"n_tiles": len(idx), "note": "too few tiles with a second observer"}
    a = masks1[idx] > 0
    b = masks2[[pos2[stems1[i]] for i in idx]] > 0
    tot = a.sum((1, 2)) + b.sum((1, 2))
    dice = np.where(tot > 0, 2 * (a & b).sum((1, 2)) / np.maximum(tot, 1), 1.0)
    dis = 1.0 - dice
    images = sorted({stems1[i].split("@")[0] for i in idx})
    img_of = np.array([images.index(stems1[i].split("@")[0]) for i in idx])
    img_dis = np.array([1 - 2 * (a[img_of == j] & b[img_of == j]).sum()
                        / max(a[img_of == j].sum() + b[img_of == j].sum(), 1) for j in range(len(images))])
    out: dict = {"n_tiles": len(idx), "n_images": len(images), "mean_dice_obs1_obs2": float(dice.mean()),
                 "spearman_tile": {}, "spearman_image": {}}
    for name, v in scores.items():
        v = np.asarray(v)[idx]
        out["spearman_tile"][name] = float(spearmanr(v, dis).statistic)
        per_img = np.array([v[img_of == j].mean() for j in range(len(images))])
        out["spearman_image"][name] = float(spearmanr(per_img, img_dis).statistic) if len(images) >= 4 else None
    return out


def score_run(npz: Path, *, command: str, seconds_fit: float | None = None) -> dict:
    """Score one saved run with this checkout's detector and every baseline; the results dict."""
    from models.seg.evaluate import load_predictions, rescore_predictions

    t0 = time.time()
    d = load_predictions(npz)
    res = rescore_predictions(d)
    res["timing_s"] = {"fit": float(d["fit_seconds"]) if "fit_seconds" in d else seconds_fit,
                       "score": round(time.time() - t0, 1)}
    if "obs2_masks" in d:
        sc = {m: np.asarray(v) for m, v in res.pop("unit_scores").items()}
        res["observer_study"] = observer_study(d["stems"], d["clean"], [str(s) for s in d["obs2_stems"]],
                                               d["obs2_masks"].astype(np.int64), (d["noisy"] != d["clean"]).any((1, 2)),
                                               sc)
    else:
        res.pop("unit_scores", None)
    st = d["settings"]
    res["benchmark"] = {"set": str(d["set_name"]), "run": npz.stem, "n_units": int(len(d["stems"])),
                        "recipe": json.loads(str(d["recipe"])), "command": command, "predictions": npz.name,
                        "threads": 1, "seed": st["seed"], "noise_rate": st["noise_rate"]}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=sorted(SETS))
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=256, help="retina: resize to this before tiling")
    ap.add_argument("--tile", type=int, default=64, help="retina: tile size (the mask unit)")
    ap.add_argument("--image-size", type=int, default=None, help="hc18/busi: model grid (default: the recipe)")
    ap.add_argument("--folds", type=int, default=3, help="cross-fitting folds (whole groups per fold)")
    ap.add_argument("--epochs", type=int, default=None, help="default: the recipe (models/seg/recipe.py)")
    ap.add_argument("--archs", default="unet-tiny,segresnet-tiny,attentionunet-tiny")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: results/segmentation/<run>.json)")
    ap.add_argument("--tag", default="", help="appended to the run's name (e.g. a variant's settings)")
    ap.add_argument("--fit-only", action="store_true", help="save the predictions, do not score")
    ap.add_argument("--rescore", nargs="*", type=Path, default=None, help="score saved predictions (no fitting)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    cmd = "PYTHONPATH=$PWD .venv/bin/python benchmarks/segmentation.py " + " ".join(sys.argv[1:] if argv is None
                                                                                     else argv)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    if a.rescore is not None:
        for f in a.rescore:
            res = score_run(f, command=cmd)
            (OUT_DIR / f"{f.stem}.json").write_text(json.dumps(res, indent=2, default=str))
            print(f.stem, {m: round(r["auprc"] or 0, 3) for m, r in res["methods"].items()})
        return 0
    if a.set is None:
        ap.error("--set or --rescore")
    from models.seg.corruption import DEFAULT_KINDS
    from models.seg.detector import SegDetectorConfig
    from models.seg.evaluate import SegEvalSettings, fit_for_evaluation, save_predictions
    from models.seg.train import SegTrainConfig

    data, groups, rec, extra = load_set(a.set, a)
    kinds = tuple(k for k in DEFAULT_KINDS if k != "wrong_class")
    s = SegEvalSettings(dataset=f"{a.set}", noise_rate=a.rate, kinds=kinds, seed=a.seed, image_size=rec.image_size,
                        folds=a.folds, archs=tuple(a.archs.split(",")), epochs=rec.epochs, device=a.device,
                        train=SegTrainConfig(epochs=rec.epochs),
                        detector=SegDetectorConfig(seed=a.seed))
    print(f"{a.set}: {len(data)} units {data.images.shape[1:]}, {len(set(groups))} groups; {rec}", flush=True)
    noisy, records, fit, t_fit = fit_for_evaluation(data, s, groups=groups, progress=True)
    npz = PRED_DIR / f"{run_name(a.set, a.rate, a.seed)}{a.tag}.npz"
    save_predictions(npz, fit, data, noisy, records, s, fit_seconds=np.array(round(t_fit, 1)),
                     set_name=np.array(a.set), recipe=np.array(json.dumps(rec.to_dict())),
                     groups=np.array(groups), **extra)
    print(f"wrote {npz} (fit {t_fit:.0f} s)", flush=True)
    if a.fit_only:
        return 0
    res = score_run(npz, command=cmd)
    out = a.out or OUT_DIR / f"{npz.stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
