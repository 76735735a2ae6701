"""The lifecycle pieces `stream run` and every role share (stream/runtime.py): refused
messages counted and logged once per (peer, reason), never a flood."""

from __future__ import annotations

import logging

import pytest

from stream.runtime import Rejections

LOGGER = "test.rejections"


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_each_peer_and_reason_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    reject = Rejections(logging.getLogger(LOGGER))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(50):
            reject("bad stream id from peer A", key=("A", "bad_id"))
        for _ in range(20):
            reject("oversized frame from peer A", key=("A", "too_big"))
        for _ in range(30):
            reject("bad stream id from peer B", key=("B", "bad_id"))
    assert _logged(caplog) == [
        "rejected message #1: bad stream id from peer A",
        "rejected message #51: oversized frame from peer A",
        "rejected message #71: bad stream id from peer B",
    ]
    assert reject.count == 100
    assert reject.by_key == {("A", "bad_id"): 50, ("A", "too_big"): 20, ("B", "bad_id"): 30}


def test_without_a_key_the_first_ten_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The old call `rejections(why)` keeps working as before."""
    reject = Rejections(logging.getLogger(LOGGER))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for i in range(25):
            reject(f"malformed #{i}")
    assert len(_logged(caplog)) == 10
    assert reject.count == 25 and reject.by_key == {}


def test_a_flood_stays_visible_and_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """A peer inventing new keys cannot grow memory or the log without end."""
    reject = Rejections(logging.getLogger(LOGGER))
    n = Rejections.MAX_KEYS + 1500
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for i in range(n):
            reject(f"junk {i}", key=("peer", i))
    assert len(reject.by_key) == Rejections.MAX_KEYS
    logged = _logged(caplog)
    # One line per remembered key, plus the thousandths past them (#2000 is the only one).
    assert len(logged) == Rejections.MAX_KEYS + 1
    assert logged[-1] == "rejected message #2000: junk 1999"
    assert reject.count == n
