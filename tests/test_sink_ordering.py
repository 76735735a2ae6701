"""The sink's pure ordering part (stream/sink/ordering.py), driven by an explicit clock.

Every count asserted here is set up by the test itself (how many frames it sent, which
ones it labelled), never read back from what the ordering computed for itself.
"""

from __future__ import annotations

import pytest

from stream.protocol import Drop, Eos, Frame, Hello, Result
from stream.sink.ordering import MAX_AHEAD, Ordering, Outcome, Refused, SessionEnded

pytestmark = pytest.mark.timeout(30)

IMG = bytes(4 * 4 * 3)


def hello(stream: str, policy: str = "wait", seq: int = 0, total: int | None = None) -> Hello:
    return Hello(stream, "file" if policy == "wait" else "rtsp", 25.0, 4, 4, total,
                 "x.mp4", policy, seq)


def frame(seq: int, stream: str = "a", image: bool = False) -> Frame:
    return Frame(stream, seq, seq / 25, 100.0 + seq, 4, 4, IMG if image else None)


def result(seq: int, stream: str = "a") -> Result:
    return Result(stream, seq, 100.0 + seq, "w", (1, 0), (0.9, 0.1), 10.0)


def outcomes(released: list[Outcome | SessionEnded]) -> list[Outcome]:
    return [o for o in released if isinstance(o, Outcome)]


def labelled(released: list[Outcome | SessionEnded], stream: str) -> list[int]:
    return [o.seq for o in outcomes(released) if o.stream == stream and o.result is not None]


def test_a_restart_of_one_stream_never_touches_another_streams_frames() -> None:
    """Defect 3: a new session of `a` used to force out every stream's pending frames as
    `capture_restarted`, so lossless `b` lost its in-flight frames and its labels became
    `late`. Now `b` ends with every one of the frames the test sent, labelled."""
    o = Ordering(timeout_s=1.0)
    out: list[Outcome | SessionEnded] = []
    out += o.handle(hello("a"), 0.0)
    out += o.handle(hello("b"), 0.0)
    for seq in range(4):
        out += o.handle(frame(seq, "a"), 0.0)
    for seq in range(10):  # b: ten frames in flight, no result yet
        out += o.handle(frame(seq, "b"), 0.0)
    out += o.release(0.5)
    # a's capture restarts (its seq goes back to 0) while b's labels are still coming
    out += o.handle(hello("a"), 1.0)
    for seq in range(10):
        out += o.handle(result(seq, "b"), 2.0)
    out += o.handle(Eos("b", 10, "end"), 2.0)
    out += o.release(2.0)
    assert labelled(out, "b") == list(range(10))
    b = o.streams["b"].stats
    assert (b.labelled, dict(b.dropped), b.late, b.captured) == (10, {}, 0, 10)
    # a's old session: its own four pending frames, and only those, were given up
    a_drops = [(x.seq, x.reason) for x in outcomes(out) if x.stream == "a"]
    assert a_drops == [(s, "capture_restarted") for s in range(4)]
    assert [x for x in out if isinstance(x, SessionEnded)] == [
        SessionEnded("a", 1, restarted=True), SessionEnded("b", 1, restarted=False)]


def test_a_restart_does_not_time_out_a_live_streams_frames_either() -> None:
    o = Ordering(timeout_s=5.0)
    o.handle(hello("live", policy="drop"), 0.0)
    o.handle(hello("a"), 0.0)
    o.handle(frame(0, "live"), 0.0)
    o.handle(frame(0, "a"), 0.0)
    o.handle(hello("a"), 1.0)  # a restarts
    o.handle(result(0, "live"), 1.5)
    assert labelled(o.release(1.5), "live") == [0]
    assert o.streams["live"].stats.dropped == {}


def test_without_an_eos_captured_is_unknown_not_labelled_plus_dropped() -> None:
    """Defect 9: `captured` used to fall back to labelled + dropped, which made the
    invariant true by construction. Only the capture's own count (eos) is taken."""
    o = Ordering(timeout_s=1.0)
    for seq in range(3):
        o.handle(frame(seq), 0.0)
        o.handle(result(seq), 0.0)
    o.release(0.0)
    o.release(0.0, force="shutdown")
    st = o.streams["a"].stats
    assert st.labelled == 3
    assert st.captured is None
    # the capture's eos says it issued 5: two frames never reached this sink
    o.handle(Eos("a", 5, "end"), 1.0)
    o.release(3.0)
    assert st.captured == 5 and st.dropped == {"lost": 2}


def test_captured_counts_from_where_a_sink_started_mid_stream() -> None:
    o = Ordering(timeout_s=1.0)
    o.handle(hello("cam", policy="drop", seq=500), 0.0)
    for seq in (500, 501):
        o.handle(frame(seq, "cam"), 0.0)
        o.handle(result(seq, "cam"), 0.0)
    o.handle(Eos("cam", 502, "end"), 0.0)
    assert labelled(o.release(0.0), "cam") == [500, 501]
    assert o.streams["cam"].stats.captured == 2


