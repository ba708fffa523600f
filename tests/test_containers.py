"""The container files, checked without a Docker engine.

No image is built here. What is checked: hadolint on the Dockerfile; the compose files as Docker
Compose itself resolves them (`docker-compose config`, no daemon needed) and the semantics relied
on (GPU reservation, healthcheck, profile, shared volumes, CPU override); the build context the
.dockerignore leaves; and, outside Docker, the exact command and environment the image runs
(parsed from the Dockerfile, so they cannot drift): it must serve a story, pass its own
healthcheck, and stop cleanly on SIGTERM. The train service's command writes a checkpoint the
server loads.
"""

from __future__ import annotations

import http.server
import json
import re
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from tests.conftest import free_port
from tests.support.containers import COMPOSE, COMPOSE_CPU, ROOT, clean_env, compose_config, tool

DOCKERFILE = ROOT / "Dockerfile"


# --- Dockerfile -----------------------------------------------------------------------------------


@dataclass
class Stage:
    """One FROM ... AS name block: its base and its (KEYWORD, arguments) instructions."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [text for kw, text in self.instructions if kw == keyword]


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, from logical lines (continuations joined, comments dropped)."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current.strip())
        current = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, text = line.partition(" ")
        keyword, text = keyword.upper(), text.strip()
        if keyword == "FROM":
            words = text.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], words[0])
            stages.append(Stage(words[2] if len(words) > 2 else str(len(stages)), base))
        elif not stages and keyword == "ARG":
            name, _, default = text.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, text))
    return global_args, stages


def env_pairs(text: str) -> dict[str, str]:
    """The variables one ENV instruction sets (`ENV a=1 b="2"` or the legacy `ENV a 1`)."""
    words = shlex.split(text)
    if all("=" in w for w in words):
        return dict(w.split("=", 1) for w in words)
    return {words[0]: " ".join(words[1:])}


def stage_env(stages: list[Stage], name: str) -> dict[str, str]:
    """The ENV a stage runs with, its parent stages' included."""
    by_name = {s.name: s for s in stages}
    stage = by_name[name]
    env = stage_env(stages, stage.base) if stage.base in by_name else {}
    for text in stage.args("ENV"):
        env |= env_pairs(text)
    return env


def healthcheck(stage: Stage) -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK options and its exec-form command."""
    (text,) = stage.args("HEALTHCHECK")
    options, _, command = text.partition(" CMD ")
    parsed = dict(opt.lstrip("-").split("=", 1) for opt in options.split())
    return parsed, json.loads(command)


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    global_args, stages = parse_dockerfile(DOCKERFILE)
    assert stages[-1].name == "server", "a plain `docker build .` must give the server"
    return global_args, {s.name: s for s in stages}


def test_hadolint_passes():
    result = subprocess.run([tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_a_pinned_cuda_pytorch(dockerfile):
    global_args, stages = dockerfile
    image = global_args["BASE_IMAGE"]
    repository, _, tag = image.partition(":")
    assert repository == "pytorch/pytorch"
    assert re.fullmatch(r"\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", tag), image
    assert stages["base"].base == image


def test_dependencies_install_before_the_source_is_copied(dockerfile):
    _, stages = dockerfile
    assert stages["server-deps"].args("COPY") == ["pyproject.toml ./"]
    assert stages["train"].args("COPY") == ["pyproject.toml ./"]  # for the train extra's layer
    assert not stages["server"].args("COPY")
    assert stages["train"].base == stages["server"].base == "server-deps"
    sources = [text for s in stages.values() for text in s.args("COPY") if text.startswith("app")]
    assert sources and all("app" not in " ".join(stages[n].args("COPY")) for n in ("server-deps", "train"))
    for name in ("server", "train"):  # the package arrives last, as the wheel stage's wheel
        keywords = [kw for kw, _ in stages[name].instructions]
        runs = stages[name].args("RUN")
        assert "from=wheel" in runs[-1] and "--no-deps" in runs[-1]
        assert keywords.index("USER") > max(i for i, kw in enumerate(keywords) if kw == "RUN")


@pytest.mark.parametrize("name", ["server", "train"])
def test_runs_as_a_numeric_non_root_user(dockerfile, name):
    global_args, stages = dockerfile
    (user,) = stages[name].args("USER")
    uid = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], user)
    assert uid.isdigit() and int(uid) != 0, user


def test_server_stage_serves_on_all_interfaces_with_a_ready_healthcheck(dockerfile):
    _, stages = dockerfile
    server, env = stages["server"], stage_env(list(stages.values()), "server")
    assert json.loads(server.args("CMD")[0]) == ["storydiff", "serve"]
    assert env["STORYDIFF_HOST"] == "0.0.0.0"
    assert server.args("EXPOSE") == [env["STORYDIFF_PORT"]]
    assert env["HF_HOME"].startswith("/")
    unknown = {k.removeprefix("STORYDIFF_").lower() for k in env if k.startswith("STORYDIFF_")}
    assert unknown <= set(Settings.model_fields), "every STORYDIFF_* variable must be a Settings field"
    options, command = healthcheck(server)
    assert "/ready" in " ".join(command) and command[0] == "python3"
    assert {"interval", "timeout", "start-period", "retries"} <= set(options)


# --- .dockerignore --------------------------------------------------------------------------------


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or a parent dir decides; `!` re-includes."""

    def regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            else:
                out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
                i += 1
        return re.compile(out)

    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        compiled = regex(raw.lstrip("!").strip("/"))
        if any(compiled.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "path, sent",
    [
        ("pyproject.toml", True),
        ("README.md", True),
        ("app/cli.py", True),
        ("app/models/tinystories-default/model.safetensors", True),
        ("app/models/tinystories-default/tokenizer.json", True),
        ("model_training/configs/tiny-test.yaml", True),
        (".git/HEAD", False),
        (".venv/bin/python", False),
        ("runs/scratch/final/model.safetensors", False),
        ("output/x", False),
        ("tests/data/tinystories/train.txt", False),
        ("app/__pycache__/cli.cpython-311.pyc", False),
        ("docker-compose.yml", False),
    ],
)
def test_dockerignore_keeps_the_package_and_its_models_only(path, sent):
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert dockerignore_excludes(patterns, path) is not sent


