"""The `stream` command's edges: `--source` secrets expanded like the YAML (issue 7, item 8)
and `--connect HOST` checked before any socket exists (item 2's cause)."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.cli import main
from stream.config import check_host, connect_endpoint, expand_env
from stream.errors import ConfigError

SECRET = "hunter2-MARKER"


@pytest.fixture(autouse=True)
def _keep_root_logging() -> Iterator[None]:
    """`main()` installs the role's log handler on the root logger: put pytest's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------- defect 8


def test_unset_variable_in_source_is_a_clean_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Old main kept the literal `${CAM_PASS}` and went on to run with it."""
    monkeypatch.setenv("CAM_USER", SECRET)
    monkeypatch.delenv("CAM_PASS", raising=False)
    code = main(["run", "--source", "rtsp://${CAM_USER}:${CAM_PASS}@127.0.0.1:9/1",
                 "--model", str(tmp_path / "none.xml")])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = _errors(err)
    assert "--source" in line and "CAM_PASS is not set" in line
    assert SECRET not in err


def test_set_variable_in_source_is_expanded(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The expanded path reaches the source check (a missing file: its real path is named)."""
    monkeypatch.setenv("CLIPS", str(tmp_path / "clips"))
    code = main(["run", "--source", "${CLIPS}/missing.mp4", "--model",
                 str(tmp_path / "none.xml")])
    (line,) = _errors(capsys.readouterr().err)
    assert code == 2
    assert str(tmp_path / "clips" / "missing.mp4") in line


def test_expand_env_is_the_yaml_expansion() -> None:
    env = {"U": "alice", "P": SECRET}
    assert expand_env("rtsp://${U}:${P}@h/1", "--source", "cli", env) == f"rtsp://alice:{SECRET}@h/1"
    assert expand_env("${X:-fallback}/$${lit}", "--source", "cli", env) == "fallback/${lit}"
    assert expand_env("$HOME/x", "--source", "cli", env) == "$HOME/x"  # only ${...}
    with pytest.raises(ConfigError, match="malformed") as bad:
        expand_env("rtsp://${U}:${P@h", "--source", "cli", env)
    assert SECRET not in str(bad.value)
    with pytest.raises(ConfigError, match="Q is not set") as unset:
        expand_env("rtsp://${P}:${Q}@h", "--source", "cli", env)
    assert SECRET not in str(unset.value)


# --------------------------------------------------------------------------- --connect


@pytest.mark.parametrize("host", ["hub", "hub.example.com", "10.0.0.5", "[fd00::5]", "[::1]"])
def test_good_hosts(host: str) -> None:
    assert check_host(host) == host
    assert connect_endpoint("tcp://*:5561", host) == f"tcp://{host}:5561"


@pytest.mark.parametrize(
    ("host", "says"),
    [
        ("hub/", "without a scheme or path"),
        ("tcp://hub", "without a scheme or path"),
        ("hub:5561", "without a port"),
        ("fd00::5", "in brackets: [fd00::5]"),
        ("[nope]", "IPv6 address"),
        ("300.1.1.1", "IPv4"),
        ("-hub", "host name"),
        ("a..b", "host name"),
        ("", "empty"),
    ],
)
def test_bad_hosts(host: str, says: str) -> None:
    with pytest.raises(ConfigError, match="--connect") as exc:
        check_host(host)
    assert says in str(exc.value)
    with pytest.raises(ConfigError):
        connect_endpoint("tcp://*:5561", host)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("role", ["capture", "worker"])
def test_connect_with_a_path_is_refused_at_once(tmp_path: Path, role: str) -> None:
    """`--connect 'hub/'` used to hang the capture until killed; now exit 2, one line."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sources:\n  - id: cam\n    url: rtsp://10.0.0.9/1\n")
    extra = ["--source", "cam"] if role == "capture" else []
    ran = subprocess.run([sys.executable, "-m", "stream", role, str(cfg), *extra, "--connect",
                          "hub/"], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                         stdin=subprocess.DEVNULL)
    assert ran.returncode == 2, ran.stderr
    (line,) = _errors(ran.stderr)
    assert "--connect 'hub/'" in line
    assert "Traceback" not in ran.stderr
