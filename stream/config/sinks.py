"""The `sinks[]` section: several sinks, each owning a set of streams (issue 9).

Without it there is one sink: it binds `transport.sink` and `sink.events` and owns every
stream. With it, each entry names what one sink binds and which stream ids it owns; every
source belongs to exactly one sink. The other sink settings (`sink.output_dir`, codec,
smoothing, ...) are shared by all. Captures send to the sink of their stream; workers
connect to every sink and send each result to the one that owns its stream.

    sinks:
      - {name: east, inbox: "tcp://*:5561", events: "tcp://*:5560", streams: [gate]}
      - {name: west, inbox: "tcp://*:5581", events: "tcp://*:5580", streams: [yard]}

`stream sink CONFIG --name east` runs one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field, field_validator

from stream.config.base import Strict
from stream.config.endpoints import WILDCARD_HOSTS, check_endpoint, connect_endpoint, split_tcp
from stream.ids import STREAM_ID_RULE, is_stream_id


class SinkEntry(Strict):
    """One sink of several: its name, what it binds, the streams it owns."""

    name: str = Field(
        description="The sink's name (`stream sink CONFIG --name NAME`); same rule as ids.")
    inbox: str = Field(
        description="Where captures and workers reach this sink, e.g. tcp://sink-west:5581 "
        "(a wildcard host, tcp://*:5581, is taken as their --connect HOST); the sink binds "
        "it too unless inbox_bind says otherwise.")
    inbox_bind: str | None = Field(
        default=None,
        description="What the sink binds when it differs from `inbox` (tcp://*:5581 on a "
        "host that peers reach as sink-west); null = `inbox`.")
    events: str = Field(description="What this sink binds for label events (as sink.events).")
    streams: list[str] = Field(
        min_length=1, description="Stream ids (sources[].id) this sink owns.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not is_stream_id(value):
            raise ValueError(f"a sink name is {STREAM_ID_RULE}")
        return value

    @field_validator("inbox", "events", "inbox_bind")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_endpoint(value)


@dataclass(frozen=True)
class SinkPlace:
    """Where one sink is: its name ("" for the single default sink), the endpoints it
    binds, and the streams it owns."""

    name: str
    inbox: str
    events: str
    streams: tuple[str, ...]
    bind: str = ""

    def reach(self, host: str | None) -> str:
        """Where a capture or worker started with ``--connect HOST`` sends to this sink:
        the single default sink on HOST (as ever); a `sinks[]` entry at its own host, a
        wildcard host taken as HOST (or 127.0.0.1)."""
        if self.name and self.inbox.startswith("tcp://") and (
                split_tcp(self.inbox)[0] not in WILDCARD_HOSTS):
            return self.inbox
        return connect_endpoint(self.inbox, host)
