"""Label bundles: the fitted classifiers, their thresholds and classes on disk, and auditing new data with them.

The format (``configs/metadata.json`` with ``"task": "labels"``, ``configs/inference.json``,
``models/<arch>_fold<k>.pt``) is the one every bundle shares (:mod:`models.bundles`);
:func:`load_label_bundle` is the loader :func:`models.bundles.load_bundle` uses for it.

``labelqa train`` fits in crossfit mode by default: the thresholds come from out-of-fold predictions
(as in ``labelqa evaluate``) and every fold model is kept; auditing new data averages each
architecture's fold models (none of them saw the new samples) and takes Grad-CAM from its first fold.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models import __version__
from models.bundles import (
    LABELS,
    BundleError,
    BundleInfo,
    member_file,
    read_bundle_info,
    sha256_file,
    write_bundle_configs,
)
from models.data import load_dataset, stratified_subsample
from models.detector import (
    CUT_FROM,
    VERDICTS,
    DetectorConfig,
    Scores,
    Thresholds,
    agreements,
    batch_cut_ok,
    refit_cut,
    score_fit,
    score_samples,
)
from models.ensemble import ARCHITECTURES, build_model, check_input_size, parse_archs
from models.gradcam import member_cams, normalise_maps
from models.preprocess import to_model_input
from models.train import TrainConfig, fit_ensemble, predict_probs, resolve_device

if TYPE_CHECKING:
    from torch import nn

__all__ = ["SampleVerdict", "LabelBundle", "save_bundle", "load_label_bundle", "train_bundle", "write_verdicts",
           "audit_dataset"]


@dataclass
class SampleVerdict:
    """The detector's finding for one sample (see docs/INTERFACES.md)."""

    index: int
    given_label: str
    consensus_label: str
    consensus_prob: float
    p_given: float
    member_probs: dict[str, list[float]]
    n_disagree: int
    n_members: int
    agreement: float | None
    priority: float
    score: float
    verdict: str
    heatmap: np.ndarray | None = None
    member_heatmaps: dict[str, np.ndarray] | None = None

    def to_row(self) -> dict:
        """A JSON-able dict without the heatmaps."""
        return {k: v for k, v in self.__dict__.items() if k not in ("heatmap", "member_heatmaps")}


@dataclass
class _Member:
    arch: str
    fold: int
    model: nn.Module
    cam_layer: str
    cam_size: int


