"""Noisy-label baselines computed on the same member probabilities as labelqa's detector."""

from __future__ import annotations

import numpy as np

__all__ = ["confidence", "vote", "cleanlab_issues", "top_n", "random_scores"]


def confidence(p_mean: np.ndarray, given: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(flags, scores): flag when the ensemble's probability of the given label is below ``threshold``."""
    pg = p_mean[np.arange(len(given)), given]
    return pg < threshold, 1.0 - pg


def vote(member_probs: dict[str, np.ndarray], p_mean: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flags, scores): unanimous vote, every member predicts another class; score = share disagreeing
    (ties broken by 1 - p(given))."""
    dis = np.mean([p.argmax(1) != given for p in member_probs.values()], axis=0)
    return dis == 1.0, dis + 1e-3 * (1.0 - p_mean[np.arange(len(given)), given])


def cleanlab_issues(p_mean: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(flags, scores, n_estimated): ``cleanlab.filter.find_label_issues`` with its defaults on the
    ensemble mean, self-confidence label-quality scores as the ranking, and cleanlab's calibrated
    estimate of the number of issues (``num_label_issues``, used as n for top-n rankers)."""
    from cleanlab.count import num_label_issues
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    p = np.clip(p_mean, 1e-6, 1.0)
    p = p / p.sum(1, keepdims=True)
    flags = find_label_issues(given, p, n_jobs=1)
    quality = get_label_quality_scores(given, p, method="self_confidence")
    n_est = int(num_label_issues(given, p, estimation_method="off_diagonal_calibrated"))
    return np.asarray(flags, dtype=bool), 1.0 - quality, n_est


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Flags for the ``n`` highest scores (stable order)."""
    flags = np.zeros(len(scores), dtype=bool)
    if n > 0:
        flags[np.argsort(-scores, kind="stable")[:n]] = True
    return flags


def random_scores(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 424242).random(n)
