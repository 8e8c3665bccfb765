"""The crypto layer: cluster key and derived keys, sealing, blind indexes,
password hashing, node identity and session tokens. PyNaCl for every
primitive; hashlib.blake2b for keyed hashes (same function, ~10x cheaper to
call, see ../shared/PERFORMANCE-NOTES.md)."""
