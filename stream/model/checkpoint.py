"""ConvNeXt-Tiny weights: read the official PyTorch checkpoint safely, generate stand-ins, fetch.

The official file `convnext_tiny_1k_224_ema.pth` is a PyTorch zip archive::

    <prefix>/data.pkl      pickle (protocol 2) of {"model": OrderedDict(name -> tensor)}
    <prefix>/data/<key>    raw little-endian bytes of each storage
    <prefix>/version, <prefix>/byteorder, ...

Inside the pickle a tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, backward_hooks)` and a storage is a persistent id
`("storage", torch.FloatStorage, key, "cpu", numel)`. We read that format with a restricted
Unpickler that resolves only those few globals to our own NumPy stand-ins, so no pickle code
of the file's choosing ever runs and torch is not needed at run time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.errors import CheckpointError

logger = logging.getLogger(__name__)

Weights = dict[str, npt.NDArray[np.float32]]

DEPTHS: tuple[int, ...] = (3, 3, 9, 3)
DIMS: tuple[int, ...] = (96, 192, 384, 768)
NUM_CLASSES = 1000
PARAMETER_COUNT = 28_589_128

OFFICIAL_FILENAME = "convnext_tiny_1k_224_ema.pth"
OFFICIAL_SIZE = 114_414_741
OFFICIAL_SHA384 = (
    "f277194ca9561079ea0519fffc204820922ae46dc865b9def7208cf5993382d6"
    "cced681d3d26f6b70c31bf7cec4aba62"
)
OFFICIAL_URLS: tuple[str, ...] = (
    "https://storage.openvinotoolkit.org/repositories/open_model_zoo/public/2022.2/"
    "convnext-tiny/convnext_tiny_1k_224_ema.pth",
    "https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224_ema.pth",
)


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of a ConvNeXt-Tiny state dict with its shape, in the original naming."""
    shapes: dict[str, tuple[int, ...]] = {
        "downsample_layers.0.0.weight": (DIMS[0], 3, 4, 4),
        "downsample_layers.0.0.bias": (DIMS[0],),
        "downsample_layers.0.1.weight": (DIMS[0],),
        "downsample_layers.0.1.bias": (DIMS[0],),
    }
    for i in range(1, 4):
        shapes[f"downsample_layers.{i}.0.weight"] = (DIMS[i - 1],)
        shapes[f"downsample_layers.{i}.0.bias"] = (DIMS[i - 1],)
        shapes[f"downsample_layers.{i}.1.weight"] = (DIMS[i], DIMS[i - 1], 2, 2)
        shapes[f"downsample_layers.{i}.1.bias"] = (DIMS[i],)
    for s, (depth, c) in enumerate(zip(DEPTHS, DIMS, strict=True)):
        for b in range(depth):
            p = f"stages.{s}.{b}."
            shapes[p + "gamma"] = (c,)
            shapes[p + "dwconv.weight"] = (c, 1, 7, 7)
            shapes[p + "dwconv.bias"] = (c,)
            shapes[p + "norm.weight"] = (c,)
            shapes[p + "norm.bias"] = (c,)
            shapes[p + "pwconv1.weight"] = (4 * c, c)
            shapes[p + "pwconv1.bias"] = (4 * c,)
            shapes[p + "pwconv2.weight"] = (c, 4 * c)
            shapes[p + "pwconv2.bias"] = (c,)
    shapes["norm.weight"] = (DIMS[-1],)
    shapes["norm.bias"] = (DIMS[-1],)
    shapes["head.weight"] = (NUM_CLASSES, DIMS[-1])
    shapes["head.bias"] = (NUM_CLASSES,)
    return shapes


