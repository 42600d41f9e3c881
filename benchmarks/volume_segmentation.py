"""3-D mask QA benchmark with every knob: the same evaluation as ``labelqa evaluate --task segmentation --dims 3``
(``models.volume.evaluate``), plus re-scoring of saved runs and a summary table.

Run one configuration (JSON with the command under benchmarks/results/ unless --out is given):
    PYTHONPATH=$PWD nice -n 10 .venv/bin/python benchmarks/volume_segmentation.py \
        --dataset ../shared/data/segmentation_3d/msd_hippocampus --rate 0.05 --seed 0 --run-dir runs/hippo_0.05_s0
Re-score a saved run (its out-of-fold probabilities) with the current detector, without fitting:
    PYTHONPATH=$PWD .venv/bin/python benchmarks/volume_segmentation.py --rescore runs/hippo_0.05_s0 ...
Summarise result files as the table in docs/volumes.md:
    PYTHONPATH=$PWD .venv/bin/python benchmarks/volume_segmentation.py \
        --table benchmarks/results/volume_hippocampus_*.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

METHODS = ("labelqa", "labelqa_2d", "cleanlab_slices", "cleanlab_volume", "dual_consistency", "single_model_dice",
           "mean_prob_dice", "random", "labelqa_predicted_dice")


def _settings(a: argparse.Namespace):
    from models.volume.detector import VolumeDetectorConfig
    from models.volume.evaluate import VolumeEvalSettings
    from models.volume.train import VolumeTrainConfig

    patch = tuple(int(p) for p in a.patch.split(","))
    patch = patch * 3 if len(patch) == 1 else patch
    return VolumeEvalSettings(
        dataset=a.dataset, noise_rate=a.rate, seed=a.seed, folds=a.folds, archs=tuple(a.archs.split(",")),
        epochs=a.epochs, device=a.device, max_cases=a.max_cases,
        spacing=tuple(float(s) for s in a.spacing.split(",")) if a.spacing else None,  # type: ignore[arg-type]
        train=VolumeTrainConfig(epochs=a.epochs, patch=patch, batch_size=a.batch_size),  # type: ignore[arg-type]
        detector=VolumeDetectorConfig.for_seed(a.seed), baseline_2d=not a.no_2d,
        epochs_2d=a.epochs_2d)


def table(paths: list[Path]) -> str:
    """Markdown rows: F1 / AUPRC per method, predicted Dice, regions, per run."""
    rows = ["| rate | seed | corrupted | " + " | ".join(METHODS) + " | pred. Dice MAE / r | good/bad acc. | "
            "regions R / P |", "|" + "---|" * (len(METHODS) + 6)]
    for p in sorted(paths):
        r = json.loads(Path(p).read_text())
        s = r["settings"]
        cells = []
        for m in METHODS:
            x = r["methods"].get(m)
            ap = "n/a" if x is None or x["auprc"] is None else f"{x['auprc']:.3f}"
            cells.append("n/a" if x is None else f"{x['f1']:.3f} / {ap}")
        pdc, reg = r["predicted_dice"], r["regions"]
        rr = "n/a" if pdc["pearson_r"] is None else f"{pdc['pearson_r']:.3f}"
        rows.append(f"| {s['noise_rate']:g} | {s['seed']} | {r['n_corrupted_units']}/{r['n_units']} | "
                    + " | ".join(cells) + f" | {pdc['mae']:.4f} / {rr} | {pdc['good_bad_accuracy']:.3f} | "
                    f"{reg['recall'] if reg['recall'] is None else round(reg['recall'], 2)} / "
                    f"{reg['precision'] if reg['precision'] is None else round(reg['precision'], 2)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="3-D mask QA benchmark (models.volume.evaluate)")
    ap.add_argument("--dataset", default="../shared/data/segmentation_3d/msd_hippocampus")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--epochs-2d", type=int, default=3)
    ap.add_argument("--patch", default="24")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--archs", default="unet3d-tiny,segresnet3d-tiny,attentionunet3d-tiny")
    ap.add_argument("--spacing", default=None, help="model spacing z,y,x mm (default: the median)")
    ap.add_argument("--max-cases", type=int, default=None)
    ap.add_argument("--no-2d", action="store_true", help="leave out the 2-D slice-by-slice baseline")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--run-dir", type=Path, default=None, help="keep probabilities and masks.csv here")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--rescore", type=Path, default=None, help="re-score this saved run instead of fitting")
    ap.add_argument("--table", type=Path, nargs="*", default=None)
    a = ap.parse_args(argv)
    if a.table is not None:
        print(table(a.table))
        return 0
    import torch

    from models.volume.data import load_volume_dataset
    from models.volume.evaluate import evaluate_volumes, rescore_volume_run, volume_summary_table

    torch.set_num_threads(a.threads)
    s = _settings(a)
    t0 = time.time()
    data = load_volume_dataset(s.dataset, max_cases=s.max_cases)  # type: ignore[arg-type]
    name = Path(a.dataset).name.removeprefix("msd_")
    cmd = "PYTHONPATH=$PWD nice -n 10 .venv/bin/python benchmarks/volume_segmentation.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    if a.rescore is not None:
        res = rescore_volume_run(a.rescore, data, s)
        default = a.rescore / "rescored.json"
    else:
        res = evaluate_volumes(data, s, a.run_dir, progress=False, extra={"dataset": a.dataset})
        default = Path(__file__).parent / "results" / f"volume_{name}_{a.rate:g}_s{a.seed}.json"
    res["benchmark"] = {"command": cmd, "wall_s": round(time.time() - t0, 1), "threads": a.threads}
    out = a.out or default
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(volume_summary_table(res))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
