"""Segmentation-mask QA, model side: corruptions, the cross-fitted ensemble, the detector, bundles, evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.seg.corruption import CORRUPTIONS, corrupt_mask, corrupt_masks
from models.seg.detector import SegDetectorConfig, learn_seg_cut, score_masks
from models.seg.synthetic import make_shape_masks
from models.seg.train import fit_segmenters, to_channels
from models.verdict import MaskErrorKind, Verdict


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _disc(size: int = 32, r: float = 7.0, cy: float = 16, cx: float = 16) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.int64)


def test_corruption_kinds_do_what_they_say():
    rng = np.random.default_rng(0)
    m = _disc()
    m[2:6, 2:6] = 1  # a second, small component
    area = int((m == 1).sum())
    er = corrupt_mask(m, "erode", rng)
    assert np.all(er[m == 0] == 0) and (er == 1).sum() <= 0.7 * area  # only inside pixels removed, >= 30%
    di = corrupt_mask(m, "dilate", rng)
    assert np.all(di[m == 1] == 1) and (di == 1).sum() >= 1.3 * area
    sh, disc = corrupt_mask(_disc(), "shift", rng), _disc() == 1
    assert (sh == 1).sum() >= 0.8 * disc.sum() and np.sum((sh == 1) & disc) < 0.9 * disc.sum()
    dr = corrupt_mask(m, "drop_component", rng)
    assert np.all(dr[m == 0] == 0) and (dr == 1).sum() < area
    from scipy.ndimage import label

    assert label(dr == 1)[1] == label(m == 1)[1] - 1  # exactly one component gone
    ab = corrupt_mask(_disc(r=4), "add_blob", rng)
    assert np.all(ab[_disc(r=4) == 1] == 1) and (ab > 0).sum() > (_disc(r=4) > 0).sum()
    wc = corrupt_mask(m, "wrong_class", rng, n_classes=2)
    assert set(np.unique(wc[m == 1]).tolist()) <= {1, 2} and (wc == 2).any() and np.all((wc > 0) == (m > 0))
    with pytest.raises(ValueError, match="cannot change"):
        corrupt_mask(np.zeros((16, 16), np.int64), "erode", rng)
    with pytest.raises(ValueError, match="cannot change"):
        corrupt_mask(m, "wrong_class", rng, n_classes=1)


def test_corrupt_masks_records_every_change():
    d = make_shape_masks(30, 32, seed=3)
    noisy, rec = corrupt_masks(d.masks, 0.2, seed=1)
    assert len(rec) == 6 and sorted({r.op for r in rec}) == sorted(CORRUPTIONS)
    changed = np.flatnonzero((noisy != d.masks).any((1, 2)))
    assert changed.tolist() == [r.index for r in rec]
    assert all(r.kind == CORRUPTIONS[r.op] for r in rec)
    again, rec2 = corrupt_masks(d.masks, 0.2, seed=1)
    assert np.array_equal(noisy, again) and rec == rec2
    one, rec1 = corrupt_masks((d.masks > 0).astype(np.int64), 0.2, seed=1)
    assert "wrong_class" not in {r.op for r in rec1}


N, SIZE = 48, 32
PLANTED = {"shift": 0, "drop_component": 4, "add_blob": 9, "erode": 12, "dilate": 18, "wrong_class": 22}


@pytest.fixture(scope="module")
def planted():
    torch.set_num_threads(1)
    d = make_shape_masks(N, SIZE, seed=0)
    noisy = d.masks.copy()
    rng = np.random.default_rng(5)
    for op, i in PLANTED.items():
        noisy[i] = corrupt_mask(d.masks[i], op, rng, n_classes=2)
    fit = fit_segmenters(d.images, noisy, n_classes=2, folds=3, epochs=12, seed=0, progress=False)
    return d, noisy, fit


@pytest.mark.slow
def test_crossfit_is_out_of_fold_and_deterministic(planted):
    d, noisy, fit = planted
    assert fit.probs.shape == (3, N, 2, SIZE, SIZE) and len(fit.members) == 9
    for m in fit.members:
        assert not set(m.train_idx) & set(m.predict_idx)  # every mask scored by members that never saw it
    again = fit_segmenters(d.images[:12], noisy[:12], n_classes=2, folds=2, epochs=1, seed=0, progress=False,
                           archs="unet-tiny,segresnet-tiny")
    twice = fit_segmenters(d.images[:12], noisy[:12], n_classes=2, folds=2, epochs=1, seed=0, progress=False,
                           archs="unet-tiny,segresnet-tiny", map_fn=lambda f, ts: [f(t) for t in reversed(ts)])
    assert np.array_equal(again.probs, twice.probs)  # seeded, and independent of the order map_fn runs tasks


@pytest.mark.slow
def test_planted_error_of_each_kind_is_found_and_typed(planted):
    d, noisy, fit = planted
    verdicts = score_masks(fit.probs, noisy, class_names=d.class_names, archs=fit.archs)
    by_unit = {(v.index, v.class_index): v for v in verdicts}
    for op, i in PLANTED.items():
        changed = [c for c in (1, 2) if np.any((noisy[i] == c) != (d.masks[i] == c))]
        hits = [by_unit[(i, c)] for c in changed if by_unit[(i, c)].verdict == Verdict.SUSPECTED_MASK_ERROR]
        assert hits, f"{op} on image {i} not flagged: {[by_unit[(i, c)].to_row() for c in changed]}"
        assert CORRUPTIONS[op] in {h.kind for h in hits}, f"{op}: typed {[h.kind for h in hits]}"
        region = max(hits[0].regions, key=lambda r: r.area_px)
        diff = np.argwhere(noisy[i] != d.masks[i])
        y0, x0, y1, x1 = region.bbox
        assert np.mean((diff[:, 0] >= y0 - 1) & (diff[:, 0] <= y1) & (diff[:, 1] >= x0 - 1) & (diff[:, 1] <= x1)) > 0.5
    flagged = [v for v in verdicts if v.flagged]
    assert len(flagged) <= 3 * len(PLANTED)
    row = flagged[0].to_row()
    json.dumps(row)
    assert {"verdict", "kind", "score", "priority", "dice_members", "hd95_members", "nsd_members", "regions",
            "agreement_dice", "agreement_prob", "dual_consistency"} <= set(row)


@pytest.mark.slow
def test_cut_never_uses_ground_truth(planted):
    d, noisy, fit = planted
    th = learn_seg_cut(fit.probs, noisy)  # inputs: out-of-fold probabilities and the given masks, nothing else
    assert all(np.isfinite(c) or c == float("inf") for c in th.class_cuts) and th.n_units == 2 * N
    # the true masks are not an input: scoring with the learned cut gives the same verdicts as learning it
    # inside score_masks, and the clean truth as the given masks gets fewer flags (the cut follows the masks)
    dirty = score_masks(fit.probs, noisy, thresholds=th, keep_arrays=False)
    assert [v.verdict for v in dirty] == [v.verdict for v in score_masks(fit.probs, noisy, keep_arrays=False)]
    clean = score_masks(fit.probs, d.masks, keep_arrays=False)
    assert sum(v.flagged for v in clean) < sum(v.flagged for v in dirty)


@pytest.mark.slow
def test_channels_and_spacing_units(planted):
    d, noisy, fit = planted
    ch = to_channels(noisy[:4], 2)
    a = score_masks(fit.probs[:, :4], ch, cfg=SegDetectorConfig(), keep_arrays=False)
    b = score_masks(fit.probs[:, :4], noisy[:4], spacing=(0.5, 0.5), keep_arrays=False)
    assert [v.suspicion for v in a] == [v.suspicion for v in b]
    assert b[0].distance_unit == "mm" and a[0].distance_unit == "px"
    for va, vb in zip(a, b, strict=True):
        for arch in va.hd95_members:
            assert vb.hd95_members[arch] == pytest.approx(va.hd95_members[arch] * 0.5, abs=1e-4)
        for ra, rb in zip(va.regions, vb.regions, strict=True):
            assert rb.area_mm2 == pytest.approx(ra.area_px * 0.25)
    assert isinstance(MaskErrorKind("shifted"), MaskErrorKind)


def test_bundle_round_trip_audits_on_the_native_grid(tmp_path):
    from models.bundles import load_bundle
    from models.preprocess import resize_mask
    from models.seg.bundle import SegBundle, train_seg_bundle
    from models.seg.data import load_segmentation_dataset
    from models.seg.synthetic import write_shape_dataset

    d = write_shape_dataset(tmp_path / "data", 16, 48, seed=2)
    data = load_segmentation_dataset(tmp_path / "data", 32)
    assert data.class_names == ["disc", "box"] and data.images.shape == (16, 32, 32)
    path = train_seg_bundle(tmp_path / "data", tmp_path / "bundle", image_size=32, folds=2, epochs=2,
                            archs="unet-tiny,segresnet-tiny", progress=False)
    b = load_bundle(path)
    assert isinstance(b, SegBundle) and b.meta["task"] == "segmentation" and b.image_size == 32
    images = [d.images[i] for i in range(3)]
    given = [{"disc": d.masks[i] == 1, "box": d.masks[i] == 2} for i in range(3)]
    given[1] = {"disc": d.masks[1] == 1}  # a class left out is an empty mask
    out = b.audit(images, given, spacings=[(0.5, 0.5), None, None])
    assert [len(vs) for vs in out] == [2, 2, 2]
    for i, vs in enumerate(out):
        for v in vs:
            assert v.index == i and v.consensus.shape == (48, 48) and v.prob.shape == (48, 48)
            assert all(0 <= r.bbox[0] < r.bbox[2] <= 48 and 0 <= r.bbox[1] < r.bbox[3] <= 48 for r in v.regions)
    assert out[0][0].distance_unit == "mm" and out[1][0].distance_unit == "px"
    assert out[1][1].given_area_px == 0
    # the bundle's members are the fitted ones: model-grid predictions reproduce after reloading
    p1 = b.predict(data.images[:2], device="cpu")
    p2 = load_bundle(path).predict(data.images[:2], device="cpu")
    assert np.array_equal(p1, p2)
    assert resize_mask(out[0][0].consensus, 32).shape == (32, 32)
    with pytest.raises(ValueError, match="vocabulary"):
        b.audit(images[:1], [{"lesion": d.masks[0] > 0}])
    (path / "configs" / "metadata.json").write_text((path / "configs" / "metadata.json").read_text().replace(
        '"image_size": 32', '"image_size": 33'))
    from models.bundles import BundleError

    with pytest.raises(BundleError, match="modified"):
        load_bundle(path)


@pytest.mark.slow
def test_cli_train_audit_evaluate_segmentation(tmp_path):
    from typer.testing import CliRunner

    from models.seg.synthetic import write_shape_dataset
    from service.cli import app

    write_shape_dataset(tmp_path / "data", 12, 32, seed=4)
    r = CliRunner().invoke(app, ["train", "--task", "segmentation", "--dataset", str(tmp_path / "data"), "--out",
                                 str(tmp_path / "b"), "--image-size", "32", "--epochs", "1", "--folds", "2",
                                 "--archs", "unet-tiny,segresnet-tiny", "--no-progress"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["audit", "--bundle", str(tmp_path / "b"), "--dataset", str(tmp_path / "data"),
                                 "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert summary["task"] == "segmentation" and summary["n_masks"] == 24
    assert [c["class_name"] for c in summary["competence"]] == ["disc", "box"] and "cannot_judge" in summary
    assert set(summary["member_median_dice_here"]) <= {"disc", "box"}
    assert len((tmp_path / "a" / "verdicts.csv").read_text().splitlines()) == 25
    r = CliRunner().invoke(app, ["evaluate", "--task", "segmentation", "--dataset", str(tmp_path / "data"), "--out",
                                 str(tmp_path / "e"), "--image-size", "32", "--epochs", "1", "--folds", "2",
                                 "--noise-rate", "0.25", "--archs", "unet-tiny,segresnet-tiny", "--no-progress"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    assert res["task"] == "segmentation" and len(res["corruptions"]) == 3
    assert {"median_dice", "member_median_dice", "judged"} <= set(res["competence"][0])
    assert "members' median out-of-fold Dice" in r.output and (tmp_path / "e" / "predictions.npz").is_file()
    for name in ("labelqa", "dual_consistency", "cleanlab_softmin", "single_model_dice", "mean_prob_dice", "random"):
        assert {"f1", "auprc", "precision", "recall", "per_kind"} <= set(res["methods"][name])
    assert {"labelqa", "cleanlab"} <= set(res["pixel"]) and "efficacy" in res
    r = CliRunner().invoke(app, ["evaluate", "--task", "segmentation", "--dataset", str(tmp_path / "nope"),
                                 "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "images/ and masks/" in r.output


# -- competence, the count, the score: on members made to be competent or weak (fast, no training) --------------


def _members(masks: np.ndarray, *, weak: bool, seed: int = 0, m: int = 3) -> np.ndarray:
    """(m, N, 1, H, W) member probabilities: competent members see the true structure (blurred, with their own
    smooth noise); weak ones are smooth random fields that know nothing of it (untrained members)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    n, h, w = masks.shape
    out = np.zeros((m, n, 1, h, w), np.float32)
    for j in range(m):
        for i in range(n):
            if weak:
                f = gaussian_filter(rng.random((h, w)), 3)
                f = (f - f.min()) / (np.ptp(f) + 1e-9)
            else:
                f = gaussian_filter((masks[i] > 0).astype(float), 1.0) + gaussian_filter(rng.normal(0, 0.25, (h, w)),
                                                                                        1.5)
            out[j, i, 0] = np.clip(f, 0.01, 0.99)
    return out


