"""The `sink` section: output videos, the web view, RTSP out, label events.
"""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from stream.config.base import Problem, Problems, Strict
from stream.config.endpoints import check_endpoint
from stream.config.redact import redact_url

VideoCodec = Literal["h264", "mp4v", "MJPG"]
H264Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"]

CODEC_CONTAINERS: dict[str, tuple[str, ...]] = {
    "h264": ("mp4", "mkv"),
    "mp4v": ("mp4",),
    "MJPG": ("avi",),
}
"""The containers each codec may be written into (`sink.codec` x `sink.video_format`)."""


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
    h264_preset: H264Preset = Field(
        default="ultrafast",
        description="libx264 speed/size trade-off of the h264 video files; the encoder "
        "shares the cores with inference. Measured at 720p (scripts/output_costs.py): "
        "ultrafast ~6 ms CPU a frame and ~3 Mbit/s at 30 fps; superfast ~9 ms and 27% "
        "smaller; veryfast ~14 ms and 53% smaller.",
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


