"""A scripted worker for capture tests: the worker half of scheduling played by hand.

It speaks the real wire protocol on a real DEALER socket (stream/protocol.py): it grants
slots (``credit`` with ``grant``), reads ``ready`` notes and tasks, and reports done seqs,
so a test decides exactly when a capture may send and what it held.
"""

from __future__ import annotations

import time

from stream import transport
from stream.protocol import Credit, Ready, Task, decode
from stream.transport import Socket


class ScriptedWorker:
    """One worker's DEALER, driven by the test: ``grant``, ``recv``, ``done``, ``bye``."""

    def __init__(self, sock: Socket, name: str = "w1", capacity: int = 4) -> None:
        self.sock = sock
        self.name = name
        self.capacity = capacity
        self.ready: list[Ready] = []
        self.tasks: list[Task] = []

    def hello(self) -> None:
        """A heartbeat: the capture learns this worker exists (and its capacity)."""
        transport.send(self.sock, Credit(self.name, self.capacity))

    def grant(self, n: int = 1, done: tuple[int, ...] = ()) -> None:
        transport.send(self.sock, Credit(self.name, self.capacity, done, grant=n))

    def done(self, *seqs: int) -> None:
        transport.send(self.sock, Credit(self.name, self.capacity, tuple(seqs)))

    def bye(self, done: tuple[int, ...] = ()) -> None:
        transport.send(self.sock, Credit(self.name, 0, done, bye=True))

    def recv(self, timeout_ms: int) -> Task | Ready | None:
        """The next message from the capture (kept in ``tasks``/``ready``), or None."""
        if not self.sock.poll(timeout_ms):
            return None
        msg = decode(self.sock.recv_multipart())
        if isinstance(msg, Task):
            self.tasks.append(msg)
        else:
            assert isinstance(msg, Ready), msg
            self.ready.append(msg)
        return msg

    def recv_task(self, timeout_s: float = 10.0) -> Task:
        """Wait for the next task (ready notes on the way are kept)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = self.recv(50)
            if isinstance(msg, Task):
                return msg
        raise AssertionError(f"{self.name}: no task within {timeout_s} s")

    def take(self, n: int, timeout_s: float = 10.0) -> list[Task]:
        """Play a worker that wants ``n`` tasks and keeps them: one slot at a time, granted
        when the capture says a frame is ready (or again right after a task came)."""
        got: list[Task] = []
        granted = 0
        self.hello()
        deadline = time.monotonic() + timeout_s
        while len(got) < n:
            assert time.monotonic() < deadline, f"{self.name}: {len(got)} of {n} tasks"
            msg = self.recv(50)
            if isinstance(msg, Task):
                got.append(msg)
                granted -= 1
            elif isinstance(msg, Ready):
                granted -= msg.declined
            if msg is not None and granted == 0 and len(got) < n:
                self.grant(1)
                granted = 1
        return got

    def serve(self, poll_ms: int) -> Task | None:
        """A fast worker: any task that comes is finished at once and its slot granted again;
        a ready note is answered with a grant."""
        msg = self.recv(poll_ms)
        if isinstance(msg, Task):
            self.grant(1, done=(msg.seq,))
            return msg
        if isinstance(msg, Ready) and msg.frames and not msg.declined:
            self.grant(1)
        return None
