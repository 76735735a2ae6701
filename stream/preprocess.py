"""The accuracy preprocessing: shorter side to S/0.875 with Pillow bicubic, centre crop S×S.

This is the pipeline that produced convnext-tiny's published 82.05% top-1 (DESIGN.md):
shorter side resized to 256 with Pillow-style (antialiased) bicubic, then a centre crop of
224 taken at offset ``round((side - 224) / 2)``. For an IR with another input size S the
same 0.875 ratio holds (shorter side to ``round(S / 0.875)``).

Why not ``cv2.resize``: OpenCV's INTER_CUBIC does not widen its kernel when it downscales
(no antialiasing), so a 720p frame shrunk 2.8× comes out aliased and measurably different
from what the model was trained and evaluated on.

How it is computed: Pillow's own resampler, re-expressed as two banded matrix products.
Pillow resizes in two passes (horizontal then vertical for most sizes; the order is asked
of Pillow once per size, see :func:`plan_crop`), each output a weighted sum of its source
neighbours with integer weights (``precompute_coeffs`` then ``normalize_coeffs_8bpc``: 22
fractional bits) and the intermediate rounded to u8. A
:class:`CropPlan` computes those exact weights once per source size, keeps only the rows
and columns of the *whole-image* resize that land in the crop, and stores them as a few
dense blocks along the band. Per frame the work is: convert the crop's source window to
f32 (no whole-frame copy), one small BLAS product per block for each pass, and Pillow's
rounding (``floor(x + 0.5)``, clip) after each pass. The weights ``k / 2**22`` are exact in
f32; only the f32 sums can land on the other side of a rounding boundary, so the result
equals whole-image Pillow except on ~1e-5 of the values (1 level; 0 for small sources,
which run in f64). Measured CPU per frame, one thread (scripts/preprocess_bench.py;
tests/test_preprocess.py holds the fidelity test): 720p 1.4 ms against 3.7 ms for the
previous Pillow ``box`` two-pass path and 7.9 ms for a whole-frame Pillow resize; 1080p
3.0 vs 7.0 ms; 640x360 0.5 vs 1.4 ms. The work stays in capture. Rejected after measuring
(issue 8): OpenVINO's ``RESIZE_BICUBIC_PILLOW`` (PrePostProcessor in the worker's graph, fed
the crop window: 25 ms of CPU per 640x640 window, and its float pipeline is off by 1 level
on 12% of values, as is the ``bicubic_pillow`` Interpolate op: 47 ms on a whole 720p frame),
OpenCV's ``cv2.split`` for the plane layout (2.4 ms for the window alone), and the
horizontal pass run on the window transposed (``cv2.transpose``, weights from the left,
none of the horizontal weights' channel zeros: 1.0 against 1.35 ms per 720p frame on its
own, but in a ``stream run`` at ~270 frames/s, beside the decoder's threads, the crop's own
thread CPU came out 1.7-2.1 ms against 1.6-1.8: its transposes move memory, which that
contention makes dear).

BLAS threads: these products are small, and OpenBLAS spreads anything above its size
threshold over every core, which costs more CPU than it saves (1080p: 12.8 ms of CPU on two
threads against 5.3 ms on one) on a machine whose cores the inference needs. The products
therefore run under ``threadpoolctl``'s one-thread BLAS limit.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from threadpoolctl import ThreadpoolController

CROP_RATIO = 0.875
_PRECISION_BITS = 22  # Pillow's PRECISION_BITS (32 - 8 - 2) for 8-bit images
_EXACT_F64_BELOW = 300 * 300  # source windows smaller than this run in f64 (bit exact)
_BLAS = ThreadpoolController()


def _bicubic(x: float) -> float:
    """Pillow's bicubic kernel (a = -0.5), with its exact operation order."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def pillow_weights(in_size: int, out_size: int) -> tuple[list[int], list[list[int]]]:
    """Pillow's integer bicubic weights for resizing ``in_size`` to ``out_size`` pixels.

    A line-by-line transcription of ``precompute_coeffs`` + ``normalize_coeffs_8bpc``
    (libImaging/Resample.c) in Python floats, which are C doubles with the same operation
    order, so the integers match Pillow's.

    Returns:
        ``(first, weights)``: for each output pixel, its first source pixel and the
        integer weights (scaled by 2**22) of the source pixels from there on.
    """
    scale = filterscale = in_size / out_size
    filterscale = max(filterscale, 1.0)
    support = 2.0 * filterscale
    firsts: list[int] = []
    weights: list[list[int]] = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [_bicubic((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = 0.0
        for v in w:  # sequential, as in C (math.fsum or numpy would round differently)
            ww += v
        if ww != 0.0:
            w = [v / ww for v in w]
        one = 1 << _PRECISION_BITS
        weights.append([int(-0.5 + v * one) if v < 0 else int(0.5 + v * one) for v in w])
        firsts.append(xmin)
    return firsts, weights


# One band block: output range [o0, o1) computed from input range [i0, i1) with `w`.
_Block = tuple[int, int, int, int, np.ndarray]


def _band_blocks(firsts: list[int], weights: list[list[int]], lo: int, hi: int,
                 base: int, size: int, dtype: type, channels: int, kron: bool) -> list[_Block]:
    """Dense blocks of ``size`` outputs along the band of outputs ``[lo, hi)``.

    Offsets are relative to output ``lo`` and input ``base``; with ``kron`` the block acts
    on interleaved channels (each weight becomes a ``channels``-wide identity), so the
    horizontal pass runs on the frame's own HWC layout without splitting planes.
    """
    blocks: list[_Block] = []
    for b in range(lo, hi, size):
        e = min(hi, b + size)
        i0 = min(firsts[o] for o in range(b, e))
        i1 = max(firsts[o] + len(weights[o]) for o in range(b, e))
        m = np.zeros((e - b, i1 - i0), np.float64)
        for o in range(b, e):
            for t, k in enumerate(weights[o]):
                m[o - b, firsts[o] + t - i0] += k / float(1 << _PRECISION_BITS)
        if kron:
            wide = np.kron(m.T, np.eye(channels))  # (inputs*ch) x (outputs*ch)
            blocks.append(((b - lo) * channels, (e - lo) * channels,
                           (i0 - base) * channels, (i1 - base) * channels, wide.astype(dtype)))
        else:
            blocks.append((b - lo, e - lo, i0 - base, i1 - base, m.astype(dtype)))
    return blocks


def _block_size(scale: float, ksize: int, rows: int, kron: bool) -> int:
    """Outputs per block: few BLAS calls (≈12 µs each) vs. the zeros a wide block multiplies.

    A cost model fitted on this repo's 720p measurements; it only picks among sizes 1-16.
    """
    best, best_cost = 1, math.inf
    for size in range(1, 17):
        width = size * scale + ksize  # inputs a block of `size` outputs reads
        mult = 9 if kron else 1
        cost = 12e-6 / size + rows * width * mult * 2 / 28e9
        if cost < best_cost:
            best, best_cost = size, cost
    return best


@dataclass(frozen=True, eq=False)
class CropPlan:
    """The resize + centre crop of an ``src_w × src_h`` frame, precomputed for one size.

    ``box`` is the (left, top, right, bottom) rectangle of the source that becomes the
    ``out_w × out_h`` crop; ``rows``/``cols`` the source window the filters actually read;
    ``vertical_first`` the pass order Pillow uses for this size (see :func:`plan_crop`).
    The weights and scratch buffers live here so the per-frame work is the products alone
    (one plan per stream: the buffers make it single-threaded).
    """

    src_w: int
    src_h: int
    out_w: int
    out_h: int
    resized_w: int
    resized_h: int
    box: tuple[float, float, float, float]
    rows: tuple[int, int] = (0, 0)
    cols: tuple[int, int] = (0, 0)
    vertical_first: bool = False
    horizontal: list[_Block] = field(default_factory=list, repr=False)
    vertical: list[_Block] = field(default_factory=list, repr=False)
    buffers: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def _geometry(src_w: int, src_h: int, out_w: int, out_h: int) -> tuple[int, int, int, int]:
    """torchvision ``Resize(int)`` size and the centre crop's offset: (rw, rh, left, top)."""
    short = round(min(out_w, out_h) / CROP_RATIO)
    # The shorter side becomes `short`, the other is truncated (int(short * long /
    # short_side)), which is what the published accuracy used.
    if src_w <= src_h:
        rw, rh = short, int(short * src_h / src_w)
    else:
        rw, rh = int(short * src_w / src_h), short
    rw, rh = max(rw, out_w), max(rh, out_h)
    return rw, rh, round((rw - out_w) / 2.0), round((rh - out_h) / 2.0)


def plan_crop(src_w: int, src_h: int, out_w: int, out_h: int) -> CropPlan:
    """Work out the resize and crop geometry, and Pillow's weights, for one source size.

    Pillow runs its two passes horizontal-first for most sizes but vertical-first for
    some (tall frames whose vertical pass is the cheaper one first; the rule is internal
    to its C code and has changed between versions), and the rounding between the passes
    makes the order visible. So the plan asks Pillow itself, once: it resizes a noise
    probe of this size and keeps the order that reproduces it (:func:`_pillow_order`).

    Args:
        src_w, src_h: source frame size in pixels (both > 0).
        out_w, out_h: model input size (width, height).

    Returns:
        The plan: intermediate resized size (shorter side ``round(min(out) / 0.875)``,
        the longer side scaled to keep the aspect ratio, as torchvision's ``Resize(int)``
        does), the source box of the centre crop, and the banded weights of both passes.
    """
    if src_w <= 0 or src_h <= 0:
        raise ValueError(f"frame size must be positive, got {src_w}x{src_h}")
    if out_w <= 0 or out_h <= 0:
        raise ValueError(f"crop size must be positive, got {out_w}x{out_h}")
    rw, rh, left, top = _geometry(src_w, src_h, out_w, out_h)
    sx, sy = src_w / rw, src_h / rh
    box = (left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy)
    hx, hk = pillow_weights(src_w, rw)
    vy, vk = pillow_weights(src_h, rh)
    cols = (min(hx[left:left + out_w]),
            max(hx[o] + len(hk[o]) for o in range(left, left + out_w)))
    rows = (min(vy[top:top + out_h]),
            max(vy[o] + len(vk[o]) for o in range(top, top + out_h)))
    n_rows, n_cols = rows[1] - rows[0], cols[1] - cols[0]
    vfirst = _pillow_order(src_w, src_h, out_w, out_h)
    dtype: type = np.float64 if n_rows * n_cols < _EXACT_F64_BELOW else np.float32
    h_rows = out_h if vfirst else n_rows  # rows the horizontal pass runs on
    v_cols = 3 * (n_cols if vfirst else out_w)  # columns the vertical pass runs on
    bh = _block_size(src_w / rw, max(map(len, hk)), h_rows, kron=True)
    bv = _block_size(src_h / rh, max(map(len, vk)), v_cols, kron=False)
    mid = (out_h, n_cols * 3) if vfirst else (n_rows, out_w * 3)
    return CropPlan(
        src_w, src_h, out_w, out_h, rw, rh, box, rows, cols, vfirst,
        _band_blocks(hx, hk, left, left + out_w, cols[0], bh, dtype, 3, kron=True),
        _band_blocks(vy, vk, top, top + out_h, rows[0], bv, dtype, 3, kron=False),
        {"src": np.empty((n_rows, n_cols * 3), dtype), "mid": np.empty(mid, dtype),
         "out": np.empty((out_h, out_w * 3), dtype)},
    )


@functools.lru_cache(maxsize=64)
def _pillow_order(src_w: int, src_h: int, out_w: int, out_h: int) -> bool:
    """True if Pillow resizes this size vertical pass first (asked of Pillow, once).

    A noise probe is resized whole by Pillow and cropped; both orders are computed
    exactly (f64) and the one that matches wins. Noise makes the orders differ on almost
    every value, so one probe decides; if neither matches exactly (a future Pillow with
    other arithmetic) the closer one is kept.
    """
    rw, rh, left, top = _geometry(src_w, src_h, out_w, out_h)
    probe = np.random.default_rng(src_w * 7919 + src_h).integers(
        0, 256, (src_h, src_w, 3), np.uint8)
    ref = np.asarray(Image.fromarray(probe).resize((rw, rh), Image.Resampling.BICUBIC)
                     .crop((left, top, left + 16, top + 16)), np.float64)[:out_h, :out_w]
    hx, hk = pillow_weights(src_w, rw)
    vy, vk = pillow_weights(src_h, rh)
    c0 = min(hx[left:left + out_w])
    r0 = min(vy[top:top + out_h])
    # The crop's top-left 16x16 corner is enough: on noise the orders differ nearly
    # everywhere, and a corner keeps the probe's arithmetic to a few milliseconds.
    n_x, n_y = min(out_w, 16), min(out_h, 16)
    hmat = _dense(hx[left:left + n_x], hk[left:left + n_x], c0)  # n_x x cols
    vmat = _dense(vy[top:top + n_y], vk[top:top + n_y], r0)  # n_y x rows
    x = probe[r0:r0 + vmat.shape[1], c0:c0 + hmat.shape[1]].transpose(2, 0, 1).astype(
        np.float64)  # planes: 3 x rows x cols
    h_first = _rounded(vmat @ _rounded(x @ hmat.T))
    v_first = _rounded(_rounded(vmat @ x) @ hmat.T)
    ref = ref.transpose(2, 0, 1)
    return bool(np.abs(v_first - ref).max() < np.abs(h_first - ref).max())


def _dense(firsts: list[int], weights: list[list[int]], base: int) -> np.ndarray:
    """Weights as a dense (outputs x inputs from ``base``) f64 matrix (probe only)."""
    width = max(f + len(ks) for f, ks in zip(firsts, weights, strict=True)) - base
    m = np.zeros((len(firsts), width))
    for o, (f, ks) in enumerate(zip(firsts, weights, strict=True)):
        m[o, f - base:f - base + len(ks)] = np.asarray(ks, np.float64) / (1 << _PRECISION_BITS)
    return m


def _rounded(a: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(a + 0.5), 0, 255)


def _round_clip(a: np.ndarray) -> None:
    """Pillow's ``clip8(ss >> 22)`` with ``ss`` starting at 2**21: floor(x + 0.5), 0..255."""
    np.add(a, 0.5, out=a)
    np.floor(a, out=a)
    np.clip(a, 0, 255, out=a)


_local = threading.local()


def _cached_plan(src_w: int, src_h: int, out_w: int, out_h: int) -> CropPlan:
    """A plan per size for callers that pass none (per thread: plans own scratch buffers)."""
    plans: dict[tuple[int, int, int, int], CropPlan] = _local.__dict__.setdefault("plans", {})
    key = (src_w, src_h, out_w, out_h)
    if key not in plans:
        if len(plans) >= 16:
            plans.clear()
        plans[key] = plan_crop(*key)
    return plans[key]


def _horizontal(plan: CropPlan, src: np.ndarray, dst: np.ndarray) -> None:
    for o0, o1, i0, i1, wts in plan.horizontal:
        np.matmul(src[:, i0:i1], wts, out=dst[:, o0:o1])


def _vertical(plan: CropPlan, src: np.ndarray, dst: np.ndarray) -> None:
    for o0, o1, i0, i1, wts in plan.vertical:
        np.matmul(wts, src[i0:i1], out=dst[o0:o1])


def center_crop_resize(
    bgr: np.ndarray, size: tuple[int, int], plan: CropPlan | None = None
) -> np.ndarray:
    """Resize (shorter side to size/0.875, Pillow bicubic) and centre-crop one frame.

    Args:
        bgr: u8 ``H×W×3`` frame (BGR, as OpenCV decodes it; any channel order works).
        size: ``(width, height)`` of the model input.
        plan: a precomputed :func:`plan_crop` for this frame size (one per stream: it
            holds the weights and the scratch buffers, so building it per frame costs
            milliseconds).

    Returns:
        A new C-contiguous u8 ``height×width×3`` array in the input's channel order.
    """
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ValueError(f"expected a u8 HxWx3 frame, got {bgr.dtype} {bgr.shape}")
    h, w = bgr.shape[:2]
    out_w, out_h = size
    if plan is None or (plan.src_w, plan.src_h, plan.out_w, plan.out_h) != (w, h, out_w, out_h):
        plan = _cached_plan(w, h, out_w, out_h)
    src, mid, out = plan.buffers["src"], plan.buffers["mid"], plan.buffers["out"]
    (r0, r1), (c0, c1) = plan.rows, plan.cols
    # The only conversion: the window the filters read, straight from the frame (a view).
    np.copyto(src.reshape(r1 - r0, c1 - c0, 3), bgr[r0:r1, c0:c1])
    with _BLAS.limit(limits=1, user_api="blas"):
        if plan.vertical_first:
            _vertical(plan, src, mid)
            _round_clip(mid)  # Pillow keeps the first pass as u8
            _horizontal(plan, mid, out)
        else:
            _horizontal(plan, src, mid)
            _round_clip(mid)
            _vertical(plan, mid, out)
    _round_clip(out)
    return out.astype(np.uint8).reshape(out_h, out_w, 3)
