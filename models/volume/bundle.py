"""3-D segmentation bundles: the fitted 3-D segmenters, cut, Dice predictor and classes on disk; audits of volumes.

Same layout and checks as every labelqa bundle (``models.bundle``: ``configs/metadata.json`` with a
content hash, ``models/<arch>_fold<k>.pt`` with their sha256), with ``"task": "segmentation"`` and
``"dims": 3`` in the metadata, the model spacing (``spacing``, null when the volumes keep their own
grid) and the patch, so ``models.bundle.load_bundle`` hands such a bundle to :func:`load_volume_bundle`.
With crossfit (the default) the cut and the Dice predictor come from out-of-fold probabilities and
every fold model is kept; a new volume gets each architecture's mean over its folds.
:meth:`VolumeBundle.audit` takes volumes with their geometry and the given masks per segment, and
audits one volume at a time (probabilities stored per segment, ``models.volume.probs``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import __version__
from models.bundles import (
    SEGMENTATION,
    BundleError,
    BundleInfo,
    member_file,
    read_bundle_info,
    sha256_file,
    write_bundle_configs,
)
from models.seg.detector import SEG_VERDICTS, SegThresholds
from models.train import resolve_device
from models.volume.data import Geometry, Spacing, VolumeDataset, load_volume_dataset, write_volume
from models.volume.detector import (
    DicePredictor,
    GivenMasks,
    VolumeDetectorConfig,
    VolumeScores,
    VolumeVerdict,
    competence_summary,
    score_volumes,
)
from models.volume.ensemble import (
    DEFAULT_VOLUME_ARCHS,
    VOLUME_ARCHITECTURES,
    build_volume_segmenter,
    parse_volume_archs,
)
from models.volume.preprocess import model_spacing
from models.volume.probs import CaseProbs, merge_members
from models.volume.train import VolumeTrainConfig, fit_volume_segmenters, predict_volume, prepare_volumes

__all__ = ["VOLUME_DIMS", "VolumeBundle", "train_volume_bundle", "save_volume_bundle", "load_volume_bundle",
           "audit_volume_dataset", "write_volume_verdicts"]

VOLUME_DIMS = 3
_TASK = SEGMENTATION


@dataclass
class _VolMember:
    arch: str
    fold: int
    model: object


class VolumeBundle:
    """A loaded 3-D segmentation bundle: classes, model spacing and patch, the cut, the Dice predictor, the members."""

    task = SEGMENTATION
    dimension = VOLUME_DIMS

    def __init__(self, info: BundleInfo, members: list[_VolMember]):
        meta = dict(info.meta)
        self.info = info
        self.path = info.path
        self.meta = meta
        self.members = members
        self.class_names: list[str] = info.class_names
        self.version: str = info.version
        self.spacing: Spacing | None = tuple(meta["spacing"]) if meta.get("spacing") else None  # type: ignore[assignment]
        self.train_cfg = VolumeTrainConfig(**meta["train"])
        self.thresholds = SegThresholds.from_dict(meta["thresholds"])
        self.predictor = DicePredictor.from_dict(meta["dice_predictor"])
        self.detector = VolumeDetectorConfig.from_dict(meta["detector"])
        self.content_hash: str = meta["content_hash"]
        self.archs: list[str] = list(dict.fromkeys(m.arch for m in members))

    def predict(self, image: np.ndarray, geometry: Geometry, *, device: str = "auto") -> CaseProbs:
        """Every architecture's probabilities (mean over its folds) for one native volume (Z, Y, X)."""
        dev = resolve_device(device)
        prep = prepare_volumes([image], None, [geometry.spacing], len(self.class_names), self.spacing)
        parts = [predict_volume([m.model for m in self.members if m.arch == a], prep.images[0],  # type: ignore[misc]
                                len(self.class_names), self.train_cfg, device=dev,
                                native_shape=prep.native_shapes[0]) for a in self.archs]
        return merge_members(parts)

    def audit(self, volumes: list[np.ndarray], given: list[dict[str, np.ndarray] | np.ndarray],
              geometries: list[Geometry | Spacing] | None = None, *, device: str = "auto",
              keep_arrays: bool = True) -> list[list[VolumeVerdict]]:
        """Verdicts per volume and segment (the bundle's class order), one volume at a time.

        Parameters
        ----------
        volumes : native volumes (slices, rows, columns), any intensity range.
        given : per volume, segment name -> bool mask of the volume's shape (segments may overlap; a
            segment left out is an empty mask, which can be the error), or a label map (0 background,
            1..K in the bundle's class order).
        geometries : per volume its :class:`Geometry` or just its spacing (z, y, x) mm; default 1 mm.
        keep_arrays : keep each segment's consensus (on its box) as a suggested correction.

        Raises
        ------
        ValueError
            Unknown segment names, a mask whose shape differs from its volume, label values above K,
            unequal list lengths.
        """
        if len(volumes) != len(given):
            raise ValueError(f"{len(volumes)} volumes but {len(given)} mask sets")
        geos = [Geometry() if g is None else g if isinstance(g, Geometry) else Geometry(tuple(float(v) for v in g))  # type: ignore[arg-type]
                for g in (geometries if geometries is not None else [None] * len(volumes))]
        if len(geos) != len(volumes):
            raise ValueError(f"{len(volumes)} volumes but {len(geos)} geometries")
        k = len(self.class_names)
        out = []
        for i, (vol, g) in enumerate(zip(volumes, given, strict=True)):
            vol = np.asarray(vol)
            if vol.ndim != 3:
                raise ValueError(f"volume {i}: expected (slices, rows, columns), got {vol.shape}")
            masks = self._masks(i, vol.shape, g, k)
            probs = self.predict(vol, geos[i], device=device)
            sc = score_volumes([probs], masks, [geos[i]], class_names=self.class_names,
                               archs=self.archs, thresholds=self.thresholds, predictor=self.predictor,
                               cfg=self.detector, keep_arrays=keep_arrays)
            for v in sc.verdicts:
                v.index = i
            out.append(sc.verdicts)
        return out

    def _masks(self, i: int, shape: tuple[int, ...], g: dict[str, np.ndarray] | np.ndarray, k: int) -> GivenMasks:
        """The given masks checked and read on demand (a label map is compared per segment when scored)."""
        if isinstance(g, dict):
            unknown = sorted(set(g) - set(self.class_names))
            if unknown:
                raise ValueError(f"volume {i}: segments {unknown} are not in the bundle's vocabulary "
                                 f"{self.class_names}")
            for name, m in g.items():
                if np.shape(m) != shape:
                    raise ValueError(f"volume {i}: mask {name!r} is {np.shape(m)}, the volume {shape}")
            names = self.class_names
            return lambda _i, c: np.asarray(g[names[c]], bool) if names[c] in g else np.zeros(shape, bool)
        lab = np.asarray(g)
        if lab.shape != shape:
            raise ValueError(f"volume {i}: label map {lab.shape}, the volume {shape}")
        if int(lab.max(initial=0)) > k or int(lab.min(initial=0)) < 0:
            raise ValueError(f"volume {i}: label values up to {int(lab.max(initial=0))}, the bundle has {k} segments")
        return lambda _i, c: lab == c + 1


