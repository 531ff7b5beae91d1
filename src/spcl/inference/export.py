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
onnxruntime to check the result), checked before the model is loaded. The output path is checked
first too (not the checkpoint, not a folder, writable), and the file is written atomically. The
model is written at the opset asked for (``--opset``, 18 by default: torch.export's exporter; below
18, PyTorch's TorchScript-based one), or not at all.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spcl.inference.extractor import FeatureExtractor
from spcl.utils.files import atomic_output, check_output, check_space
from spcl.utils.optional import need

__all__ = ["export_onnx", "onnx_metadata", "require_export_packages"]


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


def require_export_packages() -> Any:
    """onnx (returned) and onnxscript, or ``MissingPackage`` with the install command: checked before any work."""
    onnx = need("onnx", "exporting to ONNX")
    need("onnxscript", "exporting to ONNX")
    return onnx


def _opset(model: Any) -> int:
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), -1)


def _at_opset(onnx: Any, model: Any, opset: int) -> Any:
    """The model at ``opset`` of the default ONNX domain, valid there: an exporter may write another
    opset, which ONNX's converter then converts (refused when the result does not check)."""
    written = _opset(model)
    if written == opset:
        return model
    try:
        from onnx import version_converter  # noqa: PLC0415 (part of onnx)

        converted = version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted)
    except Exception as exc:  # noqa: BLE001  (the converter and the checker raise several kinds)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"cannot write opset {opset}: the exporter wrote opset {written} and ONNX's converter could not convert "
            f"it ({detail}); choose --opset {written}"
        ) from None
    if _opset(converted) != opset:
        raise ValueError(f"cannot write opset {opset}: the model stays at opset {_opset(converted)}; choose --opset {written}")
    return converted


def _exported(onnx: Any, module: nn.Module, example: torch.Tensor, opset: int) -> Any:
    """The ONNX model of ``module``: torch.export's exporter from opset 18 (the lowest it writes),
    the TorchScript-based one below it (opsets 7-17), so that the opset asked for is the one written."""
    names = {"input_names": ["images"], "output_names": ["features"]}
    with torch.no_grad():
        if opset >= 18:
            program = torch.onnx.export(
                module, (example,), dynamo=True, dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                opset_version=opset, verbose=False, external_data=False, **names,
            )
            model = program.model_proto
        else:
            buffer = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "legacy TorchScript-based ONNX export"
                torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset,
                                  dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, **names)
            model = onnx.load_from_string(buffer.getvalue())
    return _at_opset(onnx, model, opset)


def export_onnx(
    checkpoint: str | Path, out: str | Path, *, domain: str = "target", opset: int = 18, check: bool = True
) -> Path:
    """Write the ONNX model of ``checkpoint`` to ``out``; with ``check`` (and onnxruntime installed)
    compare its output with PyTorch's on random images at batch 1 and 7 and refuse a model that
    differs by 1e-4 or more."""
    if not 7 <= opset <= 30:
        raise ValueError(f"opset must be an ONNX opset number (7 to 30; 18 by default), got {opset}")
    out = check_output(out, inputs=[checkpoint], what="the ONNX model")
    onnx = require_export_packages()
    extractor = FeatureExtractor(checkpoint, "cpu", domain=domain)
    p = extractor.preprocessing
    module = _Inference(extractor.model).eval()
    example = torch.randn(2, 3, p.height, p.width)
    model = _exported(onnx, module, example, opset)
    for key, value in onnx_metadata(extractor).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    check_space(out, model.ByteSize(), "the ONNX model")
    with atomic_output(out, what="the ONNX model") as tmp:
        onnx.save_model(model, str(tmp))
        if check:
            difference = onnx_difference(tmp, module, (p.height, p.width))
            if difference is not None and difference >= 1e-4:
                raise RuntimeError(f"the exported model differs from PyTorch by {difference:.2e} (>= 1e-4): not written")
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
