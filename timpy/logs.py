"""Log output: plain text, or one JSON object per line (``timpy node --log-json``).

Every record carries the node id once it is known. What timpy logs never
includes a message body, a password, a token or a key: log calls name users
and peers by address or opaque id only, and errors quote the exception type,
not driver text that could carry parameters.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_node_id = ""


def set_node_id(node_id: str) -> None:
    global _node_id
    _node_id = node_id


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": _node_id,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _NodeIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.node = _node_id or "-"
        return True


def setup_logging(verbose: bool = False, as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_NodeIdFilter())
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(node)s]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
