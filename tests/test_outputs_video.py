"""The video file output, with real encoding checked by ffprobe and decoded back with PyAV.

Defects covered: 11 (a full disk left an unplayable file and no error), 12 (variable frame
rate and gaps played at the wrong speed), 13 (an existing read-only folder gave a
traceback), 16 (frames of another size were stretched). The full-disk and read-only tests
need real mounts (``mount -t tmpfs``): they run as root and skip with a reason otherwise.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from stream.errors import ConfigError
from stream.outputs.base import OutputFrame
from stream.outputs.runner import OutputRunner
from stream.outputs.video_file import VideoFileOutput, check_video_output

pytestmark = pytest.mark.skipif(shutil.which("ffprobe") is None,
                                reason="needs ffprobe on PATH (Debian: apt-get install ffmpeg)")

TICK = 1 / 90_000


def make_frame(stream: str, seq: int, image: np.ndarray, pts: float | None,
               ts: float = 0.0, session: int = 1, fps: float = 25.0,
               labels: tuple[tuple[str, float], ...] = ()) -> OutputFrame:
    image = image.copy()
    image.flags.writeable = False  # as the sink hands it: a view of the wire buffer
    return OutputFrame(stream, session, seq, pts, ts, image, labels, None, None, fps)


def numbered(i: int, w: int = 320, h: int = 240) -> np.ndarray:
    """A frame whose brightness encodes ``i`` (readable back after lossy coding)."""
    return np.full((h, w, 3), (i * 37) % 200 + 20, np.uint8)


def ffprobe(path: Path, *args: str) -> dict:
    res = subprocess.run(["ffprobe", "-v", "error", "-of", "json", *args, str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def frame_times(path: Path) -> list[float]:
    got = ffprobe(path, "-select_streams", "v:0", "-show_entries", "frame=pts_time")
    return [float(f["pts_time"]) for f in got["frames"]]


def decode_all(path: Path) -> list[np.ndarray]:
    """Every frame PyAV can decode, stopping at the first error (a truncated tail)."""
    frames: list[np.ndarray] = []
    with av.open(str(path)) as container, contextlib.suppress(av.error.FFmpegError):
        for f in container.decode(video=0):
            frames.append(f.to_ndarray(format="bgr24"))
    return frames


def write_all(out: VideoFileOutput, frames: list[OutputFrame]) -> None:
    for f in frames:
        out.write(f)
    out.end_stream(frames[0].stream)
    out.close()


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at ``path`` (root only), always unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (a full or read-only filesystem)")
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                         capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], timeout=30)


def test_h264_file_has_every_frame_and_plays(tmp_path: Path) -> None:
    out = VideoFileOutput(str(tmp_path), draw=True)
    n = 60
    write_all(out, [make_frame("cam1", i, numbered(i), i / 25, labels=(("cat", 0.9),))
                    for i in range(n)])
    path = tmp_path / "cam1.mp4"
    info = ffprobe(path, "-count_frames", "-show_entries",
                   "stream=codec_name,pix_fmt,width,height,nb_read_frames")["streams"][0]
    assert info["codec_name"] == "h264"
    assert info["pix_fmt"] == "yuv420p"
    assert (info["width"], info["height"]) == (320, 240)
    assert int(info["nb_read_frames"]) == n
    decoded = decode_all(path)
    assert len(decoded) == n
    # Content in order (measured away from the label panel in the top-left corner).
    levels = [int(f[200:, 200:].mean()) for f in decoded]
    assert all(abs(lv - ((i * 37) % 200 + 20)) <= 3 for i, lv in enumerate(levels)), levels
    # The label panel is drawn (darkened corner) on the file's frames.
    assert decoded[3][:20, :40].mean() < 0.6 * ((3 * 37) % 200 + 20)


def x264_options(path: Path) -> str:
    """The settings libx264 wrote into the stream (its SEI message: ``cabac=0 ref=1 ...``)."""
    data = path.read_bytes()
    start = data.index(b"options: ")
    return data[start:data.index(b"\x00", start)].decode("ascii", "replace")


@pytest.mark.parametrize(("preset", "expected"), [
    (None, ("cabac=0", "ref=1", "subme=0")),  # the default: ultrafast
    ("ultrafast", ("cabac=0", "ref=1", "subme=0")),
    ("superfast", ("cabac=1", "ref=1", "subme=1")),
    ("veryfast", ("cabac=1", "ref=1", "subme=2")),
])
def test_the_h264_preset_reaches_the_encoder(tmp_path: Path, preset: str | None,
                                             expected: tuple[str, ...]) -> None:
    from stream.config.sink import SinkConfig
    from stream.sink.role import video_output

    # the output the sink builds from the config (its default included)
    cfg = SinkConfig(output_dir=str(tmp_path), **({"h264_preset": preset} if preset else {}))
    out = video_output(cfg, str(tmp_path))
    write_all(out, [make_frame("cam1", i, numbered(i), i / 25) for i in range(10)])
    options = x264_options(tmp_path / "cam1.mp4").split()
    assert all(e in options for e in expected), options


@pytest.mark.parametrize("clock", ["pts", "ts"])
def test_variable_frame_rate_and_gaps_keep_the_source_timing(tmp_path: Path,
                                                             clock: str) -> None:
    # 1 s at 25 fps, a 5 s gap, then 2 s at 10 fps (defect 12: the old writer used one
    # nominal rate, so the gap vanished and each section played at the wrong speed).
    times = [i / 25 for i in range(26)] + [6.0 + i / 10 for i in range(21)]
    wall = 1_700_000_000.0
    frames = [make_frame("vfr", i, numbered(i), t if clock == "pts" else None, ts=wall + t)
              for i, t in enumerate(times)]
    write_all(VideoFileOutput(str(tmp_path), draw=False), frames)
    path = tmp_path / "vfr.mp4"
    got = frame_times(path)
    assert len(got) == len(times)
    pairs = list(zip(got, times, strict=True))
    assert max(abs(g - t) for g, t in pairs) <= TICK + 1e-6, pairs
    duration = float(ffprobe(path, "-show_entries", "format=duration")["format"]["duration"])
    assert abs(duration - (times[-1] + 0.1)) <= 2 * TICK + 1e-6  # the last frame lasts 1/10 s


def test_non_increasing_timestamps_do_not_break_the_file(tmp_path: Path) -> None:
    # Repeated, slightly backwards, and a source clock that restarted (100 s -> 0 s).
    times = [0.0, 0.04, 0.04, 0.03, 0.08, 100.0, 100.04, 0.0, 0.04, 0.08]
    frames = [make_frame("odd", i, numbered(i), t) for i, t in enumerate(times)]
    write_all(VideoFileOutput(str(tmp_path), draw=False), frames)
    got = frame_times(tmp_path / "odd.mp4")
    assert len(got) == len(times)
    assert all(b > a for a, b in itertools.pairwise(got)), got
    assert got[-1] - got[-3] == pytest.approx(0.08, abs=2 * TICK)  # re-based, pace kept
    assert got[-3] - got[-4] < 1.0  # the restart does not leave a 100 s hole


def test_each_session_gets_its_own_file(tmp_path: Path) -> None:
    out = VideoFileOutput(str(tmp_path), draw=False)
    for session, n in ((1, 5), (2, 7)):
        for i in range(n):
            out.write(make_frame("cam", i, numbered(i), i / 25, session=session))
        out.end_stream("cam")
    out.write(make_frame("cam", 0, numbered(0), 0.0, session=3))  # no end_stream: close ends it
    out.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.mp4", "cam~2.mp4", "cam~3.mp4"]
    assert len(decode_all(tmp_path / "cam.mp4")) == 5
    assert len(decode_all(tmp_path / "cam~2.mp4")) == 7
    assert len(decode_all(tmp_path / "cam~3.mp4")) == 1


def test_a_frame_of_another_aspect_ratio_is_letterboxed_not_stretched(tmp_path: Path) -> None:
    first = np.full((360, 640, 3), 128, np.uint8)  # 16:9 sets the file's size
    square = np.full((360, 360, 3), 128, np.uint8)  # 1:1 with a circle in the middle
    cv2.circle(square, (180, 180), 100, (255, 255, 255), -1)
    frames = [make_frame("lb", 0, first, 0.0), make_frame("lb", 1, square, 0.04)]
    write_all(VideoFileOutput(str(tmp_path), draw=False), frames)
    decoded = decode_all(tmp_path / "lb.mp4")
    assert len(decoded) == 2
    img = decoded[1].astype(int).mean(axis=2)
    assert img.shape == (360, 640)
    assert img[:, :130].max() < 30 and img[:, 510:].max() < 30  # black bars left and right
    assert abs(img[:, 150:490].mean() - img[:, 140:500].mean()) < 20  # content in the middle
    ys, xs = np.nonzero(img > 200)
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert abs(width - height) <= 4, (width, height)  # a circle, not an ellipse 1.78x wide
    assert abs((xs.max() + xs.min()) / 2 - 320) <= 2 and abs((ys.max() + ys.min()) / 2 - 180) <= 2


@pytest.mark.parametrize(("container", "codec"), [("mp4", "mp4v"), ("avi", "MJPG"),
                                                  ("mkv", "h264")])
def test_other_codecs_and_containers_write_playable_files(tmp_path: Path, container: str,
                                                          codec: str) -> None:
    check_video_output(str(tmp_path), container, codec)
    assert list(tmp_path.iterdir()) == []  # the probe cleaned up after itself
    out = VideoFileOutput(str(tmp_path), container, codec, draw=True)
    write_all(out, [make_frame("c", i, numbered(i), i / 25) for i in range(12)])
    assert len(decode_all(tmp_path / f"c.{container}")) == 12


def test_h264_in_avi_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mp4 or mkv"):
        check_video_output(str(tmp_path), "avi", "h264")


def test_a_full_disk_is_reported_once_and_the_file_stays_playable(tmp_path: Path) -> None:
    # Defect 11: on a 2 MB filesystem the old writer said "written 150", exit 0, and left a
    # 2,097,152-byte file without its moov atom.
    rng = np.random.default_rng(7)
    noise = [rng.integers(0, 256, (720, 1280, 3), np.uint8) for _ in range(4)]
    with tmpfs(tmp_path / "small", "size=2m") as folder:
        runner = OutputRunner(VideoFileOutput(str(folder), draw=True), queue_size=4)
        runner.start()
        for i in range(150):
            runner.offer(make_frame("cam1", i, noise[i % 4], i / 25), wait=True)
        runner.close(timeout_s=60)
        errors = runner.take_errors()
        counts = runner.counts("cam1")
        path = folder / "cam1.mp4"
        assert len(errors) == 1, errors
        stream, message = errors[0]
        assert stream == "cam1"
        assert message.startswith(f"disk full writing {path}: "), message
        size = path.stat().st_size
        assert f"{size:,} bytes written before it" in message
        assert counts["written"] + counts["failed"] == 150
        assert counts["failed"] >= 1 and counts["queue_full"] == 0
        kept = decode_all(path)
        probed = ffprobe(path, "-count_frames", "-show_entries", "stream=nb_read_frames")
        assert 0 < len(kept) <= counts["written"]
        assert int(probed["streams"][0]["nb_read_frames"]) >= len(kept)


@pytest.mark.parametrize("codec", ["h264", "mp4v"])
def test_write_raises_a_clear_oserror_on_a_full_disk(tmp_path: Path, codec: str) -> None:
    # mp4v goes through OpenCV, which swallows write errors: the output watches free space.
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (720, 1280, 3), np.uint8)
    with tmpfs(tmp_path / "tiny", "size=1m") as folder:
        out = VideoFileOutput(str(folder), codec=codec, draw=False)
        with pytest.raises(OSError, match=r"^disk full writing .*tiny/d\.mp4: [\d,]+ bytes"):
            for i in range(150):
                out.write(make_frame("d", i, np.roll(image, i, axis=1), i / 25))
        with pytest.raises(OSError, match="stopped after an earlier error"):
            out.write(make_frame("d", 150, image, 6.0))  # the partial file is left alone
        out.end_stream("d")  # must not raise: the error was reported by write
        out.close()


@pytest.mark.parametrize("sub", ["", "to/be/made"])
def test_a_read_only_folder_is_a_config_error_not_a_traceback(tmp_path: Path,
                                                              sub: str) -> None:
    # Defect 13: an EXISTING read-only folder raised OSError [Errno 30] out of the check.
    with tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        target = folder / sub if sub else folder
        with pytest.raises(ConfigError) as info:
            check_video_output(str(target), "mp4", "h264")
        message = str(info.value)
        assert message.startswith(f"cannot write videos into {target}: Read-only file system")
        assert "sink.output_dir" in message


def test_segments_start_every_n_seconds_and_together_hold_every_frame(tmp_path: Path) -> None:
    wall = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    n = 130  # 5.2 s at 25 fps: segments of 2 s hold 50, 50 and 30 frames
    out = VideoFileOutput(str(tmp_path), draw=False, segment_s=2.0)
    write_all(out, [make_frame("cam", i, numbered(i), i / 25, ts=wall + i / 25)
                    for i in range(n)])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["cam@20270115T080000Z.mp4", "cam@20270115T080002Z.mp4",
                     "cam@20270115T080004Z.mp4"]
    decoded = []
    for name, count in zip(names, (50, 50, 30), strict=True):
        info = ffprobe(tmp_path / name, "-count_frames", "-show_entries",
                       "stream=codec_name,nb_read_frames")["streams"][0]
        assert (info["codec_name"], int(info["nb_read_frames"])) == ("h264", count)
        assert frame_times(tmp_path / name)[0] == 0.0  # each segment timed from its start
        decoded += decode_all(tmp_path / name)
    levels = [int(f[100:, 100:].mean()) for f in decoded]
    assert len(levels) == n
    assert all(abs(lv - ((i * 37) % 200 + 20)) <= 3 for i, lv in enumerate(levels)), levels


def test_segments_starting_within_one_second_never_overwrite(tmp_path: Path) -> None:
    # A file source read faster than real time: media time runs 25x faster than the
    # wall clock, so several segments start within one wall second.
    out = VideoFileOutput(str(tmp_path), draw=False, segment_s=1.0)
    write_all(out, [make_frame("f", i, numbered(i), i / 25, ts=1_800_000_000.0 + i / 625)
                    for i in range(60)])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["f@20270115T080000Z-2.mp4", "f@20270115T080000Z-3.mp4",
                     "f@20270115T080000Z.mp4"]
    assert sum(len(decode_all(tmp_path / name)) for name in names) == 60
