"""The re-ID encoder and its backbones (docs/method.md#initialisation). Nothing is downloaded: weights come from
state dicts written to a temporary directory."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from spcl.models import (
    BACKBONES,
    IBN,
    DomainSpecificBatchNorm,
    Encoder,
    PretrainedWeightsError,
    available_backbones,
    build_backbone,
    build_encoder,
    convert_dsbn,
    register_backbone,
)

RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's cache name for ResNet18_Weights.IMAGENET1K_V1


@pytest.fixture
def hub_dir(tmp_path: Path) -> Iterator[Path]:
    """Point torch.hub's cache at an empty temporary directory, restore it afterwards."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        yield tmp_path / "hub"
    finally:
        torch.hub.set_dir(previous)


def test_output_shape_and_unit_norm_in_train_and_eval() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", pretrained=False)
    assert isinstance(encoder, Encoder) and encoder.out_features == 512
    x = torch.randn(4, 3, 32, 16)
    for train in (True, False):
        out = encoder.train(train)(x)
        assert out.shape == (4, 512)
        torch.testing.assert_close(out.norm(dim=1), torch.ones(4))


def test_embedding_and_gem_pooling() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", pretrained=False, features=64, pooling="gem")
    assert encoder.out_features == 64
    out = encoder.train()(torch.randn(3, 3, 32, 16))
    assert out.shape == (3, 64)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="pooling"):
        build_encoder("resnet18", pretrained=False, pooling="median")


def test_last_stride_one_keeps_layer4_spatial_size() -> None:
    x = torch.randn(1, 3, 64, 32)  # /4 stem, /2 layer2, /2 layer3 -> 4 x 2
    with torch.no_grad():
        stride1 = build_backbone("resnet18", pretrained=False, last_stride=1).eval()(x)
        stride2 = build_backbone("resnet18", pretrained=False, last_stride=2).eval()(x)
    assert stride1.shape == (1, 512, 4, 2)  # 256 x 128 input -> 16 x 8 at full size
    assert stride2.shape == (1, 512, 2, 1)


def test_neck_bias_is_frozen_at_zero() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", pretrained=False).train()
    assert not encoder.neck.bias.requires_grad
    optimizer = torch.optim.Adam(encoder.parameters(), lr=0.1, weight_decay=5e-4)
    loss = encoder(torch.randn(4, 3, 32, 16))[:, 0].sum()
    loss.backward()
    optimizer.step()
    assert torch.equal(encoder.neck.bias, torch.zeros(512))
    assert not torch.equal(encoder.neck.weight, torch.ones(512))  # the rest of the neck trains


def test_missing_pretrained_weights_give_a_clear_error(hub_dir: Path) -> None:
    with pytest.raises(PretrainedWeightsError) as info:
        build_encoder("resnet18", pretrained=True)
    message = str(info.value)
    assert str(hub_dir / "checkpoints" / RESNET18_FILE) in message
    assert "--pretrained PATH" in message and "--no-pretrained" in message
    assert not (hub_dir / "checkpoints" / RESNET18_FILE).exists()  # nothing was downloaded
    with pytest.raises(PretrainedWeightsError, match="not found"):
        build_encoder("resnet18", pretrained=hub_dir / "nowhere.pth")


def _reference_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    return torchvision.models.resnet18(weights=None).state_dict()


def _assert_loaded(encoder: Encoder, state: dict[str, torch.Tensor]) -> None:
    loaded = encoder.backbone.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key


def test_pretrained_from_a_path(tmp_path: Path) -> None:
    state = _reference_weights()
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    _assert_loaded(build_encoder("resnet18", pretrained=str(path)), state)
    # released re-ID weights often come wrapped and with a DataParallel prefix
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    _assert_loaded(build_encoder("resnet18", pretrained=path), state)
    # weights of another architecture are refused with the offending keys
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(PretrainedWeightsError, match="does not fit resnet18"):
        build_encoder("resnet18", pretrained=path)


def test_pretrained_from_torchvision_cache(hub_dir: Path) -> None:
    state = _reference_weights()
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(state, hub_dir / "checkpoints" / RESNET18_FILE)
    _assert_loaded(build_encoder("resnet18", pretrained=True), state)


def test_ibn_resnet50_a_builds_and_runs() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("resnet50_ibn_a", pretrained=False)
    assert encoder.out_features == 2048
    backbone = encoder.backbone
    for layer in (backbone.layer1, backbone.layer2, backbone.layer3):
        for block in layer:
            assert isinstance(block.bn1, IBN)
            assert block.bn1.IN.num_features == block.bn1.BN.num_features == block.conv1.out_channels // 2
    assert not any(isinstance(m, IBN) for m in backbone.layer4.modules())
    assert isinstance(backbone.bn1, nn.BatchNorm2d)
    assert "layer1.0.bn1.IN.weight" in backbone.state_dict()  # the released weights' names
    out = encoder.train()(torch.randn(2, 3, 32, 16))
    assert out.shape == (2, 2048)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    # domain-specific BN converts the BN half of IBN and leaves InstanceNorm alone
    convert_dsbn(encoder)
    assert encoder.train()(torch.randn(4, 3, 32, 16)).shape == (4, 2048)
    assert isinstance(backbone.layer1[0].bn1.IN, nn.InstanceNorm2d)
    assert isinstance(backbone.layer1[0].bn1.BN, DomainSpecificBatchNorm)


def test_registry_accepts_user_backbones() -> None:
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet50_ibn_a"} <= set(available_backbones())

    @register_backbone("tiny_test_net")
    def tiny(pretrained, last_stride: int) -> nn.Module:
        module = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU())
        module.out_channels = 8
        return module

    try:
        encoder = build_encoder("tiny_test_net", pretrained=False)
        assert encoder(torch.randn(2, 3, 16, 8)).shape == (2, 8)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("tiny_test_net")(tiny)
    finally:
        del BACKBONES["tiny_test_net"]
    with pytest.raises(KeyError, match="unknown architecture"):
        build_encoder("resnet7", pretrained=False)


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_architecture_without_timm_says_how_to_install() -> None:
    with pytest.raises(ImportError, match="timm"):
        build_encoder("timm:resnet18", pretrained=False)
