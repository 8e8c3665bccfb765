"""Accounts: a user's sealed secret and profile, disabled flag and version;
its row also keeps where the user's inbox ends (``inbox_head``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from sqlalchemy import and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from timpy.crypto.seal import row_ad
from timpy.errors import Code, RequestError
from timpy.store import schema as s
from timpy.store.features.base import CopiedTable, StoreBase, driver_in, insert_missing
from timpy.store.rows import AccountRow, Row


class AccountsProtocol(Protocol):
    def create_account(self, user_id: bytes, secret: bytes, profile: bytes) -> None: ...

    def get_account(self, user_id: bytes) -> AccountRow | None: ...

    def get_accounts(self, user_ids: Sequence[bytes]) -> list[AccountRow | None]: ...

    def update_account(
        self, user_id: bytes, secret: bytes | None = None, profile: bytes | None = None, disabled: bool | None = None
    ) -> int: ...

    def existing_accounts(self, user_ids: Sequence[bytes]) -> set[bytes]: ...


_IN_CHUNK = 500


class AccountsStore(StoreBase):
    def create_account(self, user_id: bytes, secret: bytes, profile: bytes) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(s.accounts).values(
                        user_id=user_id,
                        secret=self._sealer.seal(secret, row_ad("accounts", user_id, "secret")),
                        profile=self._sealer.seal(profile, row_ad("accounts", user_id, "profile")),
                        disabled=False,
                        inbox_head=0,
                    )
                )
        except IntegrityError:
            raise RequestError("that user name is taken", Code.USER_EXISTS) from None

    def get_account(self, user_id: bytes) -> AccountRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.accounts).where(s.accounts.c.user_id == user_id)).first()
        if row is None:
            return None
        return AccountRow(
            user_id=user_id,
            secret=self._sealer.open(row.secret, row_ad("accounts", user_id, "secret")),
            profile=self._sealer.open(row.profile, row_ad("accounts", user_id, "profile")),
            disabled=bool(row.disabled),
            version=int(row.version),
        )

    def get_accounts(self, user_ids: Sequence[bytes]) -> list[AccountRow | None]:
        """``get_account`` for many at once (logins that arrive together):
        one statement per 500 keys through the DB-API, fixed SQL."""
        keys = list(dict.fromkeys(user_ids))
        found: dict[bytes, AccountRow] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(keys), _IN_CHUNK):
                for uid, secret, profile, disabled, version in driver_in(
                    conn, "SELECT user_id, secret, profile, disabled, version FROM accounts WHERE user_id IN",
                    keys[start : start + _IN_CHUNK],
                ):
                    uid = bytes(uid)
                    found[uid] = AccountRow(
                        user_id=uid,
                        secret=self._sealer.open(bytes(secret), row_ad("accounts", uid, "secret")),
                        profile=self._sealer.open(bytes(profile), row_ad("accounts", uid, "profile")),
                        disabled=bool(disabled),
                        version=int(version),
                    )
        return [found.get(bytes(u)) for u in user_ids]

    def update_account(
        self, user_id: bytes, secret: bytes | None = None, profile: bytes | None = None, disabled: bool | None = None
    ) -> int:
        """Change an account's secret, profile or disabled flag; returns its new
        version (0 = no such account)."""
        a = s.accounts
        values: dict[str, Any] = {"version": a.c.version + 1}
        if secret is not None:
            values["secret"] = self._sealer.seal(secret, row_ad("accounts", user_id, "secret"))
        if profile is not None:
            values["profile"] = self._sealer.seal(profile, row_ad("accounts", user_id, "profile"))
        if disabled is not None:
            values["disabled"] = bool(disabled)
        with self.engine.begin() as conn:
            if not conn.execute(update(a).where(a.c.user_id == user_id).values(**values)).rowcount:
                return 0
            return int(conn.execute(select(a.c.version).where(a.c.user_id == user_id)).scalar_one())

    def existing_accounts(self, user_ids: Sequence[bytes]) -> set[bytes]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(s.accounts.c.user_id).where(s.accounts.c.user_id.in_(list(user_ids)))
            )
            return {bytes(r.user_id) for r in rows}


class AccountsTable(CopiedTable):
    name, wire, table, key_column, kinds = "accounts", 0, s.accounts, "user_id", ("user",)
    marks_held = True
    columns = "user, sealed secret, sealed profile, disabled, version"

    def unpack(self, raw: Any) -> Row:
        u, x, p, d, v = raw
        return bytes(u), bytes(x), bytes(p), bool(d), int(v)

    def rows_of(self, conn: Any, kind: str, key: bytes) -> list[Row]:
        a = s.accounts
        acc = conn.execute(select(a).where(a.c.user_id == key)).first()
        if acc is None:
            return []
        return [(key, bytes(acc.secret), bytes(acc.profile), bool(acc.disabled), int(acc.version))]

    def apply(self, repo: StoreBase, conn: Any, rows: list[Row]) -> int:
        """A new account, or a newer version of one (the copy wins). The inbox
        head is not copied: it follows the inbox rows that land."""
        a = s.accounts
        added = 0
        have = {
            bytes(r.user_id): int(r.version)
            for r in conn.execute(select(a.c.user_id, a.c.version).where(a.c.user_id.in_([r[0] for r in rows])))
        }
        fresh = [
            dict(user_id=u, secret=sec, profile=prof, disabled=bool(dis), inbox_head=0, version=ver)
            for u, sec, prof, dis, ver in rows
            if u not in have
        ]
        if fresh:
            insert_missing(conn, a, fresh)
            added += len(fresh)
        for u, sec, prof, dis, ver in rows:
            if u in have and ver > have[u]:  # a newer account: the copy wins
                conn.execute(
                    update(a).where(and_(a.c.user_id == u, a.c.version < ver))
                    .values(secret=sec, profile=prof, disabled=bool(dis), version=ver)
                )
                added += 1
        return added

    def digest(self, conn: Any, kind: str, keys: list[bytes]) -> Iterable[tuple[bytes, tuple[object, ...] | None]]:
        a = s.accounts
        for row in conn.execute(select(a.c.user_id, a.c.version, a.c.disabled).where(a.c.user_id.in_(keys))):
            yield bytes(row.user_id), ("account", int(row.version), bool(row.disabled))

    def stats(self, conn: Any, kind: str, keys: list[bytes]) -> dict[bytes, int] | None:
        a = s.accounts
        return {bytes(r[0]): int(r[1]) for r in conn.execute(select(a.c.user_id, a.c.version).where(a.c.user_id.in_(keys)))}


ACCOUNTS = AccountsTable()
