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


def test_values_defaults_and_errors():
    load = settings.load_settings
    assert load({}).lease_ttl == int(VARS["FARM_LEASE_TTL"].default) == 90
    assert load({"FARM_LEASE_TTL": " 30 "}).lease_ttl == 30
    with pytest.raises(ConfigError, match="FARM_LEASE_TTL='soon' is not an integer"):
        load({"FARM_LEASE_TTL": "soon"})
    assert load({"FARM_RENDER_MAX_RSS_MB": ""}).render_max_rss_mb == "auto"  # empty: the default
    assert load({"FARM_RENDER_MAX_RSS_MB": "off"}).render_max_rss_mb is None
    assert load({"FARM_STREAM_UPLOAD": "0"}).stream_upload is False
    assert load({}).visibility_timeout is None and load({}).renders_per_gpu is None
    with pytest.raises(ConfigError, match="FARM_WARMUP must be auto, full or off, not 'warm'"):
        load({"FARM_WARMUP": "warm"})
    with pytest.raises(ConfigError, match="FARM_RENDER_PROCESS must be server or oneshot"):
        load({"FARM_RENDER_PROCESS": "fork"})
    with pytest.raises(ConfigError, match="set both FARM_MODELS and FARM_TEXTURES"):
        load({"FARM_MODELS": "/m"})
    # defaults derived from other settings
    assert load({"FARM_CACHE_DIR": "/c"}).kernel_cache == Path("/c/kernels")
    assert load({"FARM_SCRATCH": "/s"}).health_file == Path("/s/worker-ready.json")
    assert load({"XDG_CACHE_HOME": "/x"}).cache_dir == Path("/x/bl30k-farm")
    assert load({"FARM_SEED": "7", "FARM_GPUS": " "}).given == {"FARM_SEED": "7"}


def test_the_process_settings_are_read_once(monkeypatch):
    monkeypatch.setenv("FARM_SEED", "7")
    assert settings.current().seed == 7
    monkeypatch.setenv("FARM_SEED", "8")  # read at the first use only
    assert settings.current().seed == 7
    settings.use(None)
    assert settings.current().seed == 8


def test_nothing_reads_the_environment_at_import():
    """Every module of the product and its tooling imports with every number-valued setting
    malformed: the environment is read by entry points, not by imports (bpy-side modules aside,
    which run only in a render process)."""
    names = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in CODE
                   + list((ROOT / "devtools").rglob("*.py"))
                   if p.name != "__main__.py" and "render" not in p.relative_to(ROOT).parts
                   and p.name != "server.py")
    bad = {name: "soon" for name, var in VARS.items() if var.default.isdigit()}
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
    proc = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **bad, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(names) > 60


def test_only_the_settings_module_reads_the_variables():
    """No module calls a reader of single variables: they are private to farm/settings.py."""
    for path in CODE:
        if path.name != "settings.py":
            tree = ast.parse(path.read_text())
            imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                        and n.module == "farm.settings" for a in n.names}
            assert imported <= {"Settings", "ConfigError", "VARS", "current", "use",
                                "load_settings", "run_command", "markdown_table", "secret",
                                "REPOSITORY_CONFIGS"}, (path, imported)


@pytest.mark.parametrize("command, name", [
    (["farm", "specs", "--segment", "0", "--count", "1", "--out", "unused"], "FARM_SEED"),
    (["worker", "render", "--spec", "unused.yaml", "--out", "unused"], "FARM_SEED"),
    (["scheduler", "status"], "FARM_LEASE_TTL"),
    (["scheduler", "status"], "FARM_VISIBILITY_TIMEOUT"),  # the queue app's: status never loads it
])
def test_a_malformed_setting_is_one_line_in_every_cli(command, name, tmp_path):
    proc = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, name: "soon", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr == f"error: {name}='soon' is not an integer\n"
