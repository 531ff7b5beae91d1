"""The re-ID encoder (docs/method.md#initialisation).

backbone (last stride 1) -> global average pooling (GeM as an option) -> optional linear embedding
-> BatchNorm1d neck with its bias frozen at 0 -> L2 normalisation. The output is unit-norm in
training *and* in evaluation, because the hybrid memory, its temperature and its momentum update
all assume unit vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spcl.models.backbones import Pretrained, build_backbone

__all__ = ["Encoder", "GeM", "build_encoder"]


class GeM(nn.Module):
    """Generalised-mean pooling (Radenovic et al.): ``mean(x^p)^(1/p)`` per channel, p learnable.
    p = 1 is average pooling, p -> inf max pooling."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


class _AvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


_POOLING = {"avg": _AvgPool, "gem": GeM}


class Encoder(nn.Module):
    """Images (B, 3, H, W) -> features (B, out_features).

    ``norm=True`` (SpCL): L2-normalised output in training and evaluation. ``norm=False``: the
    training output is the raw neck feature; evaluation output is always normalised (retrieval
    uses cosine distances). ``dropout`` (default 0) applies in training after normalisation, as
    in the reference. The neck's bias is frozen at 0 (``requires_grad=False``); note that
    ``convert_dsbn`` makes it trainable unless asked not to (docs/method.md#dsbn's reference quirk).
    """

    def __init__(
        self,
        backbone: nn.Module,
        pooling: str = "avg",
        features: int = 0,
        dropout: float = 0.0,
        norm: bool = True,
        arch: str = "",
    ) -> None:
        super().__init__()
        if pooling not in _POOLING:
            raise ValueError(f"pooling must be one of {sorted(_POOLING)}, got {pooling!r}")
        if features < 0 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"need features >= 0 and 0 <= dropout < 1, got {features}, {dropout}")
        self.arch = arch
        self.backbone = backbone
        self.pool = _POOLING[pooling]()
        width: int = backbone.out_channels
        self.embedding: nn.Linear | None = None
        if features > 0:
            self.embedding = nn.Linear(width, features)
            nn.init.kaiming_normal_(self.embedding.weight, mode="fan_out")
            nn.init.zeros_(self.embedding.bias)
        self.out_features: int = features or width
        self.neck = nn.BatchNorm1d(self.out_features)
        nn.init.ones_(self.neck.weight)
        nn.init.zeros_(self.neck.bias)
        self.neck.bias.requires_grad_(False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x)
        # the head runs in float32 under autocast: pooling sums thousands of activations, and the
        # neck's statistics and the normalisation's norm feed a loss at temperature 0.05, where a
        # bf16 mantissa (8 bits) is too coarse; it is a negligible share of the compute
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if x.dim() == 4:  # feature map; token backbones (timm ViTs) come pooled already
                x = self.pool(x)
            if self.embedding is not None:
                x = self.embedding(x)
            x = self.neck(x)
            if self.norm or not self.training:
                x = F.normalize(x, dim=1)
            if self.training and self.dropout is not None:
                x = self.dropout(x)
        return x


def build_encoder(
    arch: str = "resnet50",
    pretrained: Pretrained = True,
    last_stride: int = 1,
    pooling: str = "avg",
    features: int = 0,
    dropout: float = 0.0,
    norm: bool = True,
    img_size: tuple[int, int] = (256, 128),
    drop_path: float | None = None,
    grad_checkpointing: bool = False,
) -> Encoder:
    """Build the SpCL encoder.

    ``arch``: a registered backbone (``spcl.models.available_backbones()``: resnet10/18/34/50/101,
    resnet50_ibn_a, vit_small, vit_small_ics, vit_base_ics, vit_tiny) or ``"timm:<name>"``.
    ``pretrained``: True = ImageNet weights from torchvision's cache (an error says how to supply
    them when absent; nothing is downloaded), a path = that state dict file (for the ViTs, the
    released LUPerson file as downloaded), False = from scratch. ``features``: 0 keeps the backbone
    width (2048 for ResNet-50, 384 for ViT-S), otherwise a linear embedding to that size. The neck and
    embedding are always freshly initialised. ``img_size`` (H, W), ``drop_path`` and
    ``grad_checkpointing`` matter only for token backbones (ViTs): their token grid, stochastic
    depth and activation recomputation.
    """
    backbone = build_backbone(arch, pretrained, last_stride, img_size=tuple(img_size), drop_path=drop_path,
                              grad_checkpointing=grad_checkpointing)
    return Encoder(
        backbone, pooling=pooling, features=features, dropout=dropout, norm=norm, arch=arch
    )
