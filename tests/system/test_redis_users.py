"""Workers on other hosts: a Redis with ACL users (docker/redis-users.acl.example) reached over
TLS only. A real worker connects as the restricted `worker` user over `rediss://`, the
scheduler as `default`; a video is rendered, uploaded and finalized, and the worker's user is
refused the commands that would reconfigure or wipe Redis."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import redis

from devtools.local import start_s3
from devtools.processes import free_port, spawn, stop

ROOT = Path(__file__).resolve().parents[2]
ACL_EXAMPLE = ROOT / "docker" / "redis-users.acl.example"
PASSWORDS = {"SCHEDULER_PASSWORD": "sched-pw-1", "WORKER_PASSWORD": "worker-pw-2"}


@pytest.fixture
def tls_redis(tmp_path):
    """redis-server with the example's ACL users, a TLS port and no plain-text port."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    acl = ACL_EXAMPLE.read_text()
    for name, value in PASSWORDS.items():
        acl = acl.replace(name, value)
    (tmp_path / "users.acl").write_text(acl)
    port = free_port()
    proc = spawn(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                  "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                  "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
                  "--aclfile", str(tmp_path / "users.acl"), "--dir", str(tmp_path),
                  "--save", ""], tmp_path / "redis.log")
    url = f"127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(f"rediss://{url}", password=PASSWORDS["SCHEDULER_PASSWORD"]).ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, (tmp_path / "redis.log").read_text()
            time.sleep(0.2)
    yield url
    stop([proc])


@pytest.mark.services
@pytest.mark.render
def test_a_worker_as_acl_user_over_tls_renders_and_cannot_administer(tls_redis, pack, tmp_path):
    from services import Farm

    s3_port = free_port()
    s3 = start_s3(s3_port, tmp_path / "s3.log")
    try:
        farm = Farm(0, "", s3_port, "acl-bucket", tmp_path, pack.models, pack.textures)
        scheduler = {"FARM_REDIS_URL": f"rediss://{tls_redis}",
                     "REDIS_PASSWORD": PASSWORDS["SCHEDULER_PASSWORD"]}
        worker = {"FARM_REDIS_URL": f"rediss://worker@{tls_redis}",
                  "REDIS_PASSWORD": PASSWORDS["WORKER_PASSWORD"], "FARM_WARMUP": "off"}
        farm.env.update(scheduler)
        farm.start_worker("w0", **worker)
        farm.cli("enqueue", "--segment", "0", "--count", "1", "--preset", "tiny")
        deadline = time.monotonic() + 240
        while farm.status(0)["done"] != 1:
            assert time.monotonic() < deadline, farm.log("w0")
            time.sleep(1)
        assert "every frame verified" in farm.cli("finalize", "--segment", "0").stdout
        # The worker's user: every key, no dangerous or administrative command.
        as_worker = redis.Redis.from_url(f"rediss://worker@{tls_redis}",
                                         password=PASSWORDS["WORKER_PASSWORD"])
        assert as_worker.hgetall("farm:seg:0:state") == {b"a00000": b"done"}
        for command in (("FLUSHALL",), ("CONFIG", "SET", "appendonly", "no"), ("KEYS", "*"),
                        ("ACL", "LIST"), ("SHUTDOWN",)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                as_worker.execute_command(*command)
        # Plain text is refused: there is no plain-text port, and TLS without the CA fails.
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(f"rediss://worker@{tls_redis.split('?')[0]}?ssl_cert_reqs=required",
                                 password=PASSWORDS["WORKER_PASSWORD"]).ping()
    finally:
        for proc in farm.workers:
            proc.terminate()
        stop([*farm.workers, s3])
