"""Fixtures of the store tests."""

from __future__ import annotations

import pytest

from tests.store.backends import BACKENDS, make_engine


@pytest.fixture(params=BACKENDS)
def engine(request, tmp_path):
    """An engine on each backend in turn (SQLite in memory and in a file, and the servers that run)."""
    e = make_engine(request.param, tmp_path)
    yield e
    e.dispose()
