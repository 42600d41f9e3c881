"""The volume audit task states what the bundle's members cannot judge: the QA report's summary (LQA-0206),
every row of that class, the offline audit's summary and the review worklist's header.

A real CT-like series with a SEG over it (liver, spleen; ``write_volume_study``) is read by the volume
task; the bundle is a description (no weights) whose thresholds carry the competence learnt with the
cut: the liver judged, the spleen not (``models.seg.competence.class_competence`` on numbers of weak
members). The model step is given by hand (``infer_fn``), as the detector returns it for such a bundle:
the spleen above the cut comes back as a hard case, never a suspected error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dicom_io.db import make_engine
from dicom_io.vocabulary import Vocabulary
from models.bundles import BundleInfo
from models.seg.competence import class_competence
from models.seg.detector import SegThresholds
from models.verdict import Verdict
from models.volume.detector import VolumeVerdict

VOCAB = Vocabulary.from_class_names(["liver", "spleen"])
SHAPE, SPACING = (10, 24, 24), (2.5, 0.8, 0.8)


def _verdict(name: str, c: int, verdict: Verdict, given: np.ndarray, *, judged: bool) -> VolumeVerdict:
    zs = np.flatnonzero(given.any(axis=(1, 2)))
    return VolumeVerdict(
        index=0, class_index=c, class_name=name, verdict=verdict, kind=None, score=0.8, suspicion=3.0,
        priority=0.5, cut=0.4, predicted_dice=0.4, dice_members={"unet3d-tiny": 0.3}, hd95_members={"unet3d-tiny": 6.0},
        nsd_members={"unet3d-tiny": 0.2}, dice_consensus=0.3, hd95_consensus=6.0, nsd_consensus=0.2,
        dice_mean_prob=0.3, agreement_dice=0.9, agreement_prob=0.9, dual_consistency=False,
        given_voxels=int(given.sum()), consensus_voxels=0, given_mm3=float(given.sum() * np.prod(SPACING)),
        consensus_mm3=0.0, given_slices=(int(zs[0]), int(zs[-1])), consensus_slices=None, key_slices=[int(zs[0])],
        judged=judged)


def test_a_class_the_bundle_cannot_judge_is_stated_in_the_report_rows_and_worklist(tmp_path):
    from dicom_io.dicomize_volume import write_volume_study
    from dicom_io.geometry import Geometry
    from dicom_io.results.sr import read_report
    from dicom_io.study import open_studies
    from service.audit.task import audit_inputs
    from service.audit.volumes import VOLUME_TASK, VolumeResult
    from service.review import ReviewStore

    liver = np.zeros(SHAPE, bool)
    liver[2:6, 4:14, 3:12] = True
    spleen = np.zeros(SHAPE, bool)
    spleen[3:8, 14:20, 14:20] = True
    image = np.round(np.random.default_rng(0).normal(40, 20, SHAPE)) + 60 * liver + 30 * spleen
    geometry = Geometry.from_components(SHAPE, SPACING, (-20.0, 10.0, 50.0), None, "1.2.3.77")
    written = write_volume_study(image, geometry, {"liver": liver, "spleen": spleen}, tmp_path / "study",
                                 dataset_name="t", case_key="c1", modality="CT", vocabulary=VOCAB, body_part="ABDOMEN")
    rng = np.random.default_rng(1)
    good, weak = rng.uniform(0.8, 0.95, (3, 20)), rng.uniform(0.1, 0.4, (3, 20))
    competence = [class_competence(name, d, d.mean(0), np.ones(20, bool), rate, min_dice=0.5, min_detection=0.6,
                                   archs=["unet3d-tiny", "segresnet3d-tiny", "attentionunet3d-tiny"]).to_dict()
                  for name, d, rate in (("liver", good, 0.9), ("spleen", weak, 0.2))]
    thresholds = SegThresholds([0.4, 0.4], [[], []], [1.0, 0.0], 0.5, "test", 20, "statistic",
                               competence=competence)
    info = BundleInfo(Path("/nowhere"), {"task": "segmentation", "dims": 3, "class_names": ["liver", "spleen"],
                                         "content_hash": "sha256:" + "0" * 16, "version": "0.1",
                                         "name": "labelqa 3-D test", "thresholds": thresholds.to_dict()})
    text = thresholds.cannot_judge(["liver", "spleen"])["spleen"]
    assert text.startswith("the models cannot judge 'spleen' masks here: median out-of-fold Dice 0.2")
    assert set(thresholds.cannot_judge(["liver", "spleen"])) == {"spleen"}

    (study,) = open_studies(tmp_path / "study")
    inputs = [VOLUME_TASK.read(study, info, VOCAB)]
    assert len(inputs[0].cases) == 1

    def step(batch):  # what the detector gives for this bundle: the spleen above its cut, but not judged
        return VolumeResult([[_verdict("liver", 1, Verdict.CONSISTENT, batch.given[0]["liver"], judged=True),
                              _verdict("spleen", 2, Verdict.HARD_CASE, batch.given[0]["spleen"], judged=False)]])

    (sa,) = audit_inputs(VOLUME_TASK, inputs, info, VOCAB, infer_fn=step)
    rows = {r.class_name: r for r in sa.rows}
    assert rows["spleen"].cannot_judge == text and rows["liver"].cannot_judge is None
    (sr,) = [ds for ds in sa.datasets if ds.Modality == "SR"]  # the QA report (nothing flagged: no drawn flags)
    report = read_report(sr)
    assert report["cannot_judge"] == [text]
    assert "LQA-0206" in str(sr.to_json_dict())
    assert not any(ds.Modality in ("KO", "SEG") for ds in sa.datasets)  # nothing flagged: no key images, no suggestion
    # the review worklist's header states it, from the indexed rows
    store = ReviewStore(make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    store.index_audit(1, written.study_uid, [r.to_dict() for r in sa.rows])
    assert store.facets()["cannot_judge"] == [text]
