"""Verdicts for volume masks, one per (case, segment): overlap, surface distance, agreement, the cut, regions,
a predicted Dice.

For every (case, segment) unit the members' probabilities (out-of-fold: no member saw any voxel of
the case) are read one segment at a time, in a box around the given mask and the members' support
(:meth:`~models.volume.probs.CaseProbs.crop`), never as whole-volume float arrays for every class:

- per member and for the consensus (mean probability > 0.5): Dice, HD95 and normalised surface Dice
  with the given mask in mm (``monai.metrics``, 3-D, the volume's spacing);
- the members' mean pairwise Dice of their masks and of their probability maps (agreement);
- the **suspicion** of the 2-D detector (``models.seg.detector``), unchanged:
  ``s = (1 - Dice_s(consensus, given)) / (1 - probability agreement + eps)``, Dice smoothed by
  ``smooth_mm3`` so an empty vs a nearly empty segment is no error;
- the **cut**, learnt without ground truth as in 2-D (``models.seg.detector.learn_seg_cut``): every
  unit's consensus is corrupted by each 3-D operation of ``models.volume.corruption`` and scored
  against the same probabilities, which shows how wrong masks score with these members on these
  volumes; the same verdict rule: above the cut a ``suspected_mask_error`` when the members disagree
  with each other less than with the mask and their masks agree (mean pairwise Dice >=
  ``min_agreement``), else a ``hard_case``;
- the **competence** per class, learnt with the cut (:func:`volume_competence`, the 2-D check of
  ``models.seg.competence`` on 3-D units): when the members' median out-of-fold Dice with the given
  masks or the share of simulated wrong masks they would rank among the top 10% is too low, the
  class is not judged: none of its segments is a ``suspected_mask_error`` (above the cut a
  ``hard_case``), and the thresholds carry the "cannot judge" sentence for the reports;
- the **kind** and the **regions**: 3-D connected components of consensus-vs-given difference, each
  typed (missing / spurious structure, boundary too tight / loose, shifted in-plane or across slices,
  missing or extra slices, wrong segment type) with voxel count, volume in mm3, box in voxels and in
  patient coordinates and the slice range;
- a **predicted Dice** of the given mask against the unknown truth: a regression (hinge basis,
  ridge; :class:`DicePredictor`) of Dice on the unit's agreement features, fitted on simulated
  corruptions of the given masks the cut does not flag (the target is the Dice between a
  corrupted mask and the mask it came from; a mask as given counts as right, weighted by the
  share of errors the cut estimates);
- ``priority = (1 - predicted Dice) x probability agreement``, and the key slices (where consensus and
  mask differ most) for the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations

import numpy as np

from models.detector import precision_from_steps
from models.seg.competence import class_competence
from models.seg.detector import SegDetectorConfig, SegThresholds, SegUnits, learn_seg_cut
from models.verdict import MaskErrorKind, Verdict
from models.volume.corruption import BINARY_OPS, corrupt_binary, shift_mask
from models.volume.data import Geometry, Spacing
from models.volume.probs import Box, CaseProbs, bounding_box, box_slices, union_box

__all__ = ["VolumeDetectorConfig", "VolumeRegion", "VolumeVerdict", "VolumeUnits", "VolumeScores", "DicePredictor",
           "FEATURES", "score_volumes", "volume_regions", "unit_features", "GivenMasks", "volume_competence",
           "competence_summary"]

FEATURES = ("dice_consensus", "soft_dice", "dice_member_mean", "dice_member_min", "dice_member_max",
            "agreement_dice", "agreement_prob", "log_volume_ratio", "dice_x_agreement")
"""What the Dice predictor reads about a mask (all computed without ground truth)."""

GivenMasks = Callable[[int, int], np.ndarray]
"""``given(case, segment 0..K-1)`` -> the given mask as bool (Z, Y, X)."""


@dataclass
class VolumeDetectorConfig:
    """Detector constants, fixed before any evaluated data set's corruption records are seen."""

    seg: SegDetectorConfig = field(default_factory=lambda: SegDetectorConfig(simulate_from="given"))
    """Shared with the 2-D detector: threshold, eps, dual_dice, min_agreement, the cut's tail constants, seed,
    and what the simulated wrong masks are made from (here the given masks; see docs/volumes.md)."""
    statistic: str = "predicted_dice"
    """What the cut is learnt on: ``predicted_dice`` (1 - the predicted Dice) or ``suspicion`` (the 2-D detector's
    statistic); chosen on the development run, docs/volumes.md."""
    smooth_mm3: float = 50.0
    """Dice smoothing in mm3 (a 3.7 mm cube): an empty vs a nearly empty segment is no error."""
    nsd_tolerance_voxels: float = 1.0
    """Normalised-surface-Dice tolerance, in voxels of the mean spacing."""
    min_region_voxels: int = 8
    min_region_frac: float = 0.02
    """Difference components below max(min_region_voxels, this share of the segment) are boundary noise."""
    max_regions: int = 10
    shift_gain: float = 0.1
    shift_share: float = 0.5
    """A shift explains a mask (Dice with the consensus below 0.9) when moving it by the centroids' offset
    raises that Dice by at least ``shift_gain`` and by ``shift_share`` of what it lacks (1 - Dice)."""
    slice_frac: float = 0.1
    """A slice holds a structure when its area there is at least this share of its largest slice."""
    margin_frac: float = 0.5
    margin_min: int = 4
    """A segment's box: the given mask and the members' support, grown by this share of its extent (>= voxels)."""
    key_slices: int = 3
    sim_max_voxels: int = 1_000_000
    """The simulated wrong masks of a larger box are made on every f-th voxel (f per axis) to keep them cheap."""
    predictor_alpha: float = 1e-3
    error_prior_min: float = 0.02
    """The share of errors the predictor assumes is at least this (the cut may estimate none)."""

    def __post_init__(self) -> None:
        if self.statistic not in ("predicted_dice", "suspicion"):
            raise ValueError(f"statistic must be predicted_dice or suspicion, not {self.statistic!r}")

    @classmethod
    def for_seed(cls, seed: int, **kw) -> VolumeDetectorConfig:
        """The defaults with the shared detector's seed set (simulations, mixture fits)."""
        return cls(seg=SegDetectorConfig(seed=seed, simulate_from="given"), **kw)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VolumeDetectorConfig:
        d = dict(d)
        d["seg"] = SegDetectorConfig(**d.get("seg", {}))
        return cls(**d)


