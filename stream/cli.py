"""The ``stream`` command: subcommands only — parse, call, map errors to exit codes.

Exit codes: 0 success, 1 runtime failure, 2 a user error (bad config, source or model: the
message says what to do), 130 interrupted before anything ran.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stream import __version__
from stream.errors import ConfigError, StreamError
from stream.health import heartbeat

log = logging.getLogger("stream")

DEFAULT_EVENTS = "tcp://127.0.0.1:5560"

EPILOG = """\
examples:
  stream demo                              build the default model, make a sample clip, run it
  stream run --source video.mp4 --output out/
  stream run --source 'rtsp://${CAM_USER}:${CAM_PASS}@10.0.0.5/1' --workers 2
  stream run configs/file.yaml             a whole deployment from one YAML file
  stream subscribe --stream demo           print label events as they happen
  stream validate configs/rtsp-cameras.yaml
  stream model build                       the convnext-tiny IR (generated weights)
  stream model build --weights convnext_tiny_1k_224_ema.pth   (real weights)

roles (for spreading one deployment over several machines):
  stream sink CONFIG | stream worker CONFIG --connect HOST | stream capture CONFIG --source ID
  stream keys generate NAME                CurveZMQ key pair for the links between machines
  stream events-proxy --upstream EP --listen EP     events to many subscribers on other hosts
