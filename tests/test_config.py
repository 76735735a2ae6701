"""Tests of stream.config: the messages users see for bad configs, defaults, env expansion,
source-kind detection, endpoint arithmetic, shipped examples, and secret redaction."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.config import (
    SourceConfig,
    StreamConfig,
    TransportConfig,
    config_from_dict,
    connect_endpoint,
    describe,
    dump_config,
    load_config,
    redact_url,
    schema_markdown,
)
from stream.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_ENV = {"CAM_USER": "viewer", "CAM_PASS": "s3cret-pw"}

MINIMAL = "sources:\n  - id: a\n    url: a.mp4\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stream.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env or {})
    return str(info.value)


# --------------------------------------------------------------------------- bad configs

BAD = [
    pytest.param(MINIMAL + "colour: red\n", "colour: unknown key", id="unknown-root-key"),
    pytest.param(
        MINIMAL + "sink:\n  smoothng: 5\n",
        "sink.smoothng: unknown key; did you mean 'smoothing'? (got 5)",
        id="unknown-nested-key",
    ),
    pytest.param(
        "sources:\n  - id: a\n    url: a.mp4\n    colour: red\n",
        "sources[0].colour: unknown key",
        id="unknown-key-in-list-item",
    ),
    pytest.param(
        MINIMAL + "workers:\n  count: many\n",
        "workers.count: Input should be a valid integer, unable to parse string as an integer "
        "(got 'many')",
        id="wrong-type",
    ),
    pytest.param(
        MINIMAL + "workers: 3\n",
        "workers: expected a mapping of `key: value` lines (got 3)",
        id="section-not-a-mapping",
    ),
    pytest.param(
        "sources:\n  - id: 7\n    url: a.mp4\n",
        "sources[0].id: Input should be a valid string; YAML read this as a number or boolean, "
        "put it in quotes (got 7)",
        id="id-read-as-number",
    ),
    pytest.param(
        MINIMAL + "sink:\n  smoothing: 5000\n",
        "sink.smoothing: Input should be less than or equal to 1000 (got 5000)",
        id="out-of-bounds-high",
    ),
    pytest.param(
        "sources:\n  - id: a\n    url: a.mp4\n    fps: 0\n",
        "sources[0].fps: Input should be greater than 0 (got 0)",
        id="out-of-bounds-fps",
    ),
    pytest.param(
        MINIMAL + "model:\n  hint: FAST\n",
        "model.hint: Input should be 'auto', 'THROUGHPUT', 'LATENCY' or "
        "'CUMULATIVE_THROUGHPUT' "
        "(got 'FAST')",
        id="bad-literal",
    ),
    pytest.param(MINIMAL + "version: 2\n", "version: unsupported config version", id="version"),
    pytest.param("sources: []\n", "sources: at least one source is needed", id="no-sources"),
    pytest.param("workers:\n  count: 1\n", "sources: required key is missing", id="no-sources-key"),
    pytest.param(
        "sources:\n  - {id: cam1, url: a.mp4}\n  - {id: cam2, url: b.mp4}\n"
        "  - {id: cam1, url: c.mp4}\n",
        "sources[2].id: duplicate source id 'cam1' (sources[0].id is 'cam1'",
        id="duplicate-id",
    ),
    pytest.param(
        "sources:\n  - {id: Cam1, url: a.mp4}\n  - {id: cam1, url: b.mp4}\n",
        "sources[1].id: duplicate source id 'cam1' (sources[0].id is 'Cam1'; ids must be unique, "
        "ignoring case)",
        id="duplicate-id-case",
    ),
    pytest.param(
        "sources:\n  - {id: front door, url: a.mp4}\n",
        "sources[0].id: a source id is 1-64 characters of letters, digits, '_', '.' or '-'",
        id="id-pattern-space",
    ),
    pytest.param(
        "sources:\n  - {id: -cam, url: a.mp4}\n",
        "sources[0].id: a source id is 1-64 characters",
        id="id-pattern-leading-dash",
    ),
    pytest.param(
        "sources:\n  - {id: " + "a" * 65 + ", url: a.mp4}\n",
        "sources[0].id: a source id is 1-64 characters",
        id="id-too-long",
    ),
    pytest.param(
        "sources:\n  - {id: cam, url: 'rtsp://h/s', loop: true}\n",
        "sources[0].loop: loop replays a file, but this source is rtsp (got True)",
        id="loop-on-rtsp",
    ),
    pytest.param(
        "sources:\n  - {id: cam, url: 0, realtime: true}\n",
        "sources[0].realtime: realtime paces a file like a live camera, but this source is camera",
        id="realtime-on-camera",
    ),
    pytest.param(
        "sources:\n  - {id: cam, url: 'rtsp://h/s', policy: wait}\n",
        "sources[0].policy: a live rtsp source cannot wait for workers",
        id="wait-on-rtsp",
    ),
    pytest.param(
        "sources:\n  - {id: cam, url: 'rtsp://admin:hunter2@'}\n",
        "sources[0].url: the URL has no host: write it like rtsp://192.168.1.10:554/stream1 "
        "(got 'rtsp://***:***@')",
        id="rtsp-url-without-host",
    ),
    pytest.param(
        "sources:\n  - {id: cam, url: a.mp4, kind: rtsp}\n",
        "sources[0].url: kind 'rtsp' needs a network URL like rtsp://host/path (got 'a.mp4')",
        id="rtsp-kind-without-url",
    ),
    pytest.param(
        "sources:\n  - {id: cam, url: 'rtsp://h/s', kind: camera}\n",
        "sources[0].kind: kind 'camera' is for a local device or folder",
        id="camera-kind-with-url",
    ),
    pytest.param(
        MINIMAL + "sink:\n  events: http://127.0.0.1:5560\n",
        "sink.events: a ZeroMQ endpoint must start with tcp://, ipc:// or inproc:// "
        "(like tcp://127.0.0.1:5561) (got 'http://127.0.0.1:5560')",
        id="bad-endpoint-scheme",
    ),
    pytest.param(
        MINIMAL + "transport:\n  sink: 127.0.0.1:5561\n",
        "transport.sink: a ZeroMQ endpoint must start with tcp://",
        id="endpoint-without-scheme",
    ),
    pytest.param(
        MINIMAL + "transport:\n  frames: tcp://127.0.0.1\n",
        "transport.frames: a tcp endpoint needs a host and a port, like tcp://127.0.0.1:5570 "
        "(got 'tcp://127.0.0.1')",
        id="tcp-frames-without-port",
    ),
    pytest.param(
        MINIMAL + "transport:\n  frames: tcp://127.0.0.1:70000\n",
        "transport.frames: tcp port must be 1..65535, not 70000",
        id="tcp-port-range",
    ),
    pytest.param(
        "sources:\n  - {id: a, url: a.mp4}\n  - {id: b, url: b.mp4}\n"
        "transport:\n  frames: tcp://127.0.0.1:65535\n",
        "transport.frames: 2 sources need ports 65535..65536, past 65535",
        id="frames-port-overflow",
    ),
    pytest.param(
        "sources:\n  - {id: a, url: a.mp4}\n  - {id: b, url: b.mp4}\n"
        "transport:\n  frames: tcp://*:5560\n",
        "transport.frames: capture 0's frames (tcp://*:5560) would bind the same address as "
        "sink.events (tcp://127.0.0.1:5560)",
        id="frames-port-collision",
    ),
    pytest.param(
        MINIMAL + "sink:\n  codec: avc1\n",
        "sink.codec: Input should be 'h264', 'mp4v' or 'MJPG' (got 'avc1')",
        id="codec-unknown",
    ),
    pytest.param(
        MINIMAL + "sink:\n  codec: MJPG\n",
        "sink.codec: codec MJPG goes in avi, not in mp4: set video_format: avi, or codec: "
        "h264 or mp4v for mp4 (got 'MJPG')",
        id="codec-mjpg-in-mp4",
    ),
    pytest.param(
        MINIMAL + "sink:\n  video_format: avi\n",
        "sink.codec: codec h264 goes in mp4 or mkv, not in avi: set video_format: mp4, or "
        "codec: MJPG for avi (got 'h264')",
        id="default-codec-in-avi",
    ),
    pytest.param(
        MINIMAL + "sink:\n  codec: mp4v\n  video_format: mkv\n",
        "sink.codec: codec mp4v goes in mp4, not in mkv",
        id="codec-mp4v-in-mkv",
    ),
    pytest.param(
        "sources:\n  - {id: cam, url: 'rtsp://${CAM_USER}:${CAM_PASS}@h/s'}\n",
        "sources[0].url: environment variable CAM_USER is not set; set it or write "
        "${CAM_USER:-default} (got 'rtsp://${CAM_USER}:${CAM_PASS}@h/s')",
        id="missing-env-var",
    ),
    pytest.param(
        "sources:\n  - {id: cam, url: 'rtsp://h/${BROKEN'}\n",
        "sources[0].url: malformed ${...}",
        id="malformed-reference",
    ),
    pytest.param("", "stream.yaml: the config file is empty", id="empty-file"),
    pytest.param("# only a comment\n", "stream.yaml: the config file is empty", id="only-comment"),
    pytest.param(
        "- id: a\n  url: a.mp4\n",
        "stream.yaml: expected a mapping of keys at the top (like `sources:`), got list",
        id="not-a-mapping",
    ),
    pytest.param("just text\n", "got str 'just text'", id="scalar-document"),
    pytest.param("sources: [\n", "stream.yaml: not valid YAML: line 2, column 1:", id="not-yaml"),
    pytest.param(
        MINIMAL + "sink:\n  smoothing: 2\n  smoothing: 3\n",
        "stream.yaml: not valid YAML: line 6, column 3: duplicate key 'smoothing' "
        "(first on line 5)",
        id="duplicate-yaml-key",
    ),
]


@pytest.mark.parametrize(("text", "fragment"), BAD)
def test_bad_config_message(tmp_path: Path, text: str, fragment: str) -> None:
    message = error_of(tmp_path, text)
    assert fragment in message
    assert message.startswith(str(tmp_path / "stream.yaml") + ": ")


def test_every_error_is_listed_one_per_line(tmp_path: Path) -> None:
    message = error_of(
        tmp_path,
        MINIMAL + "sink:\n  smoothing: 0\n  codec: x\nworkers:\n  count: -1\n",
    )
    first, *lines = message.splitlines()
    assert first.endswith("stream.yaml: 3 errors:")
    assert sorted(line.split(":")[0].strip() for line in lines) == [
        "sink.codec",
        "sink.smoothing",
        "workers.count",
    ]


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found$"):
        load_config(tmp_path / "nope.yaml")


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_config_from_dict_uses_source_name() -> None:
    with pytest.raises(ConfigError, match=r"^--source: sources\[0\]\.url: required key"):
        config_from_dict({"sources": [{"id": "a"}]}, source_name="--source")
    with pytest.raises(ConfigError, match="expected a mapping"):
        config_from_dict([], source_name="x")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- good configs


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), env={})
    assert cfg.version == 1
    assert cfg.model.path == "models/convnext-tiny.xml"
    assert (cfg.model.device, cfg.model.hint) == ("CPU", "auto")
    assert (cfg.model.precision, cfg.model.requests, cfg.model.streams) == (None, 0, None)
    assert (cfg.model.top_k, cfg.model.labels) == (5, None)
    assert cfg.workers.count == 1
    assert cfg.sink.output_dir is None
    assert (cfg.sink.video_format, cfg.sink.codec, cfg.sink.draw) == ("mp4", "h264", True)
    assert cfg.sink.events == "tcp://127.0.0.1:5560"
    assert (cfg.sink.smoothing, cfg.sink.reorder_timeout_s) == (1, 5.0)
    assert cfg.transport == TransportConfig(
        sink="tcp://127.0.0.1:5561", frames="tcp://127.0.0.1:5570", hwm=16
    )
    src = cfg.sources[0]
    assert (src.kind, src.policy, src.loop, src.rtsp_transport) == ("auto", None, False, "tcp")
    assert (src.fps, src.realtime) == (None, False)


@pytest.mark.parametrize(
    ("codec", "video_format", "ok"),
    [
        ("h264", "mp4", True), ("h264", "mkv", True), ("h264", "avi", False),
        ("mp4v", "mp4", True), ("mp4v", "mkv", False), ("mp4v", "avi", False),
        ("MJPG", "avi", True), ("MJPG", "mp4", False), ("MJPG", "mkv", False),
    ],
)
def test_codec_and_container_pairs(codec: str, video_format: str, ok: bool) -> None:
    data = {"sources": [{"id": "a", "url": "a.mp4"}],
            "sink": {"codec": codec, "video_format": video_format}}
    if ok:
        sink = config_from_dict(data).sink
        assert (sink.codec, sink.video_format) == (codec, video_format)
    else:
        with pytest.raises(ConfigError, match=f"sink.codec: codec {codec} goes in"):
            config_from_dict(data)


def test_config_is_frozen() -> None:
    cfg = config_from_dict({"sources": [{"id": "a", "url": "a.mp4"}]})
    with pytest.raises(ValueError, match="frozen"):
        cfg.workers.count = 3  # type: ignore[misc]


def test_env_expansion(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        sources:
          - id: cam
            url: rtsp://${CAM_USER}:${CAM_PASS}@${CAM_HOST:-10.0.0.1}/s
            fps: ${CAM_FPS:-12.5}
          - id: lit
            url: a$${NOT_A_VAR}.mp4
        workers:
          count: ${WORKERS}
        """,
    )
    env = {"CAM_USER": "bob", "CAM_PASS": "p@ss:w/rd", "WORKERS": "3", "CAM_HOST": ""}
    cfg = load_config(path, env=env)
    assert cfg.sources[0].url == "rtsp://bob:p@ss:w/rd@10.0.0.1/s"
    assert cfg.sources[0].fps == 12.5
    assert cfg.sources[1].url == "a${NOT_A_VAR}.mp4"
    assert cfg.workers.count == 3


