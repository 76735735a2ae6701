"""model.hint auto: LATENCY when every source is live, THROUGHPUT otherwise; explicit wins.

The live flags come from the real config loader (``SourceConfig.is_live``), as the worker
takes them, and the compiled model is asked which hint OpenVINO actually got.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.config import config_from_dict
from stream.errors import ConfigError
from stream.model.runtime import compile_classifier, resolve_hint

pytestmark = pytest.mark.timeout(60)

RTSP = {"id": "cam", "url": "rtsp://10.0.0.5/live"}
FILE = {"id": "clip", "url": "clip.mp4"}
REALTIME = {"id": "paced", "url": "paced.mp4", "realtime": True}


def _hint(sources: list[dict[str, object]], hint: str | None = None) -> str:
    data: dict[str, object] = {"sources": sources}
    if hint is not None:
        data["model"] = {"hint": hint}
    cfg = config_from_dict(data, "test.yaml")
    return resolve_hint(cfg.model.hint, [s.is_live() for s in cfg.sources])


def test_auto_is_the_default_and_follows_the_sources() -> None:
    assert config_from_dict({"sources": [FILE]}, "t.yaml").model.hint == "auto"
    assert _hint([RTSP]) == "LATENCY"
    assert _hint([RTSP, REALTIME]) == "LATENCY"  # a realtime file paces like a camera
    assert _hint([FILE]) == "THROUGHPUT"
    assert _hint([RTSP, FILE]) == "THROUGHPUT"  # mixed: the file is throughput-bound


def test_explicit_hint_wins() -> None:
    assert _hint([RTSP], "THROUGHPUT") == "THROUGHPUT"
    assert _hint([FILE], "LATENCY") == "LATENCY"
    assert _hint([FILE], "CUMULATIVE_THROUGHPUT") == "CUMULATIVE_THROUGHPUT"
    with pytest.raises(ConfigError, match="not auto or one of"):
        resolve_hint("FASTEST", [True])


def test_openvino_compiles_with_the_resolved_hint(oracle_model: tuple[Path, Path]) -> None:
    for live, expected in (([True], "LATENCY"), ([False], "THROUGHPUT")):
        compiled, _ = compile_classifier(oracle_model[0], hint=resolve_hint("auto", live))
        assert str(compiled.get_property("PERFORMANCE_HINT")) == expected
    # Called without the sources (a library user), auto compiles for throughput.
    compiled, _ = compile_classifier(oracle_model[0], hint="auto")
    assert str(compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