# --- docker-compose -------------------------------------------------------------------------------


def gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def volume_targets(service: dict) -> dict[str, str]:
    return {v["source"]: v["target"] for v in service["volumes"] if v["type"] == "volume"}


def test_plain_up_starts_only_the_server_on_one_gpu():
    project = compose_config(COMPOSE)
    assert set(project["services"]) == {"server"}, "train must stay behind its profile"
    server = project["services"]["server"]
    assert gpu_devices(server) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert server["build"]["target"] == "server"
    assert server["restart"] == "unless-stopped"
    assert [(p["target"], p["published"]) for p in server["ports"]] == [(8000, "8000")]
    assert compose_config(COMPOSE, STORYDIFF_PUBLISH="9000")["services"]["server"]["ports"][0]["published"] == "9000"


def test_server_settings_pass_through_and_stay_unset_otherwise():
    server = compose_config(COMPOSE)["services"]["server"]
    names = {k.removeprefix("STORYDIFF_").lower() for k in server["environment"] if k.startswith("STORYDIFF_")}
    assert names <= set(Settings.model_fields)
    assert server["environment"]["STORYDIFF_MODEL"] is None, "unset must mean the shipped model, not ''"
    chosen = compose_config(COMPOSE, STORYDIFF_MODEL="/models/ft/final")["services"]["server"]
    assert chosen["environment"]["STORYDIFF_MODEL"] == "/models/ft/final"


def test_compose_healthcheck_is_the_images(dockerfile):
    _, stages = dockerfile
    check = compose_config(COMPOSE)["services"]["server"]["healthcheck"]
    assert check["test"] == ["CMD", *healthcheck(stages["server"])[1]]
    assert {"interval", "timeout", "retries", "start_period"} <= set(check)
    stop = compose_config(COMPOSE)["services"]["server"]["stop_grace_period"]
    assert int(stop.removesuffix("s")) > Settings().shutdown_grace, "docker stop must not cut the drain short"


