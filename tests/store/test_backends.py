"""The backend map (pure) and the sharded repository over real backends:
placement, moves, the map's wire form, migrations, nothing readable at rest."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text

from tests.store.backends import dump_tables, fresh_database
from timpy.crypto.seal import Sealer
from timpy.errors import ConfigError, StorageError
from timpy.store import schema
from timpy.store.backends import BackendMap, BackendSpec, redact_url
from timpy.store.engine import url_engine
from timpy.store.repository import Repository
from timpy.store.rows import NewMessage
from timpy.store.sharded import ShardedRepository

KEY = bytes(range(32))


def spec(name: str, weight: float = 1.0) -> BackendSpec:
    return BackendSpec(name, f"sqlite:///{name}.db", weight)


def keys(n: int) -> list[bytes]:
    return [os.urandom(16) for _ in range(n)]


def test_adding_a_third_backend_moves_about_a_third_and_only_to_it():
    two = BackendMap(1, (spec("a"), spec("b")))
    moving = two.start_move((spec("a"), spec("b"), spec("c")), "n1")
    ks = keys(20_000)
    moved = [k for k in ks if moving.moving(k)]
    assert all(moving.destination(k) == "c" for k in moved)
    assert abs(len(moved) / len(ks) - 1 / 3) < 0.05
    # Weights: a backend of weight 2 takes about twice the share.
    weighted = BackendMap(1, (spec("a"), spec("b", 2.0)))
    share_b = sum(weighted.place(k) == "b" for k in ks) / len(ks)
    assert abs(share_b - 2 / 3) < 0.05


@given(names=st.lists(st.sampled_from("abcdefgh"), min_size=2, max_size=6, unique=True), key=st.binary(min_size=16, max_size=16))
@settings(max_examples=200)
def test_removing_a_backend_moves_only_its_keys(names, key):
    before = BackendMap(3, tuple(spec(n) for n in names))
    gone = names[0]
    m = before.start_move(tuple(spec(n) for n in names[1:]), "n1")
    if before.place(key) != gone:
        assert not m.moving(key)
    else:
        assert m.moving(key) and m.destination(key) != gone


def test_a_move_walks_its_phases_and_freezes_only_moving_keys():
    m = BackendMap(1, (spec("a"), spec("b"))).start_move((spec("a"), spec("b"), spec("c")), "n1")
    ks = keys(2000)
    assert m.move.phase == "copy" and not any(m.frozen(k) for k in ks)
    frozen = m.next_phase("n1")
    assert frozen.move.phase == "freeze" and frozen.version == m.version + 1
    assert {k for k in ks if frozen.frozen(k)} == {k for k in ks if m.moving(k)}
    cleanup = frozen.next_phase("n1")
    assert [b.name for b in cleanup.backends] == ["a", "b", "c"] and cleanup.move.phase == "cleanup"
    assert not any(cleanup.frozen(k) for k in ks) and set(cleanup.all_specs()) == {"a", "b", "c"}
    assert all(cleanup.place(k) == m.destination(k) for k in ks)
    done = cleanup.next_phase("n1")
    assert done.move is None and done.version == m.version + 3
    with pytest.raises(ConfigError, match="in progress"):
        frozen.start_move((spec("a"),), "n1")


@given(
    names=st.lists(st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True), min_size=1, max_size=4, unique=True),
    version=st.integers(1, 2**40),
)
def test_the_map_round_trips(names, version):
    m = BackendMap(version, tuple(BackendSpec(n, f"postgresql+psycopg://u:pw@h/{n}", 1.5) for n in names))
    assert BackendMap.unpack(m.pack()) == m
    moving = m.start_move(m.backends[:1], "node").next_phase("node")
    assert BackendMap.unpack(moving.pack()) == moving


def test_bad_backends_are_refused_clearly():
    with pytest.raises(ConfigError, match="name"):
        BackendSpec("no spaces", "sqlite:///x")
    with pytest.raises(ConfigError, match="SQLAlchemy URL"):
        BackendSpec("a", "localhost:5432")
    with pytest.raises(ConfigError, match="weight"):
        BackendSpec("a", "sqlite:///x", 0)
    with pytest.raises(ConfigError, match="unique"):
        BackendMap(1, (spec("a"), spec("a")))
    assert redact_url("postgresql://timpy:s3cret@db:5432/x") == "postgresql://timpy:***@db:5432/x"


# --- the sharded repository over real backends -------------------------------------


@pytest.fixture(params=["sqlite", "mixed"])
def sharded(request, tmp_path):
    kinds = ["sqlite"] * 3 if request.param == "sqlite" else ["sqlite", "postgresql", "mariadb"]
    specs = tuple(BackendSpec(f"s{i}", fresh_database(k, f"timpy_shard_{i}", tmp_path)) for i, k in enumerate(kinds))
    repo = ShardedRepository(BackendMap(1, specs), Sealer(KEY))
    repo.create_schema()
    yield repo
    repo.close()


def test_every_key_lives_on_its_backend_and_reads_back(sharded):
    users = [bytes([i]) * 16 for i in range(1, 13)]
    for u in users:
        sharded.create_account(u, b"hash", b"profile Alice")
    batch = [
        NewMessage(bytes([c]) * 16, (users[c], users[c + 1]), users[c], bytes([c, j]) * 8, 5, f"body {c}/{j}".encode())
        for c in range(10) for j in range(4)
    ]
    written = sharded.write_batch(batch)
    assert [a.seq for a in written.appended] == [j + 1 for c in range(10) for j in range(4)]
    assert all(set(a.inbox) == set(n.members) for a, n in zip(written.appended, batch, strict=True))
    again = sharded.write_batch(batch[:4])  # a retry: duplicates, nothing placed twice
    assert all(a.duplicate and not a.inbox for a in again.appended)
    for c in range(10):
        rows, more = sharded.read_history(bytes([c]) * 16, 0, 0, 50)
        assert [r.content for r in rows] == [f"body {c}/{j}".encode() for j in range(4)] and not more
    for i, u in enumerate(users[:11]):
        entries = sharded.read_inbox(u, 0, 100)
        expected = 4 * ((1 if i < 10 else 0) + (1 if i >= 1 else 0))
        assert len(entries) == expected and [e.pos for e in entries] == list(range(1, expected + 1))
    placement = sharded.map
    for name in sharded.names:
        held = sharded.backend(name).key_stats("user", users)
        assert held and all(placement.place(u) == name for u in held)


def test_nothing_readable_in_any_backend(sharded):
    users = [bytes([i]) * 16 for i in range(1, 9)]
    for u in users:
        sharded.create_account(u, b"argon-hash", b"name: Alice Wonderland")
    sharded.write_batch([
        NewMessage(bytes([c]) * 16, (users[c], users[c + 1]), users[c], bytes([c]) * 16, 5, b"the secret plan")
        for c in range(7)
    ])
    for name in sharded.names:
        dump = dump_tables(sharded.backend(name).engine)
        assert len(dump) > 100
        for secret in (b"secret plan", b"Alice", b"argon-hash"):
            assert secret not in dump, f"{secret!r} readable in backend {name}"


def test_a_backend_that_fails_is_named_and_skipped_for_a_moment(tmp_path):
    good = BackendSpec("good", f"sqlite:///{tmp_path / 'good.db'}")
    bad = BackendSpec("bad", "postgresql+psycopg://nobody@127.0.0.1:9/none")  # nothing listens on port 9
    repo = ShardedRepository(BackendMap(1, (good, bad)), Sealer(KEY))
    repo.create_schema()  # warns about "bad", does not fail
    users = keys(40)
    on_good = [u for u in users if repo.map.place(u) == "good"]
    on_bad = [u for u in users if repo.map.place(u) == "bad"]
    for u in on_good:
        repo.create_account(u, b"h", b"p")
    with pytest.raises(StorageError, match="'bad'"):
        repo.create_account(on_bad[0], b"h", b"p")
    with pytest.raises(StorageError, match="'bad'.*unavailable"):
        repo.get_account(on_bad[1])
    assert repo.existing_accounts(on_good) == set(on_good)
    repo.close()


# --- migrations ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_a_schema_1_database_is_migrated_once_and_a_newer_one_refused(kind, tmp_path):
    url = fresh_database(kind, "timpy_migrate", tmp_path)
    engine = url_engine(url)
    old = Repository(engine, Sealer(KEY))
    old.create_schema()
    with engine.begin() as conn:  # make it look like schema 1: no inbox index, version 1
        conn.execute(text("DROP INDEX ix_inbox_message" + (" ON inbox" if kind == "mariadb" else "")))
        conn.execute(text("ALTER TABLE accounts DROP COLUMN version"))
        old._set_meta(conn, "schema_version", b"1")
    assert "ix_inbox_message" not in {i["name"] for i in inspect(engine).get_indexes("inbox")}
    Repository(engine, Sealer(KEY)).create_schema()
    assert "ix_inbox_message" in {i["name"] for i in inspect(engine).get_indexes("inbox")}
    assert "version" in {c["name"] for c in inspect(engine).get_columns("accounts")}
    assert old.schema_version() == schema.SCHEMA_VERSION
    Repository(engine, Sealer(KEY)).create_schema()  # nothing left to do
    old.set_meta("schema_version", str(schema.SCHEMA_VERSION + 1).encode())
    with pytest.raises(ConfigError, match="newer"):
        Repository(engine, Sealer(KEY)).create_schema()
    engine.dispose()
