"""Segmentation bundles: the fitted segmenters, their cut and classes on disk; audits on the native grid.

The format every bundle shares (:mod:`models.bundles`: ``configs/metadata.json`` with a content hash,
``models/<arch>_fold<k>.pt`` with their sha256), with ``"task": "segmentation"`` and ``"dims": 2`` in
the metadata, so :func:`models.bundles.load_bundle` hands such a bundle to :func:`load_seg_bundle`.
With crossfit (the default) the cut comes from out-of-fold probabilities and every fold model is
kept; new images get each architecture's mean over its folds. :meth:`SegBundle.audit` takes
images and masks at their native size: the image goes to the model grid through
``models.preprocess``, the probabilities come back to the native grid (bilinear), and the masks are
scored there, so regions, areas and distances are in the image's own pixels (or mm).
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
from models.preprocess import resize_image, to_grey, to_model_input
from models.seg.data import dataset_from_items, fold_groups, read_segmentation_items
from models.seg.detector import SEG_VERDICTS, MaskVerdict, SegDetectorConfig, SegThresholds, learn_seg_cut, score_masks
from models.seg.ensemble import DEFAULT_SEG_ARCHS, SEG_ARCHITECTURES, build_segmenter, parse_seg_archs
from models.seg.recipe import seg_recipe
from models.seg.train import SegTrainConfig, fit_segmenters, predict_seg_probs
from models.train import resolve_device

__all__ = ["SegBundle", "train_seg_bundle", "load_seg_bundle", "audit_seg_dataset", "write_seg_verdicts"]


@dataclass
class _SegMember:
    arch: str
    fold: int
    model: object


class SegBundle:
    """A loaded segmentation bundle: classes, model grid, the learned cut and the member models."""

    task = SEGMENTATION
    dimension = 2

    def __init__(self, info: BundleInfo, members: list[_SegMember]):
        meta = dict(info.meta)
        self.info = info
        self.path = info.path
        self.meta = meta
        self.members = members
        self.class_names: list[str] = info.class_names
        self.image_size: int = int(meta["image_size"])
        self.thresholds = SegThresholds.from_dict(meta["thresholds"])
        self.detector = SegDetectorConfig(**meta["detector"])
        self.content_hash: str = info.content_hash
        self.version: str = info.version
        self.archs: list[str] = list(dict.fromkeys(m.arch for m in members))

    def predict(self, images: np.ndarray, *, device: str = "auto", batch_size: int = 32) -> np.ndarray:
        """(archs, N, K, S, S) probabilities for model-grid images (N, S, S): each arch's mean over its folds."""
        dev = resolve_device(device)
        out = []
        for a in self.archs:
            ps = [predict_seg_probs(m.model, images, batch_size=batch_size, device=dev)  # type: ignore[arg-type]
                  for m in self.members if m.arch == a]
            out.append(np.mean(ps, axis=0))
        return np.stack(out).astype(np.float32)

    def audit(self, images: list[np.ndarray], given: list[dict[str, np.ndarray]],
              spacings: list[tuple[float, float] | None] | None = None, *, device: str = "auto",
              keep_arrays: bool = True) -> list[list[MaskVerdict]]:
        """Verdicts per image and class (the bundle's class order) on each image's native grid.

        Parameters
        ----------
        images : native-size images (grey or colour, any dtype; ``models.preprocess.to_grey`` rules).
        given : per image, class name -> bool mask of the image's size; a class left out is an empty
            mask (an empty mask can be the error).
        spacings : per image (row, col) mm per pixel, or None.

        Raises
        ------
        ValueError
            Unknown class names, a mask whose size differs from its image, unequal list lengths.
        """
        if len(images) != len(given):
            raise ValueError(f"{len(images)} images but {len(given)} mask sets")
        spacings = spacings if spacings is not None else [None] * len(images)
        if len(spacings) != len(images):
            raise ValueError(f"{len(images)} images but {len(spacings)} spacings")
        k = len(self.class_names)
        grids = []
        for i, (img, g) in enumerate(zip(images, given, strict=True)):
            unknown = sorted(set(g) - set(self.class_names))
            if unknown:
                raise ValueError(f"image {i}: classes {unknown} are not in the bundle's vocabulary {self.class_names}")
            shape = to_grey(img).shape
            for name, m in g.items():
                if np.asarray(m).shape != shape:
                    raise ValueError(f"image {i}: mask {name!r} is {np.asarray(m).shape}, the image {shape}")
            grids.append(to_model_input(img, self.image_size))
        if not images:
            return []
        probs = self.predict(np.stack(grids), device=device)
        out = []
        for i, img in enumerate(images):
            h, w = to_grey(img).shape
            native = np.stack([[np.clip(resize_image(probs[a, i, c], (h, w)), 0.0, 1.0) for c in range(k)]
                               for a in range(len(self.archs))])[:, None]
            ch = np.stack([np.asarray(given[i].get(c, np.zeros((h, w), bool)), bool) for c in self.class_names])[None]
            vs = score_masks(native, ch, spacings[i], class_names=self.class_names, archs=self.archs,
                             thresholds=self.thresholds, cfg=self.detector, keep_arrays=keep_arrays)
            for v in vs:
                v.index = i
            out.append(vs)
        return out


