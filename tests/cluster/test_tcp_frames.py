"""The TCP peer transport and frames over its size limit: a length prefix
over the limit, sent by anyone who reaches the peer port (before any
handshake) or by a peer inside its channel, ends that connection only; a
payload too large to send is dropped, and the channel carries on."""

import logging

import nacl.signing
import trio

from timpy.cluster.transport import MAX_PEER_FRAME, TcpPeerTransport
from timpy.config import parse_hostport
from timpy.crypto.keys import ClusterKeys


async def _receive(transport: TcpPeerTransport, timeout: float = 10.0) -> bytes:
    with trio.fail_after(timeout):
        return await transport.incoming.receive()


async def test_an_oversize_length_from_a_stranger_or_a_peer_ends_that_connection_not_the_node(caplog):
    caplog.set_level(logging.WARNING, logger="timpy.cluster")
    keys = ClusterKeys.generate()
    a = TcpPeerTransport(keys, nacl.signing.SigningKey.generate())
    b = TcpPeerTransport(keys, nacl.signing.SigningKey.generate())
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        host, port = parse_hostport(a.address, "peer address")

        # Before any handshake: four bytes that announce a 4 GiB frame.
        for _ in range(3):
            stream = await trio.open_tcp_stream(host, port)
            await stream.send_all(b"\xff\xff\xff\xff")
            with trio.fail_after(10):
                assert await stream.receive_some(100) == b""  # closed by the node
            await stream.aclose()

        # The transport still serves its peers, both ways.
        b.send(a.address, b"hello")
        assert await _receive(a) == b"hello"
        a.send(b.address, b"back")
        assert await _receive(b) == b"back"

        # A payload whose frame would be over the limit is dropped and logged;
        # the channel carries what follows.
        dropped = b.stats.dropped
        b.send(a.address, b"x" * MAX_PEER_FRAME)
        b.send(a.address, b"after")
        assert await _receive(a) == b"after"
        assert b.stats.dropped == dropped + 1
        assert any("over the limit" in r.getMessage() for r in caplog.records)
        nursery.cancel_scope.cancel()


async def test_frames_go_to_the_receiver_in_the_reading_task_in_the_order_sent():
    """With ``on_receive`` set (as the cluster service sets it), each frame a
    peer sends reaches it in that peer's order, and ``incoming`` stays empty;
    unset again, frames come out of ``incoming`` as before."""
    keys = ClusterKeys.generate()
    a = TcpPeerTransport(keys, nacl.signing.SigningKey.generate())
    b = TcpPeerTransport(keys, nacl.signing.SigningKey.generate())
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        a.on_receive = got.append
        sent = [i.to_bytes(4, "big") for i in range(200)]  # within the queue of a peer still being dialled
        for payload in sent:
            b.send(a.address, payload)
        with trio.fail_after(10):
            while len(got) < len(sent):
                await trio.sleep(0.01)
        assert got == sent
        assert a.incoming.statistics().current_buffer_used == 0
        a.on_receive = None
        b.send(a.address, b"through the channel")
        assert await _receive(a) == b"through the channel"
        assert len(got) == len(sent)
        nursery.cancel_scope.cancel()
