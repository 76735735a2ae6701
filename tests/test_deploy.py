"""The systemd units in deploy/ start real `stream` commands that the CLI accepts."""

from __future__ import annotations

import configparser
import shlex
import subprocess
from pathlib import Path

import pytest

from stream.cli import build_parser

UNITS = Path(__file__).resolve().parents[1] / "deploy" / "systemd"
STREAM = "/opt/stream/.venv/bin/stream"


def exec_start(unit: Path) -> str:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(unit)
    return parser["Service"]["ExecStart"]


def stream_argv(unit: Path, instance: str, env: dict[str, str]) -> list[str]:
    """The argv `stream` would get: systemd specifiers filled in, a shell run if any."""
    line = exec_start(unit).replace("%i", instance).replace("%H", "host1")
    line = line.replace("$$", "$")  # systemd's escape for a literal $
    argv = shlex.split(line)
    if argv[0] != "/bin/sh":
        assert argv[0] == STREAM
        return argv[1:]
    # Run the unit's shell line for real, with `stream` replaced by an argv printer.
    script = argv[2].replace(f"exec {STREAM}", "printf '%s\\n'")
    out = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True,
                         check=True).stdout
    return out.splitlines()


@pytest.mark.parametrize("unit", sorted(UNITS.glob("*.service")), ids=lambda p: p.name)
@pytest.mark.parametrize("host", ["", "10.0.0.5"])
def test_unit_starts_a_command_the_cli_accepts(unit: Path, host: str) -> None:
    argv = stream_argv(unit, "entrance", {"STREAM_HOST": host} if host else {})
    args = build_parser().parse_args(argv)
    assert args.config == "/etc/stream/stream.yaml"
    assert args.command in ("sink", "capture", "worker")
    if args.command == "capture":
        assert args.source == "entrance"
    if args.command == "worker":
        assert args.name == "host1-entrance"
        assert args.connect == (host or None)
    if args.command == "sink":
        assert args.forever


@pytest.mark.parametrize("unit", sorted(UNITS.glob("*.service")), ids=lambda p: p.name)
def test_unit_restarts_on_failure_but_not_on_a_config_error(unit: Path) -> None:
    """Exit 1 (a crash, a failed output) restarts; exit 2 (fix the config) does not; and
    the stop timeout leaves room for the capture's end-of-stream (within 5 s)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(unit)
    service = parser["Service"]
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"].split() == ["2"]
    assert int(service["TimeoutStopSec"]) > 5
