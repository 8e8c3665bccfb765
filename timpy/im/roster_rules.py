"""The rules of rosters (friends and blocks), as pure functions over an
immutable ``Relations`` value between users.

Friendship is mutual and starts with a request the other side accepts (two
crossing requests make friends at once). A block is one-sided: the blocked
user's messages and requests to the blocker are refused with ``BLOCKED``; it
also ends any friendship and pending request between the two. Every
operation returns the new value or raises ``RequestError``; a refused one
changes nothing. Storage keeps each user's side (``timpy.im.roster``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from timpy.errors import Code, RequestError


def _pair(a: str, b: str) -> frozenset[str]:
    return frozenset((a, b))


@dataclass(frozen=True)
class Relations:
    friends: frozenset[frozenset[str]] = frozenset()  # unordered pairs
    pending: frozenset[tuple[str, str]] = frozenset()  # (from, to) requests waiting for an answer
    blocks: frozenset[tuple[str, str]] = frozenset()  # (blocker, blocked)

    def are_friends(self, a: str, b: str) -> bool:
        return _pair(a, b) in self.friends

    def blocked(self, blocker: str, user: str) -> bool:
        return (blocker, user) in self.blocks

    def friends_of(self, user: str) -> set[str]:
        return {next(iter(p - {user})) for p in self.friends if user in p}


def _distinct(a: str, b: str) -> None:
    if a == b:
        raise RequestError("that is you", Code.BAD_REQUEST)


def check_reach(r: Relations, sender: str, recipient: str) -> None:
    """May ``sender`` message (or ask) ``recipient``? Raises if blocked."""
    if r.blocked(recipient, sender):
        raise RequestError("this user does not accept your messages", Code.BLOCKED)


def request(r: Relations, a: str, b: str) -> Relations:
    _distinct(a, b)
    if r.blocked(a, b):
        raise RequestError(f"you blocked {b}: unblock first", Code.NOT_ALLOWED)
    check_reach(r, a, b)
    if r.are_friends(a, b) or (a, b) in r.pending:
        return r
    if (b, a) in r.pending:  # crossing requests: friends now
        return replace(r, friends=r.friends | {_pair(a, b)}, pending=r.pending - {(b, a)})
    return replace(r, pending=r.pending | {(a, b)})


def accept(r: Relations, b: str, a: str) -> Relations:
    """``b`` accepts ``a``'s request."""
    if (a, b) not in r.pending:
        raise RequestError(f"{a} has not asked to be your friend", Code.BAD_REQUEST)
    return replace(r, friends=r.friends | {_pair(a, b)}, pending=r.pending - {(a, b)})


def reject(r: Relations, b: str, a: str) -> Relations:
    if (a, b) not in r.pending:
        raise RequestError(f"{a} has not asked to be your friend", Code.BAD_REQUEST)
    return replace(r, pending=r.pending - {(a, b)})


def remove(r: Relations, a: str, b: str) -> Relations:
    if not r.are_friends(a, b):
        raise RequestError(f"{b} is not your friend", Code.BAD_REQUEST)
    return replace(r, friends=r.friends - {_pair(a, b)})


def block(r: Relations, a: str, b: str) -> Relations:
    _distinct(a, b)
    return replace(
        r,
        friends=r.friends - {_pair(a, b)},
        pending=r.pending - {(a, b), (b, a)},
        blocks=r.blocks | {(a, b)},
    )


def unblock(r: Relations, a: str, b: str) -> Relations:
    if not r.blocked(a, b):
        raise RequestError(f"{b} is not blocked", Code.BAD_REQUEST)
    return replace(r, blocks=r.blocks - {(a, b)})
