"""Node URLs the client accepts, and the one-line error for the rest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import timpy
from timpy.client.client import SCHEMES, UrlError, parse_url


@pytest.mark.parametrize(("url", "parsed"), [
    ("tcp://127.0.0.1:7070", ("tcp", "127.0.0.1", 7070)),
    ("tcps://chat.example.org:7443", ("tcps", "chat.example.org", 7443)),
    ("ws://127.0.0.1:7071/", ("ws", "127.0.0.1", 7071)),
    ("wss://chat.example.org/", ("wss", "chat.example.org", None)),
    ("tcp://[::1]:7070", ("tcp", "::1", 7070)),
])
def test_accepted_urls(url, parsed):
    assert parse_url(url) == parsed


@pytest.mark.parametrize("url", ["http://127.0.0.1:7070", "127.0.0.1:7070", "localhost", "tcp://127.0.0.1",
                                 "tcp://:7070", "tcps://host:99999", ""])
def test_refused_urls_name_the_accepted_schemes(url):
    with pytest.raises(UrlError) as refused:
        parse_url(url)
    text = str(refused.value)
    assert "\n" not in text and all(f"{scheme}://" in text for scheme in SCHEMES)


@given(st.text(max_size=40))
def test_any_text_is_a_url_or_a_url_error(text):
    try:
        scheme, host, port = parse_url(text)
    except UrlError:
        return
    assert scheme in SCHEMES and host and (port is None or 0 <= port <= 65535)


async def test_connect_checks_every_url_before_connecting():
    with pytest.raises(UrlError):
        async with timpy.connect(["tcp://127.0.0.1:1", "http://example.org"], "a", "b"):
            pass
