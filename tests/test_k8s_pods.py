"""deploy/k8s run for real, without a cluster: the rendered manifests' pods as processes.

Each pod of `kubectl kustomize deploy/k8s` becomes a Linux network namespace with an address
of its own; each Service name resolves, through ``/etc/netns/NS/hosts`` (which ``ip netns
exec`` mounts over ``/etc/hosts``), to the pod its selector picks; each volume mount is a
folder; each Secret holds the files docs/deploy.md tells users to put in it (keys made by
``stream keys generate``'s code). Every container starts with its own ``args`` and only the
environment its manifest gives it (plus the image's ``STREAM_RUN_DIR``), and every probe
runs as the kubelet would: exec probes in the pod's namespace, ``httpGet`` to the pod's
address. The one change to the ConfigMap's config: ``model.path`` (the IR built into the
image is not on this machine) points at the tiny oracle IR, so labels can be checked.

What it shows: the config, the addresses, the CURVE keys, the camera Secrets and the probes
of the manifests fit together and label every frame of both cameras, in order, seen by a
subscriber through the events proxy; a worker killed with -9 fails its liveness probe.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.security import generate
from tests.conftest import make_clip, runs_of_classes, wait_until

pytestmark = pytest.mark.timeout(180)

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
FRAMES = 40
SUBNET = "10.79.0"
IMAGE_ENV = {"STREAM_RUN_DIR": "/run/stream"}  # deploy/Dockerfile's ENV (test_deploy checks)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@dataclass
class Pod:
    """One pod of the render: its namespace, address, folders and container."""

    name: str
    ns: str
    address: str
    labels: dict[str, str]
    spec: dict[str, Any]
    root: Path
    mounts: list[tuple[str, Path]] = field(default_factory=list)

    @property
    def container(self) -> dict[str, Any]:
        (c,) = self.spec["containers"]
        return c  # type: ignore[no-any-return]

    def local(self, value: str) -> str:
        """A path inside the container → the folder standing in for its volume."""
        for mount, local in self.mounts:
            if value == mount or value.startswith(mount + "/"):
                return str(local) + value[len(mount):]
        return value

    def env(self, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"], "HOME": str(self.root)}
        env.update({k: self.local(v) for k, v in IMAGE_ENV.items()})
        for e in self.container.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            env[e["name"]] = secrets[ref["name"]][ref["key"]] if ref else e["value"]
        return env

    def exec(self, argv: list[str], env: dict[str, str], **kw: Any) -> Any:
        """``ip netns exec`` with this pod's namespace; ``stream`` is this checkout's."""
        args = [self.local(a) for a in argv[1:]]
        # This checkout's interpreter is never a container path (a venv under /tmp would
        # otherwise be mapped into the pod's /tmp volume).
        head = [sys.executable, "-m", "stream"] if argv[0] == "stream" else [self.local(argv[0])]
        return ["ip", "netns", "exec", self.ns, *head, *args]


@pytest.fixture
def rendered() -> list[dict[str, Any]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's `ip` (CI runs as root)")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (Debian package kubernetes-client)")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture
def namespaces() -> Iterator[tuple[str, list[str]]]:
    """A bridge namespace and the list the test adds pod namespaces to; all deleted after,
    with their /etc/netns/NS folders. The machine's own namespace is never touched."""
    tag = f"k8s{os.getpid() % 100000}"
    made: list[str] = []
    _ip("netns", "add", f"{tag}-br")
    _ip("-n", f"{tag}-br", "link", "add", "br0", "type", "bridge")
    _ip("-n", f"{tag}-br", "link", "set", "br0", "up")
    try:
        yield tag, made
    finally:
        for ns in [*made, f"{tag}-br"]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


def add_pod_namespace(tag: str, made: list[str], k: int, hosts: str) -> tuple[str, str]:
    ns, address = f"{tag}-p{k}", f"{SUBNET}.{k + 1}"
    _ip("netns", "add", ns)
    made.append(ns)
    _ip("-n", f"{tag}-br", "link", "add", f"v{k}", "type", "veth", "peer", "name", "eth0",
        "netns", ns)
    _ip("-n", f"{tag}-br", "link", "set", f"v{k}", "master", "br0", "up")
    _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
    _ip("-n", ns, "link", "set", "eth0", "up")
    _ip("-n", ns, "link", "set", "lo", "up")
    etc = Path("/etc/netns") / ns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hosts").write_text(hosts)
    return ns, address


