"""Showing a config: the YAML with defaults (`validate --print`), a summary, the docs table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from stream.config.models import (
    ModelConfig,
    SinkConfig,
    SourceConfig,
    StreamConfig,
    Strict,
    TransportConfig,
    WorkersConfig,
    auto_hint,
)
from stream.config.redact import redact_url

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
    hint: str = m.hint
    if hint == "auto":  # what the worker compiles with (stream.model.runtime.resolve_hint)
        hint = "auto -> {} ({})".format(*auto_hint([src.is_live() for src in cfg.sources]))
    lines.append(
        f"model: {m.path} on {m.device}, {hint}, precision {m.precision or 'default'}, "
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


_SECTIONS: tuple[tuple[str, type[Strict]], ...] = (
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