def test_results_after_their_seq_was_released_are_counted_late() -> None:
    o = Ordering(timeout_s=1.0)
    o.handle(hello("cam", policy="drop"), 0.0)
    o.handle(frame(0, "cam"), 0.0)
    o.handle(frame(1, "cam"), 0.0)
    o.handle(result(1, "cam"), 0.0)
    out = o.release(1.0)
    assert [(x.seq, x.reason) for x in outcomes(out)] == [(0, "worker_lost"), (1, None)]
    o.handle(result(0, "cam"), 1.1)
    o.handle(result(0, "cam"), 1.2)
    st = o.streams["cam"].stats
    assert (st.late, st.labelled, dict(st.dropped)) == (2, 1, {"worker_lost": 1})


def test_the_full_image_may_arrive_after_the_result() -> None:
    """Frames with images come on the capture's video socket, results from workers: the
    result often wins. The entry waits for its image (lossless: for ever)."""
    o = Ordering(timeout_s=1.0)
    o.handle(hello("a"), 0.0)
    o.handle(result(0), 0.0)
    assert o.release(50.0) == []
    o.handle(frame(0, image=True), 50.0)
    (out,) = o.release(50.0)
    assert isinstance(out, Outcome) and out.result is not None
    assert out.frame is not None and out.frame.image is not None


def test_a_live_stream_waits_for_the_image_until_the_timeout_then_labels_without() -> None:
    o = Ordering(timeout_s=1.0)
    o.handle(hello("cam", policy="drop"), 0.0)
    o.handle(result(0, "cam"), 0.0)
    o.handle(result(1, "cam"), 0.0)
    o.handle(frame(1, "cam", image=True), 0.5)
    assert o.release(0.9) == []
    out = outcomes(o.release(1.0))
    assert [(x.seq, x.result is not None, x.frame is not None) for x in out] == [
        (0, True, False), (1, True, True)]
    o.handle(frame(0, "cam", image=True), 1.1)  # too late to be shown
    assert o.streams["cam"].stats.late_frames == 1


def test_a_drop_waits_for_its_frame_so_the_video_keeps_it() -> None:
    o = Ordering(timeout_s=1.0)
    o.handle(hello("a"), 0.0)
    o.handle(Drop("a", 0, None, 1.0, "video_busy"), 0.0)
    assert o.release(10.0) == []
    o.handle(frame(0, image=True), 10.0)
    (out,) = outcomes(o.release(10.0))
    assert out.reason == "video_busy" and out.frame is not None


def test_lossless_never_times_out_a_missing_result_live_does() -> None:
    o = Ordering(timeout_s=1.0)
    o.handle(hello("file"), 0.0)
    o.handle(hello("cam", policy="drop"), 0.0)
    o.handle(frame(0, "file"), 0.0)
    o.handle(frame(0, "cam"), 0.0)
    out = outcomes(o.release(100.0))
    assert [(x.stream, x.reason) for x in out] == [("cam", "worker_lost")]
    o.handle(result(0, "file"), 100.0)
    assert labelled(o.release(100.0), "file") == [0]


def test_a_gap_is_given_up_at_once_after_one_timeout() -> None:
    o = Ordering(timeout_s=1.0)
    o.handle(hello("a", total=101), 0.0)
    o.handle(frame(100), 0.0)
    o.handle(result(100), 0.0)
    o.handle(Eos("a", 101, "end"), 0.0)
    assert o.release(0.9) == []
    out = o.release(1.0)
    gap, label, end = out
    assert isinstance(gap, Outcome) and (gap.seq, gap.count, gap.reason) == (0, 100, "lost")
    assert isinstance(label, Outcome) and label.seq == 100 and label.result is not None
    assert end == SessionEnded("a", 1, restarted=False)
    assert o.streams["a"].stats.captured == 101 == 100 + 1


def test_a_bogus_far_ahead_seq_is_refused() -> None:
    o = Ordering(timeout_s=1.0)
    o.handle(frame(0), 0.0)
    with pytest.raises(Refused):
        o.handle(frame(MAX_AHEAD + 1), 0.0)
    assert list(o.streams["a"].pending) == [0]


def test_force_without_eos_stops_at_the_last_known_seq() -> None:
    o = Ordering(timeout_s=1.0)
    o.handle(frame(0), 0.0)
    o.handle(frame(2), 0.0)
    o.handle(result(2), 0.0)
    out = outcomes(o.release(0.0, force="shutdown"))
    assert [(x.seq, x.count, x.reason) for x in out] == [
        (0, 1, "shutdown"), (1, 1, "shutdown"), (2, 1, None)]
    assert o.streams["a"].next_seq == 3


