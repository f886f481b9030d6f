"""The container stack for real: the project's images built with its own Dockerfiles and compose
file, started and driven through `docker compose` alone, rendering on the CPU.

`make test-stack` (tests/stack/run.sh) installs and starts a Docker engine first and makes the
Debian base image locally (docker/offline/: no registry is reachable here). Compose files, in
the order COMPOSE_FILE lists them: docker-compose.yml (the farm), docker-compose.cpu.yml (no
GPU), docker/offline/compose.yml (local stand-ins for the pulled images) and
tests/stack/compose.test.yml (short lease and visibility timeouts, so that a SIGKILLed worker's
video comes back in seconds). The commands are docs/operations.md's, in its order; the test observes
the farm's Redis and the bucket from the host through the loopback ports compose publishes.

The tests of this module run in order and share one stack: build, up, render, faults, down/up.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import requests

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.cpu.yml", "docker/offline/compose.yml",
                 "tests/stack/compose.test.yml"]
PROJECT = "bl30k-stacktest"
LONG_RUNNING = ["redis", "s3", "flower", "reconciler", "exporter", "worker"]
# The S3 server's internal servers (master, volume, filer and their gRPC ports): none may answer
# another container. Only the S3 gateway (8333) may.
SEAWEED_INTERNAL_PORTS = [9333, 19333, 8080, 18080, 8888, 18888]
WORKER_IMAGE_LIMIT = 1.5e9  # bytes; the CUDA-based image was 1.72 GB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_up() -> str | None:
    """None when a Docker engine and Compose v2 answer, else why not."""
    if not shutil.which("docker"):
        return "no docker CLI"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                          capture_output=True, text=True, timeout=60)
    if info.returncode:
        return f"no Docker engine answers ({info.stderr.strip()[:200]})"
    if subprocess.run(["docker", "compose", "version"], capture_output=True,
                      timeout=60).returncode:
        return "no `docker compose` (Compose v2 plugin)"
    return None


class Stack:
    """One compose project of the farm, with host-side views of its Redis and bucket."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        secrets = folder / "secrets"
        subprocess.run([sys.executable, "-m", "farm.secrets", "init", str(secrets)],
                       check=True, capture_output=True)
        self.secret = {p.name: p.read_text().strip() for p in secrets.iterdir()}
        assets = folder / "assets"
        from farm.assets.procedural import synthesize

        models, textures = synthesize(assets, seed=0)
        subprocess.run(["chmod", "-R", "a+rX", str(assets)], check=True)
        self.ports = {name: free_port() for name in ("redis", "s3", "flower", "exporter")}
        self.env = {
            **os.environ,
            "COMPOSE_FILE": ":".join(COMPOSE_FILES),
            "COMPOSE_PROJECT_NAME": PROJECT,
            "FARM_SECRETS_DIR": str(secrets),
            "FARM_MODELS_DIR": str(models),
            "FARM_TEXTURES_DIR": str(textures),
            "FARM_RENDERS_PER_GPU": "1",
            "FARM_WORKER_MEMORY": "6g",
            "FARM_SCRATCH_SIZE_MB": "1024",
            "REDIS_PORT": str(self.ports["redis"]),
            "S3_PORT": str(self.ports["s3"]),
            "FLOWER_PORT": str(self.ports["flower"]),
            "EXPORTER_PORT": str(self.ports["exporter"]),
        }

    # --- compose ------------------------------------------------------------------------------
    def compose(self, *args: str, check: bool = True, timeout: float = 900
                ) -> subprocess.CompletedProcess:
        proc = subprocess.run(["docker", "compose", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode:
            raise AssertionError(f"docker compose {' '.join(args)} -> {proc.returncode}\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def scheduler(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.compose("run", "--rm", "-T", "scheduler", *args, check=check)

    def status(self) -> dict[int, dict]:
        rows = json.loads(self.scheduler("status", "--json").stdout)
        return {row["segment"]: row for row in rows}

    def container_ids(self, service: str) -> list[str]:
        out = self.compose("ps", "-q", service).stdout.split()
        return sorted(out)

    def up(self, workers: int = 2) -> float:
        t0 = time.monotonic()
        self.compose("up", "-d", "--wait", "--scale", f"worker={workers}")
        return time.monotonic() - t0

    # --- host-side views ----------------------------------------------------------------------
    def redis(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.ports["redis"], decode_responses=True,
                           password=self.secret["redis_password"], socket_timeout=10)

    def video(self, video: str) -> dict[str, str]:
        from farm.queue.state import PREFIX

        return self.redis().hgetall(f"{PREFIX}video:{video}")

    def states(self, segment: int) -> dict[str, str]:
        from farm.queue.state import PREFIX

        return self.redis().hgetall(f"{PREFIX}seg:{segment}:state")

    def s3(self):
        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.ports['s3']}",
                            region_name="us-east-1",
                            aws_access_key_id=self.secret["s3_farm_access_key"],
                            aws_secret_access_key=self.secret["s3_farm_secret_key"])

    def objects(self, prefix: str = "") -> dict[str, str]:
        """Key -> ETag of every object in the farm's bucket under ``prefix``."""
        found, pages = {}, self.s3().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket="bl30k", Prefix=prefix):
            found.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
        return found

    def wait_done(self, segment: int, total: int, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.states(segment)
            if len(states) == total and all(s == "done" for s in states.values()):
                return states
            if any(s == "failed" for s in states.values()):
                break
            time.sleep(2)
        raise AssertionError(f"segment {segment} not done: {states}\n{self.logs('worker')}")

    def wait_running(self, segment: int, exclude: frozenset[str] = frozenset(),
                     timeout: float = 300) -> tuple[str, str]:
        """(video, worker container id) of a render under way (a second into it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = self.container_ids("worker")
            for video, state in self.states(segment).items():
                holder = self.video(video).get("worker", "-")
                container = next((c for c in ids if c.startswith(holder)), None)
                if state == "running" and video not in exclude and container:
                    time.sleep(1)
                    return video, container
            time.sleep(0.3)
        raise AssertionError(f"no render under way in segment {segment}: {self.states(segment)}")

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", service, check=False).stdout

    def inspect(self, container: str) -> dict:
        out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True,
                             check=True).stdout
        return json.loads(out)[0]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    why = engine_up()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the stack test must run in CI: {why} (run it through make test-stack)")
        pytest.skip(f"{why}: `make test-stack` installs and starts a Docker engine (needs root)")
    folder = tmp_path_factory.mktemp("stack")
    folder.chmod(0o755)
    farm = Stack(folder)
    farm.compose("down", "-v", "--remove-orphans", check=False)
    yield farm
    if os.environ.get("BL30K_STACK_KEEP") != "1":
        farm.compose("down", "-v", "--remove-orphans", check=False, timeout=300)


@pytest.mark.timeout(1800)
def test_images_build_from_the_project_files(stack):
    """`docker compose build`: both images from docker/*.Dockerfile, the worker small."""
    t0 = time.monotonic()
    stack.compose("build", timeout=1700)
    print(f"build: {time.monotonic() - t0:.0f} s")
    sizes = {}
    for image in ("bl30k/worker:dev", "bl30k/scheduler:dev"):
        info = stack.inspect(image)
        sizes[image] = info["Size"]
        assert info["Config"]["User"] == "10001:10001", image
    print("image sizes (MB): " + ", ".join(f"{k} {v / 1e6:.0f}" for k, v in sizes.items()))
    assert sizes["bl30k/worker:dev"] < WORKER_IMAGE_LIMIT
    assert sizes["bl30k/scheduler:dev"] < 0.6e9, "the control-plane image carries no bpy"


@pytest.mark.timeout(900)
def test_up_waits_until_every_service_is_healthy(stack):
    """`up --wait --scale worker=2` returns once all services (both workers included) are
    healthy; each long-running service runs under an init, as a non-root user where it is ours."""
    took = stack.up(workers=2)
    print(f"up --wait: {took:.0f} s")
    assert len(stack.container_ids("worker")) == 2
    for service in LONG_RUNNING:
        for container in stack.container_ids(service):
            info = stack.inspect(container)
            assert info["State"]["Health"]["Status"] == "healthy" if info["State"].get(
                "Health") else info["State"]["Running"], (service, info["State"])
            assert info["HostConfig"]["Init"] is True, f"{service} has no init as PID 1"
    worker = stack.container_ids("worker")[0]
    assert stack.inspect(worker)["HostConfig"]["Memory"] == 6 * 2**30, "worker memory limit"
    uid = stack.compose("exec", "-T", "worker", "id", "-u").stdout.split()
    assert uid == ["10001"]
    # The render processes' memory cap defaults to 80 % of the container's limit per render.
    cap = stack.compose("exec", "-T", "worker", "python", "-c", "from worker.process.watchdog "
                        "import max_rss_mb; print(max_rss_mb())").stdout.split()
    assert cap == [str(round(0.8 * 6 * 1024))], cap
    # The scratch tmpfs is writable by the worker's user (runc ignores tmpfs.mode).
    stack.compose("exec", "-T", "worker", "sh", "-c", "touch /scratch/probe && rm /scratch/probe")


def test_only_the_s3_gateway_is_reachable_from_other_containers(stack):
    """SeaweedFS's master, volume and filer servers have no authentication: from a worker
    container none of them answers, and the S3 gateway refuses requests without credentials."""
    probe = (
        "import socket, sys, urllib.request, urllib.error\n"
        "open_ = []\n"
        f"for port in {SEAWEED_INTERNAL_PORTS}:\n"
        "    s = socket.socket(); s.settimeout(3)\n"
        "    if s.connect_ex(('s3', port)) == 0: open_.append(port)\n"
        "    s.close()\n"
        "try:\n"
        "    urllib.request.urlopen(urllib.request.Request('http://s3:8333/bl30k/x', data=b'x',"
        " method='PUT'), timeout=5); code = 200\n"
        "except urllib.error.HTTPError as e: code = e.code\n"
        "print(open_, code)\n")
    out = stack.compose("exec", "-T", "worker", "python", "-c", probe).stdout.strip()
    assert out == "[] 403", out


SECRETS_PROBE = r"""
import json, os
from pathlib import Path
from worker.process.pool import RenderProcess
from worker.process.protocol import RenderJob

staging = Path("/scratch/probe/a00000.staging")
staging.mkdir(parents=True, exist_ok=True)
targets = [*Path("/run/secrets").iterdir()]
# the Celery worker's own processes (the main one and its pool): not dumpable, so their /proc
# files are unreadable even by this process of the same user
workers = [p.name for p in Path("/proc").iterdir() if p.name.isdigit()
           and p.name != str(os.getpid()) and (p / "cmdline").read_bytes().startswith(
               b"/opt/venv/bin/python") and b"worker.celery_app\x00worker" in (p / "cmdline").read_bytes()]
direct = {}
for pid in workers:
    try:
        Path(f"/proc/{pid}/environ").read_bytes()
        direct[pid] = "read"
    except OSError as exc:
        direct[pid] = exc.strerror
child = {}
for target in targets:
    proc = RenderProcess()
    result = proc.run(RenderJob(target, Path("/assets/models"), Path("/assets/textures"), staging),
                      timeout=120)
    child[target.name] = result.payload.get("message", "")
    proc.close()
print(json.dumps({"direct": direct, "child": child}))
"""


def test_render_processes_cannot_read_the_workers_secrets(stack):
    """Inside a worker container (user 10001, no capabilities): a render process cannot read any
    file of /run/secrets (Landlock), and no process of the worker's user can read the Celery
    worker's /proc/<pid>/environ (not dumpable)."""
    out = stack.compose("exec", "-T", "worker", "python", "-c", SECRETS_PROBE).stdout
    found = json.loads(out.splitlines()[-1])
    assert len(found["direct"]) >= 2, found  # the main process and its pool process
    assert set(found["direct"].values()) == {"Permission denied"}, found
    assert len(found["child"]) == 3, found  # the worker's three secrets
    assert all("Permission denied" in m for m in found["child"].values()), found


@pytest.mark.timeout(900)
def test_enqueue_render_status_finalize_and_the_bucket(stack):
    """Tiny videos and a preview video rendered by the two workers, verified by `finalize` and
    read back from the bucket with boto3."""
    stack.scheduler("enqueue", "--segment", "1", "--count", "3", "--preset", "tiny")
    stack.scheduler("enqueue", "--segment", "2", "--count", "1", "--preset", "preview")
    tiny = stack.wait_done(1, 3)
    preview = stack.wait_done(2, 1)
    rows = stack.status()
    assert (rows[1]["done"], rows[2]["done"]) == (3, 1)
    for segment in (1, 2):
        out = stack.scheduler("finalize", "--segment", str(segment)).stdout
        assert "every frame verified" in out, out
    keys = stack.objects()
    for video, frames in [*((v, 3) for v in tiny), *((v, 24) for v in preview)]:
        jpegs = [k for k in keys if f"/JPEGImages/{video}/" in k and k.endswith(".jpg")]
        masks = [k for k in keys if f"/Annotations/{video}/" in k and k.endswith(".png")]
        assert (len(jpegs), len(masks)) == (frames, frames), video
    assert sum(k.endswith("meta.json") for k in keys) == 2
    # Flower: login required.
    flower = f"http://127.0.0.1:{stack.ports['flower']}/api/workers?refresh=1"
    assert requests.get(flower, timeout=10).status_code == 401
    user, password = stack.secret["flower_basic_auth"].split(",")[0].split(":", 1)
    workers = requests.get(flower, auth=(user, password), timeout=10).json()
    assert len(workers) == 2, workers
    metrics = f"http://127.0.0.1:{stack.ports['flower']}/metrics"
    assert requests.get(metrics, timeout=10).status_code == 401
    assert "flower_events_total" in requests.get(metrics, auth=(user, password), timeout=10).text


@pytest.mark.timeout(1200)
def test_stop_kill_and_redis_restart_mid_render_lose_and_duplicate_nothing(stack):
    """`docker stop` of a worker mid-render hands its video back at once; `kill -9` of a worker
    mid-render and `docker compose restart redis` lose nothing either: every video is rendered
    and uploaded exactly once."""
    stack.scheduler("enqueue", "--segment", "3", "--count", "4", "--preset", "preview")
    video, worker = stack.wait_running(3)
    t0 = time.monotonic()
    subprocess.run(["docker", "stop", worker], check=True, capture_output=True)
    stopped = time.monotonic() - t0
    print(f"docker stop of a rendering worker: {stopped:.1f} s")
    assert stopped < 30, "the worker must hand its video back, not wait to be killed"
    assert stack.states(3)[video] in ("queued", "running", "done")
    subprocess.run(["docker", "start", worker], check=True, capture_output=True)

    video2, worker2 = stack.wait_running(3, exclude=frozenset({video}))
    subprocess.run(["docker", "kill", "--signal", "KILL", worker2], check=True,
                   capture_output=True)
    stack.compose("restart", "redis")
    stack.up(workers=2)  # the killed worker back (a no-op for the others)
    states = stack.wait_done(3, 4, timeout=900)
    for v in states:
        info = stack.video(v)
        assert info.get("uploads") == "1", (v, info)
    out = stack.scheduler("finalize", "--segment", "3").stdout
    assert "every frame verified" in out, out
    assert stack.video(video2).get("lost_deliveries") == "1"


def test_stopping_a_service_is_prompt_and_clean(stack):
    """SIGTERM reaches every long-running process (an init as PID 1): `docker compose stop`
    of the reconciler takes seconds, not the 10 s kill timeout, and exits 0."""
    t0 = time.monotonic()
    stack.compose("stop", "reconciler")
    took = time.monotonic() - t0
    container = stack.container_ids("reconciler") or stack.compose(
        "ps", "-a", "-q", "reconciler").stdout.split()
    code = stack.inspect(container[0])["State"]["ExitCode"]
    stack.compose("start", "reconciler")
    assert (code, took < 5) == (0, True), f"exit {code} after {took:.1f} s"


@pytest.mark.timeout(900)
def test_down_and_up_keep_the_queue_the_state_and_the_bucket(stack):
    """Videos still queued when the stack goes `down` render after the next `up`; the done
    segments and their objects are as they were."""
    before = stack.objects()
    stack.compose("stop", "worker")
    stack.scheduler("enqueue", "--segment", "4", "--count", "2", "--preset", "tiny")
    assert set(stack.states(4).values()) == {"queued"}
    stack.compose("down")
    stack.up(workers=2)
    assert {s: r["done"] for s, r in stack.status().items() if s != 4} == {1: 3, 2: 1, 3: 4}
    stack.wait_done(4, 2)
    after = stack.objects()
    assert {k: v for k, v in after.items() if k in before} == before
