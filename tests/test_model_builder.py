"""The built IR computes ConvNeXt-Tiny exactly (vs an independent NumPy forward), OMZ contract."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import pytest
from conftest_model import make_image, random_state_dict, reference_logits, write_checkpoint

from stream.errors import ModelError
from stream.model import builder
from stream.model.checkpoint import read_checkpoint
from stream.model.info import read_stats


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return random_state_dict(seed=7, gamma=0.3)


@pytest.fixture(scope="module")
def ir32(tmp_path_factory: pytest.TempPathFactory, state: dict[str, np.ndarray]) -> Path:
    """FP32 IR built through the public path from a pure-Python-written checkpoint."""
    folder = tmp_path_factory.mktemp("ir")
    ckpt = write_checkpoint(folder / "random.pth", state)
    result = builder.build_ir(folder / "cx32.xml", ckpt, "FP32")
    assert not result.generated and result.official is False
    return result.path


@pytest.fixture(scope="module")
def compiled32(ir32: Path) -> Any:
    return ov.Core().compile_model(str(ir32), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def _nchw(bgr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bgr.transpose(2, 0, 1)[np.newaxis], np.float32)


def test_logits_equal_reference_forward(compiled32: Any, state: dict[str, np.ndarray]) -> None:
    image = _nchw(make_image(11))
    got = compiled32(image)[0][0]
    want = reference_logits(state, image)
    assert np.abs(got - want).max() <= 1e-3
    assert got.std() > 0.1  # logits are not degenerate
    assert int(got.argmax()) == int(want.argmax())


def test_torch_written_checkpoint_builds_the_same_network(
    tmp_path: Path, state: dict[str, np.ndarray], compiled32: Any
) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "torch.pth"
    torch.save({"model": {k: torch.from_numpy(v.copy()) for k, v in state.items()}}, path)
    model = builder.build_model(read_checkpoint(path))
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    image = _nchw(make_image(12))
    np.testing.assert_allclose(compiled(image)[0], compiled32(image)[0], atol=1e-5)


def test_parameter_count_names_shapes_and_flops(ir32: Path) -> None:
    stats = read_stats(ir32)
    assert stats.parameters == 28_589_128
    assert [(p.name, p.element_type, p.shape) for p in stats.inputs] == [
        ("image", "f32", "[1,3,224,224]")
    ]
    assert [(p.name, p.element_type, p.shape) for p in stats.outputs] == [
        ("probs", "f32", "[1,1000]")
    ]
    assert stats.macs == 4_455_531_264
    assert stats.gflops == pytest.approx(8.9401, rel=0.005)  # OMZ lists 8.9401 GFLOPs


def test_input_is_bgr(compiled32: Any, state: dict[str, np.ndarray]) -> None:
    bgr = _nchw(make_image(13))
    rgb = bgr[:, ::-1].copy()
    out_bgr, out_rgb = compiled32(bgr)[0][0], compiled32(rgb)[0][0]
    assert np.abs(out_bgr - out_rgb).max() > 0.05  # channel order matters
    want = reference_logits(state, bgr)  # the reference reads BGR, like the OMZ IR
    assert np.abs(out_bgr - want).max() <= 1e-3
    assert np.abs(out_rgb - want).max() > 0.05


def test_generated_weights_depend_on_input(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        result = builder.build_ir(tmp_path / "gen.xml")  # the defaults: generated, FP16
    assert result.generated and "labels are not meaningful" in caplog.text
    bin_size = result.path.with_suffix(".bin").stat().st_size
    assert 56e6 < bin_size < 60e6  # FP16 weights: ~2 bytes per parameter
    compiled = ov.Core().compile_model(str(result.path), "CPU")
    outs = np.stack([compiled(_nchw(make_image(s)))[0][0] for s in range(6)])
    assert len({int(o.argmax()) for o in outs}) >= 3
    spread = np.abs(outs[:, None] - outs[None]).max(-1)
    assert spread[~np.eye(6, dtype=bool)].min() > 0.1


def test_unwritable_output_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ModelError, match=r"cannot write the IR to .*file/sub/m\.xml"):
        builder.build_ir(blocker / "sub" / "m.xml")
    with pytest.raises(ModelError, match=r"must end in \.xml"):
        builder.build_ir(tmp_path / "m.bin")
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_failed_save_removes_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(model: Any, path: str, compress_to_fp16: bool) -> None:
        Path(path).write_text("partial")
        Path(path).with_suffix(".bin").write_text("partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(builder.ov, "save_model", broken_save)
    with pytest.raises(ModelError, match="disk full"):
        builder.save_ir(builder.build_model(builder.generate_weights(0)), tmp_path / "m.xml")
    assert os.listdir(tmp_path) == []


def test_ensure_default_model_builds_once(tmp_path: Path) -> None:
    path = tmp_path / "models" / "convnext-tiny.xml"
    assert builder.ensure_default_model(path) == path
    stamp = path.stat().st_mtime_ns
    assert builder.ensure_default_model(path) == path
    assert path.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "convnext-tiny.bin",
        "convnext-tiny.xml",
    ]
