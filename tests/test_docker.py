"""The images and compose files built and run for real on a local Docker engine (marked `docker`).

No registry image can be pulled in CI, so the images are built on the local CPU PyTorch base that
`../shared/docker/local-base.sh` makes (`.ci/setup-docker.sh` runs it before the tests). The
Dockerfile's default CUDA base stays what users get; everything above that layer is what runs here.
The engine is the one that answers, or a dockerd this module starts and then stops by its PID.
Without either, or without the base images, the Docker tests fail with the reason where CI=true and
skip saying why elsewhere (tests/support/components.py). Deselect them with `pytest -m "not docker"`.

What runs: the `server`, `train` and proxy images, built as the compose files declare them; the
server image with no network at all, as its non-root user; the compose stack up to `healthy` and a
story streamed through the published port; the train profile for a few steps into the `models`
volume (the stories come from a read-only bind mount: the images carry no data) and that checkpoint
served through STORYDIFF_MODEL; two replicas behind nginx (docker-compose.scale.yml): both answer,
each client sticks to one, and a stream arrives through the proxy step by step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse

from tests.conftest import STORIES_DIR, free_port
from tests.support.components import require_component
from tests.support.containers import COMPOSE, COMPOSE_CPU, ROOT, clean_env, compose_cli, compose_config, tool

COMPOSE_SCALE = ROOT / "docker-compose.scale.yml"
PROXY_DOCKERFILE = ROOT / "deploy" / "nginx" / "Dockerfile"
DOCKER = "/usr/bin/docker"  # Debian's 20.10 client drives the daemon's built-in BuildKit (local-base.sh)
TORCH_BASE = "local/torch-cpu:2.13"  # what ../shared/docker/local-base.sh builds ...
DEBIAN_BASE = "local/bookworm-py:base"  # ... on this minimal Debian root (the proxy's base here)
SETUP = "run .ci/setup-docker.sh (Debian's docker.io and the local base images)"
SERVER_UID = "10001"  # the Dockerfile's STORYDIFF_UID
TRAIN_STEPS = 4


def docker_test(test):
    """A test that needs the engine: marked `docker` (skip with -m "not docker") and slow, with time
    for the first one to build the images."""
    return pytest.mark.docker(pytest.mark.slow(pytest.mark.timeout(1800)(test)))


# --- without an engine: the scale-out files as compose resolves them --------------------------------


def test_proxy_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([tool("hadolint"), "--no-color", str(PROXY_DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("files", [(COMPOSE, COMPOSE_CPU, COMPOSE_SCALE), (COMPOSE, COMPOSE_SCALE, COMPOSE_CPU)])
def test_scale_file_puts_replicas_behind_one_published_proxy(files) -> None:
    project = compose_config(*files, STORYDIFF_REPLICAS="3", STORYDIFF_PUBLISH="9000")
    server, proxy = project["services"]["server"], project["services"]["proxy"]
    assert server["scale"] == 3, "the CPU override's `deploy: !reset` must not drop the replicas"
    assert not server.get("ports"), "replicas publish nothing: they would race for one host port"
    assert [(p["target"], p["published"], p.get("host_ip")) for p in proxy["ports"]] == [(8080, "9000", "127.0.0.1")]
    assert proxy["depends_on"]["server"]["condition"] == "service_healthy"
    assert Path(proxy["build"]["context"]) == PROXY_DOCKERFILE.parent


def test_gpu_layout_in_the_scaling_guide_gives_each_replica_its_own_gpu(tmp_path) -> None:
    guide = (ROOT / "docs" / "scaling.md").read_text()
    start = guide.index("# docker-compose.gpus.yml")
    snippet = guide[start : guide.index("```", start)]
    (tmp_path / "docker-compose.gpus.yml").write_text(snippet)
    project = compose_config(COMPOSE, COMPOSE_SCALE, tmp_path / "docker-compose.gpus.yml", STORYDIFF_REPLICAS="1")
    servers = {name: s for name, s in project["services"].items() if s.get("image", "").startswith("storydiff:")}
    assert len(servers) == 2 and all(not s.get("ports") for s in servers.values())
    devices = [s["deploy"]["resources"]["reservations"]["devices"] for s in servers.values()]
    assert sorted(d[0]["device_ids"][0] for d in devices) == ["0", "1"] and all(len(d) == 1 for d in devices)
    aliases = [
        (s.get("networks", {}).get("default") or {}).get("aliases", []) for n, s in servers.items() if n != "server"
    ]
    assert all("server" in a for a in aliases), "the proxy finds replicas by the name `server`"
    assert set(project["services"]["proxy"]["depends_on"]) == set(servers)


# --- the engine and the images ---------------------------------------------------------------------


def run(*args: str, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kwargs)
    if check:
        assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def engine_answers(docker: str) -> bool:
    return run(docker, "info", check=False, timeout=60).returncode == 0


def stop(process: subprocess.Popen) -> None:
    """SIGTERM a process this module started, by its PID; SIGKILL if it outlives a minute."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def docker(tmp_path_factory) -> Iterator[str]:
    """A docker client whose engine answers: the running one, or a dockerd started (and stopped) here."""
    client = DOCKER if Path(DOCKER).exists() else shutil.which("docker")
    if client is None:
        require_component("no docker client", SETUP)
    daemon = None
    if not engine_answers(client):
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            require_component("no Docker engine answers and there is no dockerd to start", SETUP)
        if os.geteuid() != 0:
            require_component("no Docker engine answers, and starting dockerd needs root", "start dockerd as root")
        log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
        with log.open("w") as out:
            daemon = subprocess.Popen([dockerd], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while not engine_answers(client):
            if daemon.poll() is not None or time.monotonic() > deadline:
                stop(daemon)
                require_component(f"dockerd did not start: {log.read_text()[-1500:]}", SETUP)
            time.sleep(1)
    try:
        missing = [i for i in (TORCH_BASE, DEBIAN_BASE) if run(client, "image", "inspect", i, check=False).returncode]
        if missing:
            require_component(f"no local base image {missing}", SETUP)
        yield client
    finally:
        if daemon is not None:
            stop(daemon)


@dataclass
class Project:
    """One compose project of this test run: its own name, image tag, volumes and published port."""

    docker: str
    name: str = field(default_factory=lambda: f"storydiff-test-{os.getpid()}")
    tag: str = field(default_factory=lambda: f"test-{os.getpid()}")
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(STORYDIFF_TAG=self.tag, STORYDIFF_PUBLISH=str(self.port), HF_HUB_OFFLINE="1", **extra)

    def compose(self, *args: str, files=(COMPOSE, COMPOSE_CPU), env=None, timeout: float = 600):
        command = [*compose_cli(), "-p", self.name, "--project-directory", str(ROOT), "--env-file", os.devnull]
        command += [arg for f in files for arg in ("-f", str(f))]
        return run(*command, *args, env=self.env(**(env or {})), cwd=ROOT, timeout=timeout)

    def images(self) -> dict[str, dict]:
        """Each service's image and build section, as compose resolves them with every file."""
        project = compose_config(COMPOSE, COMPOSE_CPU, COMPOSE_SCALE, profile="train", STORYDIFF_TAG=self.tag)
        return {name: service for name, service in project["services"].items() if "build" in service}

    def build(self) -> None:
        """Build what compose declares, on the local bases (`--network host`: pip and apt need it)."""
        for name, service in self.images().items():
            build = service["build"]
            base = DEBIAN_BASE if name == "proxy" else TORCH_BASE
            target = ["--target", build["target"]] if "target" in build else []
            dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
            start = time.monotonic()
            run(
                self.docker, "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}", *target,
                "-f", str(dockerfile), "-t", service["image"], build["context"],
                env=os.environ | {"DOCKER_BUILDKIT": "1"}, timeout=1200,
            )  # fmt: skip
            print(f"built {service['image']} in {time.monotonic() - start:.0f} s")  # shown by pytest -rA

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service, files=(COMPOSE, COMPOSE_CPU, COMPOSE_SCALE)).stdout.split()

    def health(self, container: str) -> str:
        return run(self.docker, "inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", container).stdout.strip()

    def wait_healthy(self, service: str, count: int = 1, timeout_s: float = 300) -> None:
        """Until `count` containers of `service` report their healthcheck `healthy`."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = [self.health(c) for c in self.containers(service)]
            if len(states) == count and all(s == "running healthy" for s in states):
                return
            if time.monotonic() > deadline or any("unhealthy" in s or "exited" in s for s in states):
                logs = self.compose("logs", "--tail", "40", service, files=(COMPOSE, COMPOSE_CPU, COMPOSE_SCALE))
                pytest.fail(f"{service}: {states}\n{logs.stdout[-4000:]}")
            time.sleep(2)

    def teardown(self) -> None:
        """Containers, networks and volumes of the project, then the images this run tagged."""
        files = (COMPOSE, COMPOSE_CPU, COMPOSE_SCALE)
        try:
            self.compose("--profile", "train", "down", "--volumes", "--remove-orphans", "--timeout", "30", files=files)
        finally:
            run(self.docker, "image", "rm", *(service["image"] for service in self.images().values()), check=False)


@pytest.fixture(scope="module")
def project(docker) -> Iterator[Project]:
    project = Project(docker)
    try:
        project.build()
        yield project
    finally:
        project.teardown()


def stream_story(url: str, request: dict) -> tuple[httpx.Response, list, dict]:
    """POST a streaming request: the response, (arrival time, step event) pairs and the `done` event."""
    steps, done = [], None
    with (
        httpx.Client(timeout=120) as client,
        connect_sse(client, "POST", f"{url}/generate", json=request | {"stream": True}) as source,
    ):
        response = source.response
        assert response.status_code == 200, response.read()
        for event in source.iter_sse():
            if event.event == "step":
                steps.append((time.monotonic(), json.loads(event.data)))
            elif event.event in ("done", "error"):
                assert event.event == "done", event.data
                done = json.loads(event.data)
    assert done is not None, "the stream ended without a done event"
    return response, steps, done


# --- with an engine ---------------------------------------------------------------------------------


@docker_test
def test_server_image_serves_with_no_network_as_a_non_root_user(project: Project) -> None:
    image = project.images()["server"]["image"]
    name = f"{project.name}-offline"
    run(project.docker, "run", "-d", "--name", name, "--network", "none", image)
    try:
        # The image's own HEALTHCHECK turns healthy only once /ready is 200: the shipped model loaded
        # with no network at all (and no HF_HUB_OFFLINE either).
        deadline = time.monotonic() + 300
        while (state := project.health(name)) != "running healthy":
            assert "exited" not in state and "unhealthy" not in state, run(project.docker, "logs", name).stderr
            assert time.monotonic() < deadline, state
            time.sleep(2)
        inspect = json.loads(run(project.docker, "inspect", name).stdout)[0]
        assert inspect["HostConfig"]["NetworkMode"] == "none"
        assert inspect["Config"]["User"] == SERVER_UID
        assert run(project.docker, "exec", name, "id", "-u").stdout.strip() == SERVER_UID
        probe = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/health').status)"
        assert run(project.docker, "exec", name, "python3", "-c", probe).stdout.strip() == "200"
    finally:
        run(project.docker, "rm", "-f", name, check=False)

    train = project.images()["train"]["image"]
    uid = run(project.docker, "run", "--rm", "--network", "none", "--entrypoint", "id", train, "-u").stdout
    assert uid.strip() == SERVER_UID
    usage = run(project.docker, "run", "--rm", "--network", "none", train).stdout  # CMD: --help
    assert "--max-steps" in usage


@docker_test
def test_compose_stack_turns_healthy_and_streams_a_story(project: Project) -> None:
    project.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "300")
    project.wait_healthy("server")
    prompt = "Once upon a time"
    response, steps, done = stream_story(project.url, {"prompt": prompt, "length": 48, "steps": 12, "seed": 5})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert [event["step"] for _, event in steps] == sorted({event["step"] for _, event in steps})
    assert len(steps) >= 2 and steps[-1][1]["masked"] == 0
    assert done["text"].startswith(prompt) and done["seed"] == 5 and len(done["tokens"]) == 48


@docker_test
def test_train_profile_writes_a_checkpoint_that_the_server_then_serves(project: Project) -> None:
    # The images carry no data: the preset's stories (tests/data/...) come from a read-only mount.
    trained = project.compose(
        "--profile", "train", "run", "--rm", "-T",
        "-v", f"{STORIES_DIR.parent}:/workspace/tests/data:ro",
        "train", "--config", "tiny-test", "--output", "/models/ci-tiny", "--max-steps", str(TRAIN_STEPS),
        "--save-every", "2", "--num-samples", "0", "--log-every", "2",
    )  # fmt: skip
    assert f"done: {TRAIN_STEPS} steps" in trained.stdout, trained.stdout[-2000:] + trained.stderr[-2000:]

    project.compose(
        "up", "-d", "--no-build", "--wait", "--wait-timeout", "300", env={"STORYDIFF_MODEL": "/models/ci-tiny/final"}
    )
    project.wait_healthy("server")
    info = httpx.get(f"{project.url}/info", timeout=30).json()
    assert info["max_length"] == 64 and info["parameters"] < 1_000_000, "not the tiny-test checkpoint"
    story = httpx.post(f"{project.url}/generate", json={"steps": 8, "seed": 2}, timeout=120)
    assert story.status_code == 200, story.text
    assert len(story.json()["tokens"]) == 64  # the checkpoint's seq_len


def up_two_replicas(project: Project) -> str:
    """The scale-out stack (idempotent: compose keeps what is already up as asked); the proxy's URL."""
    files = (COMPOSE, COMPOSE_CPU, COMPOSE_SCALE)
    project.compose(
        "up", "-d", "--no-build", "--wait", "--wait-timeout", "300", files=files, env={"STORYDIFF_REPLICAS": "2"}
    )
    project.wait_healthy("server", count=2)
    return project.url


