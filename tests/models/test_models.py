"""Detector tests on synthetic images whose class is a visible shape in a known place (CPU, small)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from harness.commands import labelqa_cmd, labelqa_env
from models.agreement import gmm_threshold, map_agreement
from models.data import DatasetError, load_dataset
from models.detector import DetectorConfig, alc_priority, score_fit
from models.ensemble import choose_cam_layer, parse_archs
from models.evaluate import METHODS, EvalSettings, corrupt_labels, run_evaluation
from models.gradcam import member_cams
from models.synthetic import make_shapes, shape_mask
from models.train import TrainConfig, fit_ensemble, predict_probs

TINY = ("densenet-tiny", "resnet-tiny", "efficientnet-tiny")
SIZE = 32


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # the CI/dev machine is shared: one thread avoids oversubscription


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One crossfit evaluation on synthetic shapes with 10% planted label errors."""
    torch.set_num_threads(1)
    data = make_shapes(160, n_classes=2, size=SIZE, seed=3, groups=("siteA", "siteB"))
    s = EvalSettings(dataset="synthetic-shapes", noise_rate=0.1, seed=0, mode="crossfit", folds=2, image_size=SIZE,
                     archs=TINY, device="cpu", train=TrainConfig(epochs=5, batch_size=16, lr=3e-3))
    out = tmp_path_factory.mktemp("eval")
    return run_evaluation(s, out, data=data, plots=True), out


@pytest.mark.slow
def test_detector_flags_planted_label_errors_with_high_precision(evaluated):
    res, _ = evaluated
    m = res["methods"]["labelqa"]
    assert res["n_flipped"] == 16
    assert m["precision"] >= 0.8, m
    assert m["recall"] >= 0.6, m
    assert m["f1"] > res["methods"]["random"]["f1"] + 0.5


@pytest.mark.slow
def test_results_json_schema(evaluated):
    res, out = evaluated
    on_disk = json.loads((out / "results.json").read_text())
    for key in ("dataset", "n_samples", "n_classes", "noise_rate", "n_flipped", "settings", "member_accuracy",
                "methods", "relabel_efficacy", "timing_s"):
        assert key in on_disk, key
    assert set(METHODS) <= set(on_disk["methods"])
    for name, r in on_disk["methods"].items():
        assert {"precision", "recall", "f1", "n_flagged"} <= set(r), name
        assert 0.0 <= r["f1"] <= 1.0
    for ranker in ("labelqa", "confidence", "cleanlab", "alc", "random"):
        assert on_disk["methods"][ranker]["auprc"] is not None
    assert {"train", "predict", "gradcam", "total"} <= set(on_disk["timing_s"])
    eff = on_disk["relabel_efficacy"]
    assert len(eff["fraction_reviewed"]) == len(eff["alc"]) == len(eff["random"])
    assert eff["alc"][10] >= eff["random"][10]  # 10% reviewed: ALC finds more than random
    s = on_disk["settings"]
    assert {"mode", "folds", "image_size", "archs", "seed", "noise_model"} <= set(s)
    for png in ("pr_curves.png", "efficacy.png", "top_flagged.png"):
        assert (out / png).stat().st_size > 1000
    # Grad-CAM only for candidates, and the saving is recorded.
    assert 0 < on_disk["timing_s"]["gradcam_candidates"] < on_disk["n_samples"]


@pytest.mark.slow
def test_training_margins_are_saved_and_lower_for_planted_errors(evaluated):
    """predictions.npz keeps each sample's training-time margin (area under the margin) per architecture:
    a sample trained with a wrong label sits below the right labels of its class."""
    _, out = evaluated
    z = np.load(out / "predictions.npz")
    tm, flipped = z["train_margin"], z["flipped"].astype(bool)
    assert tm.shape == (len(TINY), len(flipped))
    assert np.isfinite(tm).mean() > 0.8  # NaN only where a sample sat in every member's early-stopping part
    m = np.nanmean(tm, axis=0)
    assert np.nanmean(m[flipped]) < np.nanmean(m[~flipped]) - 0.5


