"""The hand-written decoding of ``send`` frames (``protocol.decode_send``,
``decode``'s fast path) gives exactly what the general decoder gives, or
leaves the frame to it: on generated frames, on the same frames damaged, and
on frames of other operations."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timpy.errors import ProtocolError
from timpy.wire import protocol as wp

i32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
text = st.text(max_size=30)
maybe = st.none() | text

messages = st.builds(
    wp.Message,
    client_id=maybe, conversation=maybe, sender=maybe, recipient=maybe,
    kind=st.none() | i32, body=st.none() | st.binary(max_size=60),
    server_time=st.none() | i64, seq=st.none() | i64,
    ext=st.none() | st.dictionaries(text, text, max_size=4),
)


def general(data: bytes):
    """The general decoder's answer: a frame, or None where it refuses."""
    try:
        return wp.decode_general(data)
    except ProtocolError:
        return None


def send_bytes(rid: int, message) -> bytes:
    return wp.encode(wp.make_frame("send", rid=rid, message=message))


@given(rid=i64, message=messages)
def test_every_send_thriftpy2_writes_is_decoded_here_as_the_general_decoder_does(rid, message):
    data = send_bytes(rid, message)
    fast = wp.decode_send(data)
    assert fast is not None
    assert type(fast) is wp.Frame and fast == general(data)
    assert (fast.rid, fast.send.message) == (rid, message)
    assert wp.operation_of(fast) == ("send", fast.send)
    assert wp.decode(data) == fast


damage = st.one_of(
    st.tuples(st.just("cut"), st.integers(min_value=0, max_value=400)),
    st.tuples(st.just("flip"), st.integers(min_value=0, max_value=400), st.integers(min_value=1, max_value=255)),
    st.tuples(st.just("insert"), st.integers(min_value=0, max_value=400), st.binary(min_size=1, max_size=6)),
    st.tuples(st.just("drop"), st.integers(min_value=0, max_value=400), st.integers(min_value=1, max_value=6)),
)


def damaged(data: bytes, how) -> bytes:
    kind, at = how[0], how[1] % (len(data) + 1)
    if kind == "cut":
        return data[:at]
    if kind == "flip":
        if at == len(data):
            return data
        return data[:at] + bytes([data[at] ^ how[2]]) + data[at + 1:]
    if kind == "insert":
        return data[:at] + how[2] + data[at:]
    return data[:at] + data[at + how[2]:]


@given(rid=i64, message=messages, hows=st.lists(damage, min_size=1, max_size=3))
def test_a_damaged_send_is_decoded_as_the_general_decoder_does_or_left_to_it(rid, message, hows):
    data = send_bytes(rid, message)
    for how in hows:
        data = damaged(data, how)
    fast = wp.decode_send(data)
    slow = general(data)
    if fast is not None:
        assert slow is not None and fast == slow  # never a frame the general decoder would not give
    if slow is None:
        with pytest.raises(ProtocolError):
            wp.decode(data)
    else:
        assert wp.decode(data) == slow


@pytest.mark.parametrize("data", [
    # field 5 (kind) sent as an i64, not the i32 the IDL declares
    b"\x0a\x00\x01" + bytes(8) + b"\x0c\x00\x09\x0c\x00\x01" + b"\x0a\x00\x05" + bytes(8) + b"\x00\x00\x00",
    # a client id that is not UTF-8
    b"\x0a\x00\x01" + bytes(8) + b"\x0c\x00\x09\x0c\x00\x01" + b"\x0b\x00\x01\x00\x00\x00\x02\xff\xfe" + b"\x00\x00\x00",
    # fields out of order (recipient before client id)
    b"\x0a\x00\x01" + bytes(8) + b"\x0c\x00\x09\x0c\x00\x01" + b"\x0b\x00\x04\x00\x00\x00\x01b"
    + b"\x0b\x00\x01\x00\x00\x00\x01a" + b"\x00\x00\x00",
    # an ext map naming one key twice
    b"\x0a\x00\x01" + bytes(8) + b"\x0c\x00\x09\x0c\x00\x01" + b"\x0d\x00\x09\x0b\x0b\x00\x00\x00\x02"
    + b"\x00\x00\x00\x01k\x00\x00\x00\x01a" + b"\x00\x00\x00\x01k\x00\x00\x00\x01b" + b"\x00\x00\x00",
    # a field the IDL does not have
    b"\x0a\x00\x01" + bytes(8) + b"\x0c\x00\x09\x0c\x00\x01" + b"\x08\x00\x63\x00\x00\x00\x01" + b"\x00\x00\x00",
    # bytes after the frame
    send_bytes(1, wp.Message(client_id="a")) + b"\x00",
])
def test_what_is_not_the_usual_layout_is_left_to_the_general_decoder(data):
    assert wp.decode_send(data) is None
    slow = general(data)
    if slow is None:
        with pytest.raises(ProtocolError):
            wp.decode(data)
    else:
        assert wp.decode(data) == slow


def test_other_operations_are_left_to_the_general_decoder():
    for frame in (wp.make_frame("ping", rid=4, nonce=9), wp.make_frame("sync", rid=5),
                  wp.make_frame("login", rid=6, name="alice", password="pw", device="d")):
        data = wp.encode(frame)
        assert wp.decode_send(data) is None
        assert wp.decode(data) == frame


def test_a_send_with_a_second_operation_is_refused_as_before():
    frame = wp.make_frame("send", rid=1, message=wp.Message(client_id="a"))
    frame.ping = wp.thrift.Ping(nonce=1)
    data = wp.encode(frame)
    assert wp.decode_send(data) is None
    with pytest.raises(ProtocolError, match="2 operations"):
        wp.operation_of(wp.decode(data))
