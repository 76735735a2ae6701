"""Several sinks (issue 9): two sinks, each owning one of two streams, one shared pool of
workers; each sink's summary is complete and holds only its own stream.

Real processes (`stream sink --name`, `stream worker`, `stream capture`) on loopback, real
H.264 clips, the oracle model; counts are checked against the frames each clip holds and
against the label events each sink published, never against a sink's figures alone.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import (
    ORACLE_NAMES,
    EventLog,
    assert_in_order,
    find_free_port_base,
    make_clip,
    runs_of_classes,
    summary_row,
    summary_rows,
)

pytestmark = pytest.mark.timeout(180)

FRAMES = {"east-cam": 40, "west-cam": 55}


def test_two_sinks_split_the_streams_one_worker_pool(
        tmp_path: Path, oracle_model: tuple[Path, Path],
        event_log: Callable[[str], EventLog]) -> None:
    model, labels = oracle_model
    port = find_free_port_base(6)
    classes = {sid: runs_of_classes(n, seed=i) for i, (sid, n) in enumerate(FRAMES.items())}
    sources = [{"id": sid, "url": str(make_clip(tmp_path / f"{sid}.mp4", classes[sid]))}
               for sid in FRAMES]
    data = {
        "sources": sources,
        "workers": {"count": 0},
        "model": {"path": str(model), "labels": str(labels), "top_k": 1, "requests": 1},
        "transport": {"frames": f"tcp://127.0.0.1:{port + 4}"},
        "sinks": [
            {"name": "east", "inbox": f"tcp://127.0.0.1:{port}",
             "events": f"tcp://127.0.0.1:{port + 1}", "streams": ["east-cam"]},
            {"name": "west", "inbox": f"tcp://127.0.0.1:{port + 2}",
             "events": f"tcp://127.0.0.1:{port + 3}", "streams": ["west-cam"]},
        ],
    }
    cfg = tmp_path / "split.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    logs = {"east": event_log(f"tcp://127.0.0.1:{port + 1}"),
            "west": event_log(f"tcp://127.0.0.1:{port + 3}")}

    def stream(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "stream", *args], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    sinks = {name: stream("sink", str(cfg), "--name", name) for name in ("east", "west")}
    workers = [stream("worker", str(cfg), "--name", f"w{i}") for i in range(2)]
    captures = [stream("capture", str(cfg), "--source", sid) for sid in FRAMES]
    try:
        outs = {name: p.communicate(timeout=120) for name, p in sinks.items()}
        for p in captures:
            _, err = p.communicate(timeout=30)
            assert p.returncode == 0, err[-2000:]
    finally:
        for p in [*captures, *workers, *sinks.values()]:
            if p.poll() is None:
                p.terminate()
                p.communicate(timeout=30)
    for (name, own), other in zip([("east", "east-cam"), ("west", "west-cam")],
                                  ["west-cam", "east-cam"], strict=True):
        out, err = outs[name]
        assert sinks[name].returncode == 0, err[-3000:]
        row = summary_row(out, own, err)
        assert (row.captured, row.labelled, row.dropped) == (FRAMES[own], FRAMES[own], 0)
        assert other not in summary_rows(out), f"sink {name} got the other stream"
        seqs = logs[name].seqs(own)
        assert seqs == list(range(FRAMES[own])), f"{name}: {seqs}"
        assert_in_order(seqs)
        names = [e["labels"][0]["name"] for e in logs[name].of("label", own)]
        assert names == [ORACLE_NAMES[c] for c in classes[own]], "a label went astray"
        assert not logs[name].of("label", other)


def test_sinks_config_every_stream_owned_once() -> None:
    from stream.config import config_from_dict
    from stream.errors import ConfigError

    two = [{"id": "a", "url": "a.mp4"}, {"id": "b", "url": "b.mp4"}]
    sink = {"inbox": "tcp://127.0.0.1:7001", "events": "tcp://127.0.0.1:7002"}
    with pytest.raises(ConfigError) as err:
        config_from_dict({"sources": two, "sinks": [
            {"name": "x", **sink, "streams": ["a", "zz"]},
            {"name": "x", "inbox": "tcp://127.0.0.1:7001", "events": "tcp://127.0.0.1:7004",
             "streams": ["a"]}]})
    text = str(err.value)
    for problem in ("'zz' is not a source id", "'a' is already owned by sink 'x'",
                    "duplicate sink name", "sources[1].id: no sink owns this stream",
                    "would bind the same address"):
        assert problem in text, text
    cfg = config_from_dict({"sources": two, "sinks": [{"name": "x", **sink,
                                                       "streams": ["b", "a"]}]})
    assert cfg.sink_of("a").name == "x" and cfg.sink_place("x").streams == ("b", "a")
    with pytest.raises(ConfigError, match="no sink 'y'"):
        cfg.sink_place("y")
    assert config_from_dict({"sources": two}).sink_place().streams == ("a", "b")
    # Where peers reach a sink: a sinks[] entry at its own host; a wildcard via --connect.
    hosts = config_from_dict({"sources": two, "security": {"insecure": True}, "sinks": [
        {"name": "x", "inbox": "tcp://sink-x:7001", "inbox_bind": "tcp://*:7001",
         "events": "tcp://*:7002", "streams": ["a"]},
        {"name": "y", "inbox": "tcp://*:7003", "events": "tcp://*:7004", "streams": ["b"]}]})
    assert [p.reach("hub") for p in hosts.sink_places()] == [
        "tcp://sink-x:7001", "tcp://hub:7003"]
    assert [p.bind for p in hosts.sink_places()] == ["tcp://*:7001", "tcp://*:7003"]
    assert config_from_dict({"sources": two}).sink_place().reach("hub") == "tcp://hub:5561"