def test_env_defaults_to_os_environ_at_call_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "sources:\n  - {id: a, url: '${VIDEO}'}\n")
    monkeypatch.setenv("VIDEO", "first.mp4")
    assert load_config(path).sources[0].url == "first.mp4"
    monkeypatch.setenv("VIDEO", "second.mp4")
    assert load_config(path).sources[0].url == "second.mp4"


def test_int_url_is_a_camera_index(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "sources:\n  - {id: webcam, url: 0}\n"), env={})
    src = cfg.sources[0]
    assert src.url == "0"
    assert (src.resolved_kind(), src.resolved_policy(), src.is_live()) == ("camera", "drop", True)


@pytest.mark.parametrize(
    ("url", "kind", "policy", "live"),
    [
        ("rtsp://10.0.0.1/stream1", "rtsp", "drop", True),
        ("RTSPS://10.0.0.1:322/s", "rtsp", "drop", True),
        ("http://cam.local/video.mjpg", "rtsp", "drop", True),
        ("https://example.com/live.m3u8", "rtsp", "drop", True),
        ("2", "camera", "drop", True),
        ("/dev/video0", "camera", "drop", True),
        ("videos/clip.mp4", "file", "wait", False),
        ("file:///videos/clip.mp4", "file", "wait", False),
        ("/no/such/folder", "file", "wait", False),
    ],
)
def test_resolved_kind_and_policy(url: str, kind: str, policy: str, live: bool) -> None:
    src = SourceConfig(id="s", url=url)
    assert (src.resolved_kind(), src.resolved_policy(), src.is_live()) == (kind, policy, live)


