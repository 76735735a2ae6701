"""Sources at their own seam: the image folder and its unreadable files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.errors import SourceError
from stream.sources import ImageFolderSource, Unreadable

pytestmark = pytest.mark.timeout(30)


def test_unreadable_images_are_reported_not_hidden(tmp_path: Path) -> None:
    (tmp_path / "000.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    cv2.imwrite(str(tmp_path / "001.png"), np.full((30, 40, 3), 7, np.uint8))
    (tmp_path / "002.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image name: never listed")
    src = ImageFolderSource(str(tmp_path), fps=10.0)
    info = src.open()  # the first image that decodes gives the size
    assert (info.width, info.height, info.total_frames) == (40, 30, 3)
    items = [src.read() for _ in range(4)]
    assert items[0] == Unreadable("000.jpg") and items[2] == Unreadable("002.png")
    frame = items[1]
    assert isinstance(frame, tuple) and frame[0].shape == (30, 40, 3)
    assert frame[1] == pytest.approx(0.1)
    assert items[3] is None


def test_a_folder_of_nothing_decodable_is_a_source_error(tmp_path: Path) -> None:
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"junk")
    with pytest.raises(SourceError, match="none of the 2 images"):
        ImageFolderSource(str(tmp_path)).open()
