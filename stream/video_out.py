"""Transitional: ``check_video_output`` moved to :mod:`stream.outputs.video_file`.

Kept only so ``stream.cli`` imports it from here until the integration step removes this
module.
"""

from __future__ import annotations

from stream.outputs.video_file import check_video_output

__all__ = ["check_video_output"]
