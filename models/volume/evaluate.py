"""``labelqa evaluate --task segmentation --dims 3``: plant 3-D mask errors, cross-fit, score, compare in one run.

One segment in a share of the cases is corrupted (``models.volume.corruption``, every change
recorded), the 3-D ensemble is cross-fitted by case on the corrupted masks, and every (case,
segment) unit is scored by:

- ``labelqa``: the 3-D detector's verdict (``suspected_mask_error``) and score (``models.volume.detector``);
- ``labelqa_predicted_dice``: the same run's predicted Dice as a ranking (flag: predicted Dice < 0.7);
- ``labelqa_priority``: labelqa's flags in the worklist's order (the verdicts' ``priority``);
- ``dual_consistency``: the paper's rule (every member's Dice < 0.5 and the members agree);
- ``labelqa_2d``: labelqa's own 2-D mask detector (``models.seg``) on the same volumes slice by slice
  (2-D members cross-fitted on the slices, whole cases per fold); a segment is flagged when any of
  its slices is, and scored by its highest slice score: what auditing every frame of a series gives;
- ``cleanlab_slices``: ``cleanlab.segmentation.rank.get_label_quality_scores`` (softmin) on the
  3-D ensemble's mean out-of-fold probabilities fed as a stack of slices (cleanlab takes (N, H, W)
  only); a volume's score is its lowest slice score; flags by ``issues_from_scores`` (its 0.1 default);
- ``cleanlab_volume``: the same softmin over all voxels of the volume at once (each volume given to
  cleanlab as one tall image);
- ``single_model_dice`` (1 - Dice of the first member's mask, flag < 0.5), ``mean_prob_dice``
  (1 - soft Dice of the mean probability, flag < 0.5), ``random`` (as many flags as labelqa).

Mask level: F1 of the flags, AUPRC of the scores, per planted kind recall and AUPRC. The predicted
Dice against the true Dice of every given mask (MAE, Pearson r, good/bad accuracy at Dice 0.7).
Regions: labelqa's regions of its suspected masks against the connected components of the planted
change, matched at IoU >= 0.25 (recall, precision). Seconds and peak memory. The out-of-fold
probabilities are saved (``oof_probs.npz``) so a changed detector can be re-scored without re-fitting
(:func:`rescore_volume_run`).
"""

from __future__ import annotations

import csv
import json
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from models.bundles import SEGMENTATION
from models.seg.detector import SegDetectorConfig, score_masks
from models.seg.ensemble import DEFAULT_SEG_ARCHS
from models.seg.evaluate import _method
from models.seg.train import SegTrainConfig, fit_segmenters
from models.verdict import Verdict
from models.volume.corruption import DEFAULT_VOLUME_KINDS, VolumeCorruption, corrupt_volumes
from models.volume.data import Spacing, VolumeDataset, load_volume_dataset
from models.volume.detector import (
    VolumeDetectorConfig,
    VolumeScores,
    competence_summary,
    score_volumes,
    volume_regions,
)
from models.volume.ensemble import DEFAULT_VOLUME_ARCHS
from models.volume.preprocess import model_spacing, normalise_intensity
from models.volume.probs import CaseProbs, box_slices, load_case_probs, save_case_probs
from models.volume.train import VolumeTrainConfig, fit_volume_segmenters

__all__ = ["VolumeEvalSettings", "evaluate_volumes", "compare_volume_methods", "run_volume_evaluation",
           "rescore_volume_run", "volume_summary_table", "slice_stack"]


@dataclass
class VolumeEvalSettings:
    """One volume evaluation run."""

    dataset: str | None = None
    noise_rate: float = 0.05
    kinds: tuple[str, ...] = DEFAULT_VOLUME_KINDS
    seed: int = 0
    folds: int = 3
    archs: tuple[str, ...] = DEFAULT_VOLUME_ARCHS
    epochs: int = 12
    device: str = "auto"
    spacing: Spacing | None = None
    """Model spacing (z, y, x) mm; None: the data set's median spacing."""
    max_cases: int | None = None
    train: VolumeTrainConfig = field(default_factory=VolumeTrainConfig)
    detector: VolumeDetectorConfig = field(default_factory=VolumeDetectorConfig)
    baseline_2d: bool = True
    """Also cross-fit labelqa's 2-D members on the slices (the ``labelqa_2d`` baseline)."""
    archs_2d: tuple[str, ...] = DEFAULT_SEG_ARCHS
    epochs_2d: int = 3
    good_dice: float = 0.7
    """A mask is good when its true Dice is at least this (the predicted Dice's good/bad accuracy)."""
    region_iou: float = 0.25

    def to_dict(self) -> dict:
        return asdict(self)


