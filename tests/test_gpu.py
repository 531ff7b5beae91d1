"""CPU against CUDA (``pytest -m gpu``; ``make gpu-check`` runs them): every method's loss, gradient
and update, the exact neighbour search, pseudo labels, one training step, evaluation, and a bf16
autocast step. Without CUDA they are skipped, unless ``SPCL_GPU_TEST_DEVICE=cpu`` runs them CPU
against CPU (which proves only that the checks themselves run: what ``make gpu-check`` does on a
machine without a GPU)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spcl.config import load_config
from spcl.memory import CameraAwareMemory, ClusterMemory, HybridMemory, O2CAPMemory
from spcl.neighbors import nearest_neighbors
from spcl.pseudo_labels import generate
from spcl.training import Trainer

_FORCED = os.environ.get("SPCL_GPU_TEST_DEVICE", "")
DEVICE = torch.device(_FORCED or "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _FORCED and not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.fixture(autouse=True)
def _exact_float32():
    """TF32 matrix products would differ from the CPU by 1e-3: the comparisons are of float32 arithmetic."""
    if not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


D, N = 32, 60
LABELS = np.repeat(np.arange(12), 5)
LABELS[::7] = -1
CAMERAS = np.arange(N) % 4


def _unit(rows: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, D, generator=torch.Generator().manual_seed(seed)), dim=1)


def _memories() -> dict[str, torch.nn.Module]:
    features = _unit(N, 0)
    hybrid = HybridMemory(D, 3 + N, num_source_classes=3)
    hybrid.init_features(torch.cat([_unit(3, 1), features]))
    hybrid.set_pseudo_labels(np.where(LABELS >= 0, LABELS, 12 + np.arange(N)))
    built: dict[str, torch.nn.Module] = {"hybrid": hybrid}
    for name, memory in (("cluster", ClusterMemory(D, 3, num_source_classes=3, num_target=N, hard=True)),
                         ("cap", CameraAwareMemory(D, CAMERAS, num_source_classes=3, negatives=5)),
                         ("o2cap", O2CAPMemory(D, CAMERAS, num_source_classes=3, negatives=5))):
        memory.features[:3] = _unit(3, 1)
        memory.set_clusters(features, LABELS)
        built[name] = memory
    built["cap"].inter_camera = True
    return built


@pytest.mark.parametrize("kind", ["hybrid", "cluster", "cap", "o2cap"])
def test_memory_loss_gradient_and_update_match_the_cpu(kind: str) -> None:
    cpu = _memories()[kind]
    other = _memories()[kind].to(DEVICE)
    samples = [i for i in range(N) if LABELS[i] >= 0][:16]
    batch = _unit(20, 2)
    slots = torch.cat([torch.tensor([0, 1, 2, 1]), cpu.target_slots(samples)])
    results = []
    for memory, device in ((cpu, torch.device("cpu")), (other, DEVICE)):
        x = batch.to(device).requires_grad_(True)
        terms = memory.loss_terms(x, slots.to(device))
        sum(terms.values()).backward()
        memory.update(batch.to(device), slots.to(device))
        results.append(({k: float(v.detach()) for k, v in terms.items()}, x.grad.cpu(), memory.features.float().cpu()))
    (terms_a, grad_a, mem_a), (terms_b, grad_b, mem_b) = results
    assert terms_a == pytest.approx(terms_b, rel=1e-5, abs=1e-5)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mem_a, mem_b, rtol=1e-5, atol=1e-5)


def test_exact_search_and_pseudo_labels_match_the_cpu() -> None:
    centres = _unit(40, 3)
    features = F.normalize(centres.repeat_interleave(8, 0) + 0.15 * torch.randn(320, D, generator=torch.Generator().manual_seed(4)), dim=1)
    cpu_idx, cpu_sim = nearest_neighbors(features, 10, device="cpu")
    dev_idx, dev_sim = nearest_neighbors(features, 10, device=DEVICE)
    np.testing.assert_allclose(cpu_sim, dev_sim, atol=1e-5)
    assert (cpu_idx == dev_idx).mean() > 0.999  # ties at 1e-7 may swap
    a = generate(features, k1=10, k2=3, min_samples=3, device="cpu")
    b = generate(features, k1=10, k2=3, min_samples=3, device=DEVICE)
    assert (a.num_clusters, a.num_outliers) == (b.num_clusters, b.num_outliers)
    np.testing.assert_array_equal(a.labels, b.labels)


def _config(root: Path, out: Path, device: torch.device, **extra):
    values = {
        "mode": "uda", "data.source": str(root / "src"), "data.target": str(root / "tgt"), "data.height": 32,
        "data.width": 16, "data.padding": 0, "data.erasing_p": 0.0, "data.flip_p": 0.0, "data.workers": 0,
        "model.arch": "resnet18", "model.pretrained": "none", "model.images_per_bn": 8, "optim.batch_size": 16,
        "optim.iters": 1, "optim.epochs": 1, "pseudo.k1": 6, "pseudo.k2": 3, "pseudo.eps": 0.7,
        "pseudo.min_samples": 2, "eval.every": 1, "seed": 3, "device": str(device), "output": str(out),
        "runtime.amp": "off", "runtime.channels_last": "off", "runtime.deterministic": True,
    }
    values.update(extra)
    return load_config(overrides=values)


def test_one_training_step_and_evaluation_match_the_cpu(data_root: Path, tmp_path: Path) -> None:
    runs = []
    for device in (torch.device("cpu"), DEVICE):
        trainer = Trainer(_config(data_root, tmp_path / device.type, device), log=lambda _: None, progress=False)
        trainer.init_memory()
        trainer.assign_labels()
        entry = trainer.train_epoch()
        runs.append((entry, trainer.evaluate(), trainer.memory.features.cpu()))
    (step_a, eval_a, mem_a), (step_b, eval_b, mem_b) = runs
    assert step_a.loss == pytest.approx(step_b.loss, rel=1e-4)
    assert step_a.losses == pytest.approx(step_b.losses, rel=1e-4, abs=1e-5)
    torch.testing.assert_close(mem_a, mem_b, rtol=1e-3, atol=1e-4)
    assert eval_a["mAP"] == pytest.approx(eval_b["mAP"], abs=2e-3)


def test_a_bf16_autocast_step_is_finite_and_keeps_the_memory_float32(data_root: Path, tmp_path: Path) -> None:
    amp = "bf16" if DEVICE.type == "cuda" else "off"
    trainer = Trainer(_config(data_root, tmp_path / "bf16", DEVICE, **{"runtime.amp": amp, "runtime.channels_last": "auto",
                                                                     "runtime.deterministic": False, "eval.every": 0}),
                      log=lambda _: None, progress=False)
    history = trainer.fit()
    assert np.isfinite(history[-1].loss) and trainer.memory.features.dtype == torch.float32
    if DEVICE.type == "cuda":
        assert trainer.amp_dtype == torch.bfloat16


def test_a_vit_encodes_as_on_the_cpu_and_trains_in_bf16(data_root: Path, tmp_path: Path) -> None:
    """ViT-S/16 + ICS: the same features on the device as on the CPU (fused attention against the
    CPU's), and a bf16 training step of a ViT through the trainer."""
    from spcl.models import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder("vit_small_ics", pretrained=False, img_size=(256, 128)).eval()
    images = torch.randn(4, 3, 256, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        on_cpu = encoder(images)
        on_device = encoder.to(DEVICE)(images.to(DEVICE)).cpu()
    torch.testing.assert_close(on_device, on_cpu, rtol=1e-4, atol=1e-4)
    amp = "bf16" if DEVICE.type == "cuda" else "off"
    config = _config(data_root, tmp_path / "vit", DEVICE, **{
        "model.arch": "vit_tiny", "runtime.amp": amp, "runtime.channels_last": "auto",
        "runtime.deterministic": False, "eval.every": 0})
    trainer = Trainer(config, log=lambda _: None, progress=False)
    assert not trainer.channels_last  # auto: off for a token backbone
    assert np.isfinite(trainer.fit()[-1].loss)
