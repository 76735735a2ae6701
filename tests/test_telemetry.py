"""OpenVINO's import telemetry stays off in our processes (see stream/__init__.py).

Each check runs a fresh interpreter with an empty HOME (no opt-out file there) and without
``CI`` in its environment (OpenVINO's telemetry keeps quiet in CI jobs), counts the
process's forks with ``os.register_at_fork`` and lists what landed in that HOME: the
telemetry forks a sender process and writes ``~/intel/`` files. The same script without
``import stream`` first is the control: it shows the check can see the telemetry at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

SCRIPT = """
import json, os, sys, time
forks = [0]
os.register_at_fork(before=lambda: forks.__setitem__(0, forks[0] + 1))
if sys.argv[1] == "stream":
    import stream.model.runtime  # imports openvino, as every role does
import openvino
time.sleep(1.0)  # the telemetry sends from a background thread
print(json.dumps({"forks": forks[0]}))
"""


def imports_openvino(home: Path, first: str) -> tuple[int, list[str]]:
    """(forks, files under ``home``) of a fresh interpreter that imports openvino, after
    ``import stream`` when ``first`` is "stream"."""
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(home)
    out = subprocess.run([sys.executable, "-c", SCRIPT, first], env=env, check=True,
                         capture_output=True, text=True, timeout=90).stdout
    files = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    return json.loads(out.strip().splitlines()[-1])["forks"], files


def test_importing_stream_turns_openvinos_import_telemetry_off(tmp_path: Path) -> None:
    forks, files = imports_openvino(tmp_path / "with-stream", "stream")
    assert (forks, files) == (0, []), "OpenVINO telemetry ran in a stream process"


def test_the_control_sees_openvinos_telemetry_without_stream(tmp_path: Path) -> None:
    """Without ``import stream``, this OpenVINO forks its sender and writes ~/intel/."""
    forks, files = imports_openvino(tmp_path / "plain", "openvino")
    if forks == 0 and not files:
        pytest.skip("this OpenVINO sends no import telemetry: nothing to turn off")
    assert forks >= 1 and any(f.startswith("intel") for f in files), (forks, files)
