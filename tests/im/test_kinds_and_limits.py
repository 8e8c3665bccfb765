"""Pure rules: what acting message kinds may do and do, terminal limits,
profile changes."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from timpy.config import Limits
from timpy.errors import Code, RequestError
from timpy.im import kinds
from timpy.im.accounts import apply_profile_changes, check_profile_changes
from timpy.im.routes import Route, over_limit
from timpy.wire.messages import (
    KIND_BURN,
    KIND_BURNED,
    KIND_EDIT,
    KIND_NORMAL,
    KIND_RECALL,
    ChatMessage,
    MessageContent,
    pack_content,
    unpack_content,
)


def msg(sender: str = "ann", kind: int = KIND_NORMAL, at: int = 1_000) -> ChatMessage:
    return ChatMessage("c", 3, "id", sender, "ben", kind, b"text", at, {})


def test_who_may_recall_and_edit_and_when():
    window = 120_000
    kinds.check_acting(KIND_RECALL, "ann", msg(), 2_000, window, False)
    with pytest.raises(RequestError) as late:
        kinds.check_acting(KIND_RECALL, "ann", msg(), 1_000 + window + 1, window, False)
    assert late.value.code == Code.NOT_ALLOWED and "120 s" in late.value.text
    kinds.check_acting(KIND_RECALL, "boss", msg(), 10**9, window, True)  # a group admin, any time
    with pytest.raises(RequestError) as other:
        kinds.check_acting(KIND_RECALL, "ben", msg(), 2_000, window, False)
    assert other.value.code == Code.NOT_ALLOWED
    kinds.check_acting(KIND_EDIT, "ann", msg(), 10**9, window, False)  # edits have no window
    for actor, target, code in [
        ("ben", msg(), Code.NOT_ALLOWED),
        ("ann", msg(kind=KIND_BURN), Code.NOT_ALLOWED),
        ("ann", None, Code.NO_SUCH_MESSAGE),
        ("ann", kinds.deleted_placeholder("c", 3, 1), Code.NO_SUCH_MESSAGE),
        ("ann", msg(kind=KIND_RECALL), Code.BAD_REQUEST),
    ]:
        with pytest.raises(RequestError) as e:
            kinds.check_acting(KIND_EDIT, actor, target, 2_000, window, True)
        assert e.value.code == code
    for ext in ({}, {"target": "x"}, {"target": "0"}, {"target": "-3"}):
        with pytest.raises(RequestError) as e:
            kinds.target_of(KIND_RECALL, ext)
        assert e.value.code == Code.INVALID_MESSAGE


def test_effects_delete_or_replace_the_target():
    original = pack_content("c1", "ann", "ben", KIND_NORMAL, b"typo", {"x": "1"})
    assert kinds.effect_of(original) is None
    assert kinds.effect_of(b"not msgpack at all \xff") is None
    for kind in (KIND_RECALL, KIND_BURNED):
        target, transform = kinds.effect_of(pack_content("c2", "ann", "ben", kind, b"", {"target": "4"}))
        assert target == 4 and transform(original) is None
    target, transform = kinds.effect_of(pack_content("c3", "ann", "ben", KIND_EDIT, b"fixed", {"target": "4", "at": "77"}))
    edited = unpack_content("c", 4, 1, transform(original))
    assert target == 4 and edited.body == b"fixed" and edited.ext == {"x": "1", "edited": "77"}
    assert edited.client_id == "c1" and edited.sender == "ann"  # still the original message


def _routes(kinds_: list[str]) -> dict[bytes, Route]:
    return {bytes([i]): Route("n1", k, float(i)) for i, k in enumerate(kinds_)}


def test_terminal_limits_kick_the_oldest_per_kind_then_overall():
    limits = Limits(max_terminals=3, terminals_per_kind={"mobile": 1})
    assert over_limit(_routes(["mobile"]), b"\x09", "mobile", limits) == [b"\x00"]
    assert over_limit(_routes(["mobile", "desktop"]), b"\x09", "desktop", limits) == []
    assert over_limit(_routes(["web", "desktop", "web"]), b"\x09", "web", limits) == [b"\x00"]
    assert over_limit(_routes(["web"]), b"\x00", "web", Limits(max_terminals=1)) == []  # the same device again
    with pytest.raises(RequestError) as refused:
        over_limit(_routes(["web"]), b"\x09", "web", Limits(max_terminals=1, terminal_overflow="refuse"))
    assert refused.value.code == Code.LIMIT_REACHED


@given(st.lists(st.sampled_from(["mobile", "desktop", "web"]), max_size=12), st.sampled_from(["mobile", "desktop", "web"]),
       st.integers(1, 5), st.integers(1, 3))
def test_after_a_login_no_limit_is_exceeded(existing, kind, total, mobiles):
    limits = Limits(max_terminals=total, terminals_per_kind={"mobile": mobiles})
    devices = _routes(existing)
    kicked = over_limit(devices, b"new", kind, limits)
    left = {d: r for d, r in devices.items() if d not in kicked}
    left[b"new"] = Route("n", kind, 99.0)
    assert len(left) <= total
    if kind == "mobile":
        assert sum(r.kind == "mobile" for r in left.values()) <= mobiles
    # Nothing goes when the login fits, and what goes is the oldest of its kind.
    fits = len(devices) < total and (kind != "mobile" or sum(r.kind == "mobile" for r in devices.values()) < mobiles)
    assert not fits or kicked == []
    for d in kicked:
        assert all(r.since > devices[d].since for k, r in left.items() if k != b"new" and r.kind == devices[d].kind) \
            or any(devices[x].since < devices[d].since for x in kicked)


def test_profile_changes_are_checked_and_applied():
    p = apply_profile_changes({"name": "ann", "created": 1}, {"nickname": "Ann", "team": "blue", "x": ""})
    assert p == {"name": "ann", "created": 1, "nickname": "Ann", "fields": {"team": "blue"}}
    assert apply_profile_changes(p, {"team": ""})["fields"] == {}
    for bad in ({}, {"": "x"}, {"nickname": "n" * 65}, {"avatar": "ftp://x"}, {"k": "v" * 1025}):
        with pytest.raises(RequestError):
            check_profile_changes(bad)
    with pytest.raises(RequestError):
        apply_profile_changes({}, {f"f{i}": "v" for i in range(33)})
    assert msgpack.unpackb(msgpack.packb(p)) == p


@given(
    kind=st.integers(-(2**31), 2**31 - 1),
    ext=st.dictionaries(st.sampled_from(["target", "at", "key", "on"]), st.text(max_size=6), max_size=4),
)
def test_the_quick_kind_agrees_with_the_whole_content(kind, ext):
    """``effect_of`` reads only the kind of most messages (``kind_of``): it
    must be what unpacking the whole content says, and decide nothing else."""
    packed = pack_content("c1", "ann", "ben", kind, b"body", ext)
    assert MessageContent.kind_of(packed) == MessageContent.unpack(packed).kind == kind
    if kind not in kinds.ACTING:
        assert kinds.effect_of(packed) is None


@given(raw=st.one_of(st.binary(max_size=40), st.builds(lambda v: msgpack.packb(v), st.lists(
    st.one_of(st.integers(-5, 5), st.text(max_size=3), st.binary(max_size=3), st.none(),
              st.dictionaries(st.just("target"), st.sampled_from(["4", "x"]), max_size=1)), max_size=8))))
def test_the_quick_kind_decides_what_the_whole_content_decides(raw):
    """On any bytes: where the whole content unpacks, ``kind_of`` is its
    kind or None; and ``effect_of`` finds an effect exactly where reading
    the whole content does."""
    try:
        whole = MessageContent.unpack(raw)
    except ValueError:
        whole = None
    got = MessageContent.kind_of(raw)
    assert whole is None or got is None or got == whole.kind
    effect = kinds.effect_of(raw)
    if whole is None or whole.kind not in kinds.ACTING or not whole.ext.get("target", "").isdigit():
        assert effect is None
    else:
        assert effect is not None and effect[0] == int(whole.ext["target"])
