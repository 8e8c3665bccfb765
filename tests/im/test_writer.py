"""The Writer against an in-memory store that keeps the repository's contract
for ``write_batch`` (numbering per conversation, inbox positions per user,
duplicates by (conversation, dedup), all or nothing): checks refuse single
sends, listeners see each commit once and in order, numbering has no gaps,
and a failing listener loses no commit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from timpy.config import Limits
from timpy.crypto.blind import BlindIndexer
from timpy.errors import Code, RequestError, TimpyError
from timpy.im.peers import Peers
from timpy.im.replication import Replicator
from timpy.im.writer import Append, Committed, Writer
from timpy.store.rows import Appended, InboxItem, InboxPlaced, NewMessage, Written


class MemoryRepository:
    """What the writer uses of the repository, in memory."""

    def __init__(self) -> None:
        self.heads: dict[bytes, int] = {}
        self.messages: dict[tuple[bytes, int], NewMessage] = {}
        self.by_dedup: dict[tuple[bytes, bytes], tuple[int, int, bytes]] = {}
        self.inbox: dict[bytes, list[tuple[bytes, int]]] = {}
        self.cursors: dict[tuple[bytes, bytes], int] = {}
        self.batches: list[int] = []  # sizes of the batches written
        self.stamps: list[int] = []  # the stamp each batch's rows carry
        self.fail_next: TimpyError | None = None

    def write_batch(
        self, batch: Sequence[NewMessage], inbox_items: Sequence[InboxItem] = (),
        cursors: dict[tuple[bytes, bytes], int] | None = None, local_users: frozenset[bytes] | None = None,
        epoch: int = 0,
    ) -> Written:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        heads, messages, by_dedup = dict(self.heads), dict(self.messages), dict(self.by_dedup)
        inbox = {u: list(e) for u, e in self.inbox.items()}
        appended, placed = [], []
        for n in batch:
            if b"ghost" in n.members:
                raise RequestError("no such user", Code.NO_SUCH_USER)  # the whole transaction fails
            first = by_dedup.get((n.conv_id, n.dedup))
            if first is not None:
                seq, ms, content = first
                appended.append(Appended(seq, ms, True, content, {}))
                continue
            seq = heads[n.conv_id] = heads.get(n.conv_id, 0) + 1
            messages[(n.conv_id, seq)] = n
            by_dedup[(n.conv_id, n.dedup)] = (seq, n.created_ms, n.content)
            positions = {}
            for user in dict.fromkeys(n.members):
                if local_users is None or user in local_users:
                    entries = inbox.setdefault(user, [])
                    entries.append((n.conv_id, seq))
                    positions[user] = len(entries)
            appended.append(Appended(seq, n.created_ms, False, n.content, positions, n.content))
        for it in inbox_items:
            entries = inbox.setdefault(it.user_id, [])
            if (it.conv_id, it.seq) in entries:
                placed.append(InboxPlaced(entries.index((it.conv_id, it.seq)) + 1, False))
            else:
                entries.append((it.conv_id, it.seq))
                placed.append(InboxPlaced(len(entries), True))
        self.heads, self.messages, self.by_dedup, self.inbox = heads, messages, by_dedup, inbox
        for key, pos in (cursors or {}).items():
            self.cursors[key] = max(pos, self.cursors.get(key, 0))
        self.batches.append(len(batch))
        self.stamps.append(epoch)
        return Written(appended, placed)

    def open_sealed_message(self, conv_id: bytes, seq: int, sealed: bytes) -> bytes:
        return sealed  # this store seals nothing


class MemoryStore:
    def __init__(self) -> None:
        self.repo = MemoryRepository()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        await trio.lowlevel.checkpoint()  # a real store switches tasks here too
        return fn(*args)


def make_writer(**kw: Any) -> tuple[Writer, MemoryStore]:
    store = MemoryStore()
    peers = Peers.standalone("n1")
    writer = Writer(
        store, peers, Replicator(store, peers), BlindIndexer(bytes(32)), Limits, lambda: 1_000, **kw  # type: ignore[arg-type]
    )
    return writer, store


def send(writer: Writer, conv: bytes, text: str, sender: str = "ann", to: str = "ben") -> Append:
    members = (b"ghost",) if to == "ghost" else (sender.encode(), to.encode())
    new, content = writer.prepare(sender.encode(), sender, conv, members, to, text, 0, text.encode(), {})
    append = Append(new, content, conv.hex())
    writer.submit(append)
    return append


class Refuse:
    """A check that refuses the sends whose body says so."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, appends: Sequence[Append]) -> Mapping[Append, TimpyError]:
        self.seen += [a.content.client_id for a in appends]
        return {a: RequestError("refused by the check", Code.BLOCKED) for a in appends if a.content.body.startswith(b"no")}


