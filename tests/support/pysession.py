"""Run a document's Python fragments as one session, as if typed at ``python -m trio``.

Usage: ``python pysession.py FRAGMENTS.json`` where the file holds ``[[where, source], ...]``.
Each fragment is compiled with top-level ``await`` allowed and runs in one shared namespace
inside one trio task, in order; the first failure stops the session with its traceback
(whose file name is the document and line of the fragment). Stdlib and trio only.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import sys
import traceback

import trio


async def run_session(fragments: list[tuple[str, str]]) -> None:
    namespace: dict[str, object] = {"__name__": "__main__"}
    for where, source in fragments:
        try:
            code = compile(source, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, namespace)  # noqa: S307 - the document's own example code
            if inspect.iscoroutine(result):
                await result
        except BaseException:
            # Report the fragment's own error, then leave at once: clients the session left
            # open would otherwise bury it under their teardown errors.
            print(f"the fragment at {where} failed:", file=sys.stderr)
            traceback.print_exc()
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(1)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        trio.run(run_session, [tuple(item) for item in json.load(f)])