def slice_stack(volumes: list[np.ndarray], fill: float = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every slice of every volume (Z, Y, X), padded at the end of rows and columns to a common size:
    ((S, H, W) stack, case index of each slice)."""
    h = max(v.shape[1] for v in volumes)
    w = max(v.shape[2] for v in volumes)
    out = np.full((sum(v.shape[0] for v in volumes), h, w), fill, dtype=volumes[0].dtype)
    case = np.zeros(len(out), np.int64)
    s = 0
    for i, v in enumerate(volumes):
        out[s:s + v.shape[0], :v.shape[1], :v.shape[2]] = v
        case[s:s + v.shape[0]] = i
        s += v.shape[0]
    return out, case


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    tot = int(a.sum()) + int(b.sum())
    return 1.0 if tot == 0 else 2.0 * float((a & b).sum()) / tot


def _cleanlab(pbars: list[list[np.ndarray]], given: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(slice-min scores, whole-volume scores) per unit, case-major; cleanlab's softmin quality."""
    from cleanlab.segmentation.rank import get_label_quality_scores

    n = len(given)
    by_slice, by_volume = np.zeros((n, k)), np.zeros((n, k))
    for c in range(k):
        probs = [np.clip(p[c], 1e-6, 1.0 - 1e-6).astype(np.float32) for p in pbars]
        labs = [(g == c + 1).astype(np.int64) for g in given]
        ps, case = slice_stack(probs, 1e-6)
        ls, _ = slice_stack(labs, 0)
        s, _px = get_label_quality_scores(ls, np.stack([1.0 - ps, ps], 1), method="softmin", verbose=False, n_jobs=1)
        for i in range(n):
            by_slice[i, c] = float(np.min(s[case == i]))
            p, g = probs[i], labs[i]
            tall_p = p.reshape(1, -1, p.shape[2])
            sv, _ = get_label_quality_scores(g.reshape(1, -1, g.shape[2]), np.stack([1.0 - tall_p, tall_p], 1),
                                             method="softmin", verbose=False, n_jobs=1)
            by_volume[i, c] = float(sv[0])
    return by_slice.reshape(-1), by_volume.reshape(-1)


def _fit_2d(data: VolumeDataset, noisy: list[np.ndarray], s: VolumeEvalSettings, map_fn, progress: bool) -> dict:
    """labelqa's 2-D members cross-fitted on the slices (whole cases per fold): out-of-fold probabilities."""
    ims, case = slice_stack([normalise_intensity(c.image) for c in data.cases], 0.0)
    labs, _ = slice_stack([np.asarray(m, np.int64) for m in noisy], 0)
    t0 = time.time()
    fit = fit_segmenters(ims.astype(np.float32), labs, n_classes=data.n_classes, archs=s.archs_2d, folds=s.folds,
                         epochs=s.epochs_2d, cfg=SegTrainConfig(epochs=s.epochs_2d), seed=s.seed,
                         groups=[data.cases[i].stem for i in case], device=s.device, map_fn=map_fn, progress=progress)
    return {"probs": fit.probs, "case": case, "archs": list(fit.archs), "fit_s": round(time.time() - t0, 1)}


def _score_2d(probs2d: np.ndarray, case: np.ndarray, noisy: list[np.ndarray], data: VolumeDataset, archs: list[str],
              seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per unit (case-major): flagged when any slice is a suspected error, score = the highest slice score."""
    labs, _ = slice_stack([np.asarray(m, np.int64) for m in noisy], 0)
    sp = {(c.geometry.spacing[1], c.geometry.spacing[2]) for c in data.cases}
    t0 = time.time()
    vs = score_masks(np.asarray(probs2d, np.float32), labs, sp.pop() if len(sp) == 1 else None,
                     class_names=data.class_names, archs=archs, cfg=SegDetectorConfig(seed=seed), keep_arrays=False)
    k = data.n_classes
    flag = np.zeros((len(data), k), bool)
    score = np.zeros((len(data), k))
    for v in vs:
        i, c = int(case[v.index]), v.class_index - 1
        flag[i, c] |= v.verdict == Verdict.SUSPECTED_MASK_ERROR
        score[i, c] = max(score[i, c], v.score)
    n_slices = len(vs) // k
    info = {"score_s": round(time.time() - t0, 1), "n_slices": n_slices,
            "suspected_slices": int(sum(v.verdict == Verdict.SUSPECTED_MASK_ERROR for v in vs))}
    return flag.reshape(-1), score.reshape(-1), info


def _true_regions(noisy: np.ndarray, clean: np.ndarray, c: int, min_vox: int) -> list[np.ndarray]:
    from scipy.ndimage import label

    diff = (noisy == c) != (clean == c)
    lab, n = label(diff, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    return [lab == r for r in range(1, n + 1) if sizes[r] >= min_vox]


def _region_metrics(sc: VolumeScores, noisy: list[np.ndarray], clean: list[np.ndarray], data: VolumeDataset,
                    truth: np.ndarray, iou: float, cfg: VolumeDetectorConfig) -> dict:
    """labelqa's regions of its suspected masks vs the planted change's components (IoU >= ``iou``)."""
    k = data.n_classes
    n_true = n_true_hit = n_pred = n_pred_hit = 0
    ious: list[float] = []
    for u, v in enumerate(sc.verdicts):
        i, c = v.index, v.class_index
        trues = _true_regions(noisy[i], clean[i], c, cfg.min_region_voxels) if truth[u] else []
        preds: list[np.ndarray] = []
        if v.verdict == Verdict.SUSPECTED_MASK_ERROR and v.consensus is not None and v.roi is not None:
            sl = box_slices(v.roi)
            g = noisy[i][sl] == c
            others_c = None
            if k > 1:
                others_c = np.zeros_like(g)
                for w in sc.verdicts[i * k:(i + 1) * k]:
                    if w.class_index != c and w.consensus is not None and w.roi is not None:
                        others_c |= w.consensus_volume(noisy[i].shape)[sl]
            _r, _kind, lab = volume_regions(g, v.consensus, data.cases[i].geometry, (v.roi[0], v.roi[1], v.roi[2]),
                                            other_consensus=others_c, other_given=(noisy[i][sl] > 0) & ~g, cfg=cfg,
                                            with_labels=True)
            assert lab is not None
            for r in range(1, int(lab.max(initial=0)) + 1):
                full = np.zeros(noisy[i].shape, bool)
                full[sl] = lab == r
                preds.append(full)
        n_true += len(trues)
        n_pred += len(preds)
        hit_t = [False] * len(trues)
        for p in preds:
            best = 0.0
            for t_i, t in enumerate(trues):
                j = float((p & t).sum()) / max(float((p | t).sum()), 1.0)
                if j >= iou:
                    hit_t[t_i] = True
                best = max(best, j)
            if best >= iou:
                n_pred_hit += 1
                ious.append(best)
        n_true_hit += sum(hit_t)
    return {"iou_threshold": iou, "n_true_regions": n_true, "n_predicted_regions": n_pred,
            "recall": n_true_hit / n_true if n_true else None, "precision": n_pred_hit / n_pred if n_pred else None,
            "mean_iou_matched": float(np.mean(ious)) if ious else None}


def compare_volume_methods(data: VolumeDataset, noisy: list[np.ndarray], records: list[VolumeCorruption],
                           probs: list[CaseProbs], archs: list[str], s: VolumeEvalSettings, *,
                           probs2d: dict | None = None, cache_2d: Path | None = None,
                           progress: bool = False) -> tuple[dict, VolumeScores]:
    """Score the given (noisy) masks from saved out-of-fold probabilities and compare every method with the truth.

    ``cache_2d``: where the 2-D baseline's per-unit flags and scores are kept (read when the file exists,
    written after scoring ``probs2d`` otherwise), so re-scoring the 3-D detector skips the 2-D one.

    The detector reads only ``probs`` and ``noisy`` (and the geometry); the clean masks and the
    corruption records enter the metrics only."""
    k = data.n_classes
    n = len(data)
    t0 = time.time()
    sc = score_volumes(probs, noisy, [c.geometry for c in data.cases], class_names=data.class_names, archs=archs,
                       cfg=s.detector, keep_arrays=True, progress=progress)
    t_score = time.time() - t0
    clean = [c.labels for c in data.cases]
    truth = np.array([np.any((noisy[i] == c + 1) != (clean[i] == c + 1)) for i in range(n) for c in range(k)])
    true_dice = np.array([_dice(noisy[i] == c + 1, clean[i] == c + 1) for i in range(n) for c in range(k)])
    kind_of = {r.index: str(r.kind) for r in records}
    unit_kind = np.array([kind_of.get(u // k, "") if truth[u] else "" for u in range(n * k)], dtype=object)
    vs = sc.verdicts
    lq_flag = np.array([v.verdict == Verdict.SUSPECTED_MASK_ERROR for v in vs])
    lq_score = np.array([v.score for v in vs])
    pred = np.array([v.predicted_dice for v in vs])
    member_dice = sc.units.dice_members
    dual_flag = np.array([v.dual_consistency for v in vs])
    single = member_dice[0]
    mean_sd = sc.units.dice_mean_prob
    pbars: list[list[np.ndarray]] = []
    dice_clean = np.ones((len(archs), n * k))  # ground truth: each member's Dice with the clean mask
    for i in range(n):
        pbars.append([])
        for c in range(k):
            p = probs[i].dense(c)
            pbars[i].append(p.mean(0))
            t = clean[i] == c + 1
            dice_clean[:, i * k + c] = [_dice(p[j] > s.detector.seg.threshold, t) for j in range(len(p))]
    t1 = time.time()
    cl_slice, cl_vol = _cleanlab(pbars, [np.asarray(m) for m in noisy], k)
    t_cl = time.time() - t1
    del pbars
    from cleanlab.segmentation.rank import issues_from_scores

    def cl_flags(scores: np.ndarray) -> np.ndarray:
        f = np.zeros(n * k, bool)
        f[np.asarray(issues_from_scores(scores, threshold=0.1), dtype=np.int64)] = True
        return f

    rng = np.random.default_rng(s.seed + 11)
    rnd = rng.random(n * k)
    rnd_flag = np.zeros(n * k, bool)
    rnd_flag[np.argsort(-rnd)[: int(lq_flag.sum())]] = True
    methods: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "labelqa": (lq_flag, lq_score),
        "labelqa_predicted_dice": (pred < s.good_dice, 1.0 - pred),
        "labelqa_priority": (lq_flag, np.array([v.priority for v in vs])),  # the worklist's order
        "dual_consistency": (dual_flag, (1 - member_dice.max(0)) * sc.units.agreement_dice),
        "cleanlab_slices": (cl_flags(cl_slice), 1.0 - cl_slice),
        "cleanlab_volume": (cl_flags(cl_vol), 1.0 - cl_vol),
        "single_model_dice": (single < 0.5, 1.0 - single),
        "mean_prob_dice": (mean_sd < 0.5, 1.0 - mean_sd),
        "random": (rnd_flag, rnd),
    }
    info_2d: dict = {}
    if cache_2d is not None and Path(cache_2d).is_file():  # the 2-D detector's per-unit result of an earlier scoring
        with np.load(cache_2d) as z:
            methods["labelqa_2d"] = (z["flags"], z["scores"])
            info_2d = json.loads(str(z["info"]))
    elif probs2d is not None:
        f2, s2, info_2d = _score_2d(probs2d["probs"], probs2d["case"], noisy, data, probs2d["archs"], s.seed)
        methods["labelqa_2d"] = (f2, s2)
        info_2d["fit_s"] = probs2d.get("fit_s")
        if cache_2d is not None:
            np.savez(cache_2d, flags=f2, scores=s2, info=np.array(json.dumps(info_2d)))
    out: dict = {"methods": {}}
    for name, (fl, scr) in methods.items():
        out["methods"][name] = _method(fl, scr, truth, unit_kind)
    found = [(u, v) for u, v in enumerate(vs) if truth[u] and v.verdict == Verdict.SUSPECTED_MASK_ERROR]
    typed = [str(v.kind) == unit_kind[u] for u, v in found]
    out["methods"]["labelqa"]["kind_accuracy"] = float(np.mean(typed)) if typed else None
    out["methods"]["labelqa"]["kinds_found"] = {
        kk: {"n": int(sum(1 for u, _v in found if unit_kind[u] == kk)),
             "typed": int(sum(1 for (u, v), t in zip(found, typed, strict=True) if unit_kind[u] == kk and t))}
        for kk in sorted({str(x) for x in unit_kind[truth]})}
    out["methods"]["labelqa"]["n_hard_case"] = int(sum(v.verdict == Verdict.HARD_CASE for v in vs))
    err = pred - true_dice
    good_t, good_p = true_dice >= s.good_dice, pred >= s.good_dice
    out["predicted_dice"] = {
        "mae": float(np.mean(np.abs(err))),
        "pearson_r": float(np.corrcoef(pred, true_dice)[0, 1]) if np.std(pred) > 0 and np.std(true_dice) > 0 else None,
        "spearman_r": _spearman(pred, true_dice),
        "mae_clean": float(np.mean(np.abs(err[~truth]))) if (~truth).any() else None,
        "mae_corrupted": float(np.mean(np.abs(err[truth]))) if truth.any() else None,
        "bias": float(np.mean(err)),
        "good_dice": s.good_dice,
        "good_bad_accuracy": float(np.mean(good_t == good_p)),
        "bad_recall": float(np.mean(~good_p[~good_t])) if (~good_t).any() else None,
        "bad_precision": float(np.mean(~good_t[~good_p])) if (~good_p).any() else None,
        "n_bad": int((~good_t).sum()),
        "per_kind_mae": {kk: float(np.mean(np.abs(err[unit_kind == kk])))
                         for kk in sorted({str(x) for x in unit_kind[truth]})},
    }
    out["regions"] = _region_metrics(sc, noisy, clean, data, truth, s.region_iou, s.detector)
    out["cut"] = sc.thresholds.to_dict()
    out.update(competence_summary(sc.thresholds, data.class_names))
    has = np.array([np.any(clean[i] == c + 1) for i in range(n) for c in range(k)])
    cls = np.tile(np.arange(k), n)
    out["member_dice_vs_clean"] = {
        "median": [float(np.median(dice_clean[:, (cls == c) & has].mean(0))) if ((cls == c) & has).any() else None
                   for c in range(k)],
        "note": "ground truth: the members' out-of-fold Dice with the clean masks that have a structure"}
    out["n_units"], out["n_corrupted_units"] = int(n * k), int(truth.sum())
    out["timing"] = {"score_s": round(t_score, 1),
                     "score_s_per_volume_mean": round(float(np.mean(sc.seconds_per_case)), 4),
                     "score_s_per_volume_max": round(float(np.max(sc.seconds_per_case)), 4),
                     "cleanlab_s": round(t_cl, 1)}
    if info_2d:
        out["labelqa_2d"] = info_2d
    return out, sc


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    if np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def _write_units(out_dir: Path, data: VolumeDataset, sc: VolumeScores, noisy: list[np.ndarray],
                 records: list[VolumeCorruption]) -> None:
    kind_of = {r.index: (str(r.kind), r.op) for r in records}
    with open(out_dir / "masks.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "class", "corrupted", "planted_kind", "true_dice", "verdict", "kind", "score", "suspicion",
                    "predicted_dice", "dice_consensus", "hd95_consensus_mm", "agreement_prob", "n_regions"])
        for v in sc.verdicts:
            i, c = v.index, v.class_index
            clean = data.cases[i].labels == c
            given = noisy[i] == c
            corrupted = bool(np.any(clean != given))
            planted = kind_of.get(i, ("", ""))[0] if corrupted else ""
            w.writerow([data.cases[i].stem, v.class_name, int(corrupted), planted,
                        f"{_dice(given, clean):.4f}", str(v.verdict), v.kind or "", f"{v.score:.5f}",
                        f"{v.suspicion:.4f}", f"{v.predicted_dice:.4f}", f"{v.dice_consensus:.4f}",
                        f"{v.hd95_consensus:.2f}", f"{v.agreement_prob:.4f}", len(v.regions)])


def evaluate_volumes(data: VolumeDataset, s: VolumeEvalSettings, out_dir: Path | None = None, *, progress: bool = True,
                     map_fn=None, extra: dict | None = None) -> dict:
    """Corrupt, cross-fit (3-D and, with ``baseline_2d``, 2-D on slices), score, compare. Writes
    ``out_dir/results.json``, ``masks.csv`` and ``oof_probs.npz`` (and ``oof_probs_2d.npz``) when given."""
    t0 = time.time()
    clean = [c.labels for c in data.cases]
    spacings = [c.geometry.spacing for c in data.cases]
    noisy, records = corrupt_volumes(clean, s.noise_rate, s.kinds, s.seed, n_classes=data.n_classes,
                                     spacings=spacings)
    spacing = s.spacing or model_spacing(spacings)
    same = all(np.allclose(sp, spacing, rtol=1e-3) for sp in spacings)
    fit = fit_volume_segmenters([c.image for c in data.cases], noisy, spacings, n_classes=data.n_classes,
                                archs=s.archs, folds=s.folds, epochs=s.epochs, cfg=s.train,
                                spacing=None if same else spacing, seed=s.seed, device=s.device, map_fn=map_fn,
                                progress=progress)
    t_fit = time.time() - t0
    probs2d = _fit_2d(data, noisy, s, map_fn, progress) if s.baseline_2d else None
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_case_probs(out_dir / "oof_probs.npz", fit.probs, fold_of=fit.fold_of, archs=np.array(fit.archs),
                        **{f"noisy_{i}": m.astype(np.uint8) for i, m in enumerate(noisy)})
        if probs2d is not None:
            np.savez_compressed(out_dir / "oof_probs_2d.npz",
                                probs=np.clip(np.rint(probs2d["probs"] * 255), 0, 255).astype(np.uint8),
                                case=probs2d["case"], archs=np.array(probs2d["archs"]), fit_s=probs2d["fit_s"])
    res, sc = compare_volume_methods(data, noisy, records, fit.probs, list(fit.archs), s, probs2d=probs2d,
                                     cache_2d=None if out_dir is None else out_dir / "scores_2d.npz",
                                     progress=progress)
    predict_s = sum(m.history.get("predict_s", 0.0) for m in fit.members)
    train_s = sum(m.history.get("train_s", 0.0) for m in fit.members)
    results = {
        "task": SEGMENTATION, "dims": 3, "settings": s.to_dict(), "n_cases": len(data),
        "class_names": data.class_names, "model_spacing": list(spacing), "resampled": not same,
        "shapes": {"min": np.min([c.shape for c in data.cases], 0).tolist(),
                   "max": np.max([c.shape for c in data.cases], 0).tolist()},
        "corruptions": [r.to_row() for r in records], **res,
        "members": [{"arch": m.arch, "fold": m.fold, **{kk: m.history[kk] for kk in ("steps", "train_s", "predict_s")}}
                    for m in fit.members],
    }
    results["timing"].update({
        "fit_3d_s": round(t_fit, 1), "train_3d_s": round(train_s, 1),
        "inference_s_per_volume_per_model": round(predict_s / max(len(data), 1) / len(fit.archs), 4),
        "total_s": round(time.time() - t0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    results.update(extra or {})
    if out_dir is not None:
        (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
        _write_units(out_dir, data, sc, noisy, records)
    return results


def rescore_volume_run(run_dir: str | Path, data: VolumeDataset, s: VolumeEvalSettings, *,
                       progress: bool = False) -> dict:
    """Re-score a saved run (its ``oof_probs.npz``, ``oof_probs_2d.npz`` and ``results.json``) with the detector
    in ``s``: no fitting. The corruption records are re-made from the run's seed and rate (deterministic)."""
    run_dir = Path(run_dir)
    probs, extra = load_case_probs(run_dir / "oof_probs.npz")
    noisy = [extra[f"noisy_{i}"] for i in range(len(probs))]
    _noisy, records = corrupt_volumes([c.labels for c in data.cases], s.noise_rate, s.kinds, s.seed,
                                      n_classes=data.n_classes, spacings=[c.geometry.spacing for c in data.cases])
    if any(not np.array_equal(a, b) for a, b in zip(noisy, _noisy, strict=True)):
        raise ValueError(f"{run_dir}: the saved masks differ from seed {s.seed} / rate {s.noise_rate}'s corruption")
    probs2d = None
    p2 = run_dir / "oof_probs_2d.npz"
    if p2.is_file() and not (run_dir / "scores_2d.npz").is_file():
        with np.load(p2) as z:
            probs2d = {"probs": z["probs"].astype(np.float32) / 255.0, "case": z["case"],
                       "archs": [str(a) for a in z["archs"]], "fit_s": float(z["fit_s"])}
    res, _sc = compare_volume_methods(data, noisy, records, probs, [str(a) for a in extra["archs"]], s,
                                      probs2d=probs2d, cache_2d=run_dir / "scores_2d.npz", progress=progress)
    return {"task": SEGMENTATION, "dims": 3, "settings": s.to_dict(), "n_cases": len(data),
            "class_names": data.class_names, "rescored_from": str(run_dir),
            "corruptions": [r.to_row() for r in records], **res}


def run_volume_evaluation(s: VolumeEvalSettings, out_dir: Path, *, progress: bool = True, map_fn=None,
                          extra: dict | None = None) -> dict:
    """Load ``s.dataset`` (MSD / nnU-Net layout or images/ + masks/ of volumes) and evaluate."""
    if s.dataset is None:
        raise ValueError("a volume evaluation needs a data set folder")
    data = load_volume_dataset(s.dataset, max_cases=s.max_cases)
    return evaluate_volumes(data, s, out_dir, progress=progress, map_fn=map_fn,
                            extra={"dataset": s.dataset, **(extra or {})})


def volume_summary_table(results: dict) -> str:
    """A plain-text table of the mask-level methods, the predicted Dice and the regions."""
    lines = [f"{'method':<24} {'F1':>6} {'AUPRC':>6} {'prec':>6} {'recall':>6} {'flags':>6}"]
    for name, r in results["methods"].items():
        ap = "  n/a" if r["auprc"] is None else f"{r['auprc']:.3f}"
        lines.append(f"{name:<24} {r['f1']:6.3f} {ap:>6} {r['precision']:6.3f} {r['recall']:6.3f} {r['n_flagged']:6d}")
    pdice = results.get("predicted_dice", {})
    if pdice:
        r = pdice.get("pearson_r")
        lines.append(f"predicted Dice: MAE {pdice['mae']:.4f}, Pearson r {'n/a' if r is None else f'{r:.3f}'}, "
                     f"good/bad accuracy at {pdice['good_dice']} {pdice['good_bad_accuracy']:.3f}")
    reg = results.get("regions", {})
    if reg:
        lines.append(f"regions (IoU >= {reg['iou_threshold']}): recall {reg['recall']}, precision {reg['precision']}")
    est = results.get("estimated_errors_per_class", {})
    for c in results.get("competence", []):
        dice = ", ".join(f"{a} {v:.2f}" for a, v in c.get("member_median_dice", {}).items())
        state = "judged" if c["judged"] else "NOT JUDGED"
        n_err = est.get(c["class_name"])
        lines.append(f"{c['class_name']}: members' median out-of-fold Dice {dice or 'n/a'}; {state}: {c['reason']}"
                     + ("" if n_err is None else f"; estimated wrong masks {n_err:.1f}"))
    return "\n".join(lines)
