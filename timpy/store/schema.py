"""The schema, one for SQLite, PostgreSQL and MySQL/MariaDB.

Lookup columns hold opaque ids (keyed BLAKE2b, 16 bytes); everything a
person could read lives in sealed ``LargeBinary`` payloads.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects import mysql

SCHEMA_VERSION = 10  # bump with a step in migrations.py

# MySQL cannot index a BLOB: opaque ids are VARBINARY there.
Id = LargeBinary(16).with_variant(mysql.VARBINARY(16), "mysql", "mariadb")
Sealed = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")

metadata = MetaData()

meta = Table(
    "timpy_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Sealed, nullable=False),
)

accounts = Table(
    "accounts",
    metadata,
    Column("user_id", Id, primary_key=True),  # blind index of the user name
    Column("secret", Sealed, nullable=False),  # sealed argon2id hash
    Column("profile", Sealed, nullable=False),  # sealed: name, created time, fields
    Column("disabled", Boolean, nullable=False, default=False),
    Column("inbox_head", BigInteger, nullable=False, default=0),
    # schema 3: bumped by every change of secret, profile or disabled, so a
    # copy of a newer account replaces an older one (replication, moves)
    Column("version", BigInteger, nullable=False, default=0, server_default="0"),
)

conversations = Table(
    "conversations",
    metadata,
    Column("conv_id", Id, primary_key=True),
    Column("last_seq", BigInteger, nullable=False, default=0),
)

conv_members = Table(
    "conv_members",
    metadata,
    Column("conv_id", Id, nullable=False),
    Column("user_id", Id, nullable=False),
    PrimaryKeyConstraint("conv_id", "user_id"),
)

messages = Table(
    "messages",
    metadata,
    Column("conv_id", Id, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("dedup", Id, nullable=False),  # blind index of (sender, client message id)
    Column("created_ms", BigInteger, nullable=False),
    Column("content", Sealed, nullable=False),  # sealed; AD binds (conv_id, seq)
    # schema 6: the ring epoch the row was numbered under; of two values of one
    # slot the higher epoch wins (docs/consistency.md, "Epochs on rows")
    Column("epoch", BigInteger, nullable=False, default=0, server_default="0"),
    PrimaryKeyConstraint("conv_id", "seq"),
    UniqueConstraint("conv_id", "dedup", name="uq_messages_dedup"),
)

# A user's inbox: every message for the user, numbered per user, so each
# terminal needs one cursor to know what it has not yet received.
inbox = Table(
    "inbox",
    metadata,
    Column("user_id", Id, nullable=False),
    Column("pos", BigInteger, nullable=False),
    Column("conv_id", Id, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("epoch", BigInteger, nullable=False, default=0, server_default="0"),  # schema 6, as for messages
    PrimaryKeyConstraint("user_id", "pos"),
    # schema 2: finds the inbox entries of a message (deleting moved copies)
    Index("ix_inbox_message", "conv_id", "seq"),
)

terminals = Table(
    "terminals",
    metadata,
    Column("user_id", Id, nullable=False),
    Column("device_id", Id, nullable=False),  # blind index of the device name
    Column("cursor", BigInteger, nullable=False, default=0),
    Column("last_seen_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "device_id"),
)

# schema 4: a group's state (name, members and roles, policy, requests,
# mutes) sealed as one value; its messages are the conversation with the same
# id, and conv_members mirrors its members (history checks membership there).
groups = Table(
    "groups",
    metadata,
    Column("group_id", Id, primary_key=True),
    Column("state", Sealed, nullable=False),  # sealed; AD binds (groups, group_id, "state")
    Column("version", BigInteger, nullable=False),
)

# schema 5: small sealed values kept per key, each with a version: a user's
# roster and presence status, the relation of two users (at the key of their
# 1:1 conversation), a conversation's unread burn-after-reading messages.
records = Table(
    "records",
    metadata,
    Column("key_id", Id, nullable=False),  # a user id or a conversation id: placed with it
    Column("kind", String(16), nullable=False),
    Column("state", Sealed, nullable=False),  # sealed; AD binds (records, key_id, kind)
    Column("version", BigInteger, nullable=False),
    PrimaryKeyConstraint("key_id", "kind"),
)

# schema 5: how far a user has read each conversation (read receipts, unread counts).
read_marks = Table(
    "read_marks",
    metadata,
    Column("user_id", Id, nullable=False),
    Column("conv_id", Id, nullable=False),
    Column("seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "conv_id"),
)

revoked_tokens = Table(
    "revoked_tokens",
    metadata,
    Column("token_id", Id, primary_key=True),
    Column("expires_ms", BigInteger, nullable=False),
)

# schema 7 (conversation list): a user's inbox entries by conversation, so the
# newest messages and the ones after the read mark of one conversation are
# found without reading the whole inbox.
inbox_by_conversation = Index("ix_inbox_user_conv", inbox.c.user_id, inbox.c.conv_id, inbox.c.seq)

# schema 7 (search): blind tokens of the words of each message, at the
# conversation's owner and replicas (or its backend). A token is keyed
# BLAKE2b under a key of the conversation's own (timpy/im/search_rules.py);
# no word is stored. search_heads: indexed up to this seq.
Token = LargeBinary(8).with_variant(mysql.VARBINARY(8), "mysql", "mariadb")

search_postings = Table(
    "search_postings",
    metadata,
    Column("conv_id", Id, nullable=False),
    Column("token", Token, nullable=False),
    Column("seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("conv_id", "token", "seq"),
    sqlite_with_rowid=False,
)

# The tokens of each indexed message, so a recall, a burn or an edit can take
# them out again (the message's words are gone by then).
search_docs = Table(
    "search_docs",
    metadata,
    Column("conv_id", Id, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("tokens", Sealed, nullable=False),  # the message's tokens, concatenated (not sealed: tokens already)
    PrimaryKeyConstraint("conv_id", "seq"),
)

search_heads = Table(
    "search_heads",
    metadata,
    Column("conv_id", Id, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("dedup", Id, nullable=False),  # the message at seq, to see it taken back (an undone write) and renumbered
)

# schema 8: attachments (timpy/store/features/attachments.py), placed by the attachment id
# like any key (its own kind of key in the registry, "att"). The metadata (name, type, size, hash, uploader) and every
# chunk are sealed; AD binds (attachments, att_id, "meta") and
# (attachment_chunks, att_id, index).
attachments = Table(
    "attachments",
    metadata,
    Column("att_id", Id, primary_key=True),  # random, opaque
    Column("uploader_id", Id, nullable=False),
    Column("meta", Sealed, nullable=False),
    Column("chunk_size", BigInteger, nullable=False),
    Column("chunks", BigInteger, nullable=False),
    Column("complete", Boolean, nullable=False, default=False),
    Column("created_ms", BigInteger, nullable=False),
    # schema 9: a deleted attachment keeps this row, its meta emptied, as a
    # tombstone: repair and late copies cannot bring the file back
    Column("deleted", Boolean, nullable=False, default=False, server_default=false()),
)

attachment_chunks = Table(
    "attachment_chunks",
    metadata,
    Column("att_id", Id, nullable=False),
    Column("idx", BigInteger, nullable=False),
    Column("content", Sealed, nullable=False),
    PrimaryKeyConstraint("att_id", "idx"),
)

# who may read an attachment: its uploader and the members of every
# conversation a file message referencing it was sent to (at that time)
attachment_readers = Table(
    "attachment_readers",
    metadata,
    Column("att_id", Id, nullable=False),
    Column("user_id", Id, nullable=False),
    PrimaryKeyConstraint("att_id", "user_id"),
)

# the messages referencing an attachment: when the last is recalled or
# burned, the attachment is deleted
attachment_refs = Table(
    "attachment_refs",
    metadata,
    Column("att_id", Id, nullable=False),
    Column("conv_id", Id, nullable=False),
    Column("seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("att_id", "conv_id", "seq"),
)

# schema 10: the webhook outbox (``timpy.store.outbox``), one row per
# (endpoint, event). A row belongs to the key that owns its event (a
# conversation or a user: ``owner_kind``, ``owner_key``) and is copied to that
# key's replicas like the key's other rows; ``version`` grows with every change
# of its state by the key's owner, so the newest state wins a copy. Rows
# written before schema 10 have no owner key: only the node holding them
# delivers them. ``id`` is this database's own number (the admin API's).
webhook_outbox = Table(
    "webhook_outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("endpoint", String(40), nullable=False),
    Column("event_id", String(32), nullable=False),
    Column("state", String(8), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("due_ms", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("payload", Sealed, nullable=False),  # [event type, body]; AD: webhook_outbox, endpoint, event id
    Column("error", Sealed, nullable=True),  # the last failure, for the dead-letter view
    Column("owner_kind", String(4), nullable=True),
    Column("owner_key", Id, nullable=True),
    Column("version", BigInteger, nullable=False, default=0, server_default="0"),
    UniqueConstraint("endpoint", "event_id", name="uq_webhook_outbox_event"),
    Index("ix_webhook_outbox_due", "endpoint", "state", "due_ms"),
    Index("ix_webhook_outbox_owner", "owner_key"),
)
