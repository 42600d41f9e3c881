"""``labelqa evaluate --task segmentation``: plant mask errors, cross-fit, score, compare in the same run.

A share of the masks is corrupted (``models.seg.corruption``, every change recorded), the ensemble
is cross-fitted on the corrupted masks, and every (image, class) unit is scored by:

- ``labelqa``: the detector's verdict (``suspected_mask_error``) and score (``models.seg.detector``);
- ``dual_consistency``: the paper's rule (every member's Dice < 0.5 and the members agree), ranked
  by (1 - the best member's Dice) x the members' pairwise Dice;
- ``cleanlab_softmin``: ``cleanlab.segmentation.rank.get_label_quality_scores`` on the same mean
  out-of-fold probabilities (per class, [1 - p, p]); flags by ``issues_from_scores`` (its 0.1 default);
- ``single_model_dice``: 1 - Dice of the first member's mask, flag at Dice < 0.5;
- ``mean_prob_dice``: 1 - soft Dice of the mean probability map (no agreement), flag at < 0.5;
- ``random``: a random order, flagging as many as labelqa.

Mask level: F1 of the flags, AUPRC of the scores, per planted kind recall and AUPRC, relabelling
efficacy (share of corrupted masks found in the top x%). Pixel level: AUPRC of corrupted pixels by
labelqa's |mean probability - given| and by cleanlab's pixel scores, and the F1 of
``cleanlab.segmentation.filter.find_label_issues`` vs the pixels of labelqa's flagged regions.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.bundles import SEGMENTATION
from models.evaluate import _auprc, _prf, efficacy_curve
from models.seg.corruption import DEFAULT_KINDS, MaskCorruption, corrupt_masks
from models.seg.data import SegDataset, dataset_from_items, fold_groups, read_segmentation_items
from models.seg.detector import MaskVerdict, SegDetectorConfig, learn_seg_cut, score_masks, soft_dice
from models.seg.ensemble import DEFAULT_SEG_ARCHS
from models.seg.recipe import seg_recipe
from models.seg.train import SegFit, SegTrainConfig, fit_segmenters, to_channels
from models.verdict import MaskErrorKind, Verdict

__all__ = ["SegEvalSettings", "evaluate_segmentation", "run_seg_evaluation", "compare_seg_methods",
           "seg_summary_table", "fit_for_evaluation", "save_predictions", "load_predictions", "rescore_predictions",
           "EFFICACY_FRACTIONS"]

EFFICACY_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)


@dataclass
class SegEvalSettings:
    """One segmentation evaluation run."""

    dataset: str | None = None
    noise_rate: float = 0.05
    kinds: tuple[str, ...] = DEFAULT_KINDS
    seed: int = 0
    image_size: int | None = None
    """Model grid; None: chosen from the masks (``models.seg.recipe``)."""
    folds: int = 4
    archs: tuple[str, ...] = DEFAULT_SEG_ARCHS
    epochs: int | None = None
    """None: chosen from the data set size (``models.seg.recipe``)."""
    device: str = "auto"
    train: SegTrainConfig = field(default_factory=SegTrainConfig)
    detector: SegDetectorConfig = field(default_factory=SegDetectorConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _cleanlab_scores(pbar: np.ndarray, given: np.ndarray, method: str = "softmin") -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's image scores (``softmin`` or ``num_pixel_issues``) and pixel scores, per class on [1 - p, p]
    (units image-major)."""
    from cleanlab.segmentation.rank import get_label_quality_scores

    n, k = pbar.shape[:2]
    img = np.zeros((n, k))
    pix = np.zeros(pbar.shape, np.float32)
    for c in range(k):
        pp = np.clip(np.stack([1.0 - pbar[:, c], pbar[:, c]], axis=1), 1e-6, 1.0).astype(np.float32)
        s, ps = get_label_quality_scores(given[:, c].astype(np.int64), pp, method=method, verbose=False, n_jobs=1)
        img[:, c], pix[:, c] = s, ps
    return img.reshape(-1), pix


def _cleanlab_pixel_issues(pbar: np.ndarray, given: np.ndarray) -> np.ndarray:
    from cleanlab.segmentation.filter import find_label_issues

    out = np.zeros(given.shape, bool)
    for c in range(given.shape[1]):
        pp = np.clip(np.stack([1.0 - pbar[:, c], pbar[:, c]], axis=1), 1e-6, 1.0).astype(np.float32)
        out[:, c] = find_label_issues(given[:, c].astype(np.int64), pp, verbose=False, n_jobs=1)
    return out


