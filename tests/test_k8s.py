"""deploy/k8s as Kubernetes will see it: `kubectl kustomize` renders it, every object is
valid against the Kubernetes schemas (kubernetes-validate, offline), and what the objects
say fits the code: the commands parse with the real CLI, the probes run `stream health` for
the container's own role, the ConfigMap's config loads with the real loader using only the
environment of each pod, and no pod but a camera's capture holds that camera's Secret.

No cluster and no container runtime here: what only a cluster can tell (the image runs,
pods reach each other) is not checked (docs/deploy.md says how to check it on a cluster).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from stream.cli import build_parser
from stream.config import connect_endpoint, load_config
from stream.config.endpoints import split_tcp
from stream.errors import ConfigError

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"
"""The oldest Kubernetes the manifests promise to fit (autoscaling/v2, seccompProfile)."""


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is missing: .ci/run installs it (Debian: kubernetes-client)")
        pytest.skip("kubectl not installed (Debian package kubernetes-client)")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every Deployment and StatefulSet."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]


def config_text(docs: list[dict[str, Any]]) -> str:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"
             and d["metadata"]["name"].startswith("stream-config")]
    text: str = cm["data"]["stream.yaml"]
    return text


ROLES = ("sink", "capture", "worker")
"""The commands that read the deployment config (and write a heartbeat)."""


def role_args(container: dict[str, Any]) -> Any:
    """The container's command line, parsed by the real CLI (the image's ENTRYPOINT is
    `stream`: tests/test_deploy.py checks that)."""
    assert "command" not in container, "command would replace the image's `stream` entrypoint"
    return build_parser().parse_args(container["args"])


def test_kustomize_renders_every_role(rendered: list[dict[str, Any]]) -> None:
    assert set(by_kind(rendered, "Deployment")) == {
        "stream-capture-gate", "stream-capture-yard", "stream-worker", "stream-events-proxy"}
    assert set(by_kind(rendered, "StatefulSet")) == {"stream-sink"}
    assert set(by_kind(rendered, "Service")) == {
        "stream-sink", "stream-events", "stream-web", "stream-capture-gate",
        "stream-capture-yard", "stream-events-proxy"}
    assert set(by_kind(rendered, "HorizontalPodAutoscaler")) == {"stream-worker"}
    namespaced = [d for d in rendered if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"stream"}


def test_every_object_is_valid_against_the_kubernetes_schemas(
        rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    # The validator does reject what a typo or a wrong type would make.
    (worker,) = [d for d in rendered if d["metadata"]["name"] == "stream-worker"
                 and d["kind"] == "Deployment"]
    typo = copy.deepcopy(worker)
    container = typo["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)
    wrong_type = copy.deepcopy(worker)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


def test_every_container_has_probes_resources_and_runs_unprivileged(
        rendered: list[dict[str, Any]]) -> None:
    for name, pod in workloads(rendered):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name  # deploy/Dockerfile's USER
        for c in pod["containers"]:
            where = f"{name}/{c['name']}"
            assert c.get("livenessProbe"), f"{where}: no liveness probe"
            assert c.get("readinessProbe"), f"{where}: no readiness probe"
            requests = c["resources"]["requests"]
            assert {"cpu", "memory"} <= set(requests), f"{where}: requests {requests}"
            assert "memory" in c["resources"]["limits"], f"{where}: no memory limit"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
            # A read-only root: the heartbeat directory must be a writable volume.
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            if role_args(c).command in ROLES:
                assert "/run/stream" in mounts, f"{where}: heartbeats need /run/stream"


def test_probes_check_the_containers_own_role(rendered: list[dict[str, Any]]) -> None:
    """Each exec probe is `stream health` for the role (and source) the container runs;
    an HTTP probe hits a port the container declares, the one the config serves."""
    cfg = yaml.safe_load(config_text(rendered))
    http_port = int(cfg["sink"]["http"].rpartition(":")[2])
    for name, pod in workloads(rendered):
        for c in pod["containers"]:
            role = role_args(c)
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = c.get(kind)
                if probe is None:
                    continue
                where = f"{name} {kind}"
                if "tcpSocket" in probe:  # a listener without a heartbeat (events-proxy)
                    assert role.command not in ROLES, f"{where}: use `stream health`"
                    assert probe["tcpSocket"]["port"] in ports, where
                    continue
                if "httpGet" in probe:
                    port = probe["httpGet"]["port"]
                    assert ports.get(port, port) == http_port, where
                    assert role.command == "sink", f"{where}: only the sink serves HTTP"
                    continue
                argv = probe["exec"]["command"]
                assert argv[0] == "stream", where
                health = build_parser().parse_args(argv[1:])
                assert health.command == "health", where
                assert health.role == role.command, where
                if role.command == "capture":
                    assert health.name == role.source, where
                assert probe["timeoutSeconds"] >= 3, f"{where}: python needs ~0.5 s to start"


def env_secret_names(pod: dict[str, Any]) -> set[str]:
    """Every Secret a pod can read: env, envFrom, volumes (projected too)."""
    names: set[str] = set()
    for c in pod["containers"] + pod.get("initContainers", []):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
        for e in c.get("envFrom", []):
            if "secretRef" in e:
                names.add(e["secretRef"]["name"])
    for v in pod.get("volumes", []):
        if "secret" in v:
            names.add(v["secret"]["secretName"])
        for src in v.get("projected", {}).get("sources", []):
            if "secret" in src:
                names.add(src["secret"]["name"])
    return names


def test_only_a_cameras_capture_holds_its_secret(rendered: list[dict[str, Any]]) -> None:
    seen_cameras: set[str] = set()
    for name, pod in workloads(rendered):
        (c,) = pod["containers"]
        role = role_args(c)
        secrets = env_secret_names(pod)
        cameras = {s for s in secrets if s.startswith("stream-camera-")}
        keys = {s for s in secrets if s.startswith("stream-key-")}
        assert keys == {f"stream-key-{role.command}"}, f"{name}: its own CURVE key only"
        public = secrets - cameras - keys
        assert public == ({"stream-trusted", "stream-subscribers"}
                          if role.command == "events-proxy" else {"stream-trusted"}), name
        if role.command == "capture":
            assert cameras == {f"stream-camera-{role.source}"}, name
            seen_cameras |= cameras
        else:
            assert not cameras, f"{name} ({role.command}) can read {cameras}"
    ids = [s["id"] for s in yaml.safe_load(config_text(rendered))["sources"]]
    assert seen_cameras == {f"stream-camera-{i}" for i in ids}


def pod_env(pod: dict[str, Any]) -> dict[str, str]:
    """The variables a pod's container gets, with a stand-in value for each Secret's."""
    (c,) = pod["containers"]
    env: dict[str, str] = {}
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", "rtsp://viewer:s3cret@10.0.0.7/stream1")
    assert not c.get("envFrom")
    return env


def test_the_configmap_loads_in_every_pod_with_only_that_pods_env(
        rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    """What `stream capture|worker|sink` does with /etc/stream/stream.yaml in each pod."""
    path = tmp_path / "stream.yaml"
    path.write_text(config_text(rendered), encoding="utf-8")
    for name, pod in workloads(rendered):
        (c,) = pod["containers"]
        role = role_args(c)
        if role.command not in ROLES:
            continue
        urls = (role.source,) if role.command == "capture" else ()
        cfg = load_config(path, env=pod_env(pod), urls=urls)
        assert cfg.security.enabled, f"{name}: CURVE must be on between pods"
        assert cfg.model.path.startswith("/opt/stream/models/"), "the IR built into the image"
        if role.command == "capture":
            src = next(s for s in cfg.sources if s.id == role.source)
            assert src.url.startswith("rtsp://viewer:"), f"{name}: its url is expanded"
            # Without the Secret's variable the capture could not start: it is needed.
            with pytest.raises(ConfigError, match=f"{role.source.upper()}_URL"):
                load_config(path, env={}, urls=urls)


def service_ports(svc: dict[str, Any]) -> dict[int, str]:
    return {p["port"]: p["targetPort"] for p in svc["spec"]["ports"]}


def test_the_configs_addresses_are_the_services(rendered: list[dict[str, Any]],
                                               tmp_path: Path) -> None:
    """Every address a role binds or connects to (as the real config code computes it from
    the ConfigMap and the pod's command line) is a Service that selects the right pod, on a
    port that pod's container declares."""
    path = tmp_path / "stream.yaml"
    path.write_text(config_text(rendered), encoding="utf-8")
    cfg = load_config(path, urls=())
    services = by_kind(rendered, "Service")
    pods = {**by_kind(rendered, "Deployment"), **by_kind(rendered, "StatefulSet")}

    def reached(endpoint: str) -> tuple[dict[str, Any], int]:
        """(the container a tcp://SERVICE:PORT reaches, its container port)."""
        host, port = split_tcp(endpoint)
        svc = services[host]
        target = next(p["targetPort"] for p in svc["spec"]["ports"] if p["port"] == port)
        (pod,) = [d for d in pods.values()
                  if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                         for k, v in svc["spec"]["selector"].items())]
        (c,) = pod["spec"]["template"]["spec"]["containers"]
        declared = {p["name"]: p["containerPort"] for p in c["ports"]}
        return c, declared[target] if isinstance(target, str) else int(target)

    def bound_port(endpoint: str) -> int:
        return split_tcp(endpoint)[1]

    assert services["stream-sink"]["spec"]["clusterIP"] == "None"  # straight to the pod
    for name, pod in workloads(rendered):
        (c,) = pod["containers"]
        role = role_args(c)
        if role.command in ("capture", "worker"):
            sink, port = reached(connect_endpoint(cfg.transport.sink, role.connect))
            assert role_args(sink).command == "sink", name
            assert port == bound_port(cfg.transport.sink), name
        if role.command == "worker":
            for i, src in enumerate(cfg.sources):
                capture, port = reached(cfg.frames_connect(i, role.connect))
                assert role_args(capture).source == src.id, f"{name} -> {src.id}"
                assert port == bound_port(cfg.frames_bind(i)), src.id
        if role.command == "events-proxy":
            sink, port = reached(role.upstream)
            assert role_args(sink).command == "sink"
            assert port == bound_port(cfg.sink.events)
            assert role.upstream_key == f"{cfg.security.trusted}/sink.key"
            proxy, port = reached("tcp://stream-events-proxy:5562")
            assert role_args(proxy).command == "events-proxy"
            assert port == bound_port(role.listen)
    web, port = reached(f"tcp://stream-web:{cfg.sink.http.rpartition(':')[2]}")
    assert role_args(web).command == "sink" and f":{port}" in cfg.sink.http


def test_the_sink_keeps_its_video_on_a_volume_and_workers_scale(
        rendered: list[dict[str, Any]]) -> None:
    cfg = yaml.safe_load(config_text(rendered))
    sink = by_kind(rendered, "StatefulSet")["stream-sink"]
    (claim,) = sink["spec"]["volumeClaimTemplates"]
    (c,) = sink["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == cfg["sink"]["output_dir"]
    assert role_args(c).forever
    hpa = by_kind(rendered, "HorizontalPodAutoscaler")["stream-worker"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "stream-worker"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    for name in ("stream-capture-gate", "stream-capture-yard"):
        spec = by_kind(rendered, "Deployment")[name]["spec"]
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate", name
    configmaps = set(by_kind(rendered, "ConfigMap"))
    for name, pod in workloads(rendered):
        used = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
        if role_args(pod["containers"][0]).command not in ROLES:
            continue  # the events proxy takes its settings on the command line
        assert used and used <= configmaps, f"{name} mounts a ConfigMap that is not rendered"
