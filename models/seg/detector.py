"""Verdicts for masks: overlap, surface distance and agreement per (image, class), labelqa's cut, regions.

For every (image, class) unit the members' probability maps (out-of-fold: no member saw the mask)
give:

- per member and for the consensus (mean probability > 0.5): Dice, HD95 and normalised surface
  Dice with the given mask (``monai.metrics``; mm when a pixel spacing is given);
- inter-member agreement: mean pairwise Dice of the members' masks and of their probability maps;
- ``dual_consistency``, the paper's rule transposed: every member's Dice < ``dual_dice`` and the
  members' masks agree (pairwise Dice >= tau, tau from a 2-component mixture on the agreement of
  those units, as the label detector's Grad-CAM rule);
- labelqa's **suspicion**: how much the consensus mask disagrees with the given one, in units of
  how much the members disagree with each other: ``s = (1 - Dice_s(consensus, given)) /
  (1 - probability-map agreement + eps)`` (``Dice_s`` smoothed by a few pixels so that empty vs
  near-empty is no error). A mask is suspicious when the models fail it the same way, not where they
  are unsure (docs/segmentation.md). It becomes a verdict by a cut learned **without
  ground truth**: every unit's consensus mask is corrupted by each planted-error operation of
  ``models.seg.corruption`` and scored against the same probabilities, which shows how the suspicion
  of a wrong mask is distributed for these members on these images. As in the label detector
  (``models.detector.simulated_flip_cut``), the number of wrong masks per class comes from the
  upper tail (min over cuts of #observed above / P(simulated above)), each unit's local precision
  from the least concave majorant, and the flags maximise the estimated F1.
  A flagged unit is a ``suspected_mask_error`` when the members disagree with each other less than
  with the mask (1 - probability-map agreement < s), else a ``hard_case``;
- the **priority**, the worklist's order: the verdict's level, then the evidence against the mask ranked in its
  class; a flag whose suggested mask is shaped unlike the class's masks (its solidity far below the given masks')
  keeps its verdict and ranks at the level of the masks not flagged;
- the **regions**: connected components of consensus-vs-given difference, each with a
  :class:`~models.verdict.MaskErrorKind` (a whole structure missing or spurious, a boundary too
  tight or too loose, a shift found by cross-correlation, another class's structure), its area,
  bounding box and centroid; the mask-level kind is the kind covering most area.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import combinations

import numpy as np

from models.agreement import gmm_threshold
from models.detector import _concave_majorant_slopes, _tail_count, precision_from_steps
from models.seg.competence import cannot_judge, class_competence
from models.seg.corruption import CORRUPTIONS, _apply, applicable
from models.seg.train import to_channels
from models.verdict import MASK_VERDICTS, MaskErrorKind, Verdict

__all__ = ["SegDetectorConfig", "SegThresholds", "MaskRegion", "MaskVerdict", "SegUnits", "score_masks",
           "learn_seg_cut", "unit_scores", "mask_regions", "SEG_VERDICTS", "SCORES", "softmin_quality",
           "mask_features", "features_of", "combine_score", "choose_class_scores", "confident_thresholds",
           "evidence_rank", "PRIORITY_LEVEL"]

SEG_VERDICTS = MASK_VERDICTS


@dataclass
class SegDetectorConfig:
    """Detector constants, fixed before any evaluated data set's corruption records are seen."""

    threshold: float = 0.5
    """Probability above which a pixel is inside a member's (or the consensus) mask."""
    smooth: float = 0.005
    """Dice smoothing, as a share of the image's pixels (at least one pixel)."""
    eps: float = 0.05
    """Floor added to the members' disagreement in the suspicion's denominator."""
    numerator: str = "dice"
    """``dice``: 1 - Dice_s(consensus, given); ``confident``: the share of the union where every member
    agrees and the mask differs (docs/segmentation.md)."""
    dual_dice: float = 0.5
    """The paper's rule: a member "disagrees" with a mask when their Dice is below this."""
    min_agreement: float = 0.5
    """A flagged mask is a suspected error only when the members' masks agree with each other at least this
    much (mean pairwise Dice: the method's agreement condition); otherwise it is a hard case."""
    tail_floor: float = 0.3
    tail_min_count: int = 5
    count_z: float = 0.5
    simulate_from: str = "given"
    """What the simulated wrong masks corrupt for the error count: ``given`` (the masks as drawn) or
    ``consensus`` (the members' own masks). The competence check always corrupts the given masks."""
    score: str = "blend_pixels_sqrt"
    """The mask score the cut is on, a key of ``SCORES``: one feature (``suspicion``, ``evidence``,
    ``softmin``: cleanlab's softmin on the mean probabilities, ``wrong_pixels``) or the mean of several
    features' ranks within the class; the default blends the suspicion, the evidence and the count of
    confidently wrong pixels (docs/segmentation.md). ``auto``: per class, the one of ``auto_candidates``
    under which the simulated wrong masks rank highest among the given masks (``choose_class_scores``)."""
    auto_candidates: tuple[str, ...] = ("blend_pixels_sqrt", "blend_pixels", "blend")
    """``score="auto"``: the scores it chooses from, in order of preference on a tie."""
    auto_by: str = "detection"
    """``score="auto"``: how the simulated wrong masks' rank is measured: ``detection`` (the share above the
    ``detection_quantile`` of the given masks' scores, the competence check's rate) or ``auroc`` (simulated
    against given masks, each unit's simulations weighing 1)."""
    softmin_temperature: float = 0.1
    """cleanlab's default temperature."""
    shape_check: str = "mad"
    """Whether the worklist's order trusts a flag whose suggested mask (the consensus) is shaped unlike the class's
    masks (``SHAPE_RULE`` in benchmarks/segmentation_dev.py chose ``mad`` with 3): ``off``; ``mad``: atypical when
    the consensus's solidity (area over convex hull) lies more than ``shape_threshold`` robust standard deviations
    (1.4826 x MAD) below the median of the given masks' solidities; ``quantile``: below their ``shape_threshold``
    quantile (0.005, 0.01 or 0.05). An atypical flagged mask keeps its verdict and ranks by its evidence among the
    masks not flagged (``priority``)."""
    shape_threshold: float = 3.0
    pixel_confidence: float = 0.5
    """``wrong_pixels``: a pixel counts when every member's probability of the other label (than the mask's)
    exceeds this."""
    min_dice: float = 0.5
    """Competence: the members' median out-of-fold Dice with a class's masks must reach this."""
    min_detection: float = 0.6
    """Competence: the share of simulated wrong masks scoring above the ``detection_quantile`` of the given
    masks' scores (a wrong mask would rank in their top 10%) must reach this."""
    detection_quantile: float = 0.9
    flag_margin: float = 2.0
    """At most (estimated wrong masks + flag_margin x sqrt(estimate) + 1) flags per class."""
    nsd_tolerance_px: float = 1.0
    """Normalised-surface-Dice tolerance in pixels (times the mean spacing when a spacing is given)."""
    min_region_px: int = 4
    """Difference components smaller than this are boundary noise, not regions."""
    max_regions: int = 10
    max_shift: float = 0.2
    """Shift search range as a share of the image size."""
    shift_gain: float = 0.2
    """A shift explains a mask when shifting it raises its Dice with the consensus by at least this."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.numerator not in ("dice", "confident"):
            raise ValueError(f"numerator must be dice or confident, not {self.numerator!r}")
        if self.simulate_from not in ("consensus", "given"):
            raise ValueError(f"simulate_from must be consensus or given, not {self.simulate_from!r}")
        if self.score not in SCORES and self.score != "auto":
            raise ValueError(f"score must be auto or one of {', '.join(SCORES)}, not {self.score!r}")
        self.auto_candidates = tuple(self.auto_candidates)
        bad = [c for c in self.auto_candidates if c not in SCORES]
        if bad or not self.auto_candidates:
            raise ValueError(f"auto_candidates must be keys of SCORES, not {list(self.auto_candidates)!r}")
        if self.auto_by not in ("detection", "auroc"):
            raise ValueError(f"auto_by must be detection or auroc, not {self.auto_by!r}")
        if self.shape_check not in ("off", "mad", "quantile"):
            raise ValueError(f"shape_check must be off, mad or quantile, not {self.shape_check!r}")
        if self.shape_check == "quantile" and self.shape_threshold not in SHAPE_QUANTILES:
            raise ValueError(f"shape_check quantile takes a shape_threshold of {SHAPE_QUANTILES}, "
                             f"not {self.shape_threshold!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SegThresholds:
    """What was learned (without ground truth) to turn suspicions into verdicts; stored in bundles."""

    class_cuts: list[float]
    """Suspicion cut per class (inf: nothing flagged)."""
    precision_steps: list[list[list[float]]]
    """Per class: [[suspicion from, estimated local precision], ...], highest suspicion first."""
    estimated_errors_per_class: list[float]
    dual_agreement: float
    dual_how: str
    n_units: int = 0
    score: str = "suspicion"
    """Which mask score the cuts and steps are on (``SegDetectorConfig.score``; older bundles: suspicion)."""
    score_knots: list[dict[str, list[float]]] = field(default_factory=list)
    """Per class, per feature of a blended score: its quantiles on the learning data (the ranks' scale)."""
    competence: list[dict] = field(default_factory=list)
    """Per class, :class:`~models.seg.competence.ClassCompetence` as a dict (empty: judged, older bundles)."""
    class_scores: list[str] = field(default_factory=list)
    """Per class, the mask score ``score="auto"`` chose (empty: ``score`` for every class)."""
    score_selection: list[dict[str, float]] = field(default_factory=list)
    """Per class, each candidate's measure of how high the simulated wrong masks rank (``score="auto"``)."""
    shape_reference: list[dict[str, float]] = field(default_factory=list)
    """Per class, the solidity of the learning data's non-empty given masks (:func:`shape_reference`: median,
    robust standard deviation, low quantiles); empty: not learned (older bundles, 3-D), no shape check."""

    def scores(self) -> str | list[str]:
        """What :func:`combine_score` takes: the one score, or one per class when it was chosen per class."""
        return list(self.class_scores) if self.class_scores else self.score

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_cuts"] = [None if not np.isfinite(c) else float(c) for c in self.class_cuts]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SegThresholds:
        d = dict(d)
        d["class_cuts"] = [float("inf") if c is None else float(c) for c in d["class_cuts"]]
        return cls(**d)

    def judged(self, k: int) -> list[bool]:
        """Per class (0..k-1): whether the ensemble may flag its masks."""
        return [bool(self.competence[c].get("judged", True)) if c < len(self.competence) else True for c in range(k)]

    def cannot_judge(self, class_names: list[str]) -> dict[str, str]:
        """Class name -> the "cannot judge" sentence, for the classes the ensemble may not flag."""
        return cannot_judge(self.competence, class_names)


@dataclass
class MaskRegion:
    """One connected region where the consensus and the given mask differ."""

    kind: MaskErrorKind
    area_px: int
    area_mm2: float | None
    bbox: tuple[int, int, int, int]
    """(row0, col0, row1, col1), end exclusive, on the scored grid."""
    centroid: tuple[float, float]
    """(row, col)."""

    def to_row(self) -> dict:
        return {"kind": str(self.kind), "area_px": self.area_px, "area_mm2": self.area_mm2,
                "bbox": list(self.bbox), "centroid": [round(c, 2) for c in self.centroid]}


@dataclass
class MaskVerdict:
    """The detector's finding for one (image, class): see the module docstring."""

    index: int
    class_index: int
    """1..K (the label-map value)."""
    class_name: str
    verdict: Verdict
    kind: MaskErrorKind | None
    score: float
    """Estimated probability that the mask is wrong (local precision of the learned cut)."""
    suspicion: float
    """(1 - Dice of consensus and given mask) / (the members' disagreement + eps)."""
    priority: float
    """Re-annotation priority in [0, 1), the worklist's order: (level + r) / 3, level 2 for a suspected mask error,
    1 for a hard case, 0 otherwise, r the evidence against the mask ranked within its class (:func:`evidence_rank`,
    in [0, 1)): suspected errors from 2/3 up, hard cases from 1/3; a flag whose suggested mask is shaped unlike the
    class's masks (``shape_typical`` false) at level 0, among the rest. For a class the models cannot judge (``judged``
    false): 0.999 x the softmin mask score (cleanlab's quality, computed here) / 3, which does not need members
    that agree. Labels' priority (their score) and volumes' lie in [0, 1] too."""
    cut: float
    dice_members: dict[str, float]
    hd95_members: dict[str, float]
    nsd_members: dict[str, float]
    dice_consensus: float
    hd95_consensus: float
    nsd_consensus: float
    agreement_dice: float
    agreement_prob: float
    dual_consistency: bool
    given_area_px: int
    consensus_area_px: int
    distance_unit: str
    regions: list[MaskRegion] = field(default_factory=list)
    consensus: np.ndarray | None = None
    """The consensus mask (bool, scored grid): a plausible correction."""
    prob: np.ndarray | None = None
    """The mean probability map (float32, scored grid)."""
    raw_score: float = 0.0
    """The mask score the cut is on (``SegDetectorConfig.score``): higher is more suspicious."""
    judged: bool = True
    """False: the ensemble cannot judge this class here (models.seg.competence); the mask is never flagged."""
    consensus_solidity: float | None = None
    """The suggested mask's solidity (area over convex hull area), for flagged masks when the shape check is on."""
    shape_typical: bool | None = None
    """Whether the suggested mask is shaped like the class's masks (``SegDetectorConfig.shape_check``); False: the
    flag stands but ranks among the masks not flagged; None: not checked."""

    @property
    def flagged(self) -> bool:
        return self.verdict.flagged

    def to_row(self) -> dict:
        """A JSON-able dict without the arrays."""
        d = {k: v for k, v in self.__dict__.items() if k not in ("consensus", "prob", "regions")}
        d["verdict"] = str(self.verdict)
        d["kind"] = None if self.kind is None else str(self.kind)
        d["regions"] = [r.to_row() for r in self.regions]
        for k, v in list(d.items()):
            if isinstance(v, float):
                d[k] = None if not np.isfinite(v) else round(v, 5)
            elif isinstance(v, dict):
                d[k] = {a: (None if not np.isfinite(x) else round(float(x), 5)) for a, x in v.items()}
        return d


def _smooth_px(shape: tuple[int, ...], cfg: SegDetectorConfig) -> float:
    return max(1.0, cfg.smooth * float(np.prod(shape[-2:])))


def soft_dice(p: np.ndarray, g: np.ndarray, smooth: float) -> np.ndarray:
    """Soft Dice over the last two axes: (2 sum(p g) + smooth) / (sum p + sum g + smooth)."""
    p, g = p.astype(np.float64), g.astype(np.float64)
    inter = (p * g).sum(axis=(-1, -2))
    return (2 * inter + smooth) / (p.sum(axis=(-1, -2)) + g.sum(axis=(-1, -2)) + smooth)


def _prob_agreement(p: np.ndarray, smooth: float) -> np.ndarray:
    """Mean pairwise probability-map Dice 2 sum(pa pb) / (sum pa^2 + sum pb^2) over members (axis 0)."""
    vals = []
    for a, b in combinations(range(len(p)), 2):
        pa, pb = p[a].astype(np.float64), p[b].astype(np.float64)
        vals.append((2 * (pa * pb).sum(axis=(-1, -2)) + smooth)
                    / ((pa * pa).sum(axis=(-1, -2)) + (pb * pb).sum(axis=(-1, -2)) + smooth))
    return np.mean(vals, axis=0) if vals else np.ones(p.shape[1:-2])


def _hard_dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dice over the last two axes of bool masks; both empty -> 1."""
    inter = (a & b).sum(axis=(-1, -2)).astype(np.float64)
    tot = a.sum(axis=(-1, -2)) + b.sum(axis=(-1, -2))
    return np.where(tot > 0, 2 * inter / np.maximum(tot, 1), 1.0)


def _surface_metrics(pred: np.ndarray, given: np.ndarray, spacing: tuple[float, float] | None,
                     cfg: SegDetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """HD95 and normalised surface Dice (monai.metrics) of bool (U, H, W) pairs; empty cases made finite:
    both empty -> (0, 1), one empty -> (image diagonal, 0)."""
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    u, h, w = pred.shape
    sy, sx = spacing or (1.0, 1.0)
    diag = float(np.hypot(h * sy, w * sx))
    hd = np.zeros(u)
    nsd = np.ones(u)
    pe, ge = pred.reshape(u, -1).any(1), given.reshape(u, -1).any(1)
    one = pe ^ ge
    hd[one], nsd[one] = diag, 0.0
    both = np.flatnonzero(pe & ge)
    if len(both):
        yp = torch.from_numpy(pred[both][:, None].astype(np.float32))
        yg = torch.from_numpy(given[both][:, None].astype(np.float32))
        sp = None if spacing is None else [float(sy), float(sx)]
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd[both] = compute_hausdorff_distance(yp, yg, include_background=True, percentile=95,
                                                  spacing=sp).numpy()[:, 0]
            tol = cfg.nsd_tolerance_px * (float(np.mean([sy, sx])) if spacing else 1.0)
            nsd[both] = compute_surface_dice(yp, yg, class_thresholds=[tol], include_background=True,
                                             spacing=sp).numpy()[:, 0]
    return np.nan_to_num(hd, nan=diag, posinf=diag), np.nan_to_num(nsd, nan=0.0)


@dataclass
class SegUnits:
    """Every unit's numbers as arrays (U = N x K units, image-major): what verdicts and benchmarks use."""

    image: np.ndarray
    cls: np.ndarray
    """0-based class channel."""
    suspicion: np.ndarray
    """(1 - mask_dice) / (member_disagreement + eps)."""
    mask_dice: np.ndarray
    """Smoothed Dice of the consensus mask with the given mask."""
    member_disagreement: np.ndarray
    """1 - mean pairwise probability-map Dice of the members."""
    dice_members: np.ndarray
    """(members, U)."""
    dice_consensus: np.ndarray
    dice_mean_prob: np.ndarray
    """Soft Dice of the mean probability map with the given mask."""
    agreement_dice: np.ndarray
    agreement_prob: np.ndarray
    given: np.ndarray
    """(U, H, W) bool."""
    consensus: np.ndarray
    prob: np.ndarray
    unanimous: np.ndarray
    """(U, H, W) bool: pixels where every member's mask says the same."""
    softmin: np.ndarray | None = None
    """1 - cleanlab's softmin quality of the given mask on the mean probability map (higher: more suspicious)."""
    logit_lo: np.ndarray | None = None
    """(U, H, W) the smallest member log-odds of "inside" per pixel (probabilities clipped to [1e-3, 1 - 1e-3])."""
    logit_hi: np.ndarray | None = None
    """(U, H, W) the largest member log-odds of "inside" per pixel."""
    confident_thresholds: np.ndarray | None = None
    """(K, 2) per class, confident learning's thresholds on the mean probability from the given masks:
    [mean P(outside) over the pixels given outside, mean P(inside) over the pixels given inside]."""


def unit_scores(probs: np.ndarray, given: np.ndarray, cfg: SegDetectorConfig | None = None) -> SegUnits:
    """The per-unit overlap and agreement numbers (no surface distances) for probs (M, N, K, H, W)."""
    cfg = cfg or SegDetectorConfig()
    probs = np.asarray(probs, np.float32)
    if probs.ndim != 5:
        raise ValueError(f"probabilities must be (members, N, K, H, W), got {probs.shape}")
    m, n, k, h, w = probs.shape
    g = to_channels(given, k)
    if g.shape != (n, k, h, w):
        raise ValueError(f"given masks {g.shape} do not match the probabilities {(n, k, h, w)}")
    sm = _smooth_px((h, w), cfg)
    pbar = probs.mean(axis=0)
    cons = pbar > cfg.threshold
    member_masks = probs > cfg.threshold
    ag_d = np.mean([_hard_dice(member_masks[a], member_masks[b]) for a, b in combinations(range(m), 2)], axis=0) \
        if m > 1 else np.ones((n, k))
    sd = soft_dice(pbar, g, sm)
    md = soft_dice(cons, g, sm).reshape(-1)
    dis = 1.0 - _prob_agreement(probs, sm).reshape(-1)
    unan = (member_masks.all(0) | (~member_masks).all(0)).reshape(n * k, h, w)
    pc = np.clip(probs, 1e-3, 1.0 - 1e-3)
    logit = np.log(pc) - np.log1p(-pc)
    lo, hi = logit.min(axis=0), logit.max(axis=0)
    num = _numerator(cons.reshape(n * k, h, w), g.reshape(n * k, h, w), unan, md, sm, cfg)
    return SegUnits(
        image=np.repeat(np.arange(n), k), cls=np.tile(np.arange(k), n), suspicion=num / (dis + cfg.eps),
        mask_dice=md, member_disagreement=dis,
        dice_members=np.stack([_hard_dice(member_masks[j], g).reshape(-1) for j in range(m)]),
        dice_consensus=_hard_dice(cons, g).reshape(-1), dice_mean_prob=sd.reshape(-1),
        agreement_dice=np.asarray(ag_d).reshape(-1), agreement_prob=1.0 - dis,
        given=g.reshape(n * k, h, w), consensus=cons.reshape(n * k, h, w), prob=pbar.reshape(n * k, h, w),
        unanimous=unan, logit_lo=lo.reshape(n * k, h, w), logit_hi=hi.reshape(n * k, h, w),
        softmin=1.0 - softmin_quality(pbar.reshape(n * k, h, w), g.reshape(n * k, h, w),
                                                      cfg.softmin_temperature),
        confident_thresholds=confident_thresholds(pbar.reshape(n * k, h, w), g.reshape(n * k, h, w),
                                                  np.tile(np.arange(k), n), k))


def confident_thresholds(prob: np.ndarray, given: np.ndarray, cls: np.ndarray, k: int) -> np.ndarray:
    """Confident learning's per-class thresholds for each class's binary problem (inside / outside its mask):
    the mean self-confidence of each given label over the pixels that carry it, on the mean probability.

    Parameters
    ----------
    prob : (U, ...) mean probability of "inside" per unit, any spatial dimension.
    given : (U, ...) bool, the given masks (the observed ones: simulated masks reuse these thresholds).
    cls : (U,) 0-based class of each unit; ``k`` the number of classes.

    Returns
    -------
    (k, 2): [threshold of "outside" (mean 1 - p where the mask says outside), threshold of "inside" (mean p
    where it says inside)]; 0.5 for a label no pixel of the class carries.
    """
    p = np.asarray(prob, np.float64).reshape(len(prob), -1)
    g = np.asarray(given, bool).reshape(len(p), -1)
    cls = np.asarray(cls, np.int64)
    out = np.full((k, 2), 0.5)
    for c in range(k):
        pc, gc = p[cls == c], g[cls == c]
        if (~gc).any():
            out[c, 0] = float((1.0 - pc[~gc]).mean())
        if gc.any():
            out[c, 1] = float(pc[gc].mean())
    return out


def _numerator(cons: np.ndarray, given: np.ndarray, unan: np.ndarray, mask_dice: np.ndarray | None, sm: float,
               cfg: SegDetectorConfig) -> np.ndarray:
    """How much the consensus disagrees with the mask, over the last two axes (see ``numerator``)."""
    if cfg.numerator == "dice":
        md = soft_dice(cons, given, sm) if mask_dice is None else mask_dice
        return 1.0 - np.asarray(md, np.float64)
    diff = ((cons != given) & unan).sum(axis=(-1, -2))
    return diff / ((cons | given).sum(axis=(-1, -2)) + sm)


def softmin_quality(prob: np.ndarray, given: np.ndarray, temperature: float = 0.1) -> np.ndarray:
    """cleanlab's ``softmin`` mask quality (``cleanlab.segmentation.rank``) of bool masks ``given`` (U, ...)
    on probability maps ``prob`` (U, ...) of any spatial dimension: the pixels' self-confidence (p where
    the mask says inside, 1 - p outside) averaged with weights softmax(-confidence / temperature)."""
    p = np.asarray(prob, np.float64).reshape(len(prob), -1)
    sc = np.where(np.asarray(given, bool).reshape(len(p), -1), p, 1.0 - p)
    if sc.shape[1] == 0:
        return np.ones(len(sc))
    w = np.exp(-(sc - sc.min(axis=1, keepdims=True)) / temperature)
    return (sc * w).sum(axis=1) / w.sum(axis=1)


SCORES: dict[str, tuple[str, ...]] = {"suspicion": ("suspicion",), "softmin": ("softmin",), "evidence": ("evidence",),
                                      "blend": ("suspicion", "evidence"),
                                      "blend_softmin": ("suspicion", "softmin"),
                                      "blend3": ("suspicion", "evidence", "softmin"),
                                      "wrong_pixels": ("wrong_pixels",),
                                      "blend_pixels": ("suspicion", "evidence", "wrong_pixels"),
                                      "blend_pixels2": ("suspicion", "wrong_pixels"),
                                      "blend_pixels_sqrt": ("suspicion", "evidence", "wrong_pixels_sqrt"),
                                      "blend_pixels_sqrt_cl": ("suspicion", "evidence", "wrong_pixels_sqrt",
                                                               "cl_pixels"),
                                      "blend_pixels_sqrt_cl_sqrt": ("suspicion", "evidence", "wrong_pixels_sqrt",
                                                                    "cl_pixels_sqrt"),
                                      "blend_cl": ("suspicion", "evidence", "cl_pixels"),
                                      "blend_cl_sqrt": ("suspicion", "evidence", "cl_pixels_sqrt"),
                                      "evidence_pixels_sqrt": ("evidence", "wrong_pixels_sqrt")}
"""Mask scores -> the features they combine (one feature: itself; several: the mean of their ranks).
``blend_pixels*`` add the count of confidently wrong pixels (``wrong_pixels``, or divided by the square root
of the size as the evidence: ``wrong_pixels_sqrt``); ``blend_pixels_sqrt`` is the default. ``*_cl*`` use the
count of pixels wrong under confident learning's per-class thresholds (``cl_pixels``, ``cl_pixels_sqrt``).
``evidence_pixels_sqrt`` leaves the suspicion out (a candidate of ``benchmarks/segmentation_dev.py --variants
evidence``)."""
KNOTS = 201


def features_of(score: str | list[str], cfg: SegDetectorConfig | None = None) -> set[str]:
    """The features :func:`combine_score` reads for ``score`` (one name, or one per class; ``auto``: every
    candidate's of ``cfg``)."""
    names = [score] if isinstance(score, str) else list(score)
    if "auto" in names:
        names = [n for n in names if n != "auto"] + list((cfg or SegDetectorConfig()).auto_candidates)
    return {f for n in names for f in SCORES[n]}


def mask_features(units: SegUnits, idx: np.ndarray, masks: np.ndarray, cfg: SegDetectorConfig,
                  wanted: set[str] | None = None) -> dict[str, np.ndarray]:
    """The features of ``masks`` (S, ...) bool, each judged against the probabilities of unit ``idx[s]``
    (the given masks themselves with ``idx = arange(U)``): one code path for real and simulated masks, any
    spatial dimension.

    ``suspicion``, ``softmin``, and with the members' log-odds: ``evidence`` (the least convinced member's
    log-odds against the mask, summed over the pixels where every member is against it, divided by
    sqrt(|mask| + |consensus| + smoothing)), ``wrong_pixels`` (how many pixels every member puts on the
    other side of the mask with probability > ``pixel_confidence``) and ``wrong_pixels_sqrt`` (that count
    divided by the same square root); with the mean probability: ``cl_pixels``, the pixels wrong under
    confident learning's thresholds (``units.confident_thresholds``, from the given masks and reused
    unchanged for any other mask: the other label's mean probability reaches its threshold, and the mask's
    label's is below its own or below the other's) and ``cl_pixels_sqrt`` (divided by the same square root).
    ``wanted``: only these features (and what they are computed from; default: all of them)."""
    def want(*names: str) -> bool:
        return wanted is None or any(n in wanted for n in names)

    idx = np.asarray(idx, np.int64)
    flat = (len(idx), -1, 1)  # soft Dice sums the last two axes: one axis of all pixels, any dimension
    sm = max(1.0, cfg.smooth * float(np.prod(units.prob.shape[1:])))
    masks = np.asarray(masks, bool).reshape(flat)
    num = _numerator(units.consensus[idx].reshape(flat), masks, units.unanimous[idx].reshape(flat), None, sm, cfg)
    out = {"suspicion": num / (units.member_disagreement[idx] + cfg.eps)}
    if want("softmin"):
        out["softmin"] = 1.0 - softmin_quality(units.prob[idx], masks[..., 0], cfg.softmin_temperature)
    if units.logit_lo is not None and units.logit_hi is not None:
        w = masks[..., 0]
        lo, hi = units.logit_lo[idx].reshape(w.shape), units.logit_hi[idx].reshape(w.shape)
        margin = np.where(w, -hi, lo)  # the least convinced member's log-odds of the other label than the mask's
        against = np.clip(margin, 0.0, None).sum(axis=1)  # > 0 where every member is against the mask
        size = w.sum(axis=1) + units.consensus[idx].reshape(w.shape).sum(axis=1) + sm
        out["evidence"] = against / np.sqrt(size)
        conf = float(np.clip(cfg.pixel_confidence, 1e-3, 1.0 - 1e-3))
        wrong = (margin > np.log(conf) - np.log1p(-conf)).sum(axis=1).astype(np.float64)
        out["wrong_pixels"] = wrong
        out["wrong_pixels_sqrt"] = wrong / np.sqrt(size)
        if units.prob.size and want("cl_pixels", "cl_pixels_sqrt"):
            th = units.confident_thresholds
            if th is None:
                k = int(units.cls.max(initial=-1)) + 1
                th = confident_thresholds(units.prob, units.given, units.cls, k)
            t_out, t_in = (th[units.cls[idx], j][:, None] for j in (0, 1))
            p = units.prob[idx].reshape(w.shape).astype(np.float64)
            # self-confidence of the mask's label and the other label's probability, with their thresholds
            own, other = np.where(w, p, 1.0 - p), np.where(w, 1.0 - p, p)
            t_own, t_other = np.where(w, t_in, t_out), np.where(w, t_out, t_in)
            cl = (other >= t_other) & ((own < t_own) | (other > own))
            out["cl_pixels"] = cl.sum(axis=1).astype(np.float64)
            out["cl_pixels_sqrt"] = out["cl_pixels"] / np.sqrt(size)
    return out


def _knots(feats: dict[str, np.ndarray], cls: np.ndarray, k: int,
           score: str | list[str]) -> list[dict[str, list[float]]]:
    """Per class, the quantiles of each feature of a blended score (one per class: a list) on the observed masks."""
    per_class = [score] * k if isinstance(score, str) else list(score)
    if all(len(SCORES[s]) < 2 for s in per_class):
        return []
    q = np.linspace(0.0, 1.0, KNOTS)
    out = []
    for c in range(k):
        sel = cls == c
        names = SCORES[per_class[c]] if len(SCORES[per_class[c]]) > 1 else ()
        out.append({f: ([float(x) for x in np.quantile(feats[f][sel], q)] if sel.any() else [0.0, 1.0])
                    for f in names})
    return out


def _squash(x: np.ndarray) -> np.ndarray:
    """A monotone map of scores >= 0 into [0, 1) that keeps large ones apart (a tie-break)."""
    return x / (1.0 + np.abs(x))


def combine_score(feats: dict[str, np.ndarray], cls: np.ndarray, score: str | list[str],
                  knots: list[dict[str, list[float]]]) -> np.ndarray:
    """The mask score from its features: the feature itself, or the mean of the features' ranks in their
    class (rank = position among the learning data's masks, from ``knots``), plus a 1e-6 tie-break.
    ``score``: a key of ``SCORES``, or one per class (0-based ``cls`` indexes the list)."""
    cls = np.asarray(cls, np.int64)
    if isinstance(score, str):
        names = SCORES[score]
        if len(names) == 1:
            return np.asarray(feats[names[0]], np.float64)
    out = np.zeros(len(cls))
    for c in np.unique(cls):
        sel = cls == c
        names = SCORES[score if isinstance(score, str) else score[int(c)]]
        first_feat = np.asarray(feats[names[0]][sel], np.float64)
        if len(names) == 1:
            out[sel] = first_feat
            continue
        kn = knots[int(c)] if int(c) < len(knots) else {}
        for f in names:
            xs = np.asarray(kn.get(f, [0.0, 1.0]), np.float64)
            ys = np.linspace(0.0, 1.0, len(xs))
            xs, first = np.unique(xs, return_index=True)  # ties in the data: the lowest rank of a tie
            out[sel] += np.interp(feats[f][sel], xs, ys[first]) / len(names)
        out[sel] += 1e-6 * _squash(first_feat)
    return out


def _sim_rank(obs: np.ndarray, sim: np.ndarray, sim_w: np.ndarray, by: str, quantile: float) -> float:
    """How high simulated wrong masks' scores ``sim`` rank among the given masks' ``obs`` (see ``auto_by``)."""
    if by == "detection":
        return float(np.mean(sim > np.quantile(obs, quantile)))
    o = np.sort(obs)
    below = np.searchsorted(o, sim, side="left") + 0.5 * (np.searchsorted(o, sim, side="right")
                                                          - np.searchsorted(o, sim, side="left"))
    return float(np.sum(sim_w * below / len(o)) / np.sum(sim_w))


def choose_class_scores(feats: dict[str, np.ndarray], cls: np.ndarray, sim_feats: dict[str, np.ndarray],
                        sim_unit: np.ndarray, k: int, cfg: SegDetectorConfig
                        ) -> tuple[list[str], list[dict[str, float]]]:
    """Per class, the one of ``cfg.auto_candidates`` under which the simulated wrong masks rank highest among
    the given masks (no ground truth: most given masks are right, so a score that puts the simulated errors
    above them is one that separates errors from this data's masks).

    Parameters
    ----------
    feats : :func:`mask_features` of the given masks (U units); ``cls`` their 0-based classes.
    sim_feats : :func:`mask_features` of the simulated wrong masks, each judged against unit ``sim_unit[s]``.

    Returns
    -------
    (the chosen score per class, per class each candidate's measure); a tie or a class with nothing to
    compare keeps the earlier candidate.
    """
    cls = np.asarray(cls, np.int64)
    sim_unit = np.asarray(sim_unit, np.int64)
    sim_cls = cls[sim_unit] if len(sim_unit) else np.zeros(0, np.int64)
    per_unit = np.bincount(sim_unit, minlength=len(cls)).astype(np.float64)
    sim_w = 1.0 / np.maximum(per_unit[sim_unit], 1.0) if len(sim_unit) else np.zeros(0)
    chosen, measures = [], []
    for c in range(k):
        sel, ssel = cls == c, sim_cls == c
        m: dict[str, float] = {}
        best = cfg.auto_candidates[0]
        if sel.any() and ssel.any():
            one = np.zeros(int(sel.sum()), np.int64)
            for cand in cfg.auto_candidates:
                fo = {f: feats[f][sel] for f in SCORES[cand]}
                fs = {f: sim_feats[f][ssel] for f in SCORES[cand]}
                kn = _knots(fo, one, 1, cand)
                m[cand] = _sim_rank(combine_score(fo, one, cand, kn),
                                    combine_score(fs, np.zeros(int(ssel.sum()), np.int64), cand, kn),
                                    sim_w[ssel], cfg.auto_by, cfg.detection_quantile)
                if m[cand] > m[best] + 1e-12:
                    best = cand
        chosen.append(best)
        measures.append({a: round(v, 6) for a, v in m.items()})
    return chosen, measures


def _simulated_masks(units: SegUnits, n_classes: int, source: np.ndarray, cfg: SegDetectorConfig,
                     salt: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit index, bool mask) of every simulated wrong mask: each unit's ``source`` mask corrupted by each
    applicable operation of ``models.seg.corruption`` (wrong class: another class's ``source`` added)."""
    rng = np.random.default_rng(cfg.seed + salt)
    idx_out, masks = [], []
    by_image: dict[int, list[int]] = {}
    for u, i in enumerate(units.image):
        by_image.setdefault(int(i), []).append(u)
    for u in range(len(units.image)):
        src = source[u].astype(np.int64)
        for op in CORRUPTIONS:
            if op == "wrong_class":
                others = [v for v in by_image[int(units.image[u])] if v != u and source[v].any()]
                if n_classes < 2 or not others:
                    continue
                other = source[others[int(rng.integers(len(others)))]] & ~source[u]
                if not other.any():
                    continue
                wm = source[u] | other
            elif applicable(src, op, 1):
                wm = _apply(src, op, rng, 1)[0] > 0
            else:
                continue
            if np.any(wm != source[u]):
                idx_out.append(u)
                masks.append(wm)
    shape = (0,) + tuple(source.shape[1:])
    return np.asarray(idx_out, np.int64), (np.stack(masks) if masks else np.zeros(shape, bool))


def _flag_cap(n_err: float, margin: float) -> int:
    return int(np.floor(n_err + margin * np.sqrt(max(n_err, 0.0)) + 1.0)) if n_err > 0 else 0


def learn_seg_cut(probs: np.ndarray | None, given: np.ndarray | None, cfg: SegDetectorConfig | None = None,
                  units: SegUnits | None = None, *, archs: list[str] | None = None,
                  class_names: list[str] | None = None,
                  simulated: tuple[np.ndarray, np.ndarray] | None = None) -> SegThresholds:
    """labelqa's per-class cut and the ensemble's competence from out-of-fold predictions (no ground truth).

    Every unit's given mask is corrupted by each planted-error operation and scored against the same
    probabilities (the simulated wrong masks). Per class: the competence (``models.seg.competence``:
    median out-of-fold Dice, member agreement, the share of simulated wrong masks scoring in the top
    10% of the given masks); the number of wrong masks from the upper tail (min over cuts of #observed
    above / P(simulated above), as ``models.detector.simulated_flip_cut``); each unit's local precision
    from the least concave majorant; the flags maximise the estimated F1, at most the estimated count
    + ``flag_margin`` x its square root + 1 per class.

    Parameters
    ----------
    probs : (members, N, K, H, W) out-of-fold sigmoid probabilities (None when ``units`` are given).
    given : the given masks, (N, H, W) label maps or (N, K, H, W) channels (None when ``units`` are given).
    units : the units' numbers, when already computed (the cut reads ``cls``, ``suspicion``,
        ``dice_members`` and ``agreement_dice``).
    simulated : (unit index, suspicion) of simulated wrong masks made by the caller (e.g. 3-D
        corruptions of volumes); default: this module's 2-D corruptions of each unit's consensus.
    """
    cfg = cfg or SegDetectorConfig()
    selection: list[dict[str, float]] = []
    if simulated is not None:  # the caller's statistic (units.suspicion) and its own simulated wrong masks
        if units is None:
            raise ValueError("learn_seg_cut(simulated=...) needs the units")
        k = int(units.cls.max(initial=-1)) + 1
        obs = np.asarray(units.suspicion, np.float64)
        sim_u, sim_s = (np.asarray(a) for a in simulated)
        knots: list[dict[str, list[float]]] = []
        g_idx, g_score = sim_u, sim_s
        judge_competence = False
    else:
        k = int(np.asarray(probs).shape[2])
        units = units or unit_scores(probs, given, cfg)  # type: ignore[arg-type]
        wanted = features_of(cfg.score, cfg)
        feats = mask_features(units, np.arange(len(units.cls)), units.given, cfg, wanted)
        g_idx, g_masks = _simulated_masks(units, k, units.given, cfg, 3_000_017)
        g_feats = mask_features(units, g_idx, g_masks, cfg, wanted)
        score: str | list[str] = cfg.score
        if cfg.score == "auto":
            score, selection = choose_class_scores(feats, units.cls, g_feats, g_idx, k, cfg)
        knots = _knots(feats, units.cls, k, score)
        obs = combine_score(feats, units.cls, score, knots)
        g_score = combine_score(g_feats, units.cls[g_idx], score, knots)
        if cfg.simulate_from == "given":
            sim_u, sim_s = g_idx, g_score
        else:
            sim_u, c_masks = _simulated_masks(units, k, units.consensus, cfg, 3_000_019)
            sim_s = combine_score(mask_features(units, sim_u, c_masks, cfg, wanted), units.cls[sim_u], score, knots)
        judge_competence = True
    sim_cls = units.cls[sim_u] if len(sim_u) else np.zeros(0, np.int64)
    # each unit's simulations weigh 1 in total, so structure-rich units do not dominate
    per_unit = np.bincount(sim_u, minlength=len(units.cls)).astype(np.float64)
    sim_w = 1.0 / np.maximum(per_unit[sim_u], 1.0) if len(sim_u) else np.zeros(0)
    names = list(class_names) if class_names is not None else [f"class_{c}" for c in range(1, k + 1)]
    n = len(units.cls)
    prec = np.zeros(n)
    steps: list[list[list[float]]] = []
    errors: list[float] = []
    competence = []
    for c in range(k):
        idx = np.flatnonzero(units.cls == c)
        gsel = units.cls[g_idx] == c
        rate = (float(np.mean(g_score[gsel] > np.quantile(obs[idx], cfg.detection_quantile)))
                if gsel.any() and len(idx) else None)
        if judge_competence:
            has = np.asarray(units.given[idx].reshape(len(idx), -1).any(axis=1), bool)
            competence.append(class_competence(
                names[c], units.dice_members[:, idx], units.agreement_dice[idx], has, rate, min_dice=cfg.min_dice,
                min_detection=cfg.min_detection, archs=archs).to_dict())
        sel = sim_cls == c
        if not len(idx) or not sel.any():
            steps.append([])
            errors.append(0.0)
            continue
        order = idx[np.argsort(-obs[idx], kind="stable")]
        s_sorted = obs[order]
        o = np.argsort(sim_s[sel], kind="stable")
        sim, w = sim_s[sel][o], sim_w[sel][o]
        w_above = np.concatenate([np.cumsum(w[::-1])[::-1], [0.0]]) / w.sum()
        p_above = w_above[np.searchsorted(sim, s_sorted, side="left")]
        rank = np.arange(1, len(idx) + 1)
        ok = (p_above >= cfg.tail_floor) & (rank >= cfg.tail_min_count)
        n_err = min(_tail_count(rank[ok], p_above[ok], cfg.count_z) if ok.any() else 0.0, float(len(idx)))
        slopes = _concave_majorant_slopes(np.minimum(n_err * p_above, rank))
        prec[order] = slopes
        errors.append(n_err)
        st: list[list[float]] = []
        for sv, q in zip(s_sorted, slopes, strict=True):
            if not st or q < st[-1][1] - 1e-12:
                st.append([float(sv), float(q)])
            else:
                st[-1][0] = float(sv)
        steps.append(st)
    order = np.argsort(-(prec + 1e-9 * _squash(obs)), kind="stable")
    est_tp = np.cumsum(prec[order])
    total = sum(errors)
    n_flag = int(np.argmax(2 * est_tp / (np.arange(1, n + 1) + max(total, 1e-12)))) + 1 if total > 0 and n else 0
    flags = np.zeros(n, bool)
    flags[order[:n_flag]] = True
    flags &= prec > 0
    cuts = []
    for c in range(k):
        fc = flags & (units.cls == c)
        cap = _flag_cap(errors[c], cfg.flag_margin)
        if fc.sum() > cap:  # never more flags than the estimated count allows
            top = np.flatnonzero(fc)[np.argsort(-obs[fc], kind="stable")]
            flags[top[cap:]] = False
            fc = flags & (units.cls == c)
        cuts.append(float(obs[fc].min()) if fc.any() else float("inf"))
    unanimous = np.all(units.dice_members < cfg.dual_dice, axis=0)
    tau, how = gmm_threshold(units.agreement_dice[unanimous], default=0.5, seed=cfg.seed)
    per_class = [] if simulated is not None or isinstance(score, str) else list(score)
    shapes = shape_reference(units.given, units.cls, k) if judge_competence else []
    return SegThresholds(cuts, steps, [float(e) for e in errors], float(tau), how, n,
                         cfg.score if judge_competence else "statistic", knots, competence, per_class, selection,
                         shapes)


def _shift_gain(g: np.ndarray, c: np.ndarray, cfg: SegDetectorConfig) -> tuple[float, tuple[int, int]]:
    """Best Dice gain of shifting ``g`` onto ``c`` (integer shifts up to max_shift x size; FFT correlation)."""
    from scipy.signal import fftconvolve

    h, w = g.shape
    r = max(2, int(round(cfg.max_shift * min(h, w))))
    corr = fftconvolve(c.astype(np.float64), g[::-1, ::-1].astype(np.float64), mode="full")
    cy, cx = h - 1, w - 1  # zero shift
    win = corr[cy - r:cy + r + 1, cx - r:cx + r + 1]
    dy, dx = np.unravel_index(int(np.argmax(win)), win.shape)
    best = float(win[dy, dx])
    tot = float(g.sum() + c.sum())
    d0 = 2 * float((g & c).sum()) / tot if tot else 1.0
    return (2 * best / tot if tot else 1.0) - d0, (int(dy) - r, int(dx) - r)


def mask_regions(given: np.ndarray, consensus: np.ndarray, *, other_consensus: np.ndarray | None = None,
                 other_given: np.ndarray | None = None, spacing: tuple[float, float] | None = None,
                 cfg: SegDetectorConfig | None = None) -> tuple[list[MaskRegion], MaskErrorKind | None]:
    """Regions where ``consensus`` and ``given`` (bool (H, W), one class) differ, typed; and the mask-level kind.

    ``other_consensus`` / ``other_given``: the union of the other classes' consensus / given masks
    (a difference inside them is another class's structure: ``wrong_segment_type``)."""
    from scipy.ndimage import label

    cfg = cfg or SegDetectorConfig()
    g, c = given.astype(bool), consensus.astype(bool)
    eight = np.ones((3, 3), bool)
    missing, extra = c & ~g, g & ~c
    shifted = False
    if g.sum() >= cfg.min_region_px and c.sum() >= cfg.min_region_px and _hard_dice(g, c) < 0.8:
        gain, (dy, dx) = _shift_gain(g, c, cfg)
        shifted = gain >= cfg.shift_gain and max(abs(dy), abs(dx)) >= 2
    c_lab, _ = label(c, structure=eight)
    g_lab, _ = label(g, structure=eight)
    regions: list[MaskRegion] = []
    sy, sx = spacing or (1.0, 1.0)
    for diff, is_missing in ((missing, True), (extra, False)):
        lab, n = label(diff, structure=eight)
        for r in range(1, n + 1):
            px = lab == r
            area = int(px.sum())
            if area < cfg.min_region_px:
                continue
            other = other_given if is_missing else other_consensus
            if shifted:
                kind = MaskErrorKind.SHIFTED
            elif other is not None and np.sum(px & other) >= 0.5 * area:
                kind = MaskErrorKind.WRONG_SEGMENT_TYPE
            elif is_missing:
                comps = np.unique(c_lab[px])
                kind = (MaskErrorKind.BOUNDARY_TOO_TIGHT if np.any(g & np.isin(c_lab, comps[comps > 0]))
                        else MaskErrorKind.MISSING_STRUCTURE)
            else:
                comps = np.unique(g_lab[px])
                kind = (MaskErrorKind.BOUNDARY_TOO_LOOSE if np.any(c & np.isin(g_lab, comps[comps > 0]))
                        else MaskErrorKind.SPURIOUS_STRUCTURE)
            ys, xs = np.nonzero(px)
            regions.append(MaskRegion(kind, area, float(area * sy * sx) if spacing else None,
                                      (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1),
                                      (float(ys.mean()), float(xs.mean()))))
    regions.sort(key=lambda r: -r.area_px)
    if not regions:
        return [], None
    by_kind: dict[MaskErrorKind, int] = {}
    for reg in regions:
        by_kind[reg.kind] = by_kind.get(reg.kind, 0) + reg.area_px
    return regions[:cfg.max_regions], max(by_kind, key=lambda kk: by_kind[kk])


SHAPE_QUANTILES = (0.005, 0.01, 0.05)
"""The quantiles of the given masks' solidities a :class:`SegThresholds` keeps (``shape_check="quantile"``)."""

SHAPE_MIN_MASKS = 20
"""The fewest non-empty given masks of a class whose solidities make a shape reference: with fewer, the median and
its spread say little about how the class's masks are drawn, and no flag of the class is checked (every saved
benchmark run has at least 81)."""

SHAPE_MIN_SPREAD = 0.005
"""The least robust standard deviation of the given masks' solidities that ``shape_check="mad"`` uses: a class of
near-identical shapes (drawn from a template) would otherwise call any slightly uneven suggested mask atypical. Below
every real set's spread (HC18's fetal heads, the most uniform, 0.009), so it changes no saved benchmark run."""


def solidity(mask: np.ndarray) -> float:
    """A 2-D mask's area over the area of the convex hull of its pixel squares (1 for a convex shape; lower for
    two blobs joined, a crescent, a tree). 1.0 for fewer than 3 pixels or a degenerate hull."""
    from scipy.ndimage import binary_erosion
    from scipy.spatial import ConvexHull, QhullError

    m = np.asarray(mask, bool)
    n = int(m.sum())
    if n < 3 or m.ndim != 2:
        return 1.0
    ys, xs = np.nonzero(m & ~binary_erosion(m))  # the boundary spans the same hull
    pts = np.concatenate([np.stack([ys + dy, xs + dx], axis=1) for dy in (0, 1) for dx in (0, 1)]).astype(np.float64)
    try:
        hull = float(ConvexHull(pts).volume)
    except (QhullError, ValueError):
        return 1.0
    return float(min(n / hull, 1.0)) if hull > 0 else 1.0


def shape_reference(given: np.ndarray, cls: np.ndarray, k: int) -> list[dict[str, float]]:
    """Per class, the solidity of its non-empty given masks (U, H, W): median, robust standard deviation
    (1.4826 x median absolute deviation), the :data:`SHAPE_QUANTILES` and how many masks; empty for 3-D masks."""
    g = np.asarray(given, bool)
    if g.ndim != 3:
        return []
    out: list[dict[str, float]] = []
    for c in range(k):
        sol = np.array([solidity(m) for m in g[cls == c] if m.any()])
        if not len(sol):
            out.append({})
            continue
        med = float(np.median(sol))
        ref = {"median": med, "mad": float(1.4826 * np.median(np.abs(sol - med))), "n": float(len(sol))}
        ref.update({f"q{q:g}": float(np.quantile(sol, q)) for q in SHAPE_QUANTILES})
        out.append(ref)
    return out


def shape_checkable(ref: dict[str, float]) -> bool:
    """Whether a class's shape reference holds enough masks (:data:`SHAPE_MIN_MASKS`) to check flags against."""
    return bool(ref) and ref.get("n", 0.0) >= SHAPE_MIN_MASKS


def shape_atypical(sol: float, ref: dict[str, float], cfg: SegDetectorConfig) -> bool:
    """Whether a suggested mask's solidity lies below the class's masks' (``cfg.shape_check``; False when off or
    the class has no reference of at least :data:`SHAPE_MIN_MASKS` masks)."""
    if cfg.shape_check == "off" or not shape_checkable(ref):
        return False
    if cfg.shape_check == "mad":
        return sol < ref["median"] - cfg.shape_threshold * max(ref["mad"], SHAPE_MIN_SPREAD)
    return sol < ref[f"q{cfg.shape_threshold:g}"]


PRIORITY_LEVEL = {Verdict.SUSPECTED_MASK_ERROR: 2.0, Verdict.HARD_CASE: 1.0, Verdict.CONSISTENT: 0.0}
"""The verdict's part of a mask's priority: suspected errors first, then hard cases, then the rest."""


def evidence_rank(evidence: np.ndarray | None, cls: np.ndarray, knots: list[dict[str, list[float]]]) -> np.ndarray:
    """The evidence against each mask as its rank in its class among the learning data's masks (the cut's
    ``knots`` of ``evidence``; without them a monotone squash), scaled into [0, 0.999] with a 1e-6 tie-break:
    the within-verdict part of the priority, comparable across classes.

    The evidence alone ranks the planted wrong masks best of labelqa's features on the saved benchmark runs
    (``benchmarks/segmentation_dev.py``, ``PRIORITY_RULE``), while the cut keeps the blended score."""
    cls = np.asarray(cls, np.int64)
    if evidence is None:
        return np.zeros(len(cls))
    ev = np.asarray(evidence, np.float64)
    out = np.asarray(_squash(np.clip(ev, 0.0, None)), np.float64)
    for c in np.unique(cls):
        kn = knots[int(c)] if int(c) < len(knots) else {}
        if "evidence" not in kn:
            continue
        sel = cls == c
        xs = np.asarray(kn["evidence"], np.float64)
        xs, first = np.unique(xs, return_index=True)
        out[sel] = np.interp(ev[sel], xs, np.linspace(0.0, 1.0, len(kn["evidence"]))[first])
    return 0.999 * out + 1e-6 * np.asarray(_squash(np.clip(ev, 0.0, None)), np.float64)


def score_masks(oof_probs: np.ndarray, given_masks: np.ndarray, spacing: tuple[float, float] | None = None, *,
                class_names: list[str] | None = None, archs: list[str] | tuple[str, ...] | None = None,
                thresholds: SegThresholds | None = None, cfg: SegDetectorConfig | None = None,
                keep_arrays: bool = True, distances: bool = True) -> list[MaskVerdict]:
    """One :class:`MaskVerdict` per (image, class), image-major.

    Parameters
    ----------
    oof_probs : (members, N, K, H, W) sigmoid probabilities (out-of-fold for a data set's own masks).
    given_masks : (N, H, W) label maps (0 background, 1..K) or (N, K, H, W) bool channels.
    spacing : (row, col) pixel spacing in mm: HD95 in mm, areas in mm2.
    thresholds : a learned cut (a bundle's); ``None`` learns it here from these probabilities.
    keep_arrays : attach the consensus mask and mean probability map to each verdict.
    distances : compute HD95 and surface Dice (the slow part; ``False``: NaN, e.g. to re-score a benchmark).
    """
    cfg = cfg or SegDetectorConfig()
    probs = np.asarray(oof_probs, np.float32)
    m, n, k = probs.shape[:3]
    names = list(class_names) if class_names is not None else [f"class_{c}" for c in range(1, k + 1)]
    arch_names = list(archs) if archs is not None else [f"member{j}" for j in range(m)]
    if len(names) != k or len(arch_names) != m:
        raise ValueError(f"{len(names)} class names for {k} classes / {len(arch_names)} names for {m} members")
    units = unit_scores(probs, given_masks, cfg)
    th = thresholds or learn_seg_cut(probs, given_masks, cfg, units, archs=arch_names, class_names=names)
    if len(th.class_cuts) != k:
        raise ValueError(f"the cut has {len(th.class_cuts)} classes, the probabilities {k}")
    if th.class_scores and len(th.class_scores) != k:
        raise ValueError(f"the cut chose scores for {len(th.class_scores)} classes, the probabilities have {k}")
    feats = mask_features(units, np.arange(n * k), units.given, cfg, features_of(th.scores(), cfg) | {"evidence"})
    raw = combine_score(feats, units.cls, th.scores(), th.score_knots)
    score = precision_from_steps(raw, units.cls, th.precision_steps)
    cuts = np.array(th.class_cuts)[units.cls]
    judged = np.array(th.judged(k))[units.cls]
    flagged = raw >= cuts
    member_masks = (probs > cfg.threshold).reshape(m, n * k, *probs.shape[3:])
    unit_mm = "mm" if spacing else "px"
    if distances:
        hd_m, nsd_m = zip(*[_surface_metrics(member_masks[j], units.given, spacing, cfg) for j in range(m)],
                          strict=True)
        hd_c, nsd_c = _surface_metrics(units.consensus, units.given, spacing, cfg)
    else:
        nan = np.full(n * k, np.nan)
        hd_m, nsd_m, hd_c, nsd_c = [nan] * m, [nan] * m, nan, nan
    unanimous = np.all(units.dice_members < cfg.dual_dice, axis=0)
    dual = unanimous & (units.agreement_dice >= th.dual_agreement)
    cons_img = units.consensus.reshape(n, k, *units.consensus.shape[1:])
    given_img = units.given.reshape(n, k, *units.given.shape[1:])
    ev_rank = evidence_rank(feats.get("evidence"), units.cls, th.score_knots)
    unjudged_order = np.zeros(n * k)  # the softmin mask score, only where a class cannot be judged
    if (~judged).any():
        off = np.flatnonzero(~judged)
        unjudged_order[off] = 0.999 * np.clip(
            1.0 - softmin_quality(units.prob[off], units.given[off], cfg.softmin_temperature), 0.0, 1.0)
    sol = np.full(n * k, np.nan)  # the suggested masks' solidity, where a flag's place in the order depends on it
    typical = np.ones(n * k, bool)
    if cfg.shape_check != "off" and th.shape_reference:
        for f in np.flatnonzero(flagged & judged):
            ref = th.shape_reference[int(units.cls[f])] if int(units.cls[f]) < len(th.shape_reference) else {}
            if not shape_checkable(ref):
                continue  # too few masks to say what the class's shapes are: not checked
            sol[f] = solidity(units.consensus[f])
            typical[f] = not shape_atypical(float(sol[f]), ref, cfg)
    out = []
    for u in range(n * k):
        i, c = int(units.image[u]), int(units.cls[u])
        s = float(units.suspicion[u])
        if flagged[u]:
            wrong = 1.0 - units.mask_dice[u]  # the models disagree with the mask more than with each other?
            agree = units.member_disagreement[u] < wrong and units.agreement_dice[u] >= cfg.min_agreement
            verdict = Verdict.SUSPECTED_MASK_ERROR if agree and judged[u] else Verdict.HARD_CASE
        else:
            verdict = Verdict.CONSISTENT
        oc: np.ndarray | None = None
        og: np.ndarray | None = None
        if k > 1:
            rest = [j for j in range(k) if j != c]
            oc, og = np.asarray(cons_img[i, rest].any(0)), np.asarray(given_img[i, rest].any(0))
        regions, kind = mask_regions(units.given[u], units.consensus[u], other_consensus=oc, other_given=og,
                                     spacing=spacing, cfg=cfg)
        out.append(MaskVerdict(
            index=i, class_index=c + 1, class_name=names[c], verdict=verdict,
            kind=kind if verdict != Verdict.CONSISTENT else None,
            score=float(score[u]) + 1e-6 * float(_squash(raw[u])), suspicion=s,
            priority=(((PRIORITY_LEVEL[verdict] if typical[u] else 0.0) + float(ev_rank[u])) if judged[u]
                      else float(unjudged_order[u])) / 3.0,
            cut=float(cuts[u]),
            dice_members={a: float(units.dice_members[j, u]) for j, a in enumerate(arch_names)},
            hd95_members={a: float(hd_m[j][u]) for j, a in enumerate(arch_names)},
            nsd_members={a: float(nsd_m[j][u]) for j, a in enumerate(arch_names)},
            dice_consensus=float(units.dice_consensus[u]), hd95_consensus=float(hd_c[u]), nsd_consensus=float(nsd_c[u]),
            agreement_dice=float(units.agreement_dice[u]), agreement_prob=float(units.agreement_prob[u]),
            dual_consistency=bool(dual[u]), given_area_px=int(units.given[u].sum()),
            consensus_area_px=int(units.consensus[u].sum()), distance_unit=unit_mm, raw_score=float(raw[u]),
            judged=bool(judged[u]), regions=regions,
            consensus_solidity=None if np.isnan(sol[u]) else float(sol[u]),
            shape_typical=None if np.isnan(sol[u]) else bool(typical[u]),
            consensus=units.consensus[u] if keep_arrays else None, prob=units.prob[u] if keep_arrays else None))
    return out