def test_image_folder_is_detected(tmp_path: Path) -> None:
    src = SourceConfig(id="s", url=str(tmp_path))
    assert (src.resolved_kind(), src.resolved_policy(), src.is_live()) == ("images", "wait", False)


def test_explicit_kind_and_policy_win() -> None:
    remote_file = SourceConfig(id="s", url="https://example.com/clip.mp4", kind="file", loop=True)
    assert (remote_file.resolved_kind(), remote_file.resolved_policy()) == ("file", "wait")
    lossy = SourceConfig(id="s", url="a.mp4", policy="drop")
    assert lossy.resolved_policy() == "drop"


def test_realtime_file_is_live_and_drops_by_default() -> None:
    src = SourceConfig(id="s", url="a.mp4", realtime=True)
    assert (src.is_live(), src.resolved_policy()) == (True, "drop")
    lossless = SourceConfig(id="s", url="a.mp4", realtime=True, policy="wait")
    assert lossless.resolved_policy() == "wait"


def test_frames_endpoint_arithmetic() -> None:
    t = TransportConfig(frames="tcp://10.1.2.3:5570")
    assert t.frames_endpoint(0) == "tcp://10.1.2.3:5570"
    assert t.frames_endpoint(7) == "tcp://10.1.2.3:5577"
    assert t.frames_endpoints(3) == [
        "tcp://10.1.2.3:5570",
        "tcp://10.1.2.3:5571",
        "tcp://10.1.2.3:5572",
    ]
    assert TransportConfig(frames="tcp://*:6000").frames_endpoint(2) == "tcp://*:6002"
    assert TransportConfig(frames="tcp://[::1]:6000").frames_endpoint(1) == "tcp://[::1]:6001"
    ipc = TransportConfig(frames="ipc:///tmp/stream-frames")
    assert ipc.frames_endpoints(2) == ["ipc:///tmp/stream-frames-0", "ipc:///tmp/stream-frames-1"]
    assert TransportConfig(frames="inproc://f").frames_endpoint(3) == "inproc://f-3"
    assert TransportConfig().frames_endpoints(0) == []
    with pytest.raises(ConfigError, match="past 65535"):
        TransportConfig(frames="tcp://h:65535").frames_endpoint(1)
    with pytest.raises(ValueError, match=">= 0"):
        t.frames_endpoint(-1)


