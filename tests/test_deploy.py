"""The systemd units in deploy/ start real `stream` commands that the CLI accepts."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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


# --------------------------------------------------------------------------- Dockerfile

DEPLOY = UNITS.parent
CONFIG = DEPLOY / "k8s" / "stream.yaml"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) of deploy/Dockerfile, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_image_runs_the_stream_cli_as_a_user() -> None:
    """ENTRYPOINT is the `stream` command the tests run; CMD and every `stream ...` the
    build runs parse with the real parser; the user is not root; the IR the build makes is
    the one the container config names."""
    import json

    steps = dockerfile_instructions()
    values = {k: v for k, v in steps}
    assert values["FROM"].startswith("python:3.11-slim")
    assert json.loads(values["ENTRYPOINT"]) == ["stream"]
    with pytest.raises(SystemExit) as exc:  # CMD ["--help"]: prints the help, exit 0
        build_parser().parse_args(json.loads(values["CMD"]))
    assert exc.value.code == 0
    assert values["USER"].split(":")[0] == "10001"
    runs = [v for k, v in steps if k == "RUN" and "stream model build" in v]
    assert len(runs) == 1
    for weights in ("", "convnext_tiny_1k_224_ema.pth"):
        # The shell line as the build runs it, with `stream` replaced by an argv printer.
        line = runs[0].split(" stream ", 1)[1]
        script = f"WEIGHTS='{weights}'; printf '%s\\n' {line}"
        argv = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True,
                              check=True).stdout.splitlines()
        args = build_parser().parse_args(argv)
        assert (args.command, args.func.__name__) == ("model", "_build")
        import yaml

        assert args.output == yaml.safe_load(CONFIG.read_text())["model"]["path"]
        assert args.weights == (f"/context/{weights}" if weights else None)
    env = values["ENV"]
    assert "STREAM_RUN_DIR=/run/stream" in env  # where the heartbeats go (stream/health.py)


def test_the_image_build_context_holds_the_package() -> None:
    """deploy/Dockerfile.dockerignore lets in what the COPY lines need, not .venv or .git."""
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore
    for needed in ("!pyproject.toml", "!README.md", "!stream/"):
        assert needed in ignore


# --------------------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    import yaml

    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def test_compose_services_run_commands_the_cli_accepts() -> None:
    import yaml

    cfg = yaml.safe_load(CONFIG.read_text())
    ids = {s["id"] for s in cfg["sources"]}
    services = compose()["services"]
    roles: dict[str, list[str]] = {}
    for name, svc in services.items():
        args = build_parser().parse_args(svc["command"])
        assert args.config == "/etc/stream/stream.yaml", name
        roles.setdefault(args.command, []).append(name)
        mounts = {m.split(":")[1]: m.split(":")[0] for m in svc["volumes"] if ":" in m}
        assert (DEPLOY / mounts["/etc/stream/stream.yaml"]).resolve() == CONFIG.resolve()
        # Its own CURVE key, nobody else's.
        assert mounts["/etc/stream/secret/self.key_secret"] == f"./keys/{args.command}.key_secret"
        test = svc["healthcheck"]["test"]
        assert test[:2] == ["CMD", "stream"], name
        health = build_parser().parse_args(test[2:])
        assert (health.command, health.role) == ("health", args.command), name
        if args.command == "capture":
            assert args.source in ids and health.name == args.source, name
            assert args.connect == "stream-sink"
            # Its camera's secret file only: the variable its url uses.
            assert svc["env_file"] == [f"./secrets/{args.source}.env"], name
            assert name == f"stream-capture-{args.source}"  # the host the config names
        else:
            assert "env_file" not in svc and "environment" not in svc, f"{name}: no secrets"
    assert sorted(roles) == ["capture", "sink", "worker"]
    assert sorted(roles["capture"]) == sorted(f"stream-capture-{i}" for i in ids)
    worker = services[roles["worker"][0]]
    assert worker["deploy"]["replicas"] >= 1
    assert build_parser().parse_args(worker["command"]).connect == "stream-sink"


def test_compose_publishes_events_and_keeps_the_web_view_local() -> None:
    import yaml

    cfg = yaml.safe_load(CONFIG.read_text())
    sink = compose()["services"]["stream-sink"]
    events_port = cfg["sink"]["events"].rpartition(":")[2]
    assert f"{events_port}:{events_port}" in sink["ports"]
    http_port = cfg["sink"]["http"].rpartition(":")[2]
    assert f"127.0.0.1:{http_port}:{http_port}" in sink["ports"]  # no auth: this host only
    assert any(v.endswith(":/var/lib/stream/out") for v in sink["volumes"])
    assert cfg["sink"]["output_dir"] == "/var/lib/stream/out"
    # Read-only root: the heartbeats of `stream health` need a writable /run/stream.
    for name, svc in compose()["services"].items():
        assert svc["read_only"] is True and "/run/stream" in svc["tmpfs"], name


@pytest.mark.parametrize("unit", sorted(UNITS.glob("*.service")), ids=lambda p: p.name)
def test_unit_keeps_a_heartbeat_and_only_a_capture_reads_camera_secrets(unit: Path) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(unit)
    service = parser["Service"]
    # configparser keeps the last of repeated keys: read every Environment= line.
    lines = unit.read_text().splitlines()
    assert "Environment=STREAM_RUN_DIR=/run/stream" in lines  # stream.health.RUN_DIR_ENV
    assert service["RuntimeDirectory"] == "stream"
    assert service["RuntimeDirectoryPreserve"] == "yes"  # shared by every role's unit
    reads_secrets = "EnvironmentFile=-/etc/stream/secrets.env" in lines
    assert reads_secrets == unit.name.startswith("stream-capture@")


def doc_commands(path: Path) -> list[list[str]]:
    """Every `stream ...` command in the ```sh blocks of a doc (prompts like `hub$` and
    `$n` loop variables filled in), and the `stream` arguments of `docker run IMAGE ...`."""
    commands = []
    in_sh = False
    text = path.read_text().replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("```"):
            in_sh = line == "```sh"
            continue
        if not in_sh:
            continue
        line = re.sub(r"^\w+\$\s+", "", line).split(" #", 1)[0]
        for part in re.split(r"&&|;|\|", line):
            argv = shlex.split(part.replace("$n", "worker").replace(" &", ""))
            if argv[:1] == ["do"]:
                argv = argv[1:]
            if not argv or argv[0] == "export":
                continue
            if argv[0] == "stream" or (argv[:1] == ["STREAM_RUN_DIR=/run/stream"]
                                       and argv[1:2] == ["stream"]):
                commands.append(argv[argv.index("stream") + 1:])
            elif argv[:2] == ["docker", "run"]:
                image = next(i for i, a in enumerate(argv) if a.startswith("stream:"))
                commands.append(argv[image + 1:])
    return commands


