"""The config schema: strict, frozen pydantic models, one per section of the YAML file.

The shared base (`Strict`, `Problem`) lives in `base.py`, the `sources[]` section in
`sources.py`; both are re-exported here.
"""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from stream.config.base import Loc, Problem, Problems, Strict
from stream.config.endpoints import (
    WILDCARD_HOSTS,
    check_endpoint,
    connect_endpoint,
    is_exposed,
    same_address,
    split_tcp,
)
from stream.config.redact import redact_url
from stream.config.security import SecurityConfig
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
]

VideoCodec = Literal["h264", "mp4v", "MJPG"]

CODEC_CONTAINERS: dict[str, tuple[str, ...]] = {
    "h264": ("mp4", "mkv"),
    "mp4v": ("mp4",),
    "MJPG": ("avi",),
}
"""The containers each codec may be written into (`sink.codec` x `sink.video_format`)."""


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
        description="Inference precision hint; null = device default (bf16 on AMX CPUs).",
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


def split_http(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) → (host without brackets, port).

    Raises:
        ValueError: with a user-facing message.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("give HOST:PORT with a port 1..65535, like 127.0.0.1:8080 or "
                         "[::1]:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets: [{host}]:{port}")
    if not host or "/" in host or " " in host:
        raise ValueError("give only a host and a port, like 127.0.0.1:8080")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, no brackets) can only be reached from this
    machine: ``localhost``, 127.0.0.0/8, ``::1``."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to anything


def check_rtsp_out(value: str) -> str:
    """Check a ``sink.rtsp_out`` URL: rtsp:// or rtsps://, a host, a path; ``{stream}`` is
    the only placeholder. Messages show the URL with its credentials hidden.

    Raises:
        ValueError: what is wrong, and what a good URL looks like.
    """
    shown = redact_url(value)
    parts = urlsplit(value.replace("{stream}", "x"))
    example = "e.g. rtsp://127.0.0.1:8554/{stream}"
    if parts.scheme not in ("rtsp", "rtsps"):
        raise ValueError(f"{shown} is not an rtsp:// or rtsps:// URL ({example})")
    if not parts.hostname:
        raise ValueError(f"{shown} names no server ({example})")
    if parts.path in ("", "/"):
        raise ValueError(f"{shown} names no path to publish to ({example})")
    if "{" in value.replace("{stream}", "") or "}" in value.replace("{stream}", ""):
        raise ValueError(f"{shown}: {{stream}} is the only placeholder ({example})")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise ValueError(f"{shown} has a bad port ({example})") from None
    return value


