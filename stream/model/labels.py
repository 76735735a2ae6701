"""Class display names: the shipped ImageNet-1k list or any one-name-per-line label file."""

from __future__ import annotations

import os
import re
from pathlib import Path

from stream.errors import ModelError

IMAGENET_LABELS = Path(__file__).with_name("imagenet_2012.txt")
_SYNSET = re.compile(r"^n\d{8}\s+(.+)$")


def display_name(line: str) -> str:
    """`n02123045 tabby, tabby cat` -> `tabby`; a plain line is returned stripped."""
    text = line.strip()
    match = _SYNSET.match(text)
    if match:
        return match.group(1).split(",")[0].strip()
    return text


def load_labels(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Load class display names, index = class id.

    Args:
        path: a label file (ImageNet synset lines `nXXXXXXXX name, synonym, ...` or one
            name per line); None for the shipped ImageNet-1k list (1000 classes).
    Raises:
        ModelError: the file cannot be read or holds no labels.
    """
    source = Path(path) if path is not None else IMAGENET_LABELS
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read labels from {str(source)!r} ({exc})") from None
    while lines and not lines[-1].strip():
        lines.pop()  # a trailing newline is not a class
    if not lines:
        raise ModelError(f"label file {str(source)!r} is empty; expected one class per line")
    return [display_name(line) for line in lines]
