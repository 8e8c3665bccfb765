"""The database itself: its schema (created, checked against the cluster
key, migrated) and the sealed values of ``timpy_meta`` (the backend map)."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from sqlalchemy import insert, select, update

from timpy.crypto.seal import row_ad
from timpy.errors import ConfigError, KeyMismatchError, StorageError
from timpy.store import schema as s
from timpy.store.features.base import StoreBase
from timpy.store.migrations import steps_after

log = logging.getLogger("timpy.store")

_CANARY = b"timpy cluster key check"


class SchemaProtocol(Protocol):
    def create_schema(self) -> None: ...

    def close(self) -> None: ...


class MetaProtocol(Protocol):
    """One database's own values (the backend map), not routed by key."""

    def schema_version(self) -> int: ...

    def get_meta(self, name: str) -> bytes | None: ...

    def set_meta(self, name: str, value: bytes) -> None: ...


class SchemaStore(StoreBase):
    def create_schema(self) -> None:
        """Create missing tables, check that the cluster key opens this data,
        and bring an older schema up to date (``migrations``)."""
        s.metadata.create_all(self.engine)
        ad = row_ad("timpy_meta", "canary")
        with self.engine.begin() as conn:
            row = conn.execute(select(s.meta.c.value).where(s.meta.c.name == "canary")).first()
            if row is None:
                conn.execute(insert(s.meta).values(name="canary", value=self._sealer.seal(_CANARY, ad)))
                self._set_meta(conn, "schema_version", str(s.SCHEMA_VERSION).encode())
                return
        try:
            self._sealer.open(row.value, ad)
        except StorageError:
            raise KeyMismatchError(
                "the cluster key does not open the data in this database: "
                "start with the key this data was created with (cluster.key or $TIMPY_CLUSTER_KEY)"
            ) from None
        self._migrate()

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            raw = self._get_meta(conn, "schema_version")
        return 1 if raw is None else int(raw.decode())

    def _migrate(self) -> None:
        version = self.schema_version()
        if version > s.SCHEMA_VERSION:
            raise ConfigError(
                f"this database has schema version {version}, newer than this timpy knows "
                f"({s.SCHEMA_VERSION}): upgrade timpy on this node"
            )
        for target, what, step in steps_after(version):
            log.info("migrating the database to schema %d: %s", target, what)
            with self.engine.begin() as conn:
                step(conn)
                self._set_meta(conn, "schema_version", str(target).encode())

    def _get_meta(self, conn: Any, name: str) -> bytes | None:
        row = conn.execute(select(s.meta.c.value).where(s.meta.c.name == name)).first()
        return None if row is None else self._sealer.open(row.value, row_ad("timpy_meta", name))

    def _set_meta(self, conn: Any, name: str, value: bytes) -> None:
        sealed = self._sealer.seal(value, row_ad("timpy_meta", name))
        done = conn.execute(update(s.meta).where(s.meta.c.name == name).values(value=sealed)).rowcount
        if not done:
            conn.execute(insert(s.meta).values(name=name, value=sealed))

    def get_meta(self, name: str) -> bytes | None:
        """A sealed value of ``timpy_meta`` (the backend map), opened."""
        with self.engine.connect() as conn:
            return self._get_meta(conn, name)

    def set_meta(self, name: str, value: bytes) -> None:
        with self.engine.begin() as conn:
            self._set_meta(conn, name, value)

    def close(self) -> None:
        self.engine.dispose()
