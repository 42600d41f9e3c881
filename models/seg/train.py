"""Fitting the segmentation ensemble: cross-fitting (out-of-fold probability maps) and in-sample fits.

Every (member, fold) fit is one :class:`SegFitTask`, a picklable record run by :func:`run_fit_task`;
:func:`fit_segmenters` hands the tasks to ``map_fn`` (the builtin ``map`` by default; another
runner, e.g. Ray, can map them elsewhere) and assembles the out-of-fold maps: with K folds every
mask is predicted by members that never saw it, nor (with ``groups``) any image of its group.
Training: Dice + BCE on one sigmoid channel per class, AdamW with a cosine schedule, random flips,
90-degree turns (square grids) and a mild contrast gamma (0.9-1.1), applied alike to image and mask; seeded, so a
CPU fit is reproducible.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from models.seg.ensemble import DEFAULT_SEG_ARCHS, build_segmenter, parse_seg_archs
from models.train import resolve_device

__all__ = ["task_seed", "SegTrainConfig", "SegFitTask", "SegMemberResult", "SegFit", "fit_segmenters", "run_fit_task",
           "to_channels", "predict_seg_probs", "seg_folds", "FIT_MODES"]

FIT_MODES = ("crossfit", "insample")


@dataclass
class SegTrainConfig:
    """Hyper-parameters shared by every member."""

    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-2
    weight_decay: float = 1e-4
    augment: bool = True
    min_steps_per_epoch: int = 8
    """The batch shrinks (down to 2) until an epoch has this many steps: tiny sets still train."""

    def to_dict(self) -> dict:
        return asdict(self)


def to_channels(masks: np.ndarray, n_classes: int) -> np.ndarray:
    """Label maps (N, H, W) (0 background, 1..K) or channel masks (N, K, H, W) -> bool (N, K, H, W)."""
    m = np.asarray(masks)
    if m.ndim == 4:
        if m.shape[1] != n_classes:
            raise ValueError(f"channel masks have {m.shape[1]} channels for {n_classes} classes")
        return m.astype(bool)
    if m.ndim != 3:
        raise ValueError(f"masks must be (N, H, W) label maps or (N, K, H, W) channels, got {m.shape}")
    return np.stack([m == c for c in range(1, n_classes + 1)], axis=1)


def seg_folds(n: int, k: int, seed: int, groups: list[str] | None = None) -> np.ndarray:
    """Fold of each sample (0..k-1): a seeded permutation, whole groups kept together when given."""
    rng = np.random.default_rng(seed + 7_919)
    if groups is None:
        fold = np.empty(n, np.int64)
        fold[rng.permutation(n)] = np.arange(n) % k
        return fold
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} samples")
    uniq = sorted(set(groups))
    if len(uniq) < k:
        raise ValueError(f"{len(uniq)} groups cannot make {k} folds")
    g_fold = {g: int(f) for g, f in zip([uniq[i] for i in rng.permutation(len(uniq))],
                                        np.arange(len(uniq)) % k, strict=True)}
    return np.array([g_fold[g] for g in groups], np.int64)


@dataclass
class SegFitTask:
    """One member fit: train on ``train_idx``, predict ``predict_idx`` (picklable, for any ``map_fn``)."""

    arch: str
    fold: int
    n_classes: int
    images: np.ndarray
    targets: np.ndarray
    train_idx: np.ndarray
    predict_idx: np.ndarray
    cfg: SegTrainConfig
    seed: int
    device: str = "cpu"


@dataclass
class SegMemberResult:
    """A fitted member: its state dict (CPU tensors), the indices it trained on and its predictions."""

    arch: str
    fold: int
    train_idx: np.ndarray
    predict_idx: np.ndarray
    probs: np.ndarray
    state_dict: dict
    history: dict = field(default_factory=dict)


def _augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    b = x.shape[0]
    flip_h = torch.rand(b, generator=gen) < 0.5
    flip_v = torch.rand(b, generator=gen) < 0.5
    x, y = x.clone(), y.clone()
    x[flip_h], y[flip_h] = x[flip_h].flip(-1), y[flip_h].flip(-1)
    x[flip_v], y[flip_v] = x[flip_v].flip(-2), y[flip_v].flip(-2)
    if x.shape[-1] == x.shape[-2]:
        turn = torch.rand(b, generator=gen) < 0.5
        x[turn], y[turn] = x[turn].transpose(-1, -2), y[turn].transpose(-1, -2)
    gamma = torch.exp((torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.2)  # mild: intensity can carry the class
    return x.clamp(0, 1) ** gamma, y


def predict_seg_probs(model: torch.nn.Module, images: np.ndarray, *, batch_size: int = 32,
                      device: str | torch.device = "cpu") -> np.ndarray:
    """Sigmoid probabilities (N, K, H, W) float32 of one member for images (N, H, W) in [0, 1]."""
    dev = torch.device(device)
    model = model.to(dev).eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size], np.float32))[:, None].to(dev)
            out.append(torch.sigmoid(model(x).float()).cpu().numpy())
    if not out:
        return np.zeros((0, 0) + tuple(images.shape[1:]), np.float32)
    return np.concatenate(out).astype(np.float32)


def run_fit_task(task: SegFitTask) -> SegMemberResult:
    """Train one member from scratch and predict its held-out samples (deterministic in ``task.seed``)."""
    from monai.losses import DiceLoss

    dev = resolve_device(task.device)
    torch.manual_seed(task.seed)
    model = build_segmenter(task.arch, task.n_classes).to(dev)
    gen = torch.Generator().manual_seed(task.seed + 1)
    cfg = task.cfg
    x_all = torch.from_numpy(np.ascontiguousarray(task.images[task.train_idx], np.float32))[:, None]
    y_all = torch.from_numpy(np.ascontiguousarray(task.targets[task.train_idx], np.float32))
    n = len(x_all)
    bs = max(2, min(cfg.batch_size, n // cfg.min_steps_per_epoch))  # small sets: smaller batches, enough steps
    steps_per_epoch = max(1, -(-n // bs))
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total, 1), pct_start=0.15)
    dice = DiceLoss(sigmoid=True, batch=True)
    bce = torch.nn.BCEWithLogitsLoss()
    losses = []
    model.train()
    for _epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        run = 0.0
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            x, y = x_all[idx], y_all[idx]
            if cfg.augment:
                x, y = _augment(x, y, gen)
            x, y = x.to(dev), y.to(dev)
            logits = model(x)
            loss = dice(logits, y) + bce(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run += float(loss.detach()) * len(idx)
        losses.append(run / max(n, 1))
    probs = predict_seg_probs(model, task.images[task.predict_idx], batch_size=max(cfg.batch_size, 16), device=dev)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return SegMemberResult(task.arch, task.fold, task.train_idx, task.predict_idx, probs, state,
                           {"train_loss": losses})


@dataclass
class SegFit:
    """A fitted ensemble: out-of-fold (or in-sample) probabilities and every member's weights."""

    archs: tuple[str, ...]
    mode: str
    n_classes: int
    fold_of: np.ndarray
    probs: np.ndarray
    """(members, N, K, H, W) float32 sigmoid probabilities; crossfit: each from the fold that held the sample out."""
    members: list[SegMemberResult]
    cfg: SegTrainConfig
    seed: int

    @property
    def n_folds(self) -> int:
        return int(self.fold_of.max()) + 1 if len(self.fold_of) else 0

    def models(self) -> list[tuple[str, int, torch.nn.Module]]:
        """(arch, fold, model in eval mode) for every fitted member."""
        out = []
        for m in self.members:
            net = build_segmenter(m.arch, self.n_classes)
            net.load_state_dict(m.state_dict)
            out.append((m.arch, m.fold, net.eval()))
        return out