@docker_test
def test_two_replicas_behind_nginx_both_serve_and_stream_step_by_step(project: Project) -> None:
    url = up_two_replicas(project)
    request = {"length": 24, "steps": 4}

    # Each client sticks to one replica (resumes need it), and different clients reach both.
    by_key: dict[str, set[str]] = {}
    for n in range(12):
        key = f"client-{n}"
        for _ in range(2):
            reply = httpx.post(f"{url}/generate", json=request, cookies={"storydiff_replica": key}, timeout=120)
            assert reply.status_code == 200, reply.text
            by_key.setdefault(key, set()).add(reply.headers["x-upstream"])
    assert all(len(upstreams) == 1 for upstreams in by_key.values()), by_key
    assert len(set.union(*by_key.values())) == 2, by_key

    with httpx.Client(timeout=120) as client:  # a cookie jar, as a browser has
        first = client.post(f"{url}/generate", json=request)
        assert "storydiff_replica" in client.cookies, first.headers
        assert client.post(f"{url}/generate", json=request).headers["x-upstream"] == first.headers["x-upstream"]

    # Step by step, not in one burst at the end: the steps' arrival spans most of the generation.
    response, steps, done = stream_story(url, {"length": 128, "steps": 64, "seed": 1})
    assert response.headers["x-upstream"] and "content-encoding" not in response.headers  # httpx asks for gzip
    arrival = steps[-1][0] - steps[0][0]
    assert len(steps) >= 32 and arrival >= 0.5 * done["elapsed_s"], (arrival, done["elapsed_s"])
    print(f"through the proxy: {len(steps)} steps arrived over {arrival:.2f} s of a {done['elapsed_s']:.2f} s story")


@docker_test
def test_a_dropped_stream_resumes_through_the_proxy_on_its_replica(project: Project) -> None:
    url = up_two_replicas(project)
    with httpx.Client(timeout=120) as client:
        client.get(f"{url}/health")  # the proxy pins this client (its cookie) to one replica
        with connect_sse(
            client, "POST", f"{url}/generate", json={"length": 128, "steps": 64, "stream": True}
        ) as source:
            stream_id, replica = source.response.headers.get("x-stream-id"), source.response.headers["x-upstream"]
            assert stream_id, f"a streamed story through the proxy carries no X-Stream-ID: {source.response.headers}"
            for n, _ in enumerate(event for event in source.iter_sse() if event.event == "step"):
                if n == 1:
                    break  # the connection drops after two steps
        with connect_sse(client, "GET", f"{url}/generate/{stream_id}") as resumed:
            assert resumed.response.status_code == 200, resumed.response.read()
            assert resumed.response.headers["x-upstream"] == replica
            names = [event.event for event in resumed.iter_sse() if event.event]
    assert names[0] == "step" and names[-1] == "done", names
