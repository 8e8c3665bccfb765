"""Requests to a node's admin HTTP API, as an operator's tool makes them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import trio

import timpy


async def http(node: timpy.Node, method: str, path: str, body: object = None, token: str | None = "") -> tuple[int, object]:
    """One request to the node's admin listener (in a thread: urllib blocks)."""
    host, port = node.admin_address
    token = node.admin_token if token == "" else token
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(f"http://{host}:{port}{path}", data=data, method=method, headers=headers)

    def call() -> tuple[int, object]:
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                raw = r.read()
                status = r.status
                kind = r.headers.get("content-type", "")
        except urllib.error.HTTPError as e:
            raw, status, kind = e.read(), e.code, e.headers.get("content-type", "")
        return status, json.loads(raw) if "json" in kind else raw.decode()

    return await trio.to_thread.run_sync(call)