@pytest.fixture(scope="module")
def discs():
    d = make_shape_masks(60, 24, seed=1, n_classes=1)
    noisy, rec = corrupt_masks(d.masks, 0.1, seed=2)
    return d, noisy, rec


def test_weak_members_cannot_judge_and_flag_nothing(discs):
    d, noisy, _rec = discs
    probs = _members(d.masks, weak=True)
    th = learn_seg_cut(probs, noisy, class_names=["lesion"])
    comp = th.competence[0]
    assert comp["judged"] is False and comp["median_dice"] < 0.5
    text = th.cannot_judge(["lesion"])["lesion"]
    assert text.startswith("the models cannot judge 'lesion' masks here: median out-of-fold Dice 0.")
    verdicts = score_masks(probs, noisy, class_names=["lesion"], thresholds=th, keep_arrays=False, distances=False)
    assert not any(v.verdict == Verdict.SUSPECTED_MASK_ERROR for v in verdicts)
    assert not any(v.judged for v in verdicts)
    # where the models cannot judge, the worklist's order is the softmin mask score (it needs no agreeing members)
    from models.seg.detector import softmin_quality

    want = 0.999 * (1.0 - softmin_quality(probs.mean(0)[:, 0], noisy > 0)) / 3.0
    assert np.allclose([v.priority for v in verdicts], want)


