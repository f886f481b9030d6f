"""The docs against the code: every command the README, BENCHMARKS.md and docs/ show exists
(its ``--help`` runs), and every file they link exists."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
CLIS = {"farm": "farm.cli", "worker": "worker.cli", "scheduler": "scheduler.cli",
        "devtools": "devtools.cli", "bench": "bench.__main__"}
COMMAND = re.compile(r"python -m ([a-z][a-z_.]*[a-z])((?: [a-z][a-z-]*)*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def shown_commands() -> set[tuple[str, tuple[str, ...]]]:
    """(module, sub-command words) of every ``python -m ...`` in the docs."""
    found = set()
    for doc in DOCS:
        for module, words in COMMAND.findall(doc.read_text()):
            found.add((module, tuple(words.split())))
    return found


def help_exit(module: str, words: tuple[str, ...]) -> tuple[int, str]:
    """Exit status and output of ``python -m module words... --help``, in this process."""
    main = importlib.import_module(CLIS[module]).main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main([*words, "--help"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue()


def test_the_docs_show_commands_of_every_cli():
    modules = {m for m, _ in shown_commands()}
    assert set(CLIS) <= modules


@pytest.mark.parametrize("module,words", sorted(shown_commands()))
def test_every_command_shown_exists(module, words):
    from farm.cli import MOVED

    if module not in CLIS:  # a module run as a program: it exists
        assert importlib.util.find_spec(module) is not None, module
        return
    if module == "farm" and words[:1] and words[0] in MOVED:  # says where it moved (exit 2)
        return
    code, text = help_exit(module, words)
    assert code == 0 and "usage:" in text, (module, words, text[-500:])


def test_the_commands_check_can_fail():
    assert help_exit("farm", ("no-such-command",))[0] != 0


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_linked_file_exists(doc):
    missing = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, missing
