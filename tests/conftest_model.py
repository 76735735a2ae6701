"""Helpers for the model tests: a torch-free checkpoint writer and a NumPy reference forward.

Both are written independently of `stream.model` so the tests check the package against
something it does not share code with.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

DEPTHS = (3, 3, 9, 3)
DIMS = (96, 192, 384, 768)
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
SCALE = np.array([58.395, 57.12, 57.375], np.float32)


# --- official key format -------------------------------------------------------------------


def official_shapes() -> dict[str, tuple[int, ...]]:
    """The state-dict keys of the original ConvNeXt code (models/convnext.py), with shapes."""
    s: dict[str, tuple[int, ...]] = {
        "downsample_layers.0.0.weight": (96, 3, 4, 4),
        "downsample_layers.0.0.bias": (96,),
        "downsample_layers.0.1.weight": (96,),
        "downsample_layers.0.1.bias": (96,),
    }
    for i in range(1, 4):
        s[f"downsample_layers.{i}.0.weight"] = (DIMS[i - 1],)
        s[f"downsample_layers.{i}.0.bias"] = (DIMS[i - 1],)
        s[f"downsample_layers.{i}.1.weight"] = (DIMS[i], DIMS[i - 1], 2, 2)
        s[f"downsample_layers.{i}.1.bias"] = (DIMS[i],)
    for st, depth in enumerate(DEPTHS):
        c = DIMS[st]
        for b in range(depth):
            p = f"stages.{st}.{b}."
            s.update(
                {
                    p + "gamma": (c,),
                    p + "dwconv.weight": (c, 1, 7, 7),
                    p + "dwconv.bias": (c,),
                    p + "norm.weight": (c,),
                    p + "norm.bias": (c,),
                    p + "pwconv1.weight": (4 * c, c),
                    p + "pwconv1.bias": (4 * c,),
                    p + "pwconv2.weight": (c, 4 * c),
                    p + "pwconv2.bias": (c,),
                }
            )
    s.update(
        {
            "norm.weight": (768,),
            "norm.bias": (768,),
            "head.weight": (1000, 768),
            "head.bias": (1000,),
        }
    )
    return s


def random_state_dict(seed: int = 0, gamma: float = 0.3) -> dict[str, np.ndarray]:
    """Random weights in the official format; layer scale ~gamma so every block matters."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for key, shape in official_shapes().items():
        if key.endswith("gamma"):
            v = gamma * (1 + 0.2 * rng.standard_normal(shape))
        elif len(shape) == 1:
            v = (1.0 if key.endswith("weight") else 0.0) + 0.1 * rng.standard_normal(shape)
        else:
            v = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        out[key] = v.astype(np.float32)
    return out


# --- PyTorch zip checkpoint writer, without torch --------------------------------------------