def load_volume_bundle(info: BundleInfo | str | Path) -> VolumeBundle:
    """Load and verify a 3-D segmentation bundle (member file hashes and the metadata's content hash); the
    loader of ``("segmentation", 3)``."""
    import torch

    if not isinstance(info, BundleInfo):
        info = read_bundle_info(info)
    path, meta = info.path, info.meta
    if (info.task, info.dimension) != (_TASK, VOLUME_DIMS):
        raise BundleError(f"{path}: not a labelqa 3-D segmentation bundle (a {info.dimension}-D {info.task} bundle)")
    members = []
    for m in meta["members"]:
        f = member_file(path, m)
        if m["arch"] not in VOLUME_ARCHITECTURES:
            raise BundleError(f"{path}: unknown 3-D segmenter {m['arch']!r} (newer labelqa?)")
        net = build_volume_segmenter(m["arch"], len(meta["class_names"]))
        net.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
        members.append(_VolMember(m["arch"], int(m["fold"]), net.eval()))
    return VolumeBundle(info, members)


def save_volume_bundle(out: str | Path, fit, data: VolumeDataset, scores: VolumeScores, detector: VolumeDetectorConfig,
                       *, extra: dict | None = None) -> Path:
    """Write a bundle for a :class:`~models.volume.train.VolumeFit` and the cut / predictor learnt on its
    out-of-fold ``scores``."""
    import monai
    import torch

    out = Path(out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    members = []
    for mem in fit.members:
        f = out / "models" / f"{mem.arch}_fold{mem.fold}.pt"
        torch.save(mem.state_dict, f)
        members.append({"arch": mem.arch, "fold": mem.fold, "file": f"models/{f.name}", "sha256": sha256_file(f),
                        "description": VOLUME_ARCHITECTURES[mem.arch].description})
    k = data.n_classes
    patch = list(fit.cfg.patch)
    meta = {
        "task": _TASK, "dims": VOLUME_DIMS, "version": __version__,
        "name": "labelqa 3-D segmentation-mask error detector",
        "monai_version": monai.__version__, "pytorch_version": torch.__version__, "numpy_version": np.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "class_names": list(data.class_names), "label_values": list(data.label_values),
        "spacing": None if fit.spacing is None else [float(s) for s in fit.spacing], "patch": patch,
        "preprocessing": {"intensity": "per volume: 0.5 / 99.5 percentiles -> [0, 1]",
                          "resample": "trilinear to the model spacing (none when spacing is null)",
                          "masks": "per segment, trilinear > 0.5; probabilities back to the native grid linearly",
                          "module": "models.volume.preprocess"},
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": patch, "dtype": "float32",
                                 "value_range": [0, 1], "format": "(slices, rows, columns)"}},
            "outputs": {"pred": {"type": "probabilities", "activation": "sigmoid per segment (multi-label)",
                                 "num_channels": k, "channel_def": dict(enumerate(data.class_names))}},
            "inference": "monai.inferers.sliding_window_inference, Gaussian blending"},
        "fit_mode": fit.mode, "folds": fit.n_folds, "members": members,
        "thresholds": scores.thresholds.to_dict(), "dice_predictor": scores.predictor.to_dict(),
        "detector": detector.to_dict(), "train": fit.cfg.to_dict(), **(extra or {}),
    }
    write_bundle_configs(out, meta, {"members": [{"arch": m["arch"], "file": m["file"]} for m in members],
                                     "builder": "models.volume.ensemble.build_volume_segmenter(arch, n_classes)",
                                     "inferer": {"roi_size": patch, "overlap": fit.cfg.overlap, "mode": "gaussian"}})
    return out