@dataclass
class VolumeRegion:
    """One connected 3-D region where the consensus and the given mask differ."""

    kind: MaskErrorKind
    voxels: int
    volume_mm3: float
    bbox: tuple[int, int, int, int, int, int]
    """(slice0, row0, col0, slice1, row1, col1) on the volume's grid, ends exclusive."""
    bbox_patient_mm: tuple[Spacing, Spacing]
    """The box's extent in patient coordinates (x, y, z) mm: (minimum corner, maximum corner), voxel edges."""
    slices: tuple[int, int]
    """First and last slice (inclusive) the region touches."""
    centroid: Spacing
    """(slice, row, col)."""
    centroid_patient_mm: Spacing

    def to_row(self) -> dict:
        return {"kind": str(self.kind), "voxels": self.voxels, "volume_mm3": round(self.volume_mm3, 3),
                "bbox": list(self.bbox), "bbox_patient_mm": [[round(v, 3) for v in c] for c in self.bbox_patient_mm],
                "slices": list(self.slices), "centroid": [round(c, 2) for c in self.centroid],
                "centroid_patient_mm": [round(c, 3) for c in self.centroid_patient_mm]}


@dataclass
class VolumeVerdict:
    """The detector's finding for one (case, segment): see the module docstring."""

    index: int
    class_index: int
    """1..K (the segment's class index)."""
    class_name: str
    verdict: Verdict
    kind: MaskErrorKind | None
    score: float
    """Estimated probability that the mask is wrong (local precision of the learned cut)."""
    suspicion: float
    """The 2-D detector's statistic: (1 - Dice_s(consensus, given)) / (the members' disagreement + eps)."""
    priority: float
    cut: float
    """The cut on ``statistic`` for this segment's class."""
    predicted_dice: float
    """Predicted Dice of the given mask against the (unknown) truth."""
    dice_members: dict[str, float]
    hd95_members: dict[str, float]
    nsd_members: dict[str, float]
    dice_consensus: float
    hd95_consensus: float
    nsd_consensus: float
    dice_mean_prob: float
    agreement_dice: float
    agreement_prob: float
    dual_consistency: bool
    given_voxels: int
    consensus_voxels: int
    given_mm3: float
    consensus_mm3: float
    given_slices: tuple[int, int] | None
    consensus_slices: tuple[int, int] | None
    key_slices: list[int] = field(default_factory=list)
    """Slices where consensus and given mask differ most (largest first)."""
    regions: list[VolumeRegion] = field(default_factory=list)
    statistic: float = float("nan")
    """What the cut applies to: 1 - predicted Dice (``statistic = predicted_dice``, the default) or the suspicion."""
    distance_unit: str = "mm"
    roi: Box | None = None
    """The box (on the volume's grid) the segment was scored in; ``consensus`` covers it."""
    consensus: np.ndarray | None = None
    """The consensus mask on ``roi`` (bool): a plausible correction."""
    judged: bool = True
    """False: the ensemble cannot judge this segment's class here (``models.seg.competence``); never flagged."""

    @property
    def flagged(self) -> bool:
        return self.verdict.flagged

    def consensus_volume(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The consensus as a bool volume of the case's shape (zeros outside ``roi``)."""
        out = np.zeros(shape, bool)
        if self.roi is not None and self.consensus is not None:
            out[box_slices(self.roi)] = self.consensus
        return out

    def to_row(self) -> dict:
        """A JSON-able dict without the arrays."""
        d = {k: v for k, v in self.__dict__.items() if k not in ("consensus", "regions", "roi")}
        d["verdict"] = str(self.verdict)
        d["kind"] = None if self.kind is None else str(self.kind)
        d["regions"] = [r.to_row() for r in self.regions]
        d["dims"] = 3
        for k, v in list(d.items()):
            if isinstance(v, float):
                d[k] = None if not np.isfinite(v) else round(v, 5)
            elif isinstance(v, dict):
                d[k] = {a: (None if not np.isfinite(x) else round(float(x), 5)) for a, x in v.items()}
            elif isinstance(v, tuple):
                d[k] = list(v)
        return d


@dataclass
class DicePredictor:
    """Dice of a mask against the unknown truth from its agreement features: a ridge regression on a hinge
    basis per feature (JSON-able, monotone pieces), clipped to [0, 1]."""

    features: list[str]
    knots: list[list[float]]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    n_train: int = 0

    @staticmethod
    def _basis(x: np.ndarray, knots: list[list[float]]) -> np.ndarray:
        cols = []
        for j, ks in enumerate(knots):
            cols.append(x[:, j])
            cols += [np.maximum(0.0, x[:, j] - k) for k in ks]
        return np.stack(cols, 1) if cols else np.zeros((len(x), 0))

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, *, alpha: float = 1e-3,
            features: Sequence[str] = FEATURES) -> DicePredictor:
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        w = np.ones(len(y)) if w is None else np.asarray(w, np.float64)
        knots = [sorted({float(v) for v in np.quantile(x[:, j], [0.2, 0.4, 0.6, 0.8])}) if len(x) else []
                 for j in range(x.shape[1])]
        b = cls._basis(x, knots)
        mu = (w[:, None] * b).sum(0) / max(w.sum(), 1e-12)
        sd = np.sqrt((w[:, None] * (b - mu) ** 2).sum(0) / max(w.sum(), 1e-12))
        sd[sd < 1e-9] = 1.0
        z = (b - mu) / sd
        ybar = float((w * y).sum() / max(w.sum(), 1e-12))
        sw = np.sqrt(w)[:, None]
        a = (z * sw).T @ (z * sw) + alpha * w.sum() * np.eye(z.shape[1])
        coef = np.linalg.solve(a, (z * sw).T @ ((y - ybar) * sw[:, 0]))
        return cls(list(features), knots, mu.tolist(), sd.tolist(), coef.tolist(), ybar, len(y))

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, np.float64))
        z = (self._basis(x, self.knots) - np.asarray(self.mean)) / np.asarray(self.scale)
        return np.clip(self.intercept + z @ np.asarray(self.coef), 0.0, 1.0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DicePredictor:
        return cls(**d)


@dataclass
class VolumeUnits:
    """Every unit's numbers as arrays (U = N x K units, case-major)."""

    image: np.ndarray
    cls: np.ndarray
    suspicion: np.ndarray
    mask_dice: np.ndarray
    member_disagreement: np.ndarray
    dice_members: np.ndarray
    """(members, U)."""
    dice_consensus: np.ndarray
    dice_mean_prob: np.ndarray
    agreement_dice: np.ndarray
    agreement_prob: np.ndarray
    features: np.ndarray
    """(U, len(FEATURES)) of the given masks."""

    def as_seg_units(self) -> SegUnits:
        """The 2-D detector's record (its cut reads only the per-unit numbers; the mask arrays stay empty)."""
        empty = np.zeros((len(self.cls), 0, 0), bool)
        return SegUnits(image=self.image, cls=self.cls, suspicion=self.suspicion, mask_dice=self.mask_dice,
                        member_disagreement=self.member_disagreement, dice_members=self.dice_members,
                        dice_consensus=self.dice_consensus, dice_mean_prob=self.dice_mean_prob,
                        agreement_dice=self.agreement_dice, agreement_prob=self.agreement_prob, given=empty,
                        consensus=empty, prob=empty.astype(np.float32), unanimous=empty)


@dataclass
class VolumeScores:
    """``score_volumes``' result: verdicts (case-major), the cut, the Dice predictor, the unit arrays, timing."""

    verdicts: list[VolumeVerdict]
    thresholds: SegThresholds
    predictor: DicePredictor
    units: VolumeUnits
    seconds_per_case: list[float]

    def by_case(self, n: int) -> list[list[VolumeVerdict]]:
        out: list[list[VolumeVerdict]] = [[] for _ in range(n)]
        for v in self.verdicts:
            out[v.index].append(v)
        return out


# -- small array helpers ------------------------------------------------------------------------------------------


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    tot = int(a.sum()) + int(b.sum())
    return 1.0 if tot == 0 else 2.0 * float(np.logical_and(a, b).sum()) / tot


def _soft_dice(p: np.ndarray, g: np.ndarray, smooth: float) -> float:
    return (2.0 * float(p[g].sum()) + smooth) / (float(p.sum()) + float(g.sum()) + smooth)


def _grow(box: Box, shape: tuple[int, ...], cfg: VolumeDetectorConfig) -> Box:
    lo, hi = [], []
    for a in range(3):
        ext = box[a + 3] - box[a]
        m = max(cfg.margin_min, int(np.ceil(cfg.margin_frac * ext)))
        lo.append(max(0, box[a] - m))
        hi.append(min(shape[a], box[a + 3] + m))
    return (lo[0], lo[1], lo[2], hi[0], hi[1], hi[2])


def _intersects(a: Box, b: Box) -> bool:
    return all(a[i] < b[i + 3] and b[i] < a[i + 3] for i in range(3))


def _surface(preds: list[np.ndarray], given: np.ndarray, spacing: Spacing,
             cfg: VolumeDetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """HD95 and normalised surface Dice (mm, ``monai.metrics``) of each prediction with the given mask;
    both empty -> (0, 1), one empty -> (the box diagonal, 0)."""
    import warnings

    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    n = len(preds)
    diag = float(np.sqrt(sum((s * d) ** 2 for s, d in zip(given.shape, spacing, strict=True))))
    hd, nsd = np.zeros(n), np.ones(n)
    ge = bool(given.any())
    both = []
    for j, p in enumerate(preds):
        pe = bool(p.any())
        if pe != ge:
            hd[j], nsd[j] = diag, 0.0
        elif pe:
            both.append(j)
    if both:
        yg = torch.from_numpy(given[None, None].astype(np.float32))
        sp = [float(s) for s in spacing]
        tol = cfg.nsd_tolerance_voxels * float(np.mean(spacing))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for j in both:  # one at a time: a large segment's box holds tens of millions of voxels
                yp = torch.from_numpy(preds[j][None, None].astype(np.float32))
                hd[j] = float(compute_hausdorff_distance(yp, yg, include_background=True, percentile=95,
                                                         spacing=sp)[0, 0])
                nsd[j] = float(compute_surface_dice(yp, yg, class_thresholds=[tol], include_background=True,
                                                    spacing=sp)[0, 0])
    return np.nan_to_num(hd, nan=diag, posinf=diag), np.nan_to_num(nsd, nan=0.0)


def unit_features(member_masks: np.ndarray, pbar: np.ndarray, cons: np.ndarray, x: np.ndarray,
                  agreement_dice: float, agreement_prob: float, smooth: float) -> np.ndarray:
    """The :data:`FEATURES` of mask ``x`` against the members (all on one box)."""
    md = [_dice(member_masks[j], x) for j in range(len(member_masks))]
    dc = _dice(cons, x)
    ratio = float(np.log((x.sum() + smooth) / (cons.sum() + smooth)))
    return np.array([dc, _soft_dice(pbar, x, smooth), float(np.mean(md)), float(np.min(md)), float(np.max(md)),
                     agreement_dice, agreement_prob, float(np.clip(ratio, -3, 3)), dc * agreement_prob])


# -- regions ------------------------------------------------------------------------------------------------------


def _best_shift(g: np.ndarray, c: np.ndarray) -> tuple[float, tuple[int, int, int]]:
    """Dice gain of moving ``g`` onto ``c``: the offset of their centroids, its in-plane and across-slices parts,
    and their neighbours within one voxel (a moved mask may have lost voxels, which biases its centroid)."""
    d0 = _dice(g, c)
    cg = np.array(np.nonzero(g)).mean(1)
    cc = np.array(np.nonzero(c)).mean(1)
    d = np.rint(cc - cg).astype(int)
    starts = {(int(d[0]), int(d[1]), int(d[2])), (int(d[0]), 0, 0), (0, int(d[1]), int(d[2]))}
    cands = {(a + i, b + j, e + k) for a, b, e in starts for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)}
    best, best_d = 0.0, (0, 0, 0)
    for cand in sorted(cands - {(0, 0, 0)}):
        gain = _dice(shift_mask(g, cand), c) - d0
        if gain > best:
            best, best_d = gain, cand
    return best, best_d


def volume_regions(given: np.ndarray, consensus: np.ndarray, geometry: Geometry,
                   offset: tuple[int, int, int] = (0, 0, 0), *, other_consensus: np.ndarray | None = None,
                   other_given: np.ndarray | None = None, cfg: VolumeDetectorConfig | None = None,
                   with_labels: bool = False) -> tuple[list[VolumeRegion], MaskErrorKind | None, np.ndarray | None]:
    """Regions where ``consensus`` and ``given`` (bool, one segment, a box of the volume starting at ``offset``)
    differ, typed; the mask-level kind; with ``with_labels`` an int32 array numbering the kept regions
    (1..n in the returned order, the box's shape).

    ``other_consensus`` / ``other_given``: the union of the other segments on the same box (a difference
    inside them is another segment's structure: ``wrong_segment_type``)."""
    from scipy.ndimage import label

    cfg = cfg or VolumeDetectorConfig()
    g, c = given.astype(bool), consensus.astype(bool)
    conn = np.ones((3, 3, 3), bool)
    missing, extra = c & ~g, g & ~c
    size = max(int(g.sum()), int(c.sum()))
    min_vox = max(cfg.min_region_voxels, int(np.ceil(cfg.min_region_frac * size)))
    shift_kind: MaskErrorKind | None = None
    d0 = _dice(g, c)
    if g.sum() >= min_vox and c.sum() >= min_vox and d0 < 0.9:
        gain, (dz, dy, dx) = _best_shift(g, c)
        if gain >= max(cfg.shift_gain, cfg.shift_share * (1.0 - d0)):
            sz, sy, sx = geometry.spacing
            shift_kind = MaskErrorKind.SHIFTED_SLICES if abs(dz) * sz > np.hypot(dy * sy, dx * sx) \
                else MaskErrorKind.SHIFTED
    area_g, area_c = g.sum(axis=(1, 2)), c.sum(axis=(1, 2))
    has_g = area_g >= max(1.0, cfg.slice_frac * float(area_g.max(initial=0)))
    has_c = area_c >= max(1.0, cfg.slice_frac * float(area_c.max(initial=0)))
    c_lab, _ = label(c, structure=conn)
    g_lab, _ = label(g, structure=conn)
    found: list[tuple[VolumeRegion, np.ndarray]] = []
    vox_mm3 = geometry.voxel_mm3
    for diff, is_missing in ((missing, True), (extra, False)):
        lab, n = label(diff, structure=conn)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        for r in np.flatnonzero(sizes >= min_vox):
            if r == 0:
                continue
            px = lab == r
            vox = int(sizes[r])
            other = other_given if is_missing else other_consensus
            zs = np.flatnonzero(px.any(axis=(1, 2)))
            if other is not None and np.sum(px & other) >= 0.5 * vox:
                kind = MaskErrorKind.WRONG_SEGMENT_TYPE
            elif shift_kind is not None:
                kind = shift_kind
            elif is_missing:
                comps = np.unique(c_lab[px])
                touches = bool(np.any(g & np.isin(c_lab, comps[comps > 0])))
                on_empty = float(px[~has_g].sum()) / vox if (~has_g).any() else 0.0
                kind = (MaskErrorKind.MISSING_STRUCTURE if not touches else
                        MaskErrorKind.MISSING_SLICES if on_empty >= 0.5 else MaskErrorKind.BOUNDARY_TOO_TIGHT)
            else:
                comps = np.unique(g_lab[px])
                touches = bool(np.any(c & np.isin(g_lab, comps[comps > 0])))
                on_empty = float(px[~has_c].sum()) / vox if (~has_c).any() else 0.0
                kind = (MaskErrorKind.SPURIOUS_STRUCTURE if not touches else
                        MaskErrorKind.EXTRA_SLICES if on_empty >= 0.5 else MaskErrorKind.BOUNDARY_TOO_LOOSE)
            idx = np.nonzero(px)
            lo = [int(i.min()) + o for i, o in zip(idx, offset, strict=True)]
            hi = [int(i.max()) + 1 + o for i, o in zip(idx, offset, strict=True)]
            corners = np.array([[z, y, x] for z in (lo[0] - 0.5, hi[0] - 0.5) for y in (lo[1] - 0.5, hi[1] - 0.5)
                                for x in (lo[2] - 0.5, hi[2] - 0.5)])
            pts = geometry.index_to_patient(corners)
            cen = tuple(float(i.mean()) + o for i, o in zip(idx, offset, strict=True))
            found.append((VolumeRegion(
                kind, vox, vox * vox_mm3, (lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]),
                (tuple(float(v) for v in pts.min(0)), tuple(float(v) for v in pts.max(0))),  # type: ignore[arg-type]
                (int(zs[0]) + offset[0], int(zs[-1]) + offset[0]), cen,  # type: ignore[arg-type]
                tuple(float(v) for v in geometry.index_to_patient(np.array(cen))),  # type: ignore[arg-type]
            ), px))
    found.sort(key=lambda rp: -rp[0].voxels)
    found = found[:cfg.max_regions]
    labels = None
    if with_labels:
        labels = np.zeros(g.shape, np.int32)
        for i, (_r, px) in enumerate(found):
            labels[px] = i + 1
    if not found:
        return [], None, labels
    by_kind: dict[MaskErrorKind, int] = {}
    for reg, _px in found:
        by_kind[reg.kind] = by_kind.get(reg.kind, 0) + reg.voxels
    return [r for r, _px in found], max(by_kind, key=lambda kk: by_kind[kk]), labels


