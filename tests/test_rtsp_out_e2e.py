"""`stream run` with ``sink.rtsp_out``: a real RTSP server receives every frame of a file
source, with the oracle's colour and the label panel on it, decoded by a real client.

The server is FFmpeg in listen mode (see ``test_rtsp_out.py``): it takes the sink's
publication, decodes it and writes each frame as raw BGR, which the test compares with the
colours the clip was made of.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import (
    ORACLE_COLOURS,
    find_free_port_base,
    make_clip,
    runs_of_classes,
    summary_row,
    video_frames,
    write_config,
)
from test_rtsp_out import H, Receiver, W


@pytest.mark.timeout(240)
def test_stream_run_publishes_every_frame_with_the_overlay(
        tmp_path: Path, oracle_model: tuple[Path, Path]) -> None:
    xml, labels = oracle_model
    classes = runs_of_classes(50, seed=11)
    clip = make_clip(tmp_path / "clip.mp4", classes, size=(W, H), fps=25)
    base = find_free_port_base(5)
    rx = Receiver(base + 4, "live/cam1", tmp_path / "rx.raw").start()
    try:
        cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                           sources=[{"id": "cam1", "url": str(clip)}])
        data = yaml.safe_load(cfg.read_text())
        data["sink"]["rtsp_out"] = f"rtsp://viewer:pa55@127.0.0.1:{base + 4}/live/{{stream}}"
        cfg.write_text(yaml.safe_dump(data, sort_keys=False))
        ran = subprocess.run([sys.executable, "-m", "stream", "run", str(cfg)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=180,
                             stdin=subprocess.DEVNULL)
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert rx.wait_exit(20) == 0, rx.log.read_text()  # the sink's TEARDOWN ended it
    finally:
        rx.kill()
    assert "pa55" not in ran.stderr + ran.stdout
    assert "rtsp://***:***@127.0.0.1" in ran.stderr  # the log says where it publishes
    frames = rx.read()
    assert len(frames) == len(classes)  # a file source: every frame, in order
    for seq, frame in enumerate(frames):
        diff = np.abs(frame.astype(int) - np.array(ORACLE_COLOURS[classes[seq]])).max(axis=2)
        assert diff[H // 2:, W // 2:].max() <= 16, f"#{seq}: not the clip's colour"
        assert (diff[: H // 6, : W // 4] > 48).mean() > 0.05, f"#{seq}: no label panel"


@pytest.mark.timeout(240)
def test_no_rtsp_server_costs_nothing_but_the_rtsp_frames(
        tmp_path: Path, oracle_model: tuple[Path, Path]) -> None:
    # Nobody listens on the RTSP port: every label and every file frame still arrives, the
    # outage is reported (exit code 1, the summary), and the password is never shown.
    xml, labels = oracle_model
    n = 40
    clip = make_clip(tmp_path / "clip.mp4", runs_of_classes(n, seed=12), size=(W, H))
    base = find_free_port_base(5)
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                       output_dir=tmp_path / "out", sources=[{"id": "cam1", "url": str(clip)}])
    data = yaml.safe_load(cfg.read_text())
    data["sink"]["rtsp_out"] = f"rtsp://viewer:pa55@127.0.0.1:{base + 4}/{{stream}}"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    ran = subprocess.run([sys.executable, "-m", "stream", "run", str(cfg)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert ran.returncode == 1, ran.stderr[-3000:]  # an output failed
    row = summary_row(ran.stdout, "cam1", ran.stderr)
    assert (row.captured, row.labelled) == (n, n)
    assert video_frames(tmp_path / "out" / "cam1.mp4") == n
    assert "output rtsp failed for stream cam1" in ran.stderr
    assert "cannot connect" in ran.stdout + ran.stderr
    assert "pa55" not in ran.stderr + ran.stdout