async def run_until_settled(writer: Writer, appends: Sequence[Append]) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        for a in appends:
            await a.done.wait()
        writer.close()


async def test_a_check_refuses_one_send_and_the_rest_of_the_batch_is_stored():
    check = Refuse()
    writer, store = make_writer(checks=[check])
    sends = [send(writer, b"c1", "one"), send(writer, b"c1", "no-two"), send(writer, b"c1", "three")]
    await run_until_settled(writer, sends)
    assert store.repo.batches == [2]  # one batch, the refused send left out
    assert check.seen == ["one", "no-two", "three"]
    assert sends[1].error is not None and sends[1].error.code == Code.BLOCKED and sends[1].result is None
    assert [s.result.message.seq for s in (sends[0], sends[2])] == [1, 2]
    assert [s.error for s in (sends[0], sends[2])] == [None, None]


async def test_a_check_that_raises_refuses_what_it_was_given_and_later_checks_see_the_rest():
    async def unreachable(appends: Sequence[Append]) -> Mapping[Append, TimpyError]:
        raise TimpyError("the records are out of reach", Code.UNAVAILABLE)

    later = Refuse()
    writer, store = make_writer(checks=[unreachable, later])
    sends = [send(writer, b"c1", "one"), send(writer, b"c1", "two")]
    await run_until_settled(writer, sends)
    assert [s.error.code for s in sends] == [Code.UNAVAILABLE] * 2
    assert later.seen == [] and store.repo.batches == []


async def test_a_request_error_in_storage_fails_only_its_send():
    writer, store = make_writer()
    sends = [send(writer, b"c1", "one"), send(writer, b"c2", "lost", to="ghost"), send(writer, b"c1", "two")]
    await run_until_settled(writer, sends)
    assert sends[1].error is not None and sends[1].error.code == Code.NO_SUCH_USER
    assert [sends[0].result.message.seq, sends[2].result.message.seq] == [1, 2]


async def test_listeners_see_each_committed_message_once_in_commit_order():
    seen: list[tuple[str, int, dict[bytes, int], bool]] = []

    def listener(committed: Sequence[Committed]) -> None:
        seen.extend((c.message.client_id, c.message.seq, dict(c.inbox), c.numbered_here) for c in committed)

    writer, store = make_writer(max_batch=3)
    writer.listen(listener)
    sends = [send(writer, b"c1", f"m{i}") for i in range(7)]
    sends.append(send(writer, b"c1", "m2"))  # a retry of m2: a duplicate, not committed again
    await run_until_settled(writer, sends)
    assert store.repo.batches == [3, 3, 2]
    assert [s[:2] for s in seen] == [(f"m{i}", i + 1) for i in range(7)]
    assert seen[0][2] == {b"ann": 1, b"ben": 1} and all(s[3] for s in seen)
    assert sends[-1].result.duplicate and sends[-1].result.message.seq == 3


async def test_a_batch_stops_at_its_bytes_and_its_inbox_entries_and_the_rest_goes_next_in_order():
    from timpy.im.writer import _weight

    # Bytes: each packed content is the same size here; three fit, the fourth starts the next batch.
    writer, store = make_writer()
    sends = [send(writer, b"c1", f"m{i}") for i in range(7)]
    size = _weight(sends[0])[0]
    assert all(_weight(a) == (size, 2) for a in sends)
    writer._max_bytes = 3 * size + size // 2
    await run_until_settled(writer, sends)
    assert store.repo.batches == [3, 3, 1]
    assert [a.result.message.seq for a in sends] == list(range(1, 8))  # nothing lost, order kept

    # Inbox entries: two a 1:1 message; a bound of five takes two messages a batch.
    writer, store = make_writer(max_entries=5)
    sends = [send(writer, b"c2", f"n{i}") for i in range(5)]
    await run_until_settled(writer, sends)
    assert store.repo.batches == [2, 2, 1]
    assert [a.result.message.seq for a in sends] == list(range(1, 6))

    # One append over the bounds on its own still goes, alone.
    writer, store = make_writer(max_bytes=1, max_entries=1)
    sends = [send(writer, b"c3", f"o{i}") for i in range(3)]
    await run_until_settled(writer, sends)
    assert store.repo.batches == [1, 1, 1]
    assert [a.result.message.seq for a in sends] == [1, 2, 3]


