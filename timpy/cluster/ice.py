"""ICE and a reliable channel over it, in trio.

- :class:`IceSession` hosts one aioice ``Connection`` (asyncio) inside trio
  through trio-asyncio: the transport opens one asyncio loop for its lifetime
  (``trio_asyncio.open_loop``) and every aioice call is awaited with
  ``aio_as_trio``, so cancellation and errors stay structured.
- :class:`QuicStream` runs QUIC (aioquic's sans-IO ``QuicConnection``) over
  the ICE datagram path and offers one reliable, ordered byte stream with the
  same ``send_all``/``receive_some``/``aclose`` as a trio socket stream. QUIC
  gives retransmission, congestion control (NewReno) with pacing and flow
  control; its TLS layer uses a throwaway self-signed certificate and checks
  nothing, because the peer channel inside it (timpy.cluster.channel) does the
  authentication with the cluster key and node identities.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
import trio_asyncio
from aioice import Candidate, Connection
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived, StreamReset
from aioquic.quic.packet import pull_quic_header
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger("timpy.cluster")

ALPN = "timpy-peer/1"
_ADDR = ("198.18.0.0", 0)  # QUIC wants a peer address; the ICE pair is the only path, so any constant does
SEND_BUFFER = 1024 * 1024  # bytes written but not yet acknowledged before send_all waits
IDLE_TIMEOUT = 20.0  # a pair silent this long (pings unanswered) is closed
KEEPALIVE = 5.0  # seconds between QUIC pings on a quiet pair


@dataclass
class IceServers:
    """STUN and TURN servers for candidate gathering (all optional)."""

    stun: tuple[str, int] | None = None
    turn: tuple[str, int] | None = None
    turn_username: str | None = None
    turn_password: str | None = None
    turn_transport: str = "udp"


@dataclass
class IceOffer:
    ufrag: str
    pwd: str
    candidates: list[str] = field(default_factory=list)


class IceFailed(Exception):
    """No candidate pair worked (or the session was closed)."""


class IceSession:
    """One ICE negotiation and, once it succeeds, its datagram path."""

    def __init__(self, controlling: bool, servers: IceServers, loop: asyncio.AbstractEventLoop) -> None:
        # tasks inherit trio-asyncio's loop from whoever started them, so the loop is passed in
        self._loop = loop
        self._conn = Connection(
            ice_controlling=controlling,
            stun_server=servers.stun,
            turn_server=servers.turn,
            turn_username=servers.turn_username,
            turn_password=servers.turn_password,
            turn_transport=servers.turn_transport,
            use_ipv6=False,
        )

    async def gather(self) -> IceOffer:
        await self._aio(self._conn.gather_candidates)()
        return IceOffer(
            self._conn.local_username,
            self._conn.local_password,
            [c.to_sdp() for c in self._conn.local_candidates],
        )

    async def connect(self, remote: IceOffer, timeout: float) -> None:
        conn = self._conn
        conn.remote_username, conn.remote_password = remote.ufrag, remote.pwd
        try:
            for sdp in remote.candidates:
                await self._aio(conn.add_remote_candidate)(Candidate.from_sdp(sdp))
            await self._aio(conn.add_remote_candidate)(None)
            with trio.fail_after(timeout):
                await self._aio(conn.connect)()
        except (ConnectionError, ValueError, trio.TooSlowError) as exc:
            raise IceFailed(f"{type(exc).__name__}: {exc}") from None

    def _aio(self, fn):  # noqa: ANN001, ANN202
        return trio_asyncio.aio_as_trio(fn, loop=self._loop)

    def pair_types(self) -> tuple[str, str]:
        """Candidate types of the nominated pair (local, remote)."""
        pair = self._conn._nominated.get(1)  # aioice keeps the selected pair only here
        if pair is None:
            return "", ""
        return pair.local_candidate.type, pair.remote_candidate.type

    async def recv(self) -> bytes:
        return await self._aio(self._conn.recv)()

    async def send_many(self, datagrams: list[bytes]) -> None:
        conn = self._conn

        async def send() -> None:
            for data in datagrams:
                await conn.send(data)

        await self._aio(send)()

    async def close(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self._aio(self._conn.close)()
            except (RuntimeError, AttributeError, ConnectionError) as exc:  # the loop is already gone
                log.debug("closing an ICE session: %s", exc)


def _certificate() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "timpy-peer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert, key


class QuicStream:
    """One bidirectional QUIC stream over an ICE path, as a trio-style stream."""

    def __init__(self, ice: IceSession, client: bool) -> None:
        self._ice = ice
        self._client = client
        config = QuicConfiguration(is_client=client, alpn_protocols=[ALPN], idle_timeout=IDLE_TIMEOUT)
        if client:
            config.verify_mode = ssl.CERT_NONE
            self._quic: QuicConnection | None = QuicConnection(configuration=config)
            self._quic.connect(_ADDR, now=trio.current_time())
            self._stream_id: int | None = self._quic.get_next_available_stream_id()
        else:
            config.certificate, config.private_key = _certificate()
            self._config = config
            self._quic = None  # made from the client's first packet
            self._stream_id = None
        self._data_send, self._data = trio.open_memory_channel[bytes](math.inf)
        self._progress = trio.Event()  # set whenever datagrams arrive (acks free send buffer)
        self._closed = False
        self._buffered = b""

    @classmethod
    @asynccontextmanager
    async def open(cls, ice: IceSession, client: bool) -> AsyncIterator[QuicStream]:
        stream = cls(ice, client)
        async with trio.open_nursery() as nursery:
            datagrams_send, datagrams = trio.open_memory_channel[bytes](1024)
            nursery.start_soon(stream._reader, datagrams_send)
            nursery.start_soon(stream._pump, datagrams)
            try:
                if client:
                    await stream._transmit()
                yield stream
            finally:
                await stream._shutdown()
                nursery.cancel_scope.cancel()

    async def _reader(self, out: trio.MemorySendChannel[bytes]) -> None:
        try:
            while True:
                data = await self._ice.recv()
                try:
                    out.send_nowait(data)
                except trio.WouldBlock:
                    pass  # QUIC retransmits what it loses
        except ConnectionError:
            self._end()

    async def _pump(self, datagrams: trio.MemoryReceiveChannel[bytes]) -> None:
        next_ping = trio.current_time() + KEEPALIVE
        while not self._closed:
            timer = self._quic.get_timer() if self._quic is not None else None
            with trio.move_on_at(min(timer if timer is not None else math.inf, next_ping)) as scope:
                data = await datagrams.receive()
            now = trio.current_time()
            if scope.cancelled_caught:
                if now >= next_ping:  # keep a quiet pair (and its NAT mappings) alive
                    next_ping = now + KEEPALIVE
                    if self._quic is not None:
                        self._quic.send_ping(0)
                if self._quic is not None and timer is not None and now >= timer:
                    self._quic.handle_timer(now)
            else:
                if self._quic is None:
                    header = pull_quic_header(Buffer(data=data), host_cid_length=self._config.connection_id_length)
                    self._quic = QuicConnection(
                        configuration=self._config, original_destination_connection_id=header.destination_cid
                    )
                self._quic.receive_datagram(data, _ADDR, now)
                self._progress.set()
                self._progress = trio.Event()
            self._events()
            await self._transmit()

    def _events(self) -> None:
        if self._quic is None:
            return
        while (event := self._quic.next_event()) is not None:
            if isinstance(event, StreamDataReceived):
                if self._stream_id is None:
                    self._stream_id = event.stream_id
                if event.stream_id == self._stream_id and event.data:
                    self._data_send.send_nowait(event.data)
                if event.end_stream:
                    self._end()
            elif isinstance(event, ConnectionTerminated | StreamReset):
                self._end()

    def _end(self) -> None:
        if not self._closed:
            self._closed = True
            self._data_send.close()
            self._progress.set()

    async def _transmit(self) -> None:
        if self._quic is None:
            return
        datagrams = [data for data, _ in self._quic.datagrams_to_send(now=trio.current_time())]
        if datagrams:
            try:
                await self._ice.send_many(datagrams)
            except ConnectionError:
                self._end()

    # --- the stream interface used by the peer transport -------------------

    async def send_all(self, data: bytes) -> None:
        if self._closed or self._quic is None or self._stream_id is None:
            raise trio.BrokenResourceError("the QUIC path is closed")
        self._quic.send_stream_data(self._stream_id, data)
        await self._transmit()
        while not self._closed and self._unacked() > SEND_BUFFER:
            await self._progress.wait()
        if self._closed:
            raise trio.BrokenResourceError("the QUIC path closed while sending")

    def _unacked(self) -> int:
        stream = self._quic._streams.get(self._stream_id) if self._quic is not None else None  # no public counter
        return len(stream.sender._buffer) if stream is not None else 0

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        if not self._buffered:
            try:
                self._buffered = await self._data.receive()
            except trio.EndOfChannel:
                return b""
        data, self._buffered = self._buffered[:max_bytes], self._buffered[max_bytes:]
        return data

    async def _shutdown(self) -> None:
        if self._quic is not None and not self._closed:
            self._quic.close()
            with trio.CancelScope(shield=True):
                await self._transmit()
        self._end()

    async def aclose(self) -> None:
        await self._shutdown()
