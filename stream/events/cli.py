"""`stream subscribe`: readable or JSON lines from a running sink, and the line format.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from stream.errors import ConfigError, StreamError
from stream.events.client import subscribe
from stream.events.schema import DEFAULT_ENDPOINT, EVENT_TYPES
from stream.security import Curve

# --------------------------------------------------------------------------- formatting


def _clock(ts: Any) -> str:
    """Local wall-clock time ``HH:MM:SS.mmm`` of a Unix timestamp (what an operator reads)."""
    try:
        t = float(ts)
        whole = math.floor(t)
        ms = min(999, round((t - whole) * 1000))
        return time.strftime("%H:%M:%S", time.localtime(whole)) + f".{ms:03d}"
    except (TypeError, ValueError, OverflowError, OSError):
        return "??:??:??.???"


def _fmt_entry(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "nothing"
    return f"{entry['name']} {float(entry['score']):.2f}"


def _fmt_ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f} ms"


def _fmt_counts(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def format_event(event: Mapping[str, Any]) -> str:
    """One human-readable line for a decoded event, e.g.

    ``12:00:01.234 cam1 #42 tabby 0.91 | tiger cat 0.05 (38 ms)``

    Times are local wall-clock time of ``ts``. Unknown types print their raw map.
    """
    t = event.get("type")
    head = f"{_clock(event.get('ts'))} {event.get('stream')}"
    if t == "label":
        labels = " | ".join(_fmt_entry(e) for e in event["labels"]) or "(no labels)"
        return f"{head} #{event['seq']} {labels} ({_fmt_ms(event['latency_ms'])})"
    if t == "change":
        return (
            f"{head} #{event['seq']} change: {_fmt_entry(event['current'])} "
            f"(was {_fmt_entry(event['previous'])})"
        )
    if t == "status":
        line = f"{head} status {event['state']}"
        if event.get("message"):
            line += f": {event['message']}"
        if event.get("counters"):
            line += f" [{_fmt_counts(event['counters'])}]"
        return line
    if t == "summary":
        dropped = event["dropped"]
        lat = event["latency_ms"]
        drops = f"dropped {sum(dropped.values())}"
        if dropped:
            drops += f" ({_fmt_counts(dropped)})"
        captured = "unknown" if event["captured"] is None else event["captured"]
        return (
            f"{head} summary: captured {captured}, labelled {event['labelled']}, "
            f"{drops}, {float(event['fps']):.1f} fps, "
            f"latency p50 {_fmt_ms(lat['p50'])} p99 {_fmt_ms(lat['p99'])}"
        )
    return f"{head} {t}: {dict(event)!r}"


# --------------------------------------------------------------------------- CLI

_EPILOG = f"""\
examples:
  stream subscribe                                  every event, one line each
  stream subscribe --stream cam1 --stream cam2      two streams (exact ids)
  stream subscribe --type change --type status      only class changes and status
  stream subscribe --json | jq -c 'select(.type=="label") | .labels[0]'
  stream subscribe --endpoint tcp://10.0.0.5:5560 --json --count 100 > events.jsonl
  stream subscribe --type summary --timeout 30      exit after 30 s of silence
  stream subscribe --endpoint tcp://hub:5560 --key keys/me.key_secret --server-key keys/hub.key
                                                    a sink (or events proxy) with CURVE

from Python:
  import stream.events
  for event in stream.events.subscribe("{DEFAULT_ENDPOINT}", streams=["cam1"]):
      if event["type"] == "label":
          top = event["labels"][0]
          print(event["seq"], top["name"], top["score"])

Any language: connect a ZMQ SUB socket, subscribe to the stream id (and "status/<id>"),
read [topic, msgpack map] messages; the schema is in docs/events.md.
"""


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _non_negative_float(text: str) -> float:
    x = float(text)
    if not x >= 0 or math.isinf(x):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return x


def add_subscribe_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``subscribe`` subcommand; its handler is ``args.func(args) -> int``."""
    p = subparsers.add_parser(
        "subscribe",
        help="print label events from a running sink",
        description="Print the label events a sink publishes (one line per event).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                   help=f"the sink's events endpoint (default: {DEFAULT_ENDPOINT})")
    p.add_argument("--stream", action="append", metavar="ID",
                   help="only this stream id (exact match); repeat for several")
    p.add_argument("--type", action="append", choices=EVENT_TYPES, metavar="TYPE",
                   help=f"only this event type ({', '.join(EVENT_TYPES)}); repeat for several")
    p.add_argument("--json", action="store_true",
                   help="print each event as one JSON object per line (the event map as sent)")
    p.add_argument("--count", type=_positive_int, metavar="N",
                   help="exit after N events")
    p.add_argument("--timeout", type=_non_negative_float, metavar="SECONDS",
                   help="exit after SECONDS without an event (default: wait forever)")
    p.add_argument("--key", metavar="FILE.key_secret",
                   help="this subscriber's CURVE key pair (`stream keys generate`); with "
                        "--server-key, for a sink or events proxy that requires keys")
    p.add_argument("--server-key", metavar="FILE.key",
                   help="the publisher's public key (the sink's or the events proxy's)")
    p.set_defaults(func=run_subscribe)


def _json_default(obj: object) -> object:
    # Extra fields from a newer producer may hold msgpack bin values.
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def run_subscribe(args: argparse.Namespace) -> int:
    """Handler of ``stream subscribe``: print events until ``--count``, ``--timeout`` or Ctrl-C.

    Returns:
        0 on a normal end (including Ctrl-C and a closed pipe); 2 on a usage error.
    """
    seen = 0
    try:
        if (args.key is None) != (args.server_key is None):
            raise ConfigError("--key and --server-key go together (CURVE needs both)")
        curve = None if args.key is None else Curve.client(args.key, args.server_key)
        for event in subscribe(args.endpoint, args.stream, args.type, timeout=args.timeout,
                               curve=curve):
            if args.json:
                line = json.dumps(event, ensure_ascii=False, default=_json_default)
            else:
                line = format_event(event)
            print(line, flush=True)  # flush per line: consumers are often pipes
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`| head`): exit quietly, and stop Python's final flush
        # from raising again on the dead pipe.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - must outlive this function
        return 0
    except StreamError as exc:
        print(f"stream subscribe: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m stream.events subscribe [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m stream.events", description="Label events of a stream sink."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_subscribe_parser(sub)
    args = parser.parse_args(argv)
    func: Any = args.func
    return int(func(args))


if __name__ == "__main__":
    sys.exit(main())
