"""A client that speaks timpy's frames by hand over raw TCP, for tests that
send what a well-behaved client never would, or pipeline requests without
waiting for answers."""

from __future__ import annotations

import trio

import timpy
from timpy.wire import protocol as wp
from timpy.wire.framing import FrameDecoder, frame_bytes


class Raw:
    """A raw TCP client that speaks frames by hand."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(1 << 24)
        self.ready: list[bytes] = []

    @classmethod
    async def open(cls, node: timpy.Node) -> Raw:
        return cls(await trio.open_tcp_stream(*node.tcp_address))

    async def send(self, op: str, rid: int = 1, **fields: object) -> None:
        await self.stream.send_all(frame_bytes(wp.encode(wp.make_frame(op, rid=rid, **fields))))

    async def receive(self, timeout: float = 5) -> tuple[str, object] | None:
        with trio.fail_after(timeout):
            while not self.ready:
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self.ready += self.decoder.feed(data)
        return wp.operation_of(wp.decode(self.ready.pop(0)))

    async def closed(self, timeout: float = 5) -> bool:
        with trio.fail_after(timeout):
            while True:
                got = await self.receive(timeout)
                if got is None:
                    return True

    async def hello(self) -> None:
        await self.send("hello", version=wp.PROTOCOL_VERSION, agent="raw")
        assert (await self.receive())[0] == "welcome"
