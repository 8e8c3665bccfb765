"""Webhook rules (pure): signatures, retry delays, event ids, check answers."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timpy.im import webhook_rules as rules

SECRET = "a-secret-of-some-length"


@given(st.binary(max_size=2000), st.integers(min_value=0, max_value=2**40))
def test_a_signature_verifies_and_any_change_breaks_it(body: bytes, ts: int) -> None:
    sig = rules.signature(SECRET, ts, body)
    assert sig.startswith("v1=") and len(sig) == 3 + 64
    assert rules.verify(SECRET, str(ts), body, sig, now=ts)
    assert not rules.verify(SECRET + "x", str(ts), body, sig, now=ts)
    assert not rules.verify(SECRET, str(ts + 1), body, sig, now=ts)
    assert not rules.verify(SECRET, str(ts), body + b"x", sig, now=ts)


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), b"1700000000.{}", hashlib.sha256).hexdigest()
    assert rules.signature(SECRET, 1700000000, b"{}") == f"v1={expected}"


def test_an_old_or_malformed_timestamp_is_refused() -> None:
    sig = rules.signature(SECRET, 1000, b"x")
    assert rules.verify(SECRET, "1000", b"x", sig, now=1000 + rules.DEFAULT_TOLERANCE)
    assert not rules.verify(SECRET, "1000", b"x", sig, now=1001 + rules.DEFAULT_TOLERANCE)
    assert not rules.verify(SECRET, "soon", b"x", sig, now=1000)
    assert not rules.verify(SECRET, "1000", b"x", "", now=1000)


def test_headers_name_event_id_timestamp_and_signature() -> None:
    h = rules.headers(SECRET, "message.stored", "abc", 1234, b"{}")
    assert h[rules.EVENT_HEADER] == "message.stored" and h[rules.EVENT_ID_HEADER] == "abc"
    assert h[rules.TIMESTAMP_HEADER] == "1234" and h[rules.SIGNATURE_HEADER] == rules.signature(SECRET, 1234, b"{}")


@given(st.integers(min_value=1, max_value=200), st.floats(min_value=0.01, max_value=10),
       st.floats(min_value=0.01, max_value=1000), st.floats(min_value=0, max_value=2))
def test_retry_delays_grow_and_stay_bounded(attempts: int, base: float, cap: float, jitter: float) -> None:
    d = rules.retry_delay(attempts, base, cap, jitter)
    assert 0 < d <= cap
    assert d >= min(cap, base * 2 ** (attempts - 1)) * 0.5
    assert rules.retry_delay(attempts + 1, base, cap, 1.0) >= rules.retry_delay(attempts, base, cap, 1.0)


def test_retry_delays_double() -> None:
    assert [rules.retry_delay(n, 1.0, 10.0) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0]


def test_event_ids_are_stable_and_tell_events_apart() -> None:
    assert rules.event_id("message.stored", "c", 1) == rules.event_id("message.stored", "c", 1)
    assert rules.event_id("message.stored", "c", 1) != rules.event_id("message.stored", "c", 2)
    # parts are length-prefixed: no two ways to split the same bytes
    assert rules.event_id("ab", "c") != rules.event_id("a", "bc")
    assert len(rules.event_id(b"x")) == 32


def test_an_envelope_is_json_with_id_type_time_node_and_data() -> None:
    body = json.loads(rules.envelope("user.login", "e1", 5, "n1", {"user": "alice"}))
    assert body == {"id": "e1", "type": "user.login", "time": 5, "node": "n1", "data": {"user": "alice"}}


def test_bodies_are_text_when_they_can_be_and_base64_always() -> None:
    assert rules.body_fields("héllo".encode()) == {"body": "héllo", "body_base64": "aMOpbGxv"}
    assert rules.body_fields(b"\xff") == {"body_base64": "/w=="}


@pytest.mark.parametrize(("status", "raw", "verdict"), [
    (200, b"", rules.ALLOW),
    (204, b"  ", rules.ALLOW),
    (200, b'{"action": "allow"}', rules.ALLOW),
    (200, b'{}', rules.ALLOW),
    (200, b'{"action": "deny", "reason": "no ads here"}', rules.Verdict("deny", reason="no ads here")),
    (200, b'{"action": "deny"}', rules.Verdict("deny", reason="the message was refused")),
    (200, b'{"action": "rewrite", "body": "hi ***"}', rules.Verdict("rewrite", body=b"hi ***")),
    (200, b'{"action": "rewrite", "body_base64": "/w=="}', rules.Verdict("rewrite", body=b"\xff")),
])
def test_check_answers(status: int, raw: bytes, verdict: rules.Verdict) -> None:
    assert rules.parse_verdict(status, raw) == verdict


@pytest.mark.parametrize(("status", "raw"), [
    (500, b""), (302, b""), (200, b"not json"), (200, b"[]"), (200, b'{"action": "shrug"}'),
    (200, b'{"action": "rewrite"}'), (200, b'{"action": "rewrite", "body_base64": "%%%"}'),
])
def test_answers_that_are_not_answers_fail(status: int, raw: bytes) -> None:
    with pytest.raises(ValueError):
        rules.parse_verdict(status, raw)


def test_a_long_reason_is_cut() -> None:
    v = rules.parse_verdict(200, json.dumps({"action": "deny", "reason": "x" * 1000}).encode())
    assert v.reason == "x" * rules.MAX_REASON
