"""Per-role configuration (issue 9): each role reads only the secrets it uses.

The same YAML goes to every machine. A worker (real process) starts with no camera
variable in its environment although the config's source url is
``rtsp://${CAM_USER}:${CAM_PASS}@...``; a capture of that source without the variables
stops at once with exit 2 and a message naming the variable, never a value. Loading for a
role expands only that role's urls; a non-loopback bind without keys is refused unless
``security.insecure``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import find_free_port_base, wait_until

from stream.config import load_config
from stream.errors import ConfigError

URL = "rtsp://${CAM_USER}:${CAM_PASS}@10.0.0.31/stream1"


def _write(path: Path, model: Path, port: int, **extra: object) -> Path:
    data = {"sources": [{"id": "gate", "url": URL}, {"id": "yard", "url": "${YARD_URL}"}],
            "workers": {"count": 0}, "model": {"path": str(model), "requests": 1},
            "sink": {"events": f"tcp://127.0.0.1:{port}"},
            "transport": {"sink": f"tcp://127.0.0.1:{port + 1}",
                          "frames": f"tcp://127.0.0.1:{port + 2}"}, **extra}
    path.write_text(yaml.safe_dump(data))
    return path


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("CAM_") and k != "YARD_URL"}


def test_load_expands_only_the_urls_a_role_uses(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "c.yaml", tmp_path / "m.xml", 5560)
    env = {"CAM_USER": "u", "CAM_PASS": "s3cret", "YARD_URL": "yard.mp4"}
    worker = load_config(cfg, env={}, urls=())
    assert [s.url for s in worker.sources] == [URL, "${YARD_URL}"]
    capture = load_config(cfg, env={"YARD_URL": "yard.mp4"}, urls=("yard",))
    assert [s.url for s in capture.sources] == [URL, "yard.mp4"]
    with pytest.raises(ConfigError, match="CAM_PASS is not set") as err:
        load_config(cfg, env={"CAM_USER": "u"}, urls=("gate",))
    assert load_config(cfg, env=env).sources[0].url == "rtsp://u:s3cret@10.0.0.31/stream1"
    assert "s3cret" not in str(err.value)


def test_non_loopback_bind_needs_keys_or_insecure(tmp_path: Path) -> None:
    exposed = {"transport": {"sink": "tcp://*:5561", "frames": "tcp://127.0.0.1:5570"}}
    path = _write(tmp_path / "c.yaml", tmp_path / "m.xml", 5560, **exposed)
    with pytest.raises(ConfigError, match=r"transport\.sink: binds a non-loopback address "
                       "without keys"):
        load_config(path, env={}, urls=())
    _write(path, tmp_path / "m.xml", 5560, **exposed, security={"insecure": True})
    assert load_config(path, env={}, urls=()).security.insecure
    _write(path, tmp_path / "m.xml", 5560, **exposed,
           security={"key": "k.key_secret", "trusted": "trusted"})
    assert load_config(path, env={}, urls=()).security.enabled
    _write(path, tmp_path / "m.xml", 5560, **exposed, security={"trusted": "trusted"})
    with pytest.raises(ConfigError, match=r"security\.key: trusted given but no key"):
        load_config(path, env={}, urls=())


def test_worker_runs_without_camera_secrets_capture_without_them_fails_cleanly(
        tmp_path: Path, oracle_model: tuple[Path, Path]) -> None:
    cfg = _write(tmp_path / "deploy.yaml", oracle_model[0], find_free_port_base(4))
    capture = subprocess.run([sys.executable, "-m", "stream", "capture", str(cfg), "--source",
                              "gate"], env=_env(), capture_output=True, text=True, timeout=60)
    assert capture.returncode == 2, capture.stderr
    assert "CAM_USER is not set" in capture.stderr and "CAM_PASS" in capture.stderr
    err = tmp_path / "worker.err"
    with err.open("w") as f:
        worker = subprocess.Popen([sys.executable, "-m", "stream", "worker", str(cfg),
                                   "--name", "w"], env=_env(), stderr=f, text=True)
    try:
        wait_until(lambda: " ready" in err.read_text() or worker.poll() is not None, 60,
                   "the worker to be ready")
        assert worker.poll() is None, err.read_text()
        assert "oracle" in err.read_text()  # it logged the model it compiled
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, err.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


def test_per_source_frames_endpoints() -> None:
    from stream.config import config_from_dict

    cfg = config_from_dict({
        "sources": [{"id": "a", "url": "a.mp4"},
                    {"id": "b", "url": "b.mp4", "frames": "tcp://cam-b:6000",
                     "frames_bind": "tcp://*:6000"},
                    {"id": "c", "url": "c.mp4", "frames": "tcp://*:6001"}],
        "transport": {"frames": "tcp://127.0.0.1:5570"},
        "security": {"insecure": True}})
    # Without its own endpoint, source i keeps the old port arithmetic (port + i).
    assert [cfg.frames_bind(i) for i in range(3)] == [
        "tcp://127.0.0.1:5570", "tcp://*:6000", "tcp://*:6001"]
    assert [cfg.frames_connect(i) for i in range(3)] == [
        "tcp://127.0.0.1:5570", "tcp://cam-b:6000", "tcp://127.0.0.1:6001"]
    # --connect HUB moves what the config leaves to the hub, not a capture's own host.
    assert [cfg.frames_connect(i, "hub") for i in range(3)] == [
        "tcp://hub:5570", "tcp://cam-b:6000", "tcp://hub:6001"]
    with pytest.raises(ConfigError, match="would bind the same address"):
        config_from_dict({"sources": [{"id": "a", "url": "a.mp4", "frames": "tcp://*:5561"}],
                          "security": {"insecure": True}})
    with pytest.raises(ConfigError, match=r"sources\[0\]\.frames_bind: binds a non-loopback"):
        config_from_dict({"sources": [{"id": "a", "url": "a.mp4",
                                       "frames_bind": "tcp://0.0.0.0:6000"}]})


def test_captures_on_their_own_hosts_may_share_a_port() -> None:
    from stream.config import config_from_dict

    own = [{"id": sid, "url": f"{sid}.mp4", "frames": f"tcp://{sid}-host:5570",
            "frames_bind": "tcp://*:5570"} for sid in ("a", "b")]
    cfg = config_from_dict({"sources": own, "security": {"insecure": True}})
    assert cfg.frames_connect(1, "hub") == "tcp://b-host:5570"
    same = [dict(own[0]), dict(own[0], id="b")]
    with pytest.raises(ConfigError, match="same frames address"):
        config_from_dict({"sources": same, "security": {"insecure": True}})
