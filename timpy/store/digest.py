"""Content digests for repair between replicas (pure: no I/O).

A key (a conversation or a user) holds numbered slots: a conversation's
messages by sequence number, a user's inbox by position. Each slot's value
is summed up by a short hash of what makes it that value (``message_hash``,
``inbox_hash``); the key's small versioned state (members, group and record
versions, account version, read marks) by one ``meta`` hash.

Two replicas compare a key in three steps, each only where the one before
found a difference, as a two-level Merkle tree:

1. the key's root (``root``: the meta hash and every bucket's digest);
2. the bucket digests (``buckets``: slots ``b*BUCKET .. b*BUCKET+BUCKET-1``);
3. the slot hashes of the differing buckets (``diff_slots``), which say
   exactly which slots each side lacks and which hold different values.

A slot's value is ``item hash (8 bytes) + state (1 byte) + epoch (8 bytes)``:
which message, whether it was recalled or burned, and the ring epoch the row
was numbered under. One message in two states (recalled or burned on one
replica, not yet on the other) is no conflict: the later state wins. A slot
that holds two different messages on two replicas holds at most one
acknowledged one, and that one has the higher epoch (docs/consistency.md,
"Epochs on rows"): **the higher epoch wins**, and between equal epochs (rows
from before the epochs were stamped, or a database edited by hand) the lowest
item hash (``winner``). The values of a slot are thus totally ordered, which
makes each slot a semilattice (the merge is commutative, associative and
idempotent), so repairs running at once on different nodes, in any order, end
in the same copies and never undo each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

BUCKET = 128  # slots per bucket
HASH_SIZE = 8


def _h(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=HASH_SIZE)
    for part in parts:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def message_hash(dedup: bytes, created_ms: int, deleted: bool, epoch: int = 0) -> bytes:
    """Which message a conversation slot holds (its sender's dedup index and
    its time), then its state: one more byte, 1 once it was recalled or
    burned, then the epoch it was numbered under. The sealed bytes are left
    out: they differ between replicas even for one message, as each seals
    with its own nonce."""
    return (
        _h(bytes(dedup), int(created_ms).to_bytes(8, "big", signed=True))
        + (b"\x01" if deleted else b"\x00")
        + int(epoch).to_bytes(8, "big")
    )


def inbox_hash(conv_id: bytes, seq: int, dedup: bytes = b"", epoch: int = 0) -> bytes:
    """Which message an inbox slot points to ((conversation, seq) and the
    dedup index of the message row held there), then the higher of the
    entry's and that row's epochs."""
    return _h(bytes(conv_id), int(seq).to_bytes(8, "big", signed=True), bytes(dedup)) + b"\x00" + int(epoch).to_bytes(8, "big")


def chunk_hash(index: int) -> bytes:
    """An attachment's chunk slot: held or not. A chunk's content is fixed
    by the attachment's SHA-256 once its upload finished, and its sealed
    bytes differ between replicas (each seals with its own nonce), so the
    value says only that the slot is held."""
    return _h(b"chunk", int(index).to_bytes(8, "big", signed=True)) + b"\x00" + bytes(8)


def epoch_of(value: bytes) -> int:
    """The epoch stamp a slot value carries."""
    return int.from_bytes(value[HASH_SIZE + 1 : HASH_SIZE + 9], "big")


STAMP_CLOCK_BITS = 40  # ms of the writer's clock: 35 years from STAMP_CLOCK_BASE_MS
STAMP_CLOCK_BASE_MS = 1_700_000_000_000  # November 2023


def row_stamp(epoch: int, now_ms: int) -> int:
    """What a new message row or inbox entry carries in its ``epoch`` column:
    the ring epoch of the writer's lease, then (below it) the writer's clock.
    Rows compare by epoch first; within one epoch a key has one owner, so its
    clock orders its writes: a slot it numbers again after undoing a write
    (never acknowledged) carries a higher stamp than the undone row."""
    clock = max(0, int(now_ms) - STAMP_CLOCK_BASE_MS) & ((1 << STAMP_CLOCK_BITS) - 1)
    return (int(epoch) << STAMP_CLOCK_BITS) | clock


def stamp_epoch(stamp: int) -> int:
    """The ring epoch part of a row's stamp."""
    return int(stamp) >> STAMP_CLOCK_BITS


def meta_hash(items: Iterable[tuple[object, ...]]) -> bytes:
    """A key's versioned state (any tuples of bytes, str and int), order-free."""
    encoded = sorted(repr(tuple(bytes(x) if isinstance(x, (bytes, bytearray, memoryview)) else x for x in item)).encode()
                     for item in items)
    return _h(*encoded)


def buckets(slots: Mapping[int, bytes]) -> dict[int, bytes]:
    """The digest of every non-empty bucket of a key's slots."""
    grouped: dict[int, list[tuple[int, bytes]]] = {}
    for index, value in slots.items():
        grouped.setdefault(index // BUCKET, []).append((index, value))
    return {
        b: _h(*(i.to_bytes(8, "big", signed=True) + v for i, v in sorted(rows)))
        for b, rows in grouped.items()
    }


def root(meta: bytes, bucket_digests: Mapping[int, bytes]) -> bytes:
    """One digest of a key: equal on two replicas exactly when meta and every bucket are."""
    return _h(meta, *(b.to_bytes(8, "big", signed=True) + d for b, d in sorted(bucket_digests.items())))


def diff_buckets(mine: Mapping[int, bytes], theirs: Mapping[int, bytes]) -> list[int]:
    """The buckets whose slots differ (present on one side only, or with other digests)."""
    return sorted(b for b in set(mine) | set(theirs) if mine.get(b) != theirs.get(b))


def same_item(a: bytes, b: bytes) -> bool:
    """Do two values of a slot name the same item (maybe in different states)?"""
    return a[:HASH_SIZE] == b[:HASH_SIZE]


def winner(a: bytes, b: bytes) -> bytes:
    """Of two values of one slot, the one that stays: for one item the later
    state (a state only moves forward: deleted stays deleted), then the
    higher epoch; for two items the higher epoch, then the lowest hash."""
    if same_item(a, b):
        return max(a, b)  # the state byte comes first, then the epoch
    return max(a, b, key=lambda v: (epoch_of(v), -int.from_bytes(v[:HASH_SIZE], "big")))


@dataclass
class SlotDiff:
    """What to do about one key after comparing its slots with a replica's."""

    send: list[int] = field(default_factory=list)  # slots they lack, or where this side's value wins
    fetch: list[int] = field(default_factory=list)  # slots this side lacks, or where theirs wins
    conflicts: list[int] = field(default_factory=list)  # slots held with different items on the two sides

    def __bool__(self) -> bool:
        return bool(self.send or self.fetch)


def diff_slots(mine: Mapping[int, bytes], theirs: Mapping[int, bytes]) -> SlotDiff:
    """Compare two sides' slots (of the same buckets): which to send, which
    to fetch, which were in conflict (each of those is in send or fetch too,
    by ``winner``)."""
    d = SlotDiff()
    for index in sorted(set(mine) | set(theirs)):
        a, b = mine.get(index), theirs.get(index)
        if a == b:
            continue
        if b is None:
            d.send.append(index)
        elif a is None:
            d.fetch.append(index)
        else:
            if not same_item(a, b):
                d.conflicts.append(index)
            (d.send if winner(a, b) == a else d.fetch).append(index)
    return d


def in_buckets(slots: Mapping[int, bytes], wanted: Iterable[int]) -> dict[int, bytes]:
    """The slots that fall in the given buckets."""
    keep = set(wanted)
    return {i: v for i, v in slots.items() if i // BUCKET in keep}
