"""Static statistics of an IR: inputs, outputs, parameter count and compute cost (FLOPs).

Conventions (stated because counters disagree):
- Parameters: elements of floating-point Constants with more than one element (weights,
  biases, norm scales, layer scales), skipping the input normalisation constants (mean /
  scale applied before the first convolution) and scalars (eps, exponents). An FP16 IR's
  compressed constants are counted the same. convnext-tiny: 28,589,128.
- FLOPs: 2 x multiply-accumulates of Convolution, GroupConvolution and MatMul only (the
  fvcore / Open Model Zoo convention: one MAC = two FLOPs; element-wise ops, norms and
  activations are not counted). convnext-tiny: 4.455 GMACs = 8.91 GFLOPs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openvino as ov

from stream.errors import ModelError

_PREPROCESS_OPS = {
    "Gather",
    "Subtract",
    "Add",
    "Multiply",
    "Divide",
    "Convert",
    "Concat",
    "Split",
    "VariadicSplit",
    "Reverse",
}
_FLOAT_TYPES = {"f16", "f32", "f64", "bf16"}


@dataclass(frozen=True)
class PortInfo:
    """One model input or output: tensor name, element type and shape."""

    name: str
    element_type: str
    shape: str


@dataclass(frozen=True)
class ModelStats:
    """What `stream model info` prints."""

    path: Path
    inputs: tuple[PortInfo, ...]
    outputs: tuple[PortInfo, ...]
    parameters: int
    macs: int

    @property
    def gflops(self) -> float:
        """Giga floating-point operations per inference (2 per MAC)."""
        return 2 * self.macs / 1e9


def _shape(port: Any) -> list[int]:
    return [int(d) for d in port.get_partial_shape().to_shape()]


def _preprocess_constants(model: ov.Model) -> set[str]:
    """Constants of the element-wise chain between the inputs and the first conv/matmul."""
    seen: set[str] = set()
    frontier = list(model.get_parameters())
    while frontier:
        node = frontier.pop()
        for out in node.outputs():
            for target in out.get_target_inputs():
                consumer = target.get_node()
                if consumer.get_type_name() not in _PREPROCESS_OPS:
                    continue
                if consumer.get_friendly_name() in seen:
                    continue
                seen.add(consumer.get_friendly_name())
                for inp in consumer.inputs():
                    src = inp.get_source_output().get_node()
                    while src.get_type_name() == "Convert":
                        src = src.input_value(0).get_node()
                    if src.get_type_name() == "Constant":
                        seen.add(src.get_friendly_name())
                frontier.append(consumer)
    return seen


def _macs(node: Any) -> int:
    kind = node.get_type_name()
    if kind not in ("Convolution", "GroupConvolution", "MatMul"):
        return 0
    if not node.get_output_partial_shape(0).is_static:
        return 0
    out = math.prod(_shape(node.output(0)))
    if kind == "Convolution":
        w = _shape(node.input(1))  # [Cout, Cin, kh, kw]
        return out * math.prod(w[1:])
    if kind == "GroupConvolution":
        w = _shape(node.input(1))  # [G, Cout/G, Cin/G, kh, kw]
        return out * math.prod(w[2:])
    a = _shape(node.input(0))
    transpose_a = bool(node.get_attributes().get("transpose_a", False))
    k = a[-2] if transpose_a and len(a) > 1 else a[-1]
    return out * k


def model_stats(model: ov.Model, path: str | os.PathLike[str]) -> ModelStats:
    """Count parameters and MACs of a read model (see the module docstring for conventions)."""
    skip = _preprocess_constants(model)
    params = 0
    macs = 0
    for node in model.get_ordered_ops():
        macs += _macs(node)
        if node.get_type_name() != "Constant" or node.get_friendly_name() in skip:
            continue
        if node.get_output_element_type(0).get_type_name() not in _FLOAT_TYPES:
            continue
        size = math.prod(_shape(node.output(0)))
        if size > 1:
            params += size

    def ports(items: Any) -> tuple[PortInfo, ...]:
        return tuple(
            PortInfo(
                p.get_any_name() if p.get_names() else p.get_node().get_friendly_name(),
                p.get_element_type().get_type_name(),
                str(p.get_partial_shape()),
            )
            for p in items
        )

    return ModelStats(Path(path), ports(model.inputs), ports(model.outputs), params, macs)


def read_stats(path: str | os.PathLike[str], core: ov.Core | None = None) -> ModelStats:
    """Read an IR from disk and return its statistics.

    Raises:
        ModelError: the file is missing or not a readable IR.
    """
    xml = Path(path)
    if not xml.is_file():
        raise ModelError(f"no IR at {str(xml)!r}; build one with `stream model build`")
    try:
        model = (core or ov.Core()).read_model(str(xml))
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{str(xml)!r} is not a readable OpenVINO IR: {first[:200]}") from None
    return model_stats(model, xml)