def test_the_manifests_run_as_pods(rendered: list[dict[str, Any]],
                                   namespaces: tuple[str, list[str]], tmp_path: Path,
                                   oracle_model: tuple[Path, Path]) -> None:
    tag, made = namespaces
    xml, labels = oracle_model
    # -- Secrets, as docs/deploy.md step 3 makes them ------------------------------------
    keys = tmp_path / "keys"
    for name in ("sink", "capture", "worker", "events-proxy", "me"):
        generate(name, keys)
    trusted, subscribers = tmp_path / "trusted", tmp_path / "subscribers"
    trusted.mkdir()
    subscribers.mkdir()
    for name in ("sink", "capture", "worker", "events-proxy"):
        shutil.copy(keys / f"{name}.key", trusted)
    shutil.copy(keys / "me.key", subscribers)
    classes = {cam: runs_of_classes(FRAMES, seed) for seed, cam in enumerate(("gate", "yard"))}
    secrets: dict[str, dict[str, str]] = {
        f"stream-camera-{cam}": {"url": str(make_clip(tmp_path / f"{cam}.mp4", cls))}
        for cam, cls in classes.items()}
    secret_dirs: dict[str, Path] = {"stream-trusted": trusted, "stream-subscribers": subscribers}
    for name in ("sink", "capture", "worker", "events-proxy"):
        d = tmp_path / f"secret-{name}"
        d.mkdir()
        shutil.copy(keys / f"{name}.key_secret", d / "self.key_secret")
        secret_dirs[f"stream-key-{name}"] = d
    (cm,) = [d for d in rendered if d["kind"] == "ConfigMap"]
    config = yaml.safe_load(cm["data"]["stream.yaml"])

    # -- Pods: one namespace each, Service names resolving to the pod they select --------
    workloads = [d for d in rendered if d["kind"] in ("Deployment", "StatefulSet")]
    addresses = {d["metadata"]["name"]: f"{SUBNET}.{k + 1}" for k, d in enumerate(workloads)}
    hosts = "127.0.0.1 localhost\n"
    for svc in (d for d in rendered if d["kind"] == "Service"):
        (target,) = [d for d in workloads
                     if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                            for k, v in svc["spec"]["selector"].items())]
        hosts += f"{addresses[target['metadata']['name']]} {svc['metadata']['name']}\n"
    pods: dict[str, Pod] = {}
    for k, d in enumerate(workloads):
        name = d["metadata"]["name"]
        ns, address = add_pod_namespace(tag, made, k, hosts)
        pod = Pod(name, ns, address, d["spec"]["template"]["metadata"]["labels"],
                  d["spec"]["template"]["spec"], tmp_path / name)
        pod.root.mkdir()
        volumes = {v["name"]: v for v in pod.spec["volumes"]}
        for m in pod.container["volumeMounts"]:
            v = volumes.get(m["name"], {})
            if "configMap" in v:
                local = pod.root / "stream.yaml"
            elif "secret" in v:
                local = secret_dirs[v["secret"]["secretName"]]
            else:  # an emptyDir or the sink's volume claim
                local = pod.root / m["name"]
                local.mkdir(mode=0o700)
            pod.mounts.append((m["mountPath"], local))
        pod.mounts.sort(key=lambda m: -len(m[0]))
        if any(path.name == "stream.yaml" for _, path in pod.mounts):
            mapped = json.loads(json.dumps(config), object_hook=lambda o, pod=pod: {
                k: pod.local(v) if isinstance(v, str) else v for k, v in o.items()})
            mapped["model"].update(path=str(xml), labels=str(labels))  # the one change
            (pod.root / "stream.yaml").write_text(yaml.safe_dump(mapped))
        pods[name] = pod
    me_ns, _ = add_pod_namespace(tag, made, len(workloads), hosts)

    # -- Run them, in the order Kubernetes would make them ready ---------------------------
    procs: list[subprocess.Popen[bytes]] = []

    def start(pod: Pod) -> subprocess.Popen[bytes]:
        with (pod.root / "log").open("wb") as log:
            proc = subprocess.Popen(pod.exec(["stream", *pod.container["args"]],
                                             pod.env(secrets)),
                                    env=pod.env(secrets), cwd=pod.root, stdout=log, stderr=log)
        procs.append(proc)
        return proc

    def probe(pod: Pod, kind: str) -> bool:
        p = pod.container[kind]
        if "exec" in p:
            env = pod.env(secrets)
            r = subprocess.run(pod.exec(p["exec"]["command"], env), env=env, timeout=30,
                               capture_output=True)
            return r.returncode == 0
        if "httpGet" in p:
            ports = {q["name"]: q["containerPort"] for q in pod.container["ports"]}
            port = ports.get(p["httpGet"]["port"], p["httpGet"]["port"])
            url = f"http://{pod.address}:{port}{p['httpGet']['path']}"
            code = ("import sys, urllib.request\ntry:\n sys.exit(0 if urllib.request.urlopen("
                    f"{url!r}, timeout=3).status == 200 else 1)\nexcept Exception:\n sys.exit(1)")
            return subprocess.run(["ip", "netns", "exec", pod.ns, sys.executable, "-c", code],
                                  timeout=30).returncode == 0
        port = p["tcpSocket"]["port"]
        ports = {q["name"]: q["containerPort"] for q in pod.container["ports"]}
        code = (f"import socket; socket.create_connection(({pod.address!r}, "
                f"{ports.get(port, port)}), timeout=3).close()")
        return subprocess.run(["ip", "netns", "exec", pod.ns, sys.executable, "-c", code],
                              capture_output=True, timeout=30).returncode == 0

    def ready(pod: Pod, proc: subprocess.Popen[bytes]) -> None:
        for kind in ("livenessProbe", "readinessProbe"):
            def passes(kind: str = kind) -> bool:
                assert proc.poll() is None, f"{pod.name} exited {proc.returncode}\n{logs()}"
                return probe(pod, kind)

            wait_until(passes, 60, f"{pod.name} {kind}\n{logs()}", poll=0.3)

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{(p.root / 'log').read_text()[-1500:]}"
                         for p in pods.values() if (p.root / "log").exists())

    sink, proxy = pods["stream-sink"], pods["stream-events-proxy"]
    captures = [pods["stream-capture-gate"], pods["stream-capture-yard"]]
    worker = pods["stream-worker"]
    events = tmp_path / "events.jsonl"
    try:
        ready(sink, start(sink))
        ready(proxy, start(proxy))
        with events.open("wb") as out:
            env = {"PATH": os.environ["PATH"]}
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", me_ns, sys.executable, "-m", "stream", "subscribe",
                 "--endpoint", "tcp://stream-events-proxy:5562", "--json",
                 "--key", str(keys / "me.key_secret"),
                 "--server-key", str(keys / "events-proxy.key")], env=env, stdout=out))
        started = [(pod, start(pod)) for pod in captures]
        for pod, proc in started:  # waiting for a worker: alive, and their probes say so
            ready(pod, proc)

        def seen(kind: str) -> list[dict[str, Any]]:
            return [e for e in map(json.loads, events.read_text().splitlines())
                    if e["type"] == kind]

        # The subscriber hears the captures' status through the proxy: the path is open.
        wait_until(lambda: {e["stream"] for e in seen("status")} >= {"gate", "yard"}, 60,
                   "status events through the proxy")
        worker_proc = start(worker)
        wait_until(lambda: probe(worker, "startupProbe"), 60, "the worker's startup probe",
                   poll=0.3)
        assert probe(worker, "livenessProbe") and probe(worker, "readinessProbe")
        wait_until(lambda: len(seen("label")) >= 2 * FRAMES, 90,
                   f"{2 * FRAMES} label events\n{logs()}", poll=0.1)
        for cam, cls in classes.items():
            got = [e for e in seen("label") if e["stream"] == cam]
            assert [e["seq"] for e in got] == list(range(FRAMES)), cam
            assert [e["labels"][0]["id"] for e in got] == cls, f"{cam}: wrong labels"
        assert probe(sink, "livenessProbe") and probe(sink, "readinessProbe")
        worker_proc.kill()  # -9
        worker_proc.wait(10)
        assert not probe(worker, "livenessProbe")
        assert probe(sink, "livenessProbe")  # the others go on
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