# -- one unit -----------------------------------------------------------------------------------------------------


@dataclass
class _Sims:
    """Simulated wrong masks of one unit, made from one source (the consensus or the given mask)."""

    suspicion: list[float] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    dice: list[float] = field(default_factory=list)
    """Dice of each wrong mask with the mask it was made from."""


@dataclass
class _Unit:
    numbers: dict
    features: np.ndarray
    from_consensus: _Sims
    from_given: _Sims
    verdict: VolumeVerdict


def _otherunion_box(i: int, c: int, k: int, box: Box, probs: CaseProbs, given: GivenMasks, thr: float,
                 given_boxes: list[Box | None]) -> tuple[np.ndarray | None, np.ndarray | None]:
    if k < 2:
        return None, None
    shape = tuple(box[a + 3] - box[a] for a in range(3))
    oc, og = np.zeros(shape, bool), np.zeros(shape, bool)
    for j in range(k):
        if j == c:
            continue
        pb = probs.native_box(j)
        if pb is not None and _intersects(pb, box):
            oc |= probs.crop(j, box).mean(0) > thr
        gb = given_boxes[j]
        if gb is not None and _intersects(gb, box):
            og |= given(i, j)[box_slices(box)]
    return oc, og


def _score_unit(i: int, c: int, probs: CaseProbs, given: GivenMasks, geometry: Geometry, names: list[str],
                archs: list[str], cfg: VolumeDetectorConfig, given_boxes: list[Box | None], keep_arrays: bool,
                simulate: bool, distances: bool = True) -> _Unit:
    thr = cfg.seg.threshold
    k = probs.n_classes
    m = probs.n_members
    shape = probs.native_shape
    g_full = given(i, c)
    smooth = max(1.0, cfg.smooth_mm3 / geometry.voxel_mm3)
    box = union_box(given_boxes[c], probs.native_box(c))
    if box is None:  # nobody sees this segment and it is not drawn: consistent by construction
        box = (0, 0, 0, 1, 1, 1)
    box = _grow(box, shape, cfg)
    g = g_full[box_slices(box)]
    p = probs.crop(c, box)
    mm = p > thr
    pbar = p.mean(0)
    cons = pbar > thr
    oc, og = _otherunion_box(i, c, k, box, probs, given, thr, given_boxes)
    dice_m = np.array([_dice(mm[j], g) for j in range(m)])
    pairs = list(combinations(range(m), 2))
    ag_d = float(np.mean([_dice(mm[a], mm[b]) for a, b in pairs])) if pairs else 1.0
    ag_p = float(np.mean([(2 * float((p[a] * p[b]).sum()) + smooth)
                          / (float((p[a] ** 2).sum()) + float((p[b] ** 2).sum()) + smooth) for a, b in pairs])) \
        if pairs else 1.0
    md = (2.0 * float((cons & g).sum()) + smooth) / (float(cons.sum()) + float(g.sum()) + smooth)
    dis = 1.0 - ag_p
    susp = (1.0 - md) / (dis + cfg.seg.eps)
    feats = unit_features(mm, pbar, cons, g, ag_d, ag_p, smooth)
    hd, nsd = (_surface([mm[j] for j in range(m)] + [cons], g, geometry.spacing, cfg) if distances
               else (np.full(m + 1, np.nan), np.full(m + 1, np.nan)))
    regions, kind, _ = volume_regions(g, cons, geometry, (box[0], box[1], box[2]), other_consensus=oc,
                                      other_given=og, cfg=cfg)
    diff = (cons != g).sum(axis=(1, 2))
    key = [int(z) + box[0] for z in np.argsort(-diff, kind="stable")[:cfg.key_slices] if diff[z] > 0]
    gz = np.flatnonzero(g.any(axis=(1, 2)))
    cz = np.flatnonzero(cons.any(axis=(1, 2)))
    sims_c, sims_g = _Sims(), _Sims()
    if simulate:
        rng = np.random.default_rng(cfg.seg.seed * 1_000_003 + 7_919 * i + c)
        sims_c, sims_g = _simulate(mm, pbar, cons, g, oc, og, geometry.spacing, dis, ag_d, ag_p, smooth, rng, cfg)
    vox = geometry.voxel_mm3
    numbers = {"suspicion": susp, "mask_dice": md, "member_disagreement": dis, "dice_members": dice_m,
               "dice_consensus": _dice(cons, g), "dice_mean_prob": _soft_dice(pbar, g, smooth),
               "agreement_dice": ag_d, "agreement_prob": ag_p}
    v = VolumeVerdict(
        index=i, class_index=c + 1, class_name=names[c], verdict=Verdict.CONSISTENT, kind=kind, score=0.0,
        suspicion=float(susp), priority=0.0, cut=float("inf"), predicted_dice=float("nan"),
        dice_members={a: float(dice_m[j]) for j, a in enumerate(archs)},
        hd95_members={a: float(hd[j]) for j, a in enumerate(archs)},
        nsd_members={a: float(nsd[j]) for j, a in enumerate(archs)},
        dice_consensus=_dice(cons, g), hd95_consensus=float(hd[m]), nsd_consensus=float(nsd[m]),
        dice_mean_prob=_soft_dice(pbar, g, smooth), agreement_dice=ag_d, agreement_prob=ag_p,
        dual_consistency=False, given_voxels=int(g_full.sum()), consensus_voxels=int(cons.sum()),
        given_mm3=float(g_full.sum()) * vox, consensus_mm3=float(cons.sum()) * vox,
        given_slices=(int(gz[0]) + box[0], int(gz[-1]) + box[0]) if len(gz) else None,
        consensus_slices=(int(cz[0]) + box[0], int(cz[-1]) + box[0]) if len(cz) else None,
        key_slices=key, regions=regions, roi=box, consensus=cons if keep_arrays else None)
    return _Unit(numbers, feats, sims_c, sims_g, v)


