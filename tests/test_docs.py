"""Every command and snippet in README.md and docs/*.md runs as written; links and paths resolve.

The convention (docs/architecture.md, "Documents are tested", says the same):

* **Blocks.** A code block is fenced (```` ```lang ````) or indented by four spaces after a
  blank line (the README's style). ``sh``/``bash``/``shell`` and indented blocks are shell
  commands, one per line (``\\`` continues a line; ``# ...`` comments are shell comments).
  ``console`` blocks (and any block whose first line starts with ``$ ``) are transcripts:
  ``$ `` lines are commands, the lines under one are the output the document shows, which
  must appear in what the command prints (``…`` stands for anything, spacing is free).
  ``python`` blocks are scripts; in a document where some use top-level ``await``, they
  are all one session instead (as typed at ``python -m trio``): run in order in one
  namespace, in one process, at the place of the last one. ``toml`` blocks must parse, and a node configuration must
  load (``timpy.config.load_config``). ``json``, ``yaml``, ``nginx``, ``text`` are data, not
  run. A fence without a language, or with one this module does not know, fails.
* **Every shell and python block runs**, unless the line right before it is a marker:

  - ``<!-- not-run: REASON -->``: not run here, and why (needs another host, runs forever, ...);
  - ``<!-- test-command: ... -->``: the README's test command, which ``.ci/run`` runs;
  - ``<!-- synopsis: COMMAND -->``: a usage synopsis; every ``--option`` in it must appear in
    the output of ``COMMAND`` (e.g. ``timpy node --help``);

  and it may be given more to check or feed:

  - ``<!-- stdin: TEXT -->`` (``\\n`` for a newline): each command of the block reads TEXT
    on its standard input (otherwise it reads nothing: an interactive command sees the end);
  - ``<!-- include: PATH -->``: the block must be exactly the repository file PATH.

  So a new block either runs or says why not, and docs cannot drift silently.
* **How a document runs.** One test per document, in a fresh copy of the repository's
  tracked files (a fresh clone) as the working directory, with this interpreter's
  ``bin/`` (where ``timpy`` is) first on PATH and no ``TIMPY_*`` variables. Commands run
  in document order in one bash session, so variables carry over as in a terminal. The
  documented install step (``python3 -m venv .venv && . .venv/bin/activate && pip install
  ... &&``, or ``pip install -e . &&``) is not repeated: the suite runs in the venv the
  README's test command made; the rest of the line runs as written. ``timpy node``
  (without ``--help``) runs in the background until the document ends, as in its own
  terminal; the next command waits until every listener it names (or the defaults
  7070-7073) accepts connections. Python blocks run as scripts with this interpreter in
  the same directory, against the nodes running at that point. A document that starts a
  node (or runs python) holds ``default_ports_lock()``: documents use fixed ports. At the
  end every node gets SIGINT (Ctrl-C) and must exit cleanly; anything left is killed.
* **Every ``timpy ...`` named**, inline or in any block (run or not), must name real
  commands and options.
"""

from __future__ import annotations

