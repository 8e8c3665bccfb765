"""The cluster key and the keys derived from it.

One 32-byte cluster key (also called the master key on a single node) is
the root of every secret: storage sealing, blind indexes and token signing
keys are derived from it with keyed BLAKE2b, each under its own purpose
label, so one key never serves two purposes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import nacl.utils

from timpy.errors import ConfigError

KEY_SIZE = 32
ENV_VAR = "TIMPY_CLUSTER_KEY"


def derive_key(root: bytes, purpose: str, size: int = KEY_SIZE) -> bytes:
    """BLAKE2b KDF: a subkey for ``purpose`` from ``root``."""
    return hashlib.blake2b(
        purpose.encode(), key=root, digest_size=size, person=b"timpy-kdf-v1"
    ).digest()


@dataclass(frozen=True)
class ClusterKeys:
    """The cluster key and its derived keys."""

    root: bytes

    def __post_init__(self) -> None:
        if len(self.root) != KEY_SIZE:
            raise ConfigError(f"a cluster key is {KEY_SIZE} bytes, this one is {len(self.root)}")

    @property
    def storage(self) -> bytes:
        return derive_key(self.root, "storage-seal")

    @property
    def index(self) -> bytes:
        return derive_key(self.root, "blind-index")

    @property
    def token_seed(self) -> bytes:
        return derive_key(self.root, "token-sign")

    @property
    def fingerprint(self) -> str:
        """A short public identifier of the key (safe to log)."""
        return derive_key(self.root, "fingerprint", 8).hex()

    @classmethod
    def generate(cls) -> ClusterKeys:
        return cls(nacl.utils.random(KEY_SIZE))


def encode_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii")


def decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ConfigError(f"the cluster key in {where} is not base64") from None
    if len(key) != KEY_SIZE:
        raise ConfigError(f"the cluster key in {where} is {len(key)} bytes; it must be {KEY_SIZE}")
    return key


def write_secret_file(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only; refuse to overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def load_or_create_cluster_key(path: Path, create: bool = True) -> tuple[ClusterKeys, str]:
    """The key from $TIMPY_CLUSTER_KEY, else from ``path``, else a new one written there.

    Returns the keys and a description of where they came from (for the log).
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return ClusterKeys(decode_key(env, f"${ENV_VAR}")), f"${ENV_VAR}"
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(
                f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}"
            )
        return ClusterKeys(decode_key(path.read_text(), str(path))), str(path)
    if not create:
        raise ConfigError(f"no cluster key at {path} and ${ENV_VAR} is not set")
    keys = ClusterKeys.generate()
    write_secret_file(path, encode_key(keys.root))
    return keys, f"{path} (new)"