@pytest.mark.slow
def test_crossfit_never_scores_a_sample_with_a_member_that_trained_on_it():
    data = make_shapes(45, n_classes=2, size=SIZE, seed=1)
    fit = fit_ensemble(parse_archs(TINY[:2]), data.images, data.labels, 2,
                       TrainConfig(epochs=1, batch_size=16, augment=False), mode="crossfit", folds=3, seed=0,
                       device="cpu")
    for m in fit.members:
        scored = np.flatnonzero(fit.fold == m.fold)
        assert len(np.intersect1d(scored, m.train_idx)) == 0
        np.testing.assert_allclose(fit.probs[m.arch][scored], predict_probs(m.model, data.images[scored]), atol=1e-5)
    assert sorted({m.fold for m in fit.members}) == [0, 1, 2]


@pytest.mark.slow
def test_crossfit_excluded_samples_are_scored_but_never_trained_on():
    data = make_shapes(45, n_classes=2, size=SIZE, seed=1)
    exclude = np.zeros(45, dtype=bool)
    exclude[[0, 7, 20, 33, 44]] = True
    fit = fit_ensemble(parse_archs(TINY[:2]), data.images, data.labels, 2,
                       TrainConfig(epochs=1, batch_size=16, augment=False), mode="crossfit", folds=3, seed=0,
                       device="cpu", exclude=exclude)
    assert len(fit.members) == 6
    for m in fit.members:
        assert not exclude[m.train_idx].any()
        assert len(m.train_idx) == int(np.sum((fit.fold != m.fold) & ~exclude))
    np.testing.assert_allclose(fit.probs[TINY[0]][exclude].sum(1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="boolean mask"):
        fit_ensemble(parse_archs(TINY[:2]), data.images, data.labels, 2, TrainConfig(epochs=1), folds=3,
                     device="cpu", exclude=np.zeros(44, dtype=bool))


@pytest.mark.slow
def test_repeats_average_seeds_each_out_of_fold_and_round_trip_through_a_bundle(tmp_path):
    from models.bundle import save_bundle
    from models.bundles import load_bundle
    from models.train import REPEAT_SEED_STEP

    data = make_shapes(45, n_classes=2, size=SIZE, seed=1)
    specs, cfg = parse_archs(TINY[:2]), TrainConfig(epochs=1, batch_size=16, augment=False)
    fit = fit_ensemble(specs, data.images, data.labels, 2, cfg, mode="crossfit", folds=3, seed=0, device="cpu",
                       repeats=2)
    assert len(fit.members) == 12 and sorted({m.repeat for m in fit.members}) == [0, 1]
    assert len(fit.repeat_folds) == 2 and not np.array_equal(*fit.repeat_folds)
    np.testing.assert_array_equal(fit.fold, fit.repeat_folds[0])
    for m in fit.members:  # every repeat keeps the crossfit guarantee with its own folds
        assert len(np.intersect1d(np.flatnonzero(fit.repeat_folds[m.repeat] == m.fold), m.train_idx)) == 0
        assert fit.member_for(m.arch, m.fold).repeat == 0
    singles = [fit_ensemble(specs, data.images, data.labels, 2, cfg, mode="crossfit", folds=3,
                            seed=s, device="cpu") for s in (0, REPEAT_SEED_STEP)]
    for a in TINY[:2]:
        np.testing.assert_allclose(fit.probs[a], (singles[0].probs[a] + singles[1].probs[a]) / 2, atol=1e-6)
    _, th, _, _, _ = score_fit(fit, data.images, data.labels, DetectorConfig(), device="cpu")
    b = load_bundle(save_bundle(tmp_path / "b", fit, data.class_names, SIZE, th, DetectorConfig(), {}))
    assert len(b.members) == 12 and len({m["file"] for m in b.meta["members"]}) == 12
    with pytest.raises(ValueError, match="repeats"):
        fit_ensemble(specs, data.images, data.labels, 2, cfg, folds=3, device="cpu", repeats=0)


def test_predict_probs_tta_averages_the_fixed_views():
    """benchmarks/tta.py's test-time augmentation (rejected as a default, kept for the benchmark)."""
    from models.train import TTA_VIEWS, tta_view

    data = make_shapes(45, n_classes=2, size=SIZE, seed=1)
    fit = fit_ensemble(parse_archs(TINY[:2]), data.images, data.labels, 2,
                       TrainConfig(epochs=1, batch_size=16, augment=False), mode="insample", seed=0, device="cpu")
    model = fit.members[0].model.eval()
    x = torch.from_numpy(data.images[:10])[:, None]
    with torch.no_grad():
        by_hand = np.mean([torch.softmax(model(tta_view(x, v)), 1).numpy() for v in TTA_VIEWS[:3]], axis=0)
    np.testing.assert_allclose(predict_probs(model, data.images[:10], tta=3), by_hand, atol=1e-5)
    plain = predict_probs(model, data.images[:10])
    np.testing.assert_allclose(predict_probs(model, data.images[:10], tta=1), plain, atol=1e-6)
    assert np.abs(by_hand - plain).max() > 1e-4  # the views are not the identity
    shifted = tta_view(x, TTA_VIEWS[1])  # a 3% shift moves the image, it does not blank or rescale it
    assert shifted.shape == x.shape and abs(float(shifted.mean() - x.mean())) < 0.05 * float(x.mean())
    with pytest.raises(ValueError, match="tta"):
        predict_probs(model, data.images[:2], tta=len(TTA_VIEWS) + 1)


def test_fit_is_deterministic_for_a_seed():
    data = make_shapes(32, n_classes=2, size=SIZE, seed=2)
    runs = [fit_ensemble(parse_archs(TINY[:2]), data.images, data.labels, 2, TrainConfig(epochs=1, batch_size=16),
                         mode="insample", seed=5, device="cpu") for _ in range(2)]
    for a in runs[0].archs:
        np.testing.assert_array_equal(runs[0].probs[a], runs[1].probs[a])


@pytest.fixture(scope="module")
def trained_shapes():
    torch.set_num_threads(1)
    data = make_shapes(160, n_classes=2, size=SIZE, seed=4)
    fit = fit_ensemble(parse_archs(["resnet-tiny", "densenet-tiny"]), data.images, data.labels, 2,
                       TrainConfig(epochs=5, batch_size=16, lr=3e-3), mode="insample", seed=0, device="cpu")
    return data, fit


def test_gradcam_maps_peak_on_the_shape_that_defines_the_class(trained_shapes):
    data, fit = trained_shapes
    test = make_shapes(40, n_classes=2, size=SIZE, seed=99)
    for m in fit.members:
        assert float(np.mean(predict_probs(m.model, test.images).argmax(1) == test.labels)) > 0.9
        maps = member_cams(m.model, m.cam_layer, test.images, test.labels, grid=SIZE)
        assert maps.shape == (40, SIZE, SIZE) and maps.min() >= 0 and maps.max() <= 1
        hits, inside, outside = 0, [], []
        for i, c in enumerate(test.labels):
            region = shape_mask(int(c), SIZE)
            grown = np.zeros_like(region)
            ys, xs = np.nonzero(region)
            grown[max(ys.min() - 3, 0):ys.max() + 4, max(xs.min() - 3, 0):xs.max() + 4] = True
            py, px = np.unravel_index(np.argmax(maps[i]), maps[i].shape)
            hits += bool(grown[py, px])
            inside.append(maps[i][region].mean())
            outside.append(maps[i][~grown].mean())
        # The peak falls on (or next to) the class-defining shape far above its area share (~20%), and the
        # shape gets clearly more attention than the rest. (In a 2-class task a member may also use the
        # absence of the other class's shape, so not every map peaks on its own shape.)
        assert hits / len(test.labels) >= 0.6, (m.arch, m.cam_layer, hits)
        assert np.mean(inside) > 1.5 * np.mean(outside), (m.arch, np.mean(inside), np.mean(outside))


def test_cam_layer_has_at_least_7x7_cells_where_possible():
    from models.ensemble import ARCHITECTURES, build_model

    for name in ("densenet121", "resnet18", "efficientnet-b0"):
        spec = ARCHITECTURES[name]
        layer, size = choose_cam_layer(spec, build_model(spec, 2), 64)
        assert size >= 7, (name, layer, size)


def test_bundle_round_trip_gives_the_same_verdicts_as_evaluate_internals(trained_shapes, tmp_path):
    from models.bundle import save_bundle
    from models.bundles import BundleError, load_bundle

    data, fit = trained_shapes
    given = data.labels.copy()
    given[:10] = 1 - given[:10]  # planted errors
    cfg = DetectorConfig()
    sc, th, _, _, _ = score_fit(fit, data.images, given, cfg, device="cpu")
    path = save_bundle(tmp_path / "bundle", fit, data.class_names, SIZE, th, cfg, {"epochs": 6})
    b = load_bundle(path)
    assert b.class_names == data.class_names and b.image_size == SIZE and len(b.content_hash) == 64
    verdicts = b.audit(data.images, [data.class_names[g] for g in given], device="cpu")
    assert [v.verdict for v in verdicts] == list(sc.verdict)
    np.testing.assert_allclose([v.score for v in verdicts], sc.score, atol=1e-5)
    flagged = {v.index for v in verdicts if v.verdict == "suspected_label_error"}
    assert flagged and len(flagged & set(range(10))) / len(flagged) >= 0.8
    v0 = verdicts[0]
    assert v0.heatmap is not None and v0.heatmap.shape == (8, 8) and set(v0.member_heatmaps) == set(fit.archs)
    with pytest.raises(ValueError, match="vocabulary"):
        b.audit(data.images[:2], ["class0", "nope"], device="cpu")
    # 80 samples per class: too few to re-estimate the cut on the batch; auto keeps the bundle's.
    sc_auto, _, _ = b.score(data.images, [data.class_names[g] for g in given], device="cpu", cut_from="auto")
    assert sc_auto.cut_source == "bundle" and list(sc_auto.verdict) == list(sc.verdict)
    with pytest.raises(ValueError, match="too small to re-estimate"):
        b.score(data.images, [data.class_names[g] for g in given], device="cpu", cut_from="batch")
    # A new batch of 400 (200 per class) with 20% wrong labels: auto re-estimates the count on it.
    new = make_shapes(400, n_classes=2, size=SIZE, seed=21)
    wrong = np.zeros(400, dtype=bool)
    wrong[np.random.default_rng(1).choice(400, 80, replace=False)] = True
    new_given = [data.class_names[1 - g if w else g] for g, w in zip(new.labels, wrong, strict=True)]
    sc_b, _, _ = b.score(new.images, new_given, device="cpu", cut_from="auto")
    sc_s, _, _ = b.score(new.images, new_given, device="cpu", cut_from="bundle")
    assert sc_b.cut_source == "batch" and sc_s.cut_source == "bundle"
    assert 0.7 * 80 <= sc_b.n_estimated_errors <= 1.4 * 80, sc_b.n_estimated_errors
    hits = int((sc_b.labelqa_flag & wrong).sum())
    assert hits >= 0.8 * 80 and hits >= 0.9 * sc_b.labelqa_flag.sum(), (hits, sc_b.labelqa_flag.sum())
    meta = path / "configs" / "metadata.json"
    meta.write_text(meta.read_text().replace('"image_size": 32', '"image_size": 33'))
    with pytest.raises(BundleError, match="modified"):
        load_bundle(path)


def test_loader_reads_folders_csv_and_npz_with_cache(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp_path / "nested" / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(d / f"{i}.png")
    flat = tmp_path / "flat"
    for c in ("x", "y", "z"):
        (flat / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(flat / c / "im.jpg")
    cache = tmp_path / "cache"
    nested = load_dataset(tmp_path / "nested", 24, cache_dir=cache)
    assert nested.images.shape == (12, 24, 24) and nested.class_names == ["a", "b"]
    assert sorted(set(nested.groups)) == ["test", "train"] and nested.images.max() <= 1
    again = load_dataset(tmp_path / "nested", 24, cache_dir=cache)
    np.testing.assert_array_equal(again.images, nested.images)
    assert len(list(cache.glob("*.npz"))) == 1
    f = load_dataset(flat, 16, cache_dir=None)
    assert f.class_names == ["x", "y", "z"] and f.groups == ["all"] * 3
    (tmp_path / "l.csv").write_text("path,label\nflat/x/im.jpg,cat\nflat/y/im.jpg,dog\n")
    c = load_dataset(tmp_path / "l.csv", 16, cache_dir=None)
    assert c.class_names == ["cat", "dog"] and list(c.labels) == [0, 1]
    np.savez(tmp_path / "m.npz", train_images=rng.integers(0, 255, (4, 28, 28), dtype=np.uint8),
             train_labels=np.array([[0], [1], [0], [1]]), test_images=rng.integers(0, 255, (2, 28, 28), dtype=np.uint8),
             test_labels=np.array([[1], [0]]))
    m = load_dataset(tmp_path / "m.npz", 32, cache_dir=None)
    assert m.images.shape == (6, 32, 32) and m.groups.count("test") == 2
    with pytest.raises(DatasetError, match="path"):
        (tmp_path / "bad.csv").write_text("file,y\n")
        load_dataset(tmp_path / "bad.csv", 16, cache_dir=None)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "missing", 16)


def test_label_corruption_flips_exactly_the_requested_share():
    y = np.arange(200) % 4
    noisy, flipped = corrupt_labels(y, 4, 0.05, "uniform", seed=1)
    assert flipped.sum() == 10 and np.all(noisy[flipped] != y[flipped]) and np.all(noisy[~flipped] == y[~flipped])
    noisy, flipped = corrupt_labels(y, 4, 0.1, "asymmetric", seed=1)
    assert np.all(noisy[flipped] == (y[flipped] + 1) % 4)


def test_agreement_priority_and_threshold():
    a = np.zeros((8, 8))
    a[1:3, 1:3] = 1
    b = np.zeros((8, 8))
    b[5:7, 5:7] = 1
    same = map_agreement([a, a + 0.01 * a, a])
    assert same["pearson"] > 0.99 and same["iou_top20"] == 1.0
    assert map_agreement([a, b])["pearson"] < 0
    p = np.array([[0.9, 0.1], [0.5, 0.5]])
    pr = alc_priority(p, np.array([1, 0]))
    assert pr[0] == pytest.approx(-np.log(0.1) / np.log(2) - max(0, (-(0.9 * np.log(0.9) + 0.1 * np.log(0.1))) /
                                                                 np.log(2) - 0.3))
    rng = np.random.default_rng(0)
    vals = np.concatenate([rng.normal(0.1, 0.05, 50), rng.normal(0.8, 0.05, 20)])
    t, how = gmm_threshold(vals)
    assert 0.2 < t < 0.7 and "mixture" in how
    assert gmm_threshold(vals[:3])[0] == 0.5


def test_label_worklist_order_is_labelqas_score_and_alc_is_kept_as_a_baseline():
    """The worklist ranks labels by labelqa's score (the ranking the benchmarks measure); active label
    cleaning's priority stays available as ``Scores.alc`` and is what the ``alc`` baseline ranks by."""
    from models.detector import fit_thresholds, score_samples
    from models.evaluate import compare_methods

    rng = np.random.default_rng(0)
    n, k = 120, 3
    truth = rng.integers(0, k, n)
    given = truth.copy()
    flipped = np.zeros(n, bool)
    flipped[rng.choice(n, 12, replace=False)] = True
    given[flipped] = (truth[flipped] + 1) % k
    probs = {}
    for j, a in enumerate(("m0", "m1", "m2")):
        logits = np.eye(k)[truth] * 2.0 + np.random.default_rng(j).normal(0, 1.5, (n, k))
        probs[a] = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    cfg, ag = DetectorConfig(), np.full(n, np.nan)
    n_dis = np.sum([p.argmax(1) != given for p in probs.values()], axis=0)
    th = fit_thresholds(probs, given, ag, n_dis == len(probs), cfg, seed=0)
    sc = score_samples(probs, given, ag, th, cfg)
    assert np.array_equal(sc.priority, sc.score)
    p_mean = np.mean(list(probs.values()), axis=0)
    assert np.allclose(sc.alc, alc_priority(p_mean, given, cfg.alc_entropy_offset))
    m = compare_methods(probs, given, flipped, sc, th, 0)["methods"]
    assert m["labelqa_priority"]["auprc"] == pytest.approx(m["labelqa"]["auprc"])
    from models.evaluate import _auprc

    assert _auprc(sc.alc, flipped) != pytest.approx(_auprc(sc.score, flipped))  # the two orders differ here
    assert m["alc"]["auprc"] == pytest.approx(_auprc(sc.alc, flipped))  # the baseline ranks by ALC, not the score


@pytest.mark.slow
def test_train_audits_its_own_labels_out_of_fold(tmp_path):
    """`labelqa train --verdicts DIR`: the data scientist's check of an existing data set — every label judged
    by crossfit members that never saw it; the planted wrong labels come first and are flagged."""
    import csv

    from models.bundle import train_bundle
    from models.bundles import load_bundle
    from models.data import LabelledImages

    data = make_shapes(160, n_classes=2, size=SIZE, seed=11)
    noisy, flipped = corrupt_labels(data.labels, 2, 0.1, "uniform", seed=1)
    ds = LabelledImages(data.images, noisy, list(data.class_names), list(data.groups),
                        [f"img{i:03d}" for i in range(160)])
    path = train_bundle(None, tmp_path / "b", image_size=SIZE, archs="resnet-tiny,densenet-tiny", device="cpu",
                        mode="crossfit", folds=2, train_cfg=TrainConfig(epochs=5, batch_size=16, lr=3e-3), data=ds,
                        verdicts_out=tmp_path / "tv")
    summary = json.loads((tmp_path / "tv" / "audit.json").read_text())
    assert summary["mode"] == "crossfit" and summary["n_samples"] == 160 and summary["bundle"] == str(path)
    rows = list(csv.DictReader(open(tmp_path / "tv" / "verdicts.csv")))
    assert len(rows) == 160 and [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows),
                                                                            reverse=True)
    flagged = {int(r["id"][3:]) for r in rows if r["verdict"] == "suspected_label_error"}
    truth = set(np.flatnonzero(flipped).tolist())
    assert summary["verdicts"]["suspected_label_error"] == len(flagged)
    assert len(flagged & truth) >= 0.6 * len(truth) and len(flagged & truth) >= 0.8 * len(flagged), (flagged, truth)
    assert load_bundle(path).class_names == list(data.class_names)


@pytest.mark.slow
def test_cli_train_audit_evaluate_on_an_npz(tmp_path):
    data = make_shapes(60, n_classes=2, size=SIZE, seed=7)
    npz = tmp_path / "shapes.npz"
    np.savez(npz, images=(data.images * 255).astype(np.uint8), labels=data.labels)
    env = labelqa_env(LABELQA_CACHE_DIR=str(tmp_path / "cache"))
    common = ["--image-size", str(SIZE), "--archs", "densenet-tiny,resnet-tiny", "--epochs", "1", "--threads", "1",
              "--no-progress"]
    r = subprocess.run(labelqa_cmd() + ["evaluate", "--dataset", str(npz), "--out", str(tmp_path / "ev"), "--folds",
                                        "2", "--no-plots", *common], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "labelqa" in r.stdout and (tmp_path / "ev" / "results.json").is_file()
    r = subprocess.run(labelqa_cmd() + ["train", "--dataset", str(npz), "--out", str(tmp_path / "b"), "--mode",
                                        "insample", "--verdicts", str(tmp_path / "tv"), *common],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "training labels:" in r.stdout
    tv = json.loads((tmp_path / "tv" / "audit.json").read_text())
    assert tv["mode"] == "insample" and "in-sample" in tv["scores"] and sum(tv["verdicts"].values()) == 60
    assert not list((tmp_path / "b").rglob("verdicts.csv"))  # the training audit stays outside the bundle
    r = subprocess.run(labelqa_cmd() + ["audit", "--bundle", str(tmp_path / "b"), "--dataset", str(npz), "--out",
                                        str(tmp_path / "a"), "--device", "cpu"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert sum(summary["verdicts"].values()) == 60
    assert (tmp_path / "a" / "verdicts.csv").read_text().count("\n") == 61
    assert summary["cut"]["requested"] == "auto" and summary["cut"]["source"] == "bundle"  # 30 per class: too few
    r = subprocess.run(labelqa_cmd() + ["audit", "--bundle", str(tmp_path / "b"), "--dataset", str(npz), "--out",
                                        str(tmp_path / "a2"), "--device", "cpu", "--cut-from", "batch"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "too small to re-estimate" in r.stderr, r.stderr[-2000:]
    r = subprocess.run(labelqa_cmd() + ["audit", "--bundle", str(tmp_path / "b"), "--dicom", str(tmp_path),
                                        "--out", str(tmp_path / "a3"), "--cut-from", "batch"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "DICOM audits use the bundle's cut" in r.stderr, r.stderr[-2000:]
    r = subprocess.run(labelqa_cmd() + ["audit", "--bundle", str(tmp_path / "b"), "--out", str(tmp_path / "x")],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "exactly one of --dataset" in r.stderr
