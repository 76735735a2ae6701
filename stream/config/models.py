"""The config schema: strict, frozen pydantic models, one per section of the YAML file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticUndefined

from stream.config.endpoints import check_endpoint, same_address, split_tcp
from stream.config.redact import redact_url
from stream.errors import ConfigError
from stream.ids import STREAM_ID_RULE, is_stream_id

SourceKind = Literal["file", "rtsp", "camera", "images"]
Policy = Literal["wait", "drop"]

Loc = tuple[str | int, ...]

# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Problem:
    """One config error: where (relative key path), what, and the offending value."""

    path: Loc
    message: str
    value: object = PydanticUndefined


class Problems(ValueError):
    """Raised by `model_validator`s to report errors on specific fields (pydantic would
    otherwise attach a validator's error to the whole model)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = list(problems)


class Strict(BaseModel):
    """Shared base: unknown keys are errors, configs are immutable once validated."""

    # hide_input_in_errors: a raw ValidationError (if one ever escapes) must not print secrets.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr()/str() of a config ends up in logs: never print URL credentials.
        for key, value in super().__repr_args__():
            yield key, redact_url(value) if isinstance(value, str) else value


class ModelConfig(Strict):
    """The classifier IR and how OpenVINO compiles it (per worker process)."""

    path: str = Field(
        default="models/convnext-tiny.xml",
        min_length=1,
        description="OpenVINO IR (.xml, with its .bin beside it). The default IR is built "
        "on first use if missing.",
    )
    device: str = Field(
        default="CPU",
        min_length=1,
        description="OpenVINO device, passed as is: CPU, GPU, NPU, AUTO, AUTO:GPU,CPU, ...",
    )
    hint: Literal["THROUGHPUT", "LATENCY", "CUMULATIVE_THROUGHPUT"] = Field(
        default="THROUGHPUT", description="OpenVINO performance hint."
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


_CAMERA_URL = re.compile(r"[0-9]+|/dev/video[0-9]*")
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")


def _has_host(url: str) -> bool:
    """Whether a scheme://[userinfo@]host/... URL names a host at all (``rtsp://`` does not).

    Text after the last ``@`` is taken as the host part: passwords may contain ``@``.
    """
    host_part = url.split("://", 1)[1].rsplit("@", 1)[-1]
    return bool(re.split(r"[/?#]", host_part, maxsplit=1)[0])


def _is_network_url(url: str) -> bool:
    match = _URL_SCHEME.match(url)
    return match is not None and match[1].lower() != "file"


class SourceConfig(Strict):
    """One video source; it gets one capture process."""

    id: str = Field(
        description="Stream id, unique: 1-64 of A-Z a-z 0-9 _ . - starting with a letter or "
        "digit (pattern ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$). Used as ZMQ topic and file name.",
    )
    url: str = Field(
        min_length=1,
        description="Video file, rtsp:// or rtsps:// URL, http(s):// URL, camera index (0) or "
        "/dev/videoN, or a folder of images. Put credentials in ${VARS}.",
    )
    kind: Literal["auto", "file", "rtsp", "camera", "images"] = Field(
        default="auto",
        description="auto: scheme:// URL -> rtsp (live network stream), digits or /dev/video* "
        "-> camera, existing folder -> images, anything else -> file.",
    )
    policy: Policy | None = Field(
        default=None,
        description="Back-pressure. wait: lossless, capture waits for workers; drop: never "
        "wait, drop and count frames. null = drop for live sources (rtsp, camera, realtime "
        "file), wait otherwise. wait is not allowed for rtsp/camera.",
    )
    loop: bool = Field(default=False, description="Replay the file forever (files only).")
    rtsp_transport: Literal["tcp", "udp"] = Field(
        default="tcp", description="RTSP transport (rtsp only; ignored by other kinds)."
    )
    fps: float | None = Field(
        default=None,
        gt=0,
        le=240,
        description="images: rate stamped on frames (null = 25). rtsp/camera: cap, extra "
        "frames are skipped. file: overrides the native rate (timestamps, realtime pacing).",
    )
    realtime: bool = Field(
        default=False,
        description="Files only: read at the file's native fps, like a live camera.",
    )

    @field_validator("url", mode="before")
    @classmethod
    def _int_url(cls, value: object) -> object:
        # YAML reads `url: 0` as an int; a camera index is what the user meant.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("id")
    @classmethod
    def _id_pattern(cls, value: str) -> str:
        if not is_stream_id(value):
            raise ValueError(
                f"a source id is {STREAM_ID_RULE} (it becomes a ZMQ topic and a file name)"
            )
        return value

    def resolved_kind(self) -> SourceKind:
        """The kind of source, auto-detected from `url` when `kind` is "auto".

        Detection: any `scheme://` URL except file:// -> "rtsp" (a live network stream);
        digits or /dev/video* -> "camera"; an existing directory -> "images"; else "file".
        """
        if self.kind == "file" or self.kind == "rtsp" or self.kind == "camera":
            return self.kind
        if self.kind == "images":
            return self.kind
        if _is_network_url(self.url):
            return "rtsp"
        if _CAMERA_URL.fullmatch(self.url):
            return "camera"
        if os.path.isdir(self.url):
            return "images"
        return "file"

    def is_live(self) -> bool:
        """True for sources that produce frames on their own clock: rtsp, camera, realtime file."""
        kind = self.resolved_kind()
        return kind in ("rtsp", "camera") or (kind == "file" and self.realtime)

    def resolved_policy(self) -> Policy:
        """The back-pressure policy: `policy`, or drop for live sources and wait otherwise."""
        if self.policy is not None:
            return self.policy
        return "drop" if self.is_live() else "wait"

    @model_validator(mode="after")
    def _check_kind(self) -> SourceConfig:
        problems: list[Problem] = []
        kind = self.resolved_kind()
        if self.kind == "rtsp" and not _is_network_url(self.url):
            problems.append(
                Problem(
                    ("url",),
                    "kind 'rtsp' needs a network URL like rtsp://host/path",
                    self.url,
                )
            )
        if _is_network_url(self.url) and not _has_host(self.url):
            problems.append(
                Problem(
                    ("url",),
                    "the URL has no host: write it like rtsp://192.168.1.10:554/stream1",
                    self.url,
                )
            )
        if self.kind in ("camera", "images") and _is_network_url(self.url):
            problems.append(
                Problem(
                    ("kind",),
                    f"kind '{self.kind}' is for a local device or folder, but url is a network "
                    "URL; use kind 'rtsp' (or leave kind out)",
                    self.kind,
                )
            )
        if self.loop and kind != "file":
            problems.append(
                Problem(("loop",), f"loop replays a file, but this source is {kind}", True)
            )
        if self.realtime and kind != "file":
            problems.append(
                Problem(
                    ("realtime",),
                    f"realtime paces a file like a live camera, but this source is {kind}",
                    True,
                )
            )
        if self.policy == "wait" and kind in ("rtsp", "camera"):
            problems.append(
                Problem(
                    ("policy",),
                    f"a live {kind} source cannot wait for workers (frames would be lost at "
                    "the source anyway); use drop or leave policy out",
                    "wait",
                )
            )
        if problems:
            raise Problems(problems)
        return self


class WorkersConfig(Strict):
    """Inference workers started on this machine."""

    count: int = Field(
        default=1,
        ge=0,
        le=64,
        description="Local worker processes; 0 = none (remote `stream worker`s connect).",
    )


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
    codec: str = Field(
        default="mp4v", description="FourCC for OpenCV's VideoWriter, exactly 4 characters."
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

    @field_validator("codec")
    @classmethod
    def _fourcc(cls, value: str) -> str:
        if len(value) != 4 or not value.isascii():
            raise ValueError("codec is a FourCC of exactly 4 characters, like mp4v, avc1, MJPG")
        return value

    @field_validator("events")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_endpoint(value)


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
        description="Full frames a capture may queue for the sink when video is written (ZMQ "
        "high-water mark, messages); a file source waits beyond it, a live one drops. Frames "
        "to workers need no setting: workers ask for what they can run.",
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
        bound += [
            (("transport", "frames"), f"capture {i}'s frames", transport.frames_endpoint(i))
            for i in range(n)
        ]
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