def test_train_profile_writes_to_the_volume_the_server_reads(dockerfile):
    _, stages = dockerfile
    project = compose_config(COMPOSE, profile="train")
    server, train = project["services"]["server"], project["services"]["train"]
    assert train["profiles"] == ["train"] and train["build"]["target"] == "train"
    assert train["entrypoint"] == ["accelerate", "launch", "-m", "model_training"]
    assert gpu_devices(train) == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]  # all
    models = volume_targets(server)["models"]
    assert volume_targets(train)["models"] == models
    output = train["command"][train["command"].index("--output") + 1]
    assert output.startswith(models + "/")
    hf_home = stage_env(list(stages.values()), "base")["HF_HOME"]
    assert volume_targets(server)["hf-cache"] == volume_targets(train)["hf-cache"] == hf_home
    assert set(project["volumes"]) == {"models", "hf-cache"}

    from model_training.cli import parse_config

    assert parse_config(train["command"]).output == Path(output)  # the default command is valid


def test_cpu_override_drops_every_gpu_reservation():
    project = compose_config(COMPOSE, COMPOSE_CPU, profile="train")
    for name, service in project["services"].items():
        assert not gpu_devices(service), name
    assert project["services"]["server"]["environment"]["STORYDIFF_DEVICE"] == "cpu"
    assert project["services"]["server"]["healthcheck"]["test"][0] == "CMD"


# --- the image's command, run outside Docker ------------------------------------------------------


def image_env(dockerfile, tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The server stage's ENV (host and paths made local), over a clean copy of this environment."""
    _, stages = dockerfile
    env = stage_env(list(stages.values()), "server")
    env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
    env["HF_HOME"] = str(tmp_path / "hf-home")
    env["STORYDIFF_HOST"] = "127.0.0.1"  # the image's 0.0.0.0, kept off the machine's other interfaces
    return clean_env(**(env | {"HF_HUB_OFFLINE": "1"} | overrides))


class _Ready(http.server.BaseHTTPRequestHandler):
    status = 503

    def do_GET(self):
        self.send_response(self.status if self.path == "/ready" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False), (None, False)])
def test_healthcheck_command_follows_ready(dockerfile, tmp_path, status, healthy):
    _, stages = dockerfile
    _, command = healthcheck(stages["server"])
    port = free_port()
    server = None
    if status is not None:
        handler = type("Handler", (_Ready,), {"status": status})
        server = http.server.HTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = image_env(dockerfile, tmp_path, STORYDIFF_PORT=str(port))
        result = subprocess.run(command, env=env, capture_output=True, timeout=30)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    assert (result.returncode == 0) is healthy


@pytest.mark.slow
def test_image_command_serves_a_story(dockerfile, tmp_path, tiny_checkpoint_dir):
    _, stages = dockerfile
    command = json.loads(stages["server"].args("CMD")[0])
    port = free_port()
    env = image_env(dockerfile, tmp_path, STORYDIFF_PORT=str(port), STORYDIFF_MODEL=str(tiny_checkpoint_dir))
    workdir = tmp_path / "workspace"  # like the image's empty WORKDIR: nothing read from the checkout
    workdir.mkdir()
    log = (tmp_path / "server.log").open("w+")
    process = subprocess.Popen(command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        status = None
        while status != 200:
            assert process.poll() is None, f"the server exited: {log.seek(0) or log.read()}"
            assert time.monotonic() < deadline, "never ready"
            try:
                status = httpx.get(f"{base}/ready", timeout=5).status_code
            except httpx.TransportError:
                status = None
            assert status in (None, 200, 503)
            time.sleep(0.2)
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200

        _, check = healthcheck(stages["server"])
        assert subprocess.run(check, env=env, timeout=30).returncode == 0

        reply = httpx.post(
            f"{base}/generate",
            timeout=60,
            json={"prompt": "Once upon a time", "length": 24, "steps": 8, "seed": 3, "stream": False},
        )
        assert reply.status_code == 200, reply.text
        story = reply.json()
        assert story["text"].startswith("Once upon a time") and len(story["tokens"]) == 24

        # `docker stop` sends SIGTERM: the lifespan drains and stops the engine, then uvicorn exits
        # by re-raising the signal (exit 143 in Docker, which `restart: unless-stopped` accepts).
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        log.seek(0)
        assert "Application shutdown complete" in log.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


@pytest.mark.slow
def test_train_command_writes_a_checkpoint_the_server_loads(tmp_path):
    train = compose_config(COMPOSE, profile="train")["services"]["train"]
    output = tmp_path / "models" / "tiny"
    command = [*train["entrypoint"], "--config", "tiny-test", "--output", str(output), "--max-steps", "2"]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=clean_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf")),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    from app.diffusion.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(output / "final", device="cpu")
    assert checkpoint.mask_id is not None
