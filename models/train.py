"""Training and fitting modes: one member, cross-fitting (out-of-fold) and in-sample fits.

Training from scratch (no pretrained weights): MONAI augmentation (small affine, noise, contrast),
AdamW with weight decay, label smoothing, cosine learning-rate schedule, early stopping on a held-out
part of the training data, deterministic seeds; AMP and channels-last on CUDA.

The training images live on the fit's device for the whole fit and augmentation runs batched there
(:func:`batch_augment`: the transform family of the per-sample MONAI pipeline, in one ``grid_sample``
per batch; 4.5x faster on the CPU than the per-sample pipeline for tiny members). On CUDA,
deterministic algorithms are not forced: GPU fits are seeded but not bit-reproducible; CPU fits are.
Early stopping only counts from half the epochs on: the one-cycle schedule's high-learning-rate phase
makes the held-out loss jump early, and a stop there kept half-trained members (an H100 run: a
resnet18 fold stopped after 6 of 15 epochs at 0.45 accuracy).
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from models.ensemble import MemberSpec, build_model, check_input_size, choose_cam_layer

__all__ = [
    "REPEAT_SEED_STEP", "TrainConfig", "FittedMember", "resolve_device", "seed_everything", "batch_augment",
    "TTA_VIEWS", "tta_view", "predict_probs", "train_member", "recalibrate_batchnorm", "make_folds", "Fit", "FitTask",
    "MapFn", "local_map", "fit_ensemble",
]

log = logging.getLogger(__name__)

# fit_ensemble(repeats=N): repeat r is fitted with seed + REPEAT_SEED_STEP * r (benchmarks/refit.py --control seed
# fits the same second seed, so its measurements describe repeats=2 exactly).
REPEAT_SEED_STEP = 500


@dataclass
class TrainConfig:
    """Hyper-parameters shared by every member."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    val_fraction: float = 0.1
    patience: int = 4
    augment: bool = True
    min_cam_cells: int = 7
    batched_augment: bool = True  # batch_augment on the fit's device; False: MONAI's per-sample transforms

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FittedMember:
    """A trained member: spec name, model, Grad-CAM layer, indices it trained on, its validation record."""

    arch: str
    model: nn.Module
    cam_layer: str
    cam_size: int
    fold: int
    train_idx: np.ndarray
    history: dict = field(default_factory=dict)
    # Mean training-time margin (logit of the given label minus the largest other logit, on the
    # augmented training batches, over all epochs run) per sample of train_idx; NaN for the held-out
    # early-stopping part. The area-under-the-margin signal of Pleiss et al. 2020.
    train_margin: np.ndarray | None = None
    repeat: int = 0  # which of the ``repeats`` seeds of its architecture (0 = the first, whose folds are Fit.fold)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if present else cpu; otherwise torch.device(device)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available (use --device auto or cpu)")
    return dev


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed python, numpy, torch (and MONAI's global state). ``deterministic`` forces deterministic
    algorithms (bit-reproducible on the CPU); off, cuDNN may pick its fastest (non-deterministic) kernels."""
    import random

    from monai.utils import set_determinism

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    set_determinism(seed=seed, use_deterministic_algorithms=deterministic)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if not deterministic:
        # Not cudnn.benchmark: it re-tunes every new batch shape (last batches, Grad-CAM class groups),
        # which cost minutes per fit on an H100 here.
        torch.backends.cudnn.deterministic = False


def _augmenter(image_size: int, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    from monai.transforms import Compose, RandAdjustContrast, RandAffine, RandGaussianNoise

    tf = Compose([
        RandAffine(prob=0.8, rotate_range=0.15, translate_range=(0.06 * image_size, 0.06 * image_size),
                   scale_range=(0.1, 0.1), padding_mode="zeros"),
        RandAdjustContrast(prob=0.3, gamma=(0.8, 1.25)),
        RandGaussianNoise(prob=0.3, std=0.02),
    ])
    tf.set_random_state(seed=seed % (2**32))

    def apply(batch: np.ndarray) -> np.ndarray:
        out = np.empty_like(batch)
        for i in range(len(batch)):
            out[i] = np.asarray(tf(batch[i]), dtype=np.float32)
        return out

    return apply


def batch_augment(x: torch.Tensor, gen: torch.Generator, *, p_affine: float = 0.8, rotate: float = 0.15,
                  translate: float = 0.06, scale: float = 0.1, p_contrast: float = 0.3,
                  gamma: tuple[float, float] = (0.8, 1.25), p_noise: float = 0.3, noise_std: float = 0.02,
                  ) -> torch.Tensor:
    """Random affine (rotation +-``rotate`` rad, translation +-``translate`` of the size, zoom
    1+-``scale``, zero padding), contrast gamma and Gaussian noise for a whole batch (B, 1, H, W) on its
    own device: the transforms of the per-sample MONAI pipeline (``RandAffine``, ``RandAdjustContrast``,
    ``RandGaussianNoise``, same ranges and probabilities) in one ``grid_sample`` call per batch."""
    import torch.nn.functional as F

    b, dev = x.shape[0], x.device

    def uni(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, device=dev, generator=gen) * (hi - lo) + lo

    def coin(p: float) -> torch.Tensor:
        return torch.rand(b, device=dev, generator=gen) < p

    x = x.float()
    on = coin(p_affine)
    ang = torch.where(on, uni(-rotate, rotate), 0.0)
    zoom = torch.where(on, uni(1 - scale, 1 + scale), 1.0)
    tx = torch.where(on, uni(-2 * translate, 2 * translate), 0.0)  # normalised coordinates span 2
    ty = torch.where(on, uni(-2 * translate, 2 * translate), 0.0)
    cos, sin = torch.cos(ang) / zoom, torch.sin(ang) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    g = torch.where(coin(p_contrast), uni(*gamma), 1.0).view(b, 1, 1, 1)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    span = x.amax(dim=(1, 2, 3), keepdim=True) - lo
    x = ((x - lo) / (span + 1e-7)).clamp_min(0) ** g * span + lo
    std = torch.where(coin(p_noise), uni(0.0, noise_std), 0.0).view(b, 1, 1, 1)
    return x + std * torch.randn(x.shape, device=dev, generator=gen)


def _to_input(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.to(device, non_blocking=True).float()
        if t.ndim == 3:
            t = t[:, None]
        if device.type == "cuda":
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if t.ndim == 3:
        t = t[:, None]
    t = t.to(device, non_blocking=True)
    if device.type == "cuda":
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", enabled=False)


# Test-time augmentation views (rotation in rad, zoom, x and y shift in normalised coordinates, which span 2): the
# identity, then small fixed versions of ``batch_augment``'s affine (shift 3% of the size, rotation 0.08 rad, zoom 7%);
# no flips (anatomy has a side, and the members never saw flipped images).
TTA_VIEWS = ((0.0, 1.0, 0.0, 0.0), (0.0, 1.0, 0.06, 0.0), (0.0, 1.0, -0.06, 0.0), (0.0, 1.0, 0.0, 0.06),
             (0.0, 1.0, 0.0, -0.06), (0.08, 1.0, 0.0, 0.0), (-0.08, 1.0, 0.0, 0.0), (0.0, 1.07, 0.0, 0.0),
             (0.0, 0.93, 0.0, 0.0))


def tta_view(x: torch.Tensor, view: tuple[float, float, float, float]) -> torch.Tensor:
    """One fixed affine view of a batch (B, 1, H, W), resampled like ``batch_augment`` (bilinear, zero padding)."""
    import math

    import torch.nn.functional as F

    ang, zoom, tx, ty = view
    if view == TTA_VIEWS[0]:
        return x
    cos, sin = math.cos(ang) / zoom, math.sin(ang) / zoom
    theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=torch.float32, device=x.device)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False).to(x.dtype)


@torch.no_grad()
def predict_probs(model: nn.Module, images: np.ndarray | torch.Tensor, *, batch_size: int = 128,
                  device: torch.device | str = "cpu", tta: int = 1) -> np.ndarray:
    """Softmax probabilities (N, C) of a model for images (N, H, W) in [0, 1] (array or tensor).

    ``tta``: average the probabilities over the first ``tta`` of ``TTA_VIEWS`` (1 = the image as it is)."""
    if not 1 <= tta <= len(TTA_VIEWS):
        raise ValueError(f"tta must be between 1 and {len(TTA_VIEWS)}")
    device = torch.device(device) if isinstance(device, str) else device
    model.eval()
    out = []
    for s in range(0, len(images), batch_size):
        x = _to_input(images[s:s + batch_size], device)
        p: torch.Tensor | None = None
        for view in TTA_VIEWS[:tta]:
            with _autocast(device):
                logits = model(tta_view(x, view))
            q = torch.softmax(logits.float(), dim=1)
            p = q if p is None else p + q
        assert p is not None  # tta >= 1
        out.append((p / tta).cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


def train_member(spec: MemberSpec, images: np.ndarray, labels: np.ndarray, n_classes: int, cfg: TrainConfig, *,
                 seed: int, device: torch.device, progress: bool = False, desc: str = "") -> tuple[nn.Module, dict]:
    """Train one member from scratch; returns the best model (by held-out loss) and its history."""
    on_gpu = device.type == "cuda"
    seed_everything(seed, deterministic=not on_gpu)
    rng = np.random.default_rng(seed)
    n = len(images)
    perm = rng.permutation(n)
    n_val = int(round(cfg.val_fraction * n)) if cfg.val_fraction > 0 and n >= 20 else 0
    val_idx, tr_idx = np.sort(perm[:n_val]), perm[n_val:]
    model = build_model(spec, n_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(tr_idx) / cfg.batch_size)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                pct_start=0.15, anneal_strategy="cos")
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    counts = np.bincount(labels[tr_idx], minlength=n_classes).astype(np.float64)
    weight = torch.tensor(counts.sum() / np.maximum(counts, 1) / n_classes, dtype=torch.float32, device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    if cfg.batched_augment:  # training set on the device (half precision on a GPU), batched augmentation
        dev_images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(
            device, torch.float16 if on_gpu else torch.float32)
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        augment = None
    else:
        dev_images, gen = None, None
        augment = _augmenter(images.shape[-1], seed) if cfg.augment else None
    best_state, best_loss, bad = None, float("inf"), 0
    hist: dict[str, Any] = {"val_loss": [], "val_acc": [], "train_loss": []}
    # Training-time margins accumulate on the fit's device and are copied to the host once, at the end.
    margin_sum = torch.zeros(n, dtype=torch.float64, device=device)
    margin_n = torch.zeros(n, dtype=torch.float64, device=device)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=desc or spec.name, unit="step", leave=False)
    for epoch in range(cfg.epochs):
        model.train()
        order = tr_idx[rng.permutation(len(tr_idx))]
        tot = 0.0
        for s in range(0, len(order), cfg.batch_size):
            b = order[s:s + cfg.batch_size]
            if len(b) < 2:
                continue
            if dev_images is not None:
                assert gen is not None  # set with dev_images
                xg = dev_images[torch.from_numpy(b).to(device)][:, None].float()
                x = _to_input(batch_augment(xg, gen) if cfg.augment else xg, device)
            else:
                xb = images[b][:, None]
                if augment is not None:
                    xb = augment(xb)
                x = _to_input(xb, device)
            y = torch.from_numpy(labels[b]).to(device)
            with _autocast(device):
                logits = model(x).float()
                loss = loss_fn(logits, y)
            with torch.no_grad():  # training-time margin: reads the logits, no effect on the fit
                lg = logits.detach().double()
                given = lg.gather(1, y[:, None])[:, 0]
                bt = torch.from_numpy(b).to(device)
                margin_sum[bt] += given - lg.scatter(1, y[:, None], float("-inf")).amax(1)
                margin_n[bt] += 1
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            tot += float(loss.detach()) * len(b)
            if bar is not None:
                bar.update(1)
        hist["train_loss"].append(tot / max(1, len(order)))
        if n_val:
            val_x = dev_images[torch.from_numpy(val_idx).to(device)] if dev_images is not None else images[val_idx]
            p = predict_probs(model, val_x, device=device)
            vl = float(-np.mean(np.log(np.clip(p[np.arange(n_val), labels[val_idx]], 1e-7, 1))))
            hist["val_loss"].append(vl)
            hist["val_acc"].append(float(np.mean(p.argmax(1) == labels[val_idx])))
            if vl < best_loss - 1e-4:
                best_loss, bad, best_state = vl, 0, copy.deepcopy(model.state_dict())
                hist["best_epoch"] = epoch
            elif epoch + 1 >= cfg.epochs // 2:
                bad += 1
                if bad >= cfg.patience:
                    break
    if bar is not None:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    recalibrate_batchnorm(model, dev_images[torch.from_numpy(np.sort(tr_idx)).to(device)]
                          if dev_images is not None else images[tr_idx], cfg.batch_size, device)
    del dev_images
    hist["epochs_run"] = len(hist["train_loss"])
    hist["val_idx_count"] = int(n_val)
    m_sum, m_n = margin_sum.cpu().numpy(), margin_n.cpu().numpy()
    hist["train_margin"] = np.where(m_n > 0, m_sum / np.maximum(m_n, 1), np.nan)
    model.eval()
    return model.cpu() if device.type != "cpu" else model, hist


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int,
                          device: torch.device) -> None:
    """Re-estimate BatchNorm running statistics for the final weights (cumulative average over the
    un-augmented training images). With few hundred steps the exponential running averages lag the
    weights and eval-mode predictions degrade (worst for EfficientNet)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or len(images) < 2:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for s in range(0, len(images), batch_size):
        if len(images[s:s + batch_size]) >= 2:
            with _autocast(device):
                model(_to_input(images[s:s + batch_size], device))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.eval()


def make_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Stratified fold id (0..k-1) per sample."""
    rng = np.random.default_rng(seed + 7919)
    fold = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        fold[idx] = np.arange(len(idx)) % k
    return fold


@dataclass
class Fit:
    """Everything the detector needs from fitting: per-member out-of-sample probabilities and models.

    ``probs[m]`` is (N, C); for crossfit, sample i's row comes from ``members`` whose fold == fold[i]
    (they never saw it). For insample, fold is all zeros and each arch has one member.
    With ``repeats`` > 1 each architecture is fitted once per seed (repeat r: seed + REPEAT_SEED_STEP * r, its own
    folds) and ``probs`` is the mean over the repeats; ``fold`` and ``member_for`` refer to repeat 0, and
    ``repeat_folds[r]`` holds repeat r's folds.
    """

    mode: str
    archs: list[str]
    probs: dict[str, np.ndarray]
    members: list[FittedMember]
    fold: np.ndarray
    timing: dict[str, float]
    repeat_folds: list[np.ndarray] = field(default_factory=list)

    def member_for(self, arch: str, fold: int) -> FittedMember:
        for m in self.members:
            if m.arch == arch and m.fold == fold and m.repeat == 0:
                return m
        raise KeyError((arch, fold))

    def train_margins(self) -> np.ndarray:
        """(archs, N): per architecture, the mean training-time margin of each sample over the members
        that trained on it (NaN where none did, or a member did not record it)."""
        n = len(self.fold)
        out = np.full((len(self.archs), n), np.nan)
        for ai, arch in enumerate(self.archs):
            tot, cnt = np.zeros(n), np.zeros(n)
            for m in self.members:
                if m.arch != arch or m.train_margin is None:
                    continue
                ok = np.isfinite(m.train_margin)
                tot[m.train_idx[ok]] += m.train_margin[ok]
                cnt[m.train_idx[ok]] += 1
            out[ai] = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
        return out


@dataclass(frozen=True)
class FitTask:
    """One member fit of the cross-fit loop: which architecture (index into the specs), fold and seed."""

    member: int
    fold: int
    seed: int


_MemberFit = tuple[FittedMember, np.ndarray, np.ndarray, float, float]
"""One member fit: (member, fold indices, probabilities, train s, predict s)."""

MapFn = Callable[[Callable[[FitTask], _MemberFit], Sequence[FitTask]], list[_MemberFit]]
"""``map_fn(fn, tasks) -> [fn(t) for t in tasks]`` in order, run anywhere (default: here, one after another;
``service.runtime.executor_ray.ray_map``: one Ray task per fit). ``fn`` is picklable and holds the training data."""


def local_map(fn: Callable[[FitTask], _MemberFit], tasks: Sequence[FitTask]) -> list[_MemberFit]:
    """The default ``map_fn``: the builtin map, in this process."""
    return list(map(fn, tasks))


def fit_ensemble(specs: list[MemberSpec], images: np.ndarray, labels: np.ndarray, n_classes: int, cfg: TrainConfig,
                 *, mode: str = "crossfit", folds: int = 4, seed: int = 0, device: str | torch.device = "auto",
                 progress: bool = False, exclude: np.ndarray | None = None, repeats: int = 1,
                 map_fn: MapFn | None = None) -> Fit:
    """Fit every member and return out-of-sample (crossfit) or in-sample probabilities.

    ``exclude``: boolean mask of samples no member trains on (e.g. the suspected errors of a first
    fit, for a second fit on cleaner labels); they are still scored, and the folds are unchanged.
    ``repeats``: fit each architecture with this many seeds (``seed``, ``seed + REPEAT_SEED_STEP``, ...: other
    folds, initialisations and batches) and average their probabilities — less fit-to-fit noise for
    ``repeats`` times the training (``benchmarks/results/seed-average-summary.json`` measures it).
    ``map_fn``: runs the member fits (folds x members) of each repeat (:data:`MapFn`; default
    :func:`local_map`); each fit is a pure function of its seed and data, so where it runs changes
    nothing but the time (bit-equal on CPUs with the same thread count). ``device`` is resolved where
    the fit runs."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    check_input_size(specs, int(min(images.shape[-2:])))
    fits = [_fit_once(specs, images, labels, n_classes, cfg, mode=mode, folds=folds,
                      seed=seed + REPEAT_SEED_STEP * r, device=device, progress=progress, exclude=exclude, repeat=r,
                      map_fn=map_fn)
            for r in range(repeats)]
    if repeats == 1:
        return fits[0]
    first = fits[0]
    probs = {a: np.mean([f.probs[a] for f in fits], axis=0).astype(np.float32) for a in first.archs}
    timing = {k: sum(f.timing[k] for f in fits) for k in first.timing}
    return Fit(mode, first.archs, probs, [m for f in fits for m in f.members], first.fold, timing,
               [f.fold for f in fits])


def _fit_once(specs: list[MemberSpec], images: np.ndarray, labels: np.ndarray, n_classes: int, cfg: TrainConfig,
              *, mode: str, folds: int, seed: int, device: str | torch.device, progress: bool,
              exclude: np.ndarray | None, repeat: int, map_fn: MapFn | None = None) -> Fit:
    """One fit of every member with one seed (``repeat`` is recorded on the members)."""
    if mode not in ("crossfit", "insample"):
        raise ValueError(f"mode must be crossfit or insample, not {mode!r}")
    if mode == "crossfit" and folds < 2:
        raise ValueError("crossfit needs at least 2 folds")
    n = len(images)
    if exclude is not None and (len(exclude) != n or np.asarray(exclude).dtype != bool):
        raise ValueError("exclude must be a boolean mask with one entry per image")
    if map_fn is None:  # resolved here once (and a bad device fails before any work); else where the fits run
        device = resolve_device(device) if isinstance(device, str) else device
    keep = np.ones(n, dtype=bool) if exclude is None else ~np.asarray(exclude)
    fold = make_folds(labels, folds, seed) if mode == "crossfit" else np.zeros(n, dtype=np.int64)
    n_folds = folds if mode == "crossfit" else 1
    tasks = [FitTask(mi, k, seed * 1000 + mi * 100 + k) for mi in range(len(specs)) for k in range(n_folds)]
    fit_one = functools.partial(_fit_member, specs=specs, images=images, labels=labels, n_classes=n_classes, cfg=cfg,
                                fold=fold, keep=keep, crossfit=mode == "crossfit", n_folds=n_folds, device=device,
                                progress=progress and map_fn is None, repeat=repeat)
    done = (map_fn or local_map)(fit_one, tasks)
    probs = {s.name: np.zeros((n, n_classes), dtype=np.float32) for s in specs}
    members: list[FittedMember] = []
    t_train = t_pred = 0.0
    for task, (member, te, p, dt_train, dt_pred) in zip(tasks, done, strict=True):
        probs[specs[task.member].name][te] = p
        members.append(member)
        t_train += dt_train
        t_pred += dt_pred
    return Fit(mode, [s.name for s in specs], probs, members, fold, {"train": t_train, "predict": t_pred}, [fold])


def _fit_member(task: FitTask, *, specs: list[MemberSpec], images: np.ndarray, labels: np.ndarray, n_classes: int,
                cfg: TrainConfig, fold: np.ndarray, keep: np.ndarray, crossfit: bool, n_folds: int,
                device: str | torch.device, progress: bool, repeat: int
                ) -> _MemberFit:
    """Train one member on the other folds, predict its own: (member, fold indices, probs, train s, predict s)."""
    dev = resolve_device(device) if isinstance(device, str) else device
    spec, k = specs[task.member], task.fold
    tr = np.flatnonzero((fold != k) & keep) if crossfit else np.flatnonzero(keep)
    te = np.flatnonzero(fold == k) if crossfit else np.arange(len(images))
    t0 = time.perf_counter()
    model, hist = train_member(spec, images[tr], labels[tr], n_classes, cfg, seed=task.seed, device=dev,
                               progress=progress,
                               desc=f"{spec.name} fold {k + 1}/{n_folds}" + (f" repeat {repeat}" if repeat else ""))
    t1 = time.perf_counter()
    model = model.to(dev)
    p = predict_probs(model, images[te], device=dev)
    t_pred = time.perf_counter() - t1
    layer, size = choose_cam_layer(spec, model.cpu(), images.shape[-1], cfg.min_cam_cells)
    margin = hist.pop("train_margin", None)
    member = FittedMember(spec.name, model.cpu(), layer, size, k, tr, hist, margin, repeat)
    log.info("%s fold %d%s: %d epochs, val acc %s, %.1fs", spec.name, k, f" repeat {repeat}" if repeat else "",
             hist["epochs_run"], hist["val_acc"][-1:] if hist["val_acc"] else "-", t1 - t0)
    return member, te, p, t1 - t0, t_pred
