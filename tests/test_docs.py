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


def anchors(doc: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (lower case, punctuation
    dropped, spaces as hyphens, repeats numbered), outside code blocks."""
    found: set[str] = set()
    fenced = False
    for line in doc.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("#"):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        name, n = slug, 0
        while name in found:
            n += 1
            name = f"{slug}-{n}"
        found.add(name)
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_linked_file_and_heading_exists(doc):
    missing = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            missing.append(target)
    assert not missing, missing


def test_the_link_check_can_fail(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("# A page\n\n## Its part\n\nsee [here](#its-part), [there](#no-part)\n")
    assert anchors(doc) == {"a-page", "its-part"}
    assert [t for t in LINK.findall(doc.read_text()) if t.lstrip("#") not in anchors(doc)] == ["#no-part"]
