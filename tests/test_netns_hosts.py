"""Several hosts on one machine: Linux network namespaces joined by veth links, CURVE on.

The lab (fixture :func:`lab`, root and `ip` needed, otherwise skipped): a bridge lives in a
namespace of its own, and every "host" namespace has one veth into it with an address of
10.77.0.0/24. Nothing is created in, or changed on, the machine's own namespace; every
namespace is deleted in the fixture's finalizer (their veths go with them).

    hub 10.77.0.1   sink, the file capture, stream events-proxy, a direct subscriber
    w1  10.77.0.2   worker (killed -9 mid-run)
    w2  10.77.0.3   worker; a rogue worker and a rogue capture (key not trusted)
    sub 10.77.0.4   a subscriber through the proxy; a rogue subscriber

Worker hosts start with no camera secret in their environment (the source url is a
``${CLIP}`` only the hub's capture is given) and no IR in their working directory (each
builds the default convnext-tiny on first start, ~1.3 s here). One run, many assertions:
every frame labelled and in order against the clip's own frame count after a worker was
killed, the proxy's subscriber gets exactly the events a direct subscriber got, and every
peer without a trusted key gets nothing and is counted as refused. It prints labelled fps
with two worker hosts and then one, and the bytes per frame on the worker links (veth
counters).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import captured_by_capture, make_clip, runs_of_classes, summary_row, wait_until

from stream.security import generate

pytestmark = pytest.mark.timeout(240)

FRAMES = 200
HOSTS = {"hub": "10.77.0.1", "w1": "10.77.0.2", "w2": "10.77.0.3", "sub": "10.77.0.4"}
TASK_BYTES = 224 * 224 * 3  # one crop, the payload of a task


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@dataclass
class Lab:
    """The namespaces of one test: ``ns[host]`` is the namespace name of a host."""

    tag: str
    ns: dict[str, str] = field(default_factory=dict)

    def rx_tx(self, host: str) -> tuple[int, int]:
        """Bytes received and sent on the host's link (its veth end, eth0)."""
        base = "/sys/class/net/eth0/statistics"
        out = subprocess.run(["ip", "netns", "exec", self.ns[host], "cat", f"{base}/rx_bytes",
                              f"{base}/tx_bytes"], capture_output=True, text=True, check=True,
                             timeout=20).stdout.split()
        return int(out[0]), int(out[1])


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` (Debian: apt-get install iproute2)")
    tag = f"s9x{os.getpid() % 100000}"
    lab = Lab(tag)
    bridge = f"{tag}-br"
    made: list[str] = []
    try:
        _ip("netns", "add", bridge)
        made.append(bridge)
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for k, (host, address) in enumerate(HOSTS.items()):
            ns = f"{tag}-{host}"
            _ip("netns", "add", ns)
            made.append(ns)
            lab.ns[host] = ns
            # Both ends are born inside our namespaces: the machine's own is never touched.
            _ip("-n", bridge, "link", "add", f"p{k}", "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _ip("-n", bridge, "link", "set", f"p{k}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield lab
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


# --------------------------------------------------------------------------- processes


class Proc:
    """A `stream` process inside a namespace, its output in files (read while it runs)."""

    def __init__(self, lab: Lab, host: str, name: str, args: list[str], cwd: Path,
                 env: dict[str, str]) -> None:
        self.name = name
        self.out_path, self.err_path = cwd / f"{name}.out", cwd / f"{name}.err"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.p = subprocess.Popen(
                ["ip", "netns", "exec", lab.ns[host], sys.executable, "-m", "stream", *args],
                cwd=cwd, env=env, stdout=out, stderr=err)

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        return self.p.returncode


def _clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment: no CAM_*, no CLIP (what a fresh inference host has)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root", "LANG": "C.UTF-8",
           "OPENCV_LOG_LEVEL": "ERROR", "PYTHONPATH": str(Path(__file__).parents[1])}
    env.update(extra)
    return env


def _events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line being written
            events.append(json.loads(line))
    return events


def _host_dir(root: Path, host: str, keys: Path, own: str, trusted: list[str]) -> Path:
    """A host's working directory: keys/self.key_secret (its own), keys/trusted/*.key."""
    d = root / host
    (d / "keys" / "trusted").mkdir(parents=True)
    shutil.copy(keys / f"{own}.key_secret", d / "keys" / "self.key_secret")
    for name in trusted:
        shutil.copy(keys / f"{name}.key", d / "keys" / "trusted" / f"{name}.key")
    return d


def _config(path: Path, hub: str, port: int, key: str = "keys/self.key_secret",
            source_id: str = "clip", frames_host: str | None = None) -> Path:
    data = {
        "sources": [{"id": source_id, "url": "${CLIP}",
                     **({"policy": "drop",
                         "frames": f"tcp://{frames_host}:{port + 2}"} if frames_host else {})}],
        "workers": {"count": 0},
        "model": {"top_k": 3, "requests": 2},
        "sink": {"events": f"tcp://{hub}:{port}", "reorder_timeout_s": 10.0},
        "transport": {"sink": f"tcp://{hub}:{port + 1}", "frames": f"tcp://{hub}:{port + 2}"},
        "security": {"key": key, "trusted": "keys/trusted",
                     "sink_key": "keys/trusted/hub.key", "capture_key": "keys/trusted/hub.key"},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------- the test


def test_hosts_in_namespaces_curve_worker_killed_proxy_and_rogues(
        lab: Lab, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    for name in ("hub", "w1", "w2", "proxy", "sub", "rogue"):
        generate(name, keys)
    hub_dir = _host_dir(tmp_path, "hub", keys, "hub", ["hub", "w1", "w2", "proxy"])
    (hub_dir / "subscribers").mkdir()
    shutil.copy(keys / "proxy.key_secret", hub_dir / "proxy.key_secret")  # its own pair
    shutil.copy(keys / "sub.key", hub_dir / "subscribers" / "sub.key")
    w_dirs = {w: _host_dir(tmp_path, w, keys, w, ["hub"]) for w in ("w1", "w2")}
    sub_dir = _host_dir(tmp_path, "sub", keys, "sub", ["proxy"])
    rogue_dir = _host_dir(tmp_path, "rogue", keys, "rogue", ["hub"])
    clip = make_clip(hub_dir / "clip.mp4", runs_of_classes(FRAMES, seed=9))
    hub, port = HOSTS["hub"], 5560
    for d in (hub_dir, *w_dirs.values(), rogue_dir):
        _config(d / "deploy.yaml", hub, port)
    _config(rogue_dir / "intruder.yaml", hub, port, source_id="intruder",
            frames_host=HOSTS["w2"])
    for d in (*w_dirs.values(),):
        assert not (d / "models").exists()

    procs: list[Proc] = []

    def start(host: str, name: str, args: list[str], cwd: Path, **env: str) -> Proc:
        proc = Proc(lab, host, name, args, cwd, _clean_env(**env))
        procs.append(proc)
        return proc

    try:
        sink = start("hub", "sink", ["sink", "deploy.yaml"], hub_dir)
        wait_until(lambda: "label events on" in sink.err or sink.p.poll() is not None, 30,
                   "the sink to bind")
        assert sink.p.poll() is None, sink.err
        proxy = start("hub", "proxy", [
            "events-proxy", "--upstream", f"tcp://{hub}:{port}", "--listen",
            f"tcp://{hub}:{port + 10}", "--key", "proxy.key_secret", "--trusted",
            "subscribers", "--upstream-key", "keys/trusted/hub.key"], hub_dir)
        # Its own key pair: the hub's public key is trusted by the sink (a process's own).
        direct = start("hub", "direct", [
            "subscribe", "--json", "--endpoint", f"tcp://{hub}:{port}", "--key",
            "keys/self.key_secret", "--server-key", "keys/trusted/hub.key"], hub_dir)
        sub_args = ["subscribe", "--json", "--endpoint", f"tcp://{hub}:{port + 10}",
                    "--server-key", "keys/trusted/proxy.key", "--key"]
        via_proxy = start("sub", "via-proxy", [*sub_args, "keys/self.key_secret"], sub_dir)
        shutil.copy(keys / "rogue.key_secret", sub_dir / "rogue.key_secret")
        rogue_sub = start("sub", "rogue-sub", [*sub_args, "rogue.key_secret"], sub_dir)
        workers = {w: start(w, w, ["worker", "deploy.yaml", "--name", w], w_dirs[w])
                   for w in ("w1", "w2")}
        rogue_worker = start("w2", "rogue-worker", ["worker", "deploy.yaml", "--name", "rogue"],
                             rogue_dir)
        for w, proc in [*workers.items(), ("rogue", rogue_worker)]:
            wait_until(lambda p=proc: " ready" in p.err or p.p.poll() is not None, 90,
                       f"worker {w} to be ready")
            assert proc.p.poll() is None, proc.err
        rx0 = {w: lab.rx_tx(w) for w in workers}
        shutil.copy(clip, rogue_dir / "clip.mp4")
        start("w2", "rogue-capture", ["capture", "intruder.yaml", "--source",
                                                      "intruder"], rogue_dir, CLIP="clip.mp4")
        capture = start("hub", "capture", ["capture", "deploy.yaml", "--source", "clip"],
                        hub_dir, CLIP=str(clip))

        # Two worker hosts until a quarter of the clip is labelled, then w1 dies (-9).
        labels = lambda: [e for e in _events(direct.out_path) if e["type"] == "label"]  # noqa: E731
        vital = (sink, proxy, direct, via_proxy, capture, *workers.values())
        wait_until(lambda: len(labels()) >= FRAMES // 4
                   or any(p.p.poll() is not None for p in vital), 120, "a quarter of the labels")
        assert all(p.p.poll() is None for p in vital), "a process exited early"
        killed_at = time.time()
        workers["w1"].p.kill()
        wait_until(lambda: sink.p.poll() is not None, 150, "the sink to finish the stream")
        assert sink.p.returncode == 0, sink.err[-3000:]
        wait_until(lambda: capture.p.poll() is not None, 30, "the capture to exit")
        assert capture.p.returncode == 0, capture.err[-3000:]
        rx1 = {w: lab.rx_tx(w) for w in workers}
        summary = lambda log: any(e["type"] == "summary" for e in _events(log.out_path))  # noqa: E731
        wait_until(lambda: summary(direct) and summary(via_proxy), 30, "the final summaries")
    except BaseException:
        for proc in procs:  # what each process said, for the failure report
            print(f"--- {proc.name} (exit {proc.p.poll()}):\n{proc.err[-1500:]}")
        raise
    finally:
        for proc in procs:
            proc.stop(signal.SIGINT if "subscribe" in proc.p.args else signal.SIGTERM)

    # Accounting, against the clip's own frame count and the capture's own count.
    row = summary_row(sink.out, "clip", sink.err)
    assert (row.labelled, row.dropped) == (FRAMES, 0), sink.out
    assert captured_by_capture(capture.err, "clip") == FRAMES
    seqs = [e["seq"] for e in _events(direct.out_path) if e["type"] == "label"]
    assert seqs == list(range(FRAMES)), "labels missing, doubled or out of order"
    # The proxy's subscriber, on another host, got every event the direct one got.
    key = lambda e: (e["type"], e.get("seq"), e.get("state"))  # noqa: E731
    got = [key(e) for e in _events(via_proxy.out_path)]
    assert got == [key(e) for e in _events(direct.out_path)]
    # Worker hosts: no camera secret, no IR at start: each built the default model.
    for w, d in w_dirs.items():
        assert (d / "models" / "convnext-tiny.xml").is_file(), w
    assert "compiled" in workers["w2"].err and "224x224/1000/" in workers["w2"].err
    # Peers without a trusted key got nothing and were counted (logged once per key).
    rogue = (keys / "rogue.key").read_text()
    rogue_prefix = re.search(r'public-key = "(.{8})', rogue)[1]  # type: ignore[index]
    for proc in (sink, capture, proxy):
        refusals = re.findall(rf"refused a connection from key {re.escape(rogue_prefix)}",
                              proc.err)
        assert len(refusals) == 1, f"{proc.name}: {proc.err[-2000:]}"
    assert rogue_sub.out == "", "the rogue subscriber received events"
    assert "intruder" not in sink.out + sink.err, "the rogue capture reached the sink"
    assert "rogue" not in capture.err.replace(rogue_prefix, ""), "the rogue worker joined"

    # Figures (noisy: a shared 2-core machine; same run, so the ratio is meaningful).
    ts = [(e["seq"], e["ts"]) for e in _events(direct.out_path) if e["type"] == "label"]
    before = [t for _, t in ts if t < killed_at]
    after = [t for _, t in ts if t >= killed_at + 0.5]  # w2 alone (stamped after the kill)
    fps2 = (len(before) - 1) / (before[-1] - before[0]) if len(before) > 1 else 0.0
    fps1 = (len(after) - 1) / (after[-1] - after[0]) if len(after) > 1 else 0.0
    rx = sum(rx1[w][0] - rx0[w][0] for w in workers)
    tx = sum(rx1[w][1] - rx0[w][1] for w in workers)
    assert rx >= FRAMES * TASK_BYTES, "fewer bytes reached the workers than the crops hold"
    print(f"\nnetns: labelled fps, two worker hosts {fps2:.1f}, one worker host {fps1:.1f} "
          f"(capture ts; noisy shared CPU); worker links: {rx / FRAMES:.0f} B/frame in "
          f"(task {TASK_BYTES} B + overhead, CURVE on; includes frames re-sent after the "
          f"kill), {tx / FRAMES:.0f} B/frame out (results + credits)")
