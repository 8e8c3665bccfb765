"""Sealing draws its random nonces from the OS a block at a time, per thread
(``timpy.crypto.seal._Nonces``): no nonce may ever come twice, in one thread,
across threads, or in a forked child after its parent."""

from __future__ import annotations

import os
import threading

from timpy.crypto.seal import NONCE_SIZE, NONCES_DRAWN, Sealer, _nonces


def _nonce_of(sealed: bytes) -> bytes:
    return sealed[:NONCE_SIZE]


def test_every_sealed_value_has_a_nonce_of_its_own_and_still_opens():
    sealer = Sealer(os.urandom(32), kept=0)
    sealed = [sealer.seal(b"hello %d" % i, b"row") for i in range(NONCES_DRAWN * 3 + 7)]  # across several blocks
    nonces = [_nonce_of(v) for v in sealed]
    assert len(set(nonces)) == len(nonces)
    assert all(len(n) == NONCE_SIZE for n in nonces)
    assert [sealer.open(v, b"row") for v in sealed] == [b"hello %d" % i for i in range(len(sealed))]


def test_threads_never_share_a_nonce():
    sealer = Sealer(os.urandom(32), kept=0)
    got: list[list[bytes]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def run(k: int) -> None:
        start.wait()
        got[k] += [_nonce_of(sealer.seal(b"x", b"row")) for _ in range(NONCES_DRAWN * 2)]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    every = [n for g in got for n in g]
    assert len(every) == 4 * NONCES_DRAWN * 2
    assert len(set(every)) == len(every)


def test_a_forked_child_never_takes_the_nonces_its_parent_drew():
    _nonces.take()  # a block drawn, most of it left
    left = _nonces.block[_nonces.at:]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next nonces, to the parent
        try:
            os.write(write, b"".join(_nonces.take() for _ in range(8)))
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = b""
        for _ in range(100):
            part = os.read(read, 4096)
            if not part:
                break
            child += part
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    taken = [child[i:i + NONCE_SIZE] for i in range(0, len(child), NONCE_SIZE)]
    assert len(taken) == 8
    parents = {left[i:i + NONCE_SIZE] for i in range(0, len(left), NONCE_SIZE)}
    assert not parents & set(taken)
    assert _nonces.take() == left[:NONCE_SIZE]  # the parent goes on with its own block
