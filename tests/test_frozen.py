"""``quick_init``: a frozen dataclass made by its quick ``__init__`` is the
value the generated one makes (equal, hashed alike, frozen), and the classes
it is not made for are refused."""

from __future__ import annotations

import dataclasses
from dataclasses import FrozenInstanceError, InitVar, dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timpy.frozen import quick_init
from timpy.im.writer import Committed
from timpy.store.rows import Appended, InboxItem, InboxPlaced, NewMessage, Written
from timpy.wire.messages import ChatMessage, Delivery, MessageContent, SendResult

QUICK = [ChatMessage, MessageContent, Delivery, SendResult, NewMessage, Appended, InboxItem, InboxPlaced, Written,
         Committed]


def reference(cls: type) -> type:
    """The same fields, made by dataclasses' own ``__init__``."""
    params = cls.__dataclass_params__
    return dataclass(frozen=True, eq=params.eq, slots="__slots__" in cls.__dict__)(
        type(cls.__name__, (), {"__annotations__": dict(cls.__annotations__), **{
            f.name: (field(default_factory=f.default_factory) if f.default_factory is not dataclasses.MISSING
                     else f.default) for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
            or f.default_factory is not dataclasses.MISSING
        }})
    )


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
@given(data=st.data())
def test_a_quick_value_is_the_value_dataclasses_would_make(cls, data):
    assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"  # quick_init's, not dataclasses'
    fields = dataclasses.fields(cls)
    required = [f for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    values = [data.draw(st.one_of(st.integers(), st.binary(max_size=4), st.text(max_size=4)), label=f.name)
              for f in required]
    optional = [f for f in fields if f not in required]
    given_too = data.draw(st.integers(0, len(optional)), label="optional given")
    extra = [data.draw(st.integers(), label=f.name) for f in optional[:given_too]]
    made = cls(*values, *extra)
    ref = reference(cls)(*values, *extra)
    assert [getattr(made, f.name) for f in fields] == [getattr(ref, f.name) for f in fields]
    assert repr(made) == repr(ref).replace(ref.__class__.__qualname__, cls.__qualname__, 1)
    assert made == cls(*values, *extra)
    try:
        hashed = hash(ref)
    except TypeError:  # a field holds a dict: neither is hashable
        with pytest.raises(TypeError):
            hash(made)
    else:
        assert hash(made) == hash(cls(*values, *extra)) == hashed
    assert dataclasses.replace(made) == made
    with pytest.raises(FrozenInstanceError):
        setattr(made, fields[0].name, 1)


def test_default_factories_make_a_new_value_each_time():
    first, second = ChatMessage("c", 1, "i", "a", "b", 0, b"", 0), ChatMessage("c", 1, "i", "a", "b", 0, b"", 0)
    assert first.ext == {} and first.ext is not second.ext


def test_what_quick_init_would_get_wrong_is_refused():
    @dataclass
    class Plain:
        a: int

    @dataclass(frozen=True)
    class Later:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True)
    class WithInitVar:
        a: int
        b: InitVar[int]

    @dataclass(frozen=True, kw_only=True)
    class KeywordOnly:
        a: int

    @dataclass(frozen=True)
    class NotInit:
        a: int
        b: int = field(default=0, init=False)

    for cls in (Plain, Later, WithInitVar, KeywordOnly, NotInit):
        with pytest.raises(TypeError):
            quick_init(cls)
