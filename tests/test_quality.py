"""The code stays `ruff` clean and `mypy --strict` clean on the package (STYLE.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("tool", ["ruff", "mypy"])
def test_static_checks(tool: str) -> None:
    exe = shutil.which(tool) or str(Path(sys.executable).with_name(tool))
    if not Path(exe).exists():
        pytest.skip(f"{tool} is not installed (pip install -e '.[test]')")
    args = [exe, "check", "stream", "tests", "scripts"] if tool == "ruff" else [exe]
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
