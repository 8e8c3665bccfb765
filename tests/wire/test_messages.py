"""The shared message values: each codec gives back what it was given, and
bytes that are not a message content are refused with ValueError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from timpy.wire import protocol as wp
from timpy.wire.messages import (
    Ack,
    ChatMessage,
    MessageContent,
    Presence,
    PresenceList,
    Receipt,
    Roster,
    SendResult,
    Signal,
    StreamData,
    ack_frame,
    ack_of,
    message_from_wire,
    message_to_wire,
    notice_frame,
    notices_of,
    pack_notice,
    pack_send_result,
    unpack_notice,
    unpack_send_result,
)

text = st.text(max_size=20)
ext = st.dictionaries(text, text, max_size=4)
contents = st.builds(MessageContent, text, text, text, st.integers(0, 2**31 - 1), st.binary(max_size=64), ext)
messages = st.builds(
    ChatMessage, text, st.integers(0, 2**62), text, text, text, st.integers(0, 2**31 - 1), st.binary(max_size=64),
    st.integers(0, 2**62), ext,
)
names = st.lists(text, max_size=4)
notices = st.one_of(
    st.builds(Roster, names, names, names, names),
    st.builds(PresenceList, st.lists(st.builds(Presence, text, st.booleans(), text, text, st.integers(0, 2**62)),
                                     max_size=3)),
    st.builds(Receipt, text, st.integers(0, 2**62), st.booleans(), text),
    st.builds(Signal, text, text, st.binary(max_size=32), text, text),
    st.builds(StreamData, text, text, st.binary(max_size=32)),
)


@given(contents)
def test_content_packs_and_unpacks_to_itself(c):
    assert MessageContent.unpack(c.pack()) == c


@given(contents, text, st.integers(0, 2**62), st.integers(0, 2**62))
def test_content_placed_in_a_conversation_is_the_message_readers_see(c, conversation, seq, ms):
    m = c.at(conversation, seq, ms)
    assert (m.conversation, m.seq, m.server_time) == (conversation, seq, ms)
    assert MessageContent.of(m) == c


@pytest.mark.parametrize("raw", [b"", b"\xc1", msgpack.packb([1, "a"]), msgpack.packb({"a": 1}), msgpack.packb(7)])
def test_bytes_that_are_not_a_content_are_refused(raw):
    with pytest.raises(ValueError):
        MessageContent.unpack(raw)


@given(messages, st.booleans())
def test_a_send_result_crosses_between_nodes_unchanged(m, duplicate):
    raw = msgpack.unpackb(msgpack.packb(pack_send_result(SendResult(m, duplicate))), raw=False)
    assert unpack_send_result(m.conversation, raw) == SendResult(m, duplicate)


@given(messages)
def test_a_message_crosses_the_client_protocol_unchanged(m):
    frame = wp.make_frame("delivery", pos=1, message=message_to_wire(m))
    _, body = wp.operation_of(wp.decode(wp.encode(frame)))
    assert message_from_wire(body.message) == m


@given(notices)
def test_a_notice_crosses_between_nodes_unchanged(n):
    raw = msgpack.unpackb(msgpack.packb(pack_notice(n), use_bin_type=True), raw=False)
    assert unpack_notice(raw) == n


@given(notices)
def test_a_notice_reaches_the_client_as_the_same_value(n):
    op, body = wp.operation_of(wp.decode(wp.encode(notice_frame(n))))
    expected = list(n.users) if isinstance(n, PresenceList) else [n]
    assert notices_of(op, body) == expected


@given(messages, st.booleans(), st.integers(1, 2**31 - 1))
def test_an_ack_tells_the_sender_what_was_stored(m, duplicate, rid):
    frame = wp.decode(wp.encode(ack_frame(rid, SendResult(m, duplicate))))
    _, body = wp.operation_of(frame)
    assert frame.rid == rid
    assert ack_of(body) == Ack(m.client_id, m.conversation, m.seq, m.server_time, duplicate)
