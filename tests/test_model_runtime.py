"""Loading any classifier IR, u8 NHWC BGR input through PrePostProcessor, softmax, labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import openvino.properties as props
import openvino.properties.hint as hints
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from stream.errors import ConfigError, ModelError
from stream.model.labels import load_labels
from stream.model.runtime import (
    ClassifierInfo,
    compile_classifier,
    inspect_classifier,
    softmax_topk,
)

H, W, N = 8, 6, 5
MIX = np.arange(3 * N, dtype=np.float32).reshape(3, N) / 10 - 0.7


def _save(model: ov.Model, path: Path) -> Path:
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def _tiny(path: Path, in_shape: tuple[int, ...] = (1, 3, H, W), out_rank2: bool = True) -> Path:
    """A tiny 'classifier': per-channel means (BGR order kept) mixed into N scores."""
    image = ops.parameter(list(in_shape), np.float32, name="data")
    axes = list(range(2, len(in_shape)))
    pooled = ops.reduce_mean(image, ops.constant(np.array(axes, np.int64)), False)
    scores = ops.matmul(pooled, ops.constant(MIX[: in_shape[1]]), False, False)
    if not out_rank2:
        scores = ops.unsqueeze(scores, ops.constant(np.array([2], np.int64)))
    scores.output(0).get_tensor().set_names({"scores"})
    return _save(ov.Model([ops.result(scores)], [image], "tiny"), path)


def test_inspect_reads_sizes_and_names(tmp_path: Path) -> None:
    _, info = inspect_classifier(ov.Core(), _tiny(tmp_path / "t.xml"))
    assert info == ClassifierInfo(tmp_path / "t.xml", "data", "scores", H, W, N)


@pytest.mark.parametrize(
    ("in_shape", "out_rank2", "found"),
    [
        ((1, 3, H, W, 2), True, r"input shape \[1,3,8,6,2\]"),
        ((2, 3, H, W), True, r"input shape \[2,3,8,6\]"),
        ((1, 1, H, W), True, r"input shape \[1,1,8,6\]"),
        ((1, 3, H, W), False, r"output shape \[1,5,1\]"),
    ],
)
def test_wrong_shapes_are_refused(
    tmp_path: Path, in_shape: tuple[int, ...], out_rank2: bool, found: str
) -> None:
    path = _tiny(tmp_path / "bad.xml", in_shape, out_rank2)
    with pytest.raises(ModelError, match=found):
        inspect_classifier(ov.Core(), path)


def test_two_inputs_are_refused(tmp_path: Path) -> None:
    a = ops.parameter([1, 3, H, W], np.float32)
    b = ops.parameter([1, 3, H, W], np.float32)
    path = _save(ov.Model([ops.result(ops.add(a, b))], [a, b], "two"), tmp_path / "two.xml")
    with pytest.raises(ModelError, match=r"2 input\(s\) and 1 output\(s\)"):
        inspect_classifier(ov.Core(), path)


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no model at .*stream model build"):
        inspect_classifier(ov.Core(), tmp_path / "none.xml")
    junk = tmp_path / "junk.xml"
    junk.write_text("<html>not an IR</html>")
    with pytest.raises(ModelError, match="not a readable OpenVINO IR"):
        inspect_classifier(ov.Core(), junk)


def test_compiled_input_is_raw_u8_nhwc_bgr(tmp_path: Path) -> None:
    compiled, info = compile_classifier(_tiny(tmp_path / "t.xml"), precision="f32")
    port = compiled.input(0)
    assert port.get_element_type() == ov.Type.u8
    assert list(port.get_shape()) == [1, H, W, 3]
    frame = np.random.default_rng(0).integers(0, 256, (1, H, W, 3), dtype=np.uint8)
    got = compiled(frame)[0]
    want = frame[0].astype(np.float32).mean((0, 1)) @ MIX  # channels stay in BGR order
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-4)
    assert info.num_classes == N


def test_compile_properties(tmp_path: Path) -> None:
    path = _tiny(tmp_path / "t.xml")
    compiled, _ = compile_classifier(path, hint="LATENCY", precision="f32", streams=1)
    assert str(compiled.get_property(hints.performance_mode)) == "LATENCY"
    assert str(compiled.get_property(hints.inference_precision)) in ("f32", "<Type: 'float32'>")
    assert int(compiled.get_property(props.streams.num)) == 1
    compiled, _ = compile_classifier(path, requests=2)
    assert str(compiled.get_property(hints.performance_mode)) == "THROUGHPUT"
    assert int(compiled.get_property(hints.num_requests)) == 2


def test_bad_settings(tmp_path: Path) -> None:
    path = _tiny(tmp_path / "t.xml")
    with pytest.raises(ConfigError, match="FASTEST"):
        compile_classifier(path, hint="FASTEST")
    with pytest.raises(ConfigError, match="int8"):
        compile_classifier(path, precision="int8")
    with pytest.raises(ModelError, match="NO_SUCH_DEVICE"):
        compile_classifier(path, device="NO_SUCH_DEVICE")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    out: np.ndarray = e / e.sum()
    return out


def test_softmax_topk_basics() -> None:
    logits = np.array([[1.0, 3.0, 2.0, 3.0, -1.0]], np.float32)
    top = softmax_topk(logits, 3)
    assert [i for i, _ in top] == [1, 3, 2]  # ties broken by class id
    want = _softmax(logits[0].astype(np.float64))[[1, 3, 2]]
    np.testing.assert_allclose([p for _, p in top], want)
    assert len(softmax_topk(logits, 99)) == 5 and softmax_topk(logits, 0) == []
    huge = softmax_topk(np.array([1e4, 1e4 - 1, -1e4], np.float32), 2)
    assert np.isfinite([p for _, p in huge]).all() and huge[0][0] == 0


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float32, st.integers(1, 50), elements=st.floats(-1e4, 1e4, width=32)),
    st.integers(1, 10),
)
def test_softmax_topk_properties(logits: np.ndarray, k: int) -> None:
    top = softmax_topk(logits, k)
    probs = [p for _, p in top]
    assert len(top) == min(k, logits.size)
    assert probs == sorted(probs, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probs) and sum(probs) <= 1.0 + 1e-9
    assert logits[top[0][0]] == logits.max()


def test_imagenet_labels_use_first_synonym() -> None:
    labels = load_labels()
    assert len(labels) == 1000
    assert labels[0] == "tench" and labels[281] == "tabby"
    assert labels[2] == "great white shark"


def test_plain_label_files(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog, puppy\nn01440764 tench, Tinca tinca\n\n")
    assert load_labels(path) == ["cat", "dog, puppy", "tench"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ModelError, match="empty"):
        load_labels(tmp_path / "empty.txt")
    with pytest.raises(ModelError, match="cannot read labels"):
        load_labels(tmp_path / "missing.txt")
