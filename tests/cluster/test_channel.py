import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from timpy.cluster.channel import ChannelError, Initiator, KeyMismatch, Responder
from timpy.crypto.keys import ClusterKeys

KEYS = ClusterKeys(bytes(range(32)))


def pair(initiator_keys=KEYS, responder_keys=KEYS):
    a_id, b_id = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    a, b = Initiator(initiator_keys, a_id), Responder(responder_keys, b_id)
    welcome, b_chan, a_seen_by_b = b.accept(a.start())
    a_chan, b_seen_by_a = a.finish(welcome)
    assert a_seen_by_b.verify_key == bytes(a_id.verify_key)
    assert b_seen_by_a.verify_key == bytes(b_id.verify_key)
    return a_chan, b_chan


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_frames_round_trip_both_ways(messages):
    a, b = pair()
    for m in messages:
        assert b.open(a.seal(m)) == m
        assert a.open(b.seal(m)) == m


def test_wrong_cluster_key_is_refused_on_both_sides():
    other = ClusterKeys(bytes(32))
    a = Initiator(other, nacl.signing.SigningKey.generate())
    b = Responder(KEYS, nacl.signing.SigningKey.generate())
    with pytest.raises(KeyMismatch, match="cluster key"):
        b.accept(a.start())  # the responder refuses the stranger
    good = Initiator(KEYS, nacl.signing.SigningKey.generate())
    impostor = Responder(other, nacl.signing.SigningKey.generate())
    welcome, _, _ = impostor_accepts_anything(impostor, good.start())
    with pytest.raises(KeyMismatch):
        good.finish(welcome)  # and the initiator refuses an impostor responder


def impostor_accepts_anything(responder, hello):
    # An impostor skips its own check and answers anyway.
    responder._check = lambda msg, transcript: (msg[2], None, transcript)
    return responder.accept(hello)


def test_a_stolen_hello_cannot_be_rebound_to_another_identity():
    a = Initiator(KEYS, nacl.signing.SigningKey.generate())
    hello = bytearray(a.start())
    # swap the identity key bytes for another node's: the signature no longer verifies
    other = bytes(nacl.signing.SigningKey.generate().verify_key)
    ident_at = hello.find(bytes(a._identity.verify_key))
    hello[ident_at : ident_at + 32] = other
    with pytest.raises(ChannelError):
        Responder(KEYS, nacl.signing.SigningKey.generate()).accept(bytes(hello))


def test_replayed_and_forged_frames_are_dropped():
    a, b = pair()
    f1, f2 = a.seal(b"one"), a.seal(b"two")
    assert b.open(f1) == b"one"
    with pytest.raises(ChannelError, match="replayed"):
        b.open(f1)
    forged = bytearray(f2)
    forged[-1] ^= 1
    with pytest.raises(ChannelError, match="forged"):
        b.open(bytes(forged))
    assert b.open(f2) == b"two"  # the forgery did not burn the real frame's counter


def test_out_of_order_within_the_window_is_accepted_once():
    a, b = pair()
    frames = [a.seal(bytes([i])) for i in range(70)]
    assert b.open(frames[5]) == b"\x05"
    assert b.open(frames[2]) == b"\x02"
    with pytest.raises(ChannelError):
        b.open(frames[2])
    assert b.open(frames[69]) == b"\x45"
    with pytest.raises(ChannelError):
        b.open(frames[3])  # now older than the 64-frame window


def test_sessions_have_distinct_keys():
    a1, _ = pair()
    a2, b2 = pair()
    with pytest.raises(ChannelError):
        b2.open(a1.seal(b"cross-session"))


@given(st.binary(max_size=200))
def test_garbage_handshakes_are_refused_cleanly(data):
    with pytest.raises(ChannelError):
        Responder(KEYS, nacl.signing.SigningKey.generate()).accept(data)
