"""Shared fixtures for the end-to-end tests: free ports, an oracle model, real clips, configs.

- ``free_port_base(n)``: the first of ``n`` consecutive free TCP ports on 127.0.0.1, so a
  test never collides with another test or with a user's ``stream`` on the default ports.
- ``oracle_model``: a tiny classification IR with the convnext-tiny contract (input
  ``image`` f32 [1,3,224,224] NCHW BGR 0..255, output ``probs`` [1,8] logits) whose right
  answer is known: class k is the pure colour ``ORACLE_COLOURS[k]``, and the logits are
  ``-|mean colour - class colour|² / 100``, so a solid frame is classified with certainty.
- ``make_clip(...)``: a real H.264 MP4 made by ffmpeg, frame i a solid ``classes[i]`` colour.
- ``write_config(...)``: a deployment YAML on given ports, validated by the real loader.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import settings

# In CI (CI=true) property tests run a fixed, derandomized set of examples, so a landing
# never depends on the luck of a draw; locally they explore new examples on every run.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Class colours in BGR (the channel order OpenCV decodes and the IR contract uses).
ORACLE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),  # black
    (255, 255, 255),  # white
    (0, 0, 255),  # red
    (0, 255, 0),  # green
    (255, 0, 0),  # blue
    (0, 255, 255),  # yellow
    (255, 255, 0),  # cyan
    (255, 0, 255),  # magenta
)
ORACLE_NAMES: tuple[str, ...] = (
    "black", "white", "red", "green", "blue", "yellow", "cyan", "magenta",
)
ORACLE_SCALE = 100.0  # logits = -squared distance / scale

# Bind-tested ports come from below Linux's ephemeral range (32768-60999), so an outgoing
# connection of some other program cannot take one between our test and our use of it.
_PORT_LOW, _PORT_HIGH = 20000, 32000
_handed_out: set[int] = set()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def find_free_port_base(n: int, attempts: int = 200) -> int:
    """The first of ``n`` consecutive free ports on 127.0.0.1, never handed out twice."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(_PORT_LOW, _PORT_HIGH - n)
        ports = range(base, base + n)
        if any(p in _handed_out for p in ports):
            continue
        if all(_port_free(p) for p in ports):
            _handed_out.update(ports)
            return base
    raise RuntimeError(f"no block of {n} free ports found in {attempts} attempts")


@pytest.fixture
def free_port_base() -> Callable[[int], int]:
    """``free_port_base(n)`` → first port of a block of ``n`` free consecutive ports."""
    return find_free_port_base


# --------------------------------------------------------------------------- oracle model


def build_oracle_ir(xml: Path) -> Path:
    """Write the colour-oracle IR (see the module docstring) to ``xml`` (+ .bin)."""
    import openvino as ov
    import openvino.opset13 as ops

    image = ops.parameter([1, 3, 224, 224], ov.Type.f32, name="image")
    image.output(0).set_names({"image"})
    mean = ops.reduce_mean(image, ops.constant(np.array([2, 3], np.int64)), keep_dims=False)
    colours = np.array(ORACLE_COLOURS, np.float32)  # [8, 3]
    diff = ops.subtract(ops.unsqueeze(mean, ops.constant(np.array([1], np.int64))),
                        ops.constant(colours[None]))  # [1, 8, 3]
    sq = ops.reduce_sum(ops.multiply(diff, diff), ops.constant(np.array([2], np.int64)),
                        keep_dims=False)  # [1, 8]
    logits = ops.multiply(sq, ops.constant(np.array(-1.0 / ORACLE_SCALE, np.float32)))
    logits.output(0).set_names({"probs"})
    result = ops.result(logits, name="probs")
    model = ov.Model([result], [image], "colour-oracle")
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


@pytest.fixture(scope="session")
def oracle_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(IR .xml path, labels file path) of the 8-colour oracle classifier."""
    d = tmp_path_factory.mktemp("oracle")
    xml = build_oracle_ir(d / "oracle.xml")
    labels = d / "labels.txt"
    labels.write_text("\n".join(ORACLE_NAMES) + "\n", encoding="utf-8")
    return xml, labels


# --------------------------------------------------------------------------- clips


def make_clip(
    path: Path,
    classes: Sequence[int],
    size: tuple[int, int] = (320, 240),
    fps: float = 25.0,
    codec: str = "libx264",
) -> Path:
    """Write a real video: frame i is a solid ``ORACLE_COLOURS[classes[i]]`` frame.

    Args:
        size: (width, height); fps: frame rate; codec: an ffmpeg encoder.
    """
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg (Debian: apt-get install ffmpeg; .ci/run installs it)")
    w, h = size
    frames = np.empty((len(classes), h, w, 3), np.uint8)
    for i, c in enumerate(classes):
        frames[i] = ORACLE_COLOURS[c]
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "-",
        "-c:v", codec, "-pix_fmt", "yuv420p", "-g", "10", "-an", str(path),
    ]
    subprocess.run(cmd, input=frames.tobytes(), check=True, capture_output=True, timeout=60)
    return path


def runs_of_classes(n: int, seed: int, lo: int = 3, hi: int = 7) -> list[int]:
    """``n`` class ids in runs of ``lo..hi`` equal frames, consecutive runs different."""
    rng = random.Random(seed)
    out: list[int] = []
    prev = -1
    while len(out) < n:
        c = rng.choice([k for k in range(len(ORACLE_COLOURS)) if k != prev])
        out += [c] * rng.randint(lo, hi)
        prev = c
    return out[:n]


# --------------------------------------------------------------------------- configs


def write_config(
    path: Path,
    *,
    sources: Sequence[dict[str, Any]],
    port_base: int,
    model: Path,
    labels: Path | None = None,
    workers: int = 1,
    top_k: int = 3,
    output_dir: Path | None = None,
    reorder_timeout_s: float = 5.0,
) -> Path:
    """Write a deployment YAML on ports ``port_base`` (events), +1 (sink), +2.. (frames).

    Needs a block of ``2 + len(sources)`` free ports. The dict is validated with
    :func:`stream.config.config_from_dict` before it is written.
    """
    from stream.config import config_from_dict

    data: dict[str, Any] = {
        "sources": [dict(s) for s in sources],
        "workers": {"count": workers},
        "model": {"path": str(model), "top_k": top_k,
                  **({"labels": str(labels)} if labels is not None else {})},
        "sink": {"events": f"tcp://127.0.0.1:{port_base}",
                 "reorder_timeout_s": reorder_timeout_s,
                 **({"output_dir": str(output_dir)} if output_dir is not None else {})},
        "transport": {"sink": f"tcp://127.0.0.1:{port_base + 1}",
                      "frames": f"tcp://127.0.0.1:{port_base + 2}"},
    }
    config_from_dict(data, str(path))
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path