def test_flags_track_the_planted_count_where_the_members_are_competent(discs):
    d, noisy, rec = discs
    probs = _members(d.masks, weak=False)
    th = learn_seg_cut(probs, noisy, class_names=["disc"])
    assert th.competence[0]["judged"] is True and th.competence[0]["median_dice"] > 0.9
    verdicts = score_masks(probs, noisy, class_names=["disc"], thresholds=th, keep_arrays=False, distances=False)
    flags = np.array([v.verdict == Verdict.SUSPECTED_MASK_ERROR for v in verdicts])
    planted = len(rec)
    assert 0.5 <= flags.sum() / planted <= 2.0, (flags.sum(), planted, th.estimated_errors_per_class)
    est = th.estimated_errors_per_class[0]
    assert flags.sum() <= est + SegDetectorConfig().flag_margin * np.sqrt(est) + 1  # never above the count + margin
    truth = (noisy != d.masks).any((1, 2))
    assert (flags & truth).sum() >= 0.5 * planted


def test_priority_orders_suspected_errors_then_hard_cases_then_the_rest_each_by_the_evidence(discs):
    """The worklist's order: the verdict first, then the evidence against the mask ranked in its class."""
    from models.seg.detector import PRIORITY_LEVEL, evidence_rank, mask_features, unit_scores

    d, noisy, _rec = discs
    probs = _members(d.masks, weak=False)
    th = learn_seg_cut(probs, noisy, class_names=["disc"])
    verdicts = score_masks(probs, noisy, class_names=["disc"], thresholds=th, keep_arrays=False, distances=False)
    units = unit_scores(probs, noisy)
    ev = mask_features(units, np.arange(len(units.cls)), units.given, SegDetectorConfig(), {"evidence"})["evidence"]
    pr = np.array([v.priority for v in verdicts])
    level = np.array([PRIORITY_LEVEL[v.verdict] for v in verdicts])
    assert {Verdict.SUSPECTED_MASK_ERROR, Verdict.CONSISTENT} <= {v.verdict for v in verdicts}
    assert np.all((pr >= 0) & (pr < 1))
    assert np.array_equal(np.floor(3 * pr), level)  # every suspected error above every hard case above the rest
    for lv in np.unique(level):  # within a verdict, more evidence against the mask never ranks lower
        sel = level == lv
        o = np.argsort(ev[sel], kind="stable")
        assert np.all(np.diff(pr[sel][o]) >= -1e-12)
    # the rank comes from the cut's knots: the same mask scored alone keeps its priority
    one = score_masks(probs[:, :1], noisy[:1], thresholds=th, keep_arrays=False, distances=False)[0]
    assert one.priority == pytest.approx(verdicts[0].priority, abs=1e-9)
    # without knots (a statistic's cut) the evidence is squashed monotonically into [0, 1)
    r = evidence_rank(np.array([0.0, 1.0, 5.0]), np.zeros(3, np.int64), [])
    assert np.all(np.diff(r) > 0) and r[0] == 0.0 and r[-1] < 1.0


