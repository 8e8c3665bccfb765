"""Real HTTP servers for the webhook and push tests: a business server that
checks every signature (and can be taken down and brought back on the same
port), and a Matrix push gateway. Served by hypercorn on 127.0.0.1 inside
the test's trio program."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from timpy.im import webhook_rules


@dataclass
class Server:
    """A starlette app on 127.0.0.1; ``stop`` closes the port, ``start`` opens it again (the same port)."""

    app: Starlette
    port: int = 0
    _scope: trio.CancelScope | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.accesslog = config.errorlog = None
        config.graceful_timeout = 0.1
        scope = trio.CancelScope()
        self._scope = scope

        async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await serve(self.app, config, shutdown_trigger=trio.sleep_forever, task_status=task_status)

        binds = await nursery.start(run)
        self.port = int(str(binds[0]).rsplit(":", 1)[-1])

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass
class BusinessServer:
    """Receives webhook events at /events and checks at /check, verifying every signature."""

    secret: str
    events: list[dict[str, Any]] = field(default_factory=list)  # verified events, in arrival order
    bad_signatures: int = 0
    failing: int = 0  # answer 500 to this many more events
    verdict: Callable[[dict[str, Any]], dict[str, Any] | None] = lambda data: None
    check_delay: float = 0.0
    clock: Callable[[], float] = time.time  # the receiver's wall clock, in seconds (timestamps are checked against it)
    arrived: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self.server = Server(Starlette(routes=[
            Route("/events", self._event, methods=["POST"]),
            Route("/check", self._check, methods=["POST"]),
        ]))

    async def _verified(self, request: Request) -> dict[str, Any] | None:
        body = await request.body()
        if not webhook_rules.verify(self.secret, request.headers.get(webhook_rules.TIMESTAMP_HEADER, ""), body,
                                    request.headers.get(webhook_rules.SIGNATURE_HEADER, ""), self.clock()):
            self.bad_signatures += 1
            return None
        event = json.loads(body)
        assert request.headers[webhook_rules.EVENT_ID_HEADER] == event["id"]
        assert request.headers[webhook_rules.EVENT_HEADER] == event["type"]
        return event

    async def _event(self, request: Request) -> Response:
        event = await self._verified(request)
        if event is None:
            return Response(status_code=401)
        if self.failing > 0:
            self.failing -= 1
            return Response(status_code=500)
        self.events.append(event)
        self.arrived.set()
        self.arrived = trio.Event()
        return Response(status_code=204)

    async def _check(self, request: Request) -> Response:
        event = await self._verified(request)
        if event is None:
            return Response(status_code=401)
        if self.check_delay:
            await trio.sleep(self.check_delay)
        answer = self.verdict(event["data"])
        return Response(status_code=204) if answer is None else JSONResponse(answer)

    def ids(self, event_type: str | None = None) -> list[str]:
        return [e["id"] for e in self.events if event_type is None or e["type"] == event_type]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                with trio.move_on_after(0.2):
                    await self.arrived.wait()


@dataclass
class PushGateway:
    """A Matrix push gateway: records each notification; rejects the push keys in ``reject``."""

    notifications: list[dict[str, Any]] = field(default_factory=list)
    reject: set[str] = field(default_factory=set)
    failing: int = 0  # answer 503 to this many more requests
    refused: int = 0

    def __post_init__(self) -> None:
        self.server = Server(Starlette(routes=[Route("/_matrix/push/v1/notify", self._notify, methods=["POST"])]))

    async def _notify(self, request: Request) -> Response:
        notification = json.loads(await request.body())["notification"]
        if self.failing > 0:
            self.failing -= 1
            self.refused += 1
            return Response(status_code=503)
        self.notifications.append(notification)
        keys = {d["pushkey"] for d in notification["devices"]}
        return JSONResponse({"rejected": sorted(keys & self.reject)})

    @property
    def url(self) -> str:
        return self.server.url("/_matrix/push/v1/notify")


async def started(nursery: trio.Nursery, *servers: Server) -> None:
    for s in servers:
        await s.start(nursery)


