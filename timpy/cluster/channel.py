"""The node-to-node secure channel, sans-IO: handshake and frame protection.

Handshake (two messages, msgpack):
1. initiator -> responder: ``[1, "hello", eph_i, ident_i, sig_i, mac_i]``
2. responder -> initiator: ``[1, "welcome", eph_r, ident_r, sig_r, mac_r]``

``eph`` are fresh X25519 public keys; ``ident`` are the nodes' Ed25519 public
keys, each signing its own ephemeral key and the transcript so far; ``mac`` is
keyed BLAKE2b under a key derived from the cluster key over the transcript so
far. Without the cluster key a node can neither produce nor check a valid mac:
it is refused, and both sides can say why. Session keys are BLAKE2b under the
cluster-derived key of the X25519 shared secret and the whole transcript, one
key per direction.

Frames: XChaCha20-Poly1305 with a 64-bit counter in the nonce, so nonces never
repeat under a key; the receiver drops any counter it has seen (a sliding
window of 64 for datagram paths, exact order for streams), and any frame that
fails to open.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import msgpack
import nacl.bindings as nb
import nacl.exceptions
import nacl.public
import nacl.signing

from timpy.crypto import aead
from timpy.crypto.keys import ClusterKeys, derive_key

VERSION = 1
_TAG = 16
_WINDOW = 64


class ChannelError(Exception):
    """The peer could not be authenticated, or a frame was forged or replayed."""


class KeyMismatch(ChannelError):
    """The peer does not hold our cluster key (or we do not hold its)."""


def _mac(key: bytes, transcript: bytes) -> bytes:
    return hashlib.blake2b(transcript, key=key, digest_size=32, person=b"timpy-hs-mac-v1").digest()


def _pack(*items: object) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


def _unpack(data: bytes, kind: str) -> list:
    try:
        msg = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several kinds on garbage
        raise ChannelError(f"malformed handshake message: {type(exc).__name__}") from None
    if not isinstance(msg, list) or len(msg) != 6 or msg[0] != VERSION or msg[1] != kind:
        raise ChannelError(f"expected a version {VERSION} {kind!r} handshake message")
    for part in msg[2:]:
        if not isinstance(part, bytes):
            raise ChannelError("malformed handshake message")
    return msg


@dataclass(frozen=True)
class PeerIdentity:
    verify_key: bytes  # Ed25519 public key

    @property
    def node_id(self) -> str:
        return self.verify_key[:8].hex()


class _Side:
    def __init__(self, keys: ClusterKeys, identity: nacl.signing.SigningKey) -> None:
        self._mac_key = derive_key(keys.root, "peer-handshake-mac")
        self._kdf_key = derive_key(keys.root, "peer-session-kdf")
        self._identity = identity
        self._eph = nacl.public.PrivateKey.generate()

    def _message(self, kind: str, transcript: bytes) -> tuple[bytes, bytes]:
        eph = bytes(self._eph.public_key)
        ident = bytes(self._identity.verify_key)
        body = transcript + kind.encode() + eph + ident
        sig = self._identity.sign(body).signature
        mac = _mac(self._mac_key, body + sig)
        return _pack(VERSION, kind, eph, ident, sig, mac), body + sig + mac

    def _check(self, msg: list, transcript: bytes) -> tuple[bytes, PeerIdentity, bytes]:
        _, kind, eph, ident, sig, mac = msg
        body = transcript + kind.encode() + eph + ident
        if len(eph) != 32 or len(ident) != 32 or len(sig) != 64:
            raise ChannelError("malformed handshake keys")
        expected = _mac(self._mac_key, body + sig)
        if not hmac.compare_digest(expected, mac):
            raise KeyMismatch("the peer's handshake does not carry our cluster key")
        try:
            nacl.signing.VerifyKey(ident).verify(body, sig)
        except nacl.exceptions.BadSignatureError:
            raise ChannelError("the peer's identity signature is invalid") from None
        return eph, PeerIdentity(ident), body + sig + mac

    def _session(self, peer_eph: bytes, transcript: bytes, initiator: bool) -> SecureChannel:
        shared = nb.crypto_scalarmult(bytes(self._eph), peer_eph)
        okm = hashlib.blake2b(shared + hashlib.blake2b(transcript).digest(), key=self._kdf_key, digest_size=64).digest()
        i2r, r2i = okm[:32], okm[32:]
        return SecureChannel(send_key=i2r if initiator else r2i, receive_key=r2i if initiator else i2r)


class Initiator(_Side):
    def start(self) -> bytes:
        msg, self._transcript = self._message("hello", b"")
        return msg

    def finish(self, welcome: bytes) -> tuple[SecureChannel, PeerIdentity]:
        eph, peer, transcript = self._check(_unpack(welcome, "welcome"), self._transcript)
        return self._session(eph, transcript, initiator=True), peer


class Responder(_Side):
    def accept(self, hello: bytes) -> tuple[bytes, SecureChannel, PeerIdentity]:
        """Check a hello; return the welcome to send, the channel and who the peer is."""
        eph, peer, transcript = self._check(_unpack(hello, "hello"), b"")
        welcome, transcript = self._message("welcome", transcript)
        return welcome, self._session(eph, transcript, initiator=False), peer


class SecureChannel:
    """Seals outgoing and opens incoming frames of one established channel."""

    def __init__(self, send_key: bytes, receive_key: bytes) -> None:
        self._send_key = send_key
        self._receive_key = receive_key
        self._send_counter = 0
        self._highest = 0  # highest counter accepted
        self._window = 0  # bit i set: counter (highest - i) was accepted

    def seal(self, plaintext: bytes) -> bytes:
        self._send_counter += 1
        counter = self._send_counter.to_bytes(8, "big")
        nonce = bytes(16) + counter
        return counter + aead.encrypt(plaintext, counter, nonce, self._send_key)

    def open(self, frame: bytes) -> bytes:
        if len(frame) < 8 + _TAG:
            raise ChannelError("frame too short")
        counter = int.from_bytes(frame[:8], "big")
        if counter == 0 or self._seen(counter):
            raise ChannelError(f"replayed frame (counter {counter})")
        try:
            plain = aead.decrypt(frame[8:], frame[:8], bytes(16) + frame[:8], self._receive_key)
        except nacl.exceptions.CryptoError:
            raise ChannelError("forged or corrupted frame") from None
        self._accept(counter)  # only after it authenticated
        return plain

    def _seen(self, counter: int) -> bool:
        if counter > self._highest:
            return False
        age = self._highest - counter
        return age >= _WINDOW or bool(self._window >> age & 1)

    def _accept(self, counter: int) -> None:
        if counter > self._highest:
            shift = counter - self._highest
            self._window = ((self._window << shift) | 1) & ((1 << _WINDOW) - 1)
            self._highest = counter
        else:
            self._window |= 1 << (self._highest - counter)