@pytest.mark.slow
def test_cut_unchanged_when_the_truth_is_permuted(discs):
    from models.seg.evaluate import rescore_predictions

    d, noisy, rec = discs
    probs = _members(d.masks, weak=False, seed=3)
    base = {"probs": probs, "noisy": noisy, "clean": d.masks, "records": rec, "settings": {"seed": 0},
            "spacing": None, "archs": ["a", "b", "c"], "class_names": ["disc"]}
    perm = np.random.default_rng(0).permutation(len(d.masks))
    a = rescore_predictions(base)
    b = rescore_predictions({**base, "clean": d.masks[perm]})  # another truth: the evaluation changes, the cut not
    for key in ("competence", "estimated_errors_per_class"):
        assert a[key] == b[key]
    assert a["methods"]["labelqa"]["n_flagged"] == b["methods"]["labelqa"]["n_flagged"]
    assert a["unit_scores"]["labelqa_score"] == b["unit_scores"]["labelqa_score"]
    assert a["methods"]["labelqa"]["f1"] != b["methods"]["labelqa"]["f1"]


def _with_far_blobs(units, idx: np.ndarray, r: int) -> np.ndarray:
    """Each unit's consensus plus a disc of radius ``r`` where every member says background (p < 0.02)."""
    far = (units.prob < 0.02) & ~units.consensus
    masks = units.consensus.copy()
    yy, xx = np.mgrid[:24, :24]
    for u in idx:
        ys, xs = np.nonzero(far[u])
        cy, cx = ys[len(ys) // 2], xs[len(xs) // 2]
        masks[u] |= ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & far[u]
    return masks


def test_wrong_pixels_counts_the_pixels_every_member_is_confidently_against():
    from models.seg.detector import mask_features, unit_scores

    d = make_shape_masks(8, 24, seed=5, n_classes=1)
    probs = _members(d.masks, weak=False, seed=6)
    cfg = SegDetectorConfig()
    units = unit_scores(probs, d.masks, cfg)
    idx = np.arange(len(units.cls))
    # the consensus itself: no pixel where every member is against it
    assert np.all(mask_features(units, idx, units.consensus, cfg)["wrong_pixels"] == 0)
    # blobs far from every structure, ever larger: the count grows with them (every member says background there)
    counts = []
    for r in (1, 2, 3, 4):
        masks = _with_far_blobs(units, idx, r)
        counts.append(mask_features(units, idx, masks, cfg)["wrong_pixels"])
    counts = np.stack(counts)
    assert np.all(np.diff(counts, axis=0) >= 0) and np.all(counts[-1] > counts[0])
    # a stricter confidence counts no more pixels
    strict = mask_features(units, idx, masks, SegDetectorConfig(pixel_confidence=0.9))["wrong_pixels"]
    assert np.all(strict <= counts[-1])
    # by hand: inside the mask every member says outside (p < 0.5), or outside it every member says inside
    lo, hi = units.logit_lo.reshape(len(idx), -1), units.logit_hi.reshape(len(idx), -1)
    g = units.given.reshape(len(idx), -1)
    manual = ((g & (hi < 0)) | (~g & (lo > 0))).sum(axis=1)
    assert np.array_equal(mask_features(units, idx, units.given, cfg)["wrong_pixels"], manual)


def test_cl_pixels_follow_confident_learning_thresholds():
    """The pixels wrong under confident learning's per-class thresholds: none for the consensus, more for
    ever larger confidently wrong blobs, the thresholds taken from the given masks and kept for other masks."""
    from models.seg.detector import confident_thresholds, mask_features, unit_scores

    d = make_shape_masks(8, 24, seed=5, n_classes=1)
    probs = _members(d.masks, weak=False, seed=6)
    cfg = SegDetectorConfig()
    units = unit_scores(probs, d.masks, cfg)
    idx = np.arange(len(units.cls))
    th = units.confident_thresholds
    g = units.given.reshape(len(idx), -1)
    p = units.prob.reshape(len(idx), -1).astype(np.float64)
    assert np.allclose(th[0], [(1 - p[~g]).mean(), p[g].mean()]) and np.all(th > 0.5)
    assert np.array_equal(th, confident_thresholds(units.prob, units.given, units.cls, 1))
    assert np.all(mask_features(units, idx, units.consensus, cfg)["cl_pixels"] == 0)
    counts = []
    for r in (1, 2, 3, 4):
        masks = _with_far_blobs(units, idx, r)
        f = mask_features(units, idx, masks, cfg)
        counts.append(f["cl_pixels"])
        # divided by the evidence's square root of the size, as wrong_pixels_sqrt
        assert np.allclose(f["cl_pixels_sqrt"] * f["wrong_pixels"], f["wrong_pixels_sqrt"] * f["cl_pixels"])
    counts = np.stack(counts)
    assert np.all(np.diff(counts, axis=0) >= 0) and np.all(counts[-1] > counts[0])
    # the blob's pixels are all wrong under the thresholds: the count grows by the blob's area
    added = (masks & ~units.consensus).reshape(len(idx), -1).sum(axis=1)
    assert np.array_equal(counts[-1], added)
    # by hand on the given masks: the other label reaches its threshold and is the more likely one
    manual = ((g & (1 - p >= th[0, 0]) & ((p < th[0, 1]) | (1 - p > p)))
              | (~g & (p >= th[0, 1]) & ((1 - p < th[0, 0]) | (p > 1 - p)))).sum(axis=1)
    assert np.array_equal(mask_features(units, idx, units.given, cfg)["cl_pixels"], manual)
    # the thresholds are the given masks': scoring other masks leaves them as they were
    assert np.array_equal(units.confident_thresholds, th)


def test_mask_features_are_the_same_for_volumes():
    """One code path for any spatial dimension: a volume's features equal those of the same voxels laid out in 2-D."""
    from dataclasses import replace

    from models.seg.detector import combine_score, mask_features, unit_scores

    rng = np.random.default_rng(7)
    n, dz, h, w = 4, 3, 10, 12
    vols = np.zeros((n, dz, h, w), np.int64)
    vols[:, 1:, 2:7, 3:9] = 1
    probs = np.clip(vols[None, :, None].astype(np.float32) * 0.9 + rng.normal(0, 0.2, (3, n, 1, dz, h, w)),
                    0.01, 0.99).astype(np.float32)
    flat = unit_scores(probs.reshape(3, n, 1, dz * h, w), vols.reshape(n, dz * h, w))
    vol = replace(flat, **{f: getattr(flat, f).reshape(n, dz, h, w)
                           for f in ("given", "consensus", "prob", "unanimous", "logit_lo", "logit_hi")})
    wrong = vols.astype(bool).copy()
    wrong[:2, 0, :4, :4] = True  # a spurious block on two volumes
    idx = np.arange(n)
    cfg = SegDetectorConfig()
    f2, f3 = mask_features(flat, idx, wrong.reshape(n, dz * h, w), cfg), mask_features(vol, idx, wrong, cfg)
    assert set(f3) >= {"suspicion", "evidence", "wrong_pixels", "softmin", "cl_pixels", "cl_pixels_sqrt"}
    for key in f2:
        assert np.allclose(f2[key], f3[key]), key
    assert np.all(f3["wrong_pixels"][:2] > f3["wrong_pixels"][2:])
    assert np.all(f3["cl_pixels"][:2] > f3["cl_pixels"][2:])
    score = SegDetectorConfig().score
    knots = [{k: list(np.quantile(f3[k], np.linspace(0, 1, 11))) for k in f3}]
    assert combine_score(f3, np.zeros(n, np.int64), score, knots).shape == (n,)


def test_softmin_is_cleanlabs_score():
    from cleanlab.segmentation.rank import get_label_quality_scores

    from models.seg.detector import softmin_quality

    rng = np.random.default_rng(4)
    p = rng.random((5, 12, 10)).astype(np.float32)
    g = rng.random((5, 12, 10)) > 0.6
    ours = softmin_quality(p, g)
    theirs, _ = get_label_quality_scores(g.astype(np.int64), np.stack([1 - p, p], axis=1), method="softmin",
                                         verbose=False)
    assert np.allclose(ours, theirs, atol=1e-6)
    assert softmin_quality(p[:, None], g[:, None]).shape == (5,)  # any spatial dimension


def test_recipe_picks_grid_and_epochs_from_the_data():
    from models.seg.recipe import choose_epochs, seg_recipe

    yy, xx = np.mgrid[:400, :400]
    big = [((yy - 200) ** 2 + (xx - 200) ** 2 < 120 ** 2).astype(np.int64)] * 10
    thin = [(np.abs(yy - 200) < 3).astype(np.int64)] * 10  # a 5 px line across a 400 px image
    assert seg_recipe(big, folds=4).image_size == 64
    r = seg_recipe(thin, folds=4)
    assert r.image_size > 64 and "across" in r.size_reason
    assert seg_recipe(thin, folds=4, image_size=48, epochs=3).image_size == 48
    few, many = choose_epochs(60)[0], choose_epochs(3000)[0]
    assert few > many >= 10  # small sets get more epochs, large ones fewer


def test_duplicate_images_share_a_fold_group():
    from models.seg.data import SegDataset, fold_groups

    rng = np.random.default_rng(0)
    ims = rng.random((4, 8, 8)).astype(np.float32)
    ims[3] = ims[1]
    ds = SegDataset(ims, np.zeros((4, 8, 8), np.int64), ["x"], ["a", "b", "c", "d"])
    g = fold_groups(ds)
    assert g[1] == g[3] and len(set(g)) == 3


def test_auto_score_picks_the_candidate_under_which_simulated_errors_rank_highest():
    """Per class, the score that puts the simulated wrong masks highest among the given masks is chosen."""
    from models.seg.detector import choose_class_scores

    rng = np.random.default_rng(11)
    n, s = 200, 300  # units (two classes, alternating) and simulated wrong masks
    cls = np.tile([0, 1], n // 2)
    sim_unit = rng.integers(0, n, s)
    sim_cls = cls[sim_unit]
    feats = {f: rng.random(n) for f in ("suspicion", "evidence", "wrong_pixels", "wrong_pixels_sqrt")}
    sim = {f: rng.random(s) for f in feats}  # as the given masks: nothing separates them ...
    # ... except the raw count for class 0 and the count / sqrt(size) for class 1
    sim["wrong_pixels"] = np.where(sim_cls == 0, 1.0 + rng.random(s), sim["wrong_pixels"])
    sim["wrong_pixels_sqrt"] = np.where(sim_cls == 1, 1.0 + rng.random(s), sim["wrong_pixels_sqrt"])
    for by in ("detection", "auroc"):
        cfg = SegDetectorConfig(score="auto", auto_by=by)
        chosen, measures = choose_class_scores(feats, cls, sim, sim_unit, 2, cfg)
        assert chosen == ["blend_pixels", "blend_pixels_sqrt"], by
        assert set(measures[0]) == set(cfg.auto_candidates)
        assert measures[0]["blend_pixels"] > measures[0]["blend_pixels_sqrt"] > 0
        # a tie (nothing separates anything) keeps the first candidate, the default
        flat, _ = choose_class_scores(feats, cls, {f: np.full(s, 0.5) for f in feats}, sim_unit, 2, cfg)
        assert flat == [cfg.auto_candidates[0]] * 2
    with pytest.raises(ValueError, match="auto_by"):
        SegDetectorConfig(score="auto", auto_by="f1")
    with pytest.raises(ValueError, match="auto_candidates"):
        SegDetectorConfig(score="auto", auto_candidates=("auto",))


def test_auto_score_is_stored_in_the_thresholds_and_reused_when_scoring(discs):
    """The chosen score travels with the cut (as a bundle stores it) and scoring uses it, not the config's."""
    from models.seg.detector import SegThresholds

    d, noisy, _rec = discs
    probs = _members(d.masks, weak=False, seed=3)
    cfg = SegDetectorConfig(score="auto")
    th = learn_seg_cut(probs, noisy, cfg)
    assert th.score == "auto" and len(th.class_scores) == 1 and th.class_scores[0] in cfg.auto_candidates
    assert set(th.score_selection[0]) == set(cfg.auto_candidates)
    assert max(th.score_selection[0].values()) == th.score_selection[0][th.class_scores[0]]
    back = SegThresholds.from_dict(json.loads(json.dumps(th.to_dict())))
    assert back.class_scores == th.class_scores and back.score_knots == th.score_knots
    inside = score_masks(probs, noisy, cfg=cfg, keep_arrays=False, distances=False)
    stored = score_masks(probs, noisy, thresholds=back, cfg=SegDetectorConfig(score="suspicion"), keep_arrays=False,
                         distances=False)
    assert [v.raw_score for v in stored] == [v.raw_score for v in inside]
    assert [v.verdict for v in stored] == [v.verdict for v in inside]
    # the same as fixing the chosen score from the start
    fixed = score_masks(probs, noisy, cfg=SegDetectorConfig(score=th.class_scores[0]), keep_arrays=False,
                        distances=False)
    assert np.allclose([v.raw_score for v in fixed], [v.raw_score for v in inside])
    assert [v.verdict for v in fixed] == [v.verdict for v in inside]
    # an older cut without per-class scores still scores with its one score
    older = {k: v for k, v in th.to_dict().items() if k not in ("class_scores", "score_selection")}
    old = SegThresholds.from_dict(older | {"score": th.class_scores[0]})
    assert [v.raw_score for v in score_masks(probs, noisy, thresholds=old, keep_arrays=False, distances=False)] == \
        [v.raw_score for v in fixed]


@pytest.mark.slow
def test_auto_score_unchanged_when_the_truth_is_permuted(discs):
    from models.seg.evaluate import rescore_predictions

    d, noisy, rec = discs
    probs = _members(d.masks, weak=False, seed=3)
    base = {"probs": probs, "noisy": noisy, "clean": d.masks, "records": rec, "settings": {"seed": 0},
            "spacing": None, "archs": ["a", "b", "c"], "class_names": ["disc"]}
    perm = np.random.default_rng(0).permutation(len(d.masks))
    cfg = SegDetectorConfig(score="auto")
    a = rescore_predictions(base, cfg)
    b = rescore_predictions({**base, "clean": d.masks[perm]}, cfg)
    for key in ("competence", "estimated_errors_per_class", "class_scores"):
        assert a[key] == b[key]
    assert a["unit_scores"]["labelqa_score"] == b["unit_scores"]["labelqa_score"]
    assert a["methods"]["labelqa"]["f1"] != b["methods"]["labelqa"]["f1"]


def test_a_flag_whose_suggested_mask_is_shaped_unlike_the_class_ranks_among_the_rest():
    """Two heads joined: every member segments both, the annotation holds one (as its protocol asks). The flag
    stands, but the worklist ranks it by its evidence among the masks not flagged (``shape_check``)."""
    from models.seg.detector import SegThresholds, shape_atypical, shape_reference, solidity

    rng = np.random.default_rng(4)
    n, h = 40, 32
    given = np.zeros((n, h, h), np.int64)
    for i in range(n):
        given[i] = _disc(h, rng.uniform(5, 8), rng.uniform(10, 22), rng.uniform(10, 22))
    given[0] = _disc(h, 5, 16, 8)
    seen = given.copy()  # what the members see
    seen[0] = given[0] | _disc(h, 5, 16, 19)  # a second head touching the annotated one
    assert solidity(given[1] > 0) > 0.85 and solidity(seen[0] > 0) < 0.85 and solidity(np.eye(2, dtype=bool)) == 1.0
    probs = _members(seen, weak=False, seed=5)
    th = learn_seg_cut(probs, given, class_names=["head"])
    ref = th.shape_reference[0]
    assert ref["n"] == n and ref["median"] > 0.85
    assert th.shape_reference == shape_reference(to_channels(given, 1)[:, 0], np.zeros(n, np.int64), 1)
    assert SegThresholds.from_dict(th.to_dict()).shape_reference == th.shape_reference  # kept in the bundle
    assert shape_atypical(solidity(seen[0] > 0), ref, SegDetectorConfig())
    assert not shape_atypical(solidity(given[3] > 0), ref, SegDetectorConfig())
    assert not shape_atypical(0.0, ref, SegDetectorConfig(shape_check="off"))

    on = score_masks(probs, given, class_names=["head"], thresholds=th, keep_arrays=False, distances=False)
    off = score_masks(probs, given, class_names=["head"], thresholds=th, keep_arrays=False, distances=False,
                      cfg=SegDetectorConfig(shape_check="off"))
    assert off[0].verdict == Verdict.SUSPECTED_MASK_ERROR and off[0].priority >= 2 / 3
    assert on[0].verdict == off[0].verdict  # the flag stands
    assert on[0].shape_typical is False
    assert on[0].consensus_solidity == pytest.approx(solidity(probs.mean(0)[0, 0] > 0.5))  # the suggested mask's
    assert on[0].priority < 1 / 3 and on[0].priority == pytest.approx(off[0].priority - 2 / 3)
    for a, b in zip(on[1:], off[1:], strict=True):  # every other mask keeps its place
        assert a.priority == b.priority and a.shape_typical in (None, True)
    assert off[0].shape_typical is None and off[0].consensus_solidity is None  # not checked when off


def test_the_shape_check_needs_enough_masks_and_a_spread_to_judge_a_shape():
    """A class with fewer than SHAPE_MIN_MASKS masks gets no shape check (its flags keep their place and say
    "not checked"); a class of near-identical shapes is not held to a spread finer than SHAPE_MIN_SPREAD."""
    from models.seg.detector import SHAPE_MIN_MASKS, SHAPE_MIN_SPREAD, shape_atypical, shape_checkable, solidity

    rng = np.random.default_rng(4)
    n, h = SHAPE_MIN_MASKS - 1, 32
    given = np.zeros((n, h, h), np.int64)
    for i in range(n):
        given[i] = _disc(h, rng.uniform(5, 8), rng.uniform(10, 22), rng.uniform(10, 22))
    given[0] = _disc(h, 5, 16, 8)
    seen = given.copy()
    seen[0] = given[0] | _disc(h, 5, 16, 19)  # the two joined heads of the test above
    probs = _members(seen, weak=False, seed=5)
    th = learn_seg_cut(probs, given, class_names=["head"])
    ref = th.shape_reference[0]
    assert ref["n"] == n and not shape_checkable(ref)
    assert not shape_atypical(solidity(seen[0] > 0), ref, SegDetectorConfig())  # would be atypical with 20 masks
    assert shape_atypical(solidity(seen[0] > 0), {**ref, "n": float(SHAPE_MIN_MASKS)}, SegDetectorConfig())
    on = score_masks(probs, given, class_names=["head"], thresholds=th, keep_arrays=False, distances=False)
    off = score_masks(probs, given, class_names=["head"], thresholds=th, keep_arrays=False, distances=False,
                      cfg=SegDetectorConfig(shape_check="off"))
    assert on[0].verdict == Verdict.SUSPECTED_MASK_ERROR and on[0].priority == off[0].priority >= 2 / 3
    assert on[0].shape_typical is None and on[0].consensus_solidity is None  # not checked

    template = {"median": 0.96, "mad": 0.0, "n": 100.0}  # every mask the same disc
    assert not shape_atypical(0.96 - 2 * SHAPE_MIN_SPREAD, template, SegDetectorConfig())  # within 3 x the floor
    assert shape_atypical(0.96 - 4 * SHAPE_MIN_SPREAD, template, SegDetectorConfig())
