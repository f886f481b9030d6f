"""Settings: every FARM_* variable is declared once (farm/settings.py), read only through it, and
docs/configuration.md's table is the one the registry prints."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from farm import settings
from farm.settings import VARS, ConfigError

ROOT = Path(__file__).resolve().parents[2]
CODE = [p for pkg in ("farm", "worker", "scheduler", "bench") for p in (ROOT / pkg).rglob("*.py")]
BEGIN, END = "<!-- settings table: python -m farm settings -->", "<!-- end of settings table -->"


def _direct_reads(path: Path) -> list[str]:
    """FARM_* variables a module reads from the environment itself (os.environ.get("FARM_X"),
    os.environ["FARM_X"], os.getenv("FARM_X")); writing them for a child process is fine."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = ast.unparse(node.func)
            if func in ("os.environ.get", "os.getenv", "environ.get"):
                found.append(node.args[0].value)
        elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
              and ast.unparse(node.value) in ("os.environ", "environ")
              and isinstance(node.slice, ast.Constant)):
            found.append(node.slice.value)
    return [name for name in found if isinstance(name, str) and name.startswith("FARM_")]


def test_readme_table_is_the_registry():
    readme = (ROOT / "docs" / "configuration.md").read_text()
    assert BEGIN in readme and END in readme
    table = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip() + "\n"
    assert table == settings.markdown_table()
    cli = subprocess.run([sys.executable, "-m", "farm", "settings"], capture_output=True,
                         text=True, cwd=ROOT, check=True)
    assert cli.stdout == settings.markdown_table()


def test_every_variable_in_the_code_is_declared_and_every_declared_one_used():
    used = set()
    for path in CODE:
        used.update(re.findall(r"\bFARM_[A-Z0-9_]+\b", path.read_text()))
    assert used - set(VARS) == set(), "declare these in farm/settings.py VARS"
    registry = (ROOT / "farm" / "settings.py").read_text()
    unused = {name for name in VARS if registry.count(f'"{name}"') < 2  # declared, not read there
              and not any(name in p.read_text() for p in CODE if p.name != "settings.py")}
    assert unused == set(), "declared but never read"


def test_no_module_reads_a_farm_variable_but_through_the_registry():
    readers = {str(p.relative_to(ROOT)): _direct_reads(p) for p in CODE
               if p != ROOT / "farm" / "settings.py"}
    assert {k: v for k, v in readers.items() if v} == {}


def test_the_direct_read_check_can_fail(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('import os\nA = os.environ.get("FARM_SEED")\nB = os.environ["FARM_GPUS"]\n'
                     'os.environ["FARM_GPU_INDEX"] = "1"\n')
    assert _direct_reads(probe) == ["FARM_SEED", "FARM_GPUS"]


def test_values_defaults_and_errors(monkeypatch):
    monkeypatch.delenv("FARM_LEASE_TTL", raising=False)
    assert settings.integer("FARM_LEASE_TTL") == int(VARS["FARM_LEASE_TTL"].default) == 90
    monkeypatch.setenv("FARM_LEASE_TTL", " 30 ")
    assert settings.integer("FARM_LEASE_TTL") == 30
    monkeypatch.setenv("FARM_LEASE_TTL", "soon")
    with pytest.raises(ConfigError, match="FARM_LEASE_TTL='soon' is not an integer"):
        settings.load_settings()
    monkeypatch.setenv("FARM_RENDER_MAX_RSS_MB", "")  # empty: the default
    assert settings.text("FARM_RENDER_MAX_RSS_MB") == "auto"
    monkeypatch.setenv("FARM_STREAM_UPLOAD", "0")
    assert settings.flag("FARM_STREAM_UPLOAD") is False
    with pytest.raises(KeyError):
        settings.text("FARM_NOT_A_SETTING")


@pytest.mark.parametrize("command, name", [
    (["farm", "specs", "--segment", "0", "--count", "1", "--out", "unused"], "FARM_SEED"),
    (["worker", "render", "--spec", "unused.yaml", "--out", "unused"], "FARM_SEED"),
    (["scheduler", "status"], "FARM_LEASE_TTL"),
    (["scheduler", "status"], "FARM_VISIBILITY_TIMEOUT"),  # read when the queue app is imported
])
def test_a_malformed_setting_is_one_line_in_every_cli(command, name, tmp_path):
    proc = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, name: "soon", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr == f"error: {name}='soon' is not an integer\n"
