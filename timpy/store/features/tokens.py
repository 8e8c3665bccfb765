"""Revoked session tokens, until they expire. Not copied with any key: every
node (and every backend) keeps the revocations it is told."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from timpy.store import schema as s
from timpy.store.features.base import StoreBase


class TokensProtocol(Protocol):
    def revoke_token(self, token_id: bytes, expires_ms: int) -> None: ...

    def live_revocations(self, now_ms: int) -> dict[bytes, int]: ...


class TokensStore(StoreBase):
    def revoke_token(self, token_id: bytes, expires_ms: int) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(s.revoked_tokens).values(token_id=token_id, expires_ms=expires_ms))
        except IntegrityError:
            pass  # revoked already

    def live_revocations(self, now_ms: int) -> dict[bytes, int]:
        with self.engine.begin() as conn:
            conn.execute(s.revoked_tokens.delete().where(s.revoked_tokens.c.expires_ms <= now_ms))
            rows = conn.execute(select(s.revoked_tokens))
            return {bytes(r.token_id): r.expires_ms for r in rows}