def test_connect_endpoint() -> None:
    assert connect_endpoint("tcp://*:5561") == "tcp://127.0.0.1:5561"
    assert connect_endpoint("tcp://0.0.0.0:5561") == "tcp://127.0.0.1:5561"
    assert connect_endpoint("tcp://10.0.0.5:5561") == "tcp://10.0.0.5:5561"
    assert connect_endpoint("tcp://*:5570", host="hub.lan") == "tcp://hub.lan:5570"
    assert connect_endpoint("ipc:///tmp/s", host="hub.lan") == "ipc:///tmp/s"


EXAMPLES = sorted((ROOT / "configs").glob("*.yaml"))


def test_the_four_examples_ship() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"file.yaml", "rtsp-cameras.yaml", "multi-worker.yaml", "remote-workers.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_shipped_examples_load(path: Path) -> None:
    cfg = load_config(path, env=EXAMPLE_ENV)
    summary = describe(cfg)
    dumped = dump_config(cfg)
    assert "s3cret-pw" not in summary + dumped + repr(cfg)
    # The dump is itself a valid config with the same values (secrets aside).
    again = config_from_dict(__import__("yaml").safe_load(dumped))
    assert again.model_dump(exclude={"sources"}) == cfg.model_dump(exclude={"sources"})
    assert [s.id for s in again.sources] == [s.id for s in cfg.sources]


