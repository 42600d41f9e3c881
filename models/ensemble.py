"""The ensemble as data: member specs (architecture, constructor, Grad-CAM target layers).

Each member is a 1-channel 2-D network from ``monai.networks.nets``. ``cam_layers`` lists the
candidate Grad-CAM target layers from deepest to shallowest; :func:`choose_cam_layer` takes the
deepest whose feature map has at least ``min_cells`` x ``min_cells`` cells at the configured input
size (at 64 px the usual last blocks are 2x2 and their maps carry no spatial signal).

Fixes applied to MONAI defaults (measured in the reference run, see docs/detector.md):
- EfficientNetBN uses BatchNorm momentum 0.01 (TF convention): with a few hundred steps the running
  statistics never converge and eval-mode predictions collapse. All BatchNorm momenta are set to 0.1.
- MONAI's ``resnet18`` has a stride-1 stem; ``conv1_t_stride=2`` gives the usual stem (4x less work).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "MemberSpec", "ARCHITECTURES", "DEFAULT_ARCHS", "parse_archs", "check_input_size", "build_model", "feature_sizes",
    "choose_cam_layer",
]


@dataclass(frozen=True)
class MemberSpec:
    """One ensemble member: a name, how to build it and where to take its Grad-CAM."""

    name: str
    family: str
    build: Callable[[int], nn.Module]
    cam_layers: tuple[str, ...]
    description: str
    min_size: int = 1
    """The smallest square input side (pixels) the network runs on (checked by a test)."""


def _densenet121(n: int) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=1, out_channels=n)


def _densenet_small(n: int) -> nn.Module:
    from monai.networks.nets import DenseNet

    return DenseNet(spatial_dims=2, in_channels=1, out_channels=n, init_features=32, growth_rate=16,
                    block_config=(4, 8, 12, 8))


def _densenet_tiny(n: int) -> nn.Module:
    from monai.networks.nets import DenseNet

    return DenseNet(spatial_dims=2, in_channels=1, out_channels=n, init_features=8, growth_rate=8,
                    block_config=(2, 2, 2), bn_size=2)


def _resnet18(n: int) -> nn.Module:
    from monai.networks.nets import resnet18

    return resnet18(spatial_dims=2, n_input_channels=1, num_classes=n, conv1_t_stride=2)


def _resnet10(n: int) -> nn.Module:
    from monai.networks.nets import resnet10

    return resnet10(spatial_dims=2, n_input_channels=1, num_classes=n, conv1_t_stride=2)


def _resnet_tiny(n: int) -> nn.Module:
    from monai.networks.nets import ResNet

    return ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[8, 16, 32, 64], spatial_dims=2,
                  n_input_channels=1, num_classes=n, conv1_t_stride=2, conv1_t_size=3, no_max_pool=True)


def _efficientnet_b0(n: int) -> nn.Module:
    from monai.networks.nets import EfficientNetBN

    return EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=1, num_classes=n)


_B0_BLOCKS = ["r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e6_i16_o24_se0.25", "r2_k5_s22_e6_i24_o40_se0.25",
              "r3_k3_s22_e6_i40_o80_se0.25", "r3_k5_s11_e6_i80_o112_se0.25", "r4_k5_s22_e6_i112_o192_se0.25",
              "r1_k3_s11_e6_i192_o320_se0.25"]


def _efficientnet_small(n: int) -> nn.Module:
    from monai.networks.nets import EfficientNet
    return EfficientNet(_B0_BLOCKS, spatial_dims=2, in_channels=1, num_classes=n, width_coefficient=0.5,
                        depth_coefficient=0.5, image_size=64, dropout_rate=0.2)


def _efficientnet_tiny(n: int) -> nn.Module:
    from monai.networks.nets import EfficientNet

    blocks = ["r1_k3_s11_e1_i32_o16_se0.25", "r1_k3_s22_e4_i16_o24_se0.25", "r1_k5_s22_e4_i24_o40_se0.25",
              "r1_k3_s22_e4_i40_o80_se0.25"]
    return EfficientNet(blocks, spatial_dims=2, in_channels=1, num_classes=n, width_coefficient=0.5,
                        depth_coefficient=1.0, image_size=32, dropout_rate=0.1)


_DENSE_LAYERS = ("features.denseblock4", "features.denseblock3", "features.denseblock2", "features.denseblock1")
_RES_LAYERS = ("layer4", "layer3", "layer2", "layer1")
_EFF_LAYERS = ("_conv_head", "_blocks.4", "_blocks.2", "_blocks.1")

ARCHITECTURES: dict[str, MemberSpec] = {
    s.name: s
    for s in [
        MemberSpec("densenet121", "densenet", _densenet121, _DENSE_LAYERS, "MONAI DenseNet121", min_size=29),
        MemberSpec("densenet-small", "densenet", _densenet_small, _DENSE_LAYERS,
                   "MONAI DenseNet, 32 init features, growth 16, blocks (4, 8, 12, 8)", min_size=29),
        MemberSpec("densenet-tiny", "densenet", _densenet_tiny,
                   ("features.denseblock3", "features.denseblock2", "features.denseblock1"),
                   "MONAI DenseNet, 8 features, blocks (2, 2, 2) (tests)", min_size=13),
        MemberSpec("resnet18", "resnet", _resnet18, _RES_LAYERS, "MONAI resnet18, stride-2 stem", min_size=2),
        MemberSpec("resnet10", "resnet", _resnet10, _RES_LAYERS, "MONAI resnet10, stride-2 stem", min_size=2),
        MemberSpec("resnet-tiny", "resnet", _resnet_tiny, _RES_LAYERS, "MONAI ResNet basic [1,1,1,1], width 8 (tests)",
                   min_size=2),
        MemberSpec("efficientnet-b0", "efficientnet", _efficientnet_b0, _EFF_LAYERS,
                   "MONAI EfficientNetBN b0, BatchNorm momentum 0.1", min_size=32),
        MemberSpec("efficientnet-small", "efficientnet", _efficientnet_small, _EFF_LAYERS,
                   "MONAI EfficientNet, b0 blocks at width 0.5 and depth 0.5, BatchNorm momentum 0.1", min_size=32),
        MemberSpec("efficientnet-tiny", "efficientnet", _efficientnet_tiny, ("_conv_head", "_blocks.2", "_blocks.1"),
                   "MONAI EfficientNet, 4 stages, width 0.5 (tests)", min_size=16),
    ]
}

DEFAULT_ARCHS = ("densenet121", "resnet18", "efficientnet-b0")


def parse_archs(archs: str | list[str] | tuple[str, ...]) -> list[MemberSpec]:
    """Specs for a comma-separated list (or sequence) of architecture names."""
    names = [a.strip() for a in archs.split(",")] if isinstance(archs, str) else list(archs)
    names = [a for a in names if a]
    unknown = [a for a in names if a not in ARCHITECTURES]
    if unknown:
        raise ValueError(f"unknown architecture(s) {unknown}; choose from {sorted(ARCHITECTURES)}")
    if len(names) < 2:
        raise ValueError("the ensemble needs at least 2 members (3+ diverse architectures recommended)")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate architectures in {names}")
    return [ARCHITECTURES[a] for a in names]


def check_input_size(specs: list[MemberSpec], image_size: int) -> None:
    """Refuse, with one line naming the minimum, an input size some member cannot run on."""
    too_small = {s.name: s.min_size for s in specs if s.min_size > image_size}
    if too_small:
        need = max(too_small.values())
        fits = sorted(n for n, s in ARCHITECTURES.items() if s.min_size <= image_size)
        names = ", ".join(f"{n} (needs {m} px)" for n, m in too_small.items())
        raise ValueError(
            f"--image-size {image_size} is too small for {names}: use --image-size {need} or more (smaller images "
            f"are upsampled), or members that run at {image_size} px: {', '.join(fits) or 'none'}"
        )


def build_model(spec: MemberSpec, n_classes: int) -> nn.Module:
    """A freshly initialised member with BatchNorm momentum 0.1 everywhere."""
    model = spec.build(n_classes)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    return model


def feature_sizes(model: nn.Module, layers: tuple[str, ...], image_size: int) -> dict[str, int]:
    """Spatial size (min side) of each named layer's output for a (1, 1, S, S) input."""
    sizes: dict[str, int] = {}
    mods = dict(model.named_modules())
    hooks = []
    for name in layers:
        if name not in mods:
            continue
        hooks.append(mods[name].register_forward_hook(
            lambda _m, _i, out, name=name: sizes.__setitem__(name, int(min(out.shape[2:])))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sizes


def choose_cam_layer(spec: MemberSpec, model: nn.Module, image_size: int, min_cells: int = 7) -> tuple[str, int]:
    """(layer name, map side): the deepest candidate layer with at least ``min_cells`` cells a side."""
    sizes = feature_sizes(model, spec.cam_layers, image_size)
    if not sizes:
        raise ValueError(f"{spec.name}: none of the Grad-CAM layers {spec.cam_layers} exist in the model")
    for name in spec.cam_layers:
        if name in sizes and sizes[name] >= min_cells:
            return name, sizes[name]
    best = max(sizes, key=lambda k: sizes[k])
    return best, sizes[best]