def load_seg_bundle(info: BundleInfo | str | Path) -> SegBundle:
    """Load and verify a 2-D segmentation bundle (member file hashes and the metadata's content hash); the
    loader of ``("segmentation", 2)``."""
    import torch

    if not isinstance(info, BundleInfo):
        info = read_bundle_info(info)
    path, meta = info.path, info.meta
    if (info.task, info.dimension) != (SEGMENTATION, 2):
        raise BundleError(f"{path}: not a labelqa 2-D segmentation bundle (a {info.dimension}-D {info.task} bundle)")
    members = []
    for m in meta["members"]:
        f = member_file(path, m)
        if m["arch"] not in SEG_ARCHITECTURES:
            raise BundleError(f"{path}: unknown segmenter {m['arch']!r} (newer labelqa?)")
        net = build_segmenter(m["arch"], len(meta["class_names"]))
        net.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
        members.append(_SegMember(m["arch"], int(m["fold"]), net.eval()))
    return SegBundle(info, members)


def train_seg_bundle(dataset_dir: str | Path | None, out: str | Path, *, image_size: int | None = None,
                     archs: str | tuple[str, ...] = DEFAULT_SEG_ARCHS, folds: int = 4, epochs: int | None = None,
                     seed: int = 0, mode: str = "crossfit", device: str = "auto", cfg: SegTrainConfig | None = None,
                     detector: SegDetectorConfig | None = None, data=None, map_fn=None, progress: bool = True,
                     verdicts_out: str | Path | None = None) -> Path:
    """Fit the segmenters on ``DIR/images`` + ``DIR/masks`` (or ``data``, a ``SegDataset``), learn the cut and
    the members' competence per class from their out-of-fold probabilities, write a bundle at ``out``.
    ``image_size`` / ``epochs`` left out are chosen from the data (``models.seg.recipe``). ``verdicts_out``:
    also write the training masks' own audit there (out-of-fold with crossfit), kept outside the bundle
    (stems can carry identifiers)."""
    import monai
    import torch

    detector = detector or SegDetectorConfig(seed=seed)
    cfg = cfg or SegTrainConfig()
    if data is None:
        if dataset_dir is None:
            raise ValueError("give a data set folder or data")
        items, class_names = read_segmentation_items(dataset_dir)
        recipe = seg_recipe([lab for _s, _im, lab in items], folds=folds if mode == "crossfit" else 1,
                            batch_size=cfg.batch_size, min_steps_per_epoch=cfg.min_steps_per_epoch,
                            n_classes=len(class_names), image_size=image_size, epochs=epochs)
        data = dataset_from_items(items, class_names, recipe.image_size, dataset_dir)
    else:
        recipe = seg_recipe([], n_images=len(data), folds=folds if mode == "crossfit" else 1,
                            batch_size=cfg.batch_size, min_steps_per_epoch=cfg.min_steps_per_epoch,
                            image_size=image_size or data.images.shape[1], epochs=epochs)
    image_size = recipe.image_size
    if data.images.shape[1:] != (image_size, image_size):
        raise ValueError(f"data are {data.images.shape[1:]}, the bundle grid is {image_size}")
    names = parse_seg_archs(archs)
    groups = fold_groups(data)
    fit = fit_segmenters(data.images, data.masks, n_classes=data.n_classes, archs=names, folds=folds,
                         epochs=recipe.epochs, cfg=cfg, mode=mode, seed=seed,
                         groups=groups if len(set(groups)) >= folds else None,
                         device=device, map_fn=map_fn, progress=progress)
    th = learn_seg_cut(fit.probs, data.masks, detector, archs=list(names), class_names=data.class_names)
    out = Path(out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    members = []
    for mem in fit.members:
        f = out / "models" / f"{mem.arch}_fold{mem.fold}.pt"
        torch.save(mem.state_dict, f)
        members.append({"arch": mem.arch, "fold": mem.fold, "file": f"models/{f.name}", "sha256": sha256_file(f),
                        "description": SEG_ARCHITECTURES[mem.arch].description})
    meta = {
        "task": SEGMENTATION, "dims": 2, "version": __version__,
        "name": "labelqa segmentation-mask error detector",
        "monai_version": monai.__version__, "pytorch_version": torch.__version__, "numpy_version": np.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "class_names": list(data.class_names), "image_size": int(image_size),
        "preprocessing": {"colour": "greyscale (BT.601 luma)", "resize": f"bilinear to {image_size}x{image_size}",
                          "intensity": "[0, 1]", "masks": "by area (models.seg.data.resize_label_map)"},
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [image_size, image_size],
                                 "dtype": "float32", "value_range": [0, 1]}},
            "outputs": {"pred": {"type": "probabilities", "activation": "sigmoid per class (multi-label)",
                                 "num_channels": data.n_classes, "channel_def": dict(enumerate(data.class_names))}}},
        "fit_mode": mode, "folds": fit.n_folds, "members": members, "thresholds": th.to_dict(),
        "detector": detector.to_dict(), "train": fit.cfg.to_dict(),
        "training": {"n_images": len(data), "seed": seed, "dataset": str(dataset_dir) if dataset_dir else None,
                     "recipe": recipe.to_dict()},
    }
    write_bundle_configs(out, meta, {"members": [{"arch": m["arch"], "file": m["file"]} for m in members],
                                     "builder": "models.seg.ensemble.build_segmenter(arch, n_classes)"})
    if verdicts_out is not None:
        vs = score_masks(fit.probs, data.masks, data.spacing, class_names=data.class_names, archs=names,
                         thresholds=th, cfg=detector, keep_arrays=False)
        write_seg_verdicts(Path(verdicts_out), [[v for v in vs if v.index == i] for i in range(len(data))],
                           data.stems, {"bundle": str(out), "mode": mode,
                                        "scores": "out-of-fold" if mode == "crossfit" else "in-sample",
                                        **_competence_summary(th, data.class_names)})
    return out


