import pytest
from hypothesis import given
from hypothesis import strategies as st

from timpy.errors import Code, ProtocolError
from timpy.wire.framing import FrameDecoder, frame_bytes


@given(st.lists(st.binary(max_size=100), max_size=10), st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_any_split_gives_the_same_frames(bodies, cuts):
    stream = b"".join(frame_bytes(b) for b in bodies)
    dec, out, i, k = FrameDecoder(1000), [], 0, 0
    while i < len(stream):
        n = cuts[k % len(cuts)]
        out += dec.feed(stream[i : i + n])
        i, k = i + n, k + 1
    assert out == bodies
    assert dec.buffered == 0


def test_oversize_is_refused_before_the_body_arrives():
    dec = FrameDecoder(100)
    with pytest.raises(ProtocolError) as e:
        dec.feed((101).to_bytes(4, "big"))  # only the prefix
    assert e.value.code == Code.FRAME_TOO_LARGE


def test_limit_is_inclusive():
    assert FrameDecoder(3).feed(frame_bytes(b"abc")) == [b"abc"]
