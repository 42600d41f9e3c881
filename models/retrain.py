"""``labelqa evaluate --retrain``: does reviewing in labelqa's order make a better model? Measured offline.

The loop closed on a labelled data set (no DICOM): hold out a clean test split, flip a fraction of
the training labels (``models.corruption``), fit the cross-fitted ensemble on the noisy labels and
rank the training samples by labelqa's re-annotation priority (``models.detector.score_fit``). A
simulated reviewer who knows the truth then works down that list, or down a random order, with a
budget of a fraction of the training set and restores the true label of every error it meets. The
ensemble is retrained from scratch on each label set and its accuracy measured on the held-out test
split: noisy labels, cleaned by labelqa's order, cleaned by random review (same budget), fully clean.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from models.corruption import corrupt_labels
from models.data import LabelledImages, load_dataset, stratified_subsample
from models.detector import DetectorConfig, score_fit
from models.ensemble import MemberSpec, parse_archs
from models.train import TrainConfig, fit_ensemble, predict_probs, resolve_device, train_member

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["RetrainSettings", "run_retrain", "simulate_review", "summary_table"]


@dataclass
class RetrainSettings:
    """One retrain experiment (recorded in its JSON)."""

    dataset: str
    image_size: int = 32
    max_samples: int | None = 800
    test_fraction: float = 0.25
    noise_rate: float = 0.1
    noise_model: str = "uniform"
    budgets: tuple[float, ...] = (0.05, 0.1, 0.2)
    archs: tuple[str, ...] = ("densenet-tiny", "resnet-tiny", "efficientnet-tiny")
    folds: int = 3
    seed: int = 0
    device: str = "cpu"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, batch_size=32, lr=3e-3))
    detector: DetectorConfig = field(default_factory=DetectorConfig)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["train"], d["detector"] = self.train.to_dict(), self.detector.to_dict()
        d["budgets"], d["archs"] = list(self.budgets), list(self.archs)
        return d


def split_train_test(data: LabelledImages, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-stratified (train indices, test indices)."""
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be in (0, 1)")
    n_test = max(len(data.class_names), int(round(test_fraction * len(data))))
    test = stratified_subsample(data.labels, n_test, seed + 7919)
    mask = np.zeros(len(data), bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def simulate_review(noisy: np.ndarray, truth: np.ndarray, order: np.ndarray, budget: int) -> tuple[np.ndarray, int]:
    """A reviewer who knows the truth checks the first ``budget`` samples of ``order`` and fixes the wrong
    labels among them; returns (cleaned labels, errors found)."""
    reviewed = np.asarray(order[:budget], dtype=np.int64)
    cleaned = noisy.copy()
    cleaned[reviewed] = truth[reviewed]
    return cleaned, int(np.sum(noisy[reviewed] != truth[reviewed]))


class _Accuracy(TypedDict):
    """Test accuracy of the ensemble trained on one label set: mean-probability and per member."""

    accuracy: float
    member_accuracy: dict[str, float]
    train_s: float


def _test_accuracy(specs: list[MemberSpec], images: np.ndarray, labels: np.ndarray, test_images: np.ndarray,
                   test_labels: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int,
                   device: torch.device) -> _Accuracy:
    """Train every member on (images, labels), average their test probabilities; accuracy per member and mean."""
    probs = []
    per = {}
    t0 = time.perf_counter()
    for i, spec in enumerate(specs):
        model, _ = train_member(spec, images, labels, n_classes, cfg, seed=seed + 101 * i, device=device)
        p = predict_probs(model, test_images, device=device)
        per[spec.name] = float(np.mean(p.argmax(1) == test_labels))
        probs.append(p)
    mean = np.mean(probs, axis=0)
    return {"accuracy": float(np.mean(mean.argmax(1) == test_labels)), "member_accuracy": per,
            "train_s": time.perf_counter() - t0}


def run_retrain(s: RetrainSettings, out: Path | None = None, *, data: LabelledImages | None = None) -> dict[str, Any]:
    """The experiment; returns the results dict (also written to ``out`` when given)."""
    t_start = time.perf_counter()
    device = resolve_device(s.device)
    specs = parse_archs(s.archs)
    if data is None:
        data = load_dataset(s.dataset, s.image_size)
    if s.max_samples and s.max_samples < len(data):
        data = data.subset(stratified_subsample(data.labels, s.max_samples, s.seed))
    n_classes = len(data.class_names)
    tr, te = split_train_test(data, s.test_fraction, s.seed)
    train, test = data.subset(tr), data.subset(te)
    truth = train.labels
    noisy, flipped = corrupt_labels(truth, n_classes, s.noise_rate, s.noise_model, s.seed)
    n = len(noisy)
    log.info("retrain: %d train (%d flipped), %d test; fitting the detector", n, int(flipped.sum()), len(test))
    fit = fit_ensemble(specs, train.images, noisy, n_classes, s.train, mode="crossfit", folds=s.folds, seed=s.seed,
                       device=device)
    sc, *_ = score_fit(fit, train.images, noisy, s.detector, device=device, groups=train.groups, seed=s.seed)
    t_detect = time.perf_counter() - t_start
    order_lqa = np.argsort(-np.asarray(sc.priority, dtype=np.float64), kind="stable")
    order_rnd = np.random.default_rng(s.seed + 31).permutation(n)

    def acc(labels: np.ndarray) -> _Accuracy:
        return _test_accuracy(specs, train.images, labels, test.images, test.labels, n_classes, s.train, s.seed,
                              device)

    results: dict[str, Any] = {
        "dataset": str(s.dataset), "dataset_name": Path(s.dataset).name, "class_names": data.class_names,
        "n_train": int(n), "n_test": int(len(test)), "n_flipped": int(flipped.sum()), "settings": s.to_dict(),
        "device": str(device), "machine": platform.processor() or platform.machine(),
        "flagged": int(np.sum(sc.labelqa_flag)), "detector_s": t_detect,
    }
    log.info("retrain: noisy / clean")
    results["noisy"] = acc(noisy)
    results["clean"] = acc(truth)
    rows = []
    for b in s.budgets:
        k = int(round(b * n))
        lqa_labels, lqa_found = simulate_review(noisy, truth, order_lqa, k)
        rnd_labels, rnd_found = simulate_review(noisy, truth, order_rnd, k)
        log.info("retrain: budget %.0f%% (%d reviews): labelqa found %d errors, random %d", 100 * b, k, lqa_found,
                 rnd_found)
        row: dict[str, Any] = {"budget": b, "reviews": k, "errors_found": {"labelqa": lqa_found, "random": rnd_found},
               "errors_left": {"labelqa": int(flipped.sum()) - lqa_found, "random": int(flipped.sum()) - rnd_found},
               "speedup": (lqa_found / rnd_found) if rnd_found else None,
               "labelqa": acc(lqa_labels), "random": acc(rnd_labels)}
        row["gain_over_random"] = row["labelqa"]["accuracy"] - row["random"]["accuracy"]
        row["gain_over_noisy"] = row["labelqa"]["accuracy"] - results["noisy"]["accuracy"]
        rows.append(row)
    results["budgets"] = rows
    results["total_s"] = time.perf_counter() - t_start
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    return results


def summary_table(r: dict[str, Any]) -> str:
    """A few lines: test accuracy per label set and errors found per budget."""
    lines = [f"{r['dataset_name']}: {r['n_train']} train ({r['n_flipped']} flipped), {r['n_test']} clean test images",
             f"test accuracy  noisy {r['noisy']['accuracy']:.3f}   fully clean {r['clean']['accuracy']:.3f}",
             f"{'budget':>7} {'reviews':>7} {'found lqa/rnd':>14} {'acc labelqa':>11} {'acc random':>10} {'gain':>7}"]
    for b in r["budgets"]:
        f = b["errors_found"]
        lines.append(f"{100 * b['budget']:6.0f}% {b['reviews']:7d} {f['labelqa']:>6d}/{f['random']:<7d} "
                     f"{b['labelqa']['accuracy']:11.3f} {b['random']['accuracy']:10.3f} {b['gain_over_random']:+7.3f}")
    return "\n".join(lines)