class _Global:
    """Pickled as GLOBAL `module name` (a reference torch would resolve)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # pickle requires reduce functions be callable
        raise TypeError("placeholder")


class _Storage:
    def __init__(self, key: str, type_name: str, numel: int) -> None:
        self.key, self.type_name, self.numel = key, type_name, numel


class _Tensor:
    def __init__(
        self, storage: _Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]
    ) -> None:
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def __reduce__(self) -> Any:
        return (
            _Global("torch._utils", "_rebuild_tensor_v2"),
            (self.storage, self.offset, self.shape, self.stride, False, OrderedDict()),
        )


class _TorchLikePickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.numel)
        return None

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for n in reversed(shape):
        stride.append(acc)
        acc *= n
    return tuple(reversed(stride))


def write_checkpoint(
    path: Path,
    state: dict[str, np.ndarray],
    wrap: bool = True,
    extra_globals: Any = None,
    share_storage: bool = True,
) -> Path:
    """Write `state` like `torch.save({"model": state}, path)` (zip + protocol-2 pickle).

    With `share_storage`, the two head tensors share one storage (bias at an offset) and
    `head.weight` is stored transposed with a non-contiguous stride, as torch views do.
    """
    records: dict[str, bytes] = {}
    tensors: OrderedDict[str, Any] = OrderedDict()
    items = dict(state)
    if share_storage:
        w, b = items.pop("head.weight"), items.pop("head.bias")
        blob = np.concatenate([np.ascontiguousarray(w.T).ravel(), b]).astype("<f4")
        st = _Storage(str(len(records)), "FloatStorage", blob.size)
        records[st.key] = blob.tobytes()
        head_w = _Tensor(st, 0, w.shape, (1, w.shape[0]))  # column-major view
        head_b = _Tensor(st, w.size, b.shape, (1,))
    for key, value in items.items():
        arr = np.ascontiguousarray(value, "<f4")
        st = _Storage(str(len(records)), "FloatStorage", arr.size)
        records[st.key] = arr.tobytes()
        tensors[key] = _Tensor(st, 0, arr.shape, _contiguous_stride(arr.shape))
    if share_storage:
        tensors["head.weight"], tensors["head.bias"] = head_w, head_b
    obj: Any = {"model": tensors} if wrap else tensors
    if extra_globals is not None:
        obj = {"model": tensors, "evil": extra_globals}
    buf = io.BytesIO()
    _TorchLikePickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for key, data in records.items():
            zf.writestr(f"archive/data/{key}", data)
        zf.writestr("archive/version", "3\n")
    return path


# --- NumPy reference forward (NHWC, float32) -------------------------------------------------


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), odd-extended."""
    sign = np.sign(x)
    a = np.abs(x).astype(np.float64)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)


def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * w + b


def _patch_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    h, wd, c = x.shape
    p = x.reshape(h // k, k, wd // k, k, c).transpose(0, 2, 4, 1, 3).reshape(h // k, wd // k, -1)
    return p @ w.reshape(w.shape[0], -1).T + b


def _dwconv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    h, wd, _ = x.shape
    xp = np.pad(x, ((3, 3), (3, 3), (0, 0)))
    out = np.zeros_like(x)
    for i in range(7):
        for j in range(7):
            out += xp[i : i + h, j : j + wd] * w[:, 0, i, j]
    return out + b


def reference_logits(state: dict[str, np.ndarray], bgr_nchw: np.ndarray) -> np.ndarray:
    """ConvNeXt-Tiny forward of one BGR 0..255 [1,3,H,W] image; returns [1000] logits."""
    s = state
    x = bgr_nchw[0, ::-1].transpose(1, 2, 0).astype(np.float32)  # BGR->RGB, HWC
    x = (x - MEAN) / SCALE
    x = _patch_conv(x, s["downsample_layers.0.0.weight"], s["downsample_layers.0.0.bias"], 4)
    x = _ln(x, s["downsample_layers.0.1.weight"], s["downsample_layers.0.1.bias"])
    for st, depth in enumerate(DEPTHS):
        if st:
            p = f"downsample_layers.{st}."
            x = _ln(x, s[p + "0.weight"], s[p + "0.bias"])
            x = _patch_conv(x, s[p + "1.weight"], s[p + "1.bias"], 2)
        for blk in range(depth):
            p = f"stages.{st}.{blk}."
            y = _dwconv(x, s[p + "dwconv.weight"], s[p + "dwconv.bias"])
            y = _ln(y, s[p + "norm.weight"], s[p + "norm.bias"])
            y = y @ s[p + "pwconv1.weight"].T + s[p + "pwconv1.bias"]
            y = 0.5 * y * (1.0 + _erf(y / np.float32(np.sqrt(2.0))))
            y = y @ s[p + "pwconv2.weight"].T + s[p + "pwconv2.bias"]
            x = x + s[p + "gamma"] * y
    x = _ln(x.mean((0, 1)), s["norm.weight"], s["norm.bias"])
    return np.asarray(x @ s["head.weight"].T + s["head.bias"], np.float32)


def make_image(seed: int, size: int = 224) -> np.ndarray:
    """A structured BGR u8 HxWx3 picture (gradients + blobs), not noise: classes differ."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3), np.float64)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 6, 3)
        img[..., c] = 127 + 120 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph * c)
    cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)