async def test_an_inbox_entry_for_a_message_numbered_elsewhere_reaches_listeners_once():
    seen: list[Committed] = []
    writer, _ = make_writer(listeners=[seen.extend])
    from timpy.im.writer import InboxAppend
    from timpy.wire.messages import MessageContent

    content = MessageContent("id-9", "ann", "ben", 0, b"hi", {}).pack()
    item = InboxItem(b"ben", b"c1", 9, b"d", 5, content)
    first, again = InboxAppend(item, "c1"), InboxAppend(item, "c1")
    writer.submit(first)
    writer.submit(again)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await again.done.wait()
        writer.close()
    assert (first.pos, again.pos) == (1, 1)
    assert [(c.message.seq, c.message.body, dict(c.inbox), c.numbered_here) for c in seen] == [
        (9, b"hi", {b"ben": 1}, False)
    ]


async def test_a_failing_listener_does_not_lose_the_commit(caplog):
    after: list[str] = []

    def broken(committed: Sequence[Committed]) -> None:
        raise ValueError("a listener's bug")

    writer, store = make_writer(listeners=[broken, lambda cs: after.extend(c.message.client_id for c in cs)])
    with caplog.at_level(logging.ERROR, logger="timpy.writer"):
        sends = [send(writer, b"c1", "one"), send(writer, b"c1", "two")]
        await run_until_settled(writer, sends)
    assert [s.result.message.seq for s in sends] == [1, 2] and [s.error for s in sends] == [None, None]
    assert store.repo.heads[b"c1"] == 2
    assert after == ["one", "two"]  # the next listener still ran
    assert writer.listener_failures == 1
    assert any("listener" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_cursors_are_stored_with_the_next_batch_and_kept_when_it_fails():
    writer, store = make_writer()
    writer.acknowledge(b"ben", b"phone", 4)
    store.repo.fail_next = RequestError("the database said no", Code.BAD_REQUEST)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        assert store.repo.cursors == {}
        writer.acknowledge(b"ben", b"phone", 3)  # lower: the 4 kept from the failed batch wins
        a = send(writer, b"c1", "one")
        await a.done.wait()
        writer.close()
    assert store.repo.cursors == {(b"ben", b"phone"): 4}


def test_a_closed_writer_refuses_new_sends_with_a_clear_error():
    writer, _ = make_writer()
    writer.close()
    with pytest.raises(TimpyError) as info:
        send(writer, b"c1", "late")
    assert info.value.code == Code.UNAVAILABLE and "shutting down" in info.value.text


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([b"c1", b"c2", b"c3"]), st.booleans(), st.integers(0, 5)), max_size=40),
    st.integers(1, 6),
)
def test_numbering_is_gap_free_per_conversation_whatever_is_refused(plan, max_batch):
    """Sends to three conversations, some refused by a check, some retries of
    earlier ones, taken in batches of any size: each conversation's stored
    messages are numbered 1, 2, 3, ... in the order they were submitted, and
    the listener sees exactly those, once, in that order."""

    async def main() -> None:
        seen: list[tuple[bytes, int, str]] = []
        writer, store = make_writer(checks=[Refuse()], max_batch=max_batch)
        writer.listen(lambda cs: seen.extend((bytes.fromhex(c.message.conversation), c.message.seq,
                                              c.message.client_id) for c in cs))
        sends = []
        for i, (conv, refused, retry_of) in enumerate(plan):
            earlier = [s for s in sends if s.new.conv_id == conv]
            if retry_of and len(earlier) >= retry_of:
                sends.append(send(writer, conv, earlier[-retry_of].content.client_id))
            else:
                sends.append(send(writer, conv, f"{'no' if refused else 'ok'}-{i}"))
        await run_until_settled(writer, sends)
        expected: list[tuple[bytes, int, str]] = []
        heads: dict[bytes, int] = {}
        stored: set[tuple[bytes, str]] = set()
        for s in sends:
            key = (s.new.conv_id, s.content.client_id)
            if s.content.client_id.startswith("no"):
                assert s.error is not None and s.result is None
                continue
            assert s.error is None
            if key in stored:
                assert s.result.duplicate
                continue
            stored.add(key)
            heads[s.new.conv_id] = heads.get(s.new.conv_id, 0) + 1
            expected.append((s.new.conv_id, heads[s.new.conv_id], s.content.client_id))
            assert s.result.message.seq == heads[s.new.conv_id] and not s.result.duplicate
        assert seen == expected
        assert store.repo.heads == heads

    trio.run(main)


