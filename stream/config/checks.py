"""Checks across a whole deployment config: addresses that would clash, stream ownership
by sinks, and exposed binds without keys. Called by `StreamConfig`'s validator; each returns
the problems it found (with key paths), never raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stream.config.base import Loc, Problem
from stream.config.endpoints import WILDCARD_HOSTS, is_exposed, same_address, split_tcp

if TYPE_CHECKING:
    from stream.config.models import StreamConfig


def check_addresses(self: StreamConfig) -> list[Problem]:
    transport = self.transport
    n = len(self.sources)
    if transport.frames.startswith("tcp://"):
        _, port = split_tcp(transport.frames)
        if port + n - 1 > 65535:
            return [
                Problem(
                    ("transport", "frames"),
                    f"{n} sources need ports {port}..{port + n - 1}, past 65535",
                    transport.frames,
                )
            ]
    bound: list[tuple[Loc, str, str]] = [
        (("sink", "events"), "sink.events", self.sink.events),
        (("transport", "sink"), "transport.sink", transport.sink),
    ]
    # A source with its own `frames` host runs there: it cannot clash with the hub's
    # addresses; no two sources may share an address workers reach.
    bound += [
        (("transport", "frames"), f"capture {i}'s frames", self.frames_bind(i))
        for i in range(n) if on_hub(self, i)
    ]
    own: dict[str, int] = {}
    for i, src in enumerate(self.sources):
        if src.frames is not None and own.setdefault(src.frames, i) != i:
            return [Problem(("sources", i, "frames"), f"sources[{own[src.frames]}] has "
                            "the same frames address: workers could not tell them apart",
                            src.frames)]
    for j, (loc, name, address) in enumerate(bound):
        for _, other_name, other in bound[:j]:
            if same_address(address, other):
                return [
                    Problem(
                        loc,
                        f"{name} ({address}) would bind the same address as {other_name} "
                        f"({other}); give each a different port or path",
                        getattr(self.sink if loc[0] == "sink" else transport, str(loc[1])),
                    )
                ]
    return []


def on_hub(self: StreamConfig, i: int) -> bool:
    """Whether capture ``i`` binds on the hub (the host of transport.*): no `frames` of
    its own, or one with a wildcard host (workers reach it through --connect HUB)."""
    frames = self.sources[i].frames
    return frames is None or (frames.startswith("tcp://")
                              and split_tcp(frames)[0] in WILDCARD_HOSTS)


def check_sinks(self: StreamConfig) -> list[Problem]:
    """Every source owned by exactly one sink; sink names and endpoints distinct."""
    problems: list[Problem] = []
    if not self.sinks:
        return problems
    ids = {s.id for s in self.sources}
    owner: dict[str, str] = {}
    names: set[str] = set()
    for i, entry in enumerate(self.sinks):
        if entry.name in names:
            problems.append(Problem(("sinks", i, "name"), "duplicate sink name",
                                    entry.name))
        names.add(entry.name)
        for stream in entry.streams:
            if stream not in ids:
                problems.append(Problem(("sinks", i, "streams"), f"{stream!r} is not a "
                                        "source id", stream))
            elif stream in owner:
                problems.append(Problem(("sinks", i, "streams"), f"{stream!r} is "
                                        f"already owned by sink {owner[stream]!r}", stream))
            owner.setdefault(stream, entry.name)
    for i, src in enumerate(self.sources):
        if src.id not in owner:
            problems.append(Problem(("sources", i, "id"), "no sink owns this stream: "
                                    "list it in one sinks[].streams", src.id))
    # Best effort: sinks at hosts of their own may share ports; same-text clashes only.
    bound = [(("sinks", i, "inbox_bind" if e.inbox_bind else "inbox"), e.inbox_bind or e.inbox)
             for i, e in enumerate(self.sinks)]
    bound += [(("sinks", i, "events"), e.events) for i, e in enumerate(self.sinks)]
    bound += [(("sources", i, "frames"), self.frames_bind(i))
              for i in range(len(self.sources)) if on_hub(self, i)]
    for j, (loc, address) in enumerate(bound):
        clash = next((o for _, o in bound[:j] if same_address(address, o)), None)
        if clash is not None:
            problems.append(Problem(loc, f"would bind the same address as {clash}",
                                    address))
    return problems


def check_exposed(self: StreamConfig) -> list[Problem]:
    """A non-loopback tcp address bound without keys is refused unless insecure: true
    (DESIGN.md "Trust": anyone reaching the port could inject frames or read labels)."""
    sec = self.security
    if sec.enabled or sec.insecure:
        return []
    bound: list[tuple[Loc, str]] = [
        (("sink", "events"), self.sink.events),
        (("transport", "sink"), self.transport.sink),
    ]
    bound += [(("sinks", i, k), getattr(e, k)) for i, e in enumerate(self.sinks)
              for k in ("inbox", "events", "inbox_bind") if getattr(e, k)]
    for i, src in enumerate(self.sources):
        where = "frames_bind" if src.frames_bind else "frames" if src.frames else None
        loc: Loc = ("sources", i, where) if where else ("transport", "frames")
        bound.append((loc, self.frames_bind(i)))
    for loc, address in bound:
        if is_exposed(address):
            return [Problem(
                loc,
                "binds a non-loopback address without keys: set security.key and "
                "security.trusted (`stream keys generate NAME`; docs/config.md "
                "\"Security\"), or security.insecure: true for a closed network",
                address)]
    return []


