"""The hand-built ack frame (``timpy.wire.fast``) is byte for byte what
thriftpy2 encodes for the same values, on generated values."""

from hypothesis import given
from hypothesis import strategies as st

from timpy.wire import protocol as wp
from timpy.wire.fast import ack_bytes
from timpy.wire.messages import ChatMessage, SendResult, ack_frame

i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
text = st.text(max_size=40)


@given(rid=i64, client_id=text, conversation=text, seq=i64, server_time=i64, duplicate=st.booleans())
def test_ack_bytes_are_thriftpy2s(rid, client_id, conversation, seq, server_time, duplicate):
    m = ChatMessage(conversation, seq, client_id, "alice", "bob", 0, b"body", server_time, {"k": "v"})
    result = SendResult(m, duplicate)
    assert ack_bytes(rid, result) == wp.encode(ack_frame(rid, result))
    decoded = wp.decode(ack_bytes(rid, result))
    assert (decoded.rid, decoded.ack.client_id, decoded.ack.conversation, decoded.ack.seq) == (
        rid, client_id, conversation, seq)
    assert (decoded.ack.server_time, decoded.ack.duplicate) == (server_time, duplicate)
