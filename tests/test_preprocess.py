"""stream.preprocess.center_crop_resize against an independent Pillow reference.

The reference is the accuracy pipeline of DESIGN.md written out naively, as torchvision
does it on a PIL image: ``Resize(256)`` (shorter side to 256 with ``Image.BICUBIC``, the
longer side ``int(256 * long / short)``), then ``CenterCrop(224)`` at offset
``round((side - 224) / 2)``. It shares no code with stream.preprocess.

Measured (Pillow 13, numpy noise images, the worst case; smooth content differs less):

- upscales and no-ops (200x150, 224x224, 100x300, 256x256, 257x255): bit exact (small
  source windows run in f64);
- downscales (1280x720, 480x640, 1920x1080, 641x479, 435x305): max 1 level on at most
  2e-5 of the values (the f32 sums, see stream/preprocess.py), 1280x720 bit exact;
- sizes Pillow resizes vertical pass first (398x1086, 459x1262: tall frames): max 1 level
  (25% of values 8-11 levels off if the order were not asked of Pillow);
- a sweep of 110 sizes (widths 225-800 at aspects 1.5, 2/3, 1, 16/9, 9/16 and 30 random
  ones) stays within 1 level on at most 5e-5 of the values.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stream.preprocess import center_crop_resize, plan_crop

pytestmark = pytest.mark.timeout(60)


def reference(bgr: np.ndarray, size: int | tuple[int, int] = 224,
              short: int = 256) -> np.ndarray:
    """torchvision Resize(short) + CenterCrop(size) on a PIL image, naively.

    ``size``: the crop's side, or its (width, height).
    """
    out_w, out_h = (size, size) if isinstance(size, int) else size
    h, w = bgr.shape[:2]
    if w <= h:
        rw, rh = short, int(short * h / w)
    else:
        rw, rh = int(short * w / h), short
    img = Image.fromarray(bgr).resize((rw, rh), Image.Resampling.BICUBIC)
    left, top = round((rw - out_w) / 2), round((rh - out_h) / 2)
    return np.asarray(img.crop((left, top, left + out_w, top + out_h)))


def _noise(w: int, h: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


UPSCALES = [(200, 150), (224, 224), (100, 300), (256, 256), (257, 255)]
DOWNSCALES = [(1280, 720), (480, 640), (1920, 1080), (641, 479), (435, 305)]


@pytest.mark.parametrize(("w", "h"), UPSCALES)
def test_upscale_is_bit_exact(w: int, h: int) -> None:
    img = _noise(w, h, seed=w * 7 + h)
    out = center_crop_resize(img, (224, 224))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, reference(img))


@pytest.mark.parametrize(("w", "h"), DOWNSCALES)
def test_downscale_within_one_level(w: int, h: int) -> None:
    img = _noise(w, h, seed=w * 7 + h)
    out = center_crop_resize(img, (224, 224))
    assert out.shape == (224, 224, 3)
    diff = np.abs(out.astype(np.int16) - reference(img).astype(np.int16))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.001


@pytest.mark.parametrize(("w", "h"), [(333, 501), (260, 391), (442, 664), (300, 450),
                                      (398, 1086), (459, 1262), (1086, 398)])
def test_portrait_odd_size_within_one_level(w: int, h: int) -> None:
    img = _noise(w, h, seed=w * 7 + h)
    diff = np.abs(center_crop_resize(img, (224, 224)).astype(np.int16)
                  - reference(img).astype(np.int16))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.001


@pytest.mark.parametrize(("w", "h"), [(1280, 720), (398, 1086), (459, 1262)])
def test_non_square_model_input(w: int, h: int) -> None:
    """An IR whose input is not square (224 wide, 200 high: shorter side to
    round(200 / 0.875) = 229): rows and columns are not mixed up, in either pass order."""
    img = _noise(w, h, seed=w * 5 + h)
    out = center_crop_resize(img, (224, 200))
    assert out.shape == (200, 224, 3) and out.flags.c_contiguous
    diff = np.abs(out.astype(np.int16) - reference(img, (224, 200), 229).astype(np.int16))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.001


def test_channel_order_untouched() -> None:
    """A pure blue BGR frame stays blue: the crop does no channel reversal."""
    img = np.zeros((480, 640, 3), np.uint8)
    img[..., 0] = 255
    out = center_crop_resize(img, (224, 224))
    assert (out[..., 0] == 255).all() and (out[..., 1:] == 0).all()


def test_plan_reused_across_frames_and_other_input_sizes() -> None:
    """One plan per stream: its scratch buffers never leak one frame into the next, and
    an IR of another input size S gets the same 0.875 geometry (shorter side S/0.875)."""
    plan = plan_crop(640, 360, 160, 160)
    a, b = _noise(640, 360, seed=1), _noise(640, 360, seed=2)
    out_a = center_crop_resize(a, (160, 160), plan)
    out_b = center_crop_resize(b, (160, 160), plan)
    assert out_a.shape == (160, 160, 3) and not np.shares_memory(out_a, out_b)
    for img, out in ((a, out_a), (b, out_b)):
        diff = np.abs(out.astype(np.int16) - reference(img, 160, 183).astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.001
    with pytest.raises(ValueError, match="u8 HxWx3"):
        center_crop_resize(a[..., :2], (160, 160), plan)
