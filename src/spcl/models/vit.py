"""Vision Transformers for re-ID (docs/method.md#vit): ViT-S/16 and ViT-B/16, with the plain patch
embedding or the convolutional ICS stem, as pretrained with DINO on LUPerson (TransReID-SSL).

The backbone returns the class token after the final LayerNorm (B x dim); spcl's encoder adds its
BatchNorm neck and the L2 normalisation. Written here rather than taken from timm because the
released weights need three things timm's ViT does not give together: the ICS stem (IBN in its
first two stages), a bilinear resize of the positional embedding with a 2:1 grid (timm's is
bicubic and square-minded), and the release's key layout loaded strictly. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` (a GPU's fused kernels; exact math on a
CPU), and ``grad_checkpointing`` recomputes each block in the backward pass instead of keeping its
activations (memory for time).

Registered: ``vit_small`` (ViT-S/16), ``vit_small_ics``, ``vit_base_ics`` (ViT-B/16 + ICS, 384 x 128
in its recipe) and ``vit_tiny`` (a small ViT for CPU runs from scratch, no weights).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from spcl.models.backbones import (
    IBN,
    Pretrained,
    PretrainedWeightsError,
    load_weights_file,
    register_backbone,
    register_normalization,
)

__all__ = ["ConvStem", "PatchEmbed", "VisionTransformer", "released_state", "resize_pos_embed"]

SELF_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
"""The input normalisation of the LUPerson weights (mean, std): the recipe's ``--self-norm``."""


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch`` x ``patch`` patches, each projected to ``dim`` by one convolution."""

    def __init__(self, dim: int, patch: int = 16) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ConvStem(nn.Module):
    """The ICS stem: three convolutions at stride 2 (IBN after the first two, BN after the third),
    then an 8 x 8 / 8 projection to ``dim``: total stride 16, the same tokens as the patches."""

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, hidden, kernel_size=7, stride=2, padding=3, bias=False),
            IBN(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size=3, stride=1, padding=1, bias=False),
            IBN(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.proj = nn.Conv2d(hidden, dim, kernel_size=8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.conv(x)).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"the width {dim} must divide into {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d_head)) v
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact, not the tanh approximation
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: in training, the residual branch of a whole sample is dropped with
    probability ``p`` (the kept ones scaled by 1 / (1 - p))."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """Images (B, 3, H, W) -> the class token after the final LayerNorm (B, dim).

    ``img_size`` fixes the token grid (H / 16 x W / 16) and the positional embedding; a weights file
    made at another size is resized when loaded (:func:`resize_pos_embed`), never at run time.
    ``drop_path``: the stochastic depth of the last block, growing linearly from 0 at the first.
    """

    def __init__(
        self, img_size: tuple[int, int] = (256, 128), *, dim: int = 384, depth: int = 12, heads: int = 6,
        mlp_ratio: float = 4.0, drop_path: float = 0.1, stem: str = "patch", grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        height, width = img_size
        if height % 16 or width % 16 or height < 16 or width < 16:
            raise ValueError(f"a ViT with 16-pixel patches needs a height and width that are multiples of 16, "
                             f"got {height} x {width}")
        if stem not in ("patch", "ics"):
            raise ValueError(f"stem must be 'patch' or 'ics', got {stem!r}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.grid = (height // 16, width // 16)
        self.patch_embed: nn.Module = ConvStem(dim) if stem == "ics" else PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1] + 1, dim))
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, rate) for rate in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.out_channels: int = dim
        self.grad_checkpointing = grad_checkpointing
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.grid[0] * 16, self.grid[1] * 16):
            raise ValueError(f"this ViT was built for {self.grid[0] * 16} x {self.grid[1] * 16} images, got "
                             f"{x.shape[-2]} x {x.shape[-1]}")
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)[:, 0]

    def load_released(self, path: str | Path, arch: str) -> None:
        """Load a released weights file (docs/method.md#vit) strictly; see :func:`released_state`."""
        state = released_state(load_weights_file(path, unwrap=False))
        if "pos_embed" in state and state["pos_embed"].shape != self.pos_embed.shape:
            state["pos_embed"] = resize_pos_embed(state["pos_embed"], self.grid)
        own = self.state_dict()
        shapes = [k for k in state if k in own and state[k].shape != own[k].shape]
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected or shapes:
            raise PretrainedWeightsError(_mismatch(path, arch, state, missing, unexpected, shapes, own))
        self.load_state_dict(state, strict=True)


def released_state(state: dict) -> dict[str, torch.Tensor]:
    """The backbone's weights of a file as TransReID-SSL releases them, or as DINO saves them: a flat
    state dict, or one inside a ``teacher`` (DINO: only its ``backbone.`` keys), ``model`` or
    ``state_dict`` entry, with ``module.``, ``backbone.`` or ``base.`` prefixes; heads, classifiers
    and re-ID necks (``head``, ``fc.``, ``classifier``, ``bottleneck``, ``dist``, ``pre_logits``)
    are left out."""
    for key in ("teacher", "model", "state_dict"):
        if isinstance(state.get(key), dict):
            inner = state[key]
            if key == "teacher":
                inner = {k.removeprefix("module."): v for k, v in inner.items()}
                backbone = {k.removeprefix("backbone."): v for k, v in inner.items() if k.startswith("backbone.")}
                inner = backbone or inner
            state = inner
            break
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in ("module.", "backbone.", "base."):
            key = key.removeprefix(prefix)
        if any(word in key for word in ("head", "dist_token", "pre_logits", "fc.", "classifier", "bottleneck")):
            continue
        out[key] = value
    return out


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], hw_ratio: int = 2) -> torch.Tensor:
    """A positional embedding (1, 1 + h*w, d) made for another token grid, resized to ``grid``: the
    class position kept, the grid (taken as h = sqrt(N * hw_ratio), w = h / hw_ratio, the 2:1 of
    person crops) interpolated bilinearly (align_corners False)."""
    cls, tokens = pos_embed[:, :1], pos_embed[0, 1:]
    n = tokens.shape[0]
    old_h = int(math.sqrt(n * hw_ratio))
    old_w = old_h // hw_ratio
    if old_h * old_w != n:
        old_h, old_w = _factor(n)
    tokens = tokens.reshape(1, old_h, old_w, -1).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens.float(), size=grid, mode="bilinear", align_corners=False)
    tokens = tokens.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos_embed.dtype)
    return torch.cat([cls, tokens], dim=1)