class SinkConfig(Strict):
    """The sink: joins labels to frames, writes videos, publishes label events."""

    output_dir: str | None = Field(
        default=None,
        min_length=1,
        description="Folder for one video per stream (named after the stream id); null = no video.",
    )
    video_format: Literal["mp4", "avi", "mkv"] = Field(
        default="mp4", description="Container of the output videos."
    )
    codec: VideoCodec = Field(
        default="h264",
        description="h264: H.264 through PyAV (FFmpeg), in mp4 or mkv. mp4v (in mp4) and "
        "MJPG (in avi): OpenCV's VideoWriter, for builds without an H.264 encoder.",
    )
    events: str = Field(
        default="tcp://127.0.0.1:5560",
        description="ZMQ PUB endpoint the sink binds for label events (topic = stream id).",
    )
    smoothing: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Average probabilities over the last N frames per stream; 1 = off.",
    )
    reorder_timeout_s: float = Field(
        default=5.0,
        ge=0.1,
        le=600,
        description="Seconds the sink waits for a missing frame's label before declaring "
        "it dropped.",
    )
    draw: bool = Field(default=True, description="Overlay labels on the output video.")
    http: str | None = Field(
        default=None,
        min_length=1,
        description="HOST:PORT where the sink serves its web view (/), MJPEG streams, "
        "/api/streams, /healthz and Prometheus /metrics; null = off. No authentication: "
        "a loopback address (127.0.0.1:8080, [::1]:8080, localhost:8080) unless "
        "http_insecure is true. `stream run` turns it on at 127.0.0.1:8080 when unset.",
    )
    http_insecure: bool = Field(
        default=False,
        description="Allow `http` on a non-loopback address (0.0.0.0:8080): anyone who "
        "reaches the port sees the video and the numbers. Put a proxy with auth in front.",
    )
    rtsp_out: str | None = Field(
        default=None,
        min_length=1,
        description="Publish each stream's overlaid video as H.264 to this RTSP server URL "
        "(MediaMTX, go2rtc, ...): rtsp://HOST:PORT/PATH, where {stream} is replaced by the "
        "stream id (needed with several sources), e.g. rtsp://127.0.0.1:8554/{stream}. "
        "Credentials (rtsp://user:${RTSP_PASSWORD}@...) are never logged. A server that is "
        "down is retried with backoff; null = off.",
    )
    segment_s: float | None = Field(
        default=None,
        ge=1,
        le=7 * 86400,
        description="Start a new video file every this many seconds of media time (e.g. "
        "3600: one file an hour, for cameras that run for days), named "
        "<id>@<UTC start>.mp4 (e.g. cam1@20261127T183000Z.mp4); null = one file per "
        "stream and session.",
    )

    @field_validator("events")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_endpoint(value)

    @field_validator("http")
    @classmethod
    def _http_address(cls, value: str | None) -> str | None:
        if value is not None:
            split_http(value)
        return value

    @model_validator(mode="after")
    def _http_loopback(self) -> SinkConfig:
        if self.http is not None and not self.http_insecure:
            host, _ = split_http(self.http)
            if not is_loopback(host):
                message = (
                    f"the web view has no authentication: bind it to 127.0.0.1 (or [::1]), "
                    f"or set sink.http_insecure: true to serve {self.http} to the network"
                )
                raise Problems([Problem(("http",), message, self.http)])
        return self

    @field_validator("rtsp_out")
    @classmethod
    def _rtsp_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_rtsp_out(value)
        return value

    @property
    def wants_images(self) -> bool:
        """Whether captures send full frames to the sink: an output needs them (video
        files, the web view, RTSP out)."""
        return self.output_dir is not None or self.http is not None or self.rtsp_out is not None

    @model_validator(mode="after")
    def _codec_fits_container(self) -> SinkConfig:
        containers = CODEC_CONTAINERS[self.codec]
        if self.video_format not in containers:
            fits = " or ".join(containers)
            others = [c for c, fmts in CODEC_CONTAINERS.items() if self.video_format in fmts]
            message = (
                f"codec {self.codec} goes in {fits}, not in {self.video_format}: set "
                f"video_format: {containers[0]}, or codec: {' or '.join(others)} for "
                f"{self.video_format}"
            )
            raise Problems([Problem(("codec",), message, self.codec)])
        return self


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
        problems.extend(self._check_addresses())
        problems.extend(self._check_sinks())
        if self.sink.rtsp_out is not None and len(self.sources) > 1 and (
                "{stream}" not in self.sink.rtsp_out):
            problems.append(Problem(("sink", "rtsp_out"), "several sources would publish to "
                                    "one RTSP path: put {stream} in it, e.g. "
                                    "rtsp://127.0.0.1:8554/{stream}",
                                    redact_url(self.sink.rtsp_out)))
        if not problems:
            problems.extend(self._check_exposed())
        if problems:
            raise Problems(problems)
        return self

    def _check_addresses(self) -> list[Problem]:
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
            for i in range(n) if self._on_hub(i)
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

    def _on_hub(self, i: int) -> bool:
        """Whether capture ``i`` binds on the hub (the host of transport.*): no `frames` of
        its own, or one with a wildcard host (workers reach it through --connect HUB)."""
        frames = self.sources[i].frames
        return frames is None or (frames.startswith("tcp://")
                                  and split_tcp(frames)[0] in WILDCARD_HOSTS)

    def _check_sinks(self) -> list[Problem]:
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
                  for i in range(len(self.sources)) if self._on_hub(i)]
        for j, (loc, address) in enumerate(bound):
            clash = next((o for _, o in bound[:j] if same_address(address, o)), None)
            if clash is not None:
                problems.append(Problem(loc, f"would bind the same address as {clash}",
                                        address))
        return problems

    def _check_exposed(self) -> list[Problem]:
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


