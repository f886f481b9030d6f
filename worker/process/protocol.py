"""What a render process and its parent say to each other (no bpy here).

A job (``RenderJob``) goes to the child as command-line options (the one-shot
``worker.process.main``) or as one JSON line on stdin (the long-lived ``worker.process.server``).
The child answers with lines on its protocol channel (stderr of the one-shot process, the original
stdout of the server):

    @@ready {"pid": ..., "boot_s": ...}              server only: once, after ``import bpy``
    @@progress <done> <total>                         per finished frame (mask written)
    @@done {"code": <exit code>, "payload": {...}}    server only: per job

and with an exit code (the one-shot process's exit status, or ``code`` above):
``EXIT_OK`` rendered, ``EXIT_PERMANENT`` a permanent error (bad spec, missing or broken asset),
``EXIT_GATE`` rejected by the quality gate, anything else (or a signal) a crash. The payload
(the one-shot process writes it to its ``--result`` file) is ``{"status": "ok", "render": ...}``,
``{"status": "rejected", "reason": ...}`` or ``{"status": "error", "kind": ..., "message": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

EXIT_OK, EXIT_PERMANENT, EXIT_GATE = 0, 3, 4
GATE_MODES = ("enforce", "record")  # reject a failing video, or only record the verdict

READY, PROGRESS, DONE = "@@ready", "@@progress", "@@done"
Progress = Callable[[int, int], None]  # what the parent does with a progress line: (done, total)


@dataclass(frozen=True)
class RenderJob:
    """One render: the spec file (already in ``staging``), the asset roots, where to write, and
    the quality gate (``gate``: the preset's ``QualityGate`` fields, resolved by the caller)."""

    spec: Path
    models: Path
    textures: Path
    staging: Path
    gate_mode: str = "record"
    gate: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the render process runs in the project's folder: a path relative to the caller's
        # working directory would name another file there
        for name in ("spec", "models", "textures", "staging"):
            object.__setattr__(self, name, Path(getattr(self, name)).absolute())

    def to_json(self) -> str:
        data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        return json.dumps({"op": "render", **data})

    @classmethod
    def from_json(cls, data: dict) -> RenderJob:
        return cls(Path(data["spec"]), Path(data["models"]), Path(data["textures"]),
                   Path(data["staging"]), data.get("gate_mode", "record"), data.get("gate", {}))

    def argv(self, result: Path) -> list[str]:
        """The one-shot process's options (``worker.process.main``)."""
        return ["--spec", str(self.spec), "--models", str(self.models), "--textures",
                str(self.textures), "--staging", str(self.staging), "--result", str(result),
                "--gate", self.gate_mode, "--quality-gate", json.dumps(self.gate)]


def progress_line(done: int, total: int) -> str:
    return f"{PROGRESS} {done} {total}"


def message(kind: str, payload: dict) -> str:
    """A ``@@ready`` or ``@@done`` line."""
    return f"{kind} {json.dumps(payload)}"


def parse(line: str) -> tuple[str, object] | None:
    """(kind, data) of a protocol line: ``(PROGRESS, (done, total))``, ``(READY, dict)``,
    ``(DONE, dict)``; None for any other output (Blender's, logging)."""
    if line.startswith(PROGRESS):
        done, total = line.split()[1:3]
        return PROGRESS, (int(done), int(total))
    for kind in (READY, DONE):
        if line.startswith(kind + " "):
            return kind, json.loads(line.split(" ", 1)[1])
    return None
