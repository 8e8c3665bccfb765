"""Structured-concurrency helpers shared by the layers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@contextmanager
def unwrap_single_error() -> Iterator[None]:
    """Raise a lone exception from a nursery as itself, not as a group.

    The public context managers (``open_node``, ``connect``) run the caller's
    block inside a nursery; without this, ``except RemoteError`` around them
    would never match.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from None
        raise