def _competence_summary(th: SegThresholds, class_names: list[str]) -> dict:
    """The competence per class and the "cannot judge" sentences, for ``audit.json``."""
    return {"competence": th.competence, "cannot_judge": sorted(th.cannot_judge(class_names).values()),
            "estimated_errors_per_class": dict(zip(class_names, th.estimated_errors_per_class, strict=False))}


def write_seg_verdicts(out: Path, verdicts: list[list[MaskVerdict]], stems: list[str], extra: dict) -> dict:
    """``out/verdicts.csv`` (one row per image and class, highest score first), ``out/verdicts.jsonl`` (every
    number and region) and ``out/audit.json`` (counts); returns the summary."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    flat = [(stems[i], v) for i, vs in enumerate(verdicts) for v in vs]
    flat.sort(key=lambda sv: -sv[1].score)
    with open(out / "verdicts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "class", "verdict", "kind", "score", "priority", "dice_consensus", "hd95_consensus",
                    "agreement_prob", "dual_consistency", "n_regions", "judged"])
        for stem, v in flat:
            w.writerow([stem, v.class_name, str(v.verdict), v.kind or "", f"{v.score:.4f}", f"{v.priority:.4f}",
                        f"{v.dice_consensus:.4f}", f"{v.hd95_consensus:.2f}", f"{v.agreement_prob:.4f}",
                        int(v.dual_consistency), len(v.regions), int(v.judged)])
    with open(out / "verdicts.jsonl", "w") as f:
        for stem, v in flat:
            f.write(json.dumps({"id": stem, **v.to_row()}) + "\n")
    counts = {str(s): sum(1 for _st, v in flat if v.verdict == s) for s in SEG_VERDICTS}
    summary = {**extra, "task": SEGMENTATION, "n_images": len(verdicts), "n_masks": len(flat), "verdicts": counts}
    (out / "audit.json").write_text(json.dumps(summary, indent=2))
    return summary


def audit_seg_dataset(bundle_path: str | Path, dataset: str | Path, out: str | Path, *, device: str = "auto") -> dict:
    """Audit ``DIR/images`` + ``DIR/masks`` with a segmentation bundle on each image's native grid;
    writes verdicts.csv / verdicts.jsonl / audit.json and the consensus of every flagged mask as
    ``consensus/<id>_<class>.png`` (a suggested correction)."""
    from PIL import Image

    bundle = load_seg_bundle(bundle_path)
    items, names = read_segmentation_items(dataset)
    if len(names) > len(bundle.class_names):
        raise ValueError(f"the data set has {len(names)} classes, the bundle {len(bundle.class_names)} "
                         f"({bundle.class_names})")
    given = [{bundle.class_names[c - 1]: lab == c for c in range(1, len(bundle.class_names) + 1)}
             for _s, _im, lab in items]
    verdicts = bundle.audit([im for _s, im, _lab in items], given, device=device)
    out = Path(out)
    (out / "consensus").mkdir(parents=True, exist_ok=True)
    for (stem, _im, _lab), vs in zip(items, verdicts, strict=True):
        for v in vs:
            if v.flagged and v.consensus is not None:
                png = out / "consensus" / f"{stem}_{v.class_name}.png"
                Image.fromarray(v.consensus.astype(np.uint8) * 255).save(png)
    here = {}
    for c, name in enumerate(bundle.class_names):
        vs = [v for per in verdicts for v in per if v.class_index == c + 1 and v.given_area_px > 0]
        if vs:
            here[name] = {a: round(float(np.median([v.dice_members[a] for v in vs])), 4) for a in bundle.archs}
    return write_seg_verdicts(out, verdicts, [s for s, _im, _lab in items],
                              {"bundle": str(bundle_path), "bundle_hash": bundle.content_hash, "dataset": str(dataset),
                               "grid": "native", **_competence_summary(bundle.thresholds, bundle.class_names),
                               "member_median_dice_here": here})
