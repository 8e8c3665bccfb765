"""The repository's contract: ``Repository`` (one database) and
``ShardedRepository`` (shared-backend mode) each have every method of
``RepositoryProtocol``, with the protocol's signature; every public method
of either is declared in a protocol."""

from __future__ import annotations

import inspect
from typing import Protocol

import pytest

from timpy.store.protocol import LocalRepository, RepositoryProtocol
from timpy.store.repository import Repository
from timpy.store.sharded import ShardedRepository

# What only the sharded repository has: managing its backend map.
SHARDED_ONLY = {"set_map", "drained", "backend", "names", "load_map", "store_map", "describe"}


def protocol_methods(proto: type) -> dict[str, object]:
    """The methods a protocol declares, its bases' included."""
    out: dict[str, object] = {}
    for cls in reversed(proto.__mro__):
        if cls is Protocol or not getattr(cls, "_is_protocol", False):
            continue
        for name, value in vars(cls).items():
            if inspect.isfunction(value) and not name.startswith("_"):
                out[name] = value
    return out


def public_methods(cls: type) -> set[str]:
    return {
        name for name in dir(cls)
        if not name.startswith("_") and (inspect.isfunction(getattr(cls, name)) or isinstance(getattr(cls, name), property))
    }


def shape(fn: object) -> str:
    """A signature as text (the annotations are strings: they compare as written)."""
    return str(inspect.signature(fn))  # type: ignore[arg-type]


def problems(proto: type, cls: type) -> list[str]:
    """What ``cls`` lacks of ``proto``, or has with another signature."""
    out = []
    for name, declared in sorted(protocol_methods(proto).items()):
        have = getattr(cls, name, None)
        if have is None:
            out.append(f"{cls.__name__} lacks {name}{shape(declared)}")
        elif shape(have) != shape(declared):
            out.append(f"{cls.__name__}.{name}{shape(have)} differs from {proto.__name__}: {name}{shape(declared)}")
    return out


def test_the_protocol_is_not_empty_and_covers_every_feature():
    methods = protocol_methods(RepositoryProtocol)
    for name in ("create_account", "write_batch", "read_inbox", "put_group", "put_record", "mark_read",
                 "open_terminal", "revoke_token"):
        assert name in methods
    assert set(methods) < set(protocol_methods(LocalRepository))


def test_both_repositories_have_every_method_of_the_protocol_with_its_signature():
    assert problems(RepositoryProtocol, Repository) == []
    assert problems(RepositoryProtocol, ShardedRepository) == []


def test_the_repository_has_every_method_of_one_database():
    assert problems(LocalRepository, Repository) == []


def test_every_public_method_is_declared():
    """A method added to one side only fails here until it is declared: in
    ``RepositoryProtocol`` (then the other side needs it too), or as one
    database's own (``LocalRepository``), or the sharded map's own."""
    local = set(protocol_methods(LocalRepository))
    shared = set(protocol_methods(RepositoryProtocol))
    assert public_methods(Repository) - local == set()
    assert public_methods(ShardedRepository) - shared - SHARDED_ONLY == set()


def test_the_check_finds_a_missing_method_and_a_different_signature():
    class Short:
        def create_schema(self) -> None: ...

        def close(self, now: bool) -> None: ...

    found = problems(RepositoryProtocol, Short)
    assert "Short lacks get_account(self, user_id: 'bytes') -> 'AccountRow | None'" in found
    assert any(p.startswith("Short.close(self, now: 'bool') -> 'None' differs") for p in found)


def test_both_repositories_are_instances_of_the_protocol(tmp_path):
    from timpy.crypto.seal import Sealer
    from timpy.store.engine import sqlite_engine

    repo = Repository(sqlite_engine(None), Sealer(bytes(32)))
    assert isinstance(repo, LocalRepository) and isinstance(repo, RepositoryProtocol)
    repo.close()


def test_the_store_gives_its_one_database_only_when_it_has_one(tmp_path):
    from timpy.config import BackendSpec
    from timpy.crypto.seal import Sealer
    from timpy.errors import StorageError
    from timpy.store.backends import BackendMap
    from timpy.store.engine import sqlite_engine
    from timpy.store.repository import Store

    repo = Repository(sqlite_engine(None), Sealer(bytes(32)))
    assert Store(repo, 1).local is repo
    sharded = ShardedRepository(BackendMap(1, (BackendSpec("one", f"sqlite:///{tmp_path / 'one.db'}"),)), Sealer(bytes(32)))
    with pytest.raises(StorageError, match="shared-backend mode"):
        Store(sharded, 1).local  # noqa: B018
    sharded.close()
    repo.close()
