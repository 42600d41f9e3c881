"""A second fit without the first fit's suspected errors: do members trained on cleaner labels find more?

Research benchmark (issue 5: a count that holds up when the noise is trained into the members). For
each saved run (``benchmarks/results/<stem>.json`` + ``predictions/<stem>.npz``): reload the same
images and noisy labels, flag with this checkout's detector on the saved first-fit probabilities,
refit every member in crossfit with the same folds and seeds but **without training on the flagged
samples** (they are still scored, out of fold, like every sample), and score every method on the
second fit's probabilities. No ground truth is used to choose what is excluded. Writes
``benchmarks/experiments/results/<stem>-refit.json`` (first vs second fit, every method but ``dual_consistency``,
which needs Grad-CAM maps that are not recomputed here) and the second fit's predictions as
``predictions/refit/<stem>.npz`` (a subfolder, so the ``predictions/*.npz`` globs of the other
scripts do not pick them up).

``--control random``: the same refit but excluding as many samples drawn at random (seeded) instead of
the flagged ones — a second fit differs from the first in every batch, so this separates "trained on
cleaner labels" from "another fit" (and from regression to the mean on a run chosen for failing).
Writes ``<stem>-refit-random.json`` and ``predictions/refit/<stem>-random.npz``.

``--control seed``: excludes nothing; a second fit with another seed (``seed + 500``: other folds, other
initialisations, other batches) on the same noisy labels. With it, ``mean_of_fits`` scores every method on the
member-wise mean of the two fits' probabilities (each architecture averaged over two seeds): the fair control for
"average the first and the second fit". Writes ``<stem>-refit-seed.json`` and ``predictions/refit/<stem>-seed.npz``.

Caveat for reading it: the baselines' second-fit numbers also profit from labelqa's first-round flags
(the members were trained without them); the first-fit numbers are the like-for-like comparison.

    nice -n 5 .venv/bin/python benchmarks/experiments/refit.py --threads 1 \\
        benchmarks/results/brain_tumor_mri_4class_224-crossfit3-s64-n2000-e10-b32-asymmetric5-seed1.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from models.data import load_dataset, stratified_subsample
from models.detector import DetectorConfig, fit_thresholds, score_samples
from models.ensemble import parse_archs
from models.evaluate import corrupt_labels, member_probs, rescore_labels
from models.train import REPEAT_SEED_STEP, TrainConfig, fit_ensemble

RUNS = Path(__file__).resolve().parents[1] / "results"  # benchmarks/detector.py runs and their saved predictions
RESULTS = Path(__file__).resolve().parent / "results"  # this experiment's outputs
SEED_OFFSET = REPEAT_SEED_STEP  # --control seed: the second fit is fit_ensemble(repeats=2)'s second repeat


def _dataset(path: str, work_dir: Path) -> Path:
    p = Path(path)
    if not p.exists() and p.name == "kermany_xray_3class.csv":  # made by benchmarks/detector.py in its work dir
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from detector import kermany_3class_csv

        return kermany_3class_csv(work_dir)
    return p


def _suffix(control: str) -> str:
    """File-name suffix of a run's outputs: none for the flags, ``-random`` for the control."""
    return "" if control == "flags" else f"-{control}"


