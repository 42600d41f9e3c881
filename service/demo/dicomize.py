"""``labelqa dicomize``: a research data set -> DICOM studies, with planted label errors on request.

Composes the layers: ``models.data.scan_dataset`` reads the data set (the same reader training uses),
``models.corruption.corrupt_labels`` plants the label errors (the same model ``labelqa evaluate``
uses) and ``dicom_io.dicomize.write_studies`` writes images + SR/SEG annotations + ``manifest.csv``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dicom_io.dicomize import DicomizeError, DicomizeResult, StudyItem, write_studies
from dicom_io.dicomize_volume import write_volume_study
from dicom_io.geometry import Geometry as DicomGeometry
from dicom_io.vocabulary import Vocabulary
from models.corruption import corrupt_labels
from models.data import DatasetError, scan_dataset
from models.preprocess import to_stored_grey
from models.seg.corruption import corrupt_masks
from models.seg.data import read_segmentation_items
from models.volume.corruption import DEFAULT_VOLUME_KINDS, corrupt_volumes
from models.volume.data import VolumeDataset, load_volume_dataset

if TYPE_CHECKING:
    from models.volume.data import VolumeDataset

__all__ = ["dicomize", "dicomize_masks", "dicomize_volumes", "is_mask_dataset", "corruption_note", "planted_classes",
           "DicomizeError", "DicomizeResult", "VOLUME_MANIFEST_FIELDS"]


def _stored(load: Callable[[], np.ndarray]) -> np.ndarray:
    return to_stored_grey(load())


def dicomize(
    dataset: Path,
    out: Path,
    *,
    vocabulary: Vocabulary | None = None,
    modality: str = "OT",
    image_kind: str | None = None,
    body_part: str = "CHEST",
    seg: bool = False,
    noise_rate: float = 0.0,
    seed: int = 0,
    sample: int | None = None,
    group_by: str | None = None,
    class_names: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DicomizeResult:
    """Convert ``dataset`` (image folders, CSV or npz: ``models.data.scan_dataset``) into DICOM studies.

    Parameters
    ----------
    dataset, out : the data set, and the folder that receives one sub-folder per study + manifest.csv.
    vocabulary : class codes; default: derived from the class names (written to ``out/vocabulary.toml``).
    image_kind : sc, dx or mr; default mr with ``seg`` (a SEG needs images with plane geometry), else sc.
    seg : write each label as a binary SEG (the item's mask, else the whole image) instead of an SR.
    noise_rate, seed : flip exactly round(rate * N) written labels to another vocabulary class
        (``models.corruption.corrupt_labels``, uniform), recorded in the manifest.
    sample : a random subset of this many images (seeded).
    group_by : a regular expression on the source path; its first group is the study key.

    Raises
    ------
    DicomizeError
        The data set cannot be read, a label is not in the vocabulary, or a setting is out of range.
    """
    try:
        items = scan_dataset(Path(dataset), class_names=class_names)
    except DatasetError as e:
        raise DicomizeError(str(e)) from None
    if sample is not None and sample < len(items):
        items = sorted(random.Random(seed).sample(items, sample), key=lambda it: it.source_path)
    labels_present = sorted({it.label for it in items})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab_path = None
    if vocabulary is None:
        vocabulary = Vocabulary.from_class_names(labels_present)
        vocab_path = out / "vocabulary.toml"
        vocabulary.to_toml(vocab_path)
    classes = list(vocabulary.class_names)
    missing = [lab for lab in labels_present if lab not in classes]
    if missing:
        raise DicomizeError(f"labels not in the vocabulary: {', '.join(missing)} (classes: {classes})")
    truth = np.array([classes.index(it.label) for it in items], dtype=np.int64)
    try:
        written, _ = corrupt_labels(truth, len(classes), noise_rate, "uniform", seed)
    except ValueError as e:
        raise DicomizeError(str(e)) from None
    study_items = [
        StudyItem(it.source_path, it.label, classes[int(w)], partial(_stored, it.load), it.load_mask)
        for it, w in zip(items, written, strict=True)
    ]
    return write_studies(study_items, out, vocabulary=vocabulary, dataset_name=Path(dataset).name,
                         modality=modality, image_kind=image_kind, body_part=body_part, seg=seg,
                         group_by=group_by, vocabulary_path=vocab_path, progress=progress)


def _mask_vocabulary(out: Path, names: list[str], vocabulary: Vocabulary | None) -> tuple[Vocabulary, Path | None]:
    """The vocabulary the SEGs use: the one given (every mask class must be in it), else one derived from the
    class names and written to ``out/vocabulary.toml`` (its path returned)."""
    out.mkdir(parents=True, exist_ok=True)
    vocab_path = None
    if vocabulary is None:
        vocabulary = Vocabulary.from_class_names(names)
        vocab_path = out / "vocabulary.toml"
        vocabulary.to_toml(vocab_path)
    unknown = [n for n in names if n not in vocabulary.class_names]
    if unknown:
        raise DicomizeError(f"mask classes not in the vocabulary: {', '.join(unknown)}")
    return vocabulary, vocab_path


def is_mask_dataset(dataset: Path) -> bool:
    """A segmentation data set: ``DIR/images`` and ``DIR/masks`` with the same file stems."""
    return (Path(dataset) / "images").is_dir() and (Path(dataset) / "masks").is_dir()


def corruption_note(op: str, before: np.ndarray, after: np.ndarray, names: list[str]) -> str:
    """``op[class,...]``: the operation and the classes whose mask it changed (the manifest's mask_corruption)."""
    changed = [names[k - 1] for k in range(1, len(names) + 1) if np.any((before == k) != (after == k))]
    return f"{op}[{','.join(changed)}]"


def planted_classes(note: str) -> set[str]:
    """The classes a ``mask_corruption`` note says were changed (empty: the mask as drawn)."""
    if not note or "[" not in note:
        return set()
    return {c for c in note[note.index("[") + 1 : note.rindex("]")].split(",") if c}


def dicomize_masks(
    dataset: Path,
    out: Path,
    *,
    vocabulary: Vocabulary | None = None,
    modality: str = "OT",
    body_part: str = "CHEST",
    noise_rate: float = 0.0,
    seed: int = 0,
    sample: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DicomizeResult:
    """Convert a segmentation data set (``DIR/images`` + ``DIR/masks``) into image + DICOM SEG studies.

    ``noise_rate`` of the masks get a planted error (``models.seg.corruption.corrupt_masks``: eroded,
    dilated, shifted, a component dropped, a blob added, a segment of the wrong type, in turn), each
    recorded in the manifest's ``mask_corruption`` as ``op[changed classes]``. Images of different
    sizes are corrupted per size group (the rate holds in each).
    """
    try:
        items, names = read_segmentation_items(dataset)
    except DatasetError as e:
        raise DicomizeError(str(e)) from None
    if sample is not None and sample < len(items):
        items = sorted(random.Random(seed).sample(items, sample), key=lambda it: it[0])
    written = [lab for _s, _im, lab in items]
    notes = [""] * len(items)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, (_s, _im, lab) in enumerate(items):
        by_shape.setdefault(lab.shape, []).append(i)
    try:
        for g, idx in enumerate(by_shape.values()):
            stack = np.stack([items[i][2] for i in idx])
            corrupted, records = corrupt_masks(stack, noise_rate, seed=seed + g, n_classes=len(names))
            for r in records:
                i = idx[r.index]
                written[i] = corrupted[r.index]
                notes[i] = corruption_note(r.op, items[i][2], corrupted[r.index], names)
    except ValueError as e:
        raise DicomizeError(str(e)) from None
    out = Path(out)
    vocabulary, vocab_path = _mask_vocabulary(out, names, vocabulary)
    study_items = [
        StudyItem(f"images/{stem}", "", "", partial(_stored, partial(np.asarray, im)), mask=written[i],
                  mask_classes=names, mask_corruption=notes[i])
        for i, (stem, im, _lab) in enumerate(items)
    ]
    return write_studies(study_items, out, vocabulary=vocabulary, dataset_name=Path(dataset).name,
                         modality=modality, body_part=body_part, vocabulary_path=vocab_path, progress=progress)


VOLUME_MANIFEST_FIELDS = ["case", "study_uid", "series_uid", "annotation_uid", "modality", "slices", "rows",
                          "columns", "spacing_mm", "segments", "mask_corruption", "planted_kind", "changed_voxels"]
"""The columns of a volume set's ``manifest.csv`` (one row per case: its series and its SEG)."""


def dicomize_volumes(
    dataset: Path | VolumeDataset,
    out: Path,
    *,
    vocabulary: Vocabulary | None = None,
    modality: str = "CT",
    body_part: str | None = None,
    noise_rate: float = 0.0,
    seed: int = 0,
    sample: int | None = None,
    dataset_name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DicomizeResult:
    """Convert a volume set (NIfTI/NRRD/MHA in the MSD/nnU-Net layout or ``images/`` + ``masks/``, or a
    loaded ``VolumeDataset``) into DICOM studies: per case a CT- or MR-like series with its geometry and
    one SEG over it (:func:`dicom_io.dicomize_volume.write_volume_study`).

    ``noise_rate`` of the cases get one planted 3-D error in one segment
    (``models.volume.corruption.corrupt_volumes``: eroded, dilated, shifted in-plane or by slices,
    slices dropped or added, a component dropped, a blob added, the wrong segment type, in turn),
    recorded in ``manifest.csv`` (``mask_corruption`` as ``op[changed classes]``, ``planted_kind``,
    ``changed_voxels``). A segment left empty by the error is left out of the SEG (a missing structure).
    """
    import csv
    import time

    t0 = time.perf_counter()
    if modality.upper() not in ("CT", "MR"):
        raise DicomizeError(f"volumes are written as CT or MR series, not {modality!r}")
    try:
        data = dataset if isinstance(dataset, VolumeDataset) else load_volume_dataset(dataset)
    except DatasetError as e:
        raise DicomizeError(str(e)) from None
    cases = list(data.cases)
    if sample is not None and sample < len(cases):
        cases = sorted(random.Random(seed).sample(cases, sample), key=lambda c: c.stem)
    names = list(data.class_names)
    try:
        written, records = corrupt_volumes([c.labels for c in cases], noise_rate, DEFAULT_VOLUME_KINDS, seed=seed,
                                           n_classes=len(names), spacings=[c.geometry.spacing for c in cases])
    except ValueError as e:
        raise DicomizeError(str(e)) from None
    planted = {r.index: r for r in records}
    out = Path(out)
    vocabulary, vocab_path = _mask_vocabulary(out, names, vocabulary)
    name = dataset_name or (Path(dataset).name if not isinstance(dataset, VolumeDataset) else "volumes")
    rows = []
    for i, case in enumerate(cases):
        g = case.geometry
        try:
            geo = DicomGeometry.from_components(case.image.shape, g.spacing, g.origin, g.matrix[:, ::-1])
        except ValueError as e:
            raise DicomizeError(f"{case.stem}: {e}") from None
        masks = {n: written[i] == k for k, n in enumerate(names, start=1) if np.any(written[i] == k)}
        vs = write_volume_study(case.image, geo, masks, out, dataset_name=name, case_key=case.stem,
                                modality=modality.upper(), vocabulary=vocabulary, body_part=body_part)
        r = planted.get(i)
        rows.append({
            "case": case.stem, "study_uid": vs.study_uid, "series_uid": vs.series_uid,
            "annotation_uid": vs.seg_uid or "", "modality": modality.upper(), "slices": case.image.shape[0],
            "rows": case.image.shape[1], "columns": case.image.shape[2],
            "spacing_mm": " ".join(f"{v:g}" for v in g.spacing), "segments": ";".join(masks),
            "mask_corruption": "" if r is None else corruption_note(r.op, case.labels, written[i], names),
            "planted_kind": "" if r is None else str(r.kind), "changed_voxels": "" if r is None else r.changed_voxels,
        })
        if progress is not None:
            progress(i + 1, len(cases))
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=VOLUME_MANIFEST_FIELDS)
        w.writeheader()
        w.writerows(rows)
    return DicomizeResult(n_images=len(cases), n_flipped=len(records), out=out, manifest=manifest,
                          vocabulary=vocab_path, seconds=time.perf_counter() - t0)
