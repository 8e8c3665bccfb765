import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timpy.errors import Code, ProtocolError
from timpy.wire import jsonmap
from timpy.wire import protocol as wp

i64 = st.integers(-(2**63), 2**63 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
text = st.text(max_size=40)
messages = st.builds(
    wp.Message,
    client_id=text,
    conversation=text,
    sender=text,
    recipient=text,
    kind=i32,
    body=st.binary(max_size=300),
    server_time=i64,
    seq=i64,
    ext=st.dictionaries(text, text, max_size=4),
)
frames = st.one_of(
    st.builds(lambda rid, m: wp.make_frame("send", rid=rid, message=m), i64, messages),
    st.builds(lambda rid, ms, more: wp.make_frame("history_page", rid=rid, conversation="c", messages=ms, more=more),
              i64, st.lists(messages, max_size=3), st.booleans()),
    st.builds(lambda rid, pos, m: wp.make_frame("delivery", rid=rid, pos=pos, message=m), i64, i64, messages),
    st.builds(lambda rid, c, t: wp.make_frame("error", rid=rid, code=c, text=t), i64, i32, text),
    st.builds(lambda rid, n: wp.make_frame("ping", rid=rid, nonce=n), i64, i64),
    st.builds(lambda rid, n, p, d, ns: wp.make_frame("login", rid=rid, name=n, password=p, device=d, no_sync=ns),
              i64, text, text, text, st.booleans()),
)


@given(frames)
def test_binary_round_trip(frame):
    assert wp.decode(wp.encode(frame)) == frame


@given(frames)
def test_json_round_trip(frame):
    assert jsonmap.decode_json(jsonmap.encode_json(frame)) == frame


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_garbage_is_refused_cleanly(data):
    try:
        frame = wp.decode(data)
    except ProtocolError as exc:
        assert exc.code == Code.BAD_FRAME
        return
    # Bytes that happen to decode must still yield a Frame or a clean refusal.
    try:
        wp.operation_of(frame)
    except ProtocolError as exc:
        assert exc.code in (Code.UNKNOWN_OPERATION, Code.BAD_FRAME)


@given(frames, st.data())
def test_mutated_frames_are_refused_cleanly(frame, data):
    raw = bytearray(wp.encode(frame))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        wp.decode(bytes(raw))
    except ProtocolError:
        pass


@given(st.text(max_size=100))
def test_json_garbage_is_refused_cleanly(s):
    try:
        jsonmap.decode_json(s)
    except ProtocolError:
        pass


def test_frame_with_no_operation_is_unknown():
    with pytest.raises(ProtocolError) as e:
        wp.operation_of(wp.thrift.Frame(rid=1))
    assert e.value.code == Code.UNKNOWN_OPERATION


def test_frame_with_two_operations_is_refused():
    f = wp.thrift.Frame(rid=1, ping=wp.thrift.Ping(nonce=1), logout=wp.thrift.Logout())
    with pytest.raises(ProtocolError) as e:
        wp.operation_of(wp.decode(wp.encode(f)))
    assert e.value.code == Code.BAD_FRAME


def test_trailing_bytes_are_refused():
    with pytest.raises(ProtocolError):
        wp.decode(wp.encode(wp.make_frame("ping", nonce=1)) + b"\x00")


def test_json_unknown_operation_and_bad_types():
    with pytest.raises(ProtocolError) as e:
        jsonmap.decode_json('{"rid": 1, "teleport": {}}')
    assert e.value.code == Code.UNKNOWN_OPERATION
    for bad in ('{"rid": "x"}', '{"ping": {"nonce": 1.5}}', '{"send": {"message": {"body": "!!"}}}',
                '{"rid": 99999999999999999999}', "[1]", '{"ping": {"nonce": true}}'):
        with pytest.raises(ProtocolError):
            jsonmap.decode_json(bad)


def test_json_body_is_base64():
    f = wp.make_frame("send", rid=2, message=wp.Message(recipient="bob", body=b"hi"))
    assert '"body":"aGk="' in jsonmap.encode_json(f)


def test_error_codes_match_the_idl():
    idl = wp.IDL_PATH.read_text()
    block = idl[idl.index("enum ErrorCode"):]
    block = block[: block.index("}")]
    pairs = dict(re.findall(r"(\w+) = (\d+)", block))
    assert {k: int(v) for k, v in pairs.items()} == {c.name: int(c) for c in Code}


@pytest.mark.parametrize(
    "data",
    [
        b"\x0f\x00\x01\x0c\x7f\xff\xff\xff",  # unknown field: list of 2**31 structs, 8 bytes
        b"\x0b\x00\x01\x7f\xff\xff\xff",  # string longer than the frame
        b"\x0d\x00\x01\x0b\x0b\x7f\xff\xff\xff",  # map of 2**31 entries
        b"\x0c\x00\x01" * 40 + b"\x00" * 41,  # nested too deeply
        b"\x01\x00\x00",  # unknown type id
    ],
)
def test_hostile_lengths_are_refused_quickly(data):
    with pytest.raises(ProtocolError) as e:
        wp.decode(data)
    assert e.value.code == Code.BAD_FRAME