def _method(flags: np.ndarray, scores: np.ndarray, truth: np.ndarray, unit_kind: np.ndarray) -> dict:
    res = {**_prf(flags, truth), "auprc": _auprc(scores, truth), "per_kind": {}}
    res["flags_per_planted"] = float(flags.sum() / truth.sum()) if truth.sum() else None
    clean = ~truth
    for kind in sorted({k for k in unit_kind[truth]}):
        sel = truth & (unit_kind == kind)
        res["per_kind"][kind] = {"n": int(sel.sum()), "recall": float(flags[sel].mean()),
                                 "auprc": _auprc(scores[sel | clean], sel[sel | clean])}
        res[f"recall_{kind}"] = res["per_kind"][kind]["recall"]
    return res


def compare_seg_methods(probs: np.ndarray, noisy: np.ndarray, clean: np.ndarray, verdicts: list[MaskVerdict],
                        records: list[MaskCorruption], seed: int, cfg: SegDetectorConfig | None = None) -> dict:
    """Mask- and pixel-level comparison of every method on the same out-of-fold probabilities.

    Besides the methods' flags and scores: ``labelqa_raw`` (the mask score the cut is on, before the
    local-precision steps), ``labelqa_suspicion`` (the overlap ratio alone), the members' Dice with the
    clean masks (what the competence estimate, which sees only the given masks, stands for), and
    ``unit_scores`` (every method's score per unit, for studies such as the second observer)."""
    cfg = cfg or SegDetectorConfig()
    m, n, k = probs.shape[:3]
    g, t = to_channels(noisy, k), to_channels(clean, k)
    truth_pix = g != t
    truth = truth_pix.any((2, 3)).reshape(-1)
    kind_of = {r.index: str(r.kind) for r in records}
    unit_kind = np.array([kind_of.get(u // k, "") if truth[u] else "" for u in range(n * k)], dtype=object)
    pbar = probs.mean(0)
    sm = max(1.0, cfg.smooth * float(np.prod(probs.shape[-2:])))
    masks = probs > cfg.threshold
    lq_flag = np.array([v.verdict == Verdict.SUSPECTED_MASK_ERROR for v in verdicts])
    lq_score = np.array([v.score for v in verdicts])
    lq_raw = np.array([v.raw_score for v in verdicts])
    member_dice = np.stack([[v.dice_members[a] for a in v.dice_members] for v in verdicts], axis=1)
    agree = np.array([v.agreement_dice for v in verdicts])
    dual_flag = np.array([v.dual_consistency for v in verdicts])
    single = 2 * (masks[0] & g).sum((2, 3)) / np.maximum(masks[0].sum((2, 3)) + g.sum((2, 3)), 1)
    single = np.where((masks[0].sum((2, 3)) + g.sum((2, 3))) == 0, 1.0, single).reshape(-1)
    mean_sd = soft_dice(pbar, g, sm).reshape(-1)
    cl_img, cl_pix = _cleanlab_scores(pbar, g)
    cl_npi, _ = _cleanlab_scores(pbar, g, "num_pixel_issues")
    from cleanlab.segmentation.rank import issues_from_scores

    def cl_flags(img: np.ndarray) -> np.ndarray:
        fl = np.zeros(n * k, bool)
        fl[np.asarray(issues_from_scores(img, threshold=0.1), dtype=np.int64)] = True
        return fl

    rng = np.random.default_rng(seed + 11)
    rnd = rng.random(n * k)
    rnd_flag = np.zeros(n * k, bool)
    rnd_flag[np.argsort(-rnd)[: int(lq_flag.sum())]] = True
    methods = {
        "labelqa": (lq_flag, np.array([v.priority for v in verdicts])),  # the worklist's order
        "labelqa_score": (lq_flag, lq_score),
        "labelqa_raw": (lq_flag, lq_raw),
        "labelqa_suspicion": (lq_flag, np.array([v.suspicion for v in verdicts])),
        "dual_consistency": (dual_flag, (1 - member_dice.max(0)) * agree),
        "cleanlab_softmin": (cl_flags(cl_img), 1.0 - cl_img),
        "cleanlab_num_pixel_issues": (cl_flags(cl_npi), 1.0 - cl_npi),
        "single_model_dice": (single < 0.5, 1.0 - single),
        "mean_prob_dice": (mean_sd < 0.5, 1.0 - mean_sd),
        "random": (rnd_flag, rnd),
    }
    out: dict = {"methods": {}, "efficacy": {"fractions": list(EFFICACY_FRACTIONS)}}
    for name, (fl, sc) in methods.items():
        out["methods"][name] = _method(fl, sc, truth, unit_kind)
        out["efficacy"][name] = efficacy_curve(sc, truth, np.array(EFFICACY_FRACTIONS))
    found = [v for v, tr in zip(verdicts, truth, strict=True) if tr and v.verdict == Verdict.SUSPECTED_MASK_ERROR]
    typed = [str(v.kind) == unit_kind[v.index * k + v.class_index - 1] for v in found]
    out["methods"]["labelqa"]["kind_accuracy"] = float(np.mean(typed)) if typed else None
    out["methods"]["labelqa"]["n_hard_case"] = int(sum(v.verdict == Verdict.HARD_CASE for v in verdicts))
    tm = masks.reshape(m, n, k, -1)
    tt = t.reshape(n, k, -1)
    inter = (tm & tt[None]).sum(-1)
    tot = tm.sum(-1) + tt.sum(-1)[None]
    dice_clean = np.where(tot > 0, 2 * inter / np.maximum(tot, 1), 1.0)  # (m, n, k)
    has = np.asarray(tt.any(axis=-1), bool)
    out["member_dice_vs_clean"] = {
        "median": [float(np.median(dice_clean[:, has[:, c], c].mean(0))) if has[:, c].any() else None
                   for c in range(k)],
        "note": "ground truth: the members' out-of-fold Dice with the clean masks that have a structure"}
    # pixel level: cleanlab's pixel score is 1 - self-confidence = |p - given| for one class, the same number as
    # labelqa's plain pixel score; labelqa's own pixel score weighs it by the mask's rank under labelqa's score
    rank = np.empty(n * k)
    rank[np.argsort(lq_raw, kind="stable")] = (np.arange(n * k) + 1) / (n * k)
    lq_pix = np.abs(pbar - g) * rank.reshape(n, k)[..., None, None]
    lq_pix_flag = np.zeros(g.shape, bool)
    for v in verdicts:
        if v.verdict == Verdict.SUSPECTED_MASK_ERROR and v.consensus is not None:
            lq_pix_flag[v.index, v.class_index - 1] = v.consensus != g[v.index, v.class_index - 1]
    cl_issues = _cleanlab_pixel_issues(pbar, g)
    tp = truth_pix.reshape(-1)
    out["pixel"] = {
        "n_corrupted_pixels": int(tp.sum()), "n_pixels": int(tp.size),
        "labelqa": {"auprc": _auprc(lq_pix.reshape(-1), tp), **_prf(lq_pix_flag.reshape(-1), tp),
                    "score": "|mean p - given| x the mask's rank under labelqa's mask score"},
        "unweighted": {"auprc": _auprc(np.abs(pbar - g).reshape(-1), tp),
                       "score": "|mean p - given| (= cleanlab's 1 - self-confidence for one class)"},
        "cleanlab": {"auprc": _auprc(1.0 - cl_pix.reshape(-1), tp), **_prf(cl_issues.reshape(-1), tp),
                     "score": "1 - self-confidence; flags: find_label_issues"},
    }
    out["n_units"], out["n_corrupted_units"] = int(n * k), int(truth.sum())
    out["unit_scores"] = {"labelqa_priority": [v.priority for v in verdicts],
                          "labelqa_score": lq_score.tolist(), "labelqa_raw": lq_raw.tolist(),
                          "labelqa_suspicion": [v.suspicion for v in verdicts],
                          "cleanlab_softmin": (1.0 - cl_img).tolist(),
                          "mean_prob_dice": (1.0 - np.array([v.dice_consensus for v in verdicts])).tolist()}
    return out


def rescore_predictions(d: dict, cfg: SegDetectorConfig | None = None) -> dict:
    """Score saved out-of-fold predictions (:func:`load_predictions`) with this checkout's detector and every
    baseline: the comparison, the learned cut's estimated error counts and the members' competence per class."""
    cfg = cfg or SegDetectorConfig(seed=int(d["settings"].get("seed", 0)))
    t0 = time.time()
    th = learn_seg_cut(d["probs"], d["noisy"], cfg, archs=d["archs"], class_names=d["class_names"])
    verdicts = score_masks(d["probs"], d["noisy"], d["spacing"], class_names=d["class_names"], archs=d["archs"],
                           thresholds=th, cfg=cfg)
    t_score = time.time() - t0
    res = compare_seg_methods(d["probs"], d["noisy"], d["clean"], verdicts, d["records"],
                              int(d["settings"].get("seed", 0)), cfg)
    return {"task": SEGMENTATION, "settings": d["settings"], "detector": cfg.to_dict(),
            "class_names": d["class_names"], "grid": list(d["probs"].shape[3:]),
            "corruptions": [r.to_row() for r in d["records"]],
            "competence": th.competence, "estimated_errors_per_class": th.estimated_errors_per_class,
            "class_scores": th.class_scores or [th.score] * len(th.class_cuts), "score_selection": th.score_selection,
            "score_seconds": round(t_score, 1), **res}


def fit_for_evaluation(data: SegDataset, s: SegEvalSettings, *, groups: list[str] | None = None, map_fn=None,
                       progress: bool = True) -> tuple[np.ndarray, list[MaskCorruption], SegFit, float]:
    """Plant the errors and cross-fit on the corrupted masks: (corrupted masks, records, fit, seconds)."""
    t0 = time.time()
    noisy, records = corrupt_masks(data.masks, s.noise_rate, s.kinds, s.seed, n_classes=data.n_classes)
    fit = fit_segmenters(data.images, noisy, n_classes=data.n_classes, archs=s.archs, folds=s.folds, epochs=s.epochs,
                         cfg=s.train, seed=s.seed, groups=groups, device=s.device, map_fn=map_fn, progress=progress)
    return noisy, records, fit, time.time() - t0


def save_predictions(path: Path, fit: SegFit, data: SegDataset, noisy: np.ndarray, records: list[MaskCorruption],
                     settings: SegEvalSettings, **extra: Any) -> Path:
    """The out-of-fold probabilities (float16), the given (corrupted) and clean masks, stems, folds and the
    planted records in one ``.npz``: enough to score again without fitting (:func:`load_predictions`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, probs=fit.probs.astype(np.float16), noisy=noisy.astype(np.int16),
                        clean=data.masks.astype(np.int16), stems=np.array(data.stems), archs=np.array(fit.archs),
                        fold_of=fit.fold_of, class_names=np.array(data.class_names),
                        spacing=np.array(data.spacing if data.spacing else [np.nan, np.nan], np.float64),
                        records=np.array(json.dumps([r.to_row() for r in records])),
                        settings=np.array(json.dumps(settings.to_dict(), default=str)), **extra)
    return path


def load_predictions(path: Path) -> dict:
    """What :func:`save_predictions` wrote: ``probs`` float32, masks, stems, archs, class names, records
    (:class:`MaskCorruption`), settings (dict), and any extra arrays."""
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    d["probs"] = d["probs"].astype(np.float32)
    d["noisy"], d["clean"] = d["noisy"].astype(np.int64), d["clean"].astype(np.int64)
    d["stems"], d["archs"] = [str(x) for x in d["stems"]], [str(x) for x in d["archs"]]
    d["class_names"] = [str(x) for x in d["class_names"]]
    sp = d.pop("spacing")
    d["spacing"] = None if not np.all(np.isfinite(sp)) else (float(sp[0]), float(sp[1]))
    d["records"] = [MaskCorruption(r["index"], r["op"], MaskErrorKind(r["kind"]), r["class_index"],
                                   r["changed_pixels"]) for r in json.loads(str(d["records"]))]
    d["settings"] = json.loads(str(d["settings"]))
    return d


def evaluate_segmentation(data: SegDataset, s: SegEvalSettings, out_dir: Path | None = None, *,
                          progress: bool = True, map_fn=None, groups: list[str] | None = None,
                          extra: dict | None = None) -> tuple[dict, list[MaskVerdict], SegFit, np.ndarray]:
    """Corrupt, fit, score, compare. Returns (results, verdicts, fit, corrupted masks); writes
    ``out_dir/results.json``, ``out_dir/masks.csv`` and ``out_dir/predictions.npz`` (to score again
    without fitting) when given."""
    t0 = time.time()
    noisy, records, fit, t_fit = fit_for_evaluation(data, s, groups=groups, map_fn=map_fn, progress=progress)
    if out_dir is not None:
        save_predictions(Path(out_dir) / "predictions.npz", fit, data, noisy, records, s)

    th = learn_seg_cut(fit.probs, noisy, s.detector, archs=list(fit.archs), class_names=data.class_names)
    verdicts = score_masks(fit.probs, noisy, data.spacing, class_names=data.class_names, archs=fit.archs,
                           thresholds=th, cfg=s.detector)
    res = compare_seg_methods(fit.probs, noisy, data.masks, verdicts, records, s.seed, s.detector)
    res.pop("unit_scores")
    results = {"task": SEGMENTATION, "settings": s.to_dict(), "n_images": len(data), "class_names": data.class_names,
               "grid": list(data.images.shape[1:]), "corruptions": [r.to_row() for r in records],
               "competence": th.competence, "estimated_errors_per_class": th.estimated_errors_per_class, **res,
               "timing_s": {"fit": round(t_fit, 1), "total": round(time.time() - t0, 1)}, **(extra or {})}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
        k = data.n_classes
        truth = (to_channels(noisy, k) != to_channels(data.masks, k)).any((2, 3)).reshape(-1)
        kind_of = {r.index: str(r.kind) for r in records}
        with open(out_dir / "masks.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "class", "corrupted", "planted_kind", "verdict", "kind", "score", "dice_consensus",
                        "agreement_prob", "dual_consistency"])
            for u, v in enumerate(verdicts):
                planted = kind_of.get(v.index, "") if truth[u] else ""
                w.writerow([data.stems[v.index], v.class_name, int(truth[u]), planted,
                            str(v.verdict), v.kind or "", f"{v.score:.5f}", f"{v.dice_consensus:.4f}",
                            f"{v.agreement_prob:.4f}", int(v.dual_consistency)])
    return results, verdicts, fit, noisy


def run_seg_evaluation(s: SegEvalSettings, out_dir: Path, *, progress: bool = True) -> dict:
    """Load ``s.dataset`` (``DIR/images`` + ``DIR/masks``), pick the grid and epochs the user left out
    (``models.seg.recipe``) and evaluate; duplicate images share a fold (``models.seg.data.fold_groups``)."""
    import logging
    from dataclasses import replace

    if s.dataset is None:
        raise ValueError("a segmentation evaluation needs a data set folder")
    items, names = read_segmentation_items(s.dataset)
    rec = seg_recipe([lab for _s, _im, lab in items], folds=s.folds, batch_size=s.train.batch_size,
                     min_steps_per_epoch=s.train.min_steps_per_epoch, n_classes=len(names), image_size=s.image_size,
                     epochs=s.epochs)
    logging.getLogger(__name__).info("grid %d px (%s); %d epochs (%s)", rec.image_size, rec.size_reason, rec.epochs,
                                     rec.epochs_reason)
    s = replace(s, image_size=rec.image_size, epochs=rec.epochs, train=replace(s.train, epochs=rec.epochs))
    data = dataset_from_items(items, names, rec.image_size, str(s.dataset))
    groups = fold_groups(data)
    return evaluate_segmentation(data, s, out_dir, progress=progress, groups=groups if len(set(groups)) < len(data)
                                 else None, extra={"dataset": s.dataset, "recipe": rec.to_dict()})[0]


def seg_summary_table(results: dict) -> str:
    """A plain-text table of the mask-level methods, the pixel AUPRCs and the members' competence per class."""
    lines = [f"{'method':<26} {'F1':>6} {'AUPRC':>6} {'prec':>6} {'recall':>6} {'flags':>6}"]
    for name, r in results["methods"].items():
        ap = "  n/a" if r["auprc"] is None else f"{r['auprc']:.3f}"
        lines.append(f"{name:<26} {r['f1']:6.3f} {ap:>6} {r['precision']:6.3f} {r['recall']:6.3f} {r['n_flagged']:6d}")
    px = results.get("pixel", {})
    if px:
        lines.append(f"pixel AUPRC: labelqa {px['labelqa']['auprc']}, cleanlab {px['cleanlab']['auprc']} "
                     f"(|p - given| unweighted: {px.get('unweighted', {}).get('auprc')})")
    for c, est in zip(results.get("competence", []), results.get("estimated_errors_per_class", []), strict=False):
        dice = ", ".join(f"{a} {v:.2f}" for a, v in c.get("member_median_dice", {}).items())
        state = "judged" if c["judged"] else "NOT JUDGED"
        lines.append(f"{c['class_name']}: members' median out-of-fold Dice {dice or 'n/a'}; {state}: {c['reason']}; "
                     f"estimated wrong masks {est:.1f}")
    return "\n".join(lines)
