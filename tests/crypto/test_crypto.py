import hashlib
import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timpy.crypto.blind import BlindIndexer
from timpy.crypto.keys import ClusterKeys, derive_key, encode_key, load_or_create_cluster_key
from timpy.crypto.passwords import hash_password, verify_password
from timpy.crypto.seal import KEPT_SIZE_MAX, Sealer, message_ad, row_ad
from timpy.crypto.tokens import TokenAuthority
from timpy.errors import AuthError, Code, ConfigError, StorageError

KEY = bytes(range(32))


@given(st.binary(max_size=500), st.binary(max_size=50))
def test_seal_round_trip(plain, ad):
    s = Sealer(KEY)
    assert s.open(s.seal(plain, ad), ad) == plain


def test_sealed_value_moved_to_another_row_fails():
    s = Sealer(KEY)
    sealed = s.seal(b"hello", row_ad("messages", b"c" * 16, 1))
    with pytest.raises(StorageError):
        s.open(sealed, row_ad("messages", b"c" * 16, 2))
    with pytest.raises(StorageError):
        s.open(sealed, row_ad("accounts", b"c" * 16, 1))


@given(st.integers(0, 40))
def test_tampering_fails(i):
    s = Sealer(KEY)
    sealed = bytearray(s.seal(b"hello world", b"ad"))
    sealed[i % len(sealed)] ^= 1
    with pytest.raises(StorageError):
        s.open(bytes(sealed), b"ad")


def test_other_key_fails():
    sealed = Sealer(KEY).seal(b"x", b"ad")
    with pytest.raises(StorageError):
        Sealer(bytes(32)).open(sealed, b"ad")


@given(st.binary(min_size=0, max_size=40), st.integers(-(2**63), 2**63 - 1))
def test_message_ad_is_row_ad_of_a_message(conv_id, seq):
    assert message_ad(conv_id, seq) == row_ad("messages", conv_id, seq)


def test_kept_values_answer_only_the_same_bytes_under_the_same_row():
    """What the sealer keeps in memory is looked up by the exact sealed bytes
    and associated data: a moved, altered or foreign value still fails, and a
    kept one opens to the same plaintext."""
    s = Sealer(KEY)
    ad = row_ad("messages", b"c" * 16, 1)
    sealed = s.seal(b"hello", ad)
    assert s.open(sealed, ad) == b"hello"  # kept when sealed
    with pytest.raises(StorageError):
        s.open(sealed, row_ad("messages", b"c" * 16, 2))
    altered = bytearray(sealed)
    altered[-1] ^= 1
    with pytest.raises(StorageError):
        s.open(bytes(altered), ad)
    fresh = Sealer(KEY)  # nothing kept: opened and authenticated
    assert fresh.open(sealed, ad) == b"hello"
    assert fresh.open(sealed, ad) == b"hello"  # kept when opened


def test_the_sealer_keeps_a_bounded_number_of_small_values():
    s = Sealer(KEY, kept=8)
    for i in range(50):
        s.seal(b"x%d" % i, b"ad%d" % i)
    assert len(s._opened) <= 9
    big = b"y" * (KEPT_SIZE_MAX + 1)
    s.open(s.seal(big, b"big"), b"big")
    assert all(len(v) <= KEPT_SIZE_MAX for v in s._opened.values())
    off = Sealer(KEY, kept=0)
    assert off.open(off.seal(b"z", b"ad"), b"ad") == b"z"
    assert not off._opened


def test_row_ad_is_unambiguous():
    assert row_ad("t", b"ab", b"c") != row_ad("t", b"a", b"bc")


def test_derived_keys_differ_by_purpose_and_root():
    k = ClusterKeys(KEY)
    assert len({k.storage, k.index, k.token_seed}) == 3
    assert derive_key(KEY, "x") != derive_key(bytes(32), "x")


def test_blind_index_is_keyed_and_deterministic():
    a, b = BlindIndexer(KEY), BlindIndexer(bytes(32))
    assert a.index("user", "alice") == a.index("user", "alice")
    assert a.index("user", "alice") != b.index("user", "alice")
    assert a.index("user", "ab", "c") != a.index("user", "a", "bc")


