"""Fitting the 3-D ensemble: patch training, sliding-window inference, cross-fitting by case.

Every volume goes to the model grid once (``models.volume.preprocess``: [0, 1] intensities, the
model spacing). Every (member, fold) fit is one :class:`VolumeFitTask`, a picklable record run by
:func:`run_volume_fit_task`; :func:`fit_volume_segmenters` hands the tasks to ``map_fn`` (the builtin
``map`` by default; Ray through ``service.executor_ray.ray_map``) and collects the out-of-fold
probabilities: with K folds every case is predicted by members that never saw any voxel of it
(nor, with ``groups``, any case of its group). Training: patches drawn by MONAI's
``RandCropByLabelClassesd``, centred on a segment with probability ``pos_fraction`` (each segment
alike, so a small one is seen as often as a large one) and on background otherwise; Dice + BCE on one
sigmoid channel per segment, AdamW with a one-cycle schedule, a mild intensity scale and shift.
Inference: ``monai.inferers.sliding_window_inference`` (Gaussian blending) slab by slab, stored as
:class:`~models.volume.probs.CaseProbs`. Seeded, so a CPU fit is reproducible.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from models.seg.train import FIT_MODES, seg_folds, task_seed
from models.train import resolve_device
from models.volume.data import Spacing
from models.volume.ensemble import (
    DEFAULT_VOLUME_ARCHS,
    build_volume_segmenter,
    parse_volume_archs,
    patch_multiple,
)
from models.volume.preprocess import grid_shape, labels_to_model_grid, normalise_intensity, pad_to, to_model_grid
from models.volume.probs import DEFAULT_FLOOR, CaseProbs, SparseBuilder, merge_members

__all__ = ["VolumeTrainConfig", "PreparedVolumes", "prepare_volumes", "VolumeFitTask", "VolumeMemberResult",
           "VolumeFit", "run_volume_fit_task", "fit_volume_segmenters", "predict_volume", "check_patch"]


@dataclass
class VolumeTrainConfig:
    """Hyper-parameters shared by every 3-D member."""

    epochs: int = 12
    """An epoch draws one patch per training case."""
    batch_size: int = 4
    patch: tuple[int, int, int] = (24, 24, 24)
    """Patch (slices, rows, columns) on the model grid; each edge a multiple of the members' down-sampling."""
    pos_fraction: float = 2 / 3
    """Share of patches centred on a segment's voxel (split evenly over the segments), the rest on background."""
    lr: float = 5e-3
    weight_decay: float = 1e-4
    augment: bool = True
    min_steps_per_epoch: int = 8
    overlap: float = 0.25
    """Sliding-window overlap at inference."""
    sw_batch_size: int = 8
    slab_mb: int = 256
    """Inference goes slab by slab so that one slab's float32 probabilities stay under this (MiB)."""
    floor: float = DEFAULT_FLOOR

    def __post_init__(self) -> None:
        self.patch = tuple(int(p) for p in self.patch)  # type: ignore[assignment]
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"patch must be three positive sizes (slices, rows, columns), got {self.patch}")
        if not 0.0 <= self.pos_fraction <= 1.0:
            raise ValueError(f"pos_fraction must be in [0, 1], not {self.pos_fraction}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch"] = list(self.patch)
        return d


def check_patch(patch: tuple[int, int, int], archs: tuple[str, ...] | list[str]) -> None:
    """Raise ValueError when a patch edge is not a multiple of the members' down-sampling."""
    mult = patch_multiple(archs)
    if any(p % mult for p in patch):
        raise ValueError(f"patch {tuple(patch)}: every edge must be a multiple of {mult} for members {list(archs)}")


@dataclass
class PreparedVolumes:
    """Volumes on the model grid: images float32 [0, 1] (Z, Y, X), targets bool (K, Z, Y, X)."""

    images: list[np.ndarray]
    targets: list[np.ndarray]
    native_shapes: list[tuple[int, int, int]]
    spacing: Spacing | None
    """The model spacing (z, y, x) mm; None keeps each volume's own grid."""