def train_volume_bundle(dataset_dir: str | Path | None, out: str | Path, *,
                        archs: str | tuple[str, ...] = DEFAULT_VOLUME_ARCHS, folds: int = 3, epochs: int | None = None,
                        seed: int = 0, mode: str = "crossfit", device: str = "auto",
                        cfg: VolumeTrainConfig | None = None, detector: VolumeDetectorConfig | None = None,
                        spacing: Spacing | None = None, data: VolumeDataset | None = None, map_fn=None,
                        progress: bool = True, verdicts_out: str | Path | None = None) -> Path:
    """Fit the 3-D segmenters on a volume data set (or ``data``), learn the cut and the Dice predictor from
    their out-of-fold probabilities, write a bundle at ``out``. ``spacing``: the model spacing (default:
    the data set's median; volumes already on it are not resampled). ``verdicts_out``: also write the
    training masks' own audit there (out-of-fold with crossfit), outside the bundle."""
    detector = detector or VolumeDetectorConfig()
    if data is None:
        if dataset_dir is None:
            raise ValueError("give a data set folder or data")
        data = load_volume_dataset(dataset_dir)
    names = parse_volume_archs(archs)
    spacings = [c.geometry.spacing for c in data.cases]
    target = spacing or model_spacing(spacings)
    same = all(np.allclose(sp, target, rtol=1e-3) for sp in spacings)
    fit = fit_volume_segmenters([c.image for c in data.cases], [c.labels for c in data.cases], spacings,
                                n_classes=data.n_classes, archs=names, folds=folds, epochs=epochs, cfg=cfg,
                                spacing=None if same and spacing is None else target, mode=mode, seed=seed,
                                device=device, map_fn=map_fn, progress=progress)
    sc = score_volumes(fit.probs, [c.labels for c in data.cases], [c.geometry for c in data.cases],
                       class_names=data.class_names, archs=names, cfg=detector, keep_arrays=False)
    path = save_volume_bundle(out, fit, data, sc, detector, extra={
        "training": {"n_cases": len(data), "seed": seed, "dataset": str(dataset_dir) if dataset_dir else None,
                     "layout": data.layout}})
    if verdicts_out is not None:
        write_volume_verdicts(Path(verdicts_out), sc.by_case(len(data)), data.stems,
                              {"bundle": str(path), "mode": mode,
                               "scores": "out-of-fold" if mode == "crossfit" else "in-sample",
                               **competence_summary(sc.thresholds, data.class_names)})
    return path


