"""Write the real duration into a finished fragmented MP4's header, in place.

The video file output writes fragmented MP4 (``empty_moov``): the header (``moov``) is
written first, with a duration of 0, so what is written before a crash or a full disk
stays playable. Players that read the fragments find every frame, but a browser playing
the file progressively reports a duration one frame short (Chromium measured: 1.96 s for a
2.00 s file): it knows only where the last frame starts. Once the file is finished, its
length is known: this fills it in (``mvhd``, ``tkhd``, ``mdhd``), which makes Chromium
report the exact length (checked by ``tests/test_video_browser.py``). It changes a few
bytes of the header in place: no copy of the file, O(1) however long the recording, and
the file stays fragmented (the ``+faststart`` remux it replaces would rewrite it whole).

Only version-0 boxes (32-bit durations, which is what an ``empty_moov`` header holds) are
patched; a duration that does not fit 32 bits in a box's time scale (over 13.2 hours at
90 kHz) leaves that box at 0, and the file plays as before.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

_HEADER_LIMIT = 1 << 20
"""The moov of an empty_moov file is a few hundred bytes; never read more than this."""


def _boxes(data: bytes, start: int, end: int) -> list[tuple[int, int, bytes]]:
    """(offset, size, type) of each box in ``data[start:end]``."""
    found = []
    off = start
    while off + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, off)
        if size < 8 or off + size > end:
            break
        found.append((off, size, kind))
        off += size
    return found


def _child(data: bytes, box: tuple[int, int, bytes], kind: bytes) -> tuple[int, int, bytes] | None:
    off, size, _ = box
    return next((b for b in _boxes(data, off + 8, off + size) if b[2] == kind), None)


def _patch(f: BinaryIO, data: bytes, box: tuple[int, int, bytes] | None, scale_at: int | None,
           duration_at: int, seconds: float, scale: int | None = None) -> None:
    """Write ``seconds`` in the box's time scale at ``duration_at`` (version-0 boxes only)."""
    if box is None or data[box[0] + 8] != 0:
        return
    if scale is None:
        assert scale_at is not None
        scale = struct.unpack_from(">I", data, box[0] + scale_at)[0]
    value = round(seconds * scale)
    if 0 < value < 1 << 32:
        f.seek(box[0] + duration_at)
        f.write(struct.pack(">I", value))


def set_mp4_duration(path: Path, seconds: float) -> bool:
    """Write ``seconds`` as the duration of the MP4 at ``path`` (its moov must lead the file).

    Returns:
        True if the movie header was patched; False if the file has no leading moov (not
        an empty_moov MP4), nothing is changed then.

    Raises:
        OSError: the file cannot be read or written.
    """
    with open(path, "r+b") as f:
        head = f.read(_HEADER_LIMIT)
        moov = next((b for b in _boxes(head, 0, len(head)) if b[2] == b"moov"), None)
        if moov is None:
            return False
        mvhd = _child(head, moov, b"mvhd")
        if mvhd is None:
            return False
        movie_scale = struct.unpack_from(">I", head, mvhd[0] + 20)[0]
        # mvhd/mdhd v0: size, type, version+flags, created, modified, timescale, duration.
        _patch(f, head, mvhd, 20, 24, seconds)
        for trak in (b for b in _boxes(head, moov[0] + 8, moov[0] + moov[1])
                     if b[2] == b"trak"):
            # tkhd v0: ..., created, modified, track id, reserved, duration (movie scale).
            _patch(f, head, _child(head, trak, b"tkhd"), None, 28, seconds, movie_scale)
            mdia = _child(head, trak, b"mdia")
            if mdia is not None:
                _patch(f, head, _child(head, mdia, b"mdhd"), 20, 24, seconds)
    return True
