"""The person-pretrained Vision Transformers (spcl.models.vit) against a reference written here from
the released model's description (docs/method.md#vit): the released key layout, a plain forward pass
with explicit softmax attention, and a hand-written bilinear resize of the positional embedding."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spcl.models import PretrainedWeightsError, backbone_normalization, build_encoder
from spcl.models.vit import released_state, resize_pos_embed

SIZES = {"vit_small": (384, 6, False), "vit_small_ics": (384, 6, True), "vit_base_ics": (768, 12, True)}


def released_weights(dim: int, ics: bool, grid: tuple[int, int] = (16, 8), depth: int = 12, seed: int = 0) -> dict:
    """Random weights in the key layout of the released files (docs/method.md#vit), with BN statistics of a
    trained model (not 0 / 1), so that the stem's eval-mode normalisation is exercised."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.02) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    w: dict[str, torch.Tensor] = {"cls_token": r(1, 1, dim), "pos_embed": r(1, 1 + grid[0] * grid[1], dim)}
    if ics:
        w["patch_embed.conv.0.weight"] = r(64, 3, 7, 7, scale=0.1)
        w["patch_embed.conv.3.weight"] = r(64, 64, 3, 3, scale=0.05)
        w["patch_embed.conv.6.weight"] = r(64, 64, 3, 3, scale=0.05)
        for i in (1, 4):
            w[f"patch_embed.conv.{i}.IN.weight"] = 1 + r(32, scale=0.1)
            w[f"patch_embed.conv.{i}.IN.bias"] = r(32, scale=0.1)
        for name in ("patch_embed.conv.1.BN", "patch_embed.conv.4.BN", "patch_embed.conv.7"):
            c = 64 if name.endswith("7") else 32
            w[f"{name}.weight"] = 1 + r(c, scale=0.1)
            w[f"{name}.bias"] = r(c, scale=0.1)
            w[f"{name}.running_mean"] = r(c, scale=0.1)
            w[f"{name}.running_var"] = 1 + torch.rand(c, generator=g)
            w[f"{name}.num_batches_tracked"] = torch.tensor(1000)
        w["patch_embed.proj.weight"] = r(dim, 64, 8, 8, scale=0.02)
    else:
        w["patch_embed.proj.weight"] = r(dim, 3, 16, 16, scale=0.02)
    w["patch_embed.proj.bias"] = r(dim)
    for b in range(depth):
        p = f"blocks.{b}."
        for norm in ("norm1", "norm2"):
            w[p + norm + ".weight"], w[p + norm + ".bias"] = 1 + r(dim, scale=0.1), r(dim, scale=0.1)
        w[p + "attn.qkv.weight"], w[p + "attn.qkv.bias"] = r(3 * dim, dim, scale=0.05), r(3 * dim)
        w[p + "attn.proj.weight"], w[p + "attn.proj.bias"] = r(dim, dim, scale=0.05), r(dim)
        w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"] = r(4 * dim, dim, scale=0.05), r(4 * dim)
        w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"] = r(dim, 4 * dim, scale=0.05), r(dim)
    w["norm.weight"], w["norm.bias"] = 1 + r(dim, scale=0.1), r(dim, scale=0.1)
    return w


def reference_cls(w: dict, images: torch.Tensor, heads: int, ics: bool) -> torch.Tensor:
    """The released model's output written out: stem or patches, class token, positions, 12 blocks of
    (LayerNorm eps 1e-6, softmax attention, exact GELU MLP), final LayerNorm, class token, L2."""
    x = images.double()
    d = {k: v.double() for k, v in w.items()}
    if ics:
        def ibn(x, i):
            first = F.instance_norm(x[:, :32], weight=d[f"patch_embed.conv.{i}.IN.weight"],
                                    bias=d[f"patch_embed.conv.{i}.IN.bias"], eps=1e-5)
            bn = f"patch_embed.conv.{i}.BN."
            second = (x[:, 32:] - d[bn + "running_mean"][None, :, None, None]) / torch.sqrt(
                d[bn + "running_var"][None, :, None, None] + 1e-5)
            second = second * d[bn + "weight"][None, :, None, None] + d[bn + "bias"][None, :, None, None]
            return torch.cat([first, second], dim=1)

        x = torch.relu(ibn(F.conv2d(x, d["patch_embed.conv.0.weight"], stride=2, padding=3), 1))
        x = torch.relu(ibn(F.conv2d(x, d["patch_embed.conv.3.weight"], padding=1), 4))
        x = F.conv2d(x, d["patch_embed.conv.6.weight"], padding=1)
        bn = "patch_embed.conv.7."
        x = (x - d[bn + "running_mean"][None, :, None, None]) / torch.sqrt(d[bn + "running_var"][None, :, None, None] + 1e-5)
        x = torch.relu(x * d[bn + "weight"][None, :, None, None] + d[bn + "bias"][None, :, None, None])
        x = F.conv2d(x, d["patch_embed.proj.weight"], d["patch_embed.proj.bias"], stride=8)
    else:
        x = F.conv2d(x, d["patch_embed.proj.weight"], d["patch_embed.proj.bias"], stride=16)
    x = x.flatten(2).transpose(1, 2)
    b, n, dim = x.shape
    x = torch.cat([d["cls_token"].expand(b, -1, -1), x], dim=1) + d["pos_embed"]

    def ln(x, name):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-6) * d[name + ".weight"] + d[name + ".bias"]

    hd = dim // heads
    for i in range(12):
        p = f"blocks.{i}."
        h = ln(x, p + "norm1") @ d[p + "attn.qkv.weight"].T + d[p + "attn.qkv.bias"]
        q, k, v = h.reshape(b, n + 1, 3, heads, hd).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1)
        out = (attention @ v).transpose(1, 2).reshape(b, n + 1, dim)
        x = x + out @ d[p + "attn.proj.weight"].T + d[p + "attn.proj.bias"]
        h = ln(x, p + "norm2") @ d[p + "mlp.fc1.weight"].T + d[p + "mlp.fc1.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
        x = x + h @ d[p + "mlp.fc2.weight"].T + d[p + "mlp.fc2.bias"]
    cls = ln(x, "norm")[:, 0]
    return F.normalize(cls, dim=1).float()


@pytest.mark.parametrize("arch", ["vit_small", "vit_small_ics", "vit_base_ics"])
def test_the_released_weights_give_the_released_class_token(arch: str, tmp_path: Path) -> None:
    dim, heads, ics = SIZES[arch]
    weights = released_weights(dim, ics)
    assert len(weights) == (172 if ics else 150)  # the key counts of the released files
    path = tmp_path / f"{arch}.pth"
    torch.save(weights, path)
    encoder = build_encoder(arch, pretrained=str(path), img_size=(256, 128)).eval()
    images = torch.randn(2, 3, 256, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = encoder(images)
    assert got.shape == (2, dim)
    torch.testing.assert_close(got, reference_cls(weights, images, heads, ics), atol=1e-4, rtol=0)
    assert backbone_normalization(arch) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_a_dino_checkpoint_loads_as_the_flat_file(tmp_path: Path) -> None:
    weights = released_weights(384, True, depth=12, seed=2)
    dino = {"teacher": {f"module.backbone.{k}": v for k, v in weights.items()}
            | {"module.head.mlp.0.weight": torch.zeros(4, 384)}, "epoch": 100}
    torch.save(dino, tmp_path / "dino.pth")
    torch.save(weights, tmp_path / "flat.pth")
    torch.save({"state_dict": {f"base.{k}": v for k, v in weights.items()} | {"bottleneck.weight": torch.ones(384)}},
               tmp_path / "wrapped.pth")
    images = torch.randn(1, 3, 256, 128)
    outputs = []
    for name in ("dino", "flat", "wrapped"):
        encoder = build_encoder("vit_small_ics", pretrained=str(tmp_path / f"{name}.pth")).eval()
        with torch.no_grad():
            outputs.append(encoder(images))
    torch.testing.assert_close(outputs[0], outputs[1], atol=0, rtol=0)
    torch.testing.assert_close(outputs[2], outputs[1], atol=0, rtol=0)
    assert set(released_state(dino)) == set(weights)


def test_a_file_of_another_architecture_is_refused_naming_both(tmp_path: Path) -> None:
    torch.save(released_weights(384, False), tmp_path / "plain.pth")
    with pytest.raises(PretrainedWeightsError, match=r"does not fit vit_small_ics \(it looks like vit_small\).*"
                                                     r"missing keys \(22\): patch_embed.conv.0.weight"):
        build_encoder("vit_small_ics", pretrained=str(tmp_path / "plain.pth"))
    torch.save(released_weights(384, True), tmp_path / "ics.pth")
    with pytest.raises(PretrainedWeightsError, match=r"does not fit vit_base_ics \(it looks like vit_small_ics\).*"
                                                     r"other shapes: cls_token \(1, 1, 384\) vs \(1, 1, 768\)"):
        build_encoder("vit_base_ics", pretrained=str(tmp_path / "ics.pth"))
    from torchvision.models import resnet18

    torch.save(resnet18().state_dict(), tmp_path / "cnn.pth")
    with pytest.raises(PretrainedWeightsError, match=r"does not fit vit_small \(it looks like a CNN"):
        build_encoder("vit_small", pretrained=str(tmp_path / "cnn.pth"))
    partial = released_weights(384, False)
    del partial["blocks.11.mlp.fc2.bias"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(PretrainedWeightsError, match=r"missing keys \(1\): blocks.11.mlp.fc2.bias"):
        build_encoder("vit_small", pretrained=str(tmp_path / "partial.pth"))
    with pytest.raises(PretrainedWeightsError, match="LUPerson, not ImageNet"):
        build_encoder("vit_small", pretrained=True)


def _bilinear_by_hand(grid: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resampling with half-pixel centres (align_corners False), one output cell at a time."""
    in_h, in_w, _ = grid.shape
    out = np.zeros((out_h, out_w, grid.shape[2]))
    for i in range(out_h):
        for j in range(out_w):
            y = max((i + 0.5) * in_h / out_h - 0.5, 0.0)
            x = max((j + 0.5) * in_w / out_w - 0.5, 0.0)
            y0, x0 = min(int(y), in_h - 1), min(int(x), in_w - 1)
            y1, x1 = min(y0 + 1, in_h - 1), min(x0 + 1, in_w - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = ((1 - dy) * (1 - dx) * grid[y0, x0] + (1 - dy) * dx * grid[y0, x1]
                         + dy * (1 - dx) * grid[y1, x0] + dy * dx * grid[y1, x1])
    return out


def test_positions_made_at_256x128_are_resized_bilinearly_for_384x128(tmp_path: Path) -> None:
    weights = released_weights(384, True)
    old = weights["pos_embed"]
    resized = resize_pos_embed(old, (24, 8))
    assert resized.shape == (1, 1 + 24 * 8, 384)
    torch.testing.assert_close(resized[:, :1], old[:, :1], atol=0, rtol=0)  # the class position is kept
    expected = _bilinear_by_hand(old[0, 1:].reshape(16, 8, 384).double().numpy(), 24, 8)
    np.testing.assert_allclose(resized[0, 1:].reshape(24, 8, 384).numpy(), expected, atol=1e-6)
    torch.save(weights, tmp_path / "w.pth")
    encoder = build_encoder("vit_small_ics", pretrained=str(tmp_path / "w.pth"), img_size=(384, 128))
    torch.testing.assert_close(encoder.backbone.pos_embed.data, resized, atol=0, rtol=0)
    with torch.no_grad():
        assert encoder.eval()(torch.randn(1, 3, 384, 128)).shape == (1, 384)
    with pytest.raises(ValueError, match="built for 384 x 128 images, got 256 x 128"):
        encoder(torch.randn(1, 3, 256, 128))


def test_drop_path_and_gradient_checkpointing() -> None:
    torch.manual_seed(0)
    plain = build_encoder("vit_tiny", pretrained=False, img_size=(64, 32), drop_path=0.0)
    recomputed = build_encoder("vit_tiny", pretrained=False, img_size=(64, 32), drop_path=0.0, grad_checkpointing=True)
    recomputed.load_state_dict(plain.state_dict())
    images = torch.randn(4, 3, 64, 32)
    grads = []
    for encoder in (plain, recomputed):
        encoder.train()
        encoder.zero_grad()
        encoder(images).pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
    rates = [block.drop_path.p for block in build_encoder("vit_tiny", False, img_size=(64, 32),
                                                          drop_path=0.3).backbone.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3) and rates == sorted(rates)
    with pytest.raises(ValueError, match="drop_path is not a setting of the resnet18 backbone"):
        build_encoder("resnet18", False, drop_path=0.3)


def test_a_vit_run_trains_resumes_exactly_and_exports(data_root: Path, tmp_path: Path) -> None:
    """vit_tiny from scratch through the trainer (32 x 16 images: 2 tokens and the class token), with
    drop path and the SGD recipe; the preprocessing travels with the checkpoint into the tools."""
    from test_training import _three_epochs_and_a_resume

    from spcl.inference import FeatureExtractor
    from spcl.inference.export import onnx_metadata

    extra = {"model.arch": "vit_tiny", "model.drop_path": 0.1, "model.images_per_bn": 0, "eval.every": 0,
             "optim.optimizer": "sgd", "optim.lr": 0.01}
    full = _three_epochs_and_a_resume(data_root, tmp_path, "usl", extra, ("features",))
    assert all(np.isfinite(e.loss) for e in full.history)
    extractor = FeatureExtractor(tmp_path / "full" / "last.pth")
    assert extractor.preprocessing.mean == (0.5, 0.5, 0.5) and extractor.preprocessing.std == (0.5, 0.5, 0.5)
    assert onnx_metadata(extractor)["normalize_mean"] == "0.5,0.5,0.5" and extractor.feature_dim == 96
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from spcl.inference.export import export_onnx

    out = export_onnx(tmp_path / "full" / "last.pth", tmp_path / "vit.onnx")  # refused if it differs by 1e-4
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = torch.randn(3, 3, 32, 16)
    got = session.run(None, {"images": images.numpy()})[0]
    np.testing.assert_allclose(got, extractor.encode(images).numpy(), atol=1e-4)


def test_the_config_chooses_the_normalisation(data_root: Path, tmp_path: Path) -> None:
    from spcl.config import ConfigError, load_config
    from spcl.models.checkpoint import describe_model, model_normalization

    vit = load_config(overrides={"mode": "usl", "model.arch": "vit_small_ics"})
    assert model_normalization(vit.model) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    resnet = load_config(overrides={"mode": "usl"})
    assert model_normalization(resnet.model) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    own = load_config(overrides={"mode": "usl", "model.arch": "vit_small", "model.input_mean": "0.4,0.4,0.4",
                                 "model.input_std": "0.2,0.2,0.2"})
    described = describe_model(own.model, 1, 256, 128)
    assert described["preprocessing"]["mean"] == [0.4] * 3 and described["preprocessing"]["std"] == [0.2] * 3
    assert described["img_size"] == [256, 128]
    with pytest.raises(ConfigError, match="model.input_std"):
        load_config(overrides={"mode": "usl", "model.input_std": "0.2,0,0.2"})


def test_images_per_bn_and_dsbn_reach_the_stem_and_the_neck(tmp_path: Path) -> None:
    """The BatchNorms of a ViT + ICS (the stem's IBN halves, its third BN, the neck) normalise
    sub-batches and split by domain as a ResNet's do; the released weights survive the conversion."""
    from spcl.models import DomainSpecificBatchNorm, SubBatchNorm1d, SubBatchNorm2d, build_model

    torch.save(released_weights(384, True), tmp_path / "ics.pth")
    description = {"arch": "vit_small_ics", "features": 0, "pooling": "avg", "dropout": 0.0, "bn_domains": 2,
                   "images_per_bn": 4, "img_size": [64, 32], "preprocessing": {"height": 64, "width": 32}}
    model = build_model(description, pretrained=str(tmp_path / "ics.pth"))
    stem = model.backbone.patch_embed.conv
    assert isinstance(stem[1].BN, DomainSpecificBatchNorm) and isinstance(stem[7], DomainSpecificBatchNorm)
    subs = [m for m in model.modules() if isinstance(m, (SubBatchNorm1d, SubBatchNorm2d))]
    assert len(subs) == 2 * 4 and all(m.images_per_bn == 4 for m in subs)  # 3 stem BNs + neck, 2 domains
    reference = released_weights(384, True)["patch_embed.conv.7.running_var"]
    for branch in stem[7].branches:
        torch.testing.assert_close(branch.running_var, reference, atol=0, rtol=0)
    model.train()
    assert model(torch.randn(8, 3, 64, 32)).shape == (8, 384)


def test_the_demo_settings_train_a_tiny_vit_from_the_command_line(data_root: Path, tmp_path: Path) -> None:
    """``spcl train usl --config demo --arch vit_tiny``: the demo's recipe with a ViT from scratch
    (64 x 32 images: 8 tokens), here on the tests' small domains and for a few steps."""
    from spcl.cli import main
    from spcl.models import load_checkpoint

    out = tmp_path / "demo-vit"
    assert main(["train", "usl", "--config", "demo", "--arch", "vit_tiny", "--target", str(data_root / "tgt"),
                 "--epochs", "1", "--iters", "2", "--batch-size", "16", "--images-per-bn", "0",
                 "--eval-every", "1", "--device", "cpu", "--output", str(out), "--pseudo.min_samples", "2"]) == 0
    state = load_checkpoint(out / "last.pth")
    assert state["model"]["arch"] == "vit_tiny" and state["model"]["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert (out / "eval-epoch1" / "per_query.csv").is_file()
