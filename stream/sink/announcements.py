"""PURE: what a stream's control link announced about its capture session.

A capture sends its hello, stamps and drops on one link (control) and full frames on
another (video); the sink reads both in turn, so a session's first full frames (and their
labels) may come before its hello. This part keeps what decides two questions from that
alone: is a new hello a capture restart, and should a stream's first frames be held until
its hello says whether it is a file or a live source.
"""

from __future__ import annotations

from stream.protocol import Drop, Frame, Hello, Result


class Announcements:
    """The latest hello of one stream and what came since (see the module docstring)."""

    def __init__(self) -> None:
        self.hello: Hello | None = None
        self.control_max = -1  # highest seq of a stamp or drop since the last hello
        self.seen_since_hello = False  # a frame, result or drop came since the last hello
        self.first_seen: float | None = None  # when the sink first held a frame of it

    def saw(self, msg: Frame | Result | Drop, now: float) -> None:
        """A frame, result or drop of the stream was taken into its table."""
        if self.first_seen is None:
            self.first_seen = now
        self.seen_since_hello = True
        if isinstance(msg, Drop) or (isinstance(msg, Frame) and msg.image is None):
            self.control_max = max(self.control_max, msg.seq)

    def announce(self, hello: Hello) -> None:
        """The stream's (new) hello was taken."""
        self.hello = hello
        self.control_max = -1
        self.seen_since_hello = False

    def restarted_by(self, hello: Hello, first_seq: int, next_seq: int, ended: bool) -> bool:
        """Whether ``hello`` starts a new capture session rather than announcing this one.

        Only what the control link said counts: a capture restarted when its seq went back
        behind a stamp or drop already seen since the last hello, behind what was released
        (``next_seq``), or after the session's eos (``ended``). A capture process always
        starts at seq 0 and a live reconnect announces the next seq (> 0 once it captured
        anything): seq 0 after frames of this session is a restart even when all of them
        came as full frames and none was released yet. A first hello is a restart only for
        a sink that joined mid-stream (seq behind ``first_seq``, where it joined).

        Args:
            first_seq, next_seq, ended: the stream's table as it stands (synced already).
        """
        if self.hello is None:
            return hello.seq < first_seq
        return (ended or hello.seq <= self.control_max or hello.seq < next_seq
                or (hello.seq == 0 and self.seen_since_hello))

    def awaits_hello(self, now: float, timeout_s: float) -> bool:
        """Hold a stream's first frames until its hello says what kind of stream it is.

        Released before it, a file's frames would be treated as live ones (outputs not
        waited for, frames dropped). A stamp or drop means the hello was sent before it on
        the same link, so a sink that joined mid-stream (and will never see the hello) goes
        on at once; otherwise the hold ends after ``timeout_s``.
        """
        if self.hello is not None or self.control_max >= 0:
            return False
        return self.first_seen is None or now - self.first_seen < timeout_s
