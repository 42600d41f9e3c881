"""Agreement between the members' saliency maps of one sample.

The main number is the mean pairwise Pearson correlation of the maps on a common grid; Spearman rank
correlation and the IoU of the top-20% cells are recorded beside it. Flat maps (no attention) agree
with nothing: their correlations count as 0.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

__all__ = ["map_agreement", "gmm_threshold"]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 1e-12 else 0.0


def _ranks(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(a).astype(np.float64)


def _top_iou(a: np.ndarray, b: np.ndarray, frac: float) -> float:
    k = max(1, int(round(frac * a.size)))
    ta = set(np.argsort(-a, kind="stable")[:k].tolist())
    tb = set(np.argsort(-b, kind="stable")[:k].tolist())
    return len(ta & tb) / len(ta | tb)


def map_agreement(maps: list[np.ndarray], top_frac: float = 0.2) -> dict[str, float]:
    """{'pearson', 'spearman', 'iou_top20'}: means over all member pairs of one sample's maps."""
    if len(maps) < 2:
        raise ValueError("agreement needs at least two maps")
    flat = [np.asarray(m, dtype=np.float64).ravel() for m in maps]
    pears, spear, ious = [], [], []
    for a, b in combinations(flat, 2):
        pears.append(_pearson(a, b))
        spear.append(_pearson(_ranks(a), _ranks(b)) if a.std() > 1e-12 and b.std() > 1e-12 else 0.0)
        ious.append(_top_iou(a, b, top_frac))
    return {"pearson": float(np.mean(pears)), "spearman": float(np.mean(spear)), "iou_top20": float(np.mean(ious))}


def gmm_threshold(values: np.ndarray, default: float = 0.5, min_n: int = 10, seed: int = 0) -> tuple[float, str]:
    """Unsupervised split of agreement values: 2-component Gaussian mixture, threshold where the
    high-mean component becomes more probable. Falls back to ``default`` with fewer than ``min_n``
    values or a degenerate fit. Returns (threshold, how)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < min_n or v.std() < 1e-6:
        return default, f"fixed default {default} (only {len(v)} candidates)"
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(2, random_state=seed).fit(v[:, None])
    hi = int(np.argmax(gm.means_[:, 0]))
    grid = np.linspace(v.min(), v.max(), 512)
    post = gm.predict_proba(grid[:, None])[:, hi]
    above = np.flatnonzero(post >= 0.5)
    if len(above) == 0 or abs(gm.means_[0, 0] - gm.means_[1, 0]) < 1e-3:
        return default, f"fixed default {default} (degenerate mixture)"
    return float(grid[above[0]]), "2-component Gaussian mixture on the unanimous candidates' agreement"