"""


def _load(path: str, urls: Sequence[str] | None = None) -> Any:
    """A config from a YAML file, or from stdin when the path is ``-`` (used by `run`).

    Args:
        urls: the source ids whose ``url`` this role expands (``${VAR}``); None = all. A
            worker or sink passes ``()``: it never needs a camera secret.
    """
    from stream.config import config_from_dict, load_config

    if path == "-":
        import json

        return config_from_dict(json.loads(sys.stdin.read()), "<stdin>")
    return load_config(path, urls=urls)


def _source_id(url: str, i: int, taken: set[str]) -> str:
    """A readable, unique stream id for a ``--source`` given on the command line."""
    from stream.sources import camera_index

    if camera_index(url) is not None or "://" in url:
        base = f"cam{i}"
    else:
        p = Path(url)
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", p.stem if p.suffix else p.name)[:48] or f"s{i}"
        if not base[0].isalnum():
            base = f"s{base}"
    sid, n = base, 1
    while sid.lower() in taken:
        n += 1
        sid = f"{base}-{n}"
    taken.add(sid.lower())
    return sid


def _free_events_endpoint() -> str:
    """``--events auto``: a free loopback port, asked of the kernel (port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def _config_for_run(args: argparse.Namespace) -> Any:
    """The deployment config of ``stream run``: a YAML file and/or ``--source`` flags.

    Only what the user wrote is carried over from the file (``exclude_unset``), so the
    launcher can tell an endpoint the user named from a default it may replace.
    """
    from stream.config import config_from_dict, expand_env, load_config

    if args.config and args.source:
        raise ConfigError("give either a CONFIG file or --source flags, not both")
    data: dict[str, Any]
    if args.config:
        cfg = load_config(args.config)
        data = cfg.model_dump(exclude_unset=True)
    elif args.source:
        taken: set[str] = set()
        # `--source 'rtsp://${CAM_USER}:${CAM_PASS}@cam/1'` (quoted): expanded here, as the
        # YAML loader does (an unset variable is an error), so the password is in neither
        # the shell history nor `ps`.
        urls = [expand_env(u, "--source", "command line") for u in args.source]
        data = {"sources": [{"id": _source_id(u, i, taken), "url": u}
                            for i, u in enumerate(urls)]}
    else:
        raise ConfigError("nothing to run: give a CONFIG file or --source URL_OR_PATH "
                          "(try `stream demo` for a first run)")
    if args.workers is not None:
        data.setdefault("workers", {})["count"] = args.workers
    if args.output is not None:
        data.setdefault("sink", {})["output_dir"] = args.output
    if args.events is not None:
        events = _free_events_endpoint() if args.events == "auto" else args.events
        data.setdefault("sink", {})["events"] = events
    _http_for_run(data.setdefault("sink", {}), getattr(args, "http", None))
    rtsp_out = getattr(args, "rtsp_out", None)
    if rtsp_out is not None:  # '${VAR}' expanded here, as for --source: no password in ps
        data["sink"]["rtsp_out"] = expand_env(rtsp_out, "--rtsp-out", "command line")
    if args.model is not None:
        data.setdefault("model", {})["path"] = args.model
    if args.device is not None:
        data.setdefault("model", {})["device"] = args.device
    return config_from_dict(data, args.config or "command line")


def _http_for_run(sink: dict[str, Any], flag: str | None) -> None:
    """``stream run``'s web view: ``--http HOST:PORT`` or ``off``; else the config's
    ``sink.http`` when it names one (null: off); else on, at 127.0.0.1:8080, or at a free
    loopback port when 8080 is taken (printed at start)."""
    if flag == "off":
        sink["http"] = None
    elif flag is not None:
        sink["http"] = flag
    elif "http" not in sink:
        from stream.sink.http import default_http_address

        sink["http"] = default_http_address()


def _prepare_model(cfg: Any) -> None:
    """Build the default IR on first use; any other missing model is the user's to fix."""
    from stream.errors import ModelError
    from stream.model.builder import DEFAULT_OUTPUT, ensure_default_model

    path = Path(cfg.model.path)
    if path.exists():
        return
    if path == DEFAULT_OUTPUT or path.resolve() == DEFAULT_OUTPUT.resolve():
        print(f"building the default model at {path} (first use; takes a few seconds)",
              file=sys.stderr)
        ensure_default_model(path)
        return
    raise ModelError(f"no model at {path}: build one with `stream model build --output "
                     f"{path}` or give the path of an existing IR .xml with --model")


def _preflight(cfg: Any) -> None:
    """Open every file/folder source once, so a typo fails now with one clear line.

    Live sources are not probed: a camera that is down at start is retried by its capture.
    """
    from stream.sources import FrameSource, ImageFolderSource, OpenCVSource

    for src in cfg.sources:
        kind = src.resolved_kind()
        if kind not in ("file", "images") or "://" in src.url:
            continue
        source: FrameSource = (ImageFolderSource(src.url) if kind == "images"
                               else OpenCVSource(src.url, kind))
        try:
            source.open()
        finally:
            source.close()


def _check_model(cfg: Any) -> None:
    """Refuse an IR that is not a single-image classifier before any process starts."""
    import openvino as ov

    from stream.model.runtime import inspect_classifier

    inspect_classifier(ov.Core(), cfg.model.path)


def cmd_run(args: argparse.Namespace) -> int:
    from stream.launcher import run_all
    from stream.runtime import install_stop_handlers

    cfg = _config_for_run(args)
    _preflight(cfg)
    if cfg.sink.output_dir is not None:
        from stream.outputs.video_file import check_video_output

        check_video_output(cfg.sink.output_dir, cfg.sink.video_format, cfg.sink.codec)
    _prepare_model(cfg)
    _check_model(cfg)
    stop = threading.Event()
    install_stop_handlers(stop)
    print(f"label events on {cfg.sink.events} (watch them with: stream subscribe "
          f"--endpoint {cfg.sink.events})", file=sys.stderr)
    if cfg.sink.output_dir:
        print(f"videos go to {cfg.sink.output_dir}/", file=sys.stderr)
    if cfg.sink.rtsp_out:
        from stream.config.redact import redact_url

        print(f"publishing to {redact_url(cfg.sink.rtsp_out)} over RTSP", file=sys.stderr)
    if cfg.sink.http:
        from stream.sink.http import check_http_free, url_of

        check_http_free(cfg.sink.http)
        print(f"web view on {url_of(cfg.sink.http)} (metrics: {url_of(cfg.sink.http)}metrics;"
              " --http off to turn it off)", file=sys.stderr)
    return run_all(cfg, stop, args.log_level)


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.samples import make_sample_clip

    clip = Path(args.clip)
    if not clip.exists():
        print(f"generating a 10 s 720p sample clip at {clip}", file=sys.stderr)
        make_sample_clip(clip)
    run_args = argparse.Namespace(
        config=None, source=[str(clip)], workers=args.workers, output=args.output,
        events=args.events, model=args.model, device=None, log_level=args.log_level)
    return cmd_run(run_args)


def _role_stop(args: argparse.Namespace) -> threading.Event:
    """The stop event of a role: set by SIGTERM/SIGINT, and by the death of `stream run`
    when the role was started by it (config on stdin)."""
    from stream.runtime import install_stop_handlers, watch_parent

    stop = threading.Event()
    install_stop_handlers(stop)
    if args.config == "-":
        watch_parent(stop)
    return stop


def _check_connect(args: argparse.Namespace) -> None:
    """``--connect HOST`` checked before any socket exists (``hub/`` used to hang)."""
    from stream.config import check_host

    if args.connect is not None:
        check_host(args.connect)


def cmd_capture(args: argparse.Namespace) -> int:
    _check_connect(args)
    from stream.capture import run_capture

    cfg = _load(args.config, urls=(args.source,))
    stop = _role_stop(args)
    with heartbeat("capture", args.source):  # for `stream health --role capture`
        return run_capture(cfg, args.source, stop, args.connect)


def cmd_worker(args: argparse.Namespace) -> int:
    _check_connect(args)
    from stream.worker import run_worker

    cfg = _load(args.config, urls=())
    stop = _role_stop(args)
    with heartbeat("worker", args.name or f"{socket.gethostname()}:{os.getpid()}"):
        return run_worker(cfg, stop, args.connect, args.name)


def cmd_sink(args: argparse.Namespace) -> int:
    from stream.sink import run_sink

    cfg = _load(args.config, urls=())
    if args.http is not None:  # validated like the config's (loopback unless insecure)
        from stream.config import config_from_dict

        data = cfg.model_dump()
        data["sink"]["http"] = None if args.http == "off" else args.http
        cfg = config_from_dict(data, "--http")
    stop = _role_stop(args)
    with heartbeat("sink", "sink"):
        return run_sink(cfg, stop, run_forever=args.forever, name=args.name,
                        ready_fd=args.ready_fd)


def cmd_validate(args: argparse.Namespace) -> int:
    from stream.config import describe, dump_config

    cfg = _load(args.config)
    print(dump_config(cfg) if args.print else f"{args.config}: OK\n{describe(cfg)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from stream.bench import add_bench_parser
    from stream.events import add_subscribe_parser
    from stream.events.proxy import add_proxy_parser
    from stream.health import add_health_parser
    from stream.keys import add_keys_parser
    from stream.model.cli import add_model_parser

    parser = argparse.ArgumentParser(
        prog="stream",
        description="Classify every frame of your cameras and videos with OpenVINO: "
                    "capture → workers → sink over ZeroMQ, on one machine or many.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"stream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def role_parser(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--log-level", default="INFO",
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        return p

    run = role_parser("run", "run a whole deployment on this machine")
    run.add_argument("config", nargs="?", help="deployment YAML (see configs/)")
    run.add_argument("--source", action="append", metavar="URL_OR_PATH",
                     help="video file, rtsp:// URL, camera index or /dev/videoN, image folder; "
                          "repeat for several streams")
    run.add_argument("--workers", type=int, metavar="N", help="local inference workers")
    run.add_argument("--output", metavar="DIR",
                     help="write one labelled video per stream here (default: no video)")
    run.add_argument("--events", metavar="ENDPOINT",
                     help=f"ZMQ PUB endpoint for label events (default {DEFAULT_EVENTS}); "
                          "auto = a free port on 127.0.0.1, printed at start")
    run.add_argument("--model", metavar="PATH.xml",
                     help="classification IR (default models/convnext-tiny.xml, built on "
                          "first use)")
    run.add_argument("--device", help="OpenVINO device: CPU (default), GPU, NPU, AUTO, ...")
    run.add_argument("--http", metavar="HOST:PORT",
                     help="web view (live overlaid video, labels, drops) and /metrics here; "
                          "default: the config's sink.http, else 127.0.0.1:8080 (a free port "
                          "if taken, printed at start); off = no web view")
    run.add_argument("--rtsp-out", metavar="URL",
                     help="also publish each stream's labelled video (H.264) to this RTSP "
                          "server (MediaMTX, go2rtc); {stream} becomes the stream id, e.g. "
                          "rtsp://127.0.0.1:8554/{stream}; a server that is down is retried")
    run.set_defaults(func=cmd_run)
    run.epilog = ("examples:\n  stream run --source clip.mp4 --output out/\n"
                  "  stream run --source 'rtsp://${CAM_USER}:${CAM_PASS}@cam/1' --source 0 "
                  "--workers 2\n"
                  "    (single quotes: stream expands the variables, so the password stays out "
                  "of ps)\n"
                  "  stream run configs/multi-worker.yaml --output out/\n"
                  "  stream run --source 0 --rtsp-out 'rtsp://127.0.0.1:8554/{stream}'\n"
                  "    (then: vlc rtsp://127.0.0.1:8554/cam0 or an NVR on that URL)")

    demo = role_parser("demo", "the embedded default: sample clip → default model → out/")
    demo.add_argument("--clip", default="samples/demo.mp4", help="where the sample clip goes")
    demo.add_argument("--output", default="out", help="output videos (default out/)")
    demo.add_argument("--workers", type=int, default=1, help="local workers (default 1)")
    demo.add_argument("--events", default=None, help=f"events endpoint ({DEFAULT_EVENTS})")
    demo.add_argument("--model", default=None, help="IR to use (default: convnext-tiny)")
    demo.set_defaults(func=cmd_demo)

    cap = role_parser("capture", "run the capture of one source (one process per source)")
    cap.add_argument("config", help="deployment YAML, or - to read it from stdin")
    cap.add_argument("--source", required=True, metavar="ID", help="which source (its id)")
    cap.add_argument("--connect", metavar="HOST",
                     help="the sink's host if not the config's: a host name, an IPv4 address "
                          "or [IPv6]")
    cap.set_defaults(func=cmd_capture)

    wk = role_parser("worker", "run one inference worker (any number, any machine)")
    wk.add_argument("config", help="deployment YAML, or - to read it from stdin")
    wk.add_argument("--connect", metavar="HOST",
                    help="host where the captures and the sink run (default: config "
                         "addresses): a host name, an IPv4 address or [IPv6]")
    wk.add_argument("--name", help="worker name in logs (default host:pid)")
    wk.set_defaults(func=cmd_worker)

    sk = role_parser("sink", "run the sink: outputs, label events, accounting")
    sk.add_argument("config", help="deployment YAML, or - to read it from stdin")
    sk.add_argument("--forever", action="store_true",
                    help="keep running when the configured streams end")
    sk.add_argument("--name", metavar="NAME",
                    help="which of the config's sinks[] to run (they split the streams)")
    sk.add_argument("--http", metavar="HOST:PORT",
                    help="serve the web view, MJPEG, /api/streams, /healthz and /metrics "
                         "here (default: the config's sink.http, else off); off = none. "
                         "Captures send full frames only when THEIR config sets sink.http or "
                         "sink.output_dir: set sink.http in the shared config instead")
    # Internal, for `stream run`: a pipe to say "ready" on once the sockets are bound.
    sk.add_argument("--ready-fd", type=int, metavar="FD", help=argparse.SUPPRESS)
    sk.set_defaults(func=cmd_sink)

    val = sub.add_parser("validate", help="check a deployment YAML and summarise it")
    val.add_argument("config")
    val.add_argument("--print", action="store_true",
                     help="print the full config with defaults (secrets redacted)")
    val.set_defaults(func=cmd_validate)

    add_subscribe_parser(sub)
    add_proxy_parser(sub)
    add_keys_parser(sub)
    add_model_parser(sub)
    add_bench_parser(sub)
    add_health_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stream`` command."""
    # OpenCV's own WARN lines repeat what our errors say better; users can set it back.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from stream.runtime import setup_logging

    setup_logging(args.command, getattr(args, "log_level", "INFO"))
    try:
        return int(args.func(args))
    except StreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
