"""``spcl export``: the inference encoder of a checkpoint as an ONNX model, for deployment.

The model takes one float32 input ``images`` (N x 3 x H x W, already resized and normalised as the
metadata says) and returns ``features`` (N x d, L2-normalised); the batch axis is dynamic. A DSBN
model is exported with its target-domain BatchNorms (or the source ones on request): the branch
is fixed in the graph, so the deployed model needs no switch. The preprocessing is recorded in the
model's ``metadata_props``:

    input_height, input_width      the size to resize to (pixels)
    resize_interpolation           "bicubic" (PIL / torchvision semantics)
    input_color_order              "RGB"
    input_scale                    "1/255" (uint8 -> [0, 1] before normalising)
    normalize_mean, normalize_std  per channel, comma-separated (x - mean) / std
    input_layout                   "NCHW"
    feature_dim, feature_norm      size of the output; "L2" (unit rows: cosine = dot product)
    bn_domain, arch, source_checkpoint

Exporting needs the optional packages of ``pip install 'spcl[onnx]'`` (onnx, onnxscript; and
onnxruntime to check the result).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from spcl.inference.extractor import FeatureExtractor

__all__ = ["export_onnx", "onnx_metadata"]


class _Inference(nn.Module):
    """The encoder in eval mode with one BN branch: a plain function of the images."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def onnx_metadata(extractor: FeatureExtractor) -> dict[str, str]:
    """The metadata an exported model carries (see the module docstring)."""
    p = extractor.preprocessing
    return {
        "input_height": str(p.height),
        "input_width": str(p.width),
        "resize_interpolation": p.interpolation,
        "input_color_order": "RGB",
        "input_scale": "1/255",
        "normalize_mean": ",".join(f"{v:g}" for v in p.mean),
        "normalize_std": ",".join(f"{v:g}" for v in p.std),
        "input_layout": "NCHW",
        "feature_dim": str(extractor.feature_dim),
        "feature_norm": "L2",
        "bn_domain": extractor.domain,
        "arch": str(extractor.state["model"]["arch"]),
        "source_checkpoint": extractor.checkpoint.name,
    }


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"exporting to ONNX needs {module}: pip install 'spcl[onnx]'") from None


def export_onnx(
    checkpoint: str | Path, out: str | Path, *, domain: str = "target", opset: int = 18, check: bool = True
) -> Path:
    """Write the ONNX model of ``checkpoint`` to ``out``; with ``check`` (and onnxruntime installed)
    compare its output with PyTorch's on random images at batch 1 and 7 and refuse a model that
    differs by 1e-4 or more."""
    onnx = _require("onnx")
    _require("onnxscript")
    extractor = FeatureExtractor(checkpoint, "cpu", domain=domain)
    p = extractor.preprocessing
    module = _Inference(extractor.model).eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, 3, p.height, p.width)
    tmp = out.with_name(f".{out.name}.tmp")
    with torch.no_grad():
        program = torch.onnx.export(
            module, (example,), dynamo=True, input_names=["images"], output_names=["features"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, opset_version=opset, verbose=False,
            external_data=False,
        )
    model = program.model_proto
    for key, value in onnx_metadata(extractor).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save_model(model, str(tmp))
    if check:
        difference = onnx_difference(tmp, module, (p.height, p.width))
        if difference is not None and difference >= 1e-4:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"the exported model differs from PyTorch by {difference:.2e} (>= 1e-4): not written")
    tmp.replace(out)
    return out


def onnx_difference(path: str | Path, module: nn.Module, size: tuple[int, int], batches: tuple[int, ...] = (1, 7),
                    seed: int = 0) -> float | None:
    """Largest absolute difference between onnxruntime's and PyTorch's features on seeded random
    images at each batch size; None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort  # noqa: PLC0415 (optional)
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch in batches:
        images = torch.randn(batch, 3, *size, generator=generator)
        with torch.no_grad():
            expected = module(images).numpy()
        got = session.run(["features"], {"images": images.numpy()})[0]
        worst = max(worst, float(abs(got - expected).max()))
    return worst
