"""Two flagged studies to look at in a viewer: one with a suspected label error, one with a suspected mask error.

Each is a real study written by ``dicom_io.dicomize`` (an MR image with plane geometry and its
annotation: a TID 1500 SR label, or a SEG mask), read back by ``dicom_io.annotations.read_study``,
given a verdict by hand (as the result writer's tests do: the viewer test checks what a viewer shows,
not the detector) and written with its results by ``dicom_io.results.write_results``: QA report,
drawn flags, heatmap or mask overlay SC, suggestion SEG, KOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ViewerStudy", "GIVEN_LABEL", "CONSENSUS_LABEL", "MASK_CLASS", "flagged_label_study",
           "flagged_mask_study"]

GIVEN_LABEL = "disc"
CONSENSUS_LABEL = "square"
MASK_CLASS = "vessel"


@dataclass
class ViewerStudy:
    """A study on disk: its UID, folder, every file (inputs and results) and the series it holds by role."""

    study_uid: str
    folder: Path
    files: list[Path]
    series: dict[str, str]  # role (image, annotation, report, drawn, sc, seg, kos) -> SeriesInstanceUID
    descriptions: dict[str, str]  # role -> SeriesDescription


def _image(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(60, 12, (size, size))
    yy, xx = np.mgrid[:size, :size]
    img[(abs(yy - size * 0.4) < size * 0.18) & (abs(xx - size * 0.6) < size * 0.18)] += 120  # a bright square
    return np.clip(img, 0, 255).astype(np.uint8)


def _collect(folder: Path, study_uid: str, datasets: list, paths: list[Path]) -> ViewerStudy:
    import pydicom

    roles = {9901: "report", 9908: "drawn", 9902: "sc", 9906: "sc", 9905: "seg", 9903: "kos", 1: "image",
             100: "annotation", 200: "annotation"}
    series: dict[str, str] = {}
    descriptions: dict[str, str] = {}
    files = sorted(folder.rglob("*.dcm"))
    for p in files:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        role = roles.get(int(ds.SeriesNumber))
        if role:
            series[role] = str(ds.SeriesInstanceUID)
            descriptions[role] = str(ds.get("SeriesDescription", ""))
    return ViewerStudy(study_uid, folder, files, series, descriptions)


def flagged_label_study(out: Path, size: int = 128) -> ViewerStudy:
    """An MR image labelled "disc" (TID 1500 SR) that the models call "square": a suspected label error
    whose heatmap is hot on the square."""
    import pydicom

    from dicom_io.annotations import read_study
    from dicom_io.dicomize import StudyItem, write_studies
    from dicom_io.results import AlgorithmInfo, AuditedAnnotation, save_results, write_results
    from dicom_io.vocabulary import Vocabulary

    vocab = Vocabulary.from_class_names([CONSENSUS_LABEL, GIVEN_LABEL])
    img = _image(size, 1)
    write_studies([StudyItem("label.png", CONSENSUS_LABEL, GIVEN_LABEL, lambda: img)], out, vocabulary=vocab,
                  dataset_name="viewer-label", image_kind="mr")
    folder = next(p for p in out.iterdir() if p.is_dir())
    (sample,) = read_study(folder, vocab).samples
    p = sample.provenance
    yy, xx = np.mgrid[:32, :32]
    heat = np.exp(-((yy - 12.8) ** 2 + (xx - 19.2) ** 2) / (2 * 4.0 ** 2)).astype(np.float32)
    audited = [AuditedAnnotation(
        study_uid=p.study_uid, annotation_uid=p.annotation_uid, annotation_sop_class_uid=p.annotation_sop_class_uid,
        source=p.source, content_path=p.content_path, segment_number=p.segment_number, image_uid=p.image_uid,
        frame=p.frame, given_label=vocab.code_for(GIVEN_LABEL).to_highdicom(),
        consensus_label=vocab.code_for(CONSENSUS_LABEL).to_highdicom(), verdict="suspected_label_error",
        agreement=0.84, p_given=0.06, priority=2.4, n_disagree=3, n_members=3, consensus_prob=0.94, heatmap=heat,
    )]
    files = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(f) for f in folder.glob("*.dcm"))}
    algorithm = AlgorithmInfo("labelqa-ensemble", "0.1.0", "sha256:" + "ab" * 32, {"agreement_cut": 0.5})
    datasets = write_results({p.image_uid: files[p.image_uid]}, {p.annotation_uid: files[p.annotation_uid]},
                             audited, algorithm)
    paths = save_results(datasets, folder / "results")
    return _collect(folder, p.study_uid, datasets, paths)


def flagged_mask_study(out: Path, size: int = 128) -> ViewerStudy:
    """An MR image with a SEG mask of a "vessel" that the models place 12 pixels to the right: a suspected
    mask error (shifted), with an overlay SC and a suggestion SEG."""
    import pydicom

    from dicom_io.annotations import read_study
    from dicom_io.dicomize import StudyItem, write_studies
    from dicom_io.results import AlgorithmInfo, AuditedMask, save_results, write_results
    from dicom_io.vocabulary import Vocabulary

    vocab = Vocabulary.from_class_names([MASK_CLASS])
    img = _image(size, 2)
    mask = np.zeros((size, size), np.uint8)
    mask[int(size * 0.25):int(size * 0.55), int(size * 0.3):int(size * 0.6)] = 1
    write_studies([StudyItem("mask.png", MASK_CLASS, MASK_CLASS, lambda: img, mask=mask, mask_classes=[MASK_CLASS])],
                  out, vocabulary=vocab, dataset_name="viewer-mask")
    folder = next(p for p in out.iterdir() if p.is_dir())
    (sample,) = read_study(folder, vocab, masks=True).mask_samples
    consensus = np.roll(sample.given_mask, size // 10, axis=1)
    m = AuditedMask.from_sample(sample, verdict="suspected_mask_error", kind="shifted", dice=0.62, hd95_mm=12.0,
                                agreement=0.93, priority=2.2, score=0.88, consensus=consensus,
                                class_code=vocab.code_for(MASK_CLASS))
    files = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(f) for f in folder.glob("*.dcm"))}
    algorithm = AlgorithmInfo("labelqa-seg-ensemble", "0.1.0", "sha256:" + "cd" * 32, {"dice_cut": 0.8})
    datasets = write_results({m.image_uid: files[m.image_uid]}, {m.annotation_uid: files[m.annotation_uid]}, [],
                             algorithm, masks=[m])
    paths = save_results(datasets, folder / "results")
    return _collect(folder, m.study_uid, datasets, paths)