def test_example_specifics() -> None:
    rtsp = load_config(ROOT / "configs/rtsp-cameras.yaml", env=EXAMPLE_ENV)
    assert len(rtsp.sources) == 3
    assert all(s.resolved_kind() == "rtsp" and s.resolved_policy() == "drop" for s in rtsp.sources)
    assert rtsp.sink.smoothing == 5
    assert rtsp.sources[0].url == "rtsp://viewer:s3cret-pw@192.168.1.21:554/stream1"
    remote = load_config(ROOT / "configs/remote-workers.yaml", env=EXAMPLE_ENV)
    assert remote.workers.count == 0
    assert remote.transport.frames_endpoints(2) == ["tcp://*:5570", "tcp://*:5571"]
    multi = load_config(ROOT / "configs/multi-worker.yaml", env=EXAMPLE_ENV)
    assert (multi.workers.count, len(multi.sources)) == (3, 2)
    single = load_config(ROOT / "configs/file.yaml", env={})
    assert (single.workers.count, single.sink.output_dir) == (1, "out")


def test_describe_and_dump(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            "sources": [
                {"id": "door", "url": "rtsp://admin:hunter2@10.0.0.9/s"},
                {"id": "clip", "url": "a.mp4", "loop": True},
            ],
            "sink": {"output_dir": "out"},
        }
    )
    text = describe(cfg)
    assert "door  rtsp    drop  rtsp://***:***@10.0.0.9/s" in text
    assert "clip  file    wait  a.mp4 (loop)" in text
    assert "frames tcp://127.0.0.1:5570 .. tcp://127.0.0.1:5571" in text
    assert "hunter2" not in text + dump_config(cfg) + repr(cfg) + str(cfg.sources[0])
    assert "url: rtsp://***:***@10.0.0.9/s" in dump_config(cfg)
    # the hint the worker will compile with, not "auto"
    assert "auto -> THROUGHPUT (1 of 2 source(s) not live)" in text
    live = config_from_dict({"sources": [{"id": "door", "url": "rtsp://10.0.0.9/s"},
                                         {"id": "clip", "url": "a.mp4", "realtime": True}]})
    assert "auto -> LATENCY (every source is live)" in describe(live)
    fixed = config_from_dict({"sources": [{"id": "door", "url": "rtsp://10.0.0.9/s"}],
                              "model": {"hint": "THROUGHPUT"}})
    assert "on CPU, THROUGHPUT," in describe(fixed)


