"""The one label-corruption model: flip a share of class labels, recording which (benchmarks, demo, dicomize).

``labelqa evaluate`` plants errors to measure detection, ``labelqa dicomize --noise-rate`` writes
studies with planted label errors (recorded in their manifest), and the demo makes its annotated
training and audit data with them: all three call :func:`corrupt_labels`, with one allowed range.
Mask corruptions (erosion, shifts, dropped or added structures) live in ``models.seg.corruption``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NOISE_MODELS", "check_noise_rate", "corrupt_labels"]

NOISE_MODELS = ("uniform", "asymmetric")
"""uniform: a random other class; asymmetric: class c -> c + 1 (mod K), the systematic confusion."""


def check_noise_rate(rate: float) -> float:
    """``rate`` if it is a valid share of labels to corrupt, [0, 1); else ValueError with the range."""
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")
    return float(rate)


def corrupt_labels(labels: np.ndarray, n_classes: int, rate: float, model: str = "uniform",
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(rate * N)`` labels, chosen with ``seed``.

    Parameters
    ----------
    labels : (N,) int array of class indices in [0, n_classes).
    n_classes : number of classes (>= 2 when rate > 0).
    rate : share of labels to flip, in [0, 1).
    model : ``uniform`` (a random other class) or ``asymmetric`` (c -> c + 1 mod K).
    seed : the flips are a function of (labels, rate, model, seed) only.

    Returns
    -------
    (noisy labels, flipped mask)

    Raises
    ------
    ValueError
        For a rate outside [0, 1), an unknown model, or fewer than two classes with rate > 0.
    """
    check_noise_rate(rate)
    if model not in NOISE_MODELS:
        raise ValueError(f"noise model must be uniform or asymmetric, not {model!r}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed + 1_000_003)
    n_flip = int(round(rate * len(labels)))
    if n_flip and n_classes < 2:
        raise ValueError("label noise needs at least two classes")
    idx = rng.choice(len(labels), size=n_flip, replace=False)
    noisy = labels.copy()
    if model == "uniform":
        shift = rng.integers(1, n_classes, size=n_flip)
        noisy[idx] = (labels[idx] + shift) % n_classes
    else:
        noisy[idx] = (labels[idx] + 1) % n_classes
    flipped = np.zeros(len(labels), dtype=bool)
    flipped[idx] = True
    return noisy, flipped
