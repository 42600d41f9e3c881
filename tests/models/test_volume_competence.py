"""Knowing when the 3-D ensemble cannot judge a class: the competence check of the volume detector.

No training: the members' out-of-fold probabilities are made from the synthetic volumes' clean masks.
Competent members see each case's own structures (blurred differently per member, with noise); weak
members all see the same *other* case's structures, so they agree with each other and disagree with
nearly every given mask, right or wrong: without the check they would flag most masks (the failure
the check exists for), with it the class is not judged and nothing is flagged.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from models.seg.detector import SegThresholds
from models.verdict import Verdict
from models.volume.corruption import DEFAULT_VOLUME_KINDS, corrupt_volumes
from models.volume.data import VolumeDataset
from models.volume.detector import competence_summary, score_volumes
from models.volume.probs import CaseProbs
from models.volume.synthetic import make_volume_set

N_CASES, SHAPE, RATE = 24, (16, 16, 16), 0.25


def _members(labels: list[np.ndarray], *, weak: bool, seed: int = 1) -> list[CaseProbs]:
    """Three members' probabilities per case: of the case's own structures, or (weak) of the next case's."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(labels)):
        seen = labels[(i + 1) % len(labels)] if weak else labels[i]
        p = np.zeros((3, 2, *SHAPE), np.float32)
        for j in range(3):
            for c in range(2):
                f = gaussian_filter((seen == c + 1).astype(float), 0.7 + 0.2 * j)
                p[j, c] = np.clip(f + gaussian_filter(rng.normal(0, 0.3, SHAPE), 1.0), 0.0, 1.0)
        out.append(CaseProbs.from_dense(p))
    return out


@pytest.fixture(scope="module")
def planted():
    data = make_volume_set(N_CASES, SHAPE, seed=0)
    clean = [c.labels for c in data.cases]
    noisy, rec = corrupt_volumes(clean, RATE, DEFAULT_VOLUME_KINDS, seed=0, n_classes=2)
    return data, noisy, rec


def _score(data, noisy, probs, **kw):
    return score_volumes(probs, noisy, [c.geometry for c in data.cases], class_names=data.class_names,
                         distances=False, **kw)


def test_competent_members_are_judged_and_flag_as_without_the_check(planted):
    data, noisy, rec = planted
    probs = _members([c.labels for c in data.cases], weak=False)
    sc = _score(data, noisy, probs)
    comp = sc.thresholds.competence
    assert [c["class_name"] for c in comp] == data.class_names
    for c in comp:
        assert c["judged"] is True and c["median_dice"] >= 0.5 and c["detection_rate"] >= 0.6, c
        assert c["n_masks"] == N_CASES and set(c["member_median_dice"]) == {"member0", "member1", "member2"}
    assert sc.thresholds.cannot_judge(data.class_names) == {}
    assert all(v.judged and v.to_row()["judged"] is True for v in sc.verdicts)
    by_unit = {(v.index, v.class_index): v for v in sc.verdicts}
    assert all(by_unit[(r.index, r.class_index)].verdict == Verdict.SUSPECTED_MASK_ERROR for r in rec)
    # the check changes nothing where the members are competent: the same cut without it gives the same verdicts
    plain = _score(data, noisy, probs, thresholds=replace(sc.thresholds, competence=[]), predictor=sc.predictor)
    assert [v.verdict for v in plain.verdicts] == [v.verdict for v in sc.verdicts]


def test_weak_members_cannot_judge_and_flag_nothing(planted, tmp_path):
    data, noisy, _rec = planted
    probs = _members([c.labels for c in data.cases], weak=True)
    sc = _score(data, noisy, probs)
    th = sc.thresholds
    assert th.judged(2) == [False, False]
    texts = th.cannot_judge(data.class_names)
    for c in th.competence:
        assert c["median_dice"] < 0.5 and c["median_agreement"] > c["median_dice"], c  # they agree, on the wrong thing
        assert texts[c["class_name"]].startswith(f"the models cannot judge '{c['class_name']}' masks here: "
                                                 f"median out-of-fold Dice {c['median_dice']:.2f} (< 0.5)")
    assert not any(v.verdict == Verdict.SUSPECTED_MASK_ERROR for v in sc.verdicts)
    assert not any(v.judged for v in sc.verdicts)
    assert any(v.verdict == Verdict.HARD_CASE for v in sc.verdicts)  # above the cut: a hard case, not a flag
    # without the check the same cut would flag most masks: what the check withholds
    plain = _score(data, noisy, probs, thresholds=replace(th, competence=[]), predictor=sc.predictor)
    assert sum(v.verdict == Verdict.SUSPECTED_MASK_ERROR for v in plain.verdicts) > len(plain.verdicts) / 2
    # a bundle keeps it: the stored thresholds withhold the flags when scoring new volumes
    stored = SegThresholds.from_dict(json.loads(json.dumps(th.to_dict())))
    again = _score(data, noisy, probs, thresholds=stored, predictor=sc.predictor)
    assert [v.verdict for v in again.verdicts] == [v.verdict for v in sc.verdicts]
    assert not any(v.judged for v in again.verdicts)
    # audit.json says it once, verdicts.csv per segment
    from models.volume.bundle import write_volume_verdicts

    summary = write_volume_verdicts(tmp_path, sc.by_case(N_CASES), data.stems,
                                    competence_summary(th, data.class_names))
    assert summary["cannot_judge"] == sorted(texts.values())
    assert json.loads((tmp_path / "audit.json").read_text())["competence"] == th.competence
    with open(tmp_path / "verdicts.csv") as f:
        assert {row["judged"] for row in csv.DictReader(f)} == {"0"}


@pytest.mark.slow
def test_the_competence_never_sees_the_truth(planted):
    """The clean masks permuted across cases: the cut and the competence stay the same (the members'
    probabilities, made once from the clean masks, stand for a fit and are not remade)."""
    from models.volume.evaluate import VolumeEvalSettings, compare_volume_methods, volume_summary_table

    data, noisy, rec = planted
    probs = _members([c.labels for c in data.cases], weak=True)
    s = VolumeEvalSettings(baseline_2d=False)
    res, sc = compare_volume_methods(data, noisy, rec, probs, ["member0", "member1", "member2"], s)
    perm = np.random.default_rng(0).permutation(N_CASES)
    shuffled = VolumeDataset([type(c)(c.stem, c.image, data.cases[int(p)].labels, c.geometry)
                              for c, p in zip(data.cases, perm, strict=True)], data.class_names)
    res2, _sc2 = compare_volume_methods(shuffled, noisy, rec, probs, ["member0", "member1", "member2"], s)
    assert res2["cut"] == res["cut"] == sc.thresholds.to_dict()
    assert res2["competence"] == res["competence"] == sc.thresholds.competence
    assert res["cannot_judge"] == sorted(sc.thresholds.cannot_judge(data.class_names).values())
    assert res["methods"]["labelqa"]["n_flagged"] == 0
    # evaluate reports the members' out-of-fold Dice per class, and against the clean masks
    assert len(res["member_dice_vs_clean"]["median"]) == 2
    table = volume_summary_table(res)
    for name in data.class_names:
        assert f"{name}: members' median out-of-fold Dice member0 " in table and "NOT JUDGED" in table