def _simulate(mm: np.ndarray, pbar: np.ndarray, cons: np.ndarray, g: np.ndarray, oc: np.ndarray | None,
              og: np.ndarray | None, spacing: Spacing, dis: float, ag_d: float, ag_p: float, smooth: float,
              rng: np.random.Generator, cfg: VolumeDetectorConfig) -> tuple[_Sims, _Sims]:
    """Wrong masks for one unit: the consensus and the given mask, each corrupted by every operation (and
    another segment's structure added), scored like a given mask (suspicion, features, Dice with the source).
    A box above ``sim_max_voxels`` is subsampled (every f-th voxel per axis) first: the numbers are ratios."""
    f = int(np.ceil((cons.size / cfg.sim_max_voxels) ** (1 / 3))) if cons.size > cfg.sim_max_voxels else 1
    if f > 1:
        sub = (slice(None, None, f),) * 3
        mm, pbar, cons, g = mm[(slice(None),) + sub], pbar[sub], cons[sub], g[sub]
        oc = None if oc is None else oc[sub]
        og = None if og is None else og[sub]
        spacing = (spacing[0] * f, spacing[1] * f, spacing[2] * f)
        smooth = max(1.0, smooth / f**3)

    def wrong_masks(src: np.ndarray, other: np.ndarray | None) -> _Sims:
        out = _Sims()
        made = [corrupt_binary(src, op, rng, spacing, free=None if other is None else ~other) for op in BINARY_OPS]
        if other is not None and other.any() and src.any():
            made.append(src | other)  # another segment's structure added: the wrong segment type
        for wm in made:
            if wm is None or not np.any(wm != src):
                continue
            d_s = (2.0 * float((cons & wm).sum()) + smooth) / (float(cons.sum()) + float(wm.sum()) + smooth)
            out.suspicion.append((1.0 - d_s) / (dis + cfg.seg.eps))
            out.features.append(unit_features(mm, pbar, cons, wm, ag_d, ag_p, smooth))
            out.dice.append(_dice(wm, src))
        return out

    return wrong_masks(cons, oc), wrong_masks(g, og)