def _factor(n: int) -> tuple[int, int]:
    """The most nearly 2:1 factorisation h x w of n tokens (for grids that are not exactly 2:1)."""
    best = (n, 1)
    for h in range(1, n + 1):
        if n % h == 0 and abs(h / (n // h) - 2) < abs(best[0] / best[1] - 2):
            best = (h, n // h)
    return best


def _mismatch(path, arch, state, missing, unexpected, shapes, own) -> str:
    dims = {k: tuple(v.shape) for k, v in state.items() if k in ("cls_token", "pos_embed")}
    looks = _looks_like(state)
    lines = [f"{path} does not fit {arch}" + (f" (it looks like {looks})" if looks and looks != arch else "")]
    if missing:
        lines.append(f"missing keys ({len(missing)}): {', '.join(missing[:6])}{'...' if len(missing) > 6 else ''}")
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:6])}"
                     f"{'...' if len(unexpected) > 6 else ''}")
    if shapes:
        lines.append("other shapes: " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                  for k in shapes[:4]))
    if dims:
        lines.append("file: " + ", ".join(f"{k} {v}" for k, v in dims.items()))
    return "; ".join(lines) + ". Give the weights of that architecture (e.g. vit_small_ics_cfs_lup.pth for vit_small_ics)."


def _looks_like(state: dict[str, torch.Tensor]) -> str:
    """The registered architecture a state dict seems to be made for, by its keys and widths."""
    if "cls_token" not in state:
        return "a CNN (no class token)" if any(k.startswith(("layer", "conv1")) for k in state) else ""
    dim = state["cls_token"].shape[-1]
    ics = any(k.startswith("patch_embed.conv.") for k in state)
    name = {384: "vit_small", 768: "vit_base", 192: "vit_tiny"}.get(dim, f"a ViT of width {dim}")
    return name + ("_ics" if ics and name.startswith("vit_") else "")


def _vit_factory(arch: str, dim: int, depth: int, heads: int, stem: str, drop_path: float, weights: str | None):
    def factory(
        pretrained: Pretrained, last_stride: int, *, img_size: tuple[int, int] = (256, 128),
        drop_path: float | None = drop_path, grad_checkpointing: bool = False,
    ) -> nn.Module:
        if pretrained is True:
            if weights is None:
                raise PretrainedWeightsError(f"{arch} has no released weights: train it from scratch (--no-pretrained) "
                                             "or give --pretrained PATH")
            raise PretrainedWeightsError(
                f"{arch} is pretrained on LUPerson, not ImageNet, and nothing is downloaded: give the released file "
                f"with --pretrained PATH (pretrained='PATH'; {weights} from TransReID-SSL's README), or "
                "--no-pretrained"
            )
        model = VisionTransformer(img_size, dim=dim, depth=depth, heads=heads, stem=stem,
                                  drop_path=drop_path if drop_path is not None else 0.1,
                                  grad_checkpointing=grad_checkpointing)
        if pretrained:
            path = Path(pretrained)
            if not path.is_file():
                raise PretrainedWeightsError(f"pretrained weights file for {arch} not found: {path}")
            model.load_released(path, arch)
        return model

    factory.__doc__ = f"{arch}: ViT, width {dim}, {depth} blocks, {heads} heads, {stem} stem."
    return factory


for _arch, _dim, _depth, _heads, _stem, _file in [
    ("vit_small", 384, 12, 6, "patch", "vit_small_cfs_lup.pth"),
    ("vit_small_ics", 384, 12, 6, "ics", "vit_small_ics_cfs_lup.pth"),
    ("vit_base_ics", 768, 12, 12, "ics", "vit_base_ics_cfs_lup.pth"),
    ("vit_tiny", 96, 4, 3, "patch", None),
]:
    register_backbone(_arch, tokens=True)(_vit_factory(_arch, _dim, _depth, _heads, _stem, 0.1, _file))
    register_normalization(_arch, *SELF_NORM)