def test_docs_reference_is_generated_from_the_models() -> None:
    docs = (ROOT / "docs/config.md").read_text(encoding="utf-8")
    assert schema_markdown().strip() in docs, "regenerate docs/config.md from schema_markdown()"
    for name in StreamConfig.model_fields:
        assert f"`{name}`" in docs


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("rtsp://user:pass@10.0.0.1:554/s", "rtsp://***:***@10.0.0.1:554/s"),
        ("rtsp://user@10.0.0.1/s", "rtsp://***@10.0.0.1/s"),
        ("rtsps://u:p@ss@h/s", "rtsps://***:***@h/s"),
        ("rtsp://u:pa/ss@h/s", "rtsp://***:***@h/s"),
        ("rtsp://10.0.0.1/s", "rtsp://10.0.0.1/s"),
        ("videos/a.mp4", "videos/a.mp4"),
        (
            "open rtsp://a:b@h1/x and http://c:d@h2/y",
            "open rtsp://***:***@h1/x and http://***:***@h2/y",
        ),
        ("rtsp://${CAM_USER}:${CAM_PASS}@h/s", "rtsp://${CAM_USER}:${CAM_PASS}@h/s"),
        ("rtsp://${U}:${P:-fallback}@h/s", "rtsp://***:***@h/s"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


# Printable passwords; the "Q7" marker keeps one from being a word that error messages
# contain anyway (hypothesis found "camera" and "source"), which would be no leak at all.
PASSWORDS = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="{}$'\"\\"),
    min_size=6,
    max_size=30,
).map(lambda text: f"Q7{text}")


@settings(max_examples=60, deadline=None)
@given(password=PASSWORDS)
def test_password_never_leaks_into_errors(password: str) -> None:
    # The secret reaches the config both literally and through the environment, in URL and
    # non-URL fields, next to errors of every kind: it must never be printed.
    data = {
        "sources": [
            {"id": "a", "url": f"rtsp://admin:{password}@10.0.0.1/s", "loop": True},
            {"id": "b c", "url": f"rtsp://admin:{password}@10.0.0.2/s"},
            {"id": "d", "url": f"http://admin:{password}@h/x", "kind": "camera"},
            {"id": f"rtsp://u:{password}@h", "url": "x"},
        ],
        "sink": {"events": f"rtsp://u:{password}@h:1", "codec": f"rtsp://u:{password}@h"},
        "transport": {"frames": f"tcp://u:{password}@h"},
    }
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert password not in str(info.value)
    assert "***" in str(info.value)


@settings(max_examples=30, deadline=None)
@given(password=PASSWORDS)
def test_env_secret_never_leaks_even_outside_urls(tmp_path_factory, password: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / "s.yaml"
    path.write_text(
        "sources:\n"
        "  - {id: a, url: 'rtsp://${U}:${P}@h/s', loop: true}\n"
        "sink:\n  codec: '${P}'\n  smoothing: '${P}'\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"U": "admin", "P": password})
    message = str(info.value)
    assert password not in message
    assert "sink.codec" in message and "'${P}'" in message
    assert re.search(r"sources\[0\]\.loop: .*\(got True\)", message)
