"""PURE: what a stream's labels say over time: smoothing and top-1 change detection.

With ``smoothing`` N > 1 the probability vectors of a stream's last N labelled frames are
averaged and ranked again (with the worker's own ranking, :func:`stream.model.runtime.top_ids`),
so one odd frame does not flip the class shown; ``change`` events follow the shown top-1.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.events import LabelEntry
from stream.model.runtime import top_ids
from stream.protocol import Result


def label_entries(names: Sequence[str], ids: Sequence[int],
                  scores: Sequence[float]) -> list[LabelEntry]:
    """``{id, name, score}`` entries; an id past the label list is named ``class <id>``."""
    n = len(names)
    return [{"id": int(i), "name": names[i] if 0 <= i < n else f"class {i}",
             "score": float(s)} for i, s in zip(ids, scores, strict=True)]


class Smoother:
    """The moving average of one stream's probability vectors (window ``n``)."""

    def __init__(self, n: int, top_k: int) -> None:
        self.n = n
        self.top_k = top_k
        self._window: deque[npt.NDArray[Any]] = deque()
        self._sum: npt.NDArray[np.float64] | None = None

    def reset(self) -> None:
        """Forget the window (a new capture session starts afresh)."""
        self._window.clear()
        self._sum = None

    def add(self, names: Sequence[str], res: Result) -> list[LabelEntry]:
        """Add one result; returns the top-k of the averaged probabilities, best first.

        A result without probabilities (a worker that sends only top-k) is shown as is.
        """
        if res.probs is None:
            return label_entries(names, res.ids, res.scores)
        p = np.frombuffer(res.probs, dtype="<f4")
        if self._sum is None or self._sum.shape != p.shape:
            self.reset()
            self._sum = np.zeros(p.shape, np.float64)
        self._window.append(p)
        self._sum += p
        if len(self._window) > self.n:
            self._sum -= self._window.popleft()
        mean = self._sum / len(self._window)
        top = top_ids(mean, min(self.top_k, mean.size))
        return label_entries(names, [int(i) for i in top], [float(mean[i]) for i in top])


class ChangeDetector:
    """Remembers one stream's shown top-1, and says when it changed."""

    def __init__(self) -> None:
        self.current: LabelEntry | None = None

    def update(self, shown: Sequence[LabelEntry]) -> tuple[LabelEntry | None, LabelEntry] | None:
        """``(previous, current)`` when the top-1 class changed (previous None the first
        time), else None."""
        if not shown:
            return None
        top = shown[0]
        previous = self.current
        # A copy, with the latest score: the next change reports it as ``previous``.
        self.current = LabelEntry(id=top["id"], name=top["name"], score=top["score"])
        if previous is not None and previous["id"] == top["id"]:
            return None
        return previous, top