def refit_one(results: Path, work_dir: Path, control: str = "flags") -> dict:
    d = json.loads(results.read_text())
    st = d["settings"]
    z = np.load(RUNS / "predictions" / f"{results.stem}.npz", allow_pickle=False)
    data = load_dataset(_dataset(st["dataset"], work_dir), st["image_size"])
    if st["max_samples"] and st["max_samples"] < len(data):
        data = data.subset(stratified_subsample(data.labels, st["max_samples"], st["seed"]))
    if list(data.ids) != [str(i) for i in z["ids"]]:
        raise SystemExit(f"{results.name}: the reloaded samples differ from the saved run's")
    k = len(data.class_names)
    noisy, flipped = corrupt_labels(data.labels, k, st["noise_rate"], st["noise_model"], st["seed"])
    if not np.array_equal(noisy, z["noisy"]):
        raise SystemExit(f"{results.name}: the re-drawn noisy labels differ from the saved run's")
    archs = [str(a) for a in z["archs"]]
    probs1 = member_probs(z)
    groups = [str(g) for g in z["groups"]]
    cfg = DetectorConfig()
    nan = np.full(len(noisy), np.nan)
    unanimous = np.sum([p.argmax(1) != noisy for p in probs1.values()], axis=0) == len(archs)
    th = fit_thresholds(probs1, noisy, nan, unanimous, cfg, seed=st["seed"])
    exclude = score_samples(probs1, noisy, nan, th, cfg, groups=groups).labelqa_flag
    seed = st["seed"]
    if control == "seed":
        exclude = np.zeros(len(noisy), dtype=bool)
        seed = st["seed"] + SEED_OFFSET
    elif control == "random":
        rnd = np.zeros(len(noisy), dtype=bool)
        rnd[np.random.default_rng(st["seed"] + 77).choice(len(noisy), int(exclude.sum()), replace=False)] = True
        exclude = rnd
    t0 = time.perf_counter()
    fit = fit_ensemble(parse_archs(archs), data.images, noisy, k, TrainConfig(**st["train"]), mode="crossfit",
                       folds=st["folds"], seed=seed, device="cpu", exclude=exclude)
    t_fit = time.perf_counter() - t0
    if control != "seed" and not np.array_equal(fit.fold, z["fold"]):
        raise SystemExit(f"{results.name}: folds differ from the saved run's")
    pred_dir = RESULTS / "predictions" / "refit"
    pred_dir.mkdir(exist_ok=True)
    np.savez_compressed(pred_dir / f"{results.stem}{_suffix(control)}.npz", archs=np.array(archs),
                        probs=np.stack([fit.probs[a] for a in archs]), fold=fit.fold, noisy=noisy, truth=data.labels,
                        flipped=flipped, groups=np.array(groups), ids=np.array(data.ids), excluded=exclude)
    out = {"source": results.name, "control": control, "fit_seed": seed, "excluded": int(exclude.sum()),
           "excluded_flipped": int((exclude & flipped).sum()),
           "n_flipped": int(flipped.sum()), "fit_s": round(t_fit, 1)}
    fits = [("first_fit", probs1), ("second_fit", fit.probs)]
    if control == "seed":
        fits.append(("mean_of_fits", {a: (probs1[a] + fit.probs[a]) / 2 for a in archs}))
    for tag, probs in fits:
        out[tag], _ = scored(probs, noisy, flipped, data.labels, cfg, st["seed"], groups)
    return out


def scored(probs: dict[str, np.ndarray], noisy: np.ndarray, flipped: np.ndarray, truth: np.ndarray,
           cfg: DetectorConfig, seed: int, groups: list[str]) -> tuple[dict, dict]:
    """Every method but ``dual_consistency`` (no Grad-CAM maps in these re-fits) on given probabilities: the
    record these benchmarks keep per fit (precision, recall, F1, n flagged; the estimated error count; member
    accuracy on the clean labels), and ``rescore_labels``' whole result."""
    r = rescore_labels(probs, noisy, flipped, cfg, seed=seed, groups=groups)
    return {"methods": {m: {x: v[x] for x in ("precision", "recall", "f1", "n_flagged")}
                        for m, v in r["methods"].items() if m != "dual_consistency"},
            "estimated_errors": r["thresholds"]["n_estimated_errors"],
            "member_accuracy_clean": {a: float(np.mean(p.argmax(1) == truth)) for a, p in probs.items()}}, r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path, help="results JSON files written by benchmarks/detector.py")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--control", choices=["flags", "random", "seed"], default="flags",
                    help="exclude labelqa's first-fit flags (default), as many random samples, or nothing with "
                         "another seed (seed)")
    ap.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "labelqa" / "bench-runs")
    a = ap.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    for path in a.results:
        out = refit_one(path, a.work_dir, a.control)
        argv = [".venv/bin/python", "benchmarks/experiments/refit.py", *sys.argv[1:]]
        out["command"] = " ".join(shlex.quote(x) for x in argv)
        dest = RESULTS / f"{path.stem}-refit{_suffix(a.control)}.json"
        dest.write_text(json.dumps(out, indent=1) + "\n")
        f1 = {t: out[t]["methods"] for t in ("first_fit", "second_fit")}
        print(f"{path.stem}: excluded {out['excluded']} ({out['excluded_flipped']} flipped of {out['n_flipped']})")
        mean = out.get("mean_of_fits", {}).get("methods")
        for m in f1["first_fit"]:
            extra = f" (mean of fits {mean[m]['f1']:.3f})" if mean else ""
            print(f"  {m:18s} {f1['first_fit'][m]['f1']:.3f} -> {f1['second_fit'][m]['f1']:.3f}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