async def test_an_ack_hold_runs_before_every_ack_a_duplicate_too_and_its_failure_fails_the_ack():
    writer, store = make_writer()
    committed: list[int] = []
    writer.listen(lambda cs: committed.extend(c.message.seq for c in cs))
    held: list[tuple[int, bool]] = []
    failures = [TimpyError("the outbox is full", Code.UNAVAILABLE)]

    async def hold(result: Any) -> None:
        await trio.lowlevel.checkpoint()
        held.append((result.message.seq, result.duplicate))
        if failures:
            raise failures.pop()

    writer.hold_acks(hold)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        first = send(writer, b"c1", "one")
        with pytest.raises(TimpyError) as failed:
            await writer.finish(first)
        assert failed.value.code == Code.UNAVAILABLE
        assert "stored" in failed.value.text and "send it again" in failed.value.text
        assert first.held  # an ack waits for the holds: nothing is acknowledged before them
        again = send(writer, b"c1", "one")  # the client's retry: a duplicate, committed once
        result = await writer.finish(again)
        writer.close()
    assert result.duplicate and result.message.seq == 1
    assert held == [(1, False), (1, True)]
    assert committed == [1]  # the listener saw the message once; the hold saw both tries
    assert store.repo.heads == {b"c1": 1}


async def test_a_send_check_rewrites_or_refuses_before_anything_is_queued():
    writer, store = make_writer()
    seen: list[tuple[str, str]] = []

    async def check(content: Any, conversation: str) -> bytes:
        seen.append((content.client_id, conversation))
        if content.body == b"deny":
            raise RequestError("not this one", Code.NOT_ALLOWED)
        if content.body == b"huge":
            return b"x" * (Limits().max_body + 1)
        return content.body.upper()

    writer.check_sends(check)
    new, content = writer.prepare(b"ann", "ann", b"c1", (b"ann", b"ben"), "ben", "m1", 0, b"hello", {})
    new2, content2 = await writer.screen_send(new, content, "c1-text")
    assert content2.body == b"HELLO" and content2.client_id == "m1" and new2.dedup == new.dedup
    assert new2.content == content2.pack() != new.content
    for body, code in ((b"deny", Code.NOT_ALLOWED), (b"huge", Code.BODY_TOO_LARGE)):
        n, c = writer.prepare(b"ann", "ann", b"c1", (b"ann", b"ben"), "ben", body.decode(), 0, body, {})
        with pytest.raises(RequestError) as refused:
            await writer.screen_send(n, c, "c1-text")
        assert refused.value.code == code
    assert seen == [("m1", "c1-text"), ("deny", "c1-text"), ("huge", "c1-text")]
    assert writer.queue_depth() == 0 and store.repo.heads == {}


