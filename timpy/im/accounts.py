"""Accounts: registration, password and token login, logout (revocation).

An account lives with its user's owner node (and its replicas). Passwords are
hashed and checked on the node the client is connected to; the owner only
stores and returns the hash. Tokens are checked anywhere without a lookup; a
logout is told to every node.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from timpy.cluster import catalog as ops
from timpy.concurrency import to_worker
from timpy.config import Limits, SecurityConfig
from timpy.crypto.blind import BlindIndexer
from timpy.crypto.passwords import hash_password, verify_password
from timpy.crypto.tokens import TokenAuthority, TokenClaims
from timpy.errors import AuthError, Code, RequestError
from timpy.im import fields, ids
from timpy.im.batches import BatchedCalls
from timpy.im.events import NO_EVENTS, EventSink, event_id
from timpy.im.peers import Peers
from timpy.im.replication import Replicator
from timpy.im.users import RESERVED_NAMES, SYSTEM_USER, Identity
from timpy.store.repository import Store
from timpy.store.rows import AccountRow, Copies

MAX_PASSWORD = 1024
class Accounts:
    def __init__(
        self,
        store: Store,
        indexer: BlindIndexer,
        tokens: TokenAuthority,
        security: SecurityConfig,
        limits: Callable[[], Limits],  # read each time: limits change at run time
        clock_ms: Callable[[], int],
        peers: Peers | None = None,
        replicator: Replicator | None = None,
        events: EventSink = NO_EVENTS,
    ) -> None:
        self._events = events
        self._peers = peers or Peers.standalone("local")
        self._replicator = replicator or Replicator(store, self._peers)
        self._store = store
        self._indexer = indexer
        self._tokens = tokens
        self._security = security
        self._limits = limits
        self._now = clock_ms
        self._revoked: dict[bytes, int] = {}
        self._dummy_hash: bytes | None = None
        # Account reads at the owner that arrive together (logins) share one
        # storage call and one statement.
        self._account_reads: BatchedCalls[bytes, AccountRow | None] = BatchedCalls(
            lambda uids: self._store.run(self._store.repo.get_accounts, uids)
        )
        peers, keeper = self._peers, self._replicator
        peers.serve(ops.ACCT_CREATE, self._create_here, keeper, lambda a, _: self._account_copies(a.user_id))
        peers.serve(ops.ACCT_GET, self._get_here, keeper)
        peers.serve(ops.ACCT_UPDATE, self._update_here, keeper,
                    lambda a, changed: self._account_copies(a.user_id) if changed else None)
        peers.serve(ops.ACCT_PROFILE, self._set_profile_here, keeper,
                    lambda a, changed: self._account_copies(a.user_id) if changed else None)
        peers.serve(ops.TOKEN_REVOKE, self._on_revoke)

    async def start(self) -> None:
        self._revoked = await self._store.run(self._store.repo.live_revocations, self._now())

    def _hash(self, password: str) -> bytes:
        return hash_password(password, self._security.password_opslimit, self._security.password_memlimit)

    def _check_password_shape(self, password: str) -> None:
        if not isinstance(password, str) or len(password) < self._limits().min_password_length:
            raise RequestError(
                f"a password has at least {self._limits().min_password_length} characters",
                Code.WEAK_PASSWORD,
            )
        if len(password) > MAX_PASSWORD:
            raise RequestError(f"a password has at most {MAX_PASSWORD} characters", Code.WEAK_PASSWORD)

    async def register(self, name: str, password: str) -> Identity:
        norm = ids.normalize_name(name)
        if norm in RESERVED_NAMES:
            raise RequestError(f"the name {norm!r} is reserved", Code.INVALID_NAME)
        self._check_password_shape(password)
        uid = ids.user_id(self._indexer, norm)
        secret = await to_worker(self._hash, password)
        profile = msgpack.packb({"name": norm, "created": self._now()})
        await self._peers.ask(ops.ACCT_CREATE, ops.AccountCreate(uid, secret, profile))
        return Identity(uid, norm)

    async def _create_here(self, a: ops.AccountCreate) -> None:
        await self._store.run(self._store.repo.create_account, a.user_id, a.secret, a.profile)
        if self._events.wants("user.registered"):  # hook: webhooks, at the user's owner
            name = msgpack.unpackb(a.profile).get("name", "")
            await self._events.emit("user.registered", event_id("user.registered", a.user_id), {"user": name},
                                   ("user", a.user_id))

    def _account_copies(self, uid: bytes) -> Callable[[], Awaitable[Copies]]:
        return lambda: self._store.run(self._store.local.user_copies, uid, 0, 0)

    async def _get_here(self, a: ops.AccountGet) -> ops.Account | None:
        account = await self._account_reads.call(a.user_id)
        if account is None:
            return None
        return ops.Account(account.secret, account.disabled, account.profile if a.full else b"", account.version)

    async def _get(self, uid: bytes, full: bool = False) -> ops.Account | None:
        return await self._peers.ask(ops.ACCT_GET, ops.AccountGet(uid, full), follow_moves=True)  # a read

    async def login_password(self, name: str, password: str) -> Identity:
        try:
            norm = ids.normalize_name(name)
        except RequestError:
            raise AuthError("wrong user name or password", Code.BAD_CREDENTIALS) from None
        uid = ids.user_id(self._indexer, norm)
        account = await self._get(uid)
        if account is None:
            # Spend the same time as a real check, so timing does not tell who exists.
            if self._dummy_hash is None:
                self._dummy_hash = await to_worker(self._hash, "timpy-dummy-password")
            await to_worker(verify_password, self._dummy_hash, str(password))
            raise AuthError("wrong user name or password", Code.BAD_CREDENTIALS)
        ok = await to_worker(verify_password, account.secret, str(password))
        if not ok:
            raise AuthError("wrong user name or password", Code.BAD_CREDENTIALS)
        if account.disabled:
            raise AuthError("this account is disabled; ask the operator", Code.ACCOUNT_DISABLED)
        return Identity(uid, norm)

    async def require_enabled(self, who: Identity) -> None:
        """A token login of a disabled account is refused. (A token is valid by
        its signature alone; this is the one lookup a token login makes.)"""
        account = await self._get(who.user_id)
        if account is not None and account.disabled:
            raise AuthError("this account is disabled; ask the operator", Code.ACCOUNT_DISABLED)

    # --- operator actions (the admin API) --------------------------------------

    async def ensure_system_account(self) -> Identity:
        """The disabled account that sends operators' messages, created on first use."""
        uid = ids.user_id(self._indexer, SYSTEM_USER)
        if await self._get(uid) is None:
            secret = await to_worker(self._hash, secrets.token_urlsafe(32))
            profile = msgpack.packb({"name": SYSTEM_USER, "created": self._now()})
            try:
                await self._peers.ask(ops.ACCT_CREATE, ops.AccountCreate(uid, secret, profile))
            except RequestError as exc:
                if exc.code != Code.USER_EXISTS:  # another node created it just now
                    raise
            await self._update(uid, None, True)
        return Identity(uid, SYSTEM_USER)

    async def lookup(self, name: str) -> dict[str, object] | None:
        """What an operator may see of an account: never the password hash."""
        norm = ids.normalize_name(name)
        uid = ids.user_id(self._indexer, norm)
        account = await self._get(uid, full=True)
        if account is None:
            return None
        profile = msgpack.unpackb(account.profile) if account.profile else {}
        return {
            "name": norm,
            "disabled": account.disabled,
            "created_ms": profile.get("created"),
            "version": account.version,
            "owner": self._peers.owner(uid),
        }

    async def set_disabled(self, name: str, disabled: bool) -> bool:
        """Disable or enable an account; False if there is no such account."""
        uid = ids.user_id(self._indexer, ids.normalize_name(name))
        return await self._update(uid, None, bool(disabled))

    async def reset_password(self, name: str, password: str) -> bool:
        self._check_password_shape(password)
        uid = ids.user_id(self._indexer, ids.normalize_name(name))
        secret = await to_worker(self._hash, password)
        return await self._update(uid, secret, None)

    async def _update(self, uid: bytes, secret: bytes | None, disabled: bool | None) -> bool:
        return await self._peers.ask(ops.ACCT_UPDATE, ops.AccountUpdate(uid, secret, disabled))

    async def _update_here(self, a: ops.AccountUpdate) -> bool:
        return bool(await self._store.run(self._store.repo.update_account, a.user_id, a.secret, None, a.disabled))

    # --- profiles (sealed with the account) ------------------------------------

    async def profile(self, name: str) -> dict[str, Any]:
        """A user's public profile: nickname, avatar URL, custom fields."""
        norm = ids.normalize_name(name)
        account = await self._get(ids.user_id(self._indexer, norm), full=True)
        if account is None or norm in RESERVED_NAMES:
            raise RequestError(f"no such user: {norm}", Code.NO_SUCH_USER)
        return profile_view(norm, msgpack.unpackb(account.profile) if account.profile else {})

    async def set_profile(self, who: Identity, changes: dict[str, str]) -> dict[str, Any]:
        check_profile_changes(changes)
        await self._peers.ask(ops.ACCT_PROFILE, ops.ProfileChange(who.user_id, dict(changes)))
        return await self.profile(who.name)

    async def _set_profile_here(self, a: ops.ProfileChange) -> bool:
        """At the owner, one change per user at a time (the catalog serializes it)."""
        account = await self._store.run(self._store.repo.get_account, a.user_id)
        if account is None:
            raise RequestError("no such user", Code.NO_SUCH_USER)
        profile = msgpack.unpackb(account.profile) if account.profile else {}
        profile = apply_profile_changes(profile, a.changes)
        return bool(await self._store.run(self._store.repo.update_account, a.user_id, None, msgpack.packb(profile), None))

    def issue_token(self, who: Identity, device: str) -> tuple[str, TokenClaims]:
        return self._tokens.issue(who.name, device, self._now(), int(self._security.token_ttl * 1000))

    def login_token(self, token: str) -> tuple[Identity, TokenClaims]:
        """Verify a token without reading storage: signature, expiry, revocation list."""
        claims = self._tokens.verify(str(token), self._now())
        if claims.token_id in self._revoked:
            raise AuthError("the session token was revoked (logged out); log in again", Code.TOKEN_INVALID)
        return Identity(ids.user_id(self._indexer, claims.user), claims.user), claims

    async def logout(self, claims: TokenClaims) -> None:
        revoke = ops.TokenRevoke(claims.token_id, claims.expires_ms)
        await self._on_revoke(revoke)
        for node in self._peers.others():
            # Best effort: a node that misses it learns nothing of this token
            # until it expires (noted in docs/cluster.md).
            self._peers.notify(node, ops.TOKEN_REVOKE, revoke)

    async def _on_revoke(self, a: ops.TokenRevoke) -> None:
        self._revoked[a.token_id] = a.expires_ms
        await self._store.run(self._store.repo.revoke_token, a.token_id, a.expires_ms)


