"""The `sources[]` section: one video source per capture, its kind and back-pressure policy.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from stream.config.base import Problem, Problems, Strict
from stream.config.endpoints import check_endpoint
from stream.ids import STREAM_ID_RULE, is_stream_id

SourceKind = Literal["file", "rtsp", "camera", "images"]
Policy = Literal["wait", "drop"]


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
        "frames are skipped. file: not used (a file keeps its own timestamps, and realtime "
        "reads at the file's own rate).",
    )
    realtime: bool = Field(
        default=False,
        description="Files only: read at the file's native fps, like a live camera.",
    )
    frames: str | None = Field(
        default=None,
        description="Where workers reach this capture's task socket, e.g. "
        "tcp://cam-host:5570 (each capture on its own host); the capture binds it too unless "
        "frames_bind says otherwise. null = transport.frames with port + i (source i).",
    )
    frames_bind: str | None = Field(
        default=None,
        description="What the capture binds when it differs from `frames` (a pod binds "
        "tcp://*:5570 while workers connect to tcp://capture-gate:5570); null = `frames`.",
    )
    capture_key: str | None = Field(
        default=None,
        min_length=1,
        description="Public key file of this capture (workers check it); null = "
        "security.capture_key.",
    )

    @field_validator("url", mode="before")
    @classmethod
    def _int_url(cls, value: object) -> object:
        # YAML reads `url: 0` as an int; a camera index is what the user meant.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("frames", "frames_bind")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_endpoint(value)

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