def write_volume_verdicts(out: Path, verdicts: list[list[VolumeVerdict]], stems: list[str], extra: dict) -> dict:
    """``out/verdicts.csv`` (one row per case and segment, highest score first), ``out/verdicts.jsonl`` (every
    number and region) and ``out/audit.json`` (counts); returns the summary."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    flat = [(stems[i], v) for i, vs in enumerate(verdicts) for v in vs]
    flat.sort(key=lambda sv: -sv[1].score)
    with open(out / "verdicts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "segment", "verdict", "kind", "score", "priority", "predicted_dice", "dice_consensus",
                    "hd95_consensus_mm", "given_mm3", "consensus_mm3", "agreement_prob", "key_slices", "n_regions",
                    "judged"])
        for stem, v in flat:
            w.writerow([stem, v.class_name, str(v.verdict), v.kind or "", f"{v.score:.4f}", f"{v.priority:.4f}",
                        f"{v.predicted_dice:.4f}", f"{v.dice_consensus:.4f}", f"{v.hd95_consensus:.2f}",
                        f"{v.given_mm3:.1f}", f"{v.consensus_mm3:.1f}", f"{v.agreement_prob:.4f}",
                        " ".join(str(z) for z in v.key_slices), len(v.regions), int(v.judged)])
    with open(out / "verdicts.jsonl", "w") as f:
        for stem, v in flat:
            f.write(json.dumps({"id": stem, **v.to_row()}) + "\n")
    counts = {str(s): sum(1 for _st, v in flat if v.verdict == s) for s in SEG_VERDICTS}
    summary = {**extra, "task": _TASK, "dims": VOLUME_DIMS, "n_cases": len(verdicts), "n_masks": len(flat),
               "verdicts": counts}
    (out / "audit.json").write_text(json.dumps(summary, indent=2))
    return summary


def audit_volume_dataset(bundle_path: str | Path, dataset: str | Path, out: str | Path, *,
                         device: str = "auto") -> dict:
    """Audit a volume data set (MSD / nnU-Net layout or images/ + masks/) with a 3-D bundle; writes
    verdicts.csv / verdicts.jsonl / audit.json and the consensus of every flagged segment as
    ``consensus/<id>_<segment>.nii.gz`` on the volume's grid (a suggested correction)."""
    bundle = load_volume_bundle(bundle_path)
    data = load_volume_dataset(dataset)
    unknown = sorted(set(data.class_names) - set(bundle.class_names))
    if unknown:
        raise ValueError(f"the data set's segments {unknown} are not in the bundle's {bundle.class_names}")
    verdicts = []
    out = Path(out)
    (out / "consensus").mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(data.cases):
        given = {name: case.labels == c + 1 for c, name in enumerate(data.class_names)}
        vs = bundle.audit([case.image], [given], [case.geometry], device=device)[0]
        for v in vs:
            v.index = i
            if v.flagged:
                write_volume(out / "consensus" / f"{case.stem}_{v.class_name}.nii.gz",
                             v.consensus_volume(case.shape).astype(np.uint8), case.geometry)
            v.consensus = None
        verdicts.append(vs)
    here = {}  # the members' median Dice with the given masks audited here (the bundle's competence is its training's)
    for c, name in enumerate(bundle.class_names):
        drawn = [v for per in verdicts for v in per if v.class_index == c + 1 and v.given_voxels > 0]
        if drawn:
            here[name] = {a: round(float(np.median([v.dice_members[a] for v in drawn])), 4) for a in bundle.archs}
    return write_volume_verdicts(out, verdicts, data.stems, {
        "bundle": str(bundle_path), "bundle_hash": bundle.content_hash, "dataset": str(dataset), "grid": "native",
        **competence_summary(bundle.thresholds, bundle.class_names), "member_median_dice_here": here})
