"""XChaCha20-Poly1305 (IETF), the one cipher a node uses for stored rows
(``seal``) and for the peer channel (``timpy.cluster.channel``).

The same libsodium functions pynacl's ``nacl.bindings`` call, through the
compiled module pynacl ships (``nacl._sodium``), with only the checks that
keep the call safe (the key's and the nonce's lengths, bytes in): pynacl's
general wrapper took about 5.3 µs to seal or open a 140-byte message on the
development machine, this takes about 2.2 µs, and a node seals or opens
several values for every message it stores, copies or relays. Where the
compiled module cannot be imported (another pynacl layout), pynacl's own
functions are used. Results are byte for byte pynacl's
(``tests/crypto/test_aead.py``).
"""

from __future__ import annotations

import nacl.bindings as nb
import nacl.exceptions

KEY_SIZE = nb.crypto_aead_xchacha20poly1305_ietf_KEYBYTES
NONCE_SIZE = nb.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
TAG_SIZE = nb.crypto_aead_xchacha20poly1305_ietf_ABYTES

try:
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover - another pynacl layout: its checked wrappers
    _ffi = _lib = None


def _check(nonce: bytes, key: bytes, *values: bytes) -> None:
    if len(key) != KEY_SIZE or len(nonce) != NONCE_SIZE:
        raise ValueError(f"a key is {KEY_SIZE} bytes and a nonce {NONCE_SIZE}")
    for v in (nonce, key, *values):
        if type(v) is not bytes:
            raise TypeError("sealing and opening take bytes")


def encrypt(plaintext: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes:
    """The ciphertext and its tag (``len(plaintext) + TAG_SIZE`` bytes)."""
    if _lib is None:  # pragma: no cover
        return nb.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)
    _check(nonce, key, plaintext, ad)
    n = len(plaintext) + TAG_SIZE
    out = _ffi.new("unsigned char[]", n)
    _lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        out, _ffi.NULL, plaintext, len(plaintext), ad, len(ad), _ffi.NULL, nonce, key
    )
    return _ffi.buffer(out, n)[:]


def decrypt(ciphertext: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes:
    """The plaintext; ``nacl.exceptions.CryptoError`` when the ciphertext, its
    tag or ``ad`` was altered, or it was sealed under another key or nonce."""
    if _lib is None:  # pragma: no cover
        return nb.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key)
    _check(nonce, key, ciphertext, ad)
    n = len(ciphertext) - TAG_SIZE
    if n < 0:
        raise nacl.exceptions.CryptoError("Decryption failed. Ciphertext failed verification")
    out = _ffi.new("unsigned char[]", max(n, 1))
    if _lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
        out, _ffi.NULL, _ffi.NULL, ciphertext, len(ciphertext), ad, len(ad), nonce, key
    ) != 0:
        raise nacl.exceptions.CryptoError("Decryption failed. Ciphertext failed verification")
    return _ffi.buffer(out, n)[:]
