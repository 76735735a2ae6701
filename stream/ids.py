"""PURE: the stream id rule and the one way to turn a wire value into a file path.

A stream id names a ZMQ topic and an output file, and it arrives from the network: every
receiver checks it against the same rule the config uses (DESIGN.md "Trust"), and any path
built from it goes through :func:`path_inside`, which refuses what would leave its folder.
"""

from __future__ import annotations

import re
from pathlib import Path

STREAM_ID_RULE = "1-64 characters of letters, digits, '_', '.' or '-', starting with a " \
    "letter or digit"
"""The id rule in words, for error messages."""

_STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def is_stream_id(value: object) -> bool:
    """Whether ``value`` is a valid stream id (see :data:`STREAM_ID_RULE`)."""
    return isinstance(value, str) and _STREAM_ID.fullmatch(value) is not None


def path_inside(folder: str | Path, name: str) -> Path:
    """``folder / name``, resolved, and refused unless it lies inside ``folder``.

    Args:
        folder: the directory the file must stay in.
        name: a file name made from a wire value (a stream id plus a suffix).

    Returns:
        The resolved path.

    Raises:
        ValueError: ``name`` is absolute, contains a separator or ``..``, or resolves (via
            symlinks) outside ``folder``.
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{name!r} is not a plain file name")
    base = Path(folder).resolve()
    path = (base / name).resolve()
    if path.parent != base:
        raise ValueError(f"{name!r} resolves to {path}, outside {base}")
    return path
