"""labelqa's cut from simulated flips on out-of-sample probabilities, and the batched augmentation.

Probabilities here are generated (a known truth, 5% of labels flipped); the detector never sees the
truth. The real-data numbers are in benchmarks/results (benchmarks/rescore.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.detector import DetectorConfig, fit_thresholds, precision_from_steps, score_samples, simulated_flip_cut
from models.train import batch_augment


def _members(n: int, k: int, n_members: int, flip_rate: float, seed: int, strength: float = 3.0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    probs = {}
    hard = rng.random(n) < 0.08  # hard cases: every member is unsure
    for m in range(n_members):
        logits = rng.normal(0, 1, (n, k))
        logits[np.arange(n), truth] += np.where(hard, 0.3, strength + rng.normal(0, 0.8, n))
        p = np.exp(logits - logits.max(1, keepdims=True))
        probs[f"m{m}"] = p / p.sum(1, keepdims=True)
    given = truth.copy()
    flip = rng.choice(n, int(round(flip_rate * n)), replace=False)
    given[flip] = (truth[flip] + rng.integers(1, k, len(flip))) % k
    flipped = np.zeros(n, dtype=bool)
    flipped[flip] = True
    return probs, given, flipped


def _f1(flags, truth):
    tp = (flags & truth).sum()
    return 0.0 if tp == 0 else 2 * tp / (flags.sum() + truth.sum())


@pytest.mark.parametrize("k", [2, 4])
def test_estimates_the_error_count_and_flags_them(k):
    probs, given, flipped = _members(3000, k, 3, 0.05, seed=k)
    pw = np.mean(list(probs.values()), axis=0)
    out = simulated_flip_cut(pw, given, 0.3)
    n_est = sum(out["errors_per_class"])
    assert 0.7 * flipped.sum() <= n_est <= 1.4 * flipped.sum(), (n_est, flipped.sum())
    assert _f1(out["flags"], flipped) >= 0.8
    # Ranking by the estimated local precision finds flips first.
    top = np.argsort(-out["precision"], kind="stable")[: flipped.sum() // 2]
    assert flipped[top].mean() >= 0.9


def test_clean_labels_give_few_flags():
    probs, given, flipped = _members(2000, 3, 3, 0.0, seed=5)
    assert not flipped.any()
    out = simulated_flip_cut(np.mean(list(probs.values()), axis=0), given, 0.3)
    assert out["flags"].sum() <= 0.01 * len(given)


def test_stored_thresholds_reproduce_the_flags_and_ranking():
    probs, given, flipped = _members(1500, 3, 3, 0.05, seed=11)
    cfg = DetectorConfig()
    nan = np.full(len(given), np.nan)
    th = fit_thresholds(probs, given, nan, np.zeros(len(given), dtype=bool), cfg)
    assert th.cut == "simulated_flips" and th.class_score_cuts and len(th.precision_steps) == 3
    sc = score_samples(probs, given, nan, th, cfg)
    pw = sc.p_weighted
    direct = simulated_flip_cut(pw, given, cfg.tail_floor)
    assert np.array_equal(sc.labelqa_flag, direct["flags"])
    susp = 1.0 - pw[np.arange(len(given)), given]
    assert np.allclose(precision_from_steps(susp, given, th.precision_steps), direct["precision"])
    # A bundle's thresholds survive a JSON round trip (inf cuts included).
    import json

    from models.detector import Thresholds

    again = Thresholds.from_dict(json.loads(json.dumps(th.to_dict())))
    assert np.array_equal(score_samples(probs, given, nan, again, cfg).labelqa_flag, sc.labelqa_flag)


def test_small_classes_fall_back_to_the_confident_joint_cut():
    probs, given, _ = _members(150, 2, 3, 0.1, seed=2)
    nan = np.full(len(given), np.nan)
    th = fit_thresholds(probs, given, nan, np.zeros(len(given), dtype=bool), DetectorConfig())
    assert th.cut == "confident_joint" and not th.class_score_cuts and np.isfinite(th.score_cut)
    big = fit_thresholds(*_members(1000, 2, 3, 0.1, seed=2)[:2], np.full(1000, np.nan), np.zeros(1000, dtype=bool),
                         DetectorConfig())
    assert big.cut == "simulated_flips"


def test_batch_augment_identity_and_determinism():
    x = torch.rand(6, 1, 32, 32)
    g = torch.Generator().manual_seed(0)
    same = batch_augment(x, g, p_affine=0.0, p_contrast=0.0, p_noise=0.0)
    assert torch.allclose(same, x, atol=1e-5)
    a = batch_augment(x, torch.Generator().manual_seed(3))
    b = batch_augment(x, torch.Generator().manual_seed(3))
    c = batch_augment(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    # A rotation moves a bright off-centre square but keeps most of its mass inside the image.
    sq = torch.zeros(1, 1, 32, 32)
    sq[..., 8:14, 8:14] = 1.0
    moved = batch_augment(sq.repeat(8, 1, 1, 1), torch.Generator().manual_seed(1), p_contrast=0.0, p_noise=0.0)
    assert (moved.sum(dim=(1, 2, 3)) > 0.6 * 36).all()
    assert ((moved - sq).abs().sum(dim=(1, 2, 3)) > 1.0).sum() >= 4  # p_affine 0.8: most samples changed


def test_batch_cut_follows_the_error_rate_of_an_audited_batch():
    """A bundle fitted where 5% of labels were wrong audits a batch where 20% are: the cut re-estimated on
    the batch (its members never saw it) counts the batch's errors; the stored cut keeps the old count."""
    from models.detector import batch_cut_ok, refit_cut

    probs, given, flipped = _members(3000, 3, 3, 0.05, seed=11)
    cfg = DetectorConfig()
    n_dis = np.sum([p.argmax(1) != given for p in probs.values()], axis=0)
    th = fit_thresholds(probs, given, np.full(len(given), np.nan), n_dis == 3, cfg)
    b_probs, b_given, b_flipped = _members(1500, 3, 3, 0.20, seed=12)
    nan = np.full(len(b_given), np.nan)
    assert batch_cut_ok(b_given, 3, cfg)
    stored = score_samples(b_probs, b_given, nan, th, cfg).labelqa_flag
    th_b = refit_cut(th, b_probs, b_given, cfg)
    batch = score_samples(b_probs, b_given, nan, th_b, cfg).labelqa_flag
    assert th_b.member_weights == th.member_weights and th_b.agreement_threshold == th.agreement_threshold
    assert 0.7 * b_flipped.sum() <= th_b.n_estimated_errors <= 1.4 * b_flipped.sum(), th_b.n_estimated_errors
    assert th.n_estimated_errors < 0.5 * th_b.n_estimated_errors
    assert (batch & b_flipped).sum() > (stored & b_flipped).sum()
    assert _f1(batch, b_flipped) >= 0.8 and _f1(batch, b_flipped) > _f1(stored, b_flipped)
    # Too small, or a class missing: no re-estimation.
    assert not batch_cut_ok(b_given[:150], 3, cfg)
    assert not batch_cut_ok(np.where(b_given == 2, 1, b_given), 3, cfg)
    assert not batch_cut_ok(b_given, 3, DetectorConfig(cut="confident_joint"))
