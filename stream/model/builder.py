"""Build the ConvNeXt-Tiny IR with OpenVINO's opset API, to the Open Model Zoo IR contract.

The graph is the original network op for op (so it costs the same as the OMZ conversion):
stem 4x4/4 conv + channels-first LayerNorm; four stages (depth 3, 3, 9, 3; width 96, 192,
384, 768) with a LayerNorm + 2x2/2 conv between stages; blocks of 7x7 depthwise conv ->
LayerNorm -> Linear C->4C -> erf GELU -> Linear 4C->C -> layer scale -> residual; head =
global average pool -> LayerNorm -> Linear 768->1000.

IR contract (the one the OMZ converter produced): input `image`, f32 [1,3,224,224] NCHW,
BGR 0..255; the graph reverses channels to RGB and applies mean/scale itself; output
`probs` [1,1000] holds logits (no softmax).
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from stream.errors import ModelError
from stream.model.checkpoint import (
    DEPTHS,
    Weights,
    generate_weights,
    is_official,
    read_checkpoint,
)

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "probs"
INPUT_SIZE = 224
MEAN_RGB = (123.675, 116.28, 103.53)
SCALE_RGB = (58.395, 57.12, 57.375)
LN_EPS = 1e-6
DEFAULT_OUTPUT = Path("models/convnext-tiny.xml")
GENERATED_WARNING = (
    "building convnext-tiny with GENERATED weights (fixed seed): the network computes "
    "exactly like the real one but its labels are not meaningful; for real labels run "
    "`stream model fetch` or `stream model build --weights convnext_tiny_1k_224_ema.pth`"
)

Output = Any  # an op output port (ov.Output); its typing stubs are incomplete


def _const(array: np.ndarray, name: str) -> ov.Node:
    return ops.constant(np.ascontiguousarray(array, dtype=np.float32), name=name)


def _layer_norm(x: Output, w: np.ndarray, b: np.ndarray, axis: int, name: str) -> ov.Node:
    """LayerNorm over one axis: MVN (eps inside sqrt, as torch) then affine."""
    shape = [1] * len(x.get_partial_shape())
    shape[axis] = w.size
    norm = ops.mvn(
        x, ops.constant(np.array([axis], np.int64)), True, LN_EPS, "inside_sqrt", name=f"{name}/mvn"
    )
    scaled = ops.multiply(norm, _const(w.reshape(shape), f"{name}.weight"))
    return ops.add(scaled, _const(b.reshape(shape), f"{name}.bias"), name=name)


def _conv(x: Output, w: np.ndarray, b: np.ndarray, stride: int, name: str) -> ov.Node:
    conv = ops.convolution(
        x,
        _const(w, f"{name}.weight"),
        [stride, stride],
        [0, 0],
        [0, 0],
        [1, 1],
        name=f"{name}/conv",
    )
    return ops.add(conv, _const(b.reshape(1, -1, 1, 1), f"{name}.bias"), name=name)


def _linear(x: Output, w: np.ndarray, b: np.ndarray, name: str) -> ov.Node:
    mm = ops.matmul(x, _const(w, f"{name}.weight"), False, True, name=f"{name}/matmul")
    return ops.add(mm, _const(b, f"{name}.bias"), name=name)


def _block(x: Output, wts: Weights, p: str) -> ov.Node:
    """One ConvNeXt block on an NCHW tensor; returns NCHW."""
    c = wts[p + "dwconv.bias"].size
    dw = ops.group_convolution(
        x,
        _const(wts[p + "dwconv.weight"].reshape(c, 1, 1, 7, 7), p + "dwconv.weight"),
        [1, 1],
        [3, 3],
        [3, 3],
        [1, 1],
        name=p + "dwconv/conv",
    )
    dw = ops.add(dw, _const(wts[p + "dwconv.bias"].reshape(1, c, 1, 1), p + "dwconv.bias"))
    nhwc = ops.transpose(dw, ops.constant(np.array([0, 2, 3, 1], np.int64)))
    y = _layer_norm(nhwc.output(0), wts[p + "norm.weight"], wts[p + "norm.bias"], 3, p + "norm")
    y = _linear(y.output(0), wts[p + "pwconv1.weight"], wts[p + "pwconv1.bias"], p + "pwconv1")
    y = ops.gelu(y, "erf")
    y = _linear(y.output(0), wts[p + "pwconv2.weight"], wts[p + "pwconv2.bias"], p + "pwconv2")
    y = ops.multiply(y, _const(wts[p + "gamma"], p + "gamma"))
    nchw = ops.transpose(y, ops.constant(np.array([0, 3, 1, 2], np.int64)))
    return ops.add(x, nchw, name=p.rstrip("."))


def build_model(weights: Weights) -> ov.Model:
    """Construct the ConvNeXt-Tiny `ov.Model` from validated weights (official key names)."""
    w = weights
    image = ops.parameter([1, 3, INPUT_SIZE, INPUT_SIZE], np.float32, name=INPUT_NAME)
    image.output(0).get_tensor().set_names({INPUT_NAME})
    # OMZ contract: BGR 0..255 in; reverse to RGB, then (x - mean) / scale in RGB order.
    rgb = ops.gather(
        image,
        ops.constant(np.array([2, 1, 0], np.int64)),
        ops.constant(np.array(1, np.int64)),
        name="reverse_channels",
    )
    x = ops.subtract(rgb, _const(np.array(MEAN_RGB).reshape(1, 3, 1, 1), "mean_rgb"))
    x = ops.divide(x, _const(np.array(SCALE_RGB).reshape(1, 3, 1, 1), "scale_rgb"))
    x = _conv(
        x.output(0),
        w["downsample_layers.0.0.weight"],
        w["downsample_layers.0.0.bias"],
        4,
        "downsample_layers.0.0",
    )
    x = _layer_norm(
        x.output(0),
        w["downsample_layers.0.1.weight"],
        w["downsample_layers.0.1.bias"],
        1,
        "downsample_layers.0.1",
    )
    for s, depth in enumerate(DEPTHS):
        if s > 0:
            p = f"downsample_layers.{s}."
            x = _layer_norm(x.output(0), w[p + "0.weight"], w[p + "0.bias"], 1, p + "0")
            x = _conv(x.output(0), w[p + "1.weight"], w[p + "1.bias"], 2, p + "1")
        for b in range(depth):
            x = _block(x.output(0), w, f"stages.{s}.{b}.")
    pooled = ops.reduce_mean(x, ops.constant(np.array([2, 3], np.int64)), False, name="avgpool")
    x = _layer_norm(pooled.output(0), w["norm.weight"], w["norm.bias"], 1, "norm")
    logits = _linear(x.output(0), w["head.weight"], w["head.bias"], "head")
    logits.output(0).get_tensor().set_names({OUTPUT_NAME})
    result = ops.result(logits, name=OUTPUT_NAME)
    return ov.Model([result], [image], "convnext-tiny")


def _check_output(output: str | os.PathLike[str], precision: str) -> Path:
    xml = Path(output)
    if xml.suffix != ".xml":
        raise ModelError(f"output path {str(xml)!r} must end in .xml (the .bin goes beside it)")
    if precision not in ("FP16", "FP32"):
        raise ModelError(f"precision {precision!r} is not supported; use FP16 or FP32")
    return xml


def save_ir(model: ov.Model, output: str | os.PathLike[str], precision: str = "FP16") -> Path:
    """Write `model` as output (.xml) + .bin atomically: temp files, then two renames.

    Raises:
        ModelError: bad suffix/precision or the directory is not writable.
    """
    xml = _check_output(output, precision)
    tmp_xml: Path | None = None
    try:
        xml.parent.mkdir(parents=True, exist_ok=True)
        # Not mkstemp: OpenVINO creates the files itself, so they get the usual umask modes.
        tmp_xml = xml.parent / f".{xml.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp.xml"
        ov.save_model(model, str(tmp_xml), compress_to_fp16=(precision == "FP16"))
        os.replace(tmp_xml.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp_xml, xml)
    except (OSError, RuntimeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise ModelError(
            f"cannot write the IR to {str(xml)!r} ({reason}); choose a writable --output path"
        ) from None
    finally:
        if tmp_xml is not None:
            tmp_xml.unlink(missing_ok=True)
            tmp_xml.with_suffix(".bin").unlink(missing_ok=True)
    return xml


@dataclass(frozen=True)
class BuildResult:
    """What `build_ir` produced: the IR path and where its weights came from."""

    path: Path
    generated: bool
    official: bool | None  # None for generated weights


def build_ir(
    output: str | os.PathLike[str] = DEFAULT_OUTPUT,
    weights_path: str | os.PathLike[str] | None = None,
    precision: str = "FP16",
    seed: int = 0,
) -> BuildResult:
    """Build the IR from a checkpoint (official format) or from generated weights.

    Raises:
        CheckpointError: the checkpoint cannot be read; ModelError: the IR cannot be written.
    """
    _check_output(output, precision)  # fail before minutes of work, not after
    official: bool | None = None
    if weights_path is None:
        logger.warning(GENERATED_WARNING)
        weights = generate_weights(seed)
    else:
        weights = read_checkpoint(weights_path)
        official = is_official(weights_path)
        if not official:
            logger.warning(
                "%s is not the official %s (SHA-384 differs); building from it anyway",
                weights_path,
                "convnext_tiny_1k_224_ema.pth",
            )
    path = save_ir(build_model(weights), output, precision)
    return BuildResult(path=path, generated=weights_path is None, official=official)


def ensure_default_model(path: str | os.PathLike[str] = DEFAULT_OUTPUT) -> Path:
    """Return `path`, first building the generated-weights IR there if it does not exist.

    This is the pipeline's "built on first use": real weights need `stream model fetch`.
    """
    xml = Path(path)
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        return xml
    logger.info("no IR at %s; building one", xml)
    return build_ir(xml).path
