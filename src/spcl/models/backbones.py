"""Backbones for the re-ID encoder (docs/method.md#initialisation): a registry of feature-map extractors.

Every backbone maps images (B, 3, H, W) to a feature map (B, C, h, w) and exposes
``out_channels`` = C. Built in: torchvision ResNet-18/34/50/101 and IBN-ResNet-50-a, all with a
configurable last stride (1 in SpCL: layer4 keeps the spatial size of layer3), and any timm model
as ``"timm:<name>"`` when timm is installed. Add your own with ``@register_backbone("name")``.

ImageNet weights are never downloaded: ``pretrained=True`` reads torchvision's cache
(``torch.hub.get_dir()/checkpoints/<file>``), ``pretrained="path.pth"`` reads that file
(``weights_only=True``), ``pretrained=False`` trains from scratch. Missing weights stop with a
message that says where we looked and how to supply them.
"""

from __future__ import annotations

import inspect
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

import torch
import torchvision
from torch import nn

__all__ = [
    "BACKBONES",
    "IBN",
    "PretrainedWeightsError",
    "available_backbones",
    "backbone_normalization",
    "is_token_backbone",
    "build_backbone",
    "load_weights_file",
    "register_backbone",
    "register_normalization",
    "require_backbone",
    "resolve_pretrained",
]

Pretrained = Union[bool, str, os.PathLike]
BackboneFactory = Callable[..., nn.Module]

BACKBONES: dict[str, BackboneFactory] = {}
"""Architecture name -> factory ``(pretrained, last_stride, **options) -> nn.Module`` with
``out_channels``. ``options`` a factory may accept (by keyword): ``img_size`` (H, W) for token
backbones, ``drop_path``, ``grad_checkpointing``; :func:`build_backbone` passes only those it names."""

NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}
"""Architecture name -> the input (mean, std) its weights were trained with, where not ImageNet's."""

IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def register_backbone(name: str, *, tokens: bool = False) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator adding a backbone factory under ``name`` (see ``BACKBONES`` for the contract);
    ``tokens``: a transformer on tokens (its layout and precision choices differ from a CNN's)."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        BACKBONES[name] = factory
        if tokens:
            TOKEN_BACKBONES.add(name)
        return factory

    return decorate


def register_normalization(name: str, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Record the input normalisation a backbone's weights expect (default: ImageNet's)."""
    NORMALIZATION[name] = (tuple(mean), tuple(std))


def backbone_normalization(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) images are normalised with for ``arch``: its registered one, else ImageNet's."""
    return NORMALIZATION.get(arch, IMAGENET_NORMALIZATION)


def is_token_backbone(arch: str) -> bool:
    """Whether ``arch`` is a token backbone (a ViT): its output is a vector, not a feature map."""
    return arch in TOKEN_BACKBONES or arch.startswith(("timm:vit", "timm:deit"))


TOKEN_BACKBONES: set[str] = set()
"""Registered architectures that are transformers on tokens (``register_backbone(..., tokens=True)``)."""


def available_backbones() -> list[str]:
    """Registered architecture names (plus any ``timm:<name>`` when timm is installed)."""
    return sorted(BACKBONES)


def require_backbone(arch: str) -> None:
    """Fail at once, naming the choices, for an architecture that is not registered."""
    if not arch.startswith("timm:") and arch not in BACKBONES:
        raise KeyError(
            f"unknown architecture {arch!r}; available: {', '.join(available_backbones())}, "
            "or 'timm:<model name>' when timm is installed"
        )


def build_backbone(arch: str, pretrained: Pretrained = False, last_stride: int = 1, **options: Any) -> nn.Module:
    """Build a registered backbone (or ``timm:<name>``) with the requested weights.

    ``options`` (``img_size``, ``drop_path``, ``grad_checkpointing``) go to a factory that names
    them; one that does not (a ResNet has no token grid) ignores them, except a set value that would
    change the model (``drop_path`` or ``grad_checkpointing``), which is refused."""
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    if arch.startswith("timm:"):
        return TimmBackbone(arch[len("timm:") :], pretrained, last_stride)
    require_backbone(arch)
    factory = BACKBONES[arch]
    accepted = inspect.signature(factory).parameters
    given = {k: v for k, v in options.items() if v is not None}
    refused = [k for k, v in given.items() if k not in accepted and k != "img_size" and v]
    if refused:
        raise ValueError(f"{', '.join(refused)} is not a setting of the {arch} backbone (token backbones only)")
    backbone = factory(pretrained, last_stride, **{k: v for k, v in given.items() if k in accepted})
    if not hasattr(backbone, "out_channels"):
        raise TypeError(f"backbone factory {arch!r} returned a module without .out_channels")
    return backbone


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


class PretrainedWeightsError(FileNotFoundError):
    """ImageNet weights were asked for but are not available offline (or do not fit)."""


def resolve_pretrained(arch: str, pretrained: Pretrained, filename: str, url: str) -> Path | None:
    """The weights file to load for ``pretrained`` (None: from scratch); never downloads."""
    if pretrained is False or pretrained is None:
        return None
    if pretrained is True:
        path = Path(torch.hub.get_dir()) / "checkpoints" / filename
        if not path.is_file():
            raise PretrainedWeightsError(
                f"ImageNet weights for {arch} were asked for but are not available offline: "
                f"looked for {path} (torchvision's cache, torch.hub.get_dir()/checkpoints/). "
                f"Nothing is downloaded. Supply them with --pretrained PATH "
                f"(pretrained='PATH' in Python; e.g. {url} fetched on a machine with internet, "
                f"or copy that file to {path}), or train from scratch with --no-pretrained "
                "(pretrained=False)."
            )
        return path
    path = Path(pretrained)
    if not path.is_file():
        raise PretrainedWeightsError(
            f"pretrained weights file for {arch} not found: {path}. Give the path of a state dict "
            "(.pth), or use --no-pretrained (pretrained=False) to train from scratch."
        )
    return path


def load_weights_file(path: str | os.PathLike, *, unwrap: bool = True) -> dict[str, torch.Tensor]:
    """Read a state dict saved by torch (``weights_only=True``); unwraps ``{"state_dict": ...}`` /
    ``{"model": ...}`` and a DataParallel ``module.`` prefix, as released re-ID weights come
    (``unwrap=False``: the file's dict as saved, for readers of other wrappers)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise PretrainedWeightsError(
            f"{path} is not a plain state dict (it holds pickled objects, refused with "
            "weights_only=True): save model.state_dict() instead"
        ) from err
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path} is not a state dict (found {type(state).__name__})")
    if not unwrap:
        return state
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_backbone_weights(backbone: nn.Module, path: Path, arch: str) -> None:
    """Load an ImageNet classifier's state dict into ``backbone``, ignoring its ``fc`` head."""
    state = {k: v for k, v in load_weights_file(path).items() if not k.startswith("fc.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"{path} does not fit {arch}: missing keys {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}. Give the ImageNet weights of that "
            "architecture, or --no-pretrained."
        )


# --------------------------------------------------------------------------------------------------
# ResNet family
# --------------------------------------------------------------------------------------------------


def _set_last_stride(layer4: nn.Sequential, stride: int) -> None:
    """Set the stride of layer4's first block (its strided conv and its downsample shortcut)."""
    block = layer4[0]
    for module in block.modules():
        if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
            module.stride = (stride, stride)


class ResNetBackbone(nn.Module):
    """A torchvision-style ResNet without avgpool/fc; keeps torchvision's parameter names so
    ImageNet state dicts load directly."""

    def __init__(self, resnet: torchvision.models.ResNet, last_stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = (
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.maxpool,
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            resnet.layer1,
            resnet.layer2,
            resnet.layer3,
            resnet.layer4,
        )
        _set_last_stride(self.layer4, last_stride)
        self.out_channels: int = resnet.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _torchvision_resnet(name: str, weights_enum: str) -> BackboneFactory:
    def factory(pretrained: Pretrained, last_stride: int) -> nn.Module:
        url = getattr(torchvision.models, weights_enum).IMAGENET1K_V1.url  # the reference's weights
        path = resolve_pretrained(name, pretrained, url.rsplit("/", 1)[-1], url)
        backbone = ResNetBackbone(getattr(torchvision.models, name)(weights=None), last_stride)
        if path is not None:
            _load_backbone_weights(backbone, path, name)
        return backbone

    return factory


for _name, _enum in [
    ("resnet18", "ResNet18_Weights"),
    ("resnet34", "ResNet34_Weights"),
    ("resnet50", "ResNet50_Weights"),
    ("resnet101", "ResNet101_Weights"),
]:
    register_backbone(_name)(_torchvision_resnet(_name, _enum))


class IBN(nn.Module):
    """Instance-batch normalisation (IBN-Net, Pan et al. ECCV 2018): the first half of the
    channels through InstanceNorm (affine), the rest through BatchNorm. Parameter names
    (``IN``, ``BN``) match the released IBN-ResNet weights."""

    def __init__(self, planes: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(first.contiguous()), self.BN(second.contiguous())], dim=1)


_IBN_URL = (
    "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth"
)


@register_backbone("resnet50_ibn_a")
def resnet50_ibn_a(pretrained: Pretrained, last_stride: int) -> nn.Module:
    """IBN-ResNet-50-a: ResNet-50 whose bottlenecks in layer1-3 use IBN as their first norm
    (layer4 and the stem keep BatchNorm). Weights: a file path, or IBN-Net's released file in the
    torch hub cache; never downloaded."""
    path = resolve_pretrained("resnet50_ibn_a", pretrained, _IBN_URL.rsplit("/", 1)[-1], _IBN_URL)
    resnet = torchvision.models.resnet50(weights=None)
    for layer in (resnet.layer1, resnet.layer2, resnet.layer3):
        for block in layer:
            block.bn1 = IBN(block.bn1.num_features)
    backbone = ResNetBackbone(resnet, last_stride)
    if path is not None:
        _load_backbone_weights(backbone, path, "resnet50_ibn_a")
    return backbone


# --------------------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------------------


class TimmBackbone(nn.Module):
    """Any timm model (``arch="timm:<name>"``), imported lazily. Returns timm's feature map for
    CNNs (pooled by the encoder) and timm's pooled pre-logits vector for token models (ViTs).
    Weights only from a file (``pretrained=PATH``): timm would otherwise download them."""

    def __init__(self, name: str, pretrained: Pretrained, last_stride: int) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as err:
            raise ImportError(
                f"architecture 'timm:{name}' needs timm: pip install 'spcl[timm]'"
            ) from err
        if pretrained is True:
            raise PretrainedWeightsError(
                f"timm weights for {name} are not downloaded by spcl: pass the weights file with "
                "--pretrained PATH (pretrained='PATH'), or --no-pretrained."
            )
        kwargs: dict = {"num_classes": 0}
        if pretrained:
            path = Path(pretrained)
            if not path.is_file():
                raise PretrainedWeightsError(
                    f"pretrained weights file for {name} not found: {path}"
                )
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        self.model = timm.create_model(name, **kwargs)
        self.out_channels: int = self.model.num_features
        layer4 = getattr(self.model, "layer4", None)
        if isinstance(layer4, nn.Sequential):
            _set_last_stride(layer4, last_stride)
        elif last_stride != 2:
            warnings.warn(
                f"last_stride={last_stride} is not applied to timm:{name} (no ResNet-style layer4)",
                stacklevel=3,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(x)
        if features.dim() == 4:
            return features
        return self.model.forward_head(features, pre_logits=True)


@register_backbone("resnet10")
def resnet10(pretrained: Pretrained, last_stride: int) -> nn.Module:
    """ResNet-10 (one basic block per stage): half the cost of ResNet-18, for CPU runs from scratch
    such as the demo. There are no ImageNet weights for it; a state-dict path still works."""
    from torchvision.models.resnet import BasicBlock, ResNet

    if pretrained is True:
        raise PretrainedWeightsError(
            "resnet10 has no ImageNet weights: train it from scratch (--no-pretrained) or pass "
            "--pretrained PATH to a state dict of your own"
        )
    backbone = ResNetBackbone(ResNet(BasicBlock, [1, 1, 1, 1]), last_stride)
    if pretrained:
        _load_backbone_weights(backbone, Path(pretrained), "resnet10")
    return backbone
