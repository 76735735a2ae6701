"""`stream model ...`: one-line errors with non-zero exits, fetch offline, exact eval figures."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest_model import make_image, random_state_dict, write_checkpoint

from stream.model.builder import build_ir
from stream.model.cli import add_model_parser, main
from stream.model.runtime import compile_classifier
from stream.preprocess import center_crop_resize


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def ir32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    ckpt = write_checkpoint(folder / "random.pth", random_state_dict(seed=5))
    return build_ir(folder / "cx32.xml", ckpt, "FP32").path


def test_registers_on_the_main_parser(ir32: Path) -> None:
    parser = argparse.ArgumentParser(prog="stream")
    add_model_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["model", "info", str(ir32)])
    assert args.func(args) == 0
    eval_args = ["--images", "d", "--ground-truth", "g"]
    for sub, extra in (("build", []), ("fetch", []), ("eval", eval_args)):
        assert callable(parser.parse_args(["model", sub, *extra]).func)


def test_info_prints_counts(ir32: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["info", str(ir32)], capsys)
    assert code == 0
    assert "parameters: 28,589,128" in out and "8.911 GFLOPs" in out
    assert "image f32 [1,3,224,224]" in out and "probs f32 [1,1000]" in out


@pytest.mark.parametrize(
    ("content", "expect"),
    [(b"hello", "not a PyTorch zip"), (None, "no such file")],
)
def test_build_bad_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, expect: str
) -> None:
    weights = tmp_path / "w.pth"
    if content is not None:
        weights.write_bytes(content)
    out_xml = tmp_path / "out" / "m.xml"
    code, _, err = _run(["build", "--weights", str(weights), "--output", str(out_xml)], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert expect in line and str(weights) in line
    assert not out_xml.parent.exists() or os.listdir(out_xml.parent) == []


def test_build_missing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = random_state_dict(seed=1)
    del state["norm.weight"]
    weights = write_checkpoint(tmp_path / "w.pth", state)
    code, _, err = _run(
        ["build", "--weights", str(weights), "--output", str(tmp_path / "m.xml")], capsys
    )
    assert code == 2 and "'norm.weight' is missing" in _one_error_line(err)
    assert sorted(os.listdir(tmp_path)) == ["w.pth"]


def test_build_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("x")
    code, _, err = _run(["build", "--output", str(tmp_path / "f" / "m.xml")], capsys)
    assert code == 2 and "cannot write the IR" in _one_error_line(err)


def test_build_fp32_with_official_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = write_checkpoint(tmp_path / "w.pth", random_state_dict(seed=2))
    code, out, _ = _run(
        [
            "build",
            "--weights",
            str(weights),
            "--precision",
            "FP32",
            "--output",
            str(tmp_path / "m.xml"),
        ],
        capsys,
    )
    assert code == 0 and "NOT the official checkpoint" in out
    assert (tmp_path / "m.bin").stat().st_size > 114e6  # FP32: 4 bytes per parameter


def test_info_of_wrong_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["info", str(tmp_path / "missing.xml")], capsys)
    assert code == 2 and "missing.xml" in _one_error_line(err)


def test_fetch_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = _run(
        [
            "fetch",
            "--url",
            f"http://127.0.0.1:{port}/w.pth",
            "--timeout",
            "2",
            "--checkpoint-dir",
            str(tmp_path / "ck"),
            "--output",
            str(tmp_path / "m.xml"),
        ],
        capsys,
    )
    assert code == 2 and out == ""
    line = _one_error_line(err)
    assert "https://storage.openvinotoolkit.org/" in line
    assert "stream model build --weights" in line
    assert os.listdir(tmp_path / "ck") == [] and not (tmp_path / "m.xml").exists()


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory: pytest.TempPathFactory, ir32: Path) -> tuple[Path, Path]:
    """10 images: 7 labelled with the model's own top-1, 1 with its 3rd best, 2 outside top-5.

    So the exact figures are top-1 70.00%, top-5 80.00%.
    """
    folder = tmp_path_factory.mktemp("evalset")
    compiled, info = compile_classifier(ir32, precision="f32")
    lines = []
    for i in range(10):
        bgr = make_image(100 + i, size=256 + 16 * i)[:, : 240 + 8 * i]  # varied sizes
        name = f"ILSVRC2012_val_{i + 1:08d}.png"
        assert cv2.imwrite(str(folder / name), bgr)
        crop = center_crop_resize(cv2.imread(str(folder / name)), (info.width, info.height))
        order = np.argsort(-compiled(crop[np.newaxis])[0][0])
        label = order[0] if i < 7 else order[2] if i == 7 else order[500]
        lines.append(f"{name} {int(label)}")
    gt = folder / "val.txt"
    gt.write_text("\n".join(lines) + "\n")
    return folder, gt


def test_eval_exact_figures(
    ir32: Path, eval_set: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    images, gt = eval_set
    args = ["eval", "--images", str(images), "--ground-truth", str(gt), "--model", str(ir32),
            "--precision", "f32"]
    code, out, err = _run(args, capsys)
    assert code == 0, err
    assert out.strip() == "top-1 70.00% (7/10)  top-5 80.00% (8/10)"
    assert "eval 10/10 images" in err  # the progress line
    code, out, _ = _run([*args, "--limit", "8"], capsys)
    assert code == 0 and out.strip() == "top-1 87.50% (7/8)  top-5 100.00% (8/8)"


def test_eval_bad_inputs(
    tmp_path: Path, ir32: Path, eval_set: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    images, _ = eval_set
    gt = tmp_path / "gt.txt"
    gt.write_text("ILSVRC2012_val_00000001.png 3\nnot-a-line\n")
    base = ["eval", "--images", str(images), "--model", str(ir32), "--ground-truth"]
    code, _, err = _run([*base, str(gt)], capsys)
    assert code == 2 and "line 2" in _one_error_line(err)
    gt.write_text("missing.JPEG 3\n")
    code, _, err = _run([*base, str(gt)], capsys)
    assert code == 2 and "missing.JPEG" in _one_error_line(err)
    gt.write_text("ILSVRC2012_val_00000001.png 1000\n")
    code, _, err = _run([*base, str(gt)], capsys)
    assert code == 2 and "outside the model's 1000 classes" in _one_error_line(err)
    code, _, err = _run([*base, str(gt), "--model", str(tmp_path / "none.xml")], capsys)
    assert code == 2 and "stream model build" in _one_error_line(err)