async def test_a_slow_send_check_does_not_hold_up_other_senders():
    """A send check runs in its sender's task, before the writer's queue: a
    check waiting on a slow service leaves the writer serving the others."""
    writer, _ = make_writer()
    release = trio.Event()

    async def check(content: Any, conversation: str) -> bytes:
        if content.sender == "slow":
            await release.wait()
        return content.body

    writer.check_sends(check)
    results: dict[str, int] = {}

    async def user_send(sender: str, text: str) -> None:
        new, content = writer.prepare(sender.encode(), sender, b"c-" + sender.encode(), (sender.encode(),), sender,
                                      text, 0, text.encode(), {})
        new, content = await writer.screen_send(new, content, sender)
        pending = Append(new, content, sender)
        writer.submit(pending)
        results[sender] = (await writer.finish(pending)).message.seq

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        nursery.start_soon(user_send, "slow", "a")
        await trio.testing.wait_all_tasks_blocked()
        await user_send("fast", "b")
        assert results == {"fast": 1}  # stored and acknowledged while the slow check waits
        release.set()
        while "slow" not in results:
            await trio.sleep(0.01)
        writer.close()
    assert results == {"fast": 1, "slow": 1}


async def test_row_stamps_never_go_back_when_the_clock_does():
    t = 1_800_000_000_000  # ms since the epoch (2027)
    now = [t]
    store = MemoryStore()
    peers = Peers.standalone("n1")
    writer = Writer(
        store, peers, Replicator(store, peers), BlindIndexer(bytes(32)), Limits, lambda: now[0]  # type: ignore[arg-type]
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        for clock in (t, t - 1_000_000, t - 1_000_000, t + 1_000_000, t - 10**9):  # the machine's time stepped back, twice
            now[0] = clock
            a = send(writer, b"c1", f"at {clock}")
            await a.done.wait()
        writer.close()
    stamps = store.repo.stamps
    assert len(stamps) == 5 and stamps == sorted(set(stamps))  # each batch above the one before
    assert stamps[3] > stamps[0] + 900_000  # the clock still counts once it is ahead again


async def test_row_stamps_stay_above_a_run_before_the_restart_when_the_clock_went_back(tmp_path):
    """After a restart the writer starts above the floor it kept on disk: a
    machine whose clock was set back meanwhile must not number a slot below a
    write of it undone before the restart (docs/consistency.md, "Epochs on
    rows"). The floor is written ahead, not once per batch."""
    from timpy.store.stamp_floor import AHEAD_MS, FILE, StampFloor

    t = 1_800_000_000_000
    now = [t]
    store = MemoryStore()
    peers = Peers.standalone("n1")

    async def run(clocks: list[int]) -> StampFloor:
        floor = StampFloor(tmp_path / FILE)
        writer = Writer(
            store, peers, Replicator(store, peers), BlindIndexer(bytes(32)), Limits, lambda: now[0],  # type: ignore[arg-type]
            floor=floor,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            for clock in clocks:
                now[0] = clock
                a = send(writer, b"c1", f"at {clock}")
                await a.done.wait()
                assert a.error is None
            writer.close()
        return floor

    first = await run([t + i * 1000 for i in range(20)])
    assert first.writes == 1 and first.value >= store.repo.stamps[-1] + AHEAD_MS - 20_000
    before = list(store.repo.stamps)
    second = await run([t - 3_600_000, t - 3_600_000 + 1000])  # restarted an hour back
    assert store.repo.stamps[len(before):] and min(store.repo.stamps[len(before):]) > max(before)
    assert second.writes == 1  # once, for the first batch above the floor it started from
    (tmp_path / FILE).write_text("not a number\n")
    with pytest.raises(ValueError, match="does not hold a whole number"):
        StampFloor(tmp_path / FILE)


async def test_a_key_out_of_reach_fails_only_its_sends_and_the_writer_waits_for_it_once(autojump_clock):
    """Catch-up of a key whose copies are out of reach (a split) waits out its
    timeout and fails. Only the sends that need that key fail; the rest of the
    batch is stored with it. Before, the batch was stored request by request
    and each send of that key waited out the timeout again while the writer
    held every other send of the node."""
    from types import SimpleNamespace

    from timpy.im.replication import CopiesOutOfReach

    asked: list[bytes] = []

    class Replicas:
        def is_warm(self, kind: str, key: bytes) -> bool:
            return False

        async def ensure(self, kind: str, key: bytes) -> None:
            asked.append(key)
            if key == b"split":
                await trio.sleep(2.0)  # the copies across the split do not answer
                raise CopiesOutOfReach("this node could reach only 1 of the 2 other nodes", Code.UNAVAILABLE)

    async def lease() -> None:
        return None

    writer, store = make_writer()
    writer._cluster = True
    writer._replicator = Replicas()  # type: ignore[assignment]
    writer._peers = SimpleNamespace(  # type: ignore[assignment]
        placement=SimpleNamespace(single=True, alone=False), is_local=lambda key: False, await_write=lease,
        epoch_number=1,
    )
    sends = [send(writer, b"split", "a"), send(writer, b"c1", "b"), send(writer, b"split", "c"),
             send(writer, b"c1", "d")]
    started = trio.current_time()
    await run_until_settled(writer, sends)
    assert trio.current_time() - started < 2.5  # one wait for the unreachable copies, not one per send
    assert asked.count(b"split") == 1
    assert [s.error.code for s in (sends[0], sends[2])] == [Code.UNAVAILABLE] * 2
    assert [s.result.message.seq for s in (sends[1], sends[3])] == [1, 2]
    assert store.repo.batches == [2]


async def test_a_replica_gets_each_message_row_of_a_batch_once_whatever_keys_it_holds_it_for():
    """A node holding a message's conversation and both its users is sent the
    row once (three times before: a third of the bytes a replica is sent and
    merges), with each inbox entry; a node holding only one key gets the row
    with that key's rows."""
    from types import SimpleNamespace

    from timpy.store.rows import Copies

    writer, _ = make_writer()
    sends = [send(writer, b"c1", "m1"), send(writer, b"c1", "m2"), send(writer, b"c9", "m3", "cat", "dan")]
    holders = {b"c1": ["n1", "n2", "n3"], b"ann": ["n1", "n2"], b"ben": ["n1", "n3"],
               b"c9": ["n1", "n3"], b"cat": ["n1"], b"dan": ["n1", "n2"]}
    sent: list[dict[str, Copies]] = []

    class Capture:
        async def replicate(self, copies: dict[str, Copies], groups: Any) -> None:
            sent.append(copies)

    placement = SimpleNamespace(replicas=lambda key: holders[key], acks_needed=lambda key: 1)
    writer._peers = SimpleNamespace(placement=placement, self_id="n1", epoch_number=1)  # type: ignore[assignment]
    writer._replicator = Capture()  # type: ignore[assignment]
    members = [a.new.members for a in sends]
    written = Written([
        Appended(seq, 5, False, b"", {u: seq for u in m}, b"sealed%d" % seq) for seq, m in zip((1, 2, 1), members, strict=True)
    ], [], 7)
    await writer._replicate(sends, [], written)
    (copies,) = sent
    rows = {node: [(r[0], r[1]) for r in c.messages] for node, c in copies.items()}
    assert rows == {"n2": [(b"c1", 1), (b"c1", 2), (b"c9", 1)], "n3": [(b"c1", 1), (b"c1", 2), (b"c9", 1)]}
    assert sorted((e[0], e[1]) for e in copies["n2"].inbox) == [(b"ann", 1), (b"ann", 2), (b"dan", 1)]
    assert sorted((e[0], e[1]) for e in copies["n3"].inbox) == [(b"ben", 1), (b"ben", 2)]


def test_a_batch_copied_to_replicas_keeps_the_smaller_bound():
    """Replicas must store a batch within the quorum's time while their own
    writers are busy: a node whose batches are copied takes at most
    MAX_REPLICATED_BATCH appends a batch; a node alone (or a cluster of one),
    MAX_BATCH."""
    from types import SimpleNamespace

    from timpy.im.writer import MAX_BATCH, MAX_REPLICATED_BATCH

    writer, _ = make_writer()
    assert writer.batch_bound() == MAX_BATCH > MAX_REPLICATED_BATCH
    writer._cluster = True
    writer._peers = SimpleNamespace(placement=SimpleNamespace(single=True))  # type: ignore[assignment]
    assert writer.batch_bound() == MAX_BATCH
    writer._peers = SimpleNamespace(placement=SimpleNamespace(single=False))  # type: ignore[assignment]
    assert writer.batch_bound() == MAX_REPLICATED_BATCH
    writer, _ = make_writer(max_batch=3)
    writer._cluster = True
    writer._peers = SimpleNamespace(placement=SimpleNamespace(single=False))  # type: ignore[assignment]
    assert writer.batch_bound() == 3