def validate_weights(weights: Mapping[str, np.ndarray], source: str) -> Weights:
    """Check that `weights` holds every ConvNeXt-Tiny key with the right shape.

    Returns:
        The weights as contiguous float32 arrays (extra keys are ignored).
    Raises:
        CheckpointError: naming the first missing key or wrong shape.
    """
    out: Weights = {}
    for key, shape in expected_shapes().items():
        if key not in weights:
            raise CheckpointError(
                f"{source}: key {key!r} is missing; expected a ConvNeXt-Tiny state dict "
                f"(official file: {OFFICIAL_FILENAME})"
            )
        value = weights[key]
        if tuple(value.shape) != shape:
            raise CheckpointError(
                f"{source}: {key!r} has shape {list(value.shape)}, expected {list(shape)} "
                "(is this a ConvNeXt-Tiny checkpoint?)"
            )
        out[key] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def generate_weights(seed: int = 0, gamma: float = 0.5) -> Weights:
    """Deterministic stand-in weights with the official shapes; labels mean nothing.

    Conv/linear weights are truncated normal with std 1/sqrt(fan_in) (rather than the
    original init's 0.02) and the layer scale is `gamma`, so every block contributes and
    different images give clearly different logits.
    """
    rng = np.random.default_rng(seed)
    out: Weights = {}
    for key, shape in expected_shapes().items():
        if len(shape) == 1:
            if key.endswith("gamma"):
                value = np.full(shape, gamma, np.float32)
            elif key.endswith("weight"):  # LayerNorm scale
                value = 1.0 + 0.1 * rng.standard_normal(shape, np.float32)
            else:  # biases
                value = 0.02 * rng.standard_normal(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            value = np.clip(rng.standard_normal(shape, np.float32), -2.0, 2.0)
            value *= np.float32(1.0 / np.sqrt(fan_in))
        out[key] = value.astype(np.float32, copy=False)
    return out


# --- reading the PyTorch zip format without torch -------------------------------------------

_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "DoubleStorage": "<f8",
    "BFloat16Storage": "bf16",
}


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for `torch.<X>Storage`: only its name travels through the pickle."""

    name: str


def _bf16_to_f32(raw: bytes) -> npt.NDArray[np.float32]:
    halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32)
    return (halves << 16).view(np.float32)


def _rebuild_tensor(
    storage: np.ndarray,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_ignored: Any,
) -> np.ndarray:
    """Our `_rebuild_tensor_v2`: a bounds-checked strided view, copied to contiguous."""
    if not (isinstance(offset, int) and all(isinstance(v, int) and v >= 0 for v in size)):
        raise CheckpointError("malformed tensor record in checkpoint")
    if len(stride) != len(size) or any(not isinstance(v, int) or v < 0 for v in stride):
        raise CheckpointError("malformed tensor stride in checkpoint")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True))
    if offset < 0 or last >= storage.size:
        raise CheckpointError(
            f"tensor of size {list(size)} runs past its storage ({storage.size} elements); "
            "the file is truncated or corrupt"
        )
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[st * item for st in stride], writeable=False
    )
    return np.array(view, copy=True)


def _rebuild_parameter(data: np.ndarray, *_ignored: Any) -> np.ndarray:
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only whitelisted globals; storages are read from the zip on demand."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: str) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._source = source
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self._source}: refusing to load {module}.{name} from the pickle; "
                "only plain tensor state dicts are accepted"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._source}: unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
            raise CheckpointError(f"{self._source}: unsupported storage {storage_type!r:.80}")
        if key in self._storages:
            return self._storages[key]
        record = f"{self._prefix}data/{key}"
        try:
            raw = self._archive.read(record)
        except KeyError:
            raise CheckpointError(f"{self._source}: storage record {record!r} is missing") from None
        dtype = _STORAGE_DTYPES[storage_type.name]
        array = _bf16_to_f32(raw) if dtype == "bf16" else np.frombuffer(raw, dtype=dtype)
        if array.size < int(numel):
            raise CheckpointError(
                f"{self._source}: storage {record!r} holds {array.size} of {numel} elements; "
                "the file is truncated"
            )
        self._storages[key] = array
        return array


def read_checkpoint(path: str | os.PathLike[str]) -> Weights:
    """Read a ConvNeXt-Tiny checkpoint (official `.pth` format) into NumPy, without torch.

    Accepts `{"model": state_dict}` (the official layout) or a bare state dict.

    Raises:
        CheckpointError: the file is missing, not a PyTorch zip, truncated, uses pickle
            globals outside the whitelist, or lacks a key / has a wrong shape.
    """
    source = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not pickles:
                raise CheckpointError(f"{source}: no data.pkl inside; not a PyTorch checkpoint")
            name = min(pickles, key=len)
            prefix = name[: -len("data.pkl")]
            unpickler = _RestrictedUnpickler(archive.read(name), archive, prefix, source)
            obj = unpickler.load()
    except FileNotFoundError:
        raise CheckpointError(
            f"{source}: no such file; get {OFFICIAL_FILENAME} with `stream model fetch` "
            f"or from {OFFICIAL_URLS[0]}"
        ) from None
    except zipfile.BadZipFile as exc:
        raise CheckpointError(
            f"{source}: not a PyTorch zip checkpoint or truncated ({exc}); "
            f"expected {OFFICIAL_FILENAME}"
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        zlib.error,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
    ) as exc:
        raise CheckpointError(f"{source}: corrupt checkpoint ({exc})") from None
    except OSError as exc:
        raise CheckpointError(f"{source}: cannot read ({exc.strerror or exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a dict with a 'model' state dict inside")
    arrays = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
    return validate_weights(arrays, source)


# --- identity and download ------------------------------------------------------------------


def sha384_of(path: str | os.PathLike[str]) -> str:
    """Hex SHA-384 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha384()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_official(path: str | os.PathLike[str]) -> bool:
    """True when the file is byte-for-byte the official checkpoint (size, then SHA-384)."""
    return Path(path).stat().st_size == OFFICIAL_SIZE and sha384_of(path) == OFFICIAL_SHA384


def download_checkpoint(
    dest: str | os.PathLike[str],
    urls: Iterable[str] = OFFICIAL_URLS,
    timeout: float = 10.0,
    expected_sha384: str | None = OFFICIAL_SHA384,
) -> Path:
    """Download the checkpoint to `dest`, trying each URL in turn; verify its SHA-384.

    The data goes to a temporary file beside `dest` that is renamed only once complete
    and verified, so an interrupted download never leaves a plausible-looking file.

    Raises:
        CheckpointError: every URL failed (one line: where to get the file, what to run next)
            or the downloaded bytes have the wrong hash.
    """
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha384()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
            if expected_sha384 is not None and digest.hexdigest() != expected_sha384:
                failures.append(f"{url}: SHA-384 mismatch")
                tmp.unlink(missing_ok=True)
                continue
            os.replace(tmp, target)
            logger.info("downloaded %s to %s", url, target)
            return target
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            failures.append(f"{url}: {reason}")
            tmp.unlink(missing_ok=True)
    raise CheckpointError(
        f"cannot download {OFFICIAL_FILENAME} ({'; '.join(failures)}); download it on a "
        f"connected machine from {OFFICIAL_URLS[0]} (SHA-384 {OFFICIAL_SHA384[:16]}...), save it "
        f"as {target} and run: stream model build --weights {target}"
    )
