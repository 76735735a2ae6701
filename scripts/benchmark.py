#!/usr/bin/env python3
"""Kept for old instructions: the benchmark is now a user command, ``stream bench``.

Everything this script used to measure (benchmark_app, then `stream run` labels only and
with video on a 720p clip, with the roles' per-stage timings) and more (a live source's
latency, the framework tax, CPU per frame of each role) lives in :mod:`stream.bench`;
this wrapper passes its arguments through, so there is one implementation.

Usage:  python scripts/benchmark.py [stream bench options]   (see: stream bench --help)
"""

from __future__ import annotations

import sys

from stream.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
