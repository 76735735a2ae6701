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

from stream.config.endpoints import check_host, connect_endpoint
from stream.config.load import config_from_dict, expand_env, load_config
from stream.config.models import (
    ModelConfig,
    Policy,
    SecurityConfig,
    SinkConfig,
    SinkEntry,
    SinkPlace,
    SourceConfig,
    SourceKind,
    StreamConfig,
    TransportConfig,
    WorkersConfig,
)
from stream.config.redact import redact_url
from stream.config.report import describe, dump_config, schema_markdown

__all__ = [
    "ModelConfig",
    "Policy",
    "SecurityConfig",
    "SinkConfig",
    "SinkEntry",
    "SinkPlace",
    "SourceConfig",
    "SourceKind",
    "StreamConfig",
    "TransportConfig",
    "WorkersConfig",
    "check_host",
    "config_from_dict",
    "connect_endpoint",
    "describe",
    "dump_config",
    "expand_env",
    "load_config",
    "redact_url",
    "schema_markdown",
]