import ast
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.default_ports import default_ports_lock
from tests.support.docblocks import (
    MARKERS,
    Block,
    Command,
    DocError,
    anchors,
    blocks,
    commands,
    links,
    output_pattern,
    paths,
    stdin_of,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IDS = [str(d.relative_to(ROOT)) for d in DOCS]

INSTALL_PREFIX = re.compile(
    r"^(?:python3 -m venv \.venv && \. \.venv/bin/activate && )?pip install [^&]+&& "
)
NODE_COMMAND = re.compile(r"^timpy\s+node(\s|$)")
DEFAULT_LISTENERS = {"--listen": "127.0.0.1:7070", "--ws": "127.0.0.1:7071",
                     "--peer": "127.0.0.1:7072", "--admin": "127.0.0.1:7073"}
COMMAND_TIMEOUT = 120.0
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

assert {"not-run", "test-command", "stdin", "include"} <= MARKERS


# -- running ----------------------------------------------------------------------------------


class Shell:
    """One bash session: commands run in it one by one, so variables carry over."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.proc = subprocess.Popen(
            ["bash", "--norc", "--noprofile"], cwd=cwd, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.count = 0

    def run(self, command: str, stdin: str | None, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str, str]:
        self.count += 1
        io = self.cwd / f".doc-io-{self.count}"
        io.mkdir()
        (io / "in").write_text(stdin or "")
        marker = f"__doc_rc_{self.count}__="
        script = f"{{ {command}\n}} <{shlex.quote(str(io / 'in'))} >{shlex.quote(str(io / 'out'))} " \
                 f"2>{shlex.quote(str(io / 'err'))}; echo \"{marker}$?\"\n"
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(script.encode())
        self.proc.stdin.flush()
        seen = b""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while marker.encode() not in seen or not seen.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"still running after {timeout:.0f} s: {command}")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise AssertionError(f"the shell ended during: {command}")
                seen += chunk
        rc = int(seen.decode().split(marker)[1].split()[0])
        out = (io / "out").read_text(errors="replace")
        err = (io / "err").read_text(errors="replace")
        shutil.rmtree(io)
        return rc, out, err

    def close(self) -> None:
        _stop_group(self.proc, signal.SIGKILL, 5)


def _die_with_parent() -> None:
    """In the child: be killed if the test process dies, so no node outlives a killed run."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop_group(proc: subprocess.Popen, sig: int, wait: float) -> int | None:
    """Signal ``proc``'s process group; wait; SIGKILL the group if it is still there."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        return proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)
    return None


def _listeners(command: str, cwd: Path) -> list[tuple[str, int]]:
    """The addresses a ``timpy node`` command will listen on: flags, then its config, then defaults."""
    args = shlex.split(command, comments=True)
    chosen = dict(DEFAULT_LISTENERS)
    if "--config" in args:
        config = tomllib.loads((cwd / args[args.index("--config") + 1]).read_text())
        for flag, value in (("--listen", config.get("listen")), ("--ws", config.get("ws")),
                            ("--peer", config.get("cluster", {}).get("listen")),
                            ("--admin", config.get("admin", {}).get("listen"))):
            if value is not None:
                chosen[flag] = value
    for flag in DEFAULT_LISTENERS:
        if flag in args:
            chosen[flag] = args[args.index(flag) + 1]
    found = []
    for value in chosen.values():
        if value == "off":
            continue
        host, _, port = value.rpartition(":")
        if int(port):
            found.append(("127.0.0.1" if host in ("0.0.0.0", "") else host, int(port)))
    return found


def _accepts(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=0.5):
            return True
    except OSError:
        return False


class Document:
    """Runs one document's blocks in order in a fresh copy of the repository."""

    def __init__(self, doc: Path, workdir: Path, stack: ExitStack) -> None:
        self.doc = doc
        self.cwd = workdir
        self.stack = stack
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIMPY_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["COLUMNS"] = "200"
        env["PYTHONUNBUFFERED"] = "1"
        self.env = env
        self.shell: Shell | None = None
        self.session: list[Block] = []
        python = [b for b in blocks(doc) if b.kind == "python" and runs_here(b)]
        self.session_mode = any(uses_top_level_await(b) for b in python)
        self.last_python = python[-1].line if python else None
        self.nodes: list[tuple[str, subprocess.Popen, Path]] = []
        stack.callback(self._stop_all)

    def _stop_all(self) -> None:
        for _, proc, _ in self.nodes:
            _stop_group(proc, signal.SIGINT, STOP_TIMEOUT)
        if self.shell is not None:
            self.shell.close()

    def run_block(self, block: Block) -> None:
        if block.kind == "python" and self.session_mode:
            self.session.append(block)
            if block.line == self.last_python:
                self.run_session()
        elif block.kind == "python":
            self.run_python(block)
        elif block.kind in ("shell", "console"):
            for command in commands(block):
                self.run_command(block, command)
        elif block.kind == "data":
            check_data(block)

    def run_command(self, block: Block, command: Command) -> None:
        text = INSTALL_PREFIX.sub("", command.text.strip())
        where = f"{self.doc.name}:{command.line}"
        if NODE_COMMAND.match(text) and "--help" not in text:
            self.start_node(text, where)
            return
        syntax = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True, timeout=30)
        assert syntax.returncode == 0, (
            f"{where}: `{text}` is not a shell command ({syntax.stderr.strip()}); a block that shows "
            "output or text belongs in a ```text fence, or under a <!-- not-run: REASON --> marker"
        )
        if self.shell is None:
            self.shell = Shell(self.cwd, self.env)
        rc, out, err = self.shell.run(text, stdin_of(block))
        assert rc == 0, f"{where}: `{text}` exited with {rc}\nstdout:\n{out}\nstderr:\n{err}{self.node_logs()}"
        for shown in command.expected:
            pattern = output_pattern(shown)
            assert pattern.search(out), (
                f"{where}: `{text}` did not print what the document shows:\n  {shown}\n"
                f"it printed:\n{out}\nstderr:\n{err}"
            )

    def start_node(self, command: str, where: str) -> None:
        addresses = _listeners(command, self.cwd)
        taken = [a for a in addresses if _accepts(a)]
        assert not taken, f"{where}: something already listens on {taken} before `{command}`"
        log = self.cwd / f".doc-node-{len(self.nodes) + 1}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.cwd, env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                    preexec_fn=_die_with_parent)
        self.nodes.append((command, proc, log))
        deadline = time.monotonic() + READY_TIMEOUT
        waiting = list(addresses)
        while waiting:
            if proc.poll() is not None:
                raise AssertionError(f"{where}: `{command}` exited with {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{where}: `{command}` not listening on {waiting} after "
                                     f"{READY_TIMEOUT:.0f} s:\n{log.read_text()}")
            waiting = [a for a in waiting if not _accepts(a)]
            if waiting:
                time.sleep(0.1)

    def run_python(self, block: Block) -> None:
        script = self.cwd / f"doc_block_{block.line}.py"
        script.write_text(block.text)
        r = subprocess.run([sys.executable, str(script)], cwd=self.cwd, env=self.env, capture_output=True,
                           text=True, timeout=COMMAND_TIMEOUT, input=stdin_of(block) or "",
                           start_new_session=True)
        assert r.returncode == 0, (
            f"{block.where}: the python block exited with {r.returncode}\nstdout:\n{r.stdout}\n"
            f"stderr:\n{r.stderr}{self.node_logs()}"
        )

    def run_session(self) -> None:
        fragments = self.cwd / ".doc-session.json"
        fragments.write_text(json.dumps([[b.where, b.text] for b in self.session]))
        runner = Path(__file__).parent / "support" / "pysession.py"
        r = subprocess.run([sys.executable, str(runner), str(fragments)], cwd=self.cwd, env=self.env,
                           capture_output=True, text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL,
                           start_new_session=True)
        assert r.returncode == 0, (
            f"{self.doc.name}: the python session ({', '.join(b.where for b in self.session)}) exited with "
            f"{r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}{self.node_logs()}"
        )

    def node_logs(self) -> str:
        return "".join(f"\n--- log of `{c}`:\n{log.read_text(errors='replace')[-3000:]}" for c, _, log in self.nodes)

    def stop_nodes(self) -> None:
        """Ctrl-C every node, newest first; each must exit cleanly within the bound."""
        for command, proc, log in reversed(self.nodes):
            code = _stop_group(proc, signal.SIGINT, STOP_TIMEOUT)
            assert code == 0, (f"`{command}` did not exit cleanly on Ctrl-C within {STOP_TIMEOUT:.0f} s "
                               f"(exit {code}):\n{log.read_text(errors='replace')[-3000:]}")


