"""Models (docs/method.md#initialisation, #dsbn, #training-loop): the re-ID encoder, its backbones,
domain-specific BN and images-per-BN, and the encoder a checkpoint describes (``checkpoint``:
reading one for inference)."""

from __future__ import annotations

from spcl.models.backbones import (
    BACKBONES,
    IBN,
    Pretrained,
    PretrainedWeightsError,
    available_backbones,
    backbone_normalization,
    build_backbone,
    is_token_backbone,
    load_weights_file,
    register_backbone,
    register_normalization,
    require_backbone,
)
from spcl.models import vit as _vit  # noqa: F401  (registers the ViT backbones)
from spcl.models.checkpoint import (
    CheckpointError,
    build_model,
    describe_model,
    load_checkpoint,
    load_model,
)
from spcl.models.dsbn import (
    DomainSpecificBatchNorm,
    convert_bn,
    convert_dsbn,
    num_bn_domains,
    set_domain,
    use_domain,
)
from spcl.models.encoder import Encoder, GeM, build_encoder
from spcl.models.images_per_bn import SubBatchNorm1d, SubBatchNorm2d, get_images_per_bn, set_images_per_bn

__all__ = [
    "BACKBONES",
    "IBN",
    "CheckpointError",
    "DomainSpecificBatchNorm",
    "Encoder",
    "GeM",
    "Pretrained",
    "PretrainedWeightsError",
    "SubBatchNorm1d",
    "SubBatchNorm2d",
    "available_backbones",
    "backbone_normalization",
    "build_backbone",
    "is_token_backbone",
    "build_encoder",
    "build_model",
    "convert_bn",
    "convert_dsbn",
    "describe_model",
    "get_images_per_bn",
    "load_checkpoint",
    "load_model",
    "load_weights_file",
    "num_bn_domains",
    "register_backbone",
    "register_normalization",
    "require_backbone",
    "set_domain",
    "set_images_per_bn",
    "use_domain",
]
