"""The admin HTTP API: health, readiness, status, accounts, system messages,
limits, Prometheus metrics, and the OpenAPI document that describes them.

A starlette app served by hypercorn inside the node's trio nursery, on its
own listener (loopback by default). Everything but ``/health``, ``/ready``
and ``/openapi.json`` needs ``Authorization: Bearer <admin token>``. Request
bodies are JSON; errors are ``{"error": text, "code": name}`` with a 4xx or
5xx status, and a bad request changes nothing.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from hypercorn.config import Config as HypercornConfig
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from timpy.config import AdminConfig, Limits
from timpy.errors import AuthError, Code, ConfigError, RequestError, TimpyError
from timpy.gateway.tls import server_context

if TYPE_CHECKING:
    from timpy.gateway.services import NodeServices

log = logging.getLogger("timpy.admin")

_STATUS = {
    Code.BAD_REQUEST: 400, Code.INVALID_NAME: 400, Code.WEAK_PASSWORD: 400, Code.BODY_TOO_LARGE: 413,
    Code.INVALID_MESSAGE: 400, Code.NO_SUCH_USER: 404, Code.NO_SUCH_FILE: 404, Code.NOT_ALLOWED: 403, Code.NO_SUCH_GROUP: 404, Code.UNAVAILABLE: 503, Code.AUTH_REQUIRED: 401,
}
MAX_BODY = 256 * 1024
WEB = Path(__file__).parent / "web"  # the dashboard and the web chat client

Handler = Callable[[Request], Awaitable[Any]]

# (method, path, summary, needs token, request body fields)
API: list[tuple[str, str, str, bool, dict[str, str]]] = [
    ("GET", "/health", "The process is up (no token)", False, {}),
    ("GET", "/ready", "The node serves clients: 200, or 503 while starting or stopping (no token)", False, {}),
    ("GET", "/metrics", "Prometheus metrics (text format)", True, {}),
    ("GET", "/openapi.json", "This document (no token)", False, {}),
    ("GET", "/", "The dashboard (a web page; it asks for the token)", False, {}),
    ("GET", "/chat/", "The web chat client (a web page speaking the JSON protocol over WebSocket)", False, {}),
    ("GET", "/api/v1/stats", "Traffic counters for the dashboard: messages in, deliveries, connections", True, {}),
    ("GET", "/api/v1/node", "This node and the cluster as it sees them: members, ring, storage, repair", True, {}),
    ("GET", "/api/v1/users/{name}", "An account: disabled or not, created, owner node (never the password hash)", True, {}),
    ("POST", "/api/v1/users/{name}/disable", "Disable an account and close its terminals everywhere", True, {}),
    ("POST", "/api/v1/users/{name}/enable", "Enable an account again", True, {}),
    ("POST", "/api/v1/users/{name}/kick", "Close every terminal of the user, on every node", True, {}),
    ("POST", "/api/v1/users/{name}/password", "Set a new password (sessions stay valid; kick them too if needed)", True,
     {"password": "string"}),
    ("POST", "/api/v1/messages", "Send a system message (from the user 'system') to a user, to everyone with "
     "\"to\": \"*\", or to a group's members with \"group\": id; stored and delivered like any message", True,
     {"to": "string", "group": "string", "body": "string"}),
    ("GET", "/api/v1/groups/{group}", "A group: name, owner, admins, members, policy, requests, mutes, version", True, {}),
    ("GET", "/files/{attachment}", "A file, through a signed URL a member got from the client protocol "
     "(?u=USER&e=EXPIRES&s=SIGNATURE; no token); Range requests answered 206", False, {}),
    ("GET", "/api/v1/limits", "The limits this node enforces", True, {}),
    ("PUT", "/api/v1/limits", "Change limits at run time (new connections get them; this node only)", True,
     {"<limit name>": "number"}),
    ("GET", "/api/v1/webhooks", "Webhook endpoints of this node with their pending events and dead letters", True, {}),
    ("GET", "/api/v1/webhooks/dead", "Dead letters: events an endpoint did not take after every attempt, held by "
     "this node (query: endpoint, after = the last id seen, limit); with scope=cluster, every member's, each from "
     "the node that delivers it (query: endpoint, limit per member, cursor = the last answer's next)", True, {}),
    ("POST", "/api/v1/webhooks/dead/retry", "Deliver dead letters again (all, an endpoint's, or the ids given)", True,
     {"endpoint": "string", "ids": "list of integers"}),
    ("POST", "/api/v1/webhooks/dead/drop", "Delete dead letters (all, an endpoint's, or the ids given)", True,
     {"endpoint": "string", "ids": "list of integers"}),
]


def openapi() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path, summary, secured, fields in API:
        op: dict[str, Any] = {
            "summary": summary,
            "responses": {"200": {"description": "OK"}, "4XX": {"description": "{error, code}"}},
        }
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
        if secured:
            op["security"] = [{"adminToken": []}]
        if fields:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "properties": {k: {"type": v} for k, v in fields.items()}}}}}
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "timpy admin API", "version": "1"},
        "components": {"securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }


def hypercorn_config(admin: AdminConfig, host: str, port: int) -> HypercornConfig:
    """How hypercorn serves the admin app: the bind address, and HTTPS with
    ``tls_cert``/``tls_key``; with ``tls_client_ca`` a client certificate that
    CA signed is required (mTLS). The files are checked here, at start, so a
    missing or unreadable one is an error naming its option."""
    hc = HypercornConfig()
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("timpy.admin.http")
    hc.graceful_timeout = 1.0
    if admin.tls_cert is not None and admin.tls_key is not None:
        server_context(admin.tls_cert, admin.tls_key, "admin.", admin.tls_client_ca)  # clear errors first
        hc.certfile, hc.keyfile = str(admin.tls_cert), str(admin.tls_key)
        if admin.tls_client_ca is not None:
            hc.ca_certs = str(admin.tls_client_ca)
            hc.verify_mode = ssl.CERT_REQUIRED
    return hc


def build_app(node: NodeServices, token: str) -> Starlette:
    expected = f"Bearer {token}".encode()

    def guarded(handler: Handler, secured: bool = True) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                if secured:
                    given = request.headers.get("authorization", "").encode()
                    if not hmac.compare_digest(given, expected):
                        raise AuthError("send the admin token: Authorization: Bearer <token> "
                                        "(DATA/admin.token, or $TIMPY_ADMIN_TOKEN)", Code.AUTH_REQUIRED)
                result = await handler(request)
            except TimpyError as exc:
                status = 401 if isinstance(exc, AuthError) else _STATUS.get(exc.code, 400)
                return JSONResponse({"error": exc.text, "code": exc.code.name}, status_code=status)
            if isinstance(result, Response):
                return result
            return JSONResponse(result)

        return endpoint

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise RequestError(f"request body over {MAX_BODY} bytes", Code.BAD_REQUEST)
        try:
            value = json.loads(raw or b"{}")
        except ValueError:
            raise RequestError("the request body is not JSON", Code.BAD_REQUEST) from None
        if not isinstance(value, dict):
            raise RequestError("the request body must be a JSON object", Code.BAD_REQUEST)
        return value

    async def health(_: Request) -> Any:
        return {"status": "ok", "node": node.node_id}

    async def ready(_: Request) -> Any:
        if node.ready:
            return {"ready": True, "node": node.node_id}
        return JSONResponse({"ready": False, "node": node.node_id}, status_code=503)

    async def metrics(_: Request) -> Any:
        return Response(node.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def spec(_: Request) -> Any:
        return openapi()

    async def node_status(_: Request) -> Any:
        return node.cluster_status()

    async def user(request: Request) -> Any:
        found = await node.accounts.lookup(request.path_params["name"])
        if found is None:
            raise RequestError("no such user", Code.NO_SUCH_USER)
        found["live_terminals_here"] = len(node.terminals.terminals(node.user_id_of(found["name"])))
        return found

    async def disable(request: Request) -> Any:
        name = request.path_params["name"]
        if not await node.accounts.set_disabled(name, True):
            raise RequestError("no such user", Code.NO_SUCH_USER)
        node.routes.kick_user(node.user_id_of(name), "this account was disabled by the operator")
        log.info("admin: an account was disabled")
        return {"disabled": True}

    async def enable(request: Request) -> Any:
        if not await node.accounts.set_disabled(request.path_params["name"], False):
            raise RequestError("no such user", Code.NO_SUCH_USER)
        return {"disabled": False}

    async def kick(request: Request) -> Any:
        name = request.path_params["name"]
        if await node.accounts.lookup(name) is None:
            raise RequestError("no such user", Code.NO_SUCH_USER)
        node.routes.kick_user(node.user_id_of(name), "closed by the operator")
        return {"kicked": True}

    async def password(request: Request) -> Any:
        body = await body_of(request)
        new = body.get("password")
        if not isinstance(new, str):
            raise RequestError("give the new password as {\"password\": \"...\"}", Code.BAD_REQUEST)
        if not await node.accounts.reset_password(request.path_params["name"], new):
            raise RequestError("no such user", Code.NO_SUCH_USER)
        return {"changed": True}

    async def message(request: Request) -> Any:
        body = await body_of(request)
        to, group, text = body.get("to"), body.get("group"), body.get("body")
        if not isinstance(text, str) or not (isinstance(to, str) or isinstance(group, str)):
            raise RequestError(
                "give {\"to\": user name or \"*\" for everyone, or \"group\": group id; \"body\": text}",
                Code.BAD_REQUEST,
            )
        if len(text.encode()) > node.config.limits.max_body:
            raise RequestError(f"body over the limit of {node.config.limits.max_body} bytes", Code.BODY_TOO_LARGE)
        if isinstance(group, str):
            system = await node.accounts.ensure_system_account()
            result = await node.groups.system_send(system, group, text.encode())
            return {"conversation": result.message.conversation, "seq": result.message.seq}
        assert isinstance(to, str)
        if to == "*":
            return await node.broadcast(text.encode())
        result = await node.send_system_message(to, text.encode())
        return {"conversation": result.message.conversation, "seq": result.message.seq}

    async def group(request: Request) -> Any:
        return await node.groups.inspect(request.path_params["group"])

    async def limits(request: Request) -> Any:
        if request.method == "PUT":
            node.set_limits(**(await body_of(request)))
        return dataclasses.asdict(node.config.limits)

    async def stats(_: Request) -> Any:
        return node.traffic()

    def webhooks() -> Any:
        if node.webhooks is None:
            raise RequestError("this node has no webhook endpoints ([webhooks] endpoints in its config)",
                               Code.BAD_REQUEST)
        return node.webhooks

    async def webhook_status(_: Request) -> Any:
        return {"endpoints": []} if node.webhooks is None else await node.webhooks.status()

    async def dead_letters(request: Request) -> Any:
        q = request.query_params
        try:
            after, limit = int(q.get("after", "0")), int(q.get("limit", "100"))
        except ValueError:
            raise RequestError("after and limit are whole numbers", Code.BAD_REQUEST) from None
        scope = q.get("scope", "node")
        if scope == "cluster":
            return await webhooks().cluster_dead_letters(q.get("endpoint") or None, q.get("cursor", ""), limit)
        if scope != "node":
            raise RequestError("scope is node (this node's dead letters) or cluster (every member's)",
                               Code.BAD_REQUEST)
        return {"dead": await webhooks().dead_letters(q.get("endpoint") or None, after, limit)}

    async def dead_selection(request: Request) -> tuple[str | None, list[int] | None]:
        body = await body_of(request)
        endpoint, chosen = body.get("endpoint"), body.get("ids")
        if endpoint is not None and not isinstance(endpoint, str):
            raise RequestError("endpoint is an endpoint's name", Code.BAD_REQUEST)
        if chosen is not None and not (isinstance(chosen, list) and all(type(i) is int for i in chosen)):
            raise RequestError("ids is a list of dead letters' ids (whole numbers)", Code.BAD_REQUEST)
        return endpoint or None, chosen

    async def retry_dead(request: Request) -> Any:
        return {"retried": await webhooks().retry_dead(*await dead_selection(request))}

    async def drop_dead(request: Request) -> Any:
        return {"dropped": await webhooks().drop_dead(*await dead_selection(request))}

    async def chat_config(request: Request) -> Any:
        if node.config.admin.chat_ws_url:
            return {"ws": node.config.admin.chat_ws_url}
        if node.ws_address is None:
            raise RequestError("this node has no WebSocket listener (ws = off)", Code.UNAVAILABLE)
        host, port = node.ws_address
        if host in ("0.0.0.0", "::", ""):
            host = request.url.hostname or "127.0.0.1"
        scheme = "wss" if node.config.tls_cert is not None else "ws"
        return {"ws": f"{scheme}://{host}:{port}/"}

    async def download(request: Request) -> Any:
        attachment = request.path_params["attachment"]
        q = request.query_params
        user = q.get("u", "")
        wrong = node.attachments.check_url(attachment, user, q.get("e", ""), q.get("s", ""))
        if wrong is not None:
            raise RequestError(wrong, Code.NOT_ALLOWED)
        user_id = node.user_id_of(user)
        info = await node.attachments.info_for(user_id, attachment)
        span = byte_range(request.headers.get("range"), info.size)
        if span == "unsatisfiable":
            return Response(status_code=416, headers={"Content-Range": f"bytes */{info.size}"})
        start, end = span if span is not None else (0, info.size - 1)
        headers = {
            "Accept-Ranges": "bytes",
            "Content-Length": str(max(0, end - start + 1)),
            "Content-Disposition": f"{'inline' if info.mime.startswith('image/') else 'attachment'}; "
                                   f"filename*=UTF-8''{quote(info.name, safe='')}",
            "Cache-Control": "private, max-age=60",
            "X-Content-Type-Options": "nosniff",
        }
        if info.size == 0:
            return Response(b"", headers=headers, media_type=info.mime)
        _, parts = await node.attachments.read_range(user_id, attachment, start, end)
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
        return StreamingResponse(parts, status_code=206 if span is not None else 200, headers=headers,
                                 media_type=info.mime)

    def page(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def serve(_: Request) -> Response:
            return FileResponse(WEB / name, media_type="text/html")

        return serve

    routes = [
        Route("/", page("dashboard.html")),
        Route("/chat/", page("chat.html")),
        Route("/chat/config.json", guarded(chat_config, False)),
        Mount("/static", StaticFiles(directory=WEB), name="static"),
        Route("/api/v1/stats", guarded(stats)),
        Route("/health", guarded(health, False)),
        Route("/ready", guarded(ready, False)),
        Route("/openapi.json", guarded(spec, False)),
        Route("/metrics", guarded(metrics)),
        Route("/api/v1/node", guarded(node_status)),
        Route("/api/v1/users/{name}", guarded(user)),
        Route("/api/v1/users/{name}/disable", guarded(disable), methods=["POST"]),
        Route("/api/v1/users/{name}/enable", guarded(enable), methods=["POST"]),
        Route("/api/v1/users/{name}/kick", guarded(kick), methods=["POST"]),
        Route("/api/v1/users/{name}/password", guarded(password), methods=["POST"]),
        Route("/api/v1/messages", guarded(message), methods=["POST"]),
        Route("/api/v1/groups/{group}", guarded(group)),
        Route("/api/v1/limits", guarded(limits), methods=["GET", "PUT"]),
        Route("/files/{attachment}", guarded(download, False)),
        Route("/api/v1/webhooks", guarded(webhook_status)),
        Route("/api/v1/webhooks/dead", guarded(dead_letters)),
        Route("/api/v1/webhooks/dead/retry", guarded(retry_dead), methods=["POST"]),
        Route("/api/v1/webhooks/dead/drop", guarded(drop_dead), methods=["POST"]),
    ]
    return Starlette(routes=routes)


def byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """A single HTTP byte range (``bytes=A-B``, ``A-``, ``-N``) as inclusive
    (start, end); None for no (or an unusable) Range header, "unsatisfiable" past the end."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if not first:
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or start < 0:
        return "unsatisfiable"
    if end < start:
        return None
    return start, min(end, size - 1)


def checked_limits(current: Limits, changes: Any) -> Limits:
    """``current`` with ``changes``, checked by the config model: the same rules as the file."""
    if not isinstance(changes, dict):
        raise RequestError("send a JSON object of limits, e.g. {\"max_body\": 65536}", Code.BAD_REQUEST)
    try:
        return current.replace(**changes)
    except ConfigError as exc:
        raise RequestError(exc.text, Code.BAD_REQUEST) from None
