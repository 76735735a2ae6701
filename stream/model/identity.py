"""A model's identity on the wire: input size, number of classes and a short hash of the IR.

A worker announces it (``224x224/1000/3f2a9c01b7de``) and a capture compares it with what
it crops to, so a worker running another model is refused with one clear message instead
of its labels being silently mixed in with the others' (issue 9).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_IDENTITY = re.compile(r"([0-9]{1,5})x([0-9]{1,5})/([0-9]{1,7})/([0-9a-f]{12})")


def ir_digest(xml: str | Path) -> str:
    """The first 12 hex digits of the SHA-256 of the IR's .xml then .bin (streamed)."""
    h = hashlib.sha256()
    for path in (Path(xml), Path(xml).with_suffix(".bin")):
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:12]


def model_identity(width: int, height: int, classes: int, digest: str) -> str:
    """``WxH/classes/digest``, the text a worker announces."""
    return f"{width}x{height}/{classes}/{digest}"


def mismatch(expected_size: tuple[int, int], announced: str,
             expected_identity: str | None = None) -> str | None:
    """Why a worker announcing ``announced`` may not take this capture's crops (None: it may).

    Args:
        expected_size: (width, height) the capture crops to.
        announced: the worker's identity ("" from a worker that announces none: accepted on
            size alone, its crops are checked when they arrive).
        expected_identity: the full identity the capture expects, when it has the IR itself.
    """
    if not announced:
        return None
    match = _IDENTITY.fullmatch(announced)
    if match is None:
        return f"announces a malformed model identity {announced[:40]!r}"
    size = (int(match[1]), int(match[2]))
    if size != expected_size:
        return (f"runs a model with input {size[0]}x{size[1]}, but this capture crops "
                f"{expected_size[0]}x{expected_size[1]}: give every worker the same model "
                "(model.path) or set model.input_size")
    if expected_identity is not None and announced != expected_identity:
        return (f"runs model {announced}, but this deployment's is {expected_identity}: "
                "copy the same IR to every worker machine")
    return None
