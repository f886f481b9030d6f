"""The scheduler CLI's start-up: each command loads only what it uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from services import ROOT

HEAVY = ("celery", "kombu", "boto3", "numpy", "PIL")

STATUS = f"""
import json, sys
from scheduler.cli import main
assert main(["-q", "status", "--json"]) == 0
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


@pytest.mark.services
def test_status_loads_neither_celery_nor_boto3_nor_numpy(redis_service):
    """`status` (run by scripts and `--watch` every few seconds) reads Redis only."""
    port, password = redis_service
    proc = subprocess.run([sys.executable, "-c", STATUS], capture_output=True, text=True,
                          cwd=ROOT, timeout=60,
                          env={**os.environ, "FARM_REDIS_URL": f"redis://127.0.0.1:{port}/0",
                               "REDIS_PASSWORD": password})
    assert proc.returncode == 0, proc.stderr
    rows, loaded = proc.stdout.splitlines()
    assert isinstance(json.loads(rows), list)
    assert json.loads(loaded) == []