def task_seed(seed: int, arch: str, fold: int) -> int:
    """The seed of one (member, fold) fit: the same for a given run seed wherever the fit runs (2-D or 3-D)."""
    return (seed * 1_000_003 + zlib.crc32(arch.encode()) + 7_927 * fold) % (2**31 - 1)


def fit_segmenters(images: np.ndarray, masks: np.ndarray, *, n_classes: int | None = None,
                   archs: str | tuple[str, ...] | list[str] = DEFAULT_SEG_ARCHS, folds: int = 4,
                   epochs: int | None = None, cfg: SegTrainConfig | None = None, mode: str = "crossfit",
                   seed: int = 0, groups: list[str] | None = None, device: str = "cpu",
                   map_fn: Callable[[Callable[[SegFitTask], SegMemberResult], list[SegFitTask]],
                                    Iterable[SegMemberResult]] | None = None,
                   progress: bool = True) -> SegFit:
    """Fit every member (crossfit: once per fold) and collect probability maps.

    Parameters
    ----------
    images : (N, H, W) float32 in [0, 1].
    masks : (N, H, W) label maps (0 background, 1..K) or (N, K, H, W) bool channels: the given masks.
    n_classes : K (default: the largest label).
    archs : member names of ``models.seg.ensemble.SEG_ARCHITECTURES``.
    folds : K folds for ``crossfit`` (``insample``: every member trains on everything).
    epochs : overrides ``cfg.epochs``.
    groups : samples of one group (e.g. tiles of one image) share a fold.
    map_fn : ``map_fn(run_fit_task, tasks)`` -> results in any order (default: builtin ``map``).

    Returns
    -------
    SegFit with ``probs`` (members, N, K, H, W): out-of-fold with crossfit, in-sample otherwise.
    """
    if mode not in FIT_MODES:
        raise ValueError(f"mode must be one of {FIT_MODES}, not {mode!r}")
    names = parse_seg_archs(archs)
    images = np.asarray(images, np.float32)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got {images.shape}")
    m = np.asarray(masks)
    k = int(n_classes) if n_classes is not None else (m.shape[1] if m.ndim == 4 else max(int(m.max(initial=0)), 1))
    targets = to_channels(m, k)
    if targets.shape[0] != len(images) or targets.shape[2:] != images.shape[1:]:
        raise ValueError(f"{len(images)} images {images.shape[1:]} but masks {targets.shape}")
    cfg = SegTrainConfig(**{**(cfg or SegTrainConfig()).to_dict(), **({"epochs": epochs} if epochs else {})})
    n = len(images)
    if mode == "crossfit":
        if folds < 2 or folds > n:
            raise ValueError(f"crossfit needs 2 <= folds <= N ({n}), got {folds}")
        fold_of = seg_folds(n, folds, seed, groups)
        splits = [(f, np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(folds)]
    else:
        fold_of = np.zeros(n, np.int64)
        splits = [(0, np.arange(n), np.arange(n))]
    tasks = [SegFitTask(a, f, k, images, targets, tr, te, cfg, task_seed(seed, a, f), device)
             for a in names for f, tr, te in splits]
    from tqdm import tqdm

    results = list(tqdm((map_fn or map)(run_fit_task, tasks), total=len(tasks), desc="fit segmenters",
                        unit="fit", disable=not progress))
    probs = np.zeros((len(names), n, k) + images.shape[1:], np.float32)
    for r in results:
        probs[names.index(r.arch)][r.predict_idx] = r.probs
    results.sort(key=lambda r: (names.index(r.arch), r.fold))
    return SegFit(names, mode, k, fold_of, probs, results, cfg, seed)
