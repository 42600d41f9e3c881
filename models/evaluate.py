"""``labelqa evaluate``: corrupt labels (recording the truth), fit, score, compare with baselines.

Writes ``results.json``, ``samples.csv`` and plots into an output dir (see docs/guide-data-scientist.md).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models import baselines
from models.corruption import corrupt_labels
from models.data import LabelledImages, load_dataset, stratified_subsample
from models.detector import DetectorConfig, Scores, fit_thresholds, score_fit, score_samples
from models.ensemble import DEFAULT_ARCHS, check_input_size, parse_archs
from models.plots import write_plots
from models.train import TrainConfig, fit_ensemble, resolve_device

__all__ = [
    "METHODS", "EvalSettings", "efficacy_curve", "compare_methods", "member_probs", "rescore", "rescore_labels",
    "run_evaluation", "summary_table", "main", "corrupt_labels",
]

log = logging.getLogger(__name__)

METHODS = ("labelqa", "dual_consistency", "vote", "confidence", "cleanlab", "alc", "random")


@dataclass
class EvalSettings:
    """All settings of one evaluation run (recorded in results.json)."""

    dataset: str
    noise_rate: float = 0.05
    noise_model: str = "uniform"
    seed: int = 0
    mode: str = "crossfit"
    folds: int = 4
    image_size: int = 64
    max_samples: int | None = None
    archs: tuple[str, ...] = DEFAULT_ARCHS
    device: str = "auto"
    train: TrainConfig = field(default_factory=TrainConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    cam_batch_size: int = 64
    repeats: int = 1  # seeds per architecture, probabilities averaged (repeats x the training)

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "noise_rate": self.noise_rate, "noise_model": self.noise_model,
                "seed": self.seed, "mode": self.mode, "folds": self.folds, "image_size": self.image_size,
                "max_samples": self.max_samples, "archs": list(self.archs), "device": self.device,
                "train": self.train.to_dict(), "detector": self.detector.to_dict(), "repeats": self.repeats}


def _prf(flags: np.ndarray, truth: np.ndarray) -> dict:
    tp = int(np.sum(flags & truth))
    nf = int(flags.sum())
    nt = int(truth.sum())
    p = tp / nf if nf else 0.0
    r = tp / nt if nt else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "n_flagged": nf,
            "true_positives": tp}


def _auprc(scores: np.ndarray, truth: np.ndarray) -> float | None:
    from sklearn.metrics import average_precision_score

    if truth.sum() == 0 or truth.all():
        return None
    return float(average_precision_score(truth, scores))


def efficacy_curve(scores: np.ndarray, truth: np.ndarray, fractions: np.ndarray) -> list[float]:
    """Fraction of flipped labels found after reviewing the top ``f`` of data ranked by ``scores``."""
    order = np.argsort(-scores, kind="stable")
    found = np.cumsum(truth[order])
    out = []
    for f in fractions:
        k = int(round(f * len(scores)))
        out.append(float(found[k - 1] / max(truth.sum(), 1)) if k > 0 else 0.0)
    return out


def compare_methods(probs: dict[str, np.ndarray], noisy: np.ndarray, flipped: np.ndarray, sc: Scores, th,
                    seed: int) -> dict:
    """Every method and baseline on the same member probabilities; metrics against the planted flips."""
    ag, sp, iou = sc.agreement, sc.spearman, sc.iou
    conf_f, conf_s = baselines.confidence(sc.p_mean, noisy)
    vote_f, vote_s = baselines.vote(probs, sc.p_mean, noisy)
    cl_f, cl_s, n_cl = baselines.cleanlab_issues(sc.p_mean, noisy)
    alc_f = baselines.top_n(sc.alc, n_cl)
    rnd_s = baselines.random_scores(len(noisy), seed)
    rnd_f = baselines.top_n(rnd_s, n_cl)
    dual_s = np.where(sc.unanimous, 1.0 + np.nan_to_num(ag, nan=0.0), 1.0 - sc.p_given)
    methods = {
        "labelqa": (sc.labelqa_flag, sc.score),
        "dual_consistency": (sc.dual_flag, dual_s),
        "vote": (vote_f, vote_s),
        "confidence": (conf_f, conf_s),
        "cleanlab": (cl_f, cl_s),
        "alc": (alc_f, sc.alc),
        "random": (rnd_f, rnd_s),
        "labelqa_priority": (sc.labelqa_flag, sc.priority),  # the worklist's order
    }
    res_methods = {}
    for name, (f, scr) in methods.items():
        r = _prf(f, flipped)
        r["auprc"] = _auprc(scr, flipped)
        res_methods[name] = r
    res_methods["labelqa"]["n_estimated_errors"] = th.n_estimated_errors
    res_methods["alc"]["n"] = n_cl
    res_methods["random"]["n"] = n_cl
    n_true = int(flipped.sum())
    oracle = _prf(baselines.top_n(1.0 - sc.p_given, n_true), flipped)

    # Diagnostic: does saliency agreement separate flips among the unanimous candidates?
    un = sc.unanimous & np.isfinite(ag)
    diag = {"n_unanimous": int(sc.unanimous.sum()), "base_rate": float(flipped[un].mean()) if un.any() else None,
            "auprc_pearson": _auprc(ag[un], flipped[un]) if un.any() else None,
            "auprc_spearman": _auprc(sp[un], flipped[un]) if un.any() else None,
            "auprc_iou_top20": _auprc(iou[un], flipped[un]) if un.any() else None,
            "agreement_threshold": th.agreement_threshold, "agreement_threshold_how": th.agreement_how,
            "mean_agreement_flipped": float(np.nanmean(ag[un & flipped])) if (un & flipped).any() else None,
            "mean_agreement_clean": float(np.nanmean(ag[un & ~flipped])) if (un & ~flipped).any() else None}

    fractions = np.round(np.linspace(0, 0.3, 31), 4)
    efficacy = {"fraction_reviewed": fractions.tolist(),
                "alc": efficacy_curve(sc.alc, flipped, fractions),
                "labelqa_priority": efficacy_curve(sc.priority, flipped, fractions),
                "labelqa": efficacy_curve(sc.score, flipped, fractions),
                "random": efficacy_curve(rnd_s, flipped, fractions)}

    return {"flags_scores": methods, "methods": res_methods, "oracle": oracle, "diagnostic": diag,
            "efficacy": efficacy}


def member_probs(z) -> dict[str, np.ndarray]:
    """Per-architecture probabilities from a loaded ``predictions.npz`` (``archs`` + stacked ``probs``)."""
    return {str(a): z["probs"][i] for i, a in enumerate(z["archs"])}


def rescore(predictions: Path, cfg: DetectorConfig, seed: int = 0) -> dict:
    """Re-run the detector and baselines on a saved ``predictions.npz`` (no re-fitting): for choosing
    detector constants on one data set and applying them unchanged to another."""
    z = np.load(predictions, allow_pickle=False)
    probs = member_probs(z)
    return rescore_labels(probs, z["noisy"], z["flipped"].astype(bool), cfg, seed, agreement=z["agreement"],
                          spearman=z["spearman"], iou=z["iou"], groups=[str(g) for g in z["groups"]])


def rescore_labels(probs: dict[str, np.ndarray], noisy: np.ndarray, flipped: np.ndarray, cfg: DetectorConfig,
                   seed: int = 0, *, agreement: np.ndarray | None = None, spearman: np.ndarray | None = None,
                   iou: np.ndarray | None = None, groups: list[str] | None = None) -> dict:
    """The detector and every baseline on given out-of-sample probabilities and (given, planted) labels."""
    if agreement is None:
        agreement = np.full(len(noisy), np.nan)
    n_dis = np.sum([p.argmax(1) != noisy for p in probs.values()], axis=0)
    th = fit_thresholds(probs, noisy, agreement, n_dis == len(probs), cfg, seed=seed)
    sc = score_samples(probs, noisy, agreement, th, cfg, spearman=spearman, iou=iou, groups=groups)
    out = compare_methods(probs, noisy, flipped, sc, th, seed)
    out.pop("flags_scores")
    out["cohort_findings"] = sc.cohorts
    out["thresholds"] = th.to_dict()
    return out


def run_evaluation(s: EvalSettings, out_dir: Path, *, progress: bool = False, plots: bool = True,
                   data: LabelledImages | None = None, map_fn=None) -> dict:
    """The whole evaluation; returns the results dict (also written to ``out_dir/results.json``).

    ``map_fn``: where the member fits run (``models.train.fit_ensemble``; e.g. Ray tasks)."""
    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = parse_archs(s.archs)
    check_input_size(specs, s.image_size)
    device = resolve_device(s.device)
    if data is None:
        data = load_dataset(s.dataset, s.image_size, progress=progress)
    if s.max_samples and s.max_samples < len(data):
        data = data.subset(stratified_subsample(data.labels, s.max_samples, s.seed))
    n_classes = len(data.class_names)
    truth_labels = data.labels
    noisy, flipped = corrupt_labels(truth_labels, n_classes, s.noise_rate, s.noise_model, s.seed)

    fit = fit_ensemble(specs, data.images, noisy, n_classes, s.train, mode=s.mode, folds=s.folds, seed=s.seed,
                       device=device if map_fn is None else s.device, progress=progress, repeats=s.repeats,
                       map_fn=map_fn)
    # The expensive part is done: keep the probabilities even if a later step fails or is stopped.
    _save_predictions(out_dir / "probabilities.npz", fit, data, noisy, flipped)
    log.info("fit done in %.0fs; scoring", time.perf_counter() - t_start)

    sc, th, maps, cand, t_cam = score_fit(fit, data.images, noisy, s.detector, device=device, groups=data.groups,
                                          seed=s.seed, cam_batch_size=s.cam_batch_size)
    ag, sp, iou = sc.agreement, sc.spearman, sc.iou

    log.info("Grad-CAM for %d candidates: %.1fs", len(cand), t_cam)
    cmp = compare_methods(fit.probs, noisy, flipped, sc, th, s.seed)
    log.info("methods compared")
    methods, res_methods, oracle, diag, efficacy = (cmp["flags_scores"], cmp["methods"], cmp["oracle"],
                                                     cmp["diagnostic"], cmp["efficacy"])
    n_true = int(flipped.sum())

    member_acc = {a: float(np.mean(fit.probs[a].argmax(1) == truth_labels)) for a in fit.archs}
    member_acc["ensemble_mean"] = float(np.mean(sc.p_mean.argmax(1) == truth_labels))
    n_cand = len(cand)
    per_sample_cam = t_cam / max(n_cand, 1)
    timing = {"train": fit.timing["train"], "predict": fit.timing["predict"], "gradcam": t_cam,
              "gradcam_candidates": n_cand,
              "gradcam_saving": {"candidates_fraction": n_cand / len(noisy),
                                 "estimated_all_samples_s": per_sample_cam * len(noisy),
                                 "saved_s": per_sample_cam * (len(noisy) - n_cand)}}
    import monai
    import torch

    results = {
        "dataset": str(s.dataset), "dataset_name": Path(s.dataset).name, "n_samples": int(len(noisy)),
        "n_classes": n_classes, "class_names": data.class_names, "noise_rate": s.noise_rate,
        "noise_model": s.noise_model, "n_flipped": n_true, "settings": s.to_dict(),
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        platform.processor() or platform.machine(),
        "versions": {"torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version()},
        "member_accuracy": member_acc,
        "member_accuracy_noisy_labels": {a: float(np.mean(fit.probs[a].argmax(1) == noisy)) for a in fit.archs},
        "members": [{"arch": m.arch, "fold": m.fold, "repeat": m.repeat, "cam_layer": m.cam_layer,
                     "cam_size": m.cam_size, "epochs_run": m.history.get("epochs_run"),
                     "best_epoch": m.history.get("best_epoch"), "val_acc": m.history.get("val_acc", [])}
                    for m in fit.members],
        "methods": res_methods,
        "oracle_top_n_true_count": oracle,
        "thresholds": th.to_dict(),
        "cohort_findings": sc.cohorts,
        "saliency_diagnostic": diag,
        "relabel_efficacy": efficacy,
        "timing_s": timing,
    }
    _write_samples_csv(out_dir / "samples.csv", data, noisy, flipped, sc)
    # Everything needed to re-score without re-fitting (see rescore()).
    _save_predictions(out_dir / "predictions.npz", fit, data, noisy, flipped, agreement=ag, spearman=sp, iou=iou,
                      candidates=cand, maps=np.stack([maps[a] for a in fit.archs]).astype(np.float16) if len(cand)
                      else np.zeros((len(fit.archs), 0, 1, 1), dtype=np.float16))
    if plots:
        t0 = time.perf_counter()
        write_plots(out_dir, methods, flipped, efficacy, data, sc, cand, maps)
        timing["plots"] = time.perf_counter() - t0
        log.info("plots: %.1fs", timing["plots"])
    timing["total"] = time.perf_counter() - t_start
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=_json_default))
    return results


def _save_predictions(path: Path, fit, data: LabelledImages, noisy: np.ndarray, flipped: np.ndarray,
                      **extra: np.ndarray) -> None:
    arrays: dict[str, Any] = dict(extra)
    np.savez_compressed(path, **arrays, archs=np.array(fit.archs), probs=np.stack([fit.probs[a] for a in fit.archs]),
                        fold=fit.fold, noisy=noisy, truth=data.labels, flipped=flipped, groups=np.array(data.groups),
                        ids=np.array(data.ids), train_margin=fit.train_margins().astype(np.float32))


def _json_default(o):
    if isinstance(o, np.integer | np.floating):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def _write_samples_csv(path: Path, data: LabelledImages, noisy: np.ndarray, flipped: np.ndarray, sc: Scores) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "group", "given", "true", "flipped", "consensus", "p_given", "n_disagree", "agreement",
                    "priority", "score", "verdict", "dual_flag", "alc_priority"])
        for i in range(len(noisy)):
            w.writerow([data.ids[i], data.groups[i], data.class_names[noisy[i]], data.class_names[data.labels[i]],
                        int(flipped[i]), data.class_names[sc.consensus[i]], f"{sc.p_given[i]:.4f}",
                        int(sc.n_disagree[i]), "" if not np.isfinite(sc.agreement[i]) else f"{sc.agreement[i]:.4f}",
                        f"{sc.priority[i]:.4f}", f"{sc.score[i]:.4f}", sc.verdict[i], int(sc.dual_flag[i]),
                        f"{sc.alc[i]:.4f}"])


def summary_table(results: dict) -> str:
    """One screen: F1/precision/recall/AUPRC per method and the essentials."""
    lines = [f"{results['dataset_name']}: n={results['n_samples']} classes={results['n_classes']} "
             f"noise={results['noise_model']} {results['noise_rate']} flipped={results['n_flipped']} "
             f"mode={results['settings']['mode']} size={results['settings']['image_size']} device={results['device']}",
             "members (clean acc): " + ", ".join(f"{k}={v:.3f}" for k, v in results["member_accuracy"].items()),
             f"{'method':<18}{'F1':>7}{'prec':>7}{'recall':>8}{'flagged':>9}{'AUPRC':>8}"]
    for name, r in results["methods"].items():
        ap = "-" if r.get("auprc") is None else f"{r['auprc']:.3f}"
        lines.append(f"{name:<18}{r['f1']:>7.3f}{r['precision']:>7.3f}{r['recall']:>8.3f}{r['n_flagged']:>9}{ap:>8}")
    th = results.get("thresholds", {})
    if th.get("cut"):
        lines.append(f"labelqa cut: {th['cut']}, estimated label errors {th.get('n_estimated_errors')}")
    o = results["oracle_top_n_true_count"]
    lines.append(f"{'(oracle top-n)':<18}{o['f1']:>7.3f}{o['precision']:>7.3f}{o['recall']:>8.3f}{o['n_flagged']:>9}")
    d = results["saliency_diagnostic"]
    if d.get("auprc_pearson") is not None:
        lines.append(f"saliency within {d['n_unanimous']} unanimous: AUPRC {d['auprc_pearson']:.3f} "
                     f"vs base rate {d['base_rate']:.3f}")
    for c in results["cohort_findings"]:
        lines.append(f"cohort: group={c['group']} given={results['class_names'][c['given_class']]} n={c['n']} "
                     f"unanimous-disagreement {c['unanimous_disagreement_rate']:.2f} vs {c['rest_rate']:.2f}")
    t = results["timing_s"]
    lines.append(f"timing: train {t['train']:.0f}s predict {t['predict']:.0f}s gradcam {t['gradcam']:.0f}s "
                 f"({t['gradcam_candidates']} candidates) total {t['total']:.0f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m models.evaluate``: the flags of ``labelqa evaluate`` without the service package (for a
    bare GPU machine that has torch, MONAI and cleanlab but not the DICOM stack)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m models.evaluate", description=main.__doc__)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--noise-rate", type=float, default=0.05)
    ap.add_argument("--noise-model", default="uniform")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", default="crossfit")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--max-samples", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--archs", default=",".join(DEFAULT_ARCHS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--repeats", type=int, default=1, help="seeds per architecture, probabilities averaged")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    s = EvalSettings(dataset=a.dataset, noise_rate=a.noise_rate, noise_model=a.noise_model, seed=a.seed, mode=a.mode,
                     folds=a.folds, image_size=a.image_size, max_samples=a.max_samples,
                     archs=tuple(x.strip() for x in a.archs.split(",") if x.strip()), device=a.device,
                     train=TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr), repeats=a.repeats)
    results = run_evaluation(s, a.out, progress=not a.no_progress, plots=not a.no_plots)
    print(summary_table(results))
    print(f"wrote {a.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
