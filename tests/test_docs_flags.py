"""The docs match the command line: every `mesh <command> --flag` written in README.md
or docs/ names a command and flags that exist (what `mesh <command> --help` lists)."""

from __future__ import annotations

import pathlib
import re

import pytest
import typer

from meshcompute.cli import app

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FLAG = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")
MENTION = re.compile(r"(?:^|[\s($])mesh ([a-z][a-z-]*)(.*)")


def _flags(cmd) -> set[str]:
    flags = {"--help"}
    for p in cmd.params:
        flags.update(p.opts)
        flags.update(p.secondary_opts)
    return flags


def _commands() -> dict[str, set[str]]:
    """Each command's flags; a group's commands (`mesh job submit`) under "group command"."""
    group = typer.main.get_command(app)
    out = {}
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        out[name] = _flags(cmd)
        for sub, sub_cmd in getattr(cmd, "commands", {}).items():
            out[f"{name} {sub}"] = _flags(sub_cmd)
    return out


def _code(path: pathlib.Path):
    """(line number, code text) of every fenced block line and inline code span."""
    fenced = False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            yield n, line
        else:
            for span in re.findall(r"`([^`]+)`", line):
                yield n, span


def _mentions() -> list[tuple[str, str, str]]:
    """(where, command, rest of the command line) for every `mesh <word> ...` in code."""
    out = []
    for path in DOCS:
        for n, code in _code(path):
            for m in MENTION.finditer(code):
                # A shell comment, a pipe, a second command or `--` (the rest is the job's) ends it.
                rest = re.split(r"\s#|\||&&|;|\s--(?:\s|$)", m.group(2))[0]
                out.append((f"{path.relative_to(ROOT)}:{n}", m.group(1), rest))
    return out


def test_the_docs_mention_commands_at_all():
    commands = {c for _, c, _ in _mentions()}
    assert {"start", "join", "status", "top", "logs", "memory", "timeline"} <= commands


@pytest.mark.parametrize("where,command,rest", _mentions(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_flag_in_the_docs_exists(where, command, rest):
    commands = _commands()
    sub = rest.split(maxsplit=1)
    if sub and f"{command} {sub[0]}" in commands:  # a group's command: `mesh job submit --no-wait`
        command, rest = f"{command} {sub[0]}", rest.split(sub[0], 1)[1]
    if command not in commands:
        # Prose in code ("the mesh runs ...") has no flags; a command line with flags must be real.
        assert not FLAG.search(rest), f"{where}: `mesh {command}` is no command (mesh --help lists them)"
        return
    unknown = [f for f in FLAG.findall(rest) if f not in commands[command]]
    assert not unknown, f"{where}: `mesh {command}` has no {unknown} (see mesh {command} --help)"


def test_every_environment_variable_in_the_docs_is_read():
    """A `MESH_*` variable the docs name is an option's default, or read by the package, its scripts,
    or the tests (those that size a test run)."""
    source = "\n".join(p.read_text() for d in ("meshcompute", "scripts", "bench", "tests")
                       for p in (ROOT / d).rglob("*.py"))
    named = {v for path in DOCS for v in re.findall(r"\bMESH_[A-Z_]*[A-Z]\b", path.read_text())}
    assert "MESH_TOKEN" in named
    unread = sorted(v for v in named if f'"{v}"' not in source)
    assert not unread, f"the docs name variables nothing reads: {unread}"