def _label_map_given(labels: list[np.ndarray]) -> GivenMasks:
    return lambda i, c: np.asarray(labels[i]) == c + 1


def score_volumes(probs: list[CaseProbs], given: list[np.ndarray] | GivenMasks, geometries: list[Geometry], *,
                  class_names: list[str] | None = None, archs: list[str] | tuple[str, ...] | None = None,
                  thresholds: SegThresholds | None = None, predictor: DicePredictor | None = None,
                  cfg: VolumeDetectorConfig | None = None, keep_arrays: bool = False,
                  progress: bool = False, distances: bool = True) -> VolumeScores:
    """One :class:`VolumeVerdict` per (case, segment), case-major.

    Parameters
    ----------
    probs : per case, every member's probabilities (out-of-fold for a data set's own masks).
    given : the given masks: per case a label map (Z, Y, X) (0 background, 1..K), or a function
        ``given(case, segment)`` -> bool (Z, Y, X) (overlapping segments, masks read on demand).
    geometries : per case its grid (spacing for mm, origin and direction for patient coordinates).
    thresholds, predictor : a learned cut and Dice predictor (a bundle's); ``None`` learns them here, and
        with the cut the ensemble's competence per class (``thresholds.competence``; a class the given
        thresholds do not judge is never flagged).
    keep_arrays : keep each unit's consensus mask (on its box) as a suggested correction.
    distances : compute HD95 and surface Dice (the slow part; ``False``: NaN, e.g. to re-score a benchmark).

    Raises
    ------
    ValueError
        Unequal numbers of cases, shapes that differ from the probabilities' grid, a cut for another K.
    """
    cfg = cfg or VolumeDetectorConfig()
    n = len(probs)
    if len(geometries) != n or (not callable(given) and len(given) != n):
        raise ValueError(f"{n} probability sets, {len(geometries)} geometries and "
                         f"{'a function' if callable(given) else len(given)} given masks")
    if n == 0:
        raise ValueError("no cases to score")
    k = probs[0].n_classes
    m = probs[0].n_members
    names = list(class_names) if class_names is not None else [f"class_{c}" for c in range(1, k + 1)]
    arch_names = list(archs) if archs is not None else [f"member{j}" for j in range(m)]
    if len(names) != k or len(arch_names) != m:
        raise ValueError(f"{len(names)} class names for {k} classes / {len(arch_names)} names for {m} members")
    if thresholds is not None and len(thresholds.class_cuts) != k:
        raise ValueError(f"the cut has {len(thresholds.class_cuts)} classes, the probabilities {k}")
    get = given if callable(given) else _label_map_given(given)
    if not callable(given):
        for i, lab in enumerate(given):
            if tuple(lab.shape) != tuple(probs[i].native_shape):
                raise ValueError(f"case {i}: given mask {lab.shape}, probabilities for {probs[i].native_shape}")
    simulate = thresholds is None or predictor is None
    units: list[_Unit] = []
    secs: list[float] = []
    from tqdm import tqdm

    for i in tqdm(range(n), desc="score volumes", unit="case", disable=not progress):
        t0 = time.perf_counter()
        gboxes = [bounding_box(get(i, c)) for c in range(k)]
        for c in range(k):
            units.append(_score_unit(i, c, probs[i], get, geometries[i], names, arch_names, cfg, gboxes,
                                     keep_arrays, simulate, distances))
        secs.append(time.perf_counter() - t0)
    arr = VolumeUnits(
        image=np.repeat(np.arange(n), k), cls=np.tile(np.arange(k), n),
        suspicion=np.array([u.numbers["suspicion"] for u in units]),
        mask_dice=np.array([u.numbers["mask_dice"] for u in units]),
        member_disagreement=np.array([u.numbers["member_disagreement"] for u in units]),
        dice_members=np.stack([u.numbers["dice_members"] for u in units], 1),
        dice_consensus=np.array([u.numbers["dice_consensus"] for u in units]),
        dice_mean_prob=np.array([u.numbers["dice_mean_prob"] for u in units]),
        agreement_dice=np.array([u.numbers["agreement_dice"] for u in units]),
        agreement_prob=np.array([u.numbers["agreement_prob"] for u in units]),
        features=np.stack([u.features for u in units]))

    def simulated(source: str, statistic: str) -> tuple[np.ndarray, np.ndarray]:
        """(unit index, statistic) of the wrong masks simulated from ``source`` (given or consensus)."""
        made = [u.from_given if source == "given" else u.from_consensus for u in units]
        sim_u = np.array([j for j, sm in enumerate(made) for _s in sm.suspicion], np.int64)
        if statistic == "suspicion":
            return sim_u, np.array([x for sm in made for x in sm.suspicion], np.float64)
        feats = [f for sm in made for f in sm.features]
        return sim_u, 1.0 - predictor.predict(np.stack(feats)) if feats else np.zeros(0)  # type: ignore[union-attr]

    learn = thresholds is None
    if predictor is None or (thresholds is None and cfg.statistic == "suspicion"):
        first = learn_seg_cut(None, None, cfg.seg, arr.as_seg_units(),
                              simulated=simulated(cfg.seg.simulate_from, "suspicion"))
        if predictor is None:  # the masks this cut flags are left out of the predictor's training
            predictor = _fit_predictor(units, arr.suspicion >= np.array(first.class_cuts)[arr.cls], first, cfg)
        if thresholds is None and cfg.statistic == "suspicion":
            thresholds = first
    pred = predictor.predict(arr.features)
    stat = 1.0 - pred if cfg.statistic == "predicted_dice" else arr.suspicion
    if thresholds is None:
        thresholds = learn_seg_cut(None, None, cfg.seg, replace(arr, suspicion=stat).as_seg_units(),
                                   simulated=simulated(cfg.seg.simulate_from, cfg.statistic))
    if learn:  # the ensemble's competence per class, learnt with the cut (a bundle keeps it)
        has = np.array([u.verdict.given_voxels > 0 for u in units])
        thresholds = replace(thresholds, competence=volume_competence(
            arr, has, stat, *simulated("given", cfg.statistic), class_names=names, archs=arch_names, cfg=cfg))
    judged = np.array(thresholds.judged(k))[arr.cls]
    cuts = np.array(thresholds.class_cuts)[arr.cls]
    flagged = stat >= cuts
    score = precision_from_steps(stat, arr.cls, thresholds.precision_steps)
    unanimous = np.all(arr.dice_members < cfg.seg.dual_dice, axis=0)
    dual = unanimous & (arr.agreement_dice >= thresholds.dual_agreement)
    out = []
    for j, u in enumerate(units):
        v = u.verdict
        if flagged[j]:
            agree = (arr.member_disagreement[j] < 1.0 - arr.mask_dice[j]
                     and arr.agreement_dice[j] >= cfg.seg.min_agreement)
            v.verdict = Verdict.SUSPECTED_MASK_ERROR if agree and judged[j] else Verdict.HARD_CASE
        else:
            v.verdict = Verdict.CONSISTENT
            v.kind = None
        v.judged = bool(judged[j])
        v.score = float(score[j]) + 1e-6 * min(float(stat[j]), 100.0)
        v.statistic = float(stat[j])
        v.cut = float(cuts[j])
        v.predicted_dice = float(pred[j])
        v.priority = (1.0 - float(pred[j])) * float(arr.agreement_prob[j])
        v.dual_consistency = bool(dual[j])
        out.append(v)
    return VolumeScores(out, thresholds, predictor, arr, secs)