class LabelBundle:
    """A loaded label bundle: class vocabulary, input size, thresholds and the member models."""

    task = LABELS
    dimension = 2

    def __init__(self, info: BundleInfo, members: list[_Member]):
        meta = dict(info.meta)
        self.info = info
        self.path = info.path
        self.meta = meta
        self.members = members
        self.class_names: list[str] = info.class_names
        self.image_size: int = int(meta["image_size"])
        self.content_hash: str = info.content_hash
        self.version: str = info.version
        self.thresholds: dict = dict(meta["thresholds"])
        self.detector = DetectorConfig(**meta["detector"])
        self.archs: list[str] = list(dict.fromkeys(m.arch for m in members))

    def prepare_frame(self, image: np.ndarray) -> np.ndarray:
        """One image (any size, grey or colour) -> this bundle's model input (``models.preprocess``)."""
        return to_model_input(image, self.image_size)

    def _prepare(self, images: np.ndarray | list[np.ndarray]) -> np.ndarray:
        if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[1:] == (self.image_size,) * 2:
            return np.clip(images.astype(np.float32), 0.0, 1.0)
        if isinstance(images, np.ndarray) and images.ndim not in (3, 4):
            raise ValueError(f"images must be (N, H, W), got shape {images.shape}")
        if not len(images):
            return np.zeros((0, self.image_size, self.image_size), np.float32)
        return np.stack([self.prepare_frame(im) for im in images])

    def predict(self, images: np.ndarray, *, batch_size: int = 64, device: str = "auto") -> dict[str, np.ndarray]:
        """Per-architecture probabilities (mean over its fold models, and its seeds with ``repeats``)."""
        dev = resolve_device(device)
        images = self._prepare(images)
        out = {}
        for a in self.archs:
            ps = [predict_probs(m.model.to(dev), images, batch_size=batch_size, device=dev)
                  for m in self.members if m.arch == a]
            out[a] = np.mean(ps, axis=0)
        return out

    def audit(self, images: np.ndarray, given: list[str], *, batch_size: int = 64, device: str = "auto",
              progress: bool = False) -> list[SampleVerdict]:
        """Verdicts for images (N, H, W) in [0, 1] with given labels (class names of the vocabulary)."""
        sc, maps, cand = self.score(images, given, batch_size=batch_size, device=device)
        pos = {int(i): j for j, i in enumerate(cand)}
        out = []
        for i in range(len(sc.given)):
            mh = {a: maps[a][pos[i]] for a in self.archs} if i in pos else None
            heat = None
            if mh is not None:
                heat = normalise_maps(np.mean(list(mh.values()), axis=0)[None])[0]
            ag = sc.agreement[i]
            out.append(SampleVerdict(
                index=i, given_label=self.class_names[sc.given[i]], consensus_label=self.class_names[sc.consensus[i]],
                consensus_prob=float(sc.consensus_prob[i]), p_given=float(sc.p_given[i]),
                member_probs={a: [float(v) for v in sc.member_probs[a][i]] for a in self.archs},
                n_disagree=int(sc.n_disagree[i]), n_members=sc.n_members,
                agreement=None if not np.isfinite(ag) else float(ag), priority=float(sc.priority[i]),
                score=float(sc.score[i]), verdict=str(sc.verdict[i]), heatmap=heat, member_heatmaps=mh))
        return out

    def score(self, images: np.ndarray, given: list[str], *, batch_size: int = 64, device: str = "auto",
              groups: list[str] | None = None, cut_from: str = "bundle"
              ) -> tuple[Scores, dict[str, np.ndarray], np.ndarray]:
        """(Scores, candidate maps per arch, candidate indices).

        ``cut_from``: ``bundle`` applies the cut learned on the training data; ``batch`` re-estimates
        the simulated-flips cut on this batch (its members never saw it, so the simulation's premise
        holds; needs every class with >= ``min_class_size`` labels, else ValueError); ``auto`` does
        so when the batch is large enough and uses the bundle's cut otherwise.
        ``Scores.cut_source`` and ``Scores.n_estimated_errors`` say which was used."""
        lookup = {c: i for i, c in enumerate(self.class_names)}
        unknown = sorted({g for g in given if g not in lookup})
        if unknown:
            raise ValueError(f"labels {unknown} are not in the bundle's vocabulary {self.class_names}")
        if len(given) != len(images):
            raise ValueError(f"{len(images)} images but {len(given)} labels")
        y = np.array([lookup[g] for g in given], dtype=np.int64)
        if cut_from not in CUT_FROM:
            raise ValueError(f"cut_from must be one of {CUT_FROM}, not {cut_from!r}")
        th = Thresholds.from_dict(self.thresholds)
        source = "bundle"
        if cut_from != "bundle":
            if batch_cut_ok(y, len(self.class_names), self.detector):
                source = "batch"
            elif cut_from == "batch":
                counts = np.bincount(y, minlength=len(self.class_names)).tolist()
                raise ValueError(f"the batch is too small to re-estimate the cut: every class needs "
                                 f">= {self.detector.min_class_size} labels (counts {counts} for "
                                 f"{self.class_names}); use --cut-from bundle or auto")
        images = self._prepare(images)
        dev = resolve_device(device)
        probs = self.predict(images, batch_size=batch_size, device=device)
        if source == "batch":
            th = refit_cut(th, probs, y, self.detector)
        n = len(y)
        nan = np.full(n, np.nan)
        pre = score_samples(probs, y, nan, th, self.detector)
        cand = pre.candidates
        grid = max(m.cam_size for m in self.members)
        maps = {}
        for a in self.archs:
            m = next(m for m in self.members if m.arch == a)
            maps[a] = member_cams(m.model, m.cam_layer, images[cand], pre.consensus[cand], grid=grid,
                                  batch_size=batch_size, device=dev)
        ag, sp, iou = nan.copy(), nan.copy(), nan.copy()
        if len(cand):
            ag[cand], sp[cand], iou[cand] = agreements(maps, len(cand))
        sc = score_samples(probs, y, ag, th, self.detector, spearman=sp, iou=iou, groups=groups)
        sc.cut_source, sc.n_estimated_errors = source, int(th.n_estimated_errors)
        return sc, maps, cand

    def cohort_findings(self, images: np.ndarray, given: list[str], groups: list[str], **kw) -> list[dict]:
        """Systematic disagreement per (group, given class) cell."""
        sc, _, _ = self.score(images, given, groups=groups, **kw)
        return [dict(c, given_class=self.class_names[c["given_class"]]) for c in sc.cohorts]


