"""Load and compile any single-image classification IR; the OpenVINO boundary for workers.

Accepted IRs: one image input `[1,3,H,W]` (f32 NCHW, BGR, the OMZ convention: the IR does its
own mean/scale) and one `[1,N]` output. H, W and N are read from the IR, never assumed.
The compiled model takes raw **u8 NHWC BGR** `[1,H,W,3]` frames: PrePostProcessor converts
type and layout inside OpenVINO, so workers do no per-frame NumPy maths.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import openvino as ov
import openvino.properties as props
import openvino.properties.hint as hints
from openvino.preprocess import PrePostProcessor

from stream.config.models import auto_hint
from stream.errors import ConfigError, ModelError

HINTS = ("THROUGHPUT", "LATENCY", "CUMULATIVE_THROUGHPUT")
log = logging.getLogger(__name__)


def resolve_hint(hint: str, live: Sequence[bool]) -> str:
    """The OpenVINO performance hint to compile with: ``model.hint``, with ``auto`` resolved.

    ``auto`` is LATENCY when every source is live (``live``: one flag per source, from
    ``SourceConfig.is_live``) and THROUGHPUT otherwise. A live camera produces frames at
    its own pace, and what its users wait for is each label: LATENCY runs one request on
    all cores (here: median request 2x shorter). A file is read as fast as workers go, so
    frames per second are what count: THROUGHPUT runs several requests side by side
    (here: ~30% more frames/s). A deployment mixing both is throughput-bound (the files
    would take every free request), so it gets THROUGHPUT. docs/config.md has the figures.

    Raises:
        ConfigError: ``hint`` is neither ``auto`` nor one of HINTS.
    """
    if hint != "auto":
        if hint not in HINTS:
            raise ConfigError(f"performance hint {hint!r} is not auto or one of "
                              f"{', '.join(HINTS)}")
        return hint
    chosen, why = auto_hint(live)
    log.info("model.hint auto -> %s (%s)", chosen, why)
    return chosen
PRECISIONS: dict[str, Any] = {"bf16": ov.Type.bf16, "f16": ov.Type.f16, "f32": ov.Type.f32}


@dataclass(frozen=True)
class ClassifierInfo:
    """What a caller needs to feed a classifier IR and read its output."""

    path: Path
    input_name: str
    output_name: str
    height: int
    width: int
    num_classes: int


def _port_name(port: Any, fallback: str) -> str:
    names = sorted(port.get_names())
    return str(names[0]) if names else fallback


def inspect_classifier(
    core: ov.Core, path: str | os.PathLike[str]
) -> tuple[ov.Model, ClassifierInfo]:
    """Read an IR and check it is a single-image classifier.

    Returns:
        The model and its ClassifierInfo (input/output names, H, W, N).
    Raises:
        ModelError: the file is missing, is not an IR, or has the wrong inputs/outputs;
            the message names what was found and what to do.
    """
    xml = Path(path)
    if not xml.is_file():
        raise ModelError(
            f"no model at {str(xml)!r}; build one with `stream model build` "
            "(or `stream model fetch` for the real weights) or pass the path of an IR .xml"
        )
    try:
        model = core.read_model(str(xml))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{str(xml)!r} is not a readable OpenVINO IR (.xml with its .bin beside it): "
            f"{first[:200]}"
        ) from None
    inputs, outputs = model.inputs, model.outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(
            f"{str(xml)!r} has {len(inputs)} input(s) and {len(outputs)} output(s); a "
            "classifier needs exactly one image input [1,3,H,W] and one output [1,N]"
        )
    in_shape, out_shape = inputs[0].get_partial_shape(), outputs[0].get_partial_shape()
    ok_in = in_shape.is_static and len(in_shape) == 4
    dims_in = [int(d) for d in in_shape.to_shape()] if ok_in else []
    if not ok_in or dims_in[0] != 1 or dims_in[1] != 3:
        raise ModelError(
            f"{str(xml)!r}: input shape {in_shape} is not an image [1,3,H,W]; "
            "use a single-image classification IR (e.g. convnext-tiny)"
        )
    ok_out = out_shape.is_static and len(out_shape) == 2
    dims_out = [int(d) for d in out_shape.to_shape()] if ok_out else []
    if not ok_out or dims_out[0] != 1 or dims_out[1] < 1:
        raise ModelError(
            f"{str(xml)!r}: output shape {out_shape} is not class scores [1,N]; "
            "use a single-image classification IR (e.g. convnext-tiny)"
        )
    info = ClassifierInfo(
        path=xml,
        input_name=_port_name(inputs[0], inputs[0].get_node().get_friendly_name()),
        output_name=_port_name(outputs[0], outputs[0].get_node().get_friendly_name()),
        height=dims_in[2],
        width=dims_in[3],
        num_classes=dims_out[1],
    )
    return model, info


def _properties(
    hint: str, precision: str | None, streams: int | None, requests: int
) -> dict[str, Any]:
    hint = resolve_hint(hint, [False]) if hint == "auto" else hint  # sources unknown here
    if hint not in HINTS:
        raise ConfigError(f"performance hint {hint!r} is not one of {', '.join(HINTS)}")
    config: dict[str, Any] = {hints.performance_mode: getattr(hints.PerformanceMode, hint)}
    if precision is not None:
        if precision not in PRECISIONS:
            raise ConfigError(
                f"inference precision {precision!r} is not one of {', '.join(PRECISIONS)}"
            )
        config[hints.inference_precision] = PRECISIONS[precision]
    if streams is not None:
        config[props.streams.num] = int(streams)
    if requests > 0:
        config[hints.num_requests] = int(requests)
    return config


def compile_classifier(
    path: str | os.PathLike[str],
    device: str = "CPU",
    hint: str = "THROUGHPUT",
    precision: str | None = None,
    streams: int | None = None,
    requests: int = 0,
    core: ov.Core | None = None,
) -> tuple[ov.CompiledModel, ClassifierInfo]:
    """Compile a classifier IR whose input takes raw u8 NHWC BGR frames `[1,H,W,3]`.

    The caller resizes/crops frames to H x W (see ClassifierInfo); OpenVINO converts u8 NHWC
    to the IR's f32 NCHW. Channel order is untouched: the IR expects BGR, as OpenCV gives.

    Args:
        device: any OpenVINO device name (CPU, GPU, NPU, AUTO:..., ...), passed through.
        hint: PERFORMANCE_HINT, or ``auto`` (THROUGHPUT: this function does not know the
            sources; a worker resolves ``auto`` with :func:`resolve_hint` first);
            precision: INFERENCE_PRECISION_HINT (bf16/f16/f32) or None
            for the device default; streams: NUM_STREAMS; requests: hint.num_requests if > 0.
    Raises:
        ModelError: bad IR or the device cannot compile it; ConfigError: bad hint/precision.
    """
    core = core if core is not None else ov.Core()
    model, info = inspect_classifier(core, path)
    config = _properties(hint, precision, streams, requests)
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32)
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.output().tensor().set_element_type(ov.Type.f32)
    model = ppp.build()
    try:
        compiled = core.compile_model(model, device, config)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot compile {str(info.path)!r} on device {device!r} "
            f"(available: {', '.join(core.available_devices)}): {first[:200]}"
        ) from None
    return compiled, info


def softmax_topk(logits: npt.NDArray[Any], k: int) -> list[tuple[int, float]]:
    """Top-k (class id, softmax probability) over all classes, best first.

    Stable: subtracts the max logit before exponentiating; computed in float64.
    """
    flat = np.asarray(logits, dtype=np.float64).reshape(-1)
    k = max(0, min(int(k), flat.size))
    if k == 0:
        return []
    exp = np.exp(flat - flat.max())
    probs = exp / exp.sum()
    return [(int(i), float(probs[i])) for i in top_ids(flat, k)]


def top_ids(logits: npt.NDArray[Any], k: int) -> npt.NDArray[np.intp]:
    """Indices of the k largest logits, best first (ties: lowest id first).

    Ranked by the logits themselves: softmax preserves their order, and ranking after
    exp() could tie classes whose tiny logit differences round away.
    """
    flat = logits.reshape(-1)
    top = np.argpartition(-flat, k - 1)[:k]
    return top[np.lexsort((top, -flat[top]))]