def volume_competence(units: VolumeUnits, has_structure: np.ndarray, statistic: np.ndarray, sim_unit: np.ndarray,
                      sim_statistic: np.ndarray, *, class_names: list[str], archs: list[str],
                      cfg: VolumeDetectorConfig) -> list[dict]:
    """Per class, whether the ensemble can judge its masks here (``models.seg.competence``), without ground truth.

    The 2-D check on 3-D units: the members' median out-of-fold Dice with the given masks that have a
    structure (``has_structure``), their median pairwise Dice, and the detection rate: the share of the
    class's simulated wrong masks (``sim_unit``: the unit each was made from; ``sim_statistic``: scored with
    the statistic the cut is on) above the ``detection_quantile`` of the given masks' ``statistic``. The
    thresholds are the 2-D ones (``cfg.seg.min_dice``, ``cfg.seg.min_detection``).

    Returns
    -------
    One :class:`~models.seg.competence.ClassCompetence` dict per class (``SegThresholds.competence``).
    """
    out = []
    stat = np.asarray(statistic, np.float64)
    sim_unit, sim_statistic = np.asarray(sim_unit, np.int64), np.asarray(sim_statistic, np.float64)
    sim_cls = units.cls[sim_unit] if len(sim_unit) else np.zeros(0, np.int64)
    for c, name in enumerate(class_names):
        idx = np.flatnonzero(units.cls == c)
        sel = sim_cls == c
        rate = (float(np.mean(sim_statistic[sel] > np.quantile(stat[idx], cfg.seg.detection_quantile)))
                if sel.any() and len(idx) else None)
        out.append(class_competence(name, units.dice_members[:, idx], units.agreement_dice[idx],
                                    np.asarray(has_structure, bool)[idx], rate, min_dice=cfg.seg.min_dice,
                                    min_detection=cfg.seg.min_detection, archs=list(archs)).to_dict())
    return out