def save_bundle(out: Path, fit, class_names: list[str], image_size: int, thresholds: Thresholds,
                detector: DetectorConfig, train_cfg: dict, extra: dict | None = None) -> Path:
    """Write a bundle directory for the members of ``fit``."""
    import monai
    import torch

    out = Path(out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    members = []
    for m in fit.members:
        repeat_part = f"_repeat{m.repeat}" if m.repeat else ""  # repeat 0: the names bundles had before repeats
        f = out / "models" / f"{m.arch}{repeat_part}_fold{m.fold}.pt"
        torch.save(m.model.state_dict(), f)
        members.append({"arch": m.arch, "fold": m.fold, "repeat": m.repeat, "file": f"models/{f.name}",
                        "sha256": sha256_file(f),
                        "cam_layer": m.cam_layer, "cam_size": m.cam_size,
                        "description": ARCHITECTURES[m.arch].description})

    meta = {
        "task": LABELS, "dims": 2,
        "version": __version__,
        "name": "labelqa annotation-error detector",
        "description": "label error detection for 2-D image classification annotations",
        "monai_version": monai.__version__, "pytorch_version": torch.__version__, "numpy_version": np.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "class_names": list(class_names), "image_size": int(image_size),
        "preprocessing": {"colour": "greyscale (mean of RGB)", "resize": f"bilinear to {image_size}x{image_size}",
                          "intensity": "[0, 1] (8-bit / 255; DICOM: windowed frame)"},
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [image_size, image_size],
                                 "dtype": "float32", "value_range": [0, 1]}},
            "outputs": {"pred": {"type": "probabilities", "num_channels": len(class_names),
                                 "channel_def": dict(enumerate(class_names))}}},
        "fit_mode": fit.mode, "members": members, "thresholds": thresholds.to_dict(),
        "detector": detector.to_dict(), "train": train_cfg, **(extra or {}),
    }
    inference = {"members": [{"arch": m["arch"], "file": m["file"], "cam_layer": m["cam_layer"]} for m in members],
                 "builder": "models.ensemble.build_model(ARCHITECTURES[arch], n_classes)"}
    write_bundle_configs(out, meta, inference)
    return out


def load_label_bundle(info: BundleInfo) -> LabelBundle:
    """Load a label bundle's members (each checked against its sha256); the loader of ``("labels", 2)``."""
    import torch

    path, meta = info.path, info.meta
    members = []
    for m in meta["members"]:
        f = member_file(path, m)
        if m["arch"] not in ARCHITECTURES:
            raise BundleError(f"{path}: unknown architecture {m['arch']!r} (newer labelqa?)")
        model = build_model(ARCHITECTURES[m["arch"]], len(meta["class_names"]))
        model.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
        model.eval()
        members.append(_Member(m["arch"], int(m["fold"]), model, m["cam_layer"], int(m["cam_size"])))
    return LabelBundle(info, members)


