"""``timpy.crypto.aead`` calls libsodium with fewer checks than pynacl's
wrappers: it must seal to the very bytes pynacl seals to, open exactly what
pynacl opens, refuse what pynacl refuses, and never read past a short key
or nonce."""

from __future__ import annotations

import nacl.bindings as nb
import nacl.exceptions
import pytest
from hypothesis import given
from hypothesis import strategies as st

from timpy.crypto import aead

keys = st.binary(min_size=32, max_size=32)
nonces = st.binary(min_size=24, max_size=24)


def test_the_fast_path_is_in_use():
    assert aead._lib is not None, "pynacl's compiled module moved: timpy.crypto.aead fell back to the slow wrappers"


@given(plaintext=st.binary(max_size=3000), ad=st.binary(max_size=100), nonce=nonces, key=keys)
def test_it_seals_and_opens_as_pynacl_does(plaintext, ad, nonce, key):
    sealed = aead.encrypt(plaintext, ad, nonce, key)
    assert sealed == nb.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)
    assert len(sealed) == len(plaintext) + aead.TAG_SIZE
    assert aead.decrypt(sealed, ad, nonce, key) == plaintext


@given(plaintext=st.binary(max_size=300), ad=st.binary(max_size=40), nonce=nonces, key=keys,
       where=st.integers(0, 10_000), what=st.sampled_from(["ciphertext", "ad", "nonce", "key", "short"]))
def test_anything_altered_fails_to_open_as_with_pynacl(plaintext, ad, nonce, key, where, what):
    sealed = aead.encrypt(plaintext, ad, nonce, key)

    def flip(b: bytes) -> bytes:
        if not b:
            return b"\x00"
        i = where % len(b)
        return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1:]

    args = {"ciphertext": (flip(sealed), ad, nonce, key), "ad": (sealed, flip(ad), nonce, key),
            "nonce": (sealed, ad, flip(nonce), key), "key": (sealed, ad, nonce, flip(key)),
            "short": (sealed[: where % aead.TAG_SIZE], ad, nonce, key)}[what]
    with pytest.raises((nacl.exceptions.CryptoError, ValueError)):  # pynacl: ValueError when shorter than a tag
        nb.crypto_aead_xchacha20poly1305_ietf_decrypt(*args)
    with pytest.raises(nacl.exceptions.CryptoError):
        aead.decrypt(*args)


@pytest.mark.parametrize("nonce, key", [(b"n" * 23, b"k" * 32), (b"n" * 24, b"k" * 31), (b"n" * 25, b"k" * 32),
                                        (b"n" * 24, b"")])
def test_a_key_or_nonce_of_the_wrong_length_is_refused_before_libsodium_reads_it(nonce, key):
    with pytest.raises(ValueError):
        aead.encrypt(b"hello", b"ad", nonce, key)
    with pytest.raises(ValueError):
        aead.decrypt(b"x" * 40, b"ad", nonce, key)


@pytest.mark.parametrize("value", [bytearray(b"hello"), memoryview(b"hello"), "hello"])
def test_only_bytes_are_taken(value):
    with pytest.raises(TypeError):
        aead.encrypt(value, b"", b"n" * 24, b"k" * 32)
    with pytest.raises(TypeError):
        aead.decrypt(b"x" * 40, value, b"n" * 24, b"k" * 32)