@given(purpose=st.text(max_size=20), parts=st.lists(st.binary(max_size=40) | st.text(max_size=20), max_size=4))
def test_blind_indexes_are_the_keyed_blake2b_of_their_layout(purpose, parts):
    """Stored ids are blind indexes: the value for the same input never changes."""
    h = hashlib.blake2b(key=KEY, digest_size=16, person=b"timpy-blind-v1")
    h.update(purpose.encode())
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    indexer = BlindIndexer(KEY)
    assert indexer.index(purpose, *parts) == h.digest()
    assert indexer.index(purpose, *parts) == h.digest()  # the kept start state is not consumed


KNOWN_ALICE = "5568193538b9bf16654feb1b39d33af6"  # computed before the kept start state


def test_a_blind_index_keeps_its_known_value():
    assert BlindIndexer(bytes(range(32))).index("user", "alice").hex() == KNOWN_ALICE


def test_passwords():
    h = hash_password("s3cret-pass", 1, 8192)
    assert b"s3cret" not in h
    assert verify_password(h, "s3cret-pass")
    assert not verify_password(h, "s3cret-pasS")


def test_tokens():
    auth = TokenAuthority(derive_key(KEY, "token-sign"))
    token, claims = auth.issue("alice", "phone", now_ms=1000, ttl_ms=5000)
    got = auth.verify(token, now_ms=2000)
    assert (got.user, got.device, got.token_id) == ("alice", "phone", claims.token_id)
    with pytest.raises(AuthError) as e:
        auth.verify(token, now_ms=6000)
    assert e.value.code == Code.TOKEN_EXPIRED
    other = TokenAuthority(derive_key(bytes(32), "token-sign"))
    with pytest.raises(AuthError) as e:
        other.verify(token, now_ms=2000)
    assert e.value.code == Code.TOKEN_INVALID
    body, sig = token.split(".")
    forged_body, _ = auth.issue("mallory", "phone", 1000, 5000)[0].split(".")
    with pytest.raises(AuthError):
        auth.verify(f"{forged_body}.{sig}", 2000)


@given(st.text(max_size=80))
def test_garbage_tokens_are_invalid(t):
    auth = TokenAuthority(derive_key(KEY, "token-sign"))
    with pytest.raises(AuthError):
        auth.verify(t, 0)


def test_key_file_created_private_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv("TIMPY_CLUSTER_KEY", raising=False)
    path = tmp_path / "d" / "cluster.key"
    k1, where = load_or_create_cluster_key(path)
    assert "new" in where
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    k2, _ = load_or_create_cluster_key(path)
    assert k1 == k2
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_cluster_key(path)


def test_key_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TIMPY_CLUSTER_KEY", encode_key(KEY))
    k, where = load_or_create_cluster_key(tmp_path / "none.key")
    assert k.root == KEY and not (tmp_path / "none.key").exists()
    monkeypatch.setenv("TIMPY_CLUSTER_KEY", "too-short")
    with pytest.raises(ConfigError):
        load_or_create_cluster_key(tmp_path / "none.key")


def test_kept_indexes_are_the_indexes_and_stay_bounded(monkeypatch):
    import timpy.crypto.blind as blind
    from timpy.errors import RequestError
    from timpy.im import ids

    monkeypatch.setattr(blind, "KEPT_MAX", 3)
    indexer = blind.BlindIndexer(b"k" * 32)
    made = []

    def make(name):
        made.append(name)
        return indexer.index("user", ids.normalize_name(name))

    assert ids.user_id(indexer, "Alice") == indexer.index("user", "alice") == ids.user_id(indexer, "alice")
    assert ids.direct_conversation(indexer, b"a", b"b") == ids.direct_conversation(indexer, b"b", b"a")
    assert ids.direct_conversation(indexer, b"a", b"b") == indexer.index("conv-direct", b"a", b"b")
    assert indexer.kept("x", lambda: make("bob")) == indexer.kept("x", lambda: make("carol")) and made == ["bob"]
    for n in range(10):  # never more than KEPT_MAX kept
        indexer.kept(("n", n), lambda n=n: make(f"u{n}"))
        assert len(indexer._kept) <= 3
    with pytest.raises(RequestError):  # a refused name is refused every time, never kept
        ids.user_id(indexer, "bad name!")
    with pytest.raises(RequestError):
        ids.user_id(indexer, "bad name!")