def test_results_of_a_stream_never_announced_are_not_turned_into_lost_frames() -> None:
    """A sink started mid-stream gets results before the first stamp: it must not declare
    the seqs before them lost, nor hold results for ever."""
    o = Ordering(timeout_s=1.0)
    o.handle(result(5000), 0.0)
    assert o.release(100.0) == []
    o.handle(frame(5000), 100.0)
    assert labelled(o.release(100.0), "a") == [5000]
    assert o.streams["a"].stats.dropped == {}
    o.handle(result(7, "x"), 0.0)  # a stream that never sends a frame
    assert o.release(200.0, force="shutdown") == []
    assert o.streams["x"].stats.late == 1 and o.streams["x"].stats.resolved == 0


@pytest.mark.parametrize("policy", ["wait", "drop"])
def test_full_frames_and_labels_before_the_hello_are_not_a_restart(policy: str) -> None:
    """Full frames come on the capture's video link, the hello on its control link: the
    sink may see frames 0..4 (and release them with their labels) before the hello of
    seq 0. That is the same session, not a capture restart (seen in e2e runs)."""
    o = Ordering(timeout_s=1.0)
    out: list[Outcome | SessionEnded] = []
    for seq in range(5):
        out += o.handle(frame(seq, image=True), 0.0)
        out += o.handle(result(seq), 0.0)
    out += o.release(0.0)
    out += o.handle(hello("a", policy, 0, total=8), 0.1)
    for seq in range(5, 8):
        out += o.handle(frame(seq, image=True), 0.2)
        out += o.handle(result(seq), 0.2)
    out += o.handle(Eos("a", 8, "end"), 0.3)
    out += o.release(0.3)
    assert labelled(out, "a") == list(range(8))
    assert not [r for r in out if isinstance(r, SessionEnded) and r.restarted]
    assert len(o.streams["a"].stats.sessions) == 1


def test_a_reconnect_hello_behind_full_frames_is_not_a_restart_but_seq_going_back_is() -> None:
    """A live reconnect announces the next seq (10); full frames 10..12 may beat it. A
    capture that restarts announces a seq behind a stamp already seen: a new session."""
    o = Ordering(timeout_s=1.0)
    out: list[Outcome | SessionEnded] = []
    out += o.handle(hello("a", "drop"), 0.0)
    for seq in range(10):
        out += o.handle(frame(seq), 0.0)  # stamps on the control link
        out += o.handle(result(seq), 0.0)
    for seq in range(10, 13):
        out += o.handle(frame(seq, image=True), 0.1)
    out += o.handle(hello("a", "drop", seq=10), 0.1)
    assert len(o.streams["a"].stats.sessions) == 1
    out += o.handle(Drop("a", 13, None, 113.0, "busy"), 0.2)
    out += o.handle(frame(13), 0.2)
    out += o.handle(hello("a", "drop", seq=0), 0.3)  # the capture process restarted
    assert len(o.streams["a"].stats.sessions) == 2


def test_full_frames_wait_for_the_hello_that_says_the_stream_is_a_file() -> None:
    """Released before the hello, a file's first frames were taken for live ones (their
    video output was not waited for: `queue_full` on a file, seen in e2e runs). They are
    held until the hello comes, or, for a sink that joined mid-stream and never gets a
    hello, until the reorder timeout."""
    o = Ordering(timeout_s=1.0)
    early = []
    for seq in range(3):
        early += o.handle(frame(seq, image=True), 0.0)
        early += o.handle(result(seq), 0.0)
    early += o.release(0.5)
    assert outcomes(early) == []
    later = o.handle(hello("a", "wait", 0, total=3), 0.6) + o.release(0.6)
    assert labelled(later, "a") == [0, 1, 2]
    assert o.streams["a"].lossless
    joined = Ordering(timeout_s=1.0)
    for seq in range(100, 103):
        joined.handle(frame(seq, image=True), 0.0)
        joined.handle(result(seq), 0.0)
    assert outcomes(joined.release(0.5)) == []
    assert labelled(joined.release(1.0), "a") == [100, 101, 102]


def test_a_restart_seen_only_through_full_frames_before_any_release_is_a_new_session() -> None:
    """A file capture killed after 5 full frames (video link, nothing released yet) and
    restarted: its new hello (seq 0) comes in the same burst. That is a new session, or the
    new frames would take the old ones' places and their labels count as late."""
    o = Ordering(timeout_s=1.0)
    out: list[Outcome | SessionEnded] = []
    out += o.handle(hello("a", "wait", 0, total=5), 0.0)
    for seq in range(5):
        out += o.handle(frame(seq, image=True), 0.0)
        out += o.handle(result(seq), 0.0)
    out += o.handle(hello("a", "wait", 0, total=4), 0.0)
    for seq in range(4):
        out += o.handle(frame(seq, image=True), 0.0)
        out += o.handle(result(seq), 0.0)
    out += o.handle(Eos("a", 4, "end"), 0.0)
    out += o.release(0.0)
    st = o.streams["a"].stats
    assert len(st.sessions) == 2 and st.late == 0
    assert [(x.session, x.seq) for x in outcomes(out) if x.result is not None][-4:] == [
        (2, 0), (2, 1), (2, 2), (2, 3)]