@pytest.mark.parametrize("doc", ["docs/deploy.md", "deploy/README.md"])
def test_every_stream_command_in_the_docs_parses(doc: Path) -> None:
    commands = doc_commands(DEPLOY.parent / doc)
    assert commands
    for argv in commands:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # `--help` exits 0; a bad command line exits 2
            assert exc.code == 0, f"{doc}: stream {' '.join(argv)}"
            continue
        assert args.command, argv


def test_the_image_installs_the_whole_package_from_what_it_copies(tmp_path: Path) -> None:
    """Build the wheel `pip install .` builds in the image, from only the files its COPY
    lines take (and its .dockerignore lets in): every file of the package, its data (the
    labels, the web page) and the `stream` command are in it."""
    import zipfile

    repo = DEPLOY.parent
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    context = tmp_path / "context"
    context.mkdir()
    copies = [rest.split() for word, rest in dockerfile_instructions() if word == "COPY"]
    assert copies, "no COPY in deploy/Dockerfile"
    for *sources, dest in copies:
        for src in sources:
            assert src.rstrip("/") in allowed, f"COPY {src}: left out by the .dockerignore"
            # The image copies into its WORKDIR under the same relative path.
            assert dest in ("./", f"./{src}"), f"COPY {src} {dest}: not where pip looks"
            if (repo / src).is_dir():
                shutil.copytree(repo / src, context / src,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(repo / src, context / src)
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(context)], check=True,
                   capture_output=True, timeout=300)
    (wheel,) = out.glob("stream-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "ls-files", "stream"], cwd=repo, capture_output=True,
                             text=True, check=True).stdout.split()
    missing = [f for f in tracked if f not in names]
    assert not missing, f"not in the image's package: {missing}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "stream = stream.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
