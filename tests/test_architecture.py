"""The package layout: imports point one way along the flow (no module imports a later stage,
no import cycles), and bpy stays in the worker's render package."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("farm", "worker", "scheduler", "devtools", "bench")
# The stages in the order of the flow (README "Architecture"); a module may import its own
# stage and earlier ones. Stages on the same rank must not import each other.
STAGES = {
    "farm.secrets": 0,
    "farm.settings": 1,
    "farm.model": 2,
    "farm.assets": 3, "farm.io": 3,
    "farm.generate": 4, "farm.queue": 4,
    "farm.view": 5,
    "farm.cli": 6, "worker.render": 6,
    "farm.__main__": 7, "worker.process": 7,
    "worker": 8, "scheduler": 8,
    "devtools": 9,
    "bench": 10,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    """Every module but the (empty) ``farm`` package itself."""
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if module_name(p) != "farm"}


def imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Project modules each module imports (at any level: lazy imports count)."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [resolve(f"{node.module}.{a.name}") or resolve(node.module)
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names]
            else:
                continue
            found[name].update(t for t in targets if t and t != name)
    return found


def stage(module: str) -> str:
    """The longest STAGES key the module belongs to."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in STAGES:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} belongs to no stage: add its package to STAGES (and the README)")


def violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in edges.items():
        for target in targets:
            a, b = stage(source), stage(target)
            if a != b and STAGES[b] >= STAGES[a]:
                bad.append(f"{source} ({a}) imports {target} ({b})")
    return sorted(bad)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_belongs_to_a_stage():
    for module in project_modules():
        stage(module)


def test_no_module_imports_a_later_stage():
    assert violations(imports(project_modules())) == []


def test_no_import_cycles():
    assert cycles(imports(project_modules())) == []


def test_the_checks_catch_an_upward_import_and_a_cycle():
    """The checks above must be able to fail: a farm module importing the worker (an upward
    import the layout once had) and two modules importing each other."""
    edges = imports(project_modules())
    edges["farm.cli"] = edges["farm.cli"] | {"worker.process.runner"}
    assert "farm.cli (farm.cli) imports worker.process.runner (worker.process)" in violations(edges)
    edges["farm.io.layout"] = {"farm.io.storage"}  # storage imports layout
    assert any({"farm.io.layout", "farm.io.storage"} <= set(c) for c in cycles(edges))


def test_bpy_is_imported_by_the_render_package_only():
    edges = imports(project_modules())
    users = set()
    for name, path in project_modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if any(n == "bpy" or n.startswith(("bpy.", "mathutils")) for n in names):
                users.add(name)
    assert users and all(stage(u) == "worker.render" for u in users), users
    # and no module outside the worker imports the render package
    importers = {a for a, targets in edges.items() for t in targets if stage(t) == "worker.render"}
    assert all(stage(a).startswith("worker") or stage(a) == "bench" for a in importers), importers


def readme_stages() -> dict[str, int]:
    """The stage table of the README's Architecture section: package -> stage."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Architecture", 1)[1].split(" stage  package", 1)[1].split("```", 1)[0]
    stages, current = {}, None
    for line in block.splitlines():
        m = re.match(r" ?(\d+)\s+(\S+)", line) or re.match(r" {8}((?:farm|worker|scheduler|bench)\S*)",
                                                         line)
        if not m:
            continue
        if len(m.groups()) == 2:
            current, package = int(m.group(1)), m.group(2)
        else:
            package = m.group(1)
        stages[package.removesuffix(".py").rstrip("/").replace("/", ".")] = current
    return stages


def test_readme_architecture_matches_the_stages():
    assert readme_stages() == {k: v for k, v in STAGES.items() if k != "farm.__main__"}


def test_asset_modules_load_without_bpy():
    """The farm side of asset libraries (formats, glTF reader, manifests, indexer, check) runs
    where bpy is not installed: importing them loads no bpy; the importers are the worker's."""
    import subprocess
    import sys

    modules = ["farm.assets.formats", "farm.assets.gltf", "farm.assets.manifest",
               "farm.assets.indexer", "farm.assets.check", "farm.generate.sampling"]
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint('bpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr
    assert stage("worker.render.importers") == "worker.render"
