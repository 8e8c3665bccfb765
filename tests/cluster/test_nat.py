"""NAT traversal: the pure parts (STUN answers, control frames, paths) and a
relayed channel between real TCP transports on loopback. ICE itself runs in
network namespaces: tests/e2e/test_nat.py."""

from __future__ import annotations

import msgpack
import nacl.signing
import trio
from aioice import stun
from hypothesis import given
from hypothesis import strategies as st

from timpy.cluster import nat
from timpy.cluster.transport import NatSettings, TcpPeerTransport
from timpy.crypto.keys import ClusterKeys


def test_stun_reply_tells_the_address_the_request_came_from():
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    data = nat.stun_reply(bytes(request), ("198.18.0.7", 40001))
    assert data is not None
    reply = stun.parse_message(data)
    assert reply.message_class == stun.Class.RESPONSE and reply.transaction_id == request.transaction_id
    assert reply.attributes["XOR-MAPPED-ADDRESS"] == ("198.18.0.7", 40001)


def test_stun_reply_ignores_what_is_not_a_binding_request():
    response = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE)
    assert nat.stun_reply(bytes(response), ("198.18.0.7", 1)) is None
    assert nat.stun_reply(b"\x16\x03\x01 not stun", ("198.18.0.7", 1)) is None
    assert nat.stun_reply(b"", ("198.18.0.7", 1)) is None


@given(st.binary(max_size=200))
def test_control_frames_parse_or_are_refused_cleanly(data):
    try:
        msg = nat.parse_control(nat.CONTROL + data)
    except nat.ControlError:
        return
    assert msg[0] in (nat.FWD, nat.NOFWD, nat.ICE_OFFER, nat.ICE_ANSWER, nat.ICE_FAIL)


@given(st.lists(st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=5), st.binary(max_size=5)), max_size=6))
def test_control_frames_of_the_wrong_shape_are_refused(items):
    try:
        msg = nat.parse_control(nat.CONTROL + msgpack.packb(items, use_bin_type=True))
    except nat.ControlError:
        return
    assert msg == items


def test_control_frames_round_trip():
    fwd = nat.control(nat.FWD, "198.19.1.2:7000", "198.19.2.2:7000", 5, b"sealed")
    assert fwd[:1] == nat.CONTROL
    assert nat.parse_control(fwd) == [nat.FWD, "198.19.1.2:7000", "198.19.2.2:7000", 5, b"sealed"]
    offer = nat.control(nat.ICE_OFFER, 1, "ufrag", "pwd", ["candidate:1 1 udp 1 198.18.0.2 5000 typ host"])
    assert nat.parse_control(offer)[2:4] == ["ufrag", "pwd"]


def test_paths_rank_and_describe_themselves():
    tcp, ice, relay = nat.Path("tcp"), nat.Path("ice", local="host", remote="srflx"), nat.Path("relay", via="a:1")
    assert tcp.rank > ice.rank > relay.rank
    assert tcp.describe() == "direct TCP"
    assert ice.describe() == "ICE host ↔ srflx"
    assert relay.describe({"a:1": "node-a"}) == "relayed via node-a"
    assert nat.Path("tcp", inbound=True).as_dict()["text"] == "direct TCP (inbound)"


def _transport(keys: ClusterKeys, advertise: str | None = None) -> TcpPeerTransport:
    return TcpPeerTransport(
        keys, nacl.signing.SigningKey.generate(), listen="127.0.0.1:0", advertise=advertise,
        nat=NatSettings(ice=False),  # ICE needs real interfaces: tests/e2e/test_nat.py
    )


async def _receive(transport: TcpPeerTransport, want: bytes) -> None:
    with trio.fail_after(15):
        async for payload in transport.incoming:
            if payload == want:
                return


async def test_a_peer_nobody_can_dial_is_reached_through_a_relay_that_sees_only_ciphertext():
    keys = ClusterKeys(b"k" * 32)
    relay, a = _transport(keys), _transport(keys)
    hidden = _transport(keys, advertise="127.0.0.1:1")  # what it advertises cannot be dialled
    forwarded: list[bytes] = []
    async with trio.open_nursery() as nursery:
        for t in (relay, a, hidden):
            await nursery.start(t.run)
        relay_send = relay.send

        def watching_send(address: str, payload: bytes) -> None:
            if payload[:1] == nat.CONTROL:
                forwarded.append(payload)
            relay_send(address, payload)

        relay.send = watching_send  # what the relay passes on, to check it is sealed
        hidden.send(relay.address, b"hidden joins")  # it dials out, as a node behind NAT does
        a.send(relay.address, b"a joins")
        await _receive(relay, b"a joins")
        with trio.fail_after(15):
            while not relay.connected_peers().get("127.0.0.1:1"):
                await trio.sleep(0.05)

        a.send("127.0.0.1:1", b"secret for hidden")  # TCP is refused: the relay carries it
        await _receive(hidden, b"secret for hidden")
        hidden.send(a.address, b"secret for a")  # the answer goes back the same way
        await _receive(a, b"secret for a")

        assert a.paths()["127.0.0.1:1"] == nat.Path("relay", via=relay.address)
        assert hidden.paths()[a.address].kind == "relay" and hidden.paths()[a.address].via == relay.address
        assert relay.paths()["127.0.0.1:1"].kind == "tcp" and relay.stats.relayed > 0
        assert forwarded and not any(b"secret" in f for f in forwarded)
        nursery.cancel_scope.cancel()


async def test_a_relay_refuses_to_forward_for_a_peer_it_has_no_channel_to():
    keys = ClusterKeys(b"k" * 32)
    relay, a = _transport(keys), _transport(keys)
    async with trio.open_nursery() as nursery:
        for t in (relay, a):
            await nursery.start(t.run)
        a.send(relay.address, b"a joins")
        await _receive(relay, b"a joins")
        a.send("127.0.0.1:1", b"to nobody")  # no TCP, and the relay knows no such peer
        with trio.fail_after(15):
            while "127.0.0.1:1" in a._peers:
                await trio.sleep(0.05)
        assert "127.0.0.1:1" not in a.paths() and a.stats.dropped == 0
        nursery.cancel_scope.cancel()
