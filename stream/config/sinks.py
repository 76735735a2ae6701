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
from stream.config.endpoints import check_endpoint
from stream.ids import STREAM_ID_RULE, is_stream_id


class SinkEntry(Strict):
    """One sink of several: its name, what it binds, the streams it owns."""

    name: str = Field(
        description="The sink's name (`stream sink CONFIG --name NAME`); same rule as ids.")
    inbox: str = Field(
        description="What this sink binds for captures and workers (as transport.sink for "
        "a single sink); peers connect to it, a wildcard host taken as --connect HOST.")
    events: str = Field(description="What this sink binds for label events (as sink.events).")
    streams: list[str] = Field(
        min_length=1, description="Stream ids (sources[].id) this sink owns.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not is_stream_id(value):
            raise ValueError(f"a sink name is {STREAM_ID_RULE}")
        return value

    @field_validator("inbox", "events")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_endpoint(value)


@dataclass(frozen=True)
class SinkPlace:
    """Where one sink is: its name ("" for the single default sink), the endpoints it
    binds, and the streams it owns."""

    name: str
    inbox: str
    events: str
    streams: tuple[str, ...]
