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
    assert len((tmp_path / "a" / "verdicts.csv").read_text().splitlines()) == 25
    r = CliRunner().invoke(app, ["evaluate", "--task", "segmentation", "--dataset", str(tmp_path / "data"), "--out",
                                 str(tmp_path / "e"), "--image-size", "32", "--epochs", "1", "--folds", "2",
                                 "--noise-rate", "0.25", "--archs", "unet-tiny,segresnet-tiny", "--no-progress"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    assert res["task"] == "segmentation" and len(res["corruptions"]) == 3
    for name in ("labelqa", "dual_consistency", "cleanlab_softmin", "single_model_dice", "mean_prob_dice", "random"):
        assert {"f1", "auprc", "precision", "recall", "per_kind"} <= set(res["methods"][name])
    assert {"labelqa", "cleanlab"} <= set(res["pixel"]) and "efficacy" in res
    r = CliRunner().invoke(app, ["evaluate", "--task", "segmentation", "--dataset", str(tmp_path / "nope"),
                                 "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "images/ and masks/" in r.output
