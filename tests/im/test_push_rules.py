"""Push rules (pure): pushers, gathering messages into notifications, the Matrix push gateway request and answer."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timpy.errors import Code, RequestError
from timpy.im import push_rules as rules

URL = "https://push.example.org/_matrix/push/v1/notify"
U = b"u" * 16


def pusher(key: str = "k1", device: bytes = b"d1", app: str = "org.example.app", url: str = URL) -> rules.Pusher:
    return rules.Pusher(device, app, key, url, {"format": "event_id_only"}, 1_700_000_000_000)


def test_a_pusher_packs_and_unpacks() -> None:
    p = pusher()
    assert rules.Pusher.unpack(p.pack()) == p


@pytest.mark.parametrize(("app", "key", "url", "data"), [
    ("", "k", URL, {}), ("a" * 65, "k", URL, {}), ("a", "", URL, {}), ("a", "k" * 513, URL, {}),
    ("a", "k", "ftp://push.example.org/_matrix/push/v1/notify", {}), ("a", "k", "https://push.example.org/", {}),
    ("a", "k", URL, {"x": "y" * 2000}),
])
def test_bad_pushers_are_refused(app: str, key: str, url: str, data: dict[str, str]) -> None:
    with pytest.raises(RequestError) as err:
        rules.check_pusher(app, key, url, data)
    assert err.value.code == Code.BAD_REQUEST


def test_only_the_named_gateways_when_some_are_named() -> None:
    rules.check_pusher("a", "k", URL, {}, ("https://push.example.org",))
    rules.check_pusher("a", "k", "HTTPS://Push.Example.org/_matrix/push/v1/notify", {}, ("https://push.example.org",))
    for url in ("http://push.example.org/_matrix/push/v1/notify", "https://push.example.org:8443/_matrix/push/v1/notify",
                "https://169.254.169.254/_matrix/push/v1/notify"):
        with pytest.raises(RequestError) as err:
            rules.check_pusher("a", "k", url, {}, ("https://push.example.org",))
        assert err.value.code == Code.NOT_ALLOWED and "https://push.example.org" in err.value.text


def test_the_same_app_and_key_replace_a_pusher_and_a_limit_holds() -> None:
    one = rules.with_pusher([], pusher("k1"), 2)
    again = rules.with_pusher(one, pusher("k1", device=b"d2"), 2)
    assert [p.device for p in again] == [b"d2"]
    two = rules.with_pusher(again, pusher("k2"), 2)
    with pytest.raises(RequestError) as err:
        rules.with_pusher(two, pusher("k3"), 2)
    assert err.value.code == Code.LIMIT_REACHED
    assert rules.without_pusher(two, "org.example.app", "k1") == [pusher("k2")]


def test_rejected_keys_go_only_for_their_gateway() -> None:
    other = "https://other.example.org/_matrix/push/v1/notify"
    kept = rules.without_rejected([pusher("k1"), pusher("k2"), pusher("k1", url=other)], URL, {"k1"})
    assert kept == [pusher("k2"), pusher("k1", url=other)]


@given(st.lists(st.tuples(st.sampled_from(["k1", "k2"]), st.floats(min_value=0, max_value=100)), max_size=60),
       st.floats(min_value=0, max_value=10))
def test_messages_are_gathered_one_notification_per_window(arrivals: list[tuple[str, float]], window: float) -> None:
    """Against a model: per pusher, a window opens at a message that finds none
    open and closes ``window`` later; every message lands in exactly one."""
    c = rules.Coalescer(window)
    sent: list[tuple[str, int]] = []
    model_open: dict[str, float] = {}
    model_sent: list[tuple[str, int]] = []
    model_count: dict[str, int] = {}
    now = 0.0
    for key, dt in arrivals:
        now += dt
        for k, g in c.take_due(now):
            sent.append((k[2], g.messages))
        for k in sorted(model_open):
            if model_open[k] <= now:
                model_sent.append((k, model_count.pop(k)))
                del model_open[k]
        opened = c.note(U, pusher(key), "conv", 1, "alice", b"hi", now)
        if key not in model_open:
            model_open[key] = now + window
            assert opened == now + window
        else:
            assert opened is None
        model_count[key] = model_count.get(key, 0) + 1
    for k, g in c.take_due(float("inf")):
        sent.append((k[2], g.messages))
    model_sent += sorted(model_count.items())
    assert sorted(sent) == sorted(model_sent)
    assert sum(n for _, n in sent) == len(arrivals)
    assert c.next_due() is None


def test_missed_counts_per_device_until_it_comes_back() -> None:
    c = rules.Coalescer(1.0)
    for _ in range(3):
        c.note(U, pusher(), "conv", 1, "alice", b"", 0.0)
    assert c.missed(U, b"d1") == 3
    c.reset(U, b"d1")
    assert c.missed(U, b"d1") == 0


def test_a_content_free_notification_carries_ids_and_counts_only() -> None:
    g = rules.Gathered(0.0, messages=2, conversation="c0ffee", seq=7, sender="alice", body=b"secret plans")
    n = json.loads(rules.notify_request(pusher(), g, 5, "none"))["notification"]
    assert n == {
        "event_id": "c0ffee:7", "room_id": "c0ffee", "prio": "high", "counts": {"unread": 5},
        "devices": [{"app_id": "org.example.app", "pushkey": "k1", "pushkey_ts": 1_700_000_000,
                     "data": {"format": "event_id_only"}}],
    }
    with_sender = json.loads(rules.notify_request(pusher(), g, 5, "sender"))["notification"]
    assert with_sender["sender"] == "alice" and "content" not in with_sender
    full = json.loads(rules.notify_request(pusher(), g, 5, "full"))["notification"]
    assert full["content"] == {"msgtype": "m.text", "body": "secret plans"}


def test_gateway_answers() -> None:
    assert rules.rejected_pushkeys(200, b'{"rejected": []}') == set()
    assert rules.rejected_pushkeys(200, b'{"rejected": ["k1"]}') == {"k1"}
    assert rules.rejected_pushkeys(200, b"") == set()
    for status, raw in [(500, b""), (429, b'{"rejected": []}'), (200, b"nope"), (200, b'{"rejected": 3}')]:
        with pytest.raises(ValueError):
            rules.rejected_pushkeys(status, raw)
