"""3-D mask QA: corruptions, region typing, cross-fitting by case, the detector and its cut, bundles, the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from models.bundles import BundleError, load_bundle
from models.seg.detector import SegDetectorConfig
from models.verdict import MaskErrorKind, Verdict
from models.volume.corruption import (
    BINARY_OPS,
    DEFAULT_VOLUME_KINDS,
    VOLUME_CORRUPTIONS,
    corrupt_binary,
    corrupt_volume,
    corrupt_volumes,
    slice_extent,
)
from models.volume.data import Geometry, VolumeDataset
from models.volume.detector import DicePredictor, VolumeDetectorConfig, score_volumes, volume_regions
from models.volume.synthetic import make_volume_set, write_volume_set
from models.volume.train import VolumeTrainConfig, fit_volume_segmenters, predict_volume, prepare_volumes

SHAPE = (24, 24, 24)


def _dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_each_corruption_changes_the_segment_as_named():
    data = make_volume_set(6, SHAPE, seed=3, spacing=(2.0, 1.0, 1.0))
    rng = np.random.default_rng(0)
    for case in data.cases:
        lab = case.labels
        for op in DEFAULT_VOLUME_KINDS:
            new, cls = corrupt_volume(lab, op, rng, n_classes=2, spacing=case.geometry.spacing)
            b, nb = lab == cls, new == cls
            assert np.any(b != nb), op
            ext, next_ = slice_extent(b), slice_extent(nb)
            if op == "erode":
                assert (nb <= b).all() and nb.sum() <= 0.8 * b.sum()
            elif op == "dilate":
                assert (b <= nb).all() and nb.sum() >= 1.25 * b.sum()
            elif op == "drop_slices":
                assert (nb <= b).all() and (b.any((1, 2)) & ~nb.any((1, 2))).sum() >= 2
            elif op == "extra_slices":
                assert (b <= nb).all() and (next_[1] - next_[0]) - (ext[1] - ext[0]) >= 2
            elif op == "shift_slices":
                assert abs(next_[0] - ext[0]) >= 2 or abs(next_[1] - ext[1]) >= 2
            elif op == "shift":
                assert next_ == ext and _dice(b, nb) < 0.9
            elif op == "drop_component":
                assert not nb.any()
            elif op == "add_blob":
                assert (b <= nb).all() and nb.sum() - b.sum() >= 0.25 * b.sum()
            elif op == "wrong_class":
                assert not nb.any() and ((new == 3 - cls) & b).any()
            other = 3 - cls
            if op not in ("wrong_class",):  # a corruption never paints over another segment
                assert ((lab == other) <= (new == other)).all()
    assert corrupt_binary(np.zeros(SHAPE, bool), "erode", rng) is None


def test_corrupt_volumes_plants_the_rate_in_turn_and_records_it():
    data = make_volume_set(27, (12, 16, 16), seed=4)
    labs = [c.labels for c in data.cases]
    noisy, rec = corrupt_volumes(labs, 1 / 3, DEFAULT_VOLUME_KINDS, seed=0, n_classes=2)
    assert len(rec) == 9 and sorted({r.op for r in rec}) == sorted(DEFAULT_VOLUME_KINDS)
    changed = {i for i in range(27) if np.any(noisy[i] != labs[i])}
    assert changed == {r.index for r in rec}
    for r in rec:
        assert r.changed_voxels == int(np.sum(noisy[r.index] != labs[r.index])) and r.kind == VOLUME_CORRUPTIONS[r.op]
    again, rec2 = corrupt_volumes(labs, 1 / 3, DEFAULT_VOLUME_KINDS, seed=0, n_classes=2)
    assert rec2 == rec and all(np.array_equal(a, b) for a, b in zip(again, noisy, strict=True))


@pytest.mark.parametrize("op", DEFAULT_VOLUME_KINDS)
def test_regions_type_each_planted_kind_against_the_right_consensus(op):
    """With the true mask as the consensus, every planted kind comes back as its kind, with a region in mm."""
    geo = Geometry((2.5, 0.8, 0.8), (-10.0, 20.0, 30.0), (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    data = make_volume_set(4, SHAPE, seed=5, spacing=geo.spacing, origin=geo.origin, direction=geo.direction)
    rng = np.random.default_rng(7)
    want = VOLUME_CORRUPTIONS[op]
    for case in data.cases:
        new, cls = corrupt_volume(case.labels, op, rng, n_classes=2, spacing=geo.spacing)
        g, t = new == cls, case.labels == cls
        regions, kind, lab = volume_regions(g, t, case.geometry, other_consensus=(case.labels > 0) & ~t,
                                            other_given=(new > 0) & ~g, with_labels=True)
        assert kind == want, (op, kind)
        r = regions[0]
        assert r.volume_mm3 == pytest.approx(r.voxels * 2.5 * 0.8 * 0.8)
        z0, y0, x0, z1, y1, x1 = r.bbox
        assert r.slices[0] == z0 and r.slices[1] == z1 - 1 and lab is not None and (lab == 1).sum() == r.voxels
        corners = geo.index_to_patient(np.array([[z0 - 0.5, y0 - 0.5, x0 - 0.5], [z1 - 0.5, y1 - 0.5, x1 - 0.5]]))
        assert np.allclose(np.sort(corners, 0), np.array(r.bbox_patient_mm))


# -- the ensemble on a small synthetic set ---------------------------------------------------------------------------

N_CASES, RATE, FOLDS = 36, 0.25, 3
CFG = VolumeTrainConfig(epochs=20, patch=(16, 16, 16), lr=1e-2)
DETECTOR = VolumeDetectorConfig(seg=SegDetectorConfig(simulate_from="given", min_detection=0.0))


@pytest.fixture(scope="module")
def planted():
    torch.set_num_threads(1)
    data = make_volume_set(N_CASES, SHAPE, seed=0)
    clean = [c.labels for c in data.cases]
    noisy, rec = corrupt_volumes(clean, RATE, DEFAULT_VOLUME_KINDS, seed=0, n_classes=2)
    fit = fit_volume_segmenters([c.image for c in data.cases], noisy, [c.geometry.spacing for c in data.cases],
                                n_classes=2, folds=FOLDS, cfg=CFG, seed=0, device="cpu", progress=False)
    # A quarter of the cases carry a planted error (one of each kind needs nine), so about a sixth of a class's
    # masks are wrong: the 90th percentile of the given masks then lies among the real errors, and the
    # competence check's detection rate (a simulated error in the top 10%) understates what these members find
    # (for the ball 0.54 with a median out-of-fold Dice of 0.98; docs/volumes.md). It is switched off here; the
    # median-Dice criterion stays, and the check itself is tested in test_volume_competence.py.
    sc = score_volumes(fit.probs, noisy, [c.geometry for c in data.cases], class_names=data.class_names,
                       archs=fit.archs, keep_arrays=True, cfg=DETECTOR)
    return data, noisy, rec, fit, sc


@pytest.mark.slow
def test_crossfit_never_scores_a_case_with_a_model_that_saw_it(planted):
    data, noisy, _rec, fit, _sc = planted
    assert len(fit.archs) >= 3 and len(fit.members) == len(fit.archs) * FOLDS
    seen = {a: np.zeros(N_CASES, int) for a in fit.archs}
    for m in fit.members:
        assert not set(m.train_idx) & set(m.predict_idx)
        assert set(m.predict_idx) == set(np.flatnonzero(fit.fold_of == m.fold))
        seen[m.arch][m.predict_idx] += 1
    assert all((s == 1).all() for s in seen.values())
    # the stored out-of-fold probabilities are exactly those of the fold model that held the case out
    prep = prepare_volumes([c.image for c in data.cases], None, [c.geometry.spacing for c in data.cases], 2, None)
    models = {(a, f): net for a, f, net in fit.models()}
    for i in (0, 7):
        f = int(fit.fold_of[i])
        for j, a in enumerate(fit.archs):
            p = predict_volume([models[(a, f)]], prep.images[i], 2, CFG)
            for c in range(2):
                np.testing.assert_array_equal(p.dense(c)[0], fit.probs[i].dense(c)[j])


@pytest.mark.slow
def test_a_planted_error_of_each_3d_kind_is_found_and_typed(planted):
    data, noisy, rec, _fit, sc = planted
    by_unit = {(v.index, v.class_index): v for v in sc.verdicts}
    found = {}
    for r in rec:
        v = by_unit[(r.index, r.class_index)]
        found[r.op] = (v.verdict, v.kind)
    assert set(found) == set(DEFAULT_VOLUME_KINDS)
    for op, (verdict, kind) in found.items():
        assert verdict == Verdict.SUSPECTED_MASK_ERROR and kind == VOLUME_CORRUPTIONS[op], (op, verdict, kind)
    flagged_clean = [v for v in sc.verdicts if v.flagged
                     and np.array_equal(noisy[v.index] == v.class_index, data.cases[v.index].labels == v.class_index)]
    assert len(flagged_clean) <= 3
    for v in sc.verdicts:  # every number in mm and every region in patient coordinates
        assert v.distance_unit == "mm" and np.isfinite(v.hd95_consensus) and 0.0 <= v.predicted_dice <= 1.0
        row = json.loads(json.dumps(v.to_row()))
        assert row["dims"] == 3 and row["verdict"] in {"suspected_mask_error", "hard_case", "consistent"}


@pytest.mark.slow
def test_the_cut_and_the_predicted_dice_never_see_the_truth(planted):
    data, noisy, rec, fit, sc = planted
    from models.volume.evaluate import VolumeEvalSettings, compare_volume_methods

    # the truth permuted across cases: the cut, the verdicts and the predicted Dice stay the same
    perm = np.random.default_rng(0).permutation(N_CASES)
    shuffled = VolumeDataset([type(c)(c.stem, c.image, data.cases[int(p)].labels, c.geometry)
                              for c, p in zip(data.cases, perm, strict=True)], data.class_names)
    s = VolumeEvalSettings(baseline_2d=False, detector=DETECTOR)
    res, sc2 = compare_volume_methods(shuffled, noisy, rec, fit.probs, list(fit.archs), s)
    assert res["cut"] == sc.thresholds.to_dict()
    assert [v.verdict for v in sc2.verdicts] == [v.verdict for v in sc.verdicts]
    assert [v.predicted_dice for v in sc2.verdicts] == [v.predicted_dice for v in sc.verdicts]
    # scoring with the learnt cut and predictor reproduces the verdicts without simulating anything
    again = score_volumes(fit.probs, noisy, [c.geometry for c in data.cases], class_names=data.class_names,
                          archs=fit.archs, thresholds=sc.thresholds, predictor=sc.predictor)
    assert [v.verdict for v in again.verdicts] == [v.verdict for v in sc.verdicts]
    # the predicted Dice follows the true Dice of the given masks
    true = np.array([_dice(noisy[v.index] == v.class_index, data.cases[v.index].labels == v.class_index)
                     for v in sc.verdicts])
    pred = np.array([v.predicted_dice for v in sc.verdicts])
    assert np.corrcoef(pred, true)[0, 1] > 0.7 and np.mean(np.abs(pred - true)) < 0.1


def test_the_dice_predictor_round_trips_and_stays_in_range():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (200, 3))
    y = np.clip(0.2 + 0.7 * x[:, 0] - 0.1 * x[:, 1] ** 2, 0, 1)
    p = DicePredictor.fit(x, y, features=["a", "b", "c"])
    assert np.mean(np.abs(p.predict(x) - y)) < 0.02
    back = DicePredictor.from_dict(json.loads(json.dumps(p.to_dict())))
    np.testing.assert_allclose(back.predict(x), p.predict(x))
    assert back.predict(np.array([[5.0, 0.0, 0.0]]))[0] <= 1.0


@pytest.mark.slow
def test_bundle_round_trip_audits_volumes_and_refuses_tampering(planted, tmp_path):
    data, noisy, _rec, fit, sc = planted
    from models.volume.bundle import VolumeBundle, load_volume_bundle, save_volume_bundle

    path = save_volume_bundle(tmp_path / "b", fit, data, sc, DETECTOR)
    meta = json.loads((path / "configs" / "metadata.json").read_text())
    assert meta["task"] == "segmentation" and meta["dims"] == 3 and meta["patch"] == [16, 16, 16]
    assert "spacing" in meta and meta["members"][0]["sha256"]
    b = load_bundle(path)
    assert isinstance(b, VolumeBundle) and b.class_names == ["ball", "slab"]
    i = int(next(r.index for r in _rec if r.op == "drop_component"))
    case = data.cases[i]
    given = {name: noisy[i] == c + 1 for c, name in enumerate(b.class_names)}
    (vs,) = b.audit([case.image], [given], [case.geometry], device="cpu")
    assert [v.class_name for v in vs] == ["ball", "slab"]
    dropped = next(v for v in vs if not given[v.class_name].any())
    assert dropped.verdict == Verdict.SUSPECTED_MASK_ERROR and dropped.kind == MaskErrorKind.MISSING_STRUCTURE
    assert dropped.consensus_volume(case.shape).sum() == dropped.consensus_voxels > 0
    with pytest.raises(ValueError, match="vocabulary"):
        b.audit([case.image], [{"liver": given["ball"]}], [case.geometry])
    with pytest.raises(ValueError, match="is"):
        b.audit([case.image], [{"ball": given["ball"][:-1]}], [case.geometry])
    bad = tmp_path / "tampered"
    shutil.copytree(path, bad)
    m = json.loads((bad / "configs" / "metadata.json").read_text())
    m["thresholds"]["class_cuts"] = [0.0, 0.0]
    (bad / "configs" / "metadata.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="content hash"):
        load_volume_bundle(bad)
    bad2 = tmp_path / "tampered2"
    shutil.copytree(path, bad2)
    f = bad2 / meta["members"][0]["file"]
    f.write_bytes(f.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bad2)


@pytest.mark.slow
def test_cli_train_audit_evaluate_volumes(tmp_path):
    from typer.testing import CliRunner

    from service.cli import app

    data = make_volume_set(12, (16, 16, 16), seed=8)
    write_volume_set(data, tmp_path / "set")
    run = CliRunner().invoke
    common = ["--task", "segmentation", "--dataset", str(tmp_path / "set"), "--epochs", "2", "--patch", "16",
              "--folds", "2", "--threads", "1", "--device", "cpu", "--no-progress"]
    r = run(app, ["train", *common, "--out", str(tmp_path / "b"), "--verdicts", str(tmp_path / "v")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b" / "configs" / "metadata.json").read_text())["dims"] == 3
    r = run(app, ["audit", "--bundle", str(tmp_path / "b"), "--dataset", str(tmp_path / "set"), "--out",
                  str(tmp_path / "a"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "a" / "verdicts.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all(row["dims"] == 3 for row in rows)
    r = run(app, ["evaluate", *common, "--dims", "3", "--out", str(tmp_path / "e"), "--noise-rate", "0.25"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    assert res["dims"] == 3 and set(res["predicted_dice"]) >= {"mae", "pearson_r"}
    assert {"labelqa", "labelqa_2d", "cleanlab_slices", "random"} <= set(res["methods"])
    assert all({"f1", "auprc"} <= set(m) for m in res["methods"].values())
    assert (tmp_path / "e" / "oof_probs.npz").is_file()
    r = run(app, ["evaluate", *common, "--dims", "3", "--out", str(tmp_path / "x"), "--patch", "12"])
    assert r.exit_code == 2 and "multiple of 8" in r.output


def test_binary_ops_are_the_detectors_simulation_family():
    assert set(BINARY_OPS) | {"wrong_class"} == set(VOLUME_CORRUPTIONS)


@pytest.mark.slow
def test_fits_go_through_map_fn_as_picklable_tasks():
    """What Ray needs (``service.executor_ray.ray_map``): every (member, fold) fit a picklable task, results too."""
    import pickle

    data = make_volume_set(6, (16, 16, 16), seed=9)
    seen = []

    def remote_like(fn, tasks):
        out = []
        for t in tasks:
            seen.append((t.arch, t.fold))
            out.append(pickle.loads(pickle.dumps(fn(pickle.loads(pickle.dumps(t))))))
        return out[::-1]  # any order

    fit = fit_volume_segmenters([c.image for c in data.cases], [c.labels for c in data.cases],
                                [c.geometry.spacing for c in data.cases], n_classes=2, folds=2,
                                cfg=VolumeTrainConfig(epochs=1, patch=(16, 16, 16), min_steps_per_epoch=2),
                                device="cpu", map_fn=remote_like, progress=False)
    assert sorted(seen) == sorted((a, f) for a in fit.archs for f in range(2))
    assert all(p.n_members == 3 for p in fit.probs) and [m.fold for m in fit.members] == [0, 1] * 3
