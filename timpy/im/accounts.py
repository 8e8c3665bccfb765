"""Accounts: registration, password and token login, logout (revocation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgpack
import trio

from timpy.config import Limits, SecurityConfig
from timpy.crypto.blind import BlindIndexer
from timpy.crypto.passwords import hash_password, verify_password
from timpy.crypto.tokens import TokenAuthority, TokenClaims
from timpy.errors import AuthError, Code, RequestError
from timpy.im import ids
from timpy.store.repository import Store

MAX_PASSWORD = 1024


@dataclass(frozen=True)
class Identity:
    user_id: bytes
    name: str


class Accounts:
    def __init__(
        self,
        store: Store,
        indexer: BlindIndexer,
        tokens: TokenAuthority,
        security: SecurityConfig,
        limits: Limits,
        clock_ms: Callable[[], int],
    ) -> None:
        self._store = store
        self._indexer = indexer
        self._tokens = tokens
        self._security = security
        self._limits = limits
        self._now = clock_ms
        self._revoked: dict[bytes, int] = {}
        self._dummy_hash: bytes | None = None

    async def start(self) -> None:
        self._revoked = await self._store.run(self._store.repo.live_revocations, self._now())

    def _hash(self, password: str) -> bytes:
        return hash_password(password, self._security.password_opslimit, self._security.password_memlimit)

    def _check_password_shape(self, password: str) -> None:
        if not isinstance(password, str) or len(password) < self._limits.min_password_length:
            raise RequestError(
                f"a password has at least {self._limits.min_password_length} characters",
                Code.WEAK_PASSWORD,
            )
        if len(password) > MAX_PASSWORD:
            raise RequestError(f"a password has at most {MAX_PASSWORD} characters", Code.WEAK_PASSWORD)

    async def register(self, name: str, password: str) -> Identity:
        norm = ids.normalize_name(name)
        self._check_password_shape(password)
        uid = ids.user_id(self._indexer, norm)
        secret = await trio.to_thread.run_sync(self._hash, password)
        profile = msgpack.packb({"name": norm, "created": self._now()})
        await self._store.run(self._store.repo.create_account, uid, secret, profile)
        return Identity(uid, norm)

    async def login_password(self, name: str, password: str) -> Identity:
        try:
            norm = ids.normalize_name(name)
        except RequestError:
            raise AuthError("wrong user name or password", Code.BAD_CREDENTIALS) from None
        uid = ids.user_id(self._indexer, norm)
        account = await self._store.run(self._store.repo.get_account, uid)
        if account is None:
            # Spend the same time as a real check, so timing does not tell who exists.
            if self._dummy_hash is None:
                self._dummy_hash = await trio.to_thread.run_sync(self._hash, "timpy-dummy-password")
            await trio.to_thread.run_sync(verify_password, self._dummy_hash, str(password))
            raise AuthError("wrong user name or password", Code.BAD_CREDENTIALS)
        ok = await trio.to_thread.run_sync(verify_password, account.secret, str(password))
        if not ok:
            raise AuthError("wrong user name or password", Code.BAD_CREDENTIALS)
        if account.disabled:
            raise AuthError("this account is disabled; ask the operator", Code.ACCOUNT_DISABLED)
        return Identity(uid, norm)

    def issue_token(self, who: Identity, device: str) -> tuple[str, TokenClaims]:
        return self._tokens.issue(who.name, device, self._now(), int(self._security.token_ttl * 1000))

    def login_token(self, token: str) -> tuple[Identity, TokenClaims]:
        """Verify a token without reading storage: signature, expiry, revocation list."""
        claims = self._tokens.verify(str(token), self._now())
        if claims.token_id in self._revoked:
            raise AuthError("the session token was revoked (logged out); log in again", Code.TOKEN_INVALID)
        return Identity(ids.user_id(self._indexer, claims.user), claims.user), claims

    async def logout(self, claims: TokenClaims) -> None:
        self._revoked[claims.token_id] = claims.expires_ms
        await self._store.run(self._store.repo.revoke_token, claims.token_id, claims.expires_ms)

    async def exists(self, uid: bytes) -> bool:
        return uid in await self._store.run(self._store.repo.existing_accounts, [uid])