def prepare_volumes(images: list[np.ndarray], labels: list[np.ndarray] | None, spacings: list[Spacing],
                    n_classes: int, spacing: Spacing | None) -> PreparedVolumes:
    """Intensities to [0, 1] and every volume (and label map, 0 background / 1..K) to the model spacing."""
    ims, tgs, shapes = [], [], []
    for i, img in enumerate(images):
        shape = grid_shape(img.shape, spacings[i], spacing)
        ims.append(to_model_grid(normalise_intensity(img), shape))
        if labels is not None:
            if labels[i].shape != img.shape:
                raise ValueError(f"case {i}: labels {labels[i].shape} and image {img.shape} differ")
            tgs.append(labels_to_model_grid(labels[i], n_classes, shape))
        shapes.append(tuple(int(s) for s in img.shape))
    return PreparedVolumes(ims, tgs, shapes, spacing)  # type: ignore[arg-type]


@dataclass
class VolumeFitTask:
    """One member fit: train on ``train_idx``, predict ``predict_idx`` (picklable, for any ``map_fn``)."""

    arch: str
    fold: int
    n_classes: int
    data: PreparedVolumes
    train_idx: np.ndarray
    predict_idx: np.ndarray
    cfg: VolumeTrainConfig
    seed: int
    device: str = "cpu"


@dataclass
class VolumeMemberResult:
    """A fitted member: state dict (CPU tensors), its training cases and its (one-member) predictions."""

    arch: str
    fold: int
    train_idx: np.ndarray
    predict_idx: np.ndarray
    probs: list[CaseProbs]
    state_dict: dict
    history: dict = field(default_factory=dict)