MAX_PROFILE_FIELDS = 32
MAX_FIELD_KEY = 64
MAX_FIELD_VALUE = 1024
MAX_NICKNAME = 64
MAX_AVATAR = 512


def check_profile_changes(changes: dict[str, str]) -> None:
    """Refuse a bad profile change with a clear error (pure)."""
    fields.check_changes(changes, MAX_FIELD_VALUE, "profile")
    if len(changes.get("nickname", "")) > MAX_NICKNAME:
        raise RequestError(f"a nickname has at most {MAX_NICKNAME} characters", Code.BAD_REQUEST)
    avatar = changes.get("avatar", "")
    if avatar and (len(avatar) > MAX_AVATAR or not avatar.startswith(("https://", "http://"))):
        raise RequestError(f"an avatar is an http(s) URL of at most {MAX_AVATAR} characters", Code.BAD_REQUEST)


def apply_profile_changes(profile: dict[str, Any], changes: dict[str, str]) -> dict[str, Any]:
    """The stored profile after ``changes`` ("" removes a field); raises past the field limit."""
    out = dict(profile)
    out.update({k: v for k, v in changes.items() if k in ("nickname", "avatar")})
    custom = {k: v for k, v in changes.items() if k not in ("nickname", "avatar")}
    out["fields"] = fields.merge(out.get("fields", {}), custom, MAX_PROFILE_FIELDS, "profile")
    return out


def profile_view(name: str, profile: dict[str, Any]) -> dict[str, Any]:
    return {
        "user": name, "nickname": profile.get("nickname", ""), "avatar": profile.get("avatar", ""),
        "fields": dict(profile.get("fields", {})),
    }
