import pytest
from hypothesis import given
from hypothesis import strategies as st

from timpy.cluster import codec
from timpy.cluster.membership import Ack, Ping, PingReq, PushPull, State, Update

text = st.text(max_size=20)
updates = st.builds(Update, text, text, st.integers(0, 2**40), st.sampled_from(list(State)), text)
gossip = st.lists(updates, max_size=5).map(tuple)
messages = st.one_of(
    st.builds(Ping, st.integers(0, 2**40), text, text, gossip),
    st.builds(Ack, st.integers(0, 2**40), text, gossip),
    st.builds(PingReq, st.integers(0, 2**40), text, text, text, gossip),
    st.builds(PushPull, text, gossip, st.booleans()),
)


@given(messages)
def test_round_trip(m):
    assert codec.decode(codec.encode(m)) == m


@given(st.binary(max_size=100))
def test_garbage_is_refused_cleanly(data):
    try:
        codec.decode(data)
    except codec.CodecError:
        pass


def test_unknown_type():
    with pytest.raises(codec.CodecError):
        codec.decode(b"\x91\x09")
