"""CPU per frame of the web view's output at 720p: nobody watching vs one MJPEG viewer.

Runs the real pieces in one process: frames of the generated 720p sample clip go through
the web output's runner (as the sink offers them), and the viewer is a real HTTP client
reading ``/streams/<id>.mjpg`` from the real server. Prints the CPU the process spent per
frame (all threads: output, server, client) and the output thread's own share, for both
cases. Figures from a shared machine are noisy: compare the two lines of one run.

    python scripts/web_cpu.py [--frames 300]
"""

from __future__ import annotations

import argparse
import http.client
import socket
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from stream.outputs.base import OutputFrame
from stream.samples import make_sample_clip
from stream.sink.http import start_web

LABELS = (("tabby, tabby cat", 0.71), ("tiger cat", 0.12), ("Egyptian cat", 0.05))


def frames_720p(n: int) -> list[np.ndarray]:
    with tempfile.TemporaryDirectory() as d:
        clip = make_sample_clip(Path(d) / "s.mp4", seconds=max(1.0, n / 30), fps=30)
        cap = cv2.VideoCapture(str(clip))
        out = []
        while len(out) < n:
            ok, img = cap.read()
            if not ok:
                break
            img.flags.writeable = False
            out.append(img)
        cap.release()
    return out


def watch(port: int, stop: threading.Event, got: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/streams/cam.mjpg")
    r = conn.getresponse()
    while not stop.is_set():
        line = r.fp.readline()
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
            r.fp.readline()
            r.fp.read(length)
            got[0] += 1
            got[1] += length
    r.close()
    conn.close()


def run(images: list[np.ndarray], viewer: bool) -> tuple[float, float, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serving = start_web(f"127.0.0.1:{port}", 8)
    _, runner = serving.output
    runner.start()
    web = serving.http.web
    stop, got = threading.Event(), [0, 0]
    t = None
    if viewer:
        # A first frame so the stream is known, then the viewer joins.
        runner.offer(OutputFrame("cam", 1, 0, 0.0, time.time(), images[0], LABELS, None,
                                 30.0, 30.0), wait=True)
        deadline = time.monotonic() + 5
        while not serving.http.known("cam") and time.monotonic() < deadline:
            time.sleep(0.01)
        t = threading.Thread(target=watch, args=(serving.http.port, stop, got), daemon=True)
        t.start()
        while not web.viewers() and time.monotonic() < deadline:
            time.sleep(0.01)
    encoded0 = web.encoded
    cpu0, wall0 = time.process_time(), time.monotonic()
    for i, img in enumerate(images):
        runner.offer(OutputFrame("cam", 1, i + 1, i / 30, time.time(), img, LABELS, None,
                                 30.0, 30.0), wait=True)  # wait: measure every frame
    runner.close()
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - wall0
    stop.set()
    serving.http.close()
    if t is not None:
        t.join(5)
    print(f"  wall {wall:.2f} s; frames encoded {web.encoded - encoded0}; viewer got {got[0]}"
          + (f" ({got[1] / got[0] / 1024:.0f} KiB/frame)" if got[0] else ""))
    return 1000 * cpu / len(images), wall, web.encoded - encoded0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    args = ap.parse_args()
    images = frames_720p(args.frames)
    print(f"{len(images)} frames of {images[0].shape[1]}x{images[0].shape[0]}")
    idle, _, _ = run(images, viewer=False)
    watched, _, enc = run(images, viewer=True)
    print(f"web output, nobody watching: {idle:.3f} ms CPU/frame (process)")
    print(f"web output, one viewer:      {watched:.3f} ms CPU/frame (process; {enc} frames "
          "drawn + JPEG-encoded + sent)")


if __name__ == "__main__":
    main()
