"""The 3-D ensemble as data: diverse MONAI 3-D segmenters, tiny variants for the CPU.

Each member maps a (B, 1, Z, Y, X) patch to (B, K, Z, Y, X) logits, one sigmoid channel per segment
(multi-label: SEG segments may overlap). The families differ in how they see: a residual U-Net
with batch norm, a SegResNet (residual encoder, light decoder, group norm), an attention-gated
U-Net, and nnU-Net's DynUNet (instance norm) as a fourth choice. A patch edge must be a multiple
of the member's ``multiple`` (its total down-sampling).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = ["VolumeMemberSpec", "VOLUME_ARCHITECTURES", "DEFAULT_VOLUME_ARCHS", "build_volume_segmenter",
           "parse_volume_archs", "patch_multiple"]

OUTPUT_BIAS = -2.0
"""Initial bias of the output convolution (sigmoid 0.12: foreground is the minority of a patch)."""


@dataclass(frozen=True)
class VolumeMemberSpec:
    """One member: name, family, builder for K classes, total down-sampling, a one-line description."""

    name: str
    family: str
    build: Callable[[int], nn.Module]
    multiple: int
    description: str


def _unet(k: int, ch: tuple[int, ...]) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=k, channels=ch, strides=(2,) * (len(ch) - 1),
                num_res_units=1, norm="batch")


def _segresnet(k: int, f: int, levels: int) -> nn.Module:
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=3, in_channels=1, out_channels=k, init_filters=f, blocks_down=(1,) * levels,
                     blocks_up=(1,) * (levels - 1), norm=("group", {"num_groups": min(4, f)}))  # 4 filters, groups of
    # one: the smaller synthetic segment stayed at Dice 0 in 1 of 3 folds (twice); 8 filters, groups of two: never


def _attention(k: int, ch: tuple[int, ...]) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(spatial_dims=3, in_channels=1, out_channels=k, channels=ch, strides=(2,) * (len(ch) - 1))


def _dynunet(k: int, f: tuple[int, ...]) -> nn.Module:
    from monai.networks.nets import DynUNet

    n = len(f)
    return DynUNet(spatial_dims=3, in_channels=1, out_channels=k, kernel_size=[3] * n, strides=[1] + [2] * (n - 1),
                   upsample_kernel_size=[2] * (n - 1), filters=list(f), norm_name="instance")


VOLUME_ARCHITECTURES: dict[str, VolumeMemberSpec] = {s.name: s for s in [
    VolumeMemberSpec("unet3d-tiny", "unet", lambda k: _unet(k, (8, 16, 32, 64)), 8,
                     "MONAI UNet 3-D, residual units, batch norm, 8-64 channels"),
    VolumeMemberSpec("segresnet3d-tiny", "segresnet", lambda k: _segresnet(k, 8, 4), 8,
                     "MONAI SegResNet 3-D, 8 initial filters (groups of 2), one block per level"),
    VolumeMemberSpec("attentionunet3d-tiny", "attentionunet", lambda k: _attention(k, (4, 8, 16, 32)), 8,
                     "MONAI AttentionUnet 3-D, attention gates, 4-32 channels"),
    VolumeMemberSpec("dynunet3d-tiny", "dynunet", lambda k: _dynunet(k, (4, 8, 16, 32)), 8,
                     "MONAI DynUNet 3-D (nnU-Net style), instance norm, 4-32 filters"),
    VolumeMemberSpec("unet3d", "unet", lambda k: _unet(k, (16, 32, 64, 128, 256)), 16,
                     "MONAI UNet 3-D, residual units, batch norm, 16-256 channels"),
    VolumeMemberSpec("segresnet3d", "segresnet", lambda k: _segresnet(k, 16, 4), 8,
                     "MONAI SegResNet 3-D, 16 initial filters, one block per level"),
    VolumeMemberSpec("attentionunet3d", "attentionunet", lambda k: _attention(k, (16, 32, 64, 128, 256)), 16,
                     "MONAI AttentionUnet 3-D, 16-256 channels"),
    VolumeMemberSpec("dynunet3d", "dynunet", lambda k: _dynunet(k, (32, 64, 128, 256, 320)), 16,
                     "MONAI DynUNet 3-D (nnU-Net style), 32-320 filters"),
]}
"""Every 3-D member; ``*-tiny`` variants are the CPU defaults."""

DEFAULT_VOLUME_ARCHS = ("unet3d-tiny", "segresnet3d-tiny", "attentionunet3d-tiny")


def build_volume_segmenter(arch: str, n_classes: int) -> nn.Module:
    """A freshly initialised 3-D member with ``n_classes`` sigmoid output channels."""
    if arch not in VOLUME_ARCHITECTURES:
        raise ValueError(f"unknown 3-D segmenter {arch!r}; one of {', '.join(VOLUME_ARCHITECTURES)}")
    if n_classes < 1:
        raise ValueError(f"a segmenter needs at least one class, not {n_classes}")
    net = VOLUME_ARCHITECTURES[arch].build(n_classes)
    heads = [m for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))
             and m.out_channels == n_classes and m.bias is not None]
    if heads and heads[-1].bias is not None:
        nn.init.constant_(heads[-1].bias, OUTPUT_BIAS)
    return net


def parse_volume_archs(archs: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"a,b,c"`` or a sequence -> validated 3-D member names (at least two, no repeats)."""
    names = tuple(a.strip() for a in (archs.split(",") if isinstance(archs, str) else archs) if a.strip())
    bad = [a for a in names if a not in VOLUME_ARCHITECTURES]
    if bad:
        raise ValueError(f"unknown 3-D segmenters {bad}; choose from {', '.join(VOLUME_ARCHITECTURES)}")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"the ensemble needs at least two different members, got {list(names)}")
    return names


def patch_multiple(archs: tuple[str, ...] | list[str]) -> int:
    """The multiple every patch edge must be for these members."""
    return max(VOLUME_ARCHITECTURES[a].multiple for a in archs)
