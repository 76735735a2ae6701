"""The config schema: strict, frozen pydantic models, one per section of the YAML file.

The shared base (`Strict`, `Problem`) lives in `base.py`, the `sources[]` section in
`sources.py`, the `sink` section in `sink.py`, `security` in `security.py`, `sinks[]` in
`sinks.py`, and the checks across the whole deployment in `checks.py`; the sections are
re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator, model_validator

from stream.config.base import Loc, Problem, Problems, Strict
from stream.config.checks import check_addresses, check_exposed, check_sinks
from stream.config.endpoints import (
    WILDCARD_HOSTS,
    check_endpoint,
    connect_endpoint,
    split_tcp,
)
from stream.config.redact import redact_url
from stream.config.security import SecurityConfig
from stream.config.sink import SinkConfig, VideoCodec
from stream.config.sinks import SinkEntry, SinkPlace
from stream.config.sources import Policy, SourceConfig, SourceKind
from stream.errors import ConfigError

__all__ = [
    "Loc",
    "ModelConfig",
    "Policy",
    "Problem",
    "Problems",
    "SecurityConfig",
    "SinkConfig",
    "SinkEntry",
    "SinkPlace",
    "SourceConfig",
    "SourceKind",
    "StreamConfig",
    "Strict",
    "TransportConfig",
    "VideoCodec",
    "WorkersConfig",
    "auto_hint",
]


def auto_hint(live: Sequence[bool]) -> tuple[str, str]:
    """What ``model.hint: auto`` resolves to for sources with these ``is_live`` flags, and why.

    LATENCY when every source is live, else THROUGHPUT (the reasons are in
    :func:`stream.model.runtime.resolve_hint`, which compiles with it; ``stream validate``
    prints it).
    """
    if live and all(live):
        return "LATENCY", "every source is live"
    return "THROUGHPUT", f"{sum(1 for x in live if not x)} of {len(live)} source(s) not live"


class ModelConfig(Strict):
    """The classifier IR and how OpenVINO compiles it (per worker process)."""

    path: str = Field(
        default="models/convnext-tiny.xml",
        min_length=1,
        description="OpenVINO IR (.xml, with its .bin beside it). `stream run` and `stream "
        "worker` build the default IR (models/convnext-tiny.xml) on first use if missing; "
        "any other path must exist on every worker machine.",
    )
    device: str = Field(
        default="CPU",
        min_length=1,
        description="OpenVINO device, passed as is: CPU, GPU, NPU, AUTO, AUTO:GPU,CPU, ...",
    )
    hint: Literal["auto", "THROUGHPUT", "LATENCY", "CUMULATIVE_THROUGHPUT"] = Field(
        default="auto",
        description="OpenVINO performance hint. auto = LATENCY when every source is live "
        "(rtsp, camera, realtime file: frames come at the camera's pace, so the time to a "
        "label matters), THROUGHPUT otherwise (files: frames per second matter). An "
        "explicit value is used as is.",
    )
    precision: Literal["bf16", "f16", "f32"] | None = Field(
        default=None,
        description="Inference precision hint; null = device default (bf16 on CPUs with AMX "
        "or AVX-512 bf16, else f32). Without AMX, f32 can be the faster: `stream bench` "
        "measures both and says which.",
    )
    requests: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Infer requests in flight per worker; 0 = the device's optimal number.",
    )
    streams: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="OpenVINO streams; null = device default for the hint.",
    )
    top_k: int = Field(
        default=5, ge=1, le=1000, description="Labels reported per frame, best first."
    )
    labels: str | None = Field(
        default=None,
        min_length=1,
        description="Labels file, one class per line; null = the ImageNet-1k labels shipped "
        "with the package.",
    )
    input_size: tuple[int, int] | None = Field(
        default=None,
        description="[width, height] of the model's image input, what captures crop to. "
        "null = read from the IR (a capture machine without the IR assumes the default "
        "model's 224x224). Workers whose model differs are refused.",
    )

    @field_validator("input_size")
    @classmethod
    def _size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not all(16 <= v <= 4096 for v in value):
            raise ValueError("width and height must be 16..4096")
        return value


class WorkersConfig(Strict):
    """Inference workers started on this machine."""

    count: int = Field(
        default=1,
        ge=0,
        le=64,
        description="Local worker processes; 0 = none (remote `stream worker`s connect).",
    )


class TransportConfig(Strict):
    """ZeroMQ endpoints between the processes."""

    sink: str = Field(
        default="tcp://127.0.0.1:5561",
        description="The sink binds a PULL socket here; captures and workers connect to it.",
    )
    frames: str = Field(
        default="tcp://127.0.0.1:5570",
        description="Capture i binds its task socket (ROUTER) here: tcp port + i, or ipc/inproc "
        "address + '-i'. Workers connect to all of them and ask for frames (credits).",
    )
    hwm: int = Field(
        default=16,
        ge=1,
        le=10000,
        description="Full frames a capture may queue on its video link to the sink (ZMQ "
        "send high-water mark, messages; only when video is written); a file source waits "
        "beyond it, a live one sends the stamp alone. Full frames held per camera in all, "
        "while labels keep up: about hwm + 32 (the sink's receive queue) + 8 (the output's "
        "queue); see docs/config.md. Stamps and labels travel on their own links; frames to "
        "workers need no setting (credits).",
    )

    @field_validator("sink", "frames")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_endpoint(value)

    def frames_endpoint(self, i: int) -> str:
        """The frame endpoint of capture `i` (the i-th source, from 0).

        Returns:
            `tcp://host:(port + i)` for tcp, `<frames>-i` for ipc:// and inproc://.

        Raises:
            ConfigError: a tcp endpoint without a port, or a port past 65535.
            ValueError: `i` is negative.
        """
        if i < 0:
            raise ValueError(f"capture index must be >= 0, not {i}")
        if not self.frames.startswith("tcp://"):
            return f"{self.frames}-{i}"
        try:
            host, port = split_tcp(self.frames)
        except ValueError as exc:
            raise ConfigError(f"transport.frames: {exc} (got {self.frames!r})") from None
        if port + i > 65535:
            raise ConfigError(
                f"transport.frames: capture {i} would need port {port + i}, past 65535; "
                f"choose a lower port (got {self.frames!r})"
            )
        return f"tcp://{host}:{port + i}"

    def frames_endpoints(self, n: int) -> list[str]:
        """The frame endpoints of captures 0..n-1."""
        return [self.frames_endpoint(i) for i in range(n)]


class StreamConfig(Strict):
    """A whole deployment: sources, model, workers, sink and the endpoints between them."""

    version: Literal[1] = Field(
        default=1, description="Config schema version; this release reads 1."
    )
    model: ModelConfig = Field(default=ModelConfig(), description="The classifier; see `model`.")
    sources: list[SourceConfig] = Field(
        min_length=1, description="Video sources, at least one; see `sources[]`."
    )
    workers: WorkersConfig = Field(
        default=WorkersConfig(), description="Local inference workers; see `workers`."
    )
    sink: SinkConfig = Field(
        default=SinkConfig(), description="Output videos and events; see `sink`."
    )
    transport: TransportConfig = Field(
        default=TransportConfig(), description="ZeroMQ endpoints; see `transport`."
    )
    security: SecurityConfig = Field(
        default=SecurityConfig(), description="CurveZMQ keys between hosts; see `security`."
    )
    sinks: list[SinkEntry] = Field(
        default=[],
        description="Several sinks, each owning some streams; empty = one sink binding "
        "transport.sink and sink.events for every stream. See `sinks[]`.",
    )

    def sink_places(self) -> list[SinkPlace]:
        """Every sink of the deployment: the `sinks` entries, or the one default sink."""
        if not self.sinks:
            return [SinkPlace("", self.transport.sink, self.sink.events,
                              tuple(s.id for s in self.sources), self.transport.sink)]
        return [SinkPlace(e.name, e.inbox, e.events, tuple(e.streams), e.inbox_bind or e.inbox)
                for e in self.sinks]

    def sink_place(self, name: str | None = None) -> SinkPlace:
        """The sink called ``name`` (None: the only one).

        Raises:
            ConfigError: no such sink, or several and no name given.
        """
        places = self.sink_places()
        if name is None and len(places) == 1:
            return places[0]
        names = ", ".join(p.name for p in places)
        for place in places:
            if name is not None and place.name == name:
                return place
        if name is None:
            raise ConfigError(f"this config has {len(places)} sinks ({names}): say which "
                              "with --name")
        raise ConfigError(f"no sink {name!r} in the config (sinks: {names or 'one, unnamed'})")

    def sink_of(self, stream: str) -> SinkPlace:
        """The sink that owns ``stream``."""
        return next(p for p in self.sink_places() if stream in p.streams)

    def frames_endpoint(self, i: int) -> str:
        """Where workers connect to capture ``i``: ``sources[i].frames``, else
        ``transport.frames`` with port + i."""
        return self.sources[i].frames or self.transport.frames_endpoint(i)

    def frames_endpoints(self) -> list[str]:
        """Where workers connect to every capture, in source order."""
        return [self.frames_endpoint(i) for i in range(len(self.sources))]

    def frames_connect(self, i: int, host: str | None = None) -> str:
        """Where a worker connects to capture ``i``, given ``stream worker --connect HOST``:
        ``transport.frames`` (port + i) on HOST; an explicit ``sources[i].frames`` as
        written (its own host), a wildcard host there taken as HOST (or 127.0.0.1)."""
        src = self.sources[i]
        if src.frames is None:
            return connect_endpoint(self.transport.frames_endpoint(i), host)
        if src.frames.startswith("tcp://") and split_tcp(src.frames)[0] in WILDCARD_HOSTS:
            return connect_endpoint(src.frames, host)
        return src.frames

    def frames_bind(self, i: int) -> str:
        """What capture ``i`` binds: ``sources[i].frames_bind``, else its frames endpoint."""
        return self.sources[i].frames_bind or self.frames_endpoint(i)

    @model_validator(mode="after")
    def _check_deployment(self) -> StreamConfig:
        problems: list[Problem] = []
        seen: dict[str, int] = {}
        for i, source in enumerate(self.sources):
            first = seen.setdefault(source.id.lower(), i)
            if first != i:
                problems.append(
                    Problem(
                        ("sources", i, "id"),
                        f"duplicate source id {source.id!r} (sources[{first}].id is "
                        f"{self.sources[first].id!r}; ids must be unique, ignoring case)",
                        source.id,
                    )
                )
        problems.extend(check_addresses(self))
        problems.extend(check_sinks(self))
        if self.sink.rtsp_out is not None and len(self.sources) > 1 and (
                "{stream}" not in self.sink.rtsp_out):
            problems.append(Problem(("sink", "rtsp_out"), "several sources would publish to "
                                    "one RTSP path: put {stream} in it, e.g. "
                                    "rtsp://127.0.0.1:8554/{stream}",
                                    redact_url(self.sink.rtsp_out)))
        if not problems:
            problems.extend(check_exposed(self))
        if problems:
            raise Problems(problems)
        return self