def competence_summary(th: SegThresholds, class_names: list[str]) -> dict:
    """The members' competence per class (``models.seg.competence``, learnt with the cut), the "cannot judge"
    sentences and the estimated wrong masks per class, for ``audit.json`` and ``results.json``."""
    return {"competence": th.competence, "cannot_judge": sorted(th.cannot_judge(class_names).values()),
            "estimated_errors_per_class": dict(zip(class_names, th.estimated_errors_per_class, strict=False))}


def _fit_predictor(units: list[_Unit], flagged: np.ndarray, th: SegThresholds,
                   cfg: VolumeDetectorConfig) -> DicePredictor:
    """The Dice predictor from the masks the cut does not flag, as given (Dice 1) and corrupted (their Dice)."""
    n = len(units)
    prior = float(np.clip(sum(th.estimated_errors_per_class) / max(n, 1), cfg.error_prior_min, 0.5))
    xs, ys, ws = [], [], []
    for j, u in enumerate(units):
        if flagged[j]:
            continue
        xs.append(u.features)
        ys.append(1.0)
        ws.append(1.0 - prior)
        for f, d in zip(u.from_given.features, u.from_given.dice, strict=True):
            xs.append(f)
            ys.append(d)
            ws.append(prior / max(len(u.from_given.features), 1))
    if not xs:
        return DicePredictor(list(FEATURES), [[] for _ in FEATURES], [0.0] * len(FEATURES), [1.0] * len(FEATURES),
                             [0.0] * len(FEATURES), 1.0, 0)
    return DicePredictor.fit(np.stack(xs), np.array(ys), np.array(ws), alpha=cfg.predictor_alpha)
