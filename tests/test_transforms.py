"""Tests for the training / test transforms and the reference random erasing (docs/method.md#training-loop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spcl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomErasing,
    build_test_transform,
    build_train_transform,
)


def _constant_image(rgb: tuple[int, int, int], size: tuple[int, int] = (40, 90)) -> Image.Image:
    return Image.new("RGB", size, rgb)


def test_test_transform_shape_dtype_and_normalisation() -> None:
    out = build_test_transform(64, 32)(_constant_image((255, 128, 0)))
    assert out.shape == (3, 64, 32) and out.dtype == torch.float32
    expected = [(v / 255.0 - m) / s for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD)]
    for c in range(3):
        assert torch.allclose(out[c], torch.full((64, 32), expected[c]), atol=1e-5)


def test_train_transform_shape_and_plain_pipeline_is_deterministic() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 50, 3), dtype=np.uint8))
    out = build_train_transform(64, 32)(img)
    assert out.shape == (3, 64, 32) and out.dtype == torch.float32
    plain = build_train_transform(64, 32, flip_p=0.0, padding=0, erasing_p=0.0)
    assert torch.equal(plain(img), build_test_transform(64, 32)(img))


def test_flip_and_pad_crop_are_random() -> None:
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 32, 3), dtype=np.uint8))
    t = build_train_transform(64, 32, erasing_p=0.0)
    state = torch.get_rng_state()
    try:
        torch.manual_seed(0)
        outs = {t(img).sum().item() for _ in range(20)}
    finally:
        torch.set_rng_state(state)
    assert len(outs) > 1


def test_erasing_fills_a_rectangle_in_range() -> None:
    erase = RandomErasing(p=1.0, generator=torch.Generator().manual_seed(0))
    height, width = 64, 32
    img = torch.full((3, height, width), 7.0)
    fill = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    for _ in range(200):
        out = erase(img)
        assert torch.equal(img, torch.full((3, height, width), 7.0)), "input left untouched"
        changed = (out != 7.0).any(0)
        ys, xs = torch.nonzero(changed, as_tuple=True)
        if ys.numel() == 0:
            continue  # all 100 tries failed to fit: allowed, rare
        top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        h, w = int(bottom - top), int(right - left)
        assert int(changed.sum()) == h * w, "a filled rectangle"
        assert torch.equal(out[:, top:bottom, left:right], fill.expand(3, h, w))
        assert h < height and w < width
        # h and w are rounded from sqrt(area * r) and sqrt(area / r): undo the rounding as an
        # interval and check it meets the sampling ranges.
        n = height * width
        assert (h - 0.5) * (w - 0.5) <= 0.4 * n and (h + 0.5) * (w + 0.5) >= 0.02 * n
        assert (h - 0.5) / (w + 0.5) <= 1 / 0.3 and (h + 0.5) / (w - 0.5) >= 0.3


def test_erasing_area_and_aspect_distribution() -> None:
    erase = RandomErasing(p=1.0, generator=torch.Generator().manual_seed(1))
    height, width = 256, 128
    img = torch.zeros((3, height, width))
    areas, ratios = [], []
    for _ in range(300):
        changed = (erase(img) != 0).any(0)
        ys, xs = torch.nonzero(changed, as_tuple=True)
        h = int(ys.max() - ys.min() + 1)
        w = int(xs.max() - xs.min() + 1)
        areas.append(h * w / (height * width))
        ratios.append(h / w)
    assert 0.018 <= min(areas) and max(areas) <= 0.41
    assert 0.28 <= min(ratios) and max(ratios) <= 1 / 0.28
    assert np.mean(areas) > 0.1  # the reference's rejection keeps mostly large, tall boxes


def test_erasing_probability_zero_and_half() -> None:
    img = torch.randn(3, 16, 8)
    assert RandomErasing(p=0.0)(img) is img
    erase = RandomErasing(p=0.5, generator=torch.Generator().manual_seed(3))
    hits = sum(not torch.equal(erase(img), img) for _ in range(400))
    assert 150 < hits < 250


def test_erasing_uses_torch_rng_by_default() -> None:
    img = torch.zeros(3, 64, 32)
    torch_state = torch.get_rng_state()
    a = RandomErasing(p=1.0)(img)
    torch.set_rng_state(torch_state)
    b = RandomErasing(p=1.0)(img)
    torch.set_rng_state(torch_state)
    assert torch.equal(a, b)


def test_erasing_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        RandomErasing(p=1.5)
    with pytest.raises(ValueError):
        RandomErasing(sl=0.5, sh=0.1)


def _pixels(tensor: torch.Tensor) -> np.ndarray:
    """Back to 0-255 values (H x W x 3)."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((tensor * std + mean) * 255).round().permute(1, 2, 0).numpy()


@pytest.mark.parametrize("mode,fill,border", [
    ("constant", 0, 0),  # the reference: a black frame on a white image
    ("constant", 200, 200),  # the background's grey level
    ("edge", 0, None),
    ("reflect", 0, None),
])
def test_padding_mode_decides_what_the_crop_frame_shows(mode: str, fill: int, border: int | None) -> None:
    # a white image with a dark stripe along its left edge: edge padding repeats the stripe, reflect mirrors
    # the column next to it (white), constant paints the fill value
    array = np.full((32, 16, 3), 255, dtype=np.uint8)
    array[:, 0] = 40
    image = Image.fromarray(array)
    t = build_train_transform(32, 16, flip_p=0.0, padding=4, erasing_p=0.0, padding_mode=mode, padding_fill=fill)
    crops = [_pixels(t(image, generator=torch.Generator().manual_seed(seed))) for seed in range(40)]
    values = {int(v) for c in crops for v in np.unique(c[:, :, 0])}
    if border is not None:
        assert border in values  # the frame's colour appears
        assert values <= {border, 40, 255}
    elif mode == "edge":
        assert values <= {40, 255}  # no new colour: the stripe and the white repeated
        assert any((c[:, :2, 0] == 40).all() for c in crops)  # two stripe columns side by side: the edge repeated
    else:
        assert values <= {40, 255}
        assert not any((c[:, :2, 0] == 40).all() for c in crops)  # mirrored about the edge: never two stripes


def test_padding_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="padding_mode must be one of constant, edge, reflect"):
        build_train_transform(32, 16, padding_mode="wrap")
    with pytest.raises(ValueError, match="grey level"):
        build_train_transform(32, 16, padding_fill=300)