def _slab_depth(shape: tuple[int, ...], n_classes: int, cfg: VolumeTrainConfig) -> int:
    per_slice = 4 * n_classes * int(np.prod(shape[1:])) * 3  # output, count map and blending, float32
    return max(cfg.patch[0], int(cfg.slab_mb * 2**20 // max(per_slice, 1)))


def predict_volume(nets: list[torch.nn.Module], image: np.ndarray, n_classes: int, cfg: VolumeTrainConfig, *,
                   device: str | torch.device = "cpu", native_shape: tuple[int, int, int] | None = None) -> CaseProbs:
    """One member's probabilities (mean sigmoid over ``nets``, e.g. its fold models) for a model-grid
    image (Z, Y, X) in [0, 1]: sliding windows over slabs of slices, stored per segment as uint8 boxes."""
    from monai.inferers import sliding_window_inference

    dev = torch.device(device)
    for net in nets:
        net.to(dev).eval()
    z_all = image.shape[0]
    depth = _slab_depth(image.shape, n_classes, cfg)
    ctx = cfg.patch[0] // 2
    builder = SparseBuilder(tuple(image.shape), n_classes, native_shape, cfg.floor)  # type: ignore[arg-type]
    z = 0
    with torch.no_grad():
        while z < z_all:
            z_end = min(z_all, z + depth)
            a, b = max(0, z - ctx), min(z_all, z_end + ctx)
            x = torch.from_numpy(np.ascontiguousarray(image[a:b], np.float32))[None, None].to(dev)
            acc: torch.Tensor | None = None
            for net in nets:  # in place: a slab of a CT with 20 segments is a gigabyte of float32
                out = torch.as_tensor(sliding_window_inference(x, cfg.patch, cfg.sw_batch_size, net,
                                                               overlap=cfg.overlap, mode="gaussian")).float()
                out.sigmoid_()
                if acc is None:
                    acc = out
                else:
                    acc += out
                del out
            assert acc is not None
            if len(nets) > 1:
                acc /= len(nets)
            builder.add(z, acc[0, :, z - a:z_end - a].cpu().numpy())
            del acc
            z = z_end
    return builder.build()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    scale = 1.0 + (torch.rand(b, 1, 1, 1, 1, generator=gen) - 0.5) * 0.2
    shift = (torch.rand(b, 1, 1, 1, 1, generator=gen) - 0.5) * 0.2
    return (x * scale + shift).clamp(0, 1)


def run_volume_fit_task(task: VolumeFitTask) -> VolumeMemberResult:
    """Train one 3-D member from scratch on patches and predict its held-out cases (deterministic in the seed)."""
    from monai.losses import DiceLoss
    from monai.transforms import RandCropByLabelClassesd

    t0 = time.perf_counter()
    dev = resolve_device(task.device)
    cfg = task.cfg
    torch.manual_seed(task.seed)
    model = build_volume_segmenter(task.arch, task.n_classes).to(dev)
    gen = torch.Generator().manual_seed(task.seed + 1)
    k = task.n_classes
    ratios = [1.0 - cfg.pos_fraction] + [cfg.pos_fraction / k] * k  # background, then each segment alike
    crop = RandCropByLabelClassesd(keys=["image", "label"], label_key="label", spatial_size=cfg.patch, ratios=ratios,
                                   num_classes=k + 1, num_samples=1, indices_key="idx", warn=False)
    crop.set_random_state(task.seed + 2)
    samples: list[dict] = []
    for i in task.train_idx:
        img = pad_to(task.data.images[i][None], cfg.patch)
        lab = pad_to(task.data.targets[i], cfg.patch)
        idx = [np.flatnonzero(~lab.any(0))] + [np.flatnonzero(lab[c]) for c in range(k)]
        samples.append({"image": img, "label": lab.astype(np.float32), "idx": idx})
    n = len(samples)
    bs = max(2, min(cfg.batch_size, n))
    steps_per_epoch = max(cfg.min_steps_per_epoch, math.ceil(n / bs))
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total, 1), pct_start=0.15)
    dice = DiceLoss(sigmoid=True, batch=True)
    bce = torch.nn.BCEWithLogitsLoss()
    losses = []
    model.train()
    order = torch.randperm(n, generator=gen)
    at = 0
    for _epoch in range(cfg.epochs):
        run = 0.0
        for _s in range(steps_per_epoch):
            xs, ys = [], []
            for _b in range(bs):
                if at == n:
                    order, at = torch.randperm(n, generator=gen), 0
                patch = crop(samples[int(order[at])])[0]
                at += 1
                xs.append(torch.as_tensor(patch["image"]).as_subclass(torch.Tensor))
                ys.append(torch.as_tensor(patch["label"]).as_subclass(torch.Tensor))
            x, y = torch.stack(xs).float(), torch.stack(ys).float()
            if cfg.augment:
                x = _augment(x, gen)
            x, y = x.to(dev), y.to(dev)
            logits = model(x)
            loss = dice(logits, y) + bce(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run += float(loss.detach())
        losses.append(run / steps_per_epoch)
    model.eval()
    t_fit = time.perf_counter() - t0
    probs = [predict_volume([model], task.data.images[i], task.n_classes, cfg, device=dev,
                            native_shape=task.data.native_shapes[i]) for i in task.predict_idx]
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return VolumeMemberResult(task.arch, task.fold, task.train_idx, task.predict_idx, probs, state,
                              {"train_loss": losses, "steps": total, "batch_size": bs, "train_s": round(t_fit, 2),
                               "predict_s": round(time.perf_counter() - t0 - t_fit, 2)})


@dataclass
class VolumeFit:
    """A fitted 3-D ensemble: per case the members' probabilities (out-of-fold with crossfit) and the weights."""

    archs: tuple[str, ...]
    mode: str
    n_classes: int
    fold_of: np.ndarray
    probs: list[CaseProbs]
    """Per case: every member's probabilities, members in ``archs`` order, native grid via ``crop``."""
    members: list[VolumeMemberResult]
    cfg: VolumeTrainConfig
    seed: int
    spacing: Spacing | None

    @property
    def n_folds(self) -> int:
        return int(self.fold_of.max()) + 1 if len(self.fold_of) else 0

    def models(self) -> list[tuple[str, int, torch.nn.Module]]:
        """(arch, fold, model in eval mode) for every fitted member."""
        out = []
        for m in self.members:
            net = build_volume_segmenter(m.arch, self.n_classes)
            net.load_state_dict(m.state_dict)
            out.append((m.arch, m.fold, net.eval()))
        return out


def fit_volume_segmenters(images: list[np.ndarray], labels: list[np.ndarray], spacings: list[Spacing],
                          *, n_classes: int, archs: str | tuple[str, ...] | list[str] = DEFAULT_VOLUME_ARCHS,
                          folds: int = 3, epochs: int | None = None, cfg: VolumeTrainConfig | None = None,
                          spacing: Spacing | None = None, mode: str = "crossfit", seed: int = 0,
                          groups: list[str] | None = None, device: str = "cpu",
                          map_fn: Callable[[Callable[[VolumeFitTask], VolumeMemberResult], list[VolumeFitTask]],
                                           Iterable[VolumeMemberResult]] | None = None,
                          progress: bool = True) -> VolumeFit:
    """Fit every 3-D member (crossfit: once per fold) and collect per-case probabilities.

    Parameters
    ----------
    images : native volumes (Z, Y, X), any intensity range.
    labels : the given label maps (0 background, 1..K), same shapes.
    spacings : per case (z, y, x) mm.
    spacing : the model spacing (None: each volume's own grid, e.g. when all share one spacing).
    folds : K folds for ``crossfit`` (``insample``: every member trains on everything).
    groups : cases of one group (e.g. one patient's studies) share a fold.
    map_fn : ``map_fn(run_volume_fit_task, tasks)`` -> results in any order (default: builtin ``map``).

    Returns
    -------
    VolumeFit whose ``probs[i]`` holds every member's probabilities for case i (out-of-fold with crossfit).
    """
    if mode not in FIT_MODES:
        raise ValueError(f"mode must be one of {FIT_MODES}, not {mode!r}")
    names = parse_volume_archs(archs)
    cfg = VolumeTrainConfig(**{**(cfg or VolumeTrainConfig()).to_dict(), **({"epochs": epochs} if epochs else {})})
    check_patch(cfg.patch, names)
    n = len(images)
    if len(labels) != n or len(spacings) != n:
        raise ValueError(f"{n} images, {len(labels)} label maps, {len(spacings)} spacings")
    data = prepare_volumes(images, labels, spacings, n_classes, spacing)
    if mode == "crossfit":
        if folds < 2 or folds > n:
            raise ValueError(f"crossfit needs 2 <= folds <= N ({n}), got {folds}")
        fold_of = seg_folds(n, folds, seed, groups)
        splits = [(f, np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(folds)]
    else:
        fold_of = np.zeros(n, np.int64)
        splits = [(0, np.arange(n), np.arange(n))]
    tasks = [VolumeFitTask(a, f, n_classes, data, tr, te, cfg, task_seed(seed, a, f), device)
             for a in names for f, tr, te in splits]
    from tqdm import tqdm

    results = list(tqdm((map_fn or map)(run_volume_fit_task, tasks), total=len(tasks), desc="fit 3-D segmenters",
                        unit="fit", disable=not progress))
    per_case: list[list[CaseProbs | None]] = [[None] * len(names) for _ in range(n)]
    for r in results:
        for i, p in zip(r.predict_idx, r.probs, strict=True):
            per_case[int(i)][names.index(r.arch)] = p
    probs = [merge_members([p for p in ps if p is not None]) for ps in per_case]
    results.sort(key=lambda r: (names.index(r.arch), r.fold))
    return VolumeFit(names, mode, n_classes, fold_of, probs, results, cfg, seed, spacing)
