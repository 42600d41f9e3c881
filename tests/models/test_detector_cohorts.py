"""Systematic disagreement: a (group, given class) cell that every member contradicts far more often
than the rest becomes one cohort finding instead of dozens of individual label-error flags."""

from __future__ import annotations

import numpy as np

from models.detector import DetectorConfig, Thresholds, score_samples


def _probs(rng: np.random.Generator, called: np.ndarray, n_classes: int = 2) -> np.ndarray:
    """Confident member probabilities for the classes in ``called``, with a little noise."""
    p = np.full((len(called), n_classes), 0.05)
    p[np.arange(len(called)), called] = 0.95
    p += rng.uniform(0, 0.02, p.shape)
    return p / p.sum(1, keepdims=True)


def _setup(shifted_site_b: bool):
    rng = np.random.default_rng(0)
    n_a, n_b = 200, 60
    given = np.zeros(n_a + n_b, dtype=np.int64)
    given[: n_a // 2] = 1
    groups = ["site-a"] * n_a + ["site-b"] * n_b
    called = given.copy()
    isolated = np.array([5, 17, 120, 150])  # four individual label errors at site A
    called[isolated] = 1 - given[isolated]
    if shifted_site_b:
        called[n_a : n_a + 30] = 1  # half of site B's "class 0" is called class 1 by every member
    probs = {a: _probs(rng, called) for a in ("m1", "m2", "m3")}
    th = Thresholds({"m1": 1.0, "m2": 1.0, "m3": 1.0}, [0.5, 0.5], score_cut=0.5, agreement_threshold=0.5,
                    agreement_how="fixed", n_estimated_errors=len(isolated))
    return probs, given, groups, th, isolated, n_a


def test_shifted_site_is_one_cohort_finding_not_thirty_label_errors():
    probs, given, groups, th, isolated, n_a = _setup(shifted_site_b=True)
    agreement = np.full(len(given), np.nan)
    without = score_samples(probs, given, agreement, th, DetectorConfig(cohorts=False), groups=groups)
    with_ = score_samples(probs, given, agreement, th, DetectorConfig(), groups=groups)
    assert int(without.labelqa_flag[n_a:].sum()) == 30  # every shifted image flagged on its own
    assert len(with_.cohorts) == 1
    finding = with_.cohorts[0]
    assert (finding["group"], finding["given_class"]) == ("site-b", 0)
    assert finding["unanimous_disagreement_rate"] == 0.5  # 30 of the 60 site-B class-0 images
    assert finding["flagged_before"] == 30 and finding["flagged_after"] <= 2
    # the isolated errors elsewhere are still flagged individually
    assert set(np.flatnonzero(with_.labelqa_flag[:n_a])) == set(isolated.tolist())


def test_no_cohort_without_systematic_disagreement():
    probs, given, groups, th, isolated, _ = _setup(shifted_site_b=False)
    s = score_samples(probs, given, np.full(len(given), np.nan), th, DetectorConfig(), groups=groups)
    assert s.cohorts == []
    assert set(np.flatnonzero(s.labelqa_flag)) == set(isolated.tolist())
