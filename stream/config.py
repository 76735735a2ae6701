"""Deployment configuration: one YAML file -> strict, frozen pydantic models (`StreamConfig`).

Loading is the one place the environment is read: `${VAR}` / `${VAR:-default}` in any string
value is expanded from `env` (default `os.environ`, read at call time), so secrets such as
`rtsp://${CAM_USER}:${CAM_PASS}@host/...` stay out of the file. Every problem becomes one
`ConfigError` listing each error as `<key path>: <message> (got <value>)`; values are shown
as written in the file (a value that came from the environment is shown as its `${VAR}`
template) with URL credentials redacted, so an error message never carries a secret.

Decisions beyond the schema (also in docs/config.md):
- Relative paths (model.path, model.labels, source urls, sink.output_dir) are relative to the
  working directory of the process, not to the config file: the same file is copied to every
  machine of a multi-machine deployment.
- Any `scheme://` URL other than `file://` (rtsp, rtsps, http, https, rtmp, srt, udp, ...) is
  auto-detected as kind "rtsp", i.e. a live network stream (default policy drop). Set
  `kind: file` to read a remote http(s) file losslessly instead.
- `policy: wait` is rejected on rtsp/camera sources: a live source cannot be lossless (the
  camera or server drops what capture does not read), and capture must never wait on
  inference for a live source (DESIGN invariant 3). A `realtime` file defaults to drop
  (it simulates a camera) but may ask for wait.
- Source ids must be unique ignoring case: they become file names, and two files differing
  only in case collide on case-insensitive file systems.
- Endpoints that would bind the same address (sink, events, and every capture's frames port)
  are rejected at load time rather than failing with EADDRINUSE at start-up.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticUndefined

from stream.errors import ConfigError

__all__ = [
    "ModelConfig",
    "Policy",
    "SinkConfig",
    "SourceConfig",
    "SourceKind",
    "StreamConfig",
    "TransportConfig",
    "WorkersConfig",
    "config_from_dict",
    "connect_endpoint",
    "describe",
    "dump_config",
    "load_config",
    "redact_url",
    "schema_markdown",
]

SourceKind = Literal["file", "rtsp", "camera", "images"]
Policy = Literal["wait", "drop"]

Loc = tuple[str | int, ...]

# --------------------------------------------------------------------------- redaction

# `scheme://userinfo@`: greedy up to the LAST '@' of the whitespace-delimited token, so a
# password containing '@', ':' or '/' is still covered. It may over-redact a URL whose path or
# query holds an '@' (the host part then reads ***), which is the safe direction.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>\S*)@")
# A userinfo made only of `${NAME}` references (no `:-default`, which could be a literal secret).
_TEMPLATE_USERINFO = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}(:\$\{[A-Za-z_][A-Za-z0-9_]*\})?")


def redact_url(url: str) -> str:
    """Hide the credentials of every URL in `url`.

    Args:
        url: a URL, or any text that may contain URLs (a log line, an error message).

    Returns:
        The text with `scheme://user:pass@` replaced by `scheme://***:***@`, a user-only
        `scheme://user@` by `scheme://***@`, and the values of query parameters such as
        `password=`, `user=`, `token=` by `***`. Other text is returned unchanged.
    """

    def _hide(match: re.Match[str]) -> str:
        if _TEMPLATE_USERINFO.fullmatch(match["userinfo"]):
            return match[0]  # only `${NAME}` references, as written in a config: no secret
        hidden = "***:***" if ":" in match["userinfo"] else "***"
        return f"{match['scheme']}{hidden}@"

    return _SECRET_PARAM.sub(r"\g<key>***", _USERINFO.sub(_hide, url))


# `?user=..&password=..` style credentials some cameras take in the query string.
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:user(?:name)?|pass(?:word|wd)?|pwd|token|auth|key|secret)=)[^&;#\s]*",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- endpoints

_ENDPOINT_SCHEMES = ("tcp://", "ipc://", "inproc://")
_WILDCARD_HOSTS = frozenset({"*", "0.0.0.0", "::", "[::]"})
_PORT = re.compile(r"[0-9]{1,5}")


def _split_tcp(endpoint: str) -> tuple[str, int]:
    """Split `tcp://host:port` into (host, port); ValueError with a user-facing message."""
    host, sep, port = endpoint[len("tcp://") :].rpartition(":")
    if not sep or not host or not _PORT.fullmatch(port):
        raise ValueError("a tcp endpoint needs a host and a port, like tcp://127.0.0.1:5570")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"tcp port must be 1..65535, not {number}")
    return host, number


def _check_endpoint(value: str) -> str:
    if not value.startswith(_ENDPOINT_SCHEMES):
        raise ValueError(
            "a ZeroMQ endpoint must start with tcp://, ipc:// or inproc:// "
            "(like tcp://127.0.0.1:5561)"
        )
    if value.startswith("tcp://"):
        _split_tcp(value)
    elif value.endswith("://"):
        raise ValueError("the endpoint has no address after the scheme")
    return value


def connect_endpoint(endpoint: str, host: str | None = None) -> str:
    """The address a peer connects to for an endpoint that is bound as written in the config.

    Args:
        endpoint: a validated endpoint, e.g. `tcp://*:5561`.
        host: the machine to connect to (e.g. from `stream worker --connect HOST`); None keeps
            the configured host, turning a bind wildcard (`*`, `0.0.0.0`) into `127.0.0.1`.

    Returns:
        `tcp://host:port` for tcp endpoints; ipc:// and inproc:// endpoints unchanged.

    Raises:
        ConfigError: a tcp endpoint without a valid port.
    """
    if not endpoint.startswith("tcp://"):
        return endpoint
    try:
        bound_host, port = _split_tcp(endpoint)
    except ValueError as exc:
        raise ConfigError(f"{endpoint}: {exc}") from None
    if host is None:
        host = "127.0.0.1" if bound_host in _WILDCARD_HOSTS else bound_host
    return f"tcp://{host}:{port}"


def _same_address(a: str, b: str) -> bool:
    """Whether two endpoints would bind the same address on one machine (best effort)."""
    if a.startswith("tcp://") and b.startswith("tcp://"):
        host_a, port_a = _split_tcp(a)
        host_b, port_b = _split_tcp(b)
        local = {"127.0.0.1", "localhost"}
        return port_a == port_b and (
            host_a == host_b
            or host_a in _WILDCARD_HOSTS
            or host_b in _WILDCARD_HOSTS
            or (host_a in local and host_b in local)
        )
    return a == b


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class _Problem:
    """One config error: where (relative key path), what, and the offending value."""

    path: Loc
    message: str
    value: object = PydanticUndefined


class _Problems(ValueError):
    """Raised by `model_validator`s to report errors on specific fields (pydantic would
    otherwise attach a validator's error to the whole model)."""

    def __init__(self, problems: Sequence[_Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = list(problems)


class _Strict(BaseModel):
    """Shared base: unknown keys are errors, configs are immutable once validated."""

    # hide_input_in_errors: a raw ValidationError (if one ever escapes) must not print secrets.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr()/str() of a config ends up in logs: never print URL credentials.
        for key, value in super().__repr_args__():
            yield key, redact_url(value) if isinstance(value, str) else value


class ModelConfig(_Strict):
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


_SOURCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
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


class SourceConfig(_Strict):
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
        if not _SOURCE_ID.fullmatch(value):
            raise ValueError(
                "a source id is 1-64 characters of letters, digits, '_', '.' or '-', starting "
                "with a letter or digit (it becomes a ZMQ topic and a file name)"
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
        problems: list[_Problem] = []
        kind = self.resolved_kind()
        if self.kind == "rtsp" and not _is_network_url(self.url):
            problems.append(
                _Problem(
                    ("url",),
                    "kind 'rtsp' needs a network URL like rtsp://host/path",
                    self.url,
                )
            )
        if _is_network_url(self.url) and not _has_host(self.url):
            problems.append(
                _Problem(
                    ("url",),
                    "the URL has no host: write it like rtsp://192.168.1.10:554/stream1",
                    self.url,
                )
            )
        if self.kind in ("camera", "images") and _is_network_url(self.url):
            problems.append(
                _Problem(
                    ("kind",),
                    f"kind '{self.kind}' is for a local device or folder, but url is a network "
                    "URL; use kind 'rtsp' (or leave kind out)",
                    self.kind,
                )
            )
        if self.loop and kind != "file":
            problems.append(
                _Problem(("loop",), f"loop replays a file, but this source is {kind}", True)
            )
        if self.realtime and kind != "file":
            problems.append(
                _Problem(
                    ("realtime",),
                    f"realtime paces a file like a live camera, but this source is {kind}",
                    True,
                )
            )
        if self.policy == "wait" and kind in ("rtsp", "camera"):
            problems.append(
                _Problem(
                    ("policy",),
                    f"a live {kind} source cannot wait for workers (frames would be lost at "
                    "the source anyway); use drop or leave policy out",
                    "wait",
                )
            )
        if problems:
            raise _Problems(problems)
        return self


class WorkersConfig(_Strict):
    """Inference workers started on this machine."""

    count: int = Field(
        default=1,
        ge=0,
        le=64,
        description="Local worker processes; 0 = none (remote `stream worker`s connect).",
    )


class SinkConfig(_Strict):
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
        return _check_endpoint(value)


class TransportConfig(_Strict):
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
        return _check_endpoint(value)

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
            host, port = _split_tcp(self.frames)
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


class StreamConfig(_Strict):
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
        problems: list[_Problem] = []
        seen: dict[str, int] = {}
        for i, source in enumerate(self.sources):
            first = seen.setdefault(source.id.lower(), i)
            if first != i:
                problems.append(
                    _Problem(
                        ("sources", i, "id"),
                        f"duplicate source id {source.id!r} (sources[{first}].id is "
                        f"{self.sources[first].id!r}; ids must be unique, ignoring case)",
                        source.id,
                    )
                )
        problems.extend(self._check_addresses())
        if problems:
            raise _Problems(problems)
        return self

    def _check_addresses(self) -> list[_Problem]:
        transport = self.transport
        n = len(self.sources)
        if transport.frames.startswith("tcp://"):
            _, port = _split_tcp(transport.frames)
            if port + n - 1 > 65535:
                return [
                    _Problem(
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
                if _same_address(address, other):
                    return [
                        _Problem(
                            loc,
                            f"{name} ({address}) would bind the same address as {other_name} "
                            f"({other}); give each a different port or path",
                            getattr(self.sink if loc[0] == "sink" else transport, str(loc[1])),
                        )
                    ]
        return []


# --------------------------------------------------------------------------- errors


def _key_path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _fields_at(loc: Sequence[str | int]) -> list[str]:
    """Field names of the model that holds the key at `loc` (for "did you mean")."""
    model: type[BaseModel] = StreamConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        if getattr(annotation, "__origin__", None) is list and args:
            annotation = args[0]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _show(value: object, template: str | None) -> str:
    """A value for an error message: as written in the file, credentials redacted, short."""
    if template is not None:
        text = repr(redact_url(template))
    elif isinstance(value, Mapping):
        keys = ", ".join(str(k) for k in value)
        text = f"a mapping with keys {keys}" if keys else "an empty mapping"
    elif isinstance(value, list | tuple):
        text = f"a list of {len(value)} items"
    elif value is None:
        text = "null"
    elif isinstance(value, str):
        text = repr(redact_url(value))
    else:
        text = redact_url(repr(value))
    # Redact before truncating: a cut could otherwise leave a password without its '@'.
    return text if len(text) <= 80 else text[:77] + "..."


def _from_pydantic(error: Mapping[str, Any]) -> list[_Problem]:
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input", PydanticUndefined)
    message = str(error["msg"])
    if kind == "value_error":
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _Problems):
            return [_Problem(loc + p.path, p.message, p.value) for p in cause.problems]
        message = message.removeprefix("Value error, ")
    elif kind == "missing":
        return [_Problem(loc, "required key is missing")]
    elif kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        valid = _fields_at(loc)
        message = "unknown key"
        close = difflib.get_close_matches(key, valid, n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
        elif valid:
            message += f"; valid keys here: {', '.join(valid)}"
    elif kind in ("model_type", "dict_type"):
        message = "expected a mapping of `key: value` lines"
    elif kind == "too_short" and loc == ("sources",):
        message = "at least one source is needed"
    elif kind == "literal_error" and loc == ("version",):
        message = "unsupported config version; this release of stream reads version 1"
    elif kind == "string_type" and isinstance(value, int | float | bool):
        message += "; YAML read this as a number or boolean, put it in quotes"
    return [_Problem(loc, message, value)]


def _config_error(
    source_name: str, problems: Sequence[_Problem], templates: Mapping[Loc, str]
) -> ConfigError:
    lines = []
    for p in problems:
        line = f"{_key_path(p.path)}: {p.message}"
        if p.value is not PydanticUndefined:
            line += f" (got {_show(p.value, templates.get(p.path))})"
        lines.append(line)
    if len(lines) == 1:
        text = f"{source_name}: {lines[0]}"
    else:
        text = f"{source_name}: {len(lines)} errors:\n" + "\n".join(f"  {x}" for x in lines)
    return ConfigError(redact_url(text))


def _validate(
    data: Mapping[Any, Any], source_name: str, templates: Mapping[Loc, str]
) -> StreamConfig:
    try:
        return StreamConfig.model_validate(data)
    except ValidationError as exc:
        problems = [p for error in exc.errors() for p in _from_pydantic(error)]
        # `from None`: the ValidationError's context would carry raw (secret) values.
        raise _config_error(source_name, problems, templates) from None


def config_from_dict(data: Mapping[Any, Any], source_name: str = "<config>") -> StreamConfig:
    """Validate an already-parsed config (no `${VAR}` expansion).

    Args:
        data: the config as plain dicts/lists/scalars (e.g. built from CLI flags).
        source_name: where it came from, the prefix of error messages.

    Raises:
        ConfigError: listing every problem as `<key path>: <message> (got <value>)`.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source_name}: expected a mapping of keys, got {_show(data, None)}")
    return _validate(data, source_name, {})


# --------------------------------------------------------------------------- loading

# $${ is a literal "${"; ${NAME} / ${NAME:-default}; any other "${" is a mistake.
_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")


def _expand(
    node: object,
    loc: Loc,
    env: Mapping[str, str],
    problems: list[_Problem],
    templates: dict[Loc, str],
) -> object:
    """Expand `${VAR}` in every string of `node`; record problems and the raw templates."""
    if isinstance(node, dict):
        return {k: _expand(v, (*loc, str(k)), env, problems, templates) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, (*loc, i), env, problems, templates) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def _substitute(match: re.Match[str]) -> str:
        text = match[0]
        if text == "$${":
            return "${"
        name, default = match[1], match[2]
        if name is None:
            problems.append(
                _Problem(
                    loc,
                    "malformed ${...}: write ${NAME} or ${NAME:-default}, or $${ for a literal ${",
                    node,
                )
            )
            return text
        found = env.get(name)
        if default is not None and not found:  # shell semantics: unset or empty -> default
            return default
        if found is None:
            problems.append(
                _Problem(
                    loc,
                    f"environment variable {name} is not set; set it or write ${{{name}:-default}}",
                    node,
                )
            )
            return text
        return found

    templates[loc] = node
    return _REFERENCE.sub(_substitute, node)


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:
                continue  # unhashable key: SafeLoader reports it below
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {first + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        context = f" ({exc.context})" if exc.context else ""
        return f"{where}: {exc.problem}{context}"
    return " ".join(str(exc).split())


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> StreamConfig:
    """Read, expand and validate a YAML config file.

    Args:
        path: the YAML file.
        env: variables for `${VAR}` / `${VAR:-default}` expansion; None = `os.environ`, read
            now (nothing is read from the environment at import time).

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: the file cannot be read or parsed, a variable is missing, or a value is
            invalid; the message lists every problem with its key path.
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{name}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        raise ConfigError(f"{name}: the config file is empty; it needs at least `sources:`")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{name}: expected a mapping of keys at the top (like `sources:`), "
            f"got {type(data).__name__} {_show(data, None)}"
        )
    problems: list[_Problem] = []
    templates: dict[Loc, str] = {}
    expanded = _expand(data, (), os.environ if env is None else env, problems, templates)
    if problems:
        raise _config_error(name, problems, templates)
    assert isinstance(expanded, dict)
    return _validate(expanded, name, templates)


# --------------------------------------------------------------------------- output


def _redact_tree(node: object) -> object:
    if isinstance(node, dict):
        return {k: _redact_tree(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact_tree(v) for v in node]
    return redact_url(node) if isinstance(node, str) else node


def dump_config(cfg: StreamConfig) -> str:
    """The full config (defaults filled in) as YAML, URL credentials redacted."""
    data = _redact_tree(cfg.model_dump(mode="json"))
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def describe(cfg: StreamConfig) -> str:
    """A short human summary of a valid config (what `stream validate` prints)."""
    m, w, s, t = cfg.model, cfg.workers, cfg.sink, cfg.transport
    lines = [f"{len(cfg.sources)} source{'s' if len(cfg.sources) != 1 else ''}:"]
    width = max(len(src.id) for src in cfg.sources)
    for src in cfg.sources:
        extras = [x for x in ("loop" if src.loop else "", "realtime" if src.realtime else "") if x]
        if src.fps is not None:
            extras.append(f"{src.fps:g} fps")
        tail = f" ({', '.join(extras)})" if extras else ""
        lines.append(
            f"  {src.id:<{width}}  {src.resolved_kind():<6}  {src.resolved_policy():<4}  "
            f"{redact_url(src.url)}{tail}"
        )
    workers = f"{w.count} local" if w.count else "none local (remote `stream worker`s connect)"
    requests = m.requests or "auto"
    streams = m.streams or "auto"
    lines.append(f"workers: {workers}")
    lines.append(
        f"model: {m.path} on {m.device}, {m.hint}, precision {m.precision or 'default'}, "
        f"requests {requests}, streams {streams}, top-{m.top_k}, "
        f"labels {m.labels or 'ImageNet-1k (built in)'}"
    )
    if s.output_dir is None:
        lines.append("video: not written (sink.output_dir is not set)")
    else:
        drawn = "labels drawn" if s.draw else "no overlay"
        lines.append(f"video: {s.output_dir}/<id>.{s.video_format} ({s.codec}, {drawn})")
    smoothing = f"smoothing {s.smoothing} frames" if s.smoothing > 1 else "no smoothing"
    lines.append(f"events: {s.events} ({smoothing})")
    frames = t.frames_endpoints(len(cfg.sources))
    frames_text = frames[0] if len(frames) == 1 else f"{frames[0]} .. {frames[-1]}"
    lines.append(f"transport: sink {t.sink}, frames {frames_text}, hwm {t.hwm}")
    return "\n".join(lines)


_SECTIONS: tuple[tuple[str, type[_Strict]], ...] = (
    ("(top level)", StreamConfig),
    ("model", ModelConfig),
    ("sources[]", SourceConfig),
    ("workers", WorkersConfig),
    ("sink", SinkConfig),
    ("transport", TransportConfig),
)


def _type_text(annotation: object) -> str:
    args = getattr(annotation, "__args__", ())
    origin = getattr(annotation, "__origin__", None)
    if origin is Literal:
        return " \\| ".join(str(a) for a in args)
    if origin is list:
        return "list"
    if args and type(None) in args:  # X | None
        return " \\| ".join(_type_text(a) for a in args if a is not type(None)) + " \\| null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _bounds_text(metadata: Sequence[object]) -> str:
    low = high = ""
    for item in metadata:
        for attr, side in (("ge", "low"), ("gt", "low"), ("le", "high"), ("lt", "high")):
            bound = getattr(item, attr, None)
            if bound is None:
                continue
            text = f"{bound:g}" if isinstance(bound, float) else str(bound)
            if attr == "gt":
                text = f">{text}"
            if side == "low":
                low = text
            else:
                high = text
    if low and high:
        return f" ({low}..{high})" if not low.startswith(">") else f" ({low}, <={high})"
    return ""


def schema_markdown() -> str:
    """The key reference of docs/config.md, generated from the models' field descriptions."""
    out: list[str] = []
    for section, model in _SECTIONS:
        out += [f"### `{section}`", "", model.__doc__ or "", ""]
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if isinstance(field.default, BaseModel):
                default = "see below"
            elif field.default is PydanticUndefined:
                default = "required"
            else:
                default = f"`{yaml.safe_dump(field.default, default_flow_style=True).strip()}`"
                default = default.removesuffix("\n...").replace("\n...`", "`")
            kind = _type_text(field.annotation) + _bounds_text(field.metadata)
            description = (field.description or "").replace("|", "\\|")
            out.append(f"| `{name}` | {kind} | {default} | {description} |")
        out.append("")
    return "\n".join(out)