def check_data(block: Block) -> None:
    if block.lang != "toml":
        return
    values = tomllib.loads(block.text)
    if {"listen", "ws", "data_dir", "limits", "cluster", "admin", "storage", "security"} & set(values):
        from timpy.config import load_config

        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"timpy-doc-{os.getpid()}-{block.line}.toml"
        path.write_text(block.text)
        try:
            load_config(path)
        finally:
            path.unlink()


def check_synopsis(block: Block, cwd: Path, env: dict[str, str]) -> None:
    command = block.markers["synopsis"]
    r = subprocess.run(shlex.split(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for option in sorted(set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", block.text))):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", r.stdout), (
            f"{block.where}: the synopsis names {option}, which `{command}` does not know:\n{r.stdout}")


def fresh_clone(dest: Path) -> Path:
    """The repository's tracked files, as a fresh clone has them."""
    dest.mkdir()
    try:
        listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True)
        files = [f for f in listed.stdout.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and ".venv" not in p.parts and ".git" not in p.parts]
    for name in files:
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def uses_top_level_await(block: Block) -> bool:
    try:
        compile(block.text, block.where, "exec")
    except SyntaxError:
        compile(block.text, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return True
    return False


def starts_nodes(block: Block) -> bool:
    """A python block may open a node; a shell block does with `timpy node` (not --help)."""
    if block.kind == "python":
        return True
    if block.kind not in ("shell", "console"):
        return False
    return any(NODE_COMMAND.match(INSTALL_PREFIX.sub("", c.text.strip())) and "--help" not in c.text
               for c in commands(block))


def runs_here(block: Block) -> bool:
    return not ({"not-run", "test-command", "synopsis"} & set(block.markers))


# -- tests ------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_document_runs_as_written(doc: Path, tmp_path: Path) -> None:
    found = blocks(doc)
    workdir = fresh_clone(tmp_path / "clone")
    with ExitStack() as stack:
        if any(starts_nodes(b) for b in found if runs_here(b)):
            stack.enter_context(default_ports_lock())
        document = Document(doc, workdir, stack)
        for block in found:
            if "include" in block.markers:
                included = (ROOT / block.markers["include"]).read_text()
                assert block.text == included, (
                    f"{block.where}: the block must be exactly {block.markers['include']}; it is now:\n{included}")
            if "synopsis" in block.markers:
                check_synopsis(block, workdir, document.env)
            if runs_here(block):
                document.run_block(block)
        document.stop_nodes()


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_every_block_is_understood(doc: Path) -> None:
    """Each block is of a known kind and its markers are known (blocks() raises otherwise)."""
    for block in blocks(doc):
        if block.kind in ("shell", "console"):
            assert commands(block) or not runs_here(block), f"{block.where}: a shell block with no command"
        if "stdin" in block.markers:
            assert runs_here(block), f"{block.where}: input for a block that is not run"


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_links_and_anchors_resolve(doc: Path) -> None:
    problems = []
    for line, target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # http(s):, mailto: ... are not files of the repository
        path_part, _, anchor = target.partition("#")
        resolved = (doc.parent / path_part).resolve() if path_part else doc
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{doc.name}:{line}: {target} is outside the repository")
        elif not resolved.exists():
            problems.append(f"{doc.name}:{line}: {target} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{doc.name}:{line}: {target}: no heading with anchor #{anchor}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_named_paths_exist(doc: Path) -> None:
    """`docs/x.md`, `examples/y.py`, `timpy/z/`...: every repository path a document names exists."""
    problems = []
    for line, name in paths(doc):
        if name.startswith(("./", "../")):
            base = (doc.parent / name).resolve()
            if not base.is_relative_to(ROOT):
                problems.append(f"{doc.name}:{line}: {name} is outside the repository")
                continue
            name = str(base.relative_to(ROOT))
        if "*" in name:
            if not list(ROOT.glob(name.rstrip("/"))):
                problems.append(f"{doc.name}:{line}: {name} matches no file")
        elif not (ROOT / name).exists():
            problems.append(f"{doc.name}:{line}: {name} does not exist")
    assert not problems, "\n".join(problems)


def test_parser_sees_both_block_styles(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "Text\n\n    timpy chat --user a \\\n      --register\n\n<!-- not-run: just because -->\n"
        "```python\nprint(1)\n```\n\n```console\n$ echo hi\nhi\n$ true\n```\n"
        "<!-- stdin: a\\nb -->\n```sh\ncat   # comment\n```\n"
    )
    found = blocks(doc)
    assert [b.kind for b in found] == ["shell", "python", "console", "shell"]
    assert commands(found[0]) == [Command("timpy chat --user a    --register", 3)]
    assert found[1].markers == {"not-run": "just because"}
    assert commands(found[2]) == [Command("echo hi", 12, ("hi",)), Command("true", 14)]
    assert stdin_of(found[3]) == "a\nb"
    (tmp_path / "y.md").write_text("```\nno language\n```\n")
    with pytest.raises(DocError, match="without a language"):
        blocks(tmp_path / "y.md")
    (tmp_path / "z.md").write_text("<!-- notrun: x -->\n```python\n1\n```\n")
    with pytest.raises(DocError, match="unknown marker"):
        blocks(tmp_path / "z.md")
    assert output_pattern('{"status": "ok", "node": "…"}').search('{"status":  "ok", "node": "ab12"}')
    assert not output_pattern("sent #1").search("sent #2")


# -- every `timpy ...` a document names, run or not, names real commands and options ---------

_INLINE = re.compile(r"`(timpy [^`]+)`")


def _timpy_commands(doc: Path) -> list[tuple[int, str]]:
    """Inline `timpy ...` spans and every timpy command in the document's shell blocks (run or not)."""
    found = []
    text = doc.read_text()
    for n, line in enumerate(text.splitlines(), start=1):
        found += [(n, m.group(1)) for m in _INLINE.finditer(line)]
    for block in blocks(doc):
        if block.kind in ("shell", "console"):
            for command in commands(block):
                for piece in re.split(r"&&|\|\||;|\|", command.text):
                    piece = INSTALL_PREFIX.sub("", piece.strip())
                    if piece.startswith("timpy "):
                        found.append((command.line, piece))
    return found


def check_timpy_command(text: str) -> str | None:
    """None if every subcommand and --option of ``text`` exists in the CLI, else what is wrong."""
    import click

    from timpy.cli.main import cli

    command: click.Command = cli
    words = text.split("#")[0].split()[1:]
    path = ["timpy"]
    for word in words:
        if not isinstance(command, click.Group) or word.startswith("-"):
            break
        names = word.split("/")  # `timpy backend add/remove/resume` names several
        ctx = click.Context(command)
        if all(command.get_command(ctx, n) is not None for n in names):
            command = command.get_command(ctx, names[0])  # type: ignore[assignment]
            path.append(word)
        elif word.isidentifier() or re.fullmatch(r"[a-z][\w-]*", word):
            return f"`{' '.join(path)}` has no command '{word}'"
        else:
            break
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
    for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", text.split("#")[0]):
        if option not in known:
            return f"`{' '.join(path)}` has no option {option}"
    return None


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_named_commands_and_options_exist(doc: Path) -> None:
    problems = []
    for line, text in _timpy_commands(doc):
        wrong = check_timpy_command(text)
        if wrong:
            problems.append(f"{doc.name}:{line}: {text}: {wrong}")
    assert not problems, "\n".join(problems)


def test_command_check_catches_what_the_issue_found() -> None:
    assert check_timpy_command("timpy chat --server tcp://127.0.0.1:7030") == "`timpy chat` has no option --server"
    assert check_timpy_command("timpy chat --url tcp://127.0.0.1:7030 --user a") is None
    assert check_timpy_command("timpy clusters status") == "`timpy` has no command 'clusters'"
    assert check_timpy_command("timpy backend add/remove/resume") is None



def _run_doc(doc: Path, workdir: Path) -> None:
    with ExitStack() as stack:
        document = Document(doc, workdir, stack)
        for block in blocks(doc):
            if runs_here(block):
                document.run_block(block)
        document.stop_nodes()


def test_the_runner_fails_where_a_reader_would(tmp_path: Path) -> None:
    doc = tmp_path / "t.md"
    doc.write_text(
        "```console\n$ X=hello\n$ echo $X world   # variables carry over\nhello …\n```\n"
        "<!-- stdin: typed\\n -->\n    read line && test \"$line\" = typed\n"
    )
    _run_doc(doc, tmp_path)
    for text, message in [
        ("```console\n$ false\n```\n", "exited with 1"),
        ("    Error: a value (e.g. 1) is wrong\n", "is not a shell command"),
        ("```console\n$ echo hi\nbye\n```\n", "did not print what the document shows"),
        ("```python\nraise SystemExit(3)\n```\n", "exited with 3"),
        ("```python\nimport trio\nawait trio.sleep(0)\nx = 1\n```\n```python\nassert x == 2, 'x is 1'\n```\n",
         r"the fragment at t.md:7 failed(.|\n)*x is 1"),
    ]:
        doc.write_text(text)
        with pytest.raises(AssertionError, match=message):
            _run_doc(doc, tmp_path)
    doc.write_text("```python\nimport trio\nawait trio.sleep(0)\nx = 1\n```\n```python\nassert x == 1\n```\n")
    _run_doc(doc, tmp_path)


def test_default_ports_lock_waits_then_says_who_to_ask(tmp_path: Path) -> None:
    from tests.support.default_ports import DefaultPortsBusy

    lock = str(tmp_path / "ports.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()", lock],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(DefaultPortsBusy, match="another test run is using the default ports"):
            with default_ports_lock(timeout=0.3, path=lock):
                pass
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    with default_ports_lock(timeout=5, path=lock):  # the holder is gone: the kernel dropped its lock
        pass
