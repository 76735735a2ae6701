"""Print what each encoding output costs per frame at 720p, and the file sizes.

Runs the sample clip (``stream.samples``: 10 s of 720p at 30 fps) through, in this one
process and one after the other:

- the video file output, H.264 (libx264 ``ultrafast``: the default, ``superfast``,
  ``veryfast``; ``sink.h264_preset``) and ``mp4v`` (OpenCV), with each file's size and
  PSNR against the source (lower half of the picture: the panel is drawn at the top);
- RTSP out (libx264 ``ultrafast`` + ``zerolatency``, the default, and ``superfast``) to a
  real RTSP server, ``ffmpeg -rtsp_flags listen`` saving what it receives (its size is
  the stream's bitrate).

CPU is this process's (every thread, so libx264's own threads count), divided by frames;
the label panel is drawn as in a run. Machines differ and a shared box is noisy: compare
the rows of one run, not runs.

    python scripts/output_costs.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

from stream.outputs.base import OutputFrame
from stream.outputs.rtsp_out import RtspOutput
from stream.outputs.video_file import VideoFileOutput
from stream.samples import make_sample_clip


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def frames_of(clip: Path) -> list[OutputFrame]:
    out = []
    with av.open(str(clip)) as c:
        for i, f in enumerate(c.decode(video=0)):
            image = f.to_ndarray(format="bgr24")
            image.flags.writeable = False
            out.append(OutputFrame("cam", 1, i, i / 30, 0.0, image, (("tabby cat", 0.91),
                                   ("tiger cat", 0.05)), None, 30.0, 30.0))
    return out


def psnr(frames: list[OutputFrame], path: Path) -> float:
    """Mean PSNR of the written file against the frames, on the lower half of the picture
    (the label panel is drawn at the top and is not in the source)."""
    import numpy as np

    total, n = 0.0, 0
    with av.open(str(path)) as c:
        for f, src in zip(c.decode(video=0), frames, strict=False):
            h = src.image.shape[0] // 2
            got = f.to_ndarray(format="bgr24")[h:].astype(np.float64)
            err = np.mean((got - src.image[h:].astype(np.float64)) ** 2)
            total += 10 * np.log10(255.0**2 / max(err, 1e-10))
            n += 1
    return total / max(n, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(name: str, output: object, frames: list[OutputFrame]) -> float:
    t0, w0 = cpu(), time.monotonic()
    for f in frames:
        output.write(f)  # type: ignore[attr-defined]
    output.end_stream("cam")  # type: ignore[attr-defined]
    output.close()  # type: ignore[attr-defined]
    ms = 1000 * (cpu() - t0) / len(frames)
    print(f"{name:32s} {ms:6.2f} ms CPU/frame   ({time.monotonic() - w0:5.2f} s wall)")
    return ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    if shutil.which("ffmpeg") is None:
        print("needs ffmpeg (the RTSP receiver)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        frames = frames_of(make_sample_clip(d / "sample.mp4", seconds=args.seconds))
        print(f"{len(frames)} frames of {frames[0].image.shape[1]}x{frames[0].image.shape[0]}")
        files = [("h264", p) for p in ("ultrafast", "superfast", "veryfast")] + [("mp4v", "")]
        for codec, preset in files:
            name = f"{codec}-{preset}" if preset else codec
            out = VideoFileOutput(str(d / name), codec=codec, **({"preset": preset}
                                                                  if preset else {}))
            run(f"file {name}", out, frames)
            path = d / name / "cam.mp4"
            print(f"{'':32s} file size {path.stat().st_size / 1e6:.2f} MB, "
                  f"PSNR {psnr(frames, path):.1f} dB (lower half, against the source)")
        for preset in ("ultrafast", "superfast"):
            port = free_port()
            rx = subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", "-rtsp_flags", "listen",
                                   "-i", f"rtsp://127.0.0.1:{port}/cam", "-c", "copy",
                                   "-f", "matroska", str(d / f"rtsp-{preset}.mkv")])
            try:
                time.sleep(1.0)  # a benchmark, not a test: give the listener time to bind
                out = RtspOutput(f"rtsp://127.0.0.1:{port}/{{stream}}", preset=preset)
                run(f"rtsp {preset}", out, frames)
                rx.wait(10)  # the TEARDOWN ends the one-shot listener
                size = (d / f"rtsp-{preset}.mkv").stat().st_size
                print(f"{'':32s} received {size / 1e6:.2f} MB")
            finally:
                if rx.poll() is None:
                    rx.kill()
                    rx.wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
