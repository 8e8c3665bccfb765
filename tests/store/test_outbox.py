"""The webhook outbox table: one row per (endpoint, event), sealed, states pending -> done or dead."""

from __future__ import annotations

from pathlib import Path

import nacl.utils

from timpy.crypto.seal import Sealer
from timpy.store.engine import sqlite_engine
from timpy.store.outbox import DEAD, DONE, PENDING, NewEvent, Outbox, Outcome

KEY = nacl.utils.random(32)


def outbox(path: Path) -> Outbox:
    o = Outbox(sqlite_engine(path, "NORMAL"), Sealer(KEY))
    o.create()
    return o


def event(n: int, endpoint: str = "biz") -> NewEvent:
    return NewEvent(endpoint, f"{n:032x}", "message.stored", b'{"body":"the launch code is 0000 %d"}' % n)


def test_an_event_is_stored_once_per_endpoint(tmp_path: Path) -> None:
    o = outbox(tmp_path / "o.db")
    assert o.add([event(1), event(2), event(1)], 100) == 2
    assert o.add([event(1), event(1, "crm")], 100) == 1
    assert [r.event_id for r in o.due("biz", 100, 10)] == [f"{1:032x}", f"{2:032x}"]
    assert o.due("biz", 99, 10) == []
    o.settle([Outcome(o.due("biz", 100, 10)[0].id, True)], 150)
    # delivered and kept: emitted again, it is not sent again
    assert o.add([event(1)], 200) == 0
    assert [r.event_id for r in o.due("biz", 1000, 10)] == [f"{2:032x}"]
    assert o.counts() == {("biz", DONE): 1, ("biz", PENDING): 1, ("crm", PENDING): 1}
    assert o.purge(151) == 1 and o.add([event(1)], 300) == 1  # forgotten once purged


def test_failures_wait_then_become_dead_letters_that_can_be_retried_or_dropped(tmp_path: Path) -> None:
    o = outbox(tmp_path / "o.db")
    o.add([event(1), event(2), event(3)], 0)
    rows = o.due("biz", 0, 10)
    o.settle([Outcome(rows[0].id, False, 1, 500, False, "HTTP status 503"),
              Outcome(rows[1].id, False, 12, 0, True, "no answer in time"),
              Outcome(rows[2].id, False, 12, 0, True, "HTTP status 500")], 0)
    assert o.due("biz", 499, 10) == [] and o.next_due("biz") == 500
    again = o.due("biz", 500, 10)
    assert [(r.attempts, r.error) for r in again] == [(1, "HTTP status 503")]
    dead = o.dead(None, 0, 10)
    assert [(r.event_id, r.error, r.state) for r in dead] == [
        (f"{2:032x}", "no answer in time", DEAD), (f"{3:032x}", "HTTP status 500", DEAD)]
    assert o.dead("biz", dead[0].id, 10) == dead[1:]
    assert o.retry("biz", [dead[0].id], 700) == [("biz", f"{2:032x}")]
    assert [(r.event_id, r.attempts) for r in o.due("biz", 700, 10)] == [(f"{1:032x}", 1), (f"{2:032x}", 0)]
    assert o.drop(None, None) == [("biz", f"{3:032x}")] and o.dead(None, 0, 10) == []


