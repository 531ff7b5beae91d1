"""Models (SPEC sections 4, 5, 7): the re-ID encoder, its backbones, domain-specific BN and
images-per-BN."""

from __future__ import annotations

from spcl.models.backbones import (
    BACKBONES,
    IBN,
    PretrainedWeightsError,
    available_backbones,
    build_backbone,
    load_weights_file,
    register_backbone,
)
from spcl.models.dsbn import (
    DomainSpecificBatchNorm,
    SubBatchNorm1d,
    SubBatchNorm2d,
    SubBatchNorm3d,
    convert_bn,
    convert_dsbn,
    get_images_per_bn,
    num_bn_domains,
    set_domain,
    set_images_per_bn,
    use_domain,
)
from spcl.models.encoder import Encoder, GeM, build_encoder

__all__ = [
    "BACKBONES",
    "IBN",
    "DomainSpecificBatchNorm",
    "Encoder",
    "GeM",
    "PretrainedWeightsError",
    "SubBatchNorm1d",
    "SubBatchNorm2d",
    "SubBatchNorm3d",
    "available_backbones",
    "build_backbone",
    "build_encoder",
    "convert_bn",
    "convert_dsbn",
    "get_images_per_bn",
    "load_weights_file",
    "num_bn_domains",
    "register_backbone",
    "set_domain",
    "set_images_per_bn",
    "use_domain",
]