def train_bundle(dataset, out, *, image_size: int = 64, archs="densenet121,resnet18,efficientnet-b0", seed: int = 0,
                 device: str = "auto", mode: str = "crossfit", folds: int = 4, train_cfg=None,
                 detector: DetectorConfig | None = None, max_samples: int | None = None, progress: bool = False,
                 data=None, verdicts_out=None, repeats: int = 1, map_fn=None) -> Path:
    """Fit on annotated data, learn thresholds from out-of-sample predictions, write a bundle.

    ``verdicts_out``: also write the training data's own audit there (``verdicts.csv`` + ``audit.json``,
    the format of :func:`audit_dataset`): with crossfit every label is judged by members that never saw
    it, which is how a data set's existing annotations are checked. It is kept out of the bundle, whose
    files may be shared: sample ids are file names, which can carry identifiers.
    ``map_fn``: where the member fits run (``models.train.fit_ensemble``; e.g. Ray tasks)."""
    check_input_size(parse_archs(archs), image_size)  # before any data is read

    train_cfg = train_cfg or TrainConfig()
    detector = detector or DetectorConfig()
    dev = resolve_device(device)
    if data is None:
        data = load_dataset(dataset, image_size, progress=progress)
    if max_samples and max_samples < len(data):
        data = data.subset(stratified_subsample(data.labels, max_samples, seed))
    fit = fit_ensemble(parse_archs(archs), data.images, data.labels, len(data.class_names), train_cfg, mode=mode,
                       folds=folds, seed=seed, device=dev if map_fn is None else device, progress=progress,
                       repeats=repeats, map_fn=map_fn)
    sc, th, _maps, _cand, _t = score_fit(fit, data.images, data.labels, detector, device=dev, seed=seed,
                                         groups=data.groups)
    summary = {"n_training_samples": int(len(data)), "seed": seed, "repeats": repeats, "dataset": str(dataset),
               "training_flagged": int(sc.labelqa_flag.sum())}
    path = save_bundle(Path(out), fit, data.class_names, image_size, th, detector, train_cfg.to_dict(),
                       {"training": summary})
    if verdicts_out is not None:
        note = ("out-of-fold: every label judged by members that never saw it" if mode == "crossfit" else
                "in-sample: the members trained on these labels, so errors they memorised are missed "
                "(use crossfit to audit a data set)")
        write_verdicts(Path(verdicts_out), data, list(data.class_names), sc,
                       {"bundle": str(path), "dataset": str(dataset), "mode": mode, "scores": note,
                        "cut": {"source": "fit", "n_estimated_errors": int(th.n_estimated_errors)}})
    return path


def write_verdicts(out: Path, data, class_names: list[str], sc, extra: dict) -> dict:
    """``out/verdicts.csv`` (one row per sample, most suspicious first) and ``out/audit.json`` (counts,
    cohort findings, ``extra``); returns the summary."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    given = [class_names[v] for v in sc.given]
    with open(out / "verdicts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "group", "given", "consensus", "consensus_prob", "p_given", "n_disagree", "agreement",
                    "priority", "score", "verdict", "alc_priority"])
        for i in np.argsort(-sc.score, kind="stable"):
            ag = sc.agreement[i]
            w.writerow([data.ids[i], data.groups[i], given[i], class_names[sc.consensus[i]],
                        f"{sc.consensus_prob[i]:.4f}", f"{sc.p_given[i]:.4f}", int(sc.n_disagree[i]),
                        "" if not np.isfinite(ag) else f"{ag:.4f}", f"{sc.priority[i]:.4f}", f"{sc.score[i]:.4f}",
                        sc.verdict[i], f"{sc.alc[i]:.4f}"])
    counts = {str(v): int(np.sum(sc.verdict == v)) for v in VERDICTS}
    summary = {**extra, "n_samples": len(sc.given), "verdicts": counts,
               "cohort_findings": [dict(c, given_class=class_names[c["given_class"]]) for c in sc.cohorts]}
    (out / "audit.json").write_text(json.dumps(summary, indent=2))
    return summary


def audit_dataset(bundle_path, dataset, out, *, device: str = "auto", batch_size: int = 64,
                  cut_from: str = "auto") -> dict:
    """Audit an image data set with a bundle: writes verdicts.csv and audit.json; returns the summary.

    ``cut_from`` (``LabelBundle.score``): by default a data set large enough (every class >= the detector's
    ``min_class_size``) gets its own error count and cut (benchmarks/batch_cut.py)."""
    info = read_bundle_info(bundle_path)
    if info.task != LABELS:
        raise BundleError(f"{bundle_path}: a {info.task} bundle, not a label bundle")
    bundle = load_label_bundle(info)
    data = load_dataset(dataset, bundle.image_size)
    missing = sorted(set(data.class_names) - set(bundle.class_names))
    if missing:
        raise ValueError(f"data set classes {missing} are not in the bundle's vocabulary {bundle.class_names}")
    given = [data.class_names[v] for v in data.labels]
    sc, _maps, _cand = bundle.score(data.images, given, batch_size=batch_size, device=device, groups=data.groups,
                                    cut_from=cut_from)
    return write_verdicts(Path(out), data, list(bundle.class_names), sc,
                          {"bundle": str(bundle_path), "bundle_hash": bundle.content_hash, "dataset": str(dataset),
                           "cut": {"source": sc.cut_source, "requested": cut_from,
                                   "n_estimated_errors": sc.n_estimated_errors}})
