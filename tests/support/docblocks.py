"""Code blocks, markers, links and paths in the Markdown documents (README.md, docs/*.md).

Pure parsing: no processes. ``tests/test_docs.py`` runs what this finds; the convention
it implements is written at the top of that module and in docs/architecture.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

SHELL_LANGS = {"sh", "bash", "shell"}
CONSOLE_LANGS = {"console", "shell-session"}
PYTHON_LANGS = {"python", "py"}
DATA_LANGS = {"toml", "json", "yaml", "nginx", "text", "ini", "dockerfile", "systemd", "pem"}
MARKERS = {"not-run", "test-command", "stdin", "include", "synopsis"}

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
_MARKER = re.compile(r"^\s*<!--\s*(?P<key>[a-z-]+)\s*:\s*(?P<value>.*?)\s*-->\s*$")
_COMMENT = re.compile(r"^\s*<!--.*-->\s*$")


class DocError(ValueError):
    """A document breaks the block convention (unknown marker, untagged fence, ...)."""


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # 1-based line of the block's first content line
    kind: str  # "shell" | "console" | "python" | "data"
    lang: str
    text: str
    markers: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.doc.name}:{self.line}"


@dataclass(frozen=True)
class Command:
    """One shell command of a block, and the output lines the document shows after it."""

    text: str
    line: int
    expected: tuple[str, ...] = ()


def _markers_above(lines: list[str], start: int, doc: Path) -> dict[str, str]:
    """The ``<!-- key: value -->`` lines directly above line index ``start``."""
    found: dict[str, str] = {}
    i = start - 1
    while i >= 0 and _COMMENT.match(lines[i]):
        m = _MARKER.match(lines[i])
        if m:
            key = m["key"]
            if key not in MARKERS:
                raise DocError(f"{doc.name}:{i + 1}: unknown marker '{key}'; known: {', '.join(sorted(MARKERS))}")
            if key == "not-run" and not m["value"]:
                raise DocError(f"{doc.name}:{i + 1}: a not-run marker needs a reason")
            found[key] = m["value"]
        i -= 1
    return found


def _kind(lang: str, text: str, where: str) -> str:
    lang = lang.lower()
    if lang in PYTHON_LANGS:
        return "python"
    if lang in CONSOLE_LANGS:
        return "console"
    if lang in SHELL_LANGS:
        return "console" if text.lstrip().startswith("$ ") else "shell"
    if lang in DATA_LANGS:
        return "data"
    if not lang:
        if text.lstrip().startswith("$ "):
            return "console"
        raise DocError(f"{where}: a fence without a language: tag it (console, sh, python, toml, text, ...)")
    raise DocError(f"{where}: unknown fence language '{lang}'; known: "
                   f"{', '.join(sorted(SHELL_LANGS | CONSOLE_LANGS | PYTHON_LANGS | DATA_LANGS))}")


def blocks(doc: Path) -> list[Block]:
    """Every fenced and every indented (4 spaces, after a blank line) code block of ``doc``."""
    lines = doc.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m:
            fence, lang, start = m["fence"], m["lang"], i
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence):
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise DocError(f"{doc.name}:{start + 1}: fence never closed")
            text = "\n".join(body) + "\n"
            where = f"{doc.name}:{start + 2}"
            found.append(Block(doc, start + 2, _kind(lang, text, where), lang, text,
                               _markers_above(lines, start, doc)))
            i += 1
            continue
        previous_blank = i == 0 or not lines[i - 1].strip() or bool(_COMMENT.match(lines[i - 1]))
        if previous_blank and lines[i].startswith("    ") and lines[i].strip():
            start = i
            body = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            text = "\n".join(body) + "\n"
            kind = "console" if text.lstrip().startswith("$ ") else "shell"
            found.append(Block(doc, start + 1, kind, "", text, _markers_above(lines, start, doc)))
            continue
        i += 1
    return found


def commands(block: Block) -> list[Command]:
    """The commands of a shell or console block, continuation lines joined, comments kept."""
    out: list[Command] = []
    pending = ""
    pending_line = 0
    expected: list[str] = []
    for n, raw in enumerate(block.text.splitlines(), start=block.line):
        line = raw.rstrip()
        if block.kind == "console" and not pending:
            if line.startswith("$ "):
                if out and expected:
                    out[-1] = Command(out[-1].text, out[-1].line, tuple(expected))
                expected = []
                line = line[2:]
            else:
                if line.strip():
                    if not out:
                        raise DocError(f"{block.where}: output before any '$ ' command")
                    expected.append(line)
                continue
        elif not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not pending:
            pending_line = n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(Command(pending + line, pending_line))
        pending = ""
    if pending:
        raise DocError(f"{block.where}: a command ends with a line continuation")
    if out and expected:
        out[-1] = Command(out[-1].text, out[-1].line, tuple(expected))
    return out


def stdin_of(block: Block) -> str | None:
    """The ``<!-- stdin: TEXT -->`` input (``\\n`` for newlines), given to each command of the block."""
    value = block.markers.get("stdin")
    if value is None:
        return None
    return value.replace("\\n", "\n")


def output_pattern(shown: str) -> re.Pattern[str]:
    """A shown output line as a pattern: '…' stands for anything, runs of spaces for any spacing."""
    parts = [r"\s+".join(re.escape(word) for word in part.split()) for part in shown.strip().split("…")]
    return re.compile(".*".join(parts))


# -- links and paths --------------------------------------------------------------------------

_LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_PATH = re.compile(
    r"(?<![\w./:-])(?P<path>(?:\.\./)+[\w.-][\w./*-]*[\w*/]|(?:\./)?(?:docs|examples|nodes|tests|timpy)/[\w./*-]*[\w*/])"
)


def _strip_code_blocks(text: str) -> str:
    """The text outside fenced blocks (links and paths inside code are not navigation)."""
    out, fence = [], None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m["fence"]
            out.append("")
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            out.append("")
            continue
        out.append(line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = _strip_code_blocks(doc.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M)}


def links(doc: Path) -> list[tuple[int, str]]:
    text = _strip_code_blocks(doc.read_text())
    return [(text.count("\n", 0, m.start()) + 1, m["target"]) for m in _LINK.finditer(text)]


def paths(doc: Path) -> list[tuple[int, str]]:
    """Repository paths named in the text (``docs/x.md``, ``examples/y.py``, ``timpy/z/``...)."""
    found = []
    for n, line in enumerate(doc.read_text().splitlines(), start=1):
        for m in _PATH.finditer(line):
            found.append((n, m["path"].rstrip(".")))
    return found