def test_the_outbox_survives_a_reopen_and_shows_nothing_readable(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    o = outbox(path)
    o.add([event(1)], 0)
    rows = o.due("biz", 0, 1)
    o.settle([Outcome(rows[0].id, False, 1, 0, False, "connection refused by crm.example.org")], 0)
    o.engine.dispose()
    reopened = outbox(path)
    [row] = reopened.due("biz", 0, 10)
    assert b"launch code" in row.body and row.error.startswith("connection refused")
    reopened.engine.dispose()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"launch code" not in raw and b"message.stored" not in raw and b"crm.example.org" not in raw


def test_a_row_moved_to_another_event_does_not_open(tmp_path: Path) -> None:
    import pytest
    from sqlalchemy import update

    from timpy.errors import StorageError
    from timpy.store.outbox import webhook_outbox

    o = outbox(tmp_path / "o.db")
    o.add([event(1), event(2)], 0)
    first, second = o.due("biz", 0, 10)
    with o.engine.begin() as conn:
        conn.execute(update(webhook_outbox).where(webhook_outbox.c.id == second.id).values(
            payload=conn.execute(webhook_outbox.select().where(webhook_outbox.c.id == first.id)).first().payload))
    with pytest.raises(StorageError):
        o.due("biz", 0, 10)


def test_only_the_owner_of_an_events_key_delivers_it(tmp_path: Path) -> None:
    o = outbox(tmp_path / "o.db")
    mine, theirs = b"m" * 16, b"t" * 16
    o.add([NewEvent("biz", f"{n:032x}", "message.stored", b"{}", "conv", theirs if n % 2 else mine)
           for n in range(1200)] + [event(5000)], 10)  # one written before owner keys: delivered where it is
    owns = lambda kind, key: key == mine  # noqa: E731
    due = o.due("biz", 10, 1000, owns)
    assert len(due) == 601 and {r.key for r in due} == {mine, b""}  # read past pages of rows owned elsewhere
    assert o.next_due("biz", lambda kind, key: False) == 10  # the row with no owner key
    o.settle([Outcome(r.id, True) for r in due], 20)
    assert o.next_due("biz", owns) is None and o.next_due("biz", lambda kind, key: True) == 10


def test_a_copy_keeps_the_newest_state_and_never_revives_a_delivered_event(tmp_path: Path) -> None:
    """Two nodes holding one key's outbox rows: the owner's changes win by
    version; at an equal version, delivered beats dead beats pending."""
    from timpy.store.outbox import OUTBOX

    owner, replica = outbox(tmp_path / "a.db"), outbox(tmp_path / "b.db")
    key = b"k" * 16
    owner.add([NewEvent("biz", f"{n:032x}", "message.stored", b"body %d" % n, "conv", key) for n in range(3)], 0)

    def copy(src: Outbox, dst: Outbox) -> int:
        with src.engine.connect() as conn:
            rows = OUTBOX.rows_of(conn, "conv", key)
        with dst.engine.begin() as conn:
            return OUTBOX.apply(None, conn, [OUTBOX.unpack(r) for r in rows])  # type: ignore[arg-type]

    assert copy(owner, replica) == 3 and copy(owner, replica) == 0
    assert [r.body for r in replica.due("biz", 0, 10)] == [b"body 0", b"body 1", b"body 2"]
    first, second, _ = owner.due("biz", 0, 10)
    changed = owner.settle([Outcome(first.id, True), Outcome(second.id, False, 1, 500, False, "HTTP status 503")], 5)
    assert changed == [("biz", first.event_id), ("biz", second.event_id)]
    assert list(owner.copies(changed)) == [("conv", key)] and len(owner.copies(changed)[("conv", key)]) == 2
    assert copy(owner, replica) == 2
    assert [(r.event_id, r.attempts, r.error) for r in replica.due("biz", 500, 10)] == [
        (f"{2:032x}", 0, ""), (second.event_id, 1, "HTTP status 503")]
    # The replica, owner for a while, fails the first event's delivery at the same version as the owner's success:
    [stale] = [r for r in replica.due("biz", 500, 10) if r.event_id == f"{2:032x}"]
    replica.settle([Outcome(stale.id, False, 1, 900, False, "no answer in time")], 6)
    owner.settle([Outcome(owner.due("biz", 0, 10)[0].id, True)], 6)
    copy(replica, owner)
    copy(owner, replica)
    for side in (owner, replica):
        assert side.counts() == {("biz", "done"): 2, ("biz", "pending"): 1}
    assert [r.event_id for r in replica.due("biz", 10**6, 10)] == [second.event_id]


def test_over_shared_backends_each_event_is_in_its_keys_backend(tmp_path: Path) -> None:
    """``ShardedOutbox``: rows placed by their owner key; row ids name their
    backend, so settling, dead letters, retries and drops reach the right one."""
    from timpy.store.backends import BackendMap, BackendSpec
    from timpy.store.outbox import ShardedOutbox
    from timpy.store.sharded import ShardedRepository

    specs = tuple(BackendSpec(f"b{i}", f"sqlite:///{tmp_path / f'b{i}.db'}") for i in range(2))
    repo = ShardedRepository(BackendMap(1, specs), Sealer(KEY))
    repo.create_schema()
    o = ShardedOutbox(repo, Sealer(KEY))
    keys = [bytes([n]) * 16 for n in range(8)]
    placed = {k: repo.map.place(k) for k in keys}
    assert set(placed.values()) == {"b0", "b1"}
    o.add([NewEvent("biz", f"{n:032x}", "message.stored", b"body %d" % n, "conv", k) for n, k in enumerate(keys)], 0)
    for name in ("b0", "b1"):
        direct = Outbox(repo.backend(name).engine, Sealer(KEY))
        assert {r.key for r in direct.due("biz", 0, 100)} == {k for k in keys if placed[k] == name}
    mine = lambda kind, key: key in keys[:6]  # noqa: E731
    due = o.due("biz", 0, 100, mine)
    assert sorted(r.key for r in due) == keys[:6] and len({r.id for r in due}) == 6
    o.settle([Outcome(r.id, True) if r.key in keys[:3] else Outcome(r.id, False, 9, 0, True, "HTTP status 500")
              for r in due], 5)
    assert o.counts() == {("biz", DONE): 3, ("biz", DEAD): 3, ("biz", PENDING): 2}
    dead = o.dead("biz", 0, 10)
    assert sorted(r.key for r in dead) == keys[3:6]
    assert o.dead("biz", dead[0].id, 10) == dead[1:]
    assert len(o.retry("biz", [dead[0].id], 10)) == 1 and [r.key for r in o.due("biz", 10, 10, mine)] == [dead[0].key]
    assert len(o.drop(None, None, 10)) == 2 and o.dead(None, 0, 10) == []
    assert o.next_due("biz", mine) == 10 and o.next_due("biz", lambda kind, key: key in keys[6:]) == 0
    repo.close()


def test_the_dead_letters_of_owned_keys_are_found_past_pages_of_others(tmp_path: Path) -> None:
    o = outbox(tmp_path / "o.db")
    mine, theirs = b"m" * 16, b"t" * 16
    o.add([NewEvent("biz", f"{n:032x}", "group.changed", b"{}", "conv", mine if n % 3 == 0 else theirs)
           for n in range(1500)] + [event(5000)], 10)
    rows = o.due("biz", 10, 2000)
    o.settle([Outcome(r.id, False, 3, 0, True, "HTTP status 410") for r in rows], 20)
    owns = lambda kind, key: key == mine  # noqa: E731
    first = o.dead("biz", 0, 300, owns)
    rest = o.dead("biz", first[-1].id, 1000, owns)
    assert len(first) == 300 and len(rest) == 201  # 500 owned, and the one with no owner key
    assert {r.key for r in first + rest} == {mine, b""}
    assert len(o.dead("biz", 0, 2000)) == 1501 and o.dead("crm", 0, 10, owns) == []


def test_an_earlier_versions_outbox_file_is_read_and_adopted_once(tmp_path: Path) -> None:
    """The earlier version's own file (its table without owner keys) opens with
    the same key; adopting its rows keeps their state and skips the known."""
    from dataclasses import replace

    from sqlalchemy import text

    from timpy.store.outbox import read_legacy

    old = outbox(tmp_path / "outbox.sqlite3")
    old.add([event(1), event(2), event(3), event(4)], 5)
    rows = old.due("biz", 5, 10)
    old.settle([Outcome(rows[1].id, False, 12, 0, True, "HTTP status 500"), Outcome(rows[2].id, True),
                Outcome(rows[3].id, False, 2, 900, False, "no answer in time")], 6)
    with old.engine.begin() as conn:  # the earlier version's table had no owner columns
        for column in ("owner_kind", "owner_key", "version"):
            conn.execute(text("DROP INDEX IF EXISTS ix_webhook_outbox_owner"))
            conn.execute(text(f"ALTER TABLE webhook_outbox DROP COLUMN {column}"))
    old.engine.dispose()
    found = read_legacy(tmp_path / "outbox.sqlite3", Sealer(KEY))
    assert [(r.event_id, r.state, r.attempts, r.error) for r in found] == [
        (f"{1:032x}", PENDING, 0, ""), (f"{2:032x}", DEAD, 12, "HTTP status 500"),
        (f"{4:032x}", PENDING, 2, "no answer in time")]  # the delivered one is not taken
    assert found[0].body == event(1).body
    new = outbox(tmp_path / "store.db")
    new.add([event(4)], 50)  # emitted again since: left alone
    keyed = [replace(r, kind="user", key=b"u" * 16) for r in found]
    assert new.adopt(keyed) == 2 and new.adopt(keyed) == 0
    assert [(r.event_id, r.key) for r in new.due("biz", 1000, 10)] == [(f"{1:032x}", b"u" * 16), (f"{4:032x}", b"")]
    assert [(r.event_id, r.attempts, r.error) for r in new.dead(None, 0, 10)] == [(f"{2:032x}", 12, "HTTP status 500")]
    assert read_legacy(tmp_path / "empty.sqlite3", Sealer(KEY)) == []
