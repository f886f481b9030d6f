"""A render process cannot read a secret file outside its job's folders (Landlock) and still
renders.

Each probe starts a real render process and gives it, as the spec of its first job, the file to
read: the render process confines itself at its first job, before it reads anything of it, and
reports why the spec could not be read. (That the worker's /proc/<pid>/environ is unreadable too
needs a non-root user, whom root's CAP_SYS_PTRACE does not override: the stack test checks it
inside the worker container, tests/stack/test_stack.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from farm.generate.sampling import generate_spec
from farm.io.layout import staging_dir

PROBE = """
import json, sys
from pathlib import Path
from worker.process.pool import RenderProcess
from worker.process.protocol import RenderJob
models, textures, staging, spec = map(Path, sys.argv[1:5])
targets = {"spec": spec, "secret": Path(sys.argv[5])}
results = {}
for name, target in targets.items():
    proc = RenderProcess()
    result = proc.run(RenderJob(target, models, textures, staging), timeout=120)
    results[name] = [result.code, result.payload.get("message", "")]
    proc.close()
print(json.dumps(results))
"""


def probe(library, tiny, tmp_path, **env: str) -> dict:
    secret = tmp_path / "secrets" / "redis_password"
    secret.parent.mkdir()
    secret.write_text("s3cr3t-password\n")
    spec = replace(generate_spec(library, tiny, 0, 4, 2021), frames=1)
    staging = staging_dir(tmp_path / "scratch", spec.id)
    staging.mkdir(parents=True)
    (staging / "spec.yaml").write_text(spec.to_yaml())
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(library.models_root), str(library.textures_root),
         str(staging), str(staging / "spec.yaml"), str(secret)],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.render
def test_a_render_process_cannot_read_secrets_and_still_renders(library, tiny, tmp_path):
    results = probe(library, tiny, tmp_path)
    assert results["spec"] == [0, ""], results  # its job renders
    code, message = results["secret"]
    assert code != 0 and "Permission denied" in message, results


@pytest.mark.render
def test_without_the_sandbox_the_secret_is_read(library, tiny, tmp_path):
    """The probe can fail: unconfined, the render process reads the secret file (and then
    finds it is not a spec)."""
    results = probe(library, tiny, tmp_path, FARM_RENDER_SANDBOX="0")
    code, message = results["secret"]
    assert code != 0 and "Permission denied" not in message, results
