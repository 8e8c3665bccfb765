"""Versioned schema migrations: a numbered list of steps and a version in ``timpy_meta``.

A database created now gets the whole schema at once and the current version.
A database at an older version gets each missing step in order, each in its
own transaction, and its version recorded after each; every step is written
so that running it twice is harmless (two nodes starting at once against one
shared backend may both try it). A database newer than this code is refused.

Why not Alembic: its environment, script directory and autogeneration serve
schemas that change often and are edited by hand; ours changes rarely, must
migrate on every backend of a cluster from whichever node opens it first, and
keeps its version sealed beside the key canary. A list of idempotent steps in
code does that with nothing to install or configure.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, inspect, text

from timpy.store import schema as s


def _add_inbox_message_index(conn: Connection) -> None:
    index = next(i for i in s.inbox.indexes if i.name == "ix_inbox_message")
    index.create(conn, checkfirst=True)


def _add_account_version(conn: Connection) -> None:
    columns = {c["name"] for c in inspect(conn).get_columns("accounts")}
    if "version" not in columns:
        conn.execute(text("ALTER TABLE accounts ADD COLUMN version BIGINT NOT NULL DEFAULT 0"))


def _add_groups(conn: Connection) -> None:
    s.groups.create(conn, checkfirst=True)


def _add_records_and_read_marks(conn: Connection) -> None:
    s.records.create(conn, checkfirst=True)
    s.read_marks.create(conn, checkfirst=True)


def _add_row_epochs(conn: Connection) -> None:
    # Rows written before have epoch 0: older than any written under the quorum protocol.
    for table in ("messages", "inbox"):
        columns = {c["name"] for c in inspect(conn).get_columns(table)}
        if "epoch" not in columns:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0"))


def _add_conversation_list_and_search(conv: Connection) -> None:
    s.inbox_by_conversation.create(conv, checkfirst=True)
    s.search_postings.create(conv, checkfirst=True)
    s.search_docs.create(conv, checkfirst=True)
    s.search_heads.create(conv, checkfirst=True)


def _add_attachments(conn: Connection) -> None:
    for table in (s.attachments, s.attachment_chunks, s.attachment_readers, s.attachment_refs):
        table.create(conn, checkfirst=True)


def _add_attachment_tombstones(conn: Connection) -> None:
    columns = {c["name"] for c in inspect(conn).get_columns("attachments")}
    if "deleted" not in columns:
        conn.execute(text("ALTER TABLE attachments ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT FALSE"))


def add_outbox_owners(conn: Connection) -> None:
    """The webhook outbox with its owner key: created, or (a table made by an
    older node, in its own store) given the new columns."""
    if not inspect(conn).has_table("webhook_outbox"):
        s.webhook_outbox.create(conn, checkfirst=True)
        return
    columns = {c["name"] for c in inspect(conn).get_columns("webhook_outbox")}
    binary = "VARBINARY(16)" if conn.dialect.name in ("mysql", "mariadb") else "BYTEA" if conn.dialect.name == "postgresql" else "BLOB"
    for name, sql in (("owner_kind", "VARCHAR(4)"), ("owner_key", binary), ("version", "BIGINT NOT NULL DEFAULT 0")):
        if name not in columns:
            conn.execute(text(f"ALTER TABLE webhook_outbox ADD COLUMN {name} {sql}"))
    index = next(i for i in s.webhook_outbox.indexes if i.name == "ix_webhook_outbox_owner")
    index.create(conn, checkfirst=True)


# (version reached, what it does, the step)
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (2, "index inbox entries by message", _add_inbox_message_index),
    (3, "account versions", _add_account_version),
    (4, "groups", _add_groups),
    (5, "records and read marks", _add_records_and_read_marks),
    (6, "ring epochs on message and inbox rows", _add_row_epochs),
    (7, "conversation list index, search index", _add_conversation_list_and_search),
    (8, "attachments", _add_attachments),
    (9, "attachment tombstones", _add_attachment_tombstones),
    (10, "webhook outbox rows owned by a key", add_outbox_owners),
]

assert MIGRATIONS[-1][0] == s.SCHEMA_VERSION, "SCHEMA_VERSION and the last migration must agree"


def steps_after(version: int) -> list[tuple[int, str, Callable[[Connection], None]]]:
    return [m for m in MIGRATIONS if m[0] > version]
