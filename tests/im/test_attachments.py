"""Files and media through the client library: on one node over TCP, and
across the three nodes of an in-memory cluster (``timpy.testing``, mock
clock): chunked, resumable uploads with their SHA-256 checked, downloads by
members only, file messages, deletion when the last reference is recalled
or burned, retention."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import timpy
from tests.conftest import FAST_SECURITY, PASSWORD, node_config, users
from tests.support.clients import clients, code_of
from timpy.client import Connector, HashMismatch
from timpy.client.files import Attachment
from timpy.config import FilesConfig, NodeConfig
from timpy.testing import open_cluster
from timpy.wire.messages import KIND_FILE, FileRef

CHUNK = 1024
WHERE = pytest.mark.parametrize("where", ["one", "three"])


@pytest.fixture
def clock(where: str) -> trio.testing.MockClock | None:
    return trio.testing.MockClock(autojump_threshold=0) if where == "three" else None


@asynccontextmanager
async def place(where: str, **files: object) -> AsyncIterator[tuple[list[str | Connector], list[timpy.Node]]]:
    cfg = FilesConfig(**{"chunk_size": CHUNK, **files})
    if where == "one":
        async with timpy.open_node(node_config(files=cfg)) as n:
            yield [n.tcp_url] * 3, [n]
        return
    async with open_cluster(3, config=NodeConfig(security=FAST_SECURITY, files=cfg)) as cluster:
        yield [cluster.connector(i) for i in range(3)], cluster.nodes


def content(n: int) -> bytes:
    return os.urandom(n)


@WHERE
async def test_upload_send_and_download_by_members_only(where, clock, tmp_path):
    data = content(10 * CHUNK + 123)
    async with place(where) as (at, nodes), clients(at, "ann", "ben", "cid") as (ann, ben, cid):
        seen: list[tuple[int, int]] = []
        att = await ann.upload(data, name="photo.jpg", progress=lambda done, total: seen.append((done, total)))
        assert (att.name, att.size, att.mime, att.chunks) == ("photo.jpg", len(data), "image/jpeg", 11)
        assert att.sha256 == hashlib.sha256(data).hexdigest()
        assert seen[-1] == (len(data), len(data)) and len(seen) == 12
        # The uploader reads it; others may not until it is sent to them.
        assert await ann.download(att.id) == data
        assert await code_of(ben.download(att.id)) == timpy.Code.NOT_ALLOWED
        ack = await ann.send_file(att, to="ben", thumbnail=b"tiny")
        m = await ben.next_message(timeout=10)
        assert m.kind == KIND_FILE and m.seq == ack.seq
        ref = FileRef.unpack(m.body)
        assert (ref.attachment, ref.name, ref.size, ref.thumbnail) == (att.id, "photo.jpg", len(data), b"tiny")
        out = await ben.download(ref, tmp_path / "got.jpg")
        assert out.read_bytes() == data
        info = await ben.attachment(att.id)
        assert info.sha256 == att.sha256
        # cid is in no conversation where it was sent: refused, and cannot pass it on.
        assert await code_of(cid.download(att.id)) == timpy.Code.NOT_ALLOWED
        assert await code_of(cid.send_file(att, to="ann")) == timpy.Code.NOT_ALLOWED
        # ben may pass it on to cid, who then reads it.
        await ben.send_file(att, to="cid")
        assert (await cid.next_message(timeout=10)).kind == KIND_FILE
        assert await cid.download(att.id) == data
        # A file message must match the file.
        wrong = Attachment(att.id, att.name, att.size + 1, att.mime, att.sha256, att.chunk_size, att.chunks)
        assert await code_of(ann.send_file(wrong, to="ben")) == timpy.Code.INVALID_MESSAGE
        assert await code_of(ann.send("ben", b"not a reference", kind=KIND_FILE)) == timpy.Code.INVALID_MESSAGE
        assert await code_of(ann.edit(ack.seq, "x", to="ben")) == timpy.Code.NOT_ALLOWED
        assert await code_of(ann.download("00" * 16)) == timpy.Code.NO_SUCH_FILE
        assert await code_of(ann.download("nonsense")) == timpy.Code.NO_SUCH_FILE


@WHERE
async def test_resumed_upload_sends_only_what_is_missing(where, clock):
    data = content(8 * CHUNK)
    async with place(where) as (at, nodes), clients(at, "dan") as (dan,):
        upload_id = await dan.begin_upload(data, name="notes.bin")

        class Interrupted(Exception):
            pass

        def stop_after_three(done: int, total: int) -> None:
            if done >= 3 * CHUNK:
                raise Interrupted

        with pytest.raises(Interrupted):
            await dan.upload(data, name="notes.bin", upload_id=upload_id, progress=stop_after_three)
        # Not finished: nobody can read it yet, not even its uploader.
        assert await code_of(dan.download(upload_id)) == timpy.Code.NO_SUCH_FILE
        progress: list[int] = []
        att = await dan.upload(data, name="notes.bin", upload_id=upload_id, progress=lambda d, t: progress.append(d))
        assert att.id == upload_id
        assert progress[0] >= 3 * CHUNK  # what the node had was not sent again
        assert len(progress) <= 1 + 8 - 3
        assert await dan.download(att.id) == data


@WHERE
async def test_a_hash_mismatch_is_refused_and_nothing_is_kept(where, clock):
    data = content(3 * CHUNK)
    async with place(where) as (at, nodes), clients(at, "eve") as (eve,):
        upload_id = await eve.begin_upload(data, name="a.bin")
        for i in range(3):
            chunk = data[i * CHUNK:(i + 1) * CHUNK]
            if i == 1:
                chunk = bytes([chunk[0] ^ 1]) + chunk[1:]  # one bit changed on the way
            await eve.request("upload_chunk", upload_id=upload_id, index=i, data=chunk)
        assert await code_of(eve.request("upload_finish", upload_id=upload_id)) == timpy.Code.HASH_MISMATCH
        assert await code_of(eve.download(upload_id)) == timpy.Code.NO_SUCH_FILE
        for n in nodes:
            assert await n.store.run(n.store.repo.get_attachment, bytes.fromhex(upload_id)) is None
        # Bad declarations and chunks are clear errors.
        assert await code_of(eve.request("upload_start", name="big", size=10**12, sha256="0" * 64)) == (
            timpy.Code.FILE_TOO_LARGE)
        assert await code_of(eve.request("upload_start", name="x", size=1, sha256="nothex")) == timpy.Code.BAD_REQUEST
        upload_id = await eve.begin_upload(data, name="b.bin")
        assert await code_of(eve.request("upload_chunk", upload_id=upload_id, index=0, data=b"short")) == (
            timpy.Code.BAD_REQUEST)
        assert await code_of(eve.request("upload_chunk", upload_id=upload_id, index=7, data=b"x")) == (
            timpy.Code.BAD_REQUEST)
        assert await code_of(eve.request("upload_finish", upload_id=upload_id)) == timpy.Code.BAD_REQUEST


@WHERE
async def test_deleted_when_every_reference_is_recalled_or_burned(where, clock):
    data = content(2 * CHUNK + 5)
    async with place(where) as (at, nodes), clients(at, "fay", "gil", "hoy") as (fay, gil, hoy):
        att = await fay.upload(data, name="doc.pdf")
        a1 = await fay.send_file(att, to="gil")
        a2 = await fay.send_file(att, to="hoy", burn=True)
        await gil.next_message(timeout=10)
        await hoy.next_message(timeout=10)
        await trio.sleep(2)  # the references are recorded in the background
        await fay.recall(a1.seq, to="gil")
        await trio.sleep(2)
        assert await hoy.download(att.id) == data  # one reference left
        await hoy.receipt(a2.conversation, a2.seq, read=True)  # burned once read
        for _ in range(50):
            await trio.sleep(0.2)
            if all([await n.store.run(n.store.repo.get_attachment, bytes.fromhex(att.id)) is None for n in nodes]):
                break
        for n in nodes:
            assert await n.store.run(n.store.repo.get_attachment, bytes.fromhex(att.id)) is None
            assert await n.store.run(n.store.repo.get_chunk, bytes.fromhex(att.id), 0) is None
        assert await code_of(fay.download(att.id)) == timpy.Code.NO_SUCH_FILE


@WHERE
async def test_retention_and_expired_uploads(where, clock):
    async with place(where, retention=3, upload_expiry=1.5) as (at, nodes), clients(at, "ida") as (ida,):
        kept = await ida.upload(content(CHUNK), name="a")
        await ida.begin_upload(content(CHUNK), name="b")
        await trio.sleep(2)
        assert sum([await n.attachments.sweep() for n in nodes]) >= 1  # the unfinished upload
        assert await ida.download(kept.id)
        await trio.sleep(2)
        assert sum([await n.attachments.sweep() for n in nodes]) >= 1
        assert await code_of(ida.download(kept.id)) == timpy.Code.NO_SUCH_FILE


async def test_a_downloaded_file_that_does_not_match_its_hash_is_refused():
    from timpy.client import files

    async def request(op: str, payload: object = None, **fields: object):  # a node that serves altered content
        from timpy.wire import protocol as wp

        if op == "attachment_request":
            return "attachment", wp.thrift.Attachment(
                id="ab", name="x", size=4, mime="", sha256=hashlib.sha256(b"abcd").hexdigest(), chunk_size=4, chunks=1
            )
        return "chunk", wp.thrift.Chunk(id="ab", index=0, data=b"abce")

    with pytest.raises(HashMismatch):
        await files.download(request, "ab", None, None)


def http_get(address: tuple[str, int], path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://{address[0]}:{address[1]}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


async def test_signed_urls_with_range_requests_for_browsers():
    data = content(5 * CHUNK + 17)
    async with place("one") as (at, nodes), clients(at, "kim", "lou") as (kim, lou):
        admin = nodes[0].admin_address
        att = await kim.upload(data, name="cat picture.png")
        signed = await kim.file_url(att.id)
        assert signed.url.startswith(f"/files/{att.id}?") and signed.url_expires > 0
        status, headers, body = await trio.to_thread.run_sync(http_get, admin, signed.url)
        assert status == 200 and body == data
        assert headers["Content-Type"] == "image/png" and "cat%20picture.png" in headers["Content-Disposition"]
        for header, start, end in [("bytes=0-99", 0, 99), ("bytes=1000-3000", 1000, 3000), ("bytes=-10", len(data) - 10,
                                   len(data) - 1), (f"bytes={len(data) - 5}-", len(data) - 5, len(data) - 1)]:
            status, headers, body = await trio.to_thread.run_sync(http_get, admin, signed.url, {"Range": header})
            assert status == 206 and body == data[start:end + 1], header
            assert headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
        status, _, _ = await trio.to_thread.run_sync(http_get, admin, signed.url, {"Range": f"bytes={len(data)}-"})
        assert status == 416
        # A URL cannot be moved to another file or user, or changed; lou is no member.
        for bad in (signed.url.replace("u=kim", "u=lou"), signed.url[:-1] + ("0" if signed.url[-1] != "0" else "1"),
                    signed.url.replace(f"e={signed.url_expires}", f"e={signed.url_expires + 1}")):
            status, _, body = await trio.to_thread.run_sync(http_get, admin, bad)
            assert status == 403 and b"not valid" in body
        assert await code_of(lou.file_url(att.id)) == timpy.Code.NOT_ALLOWED


async def test_a_url_expires():
    async with place("one", url_ttl=1) as (at, nodes), clients(at, "max") as (mx,):
        att = await mx.upload(content(100), name="a.txt")
        signed = await mx.file_url(att.id)
        await trio.sleep(2.1)
        status, _, body = await trio.to_thread.run_sync(http_get, nodes[0].admin_address, signed.url)
        assert status == 403 and b"expired" in body


MARKER = b"FILE-CONTENT-MARKER-7f3a"


async def test_a_download_through_another_node_after_the_owner_was_killed_and_nothing_readable_at_rest(
    autojump_clock, tmp_path
):
    data = (MARKER + os.urandom(40)) * 200  # 12.8 kB: 13 chunks, the marker in every one
    async with open_cluster(3, config=NodeConfig(security=FAST_SECURITY, files=FilesConfig(chunk_size=CHUNK)),
                            data_dir=tmp_path) as cluster:
        await cluster.register(0, "nia", PASSWORD)
        await cluster.register(0, "oto", PASSWORD)
        async with cluster.client(0, "nia", PASSWORD) as nia:
            att = await nia.upload(data, name="secret-plans-marker.txt")
            await nia.send_file(att, to="oto")
        key = bytes.fromhex(att.id)
        owner = cluster.node_ids.index(cluster.nodes[0].peers.owner(key))
        reader = next(i for i in range(3) if i != owner)
        # Every replica holds every chunk sealed: no file content, no file name in any SQLite file.
        for path in tmp_path.rglob("*"):
            if path.is_file():
                raw = path.read_bytes()
                assert MARKER not in raw and b"secret-plans-marker" not in raw, path
        await cluster.kill(owner)
        await trio.sleep(30)  # virtual time: the others declare it dead and take over its keys
        await cluster.wait_converged()
        async with cluster.client(reader, "oto", PASSWORD) as oto:
            with trio.fail_after(120):
                assert await oto.download(att.id) == data
                # The new owner serves the file on: oto passes it to nia, who reads it;
                # a new owner whose copy never arrived takes it from another replica first.
                new_owner = cluster.nodes[cluster.node_ids.index(cluster.nodes[reader].peers.owner(key))]
                await new_owner.store.run(never_arrived, new_owner, key)
                await oto.send_file(att, to="nia")
                assert await new_owner.store.run(new_owner.store.repo.get_attachment, key) is not None
        async with cluster.client(reader, "nia", PASSWORD) as nia:
            with trio.fail_after(120):
                assert await nia.download(att.id) == data


def never_arrived(node: timpy.Node, att: bytes) -> None:
    """Remove every row of an attachment from a node, as if no copy had come
    (``delete_attachment`` would leave a tombstone)."""
    from timpy.store import schema as s

    with node.store.repo.engine.begin() as conn:
        for table in (s.attachment_chunks, s.attachment_readers, s.attachment_refs, s.attachments):
            conn.execute(table.delete().where(table.c.att_id == att))


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
async def test_shared_backends_hold_the_sealed_chunks(tmp_path, kind):
    from tests.store.backends import dump_tables, fresh_database
    from timpy.config import BackendSpec, ClusterConfig, StorageConfig
    from timpy.store.engine import url_engine

    urls = [fresh_database(kind, f"timpy_files_{i}", tmp_path) for i in range(2)]
    config = node_config(
        memory=False, data_dir=tmp_path / "node", cluster=ClusterConfig(listen=None),
        storage=StorageConfig(backends=tuple(BackendSpec(f"b{i}", u) for i, u in enumerate(urls))),
        files=FilesConfig(chunk_size=CHUNK),
    )
    data = (MARKER + os.urandom(40)) * 100
    async with timpy.open_node(config) as node, clients([node.tcp_url], "pia", "quy") as (pia, quy):
        att = await pia.upload(data, name="plans.txt")
        await pia.send_file(att, to="quy")
        assert await quy.download(att.id) == data
        placed = node.store.repo.map.place(bytes.fromhex(att.id))
    dumps = {}
    for i, url in enumerate(urls):
        engine = url_engine(url)
        dumps[f"b{i}"] = dump_tables(engine)
        engine.dispose()
    assert all(MARKER not in d for d in dumps.values())
    assert bytes.fromhex(att.id) in dumps[placed]  # the attachment's rows are on its backend


async def test_chunks_are_not_counted_by_the_frame_rate_limit():
    from timpy.config import Limits

    data = content(30 * CHUNK)
    limits = Limits(rate_per_connection=5, burst_per_connection=10)
    async with timpy.open_node(node_config(limits=limits, files=FilesConfig(chunk_size=CHUNK))) as n:
        await users(n.tcp_url, "rio")
        async with timpy.connect(n.tcp_url, "rio", PASSWORD) as rio:
            att = await rio.upload(data, name="many-chunks.bin")  # 30 chunks, past the burst of 10 frames
            assert await rio.download(att.id) == data


@WHERE
async def test_a_file_sent_to_a_group_is_read_by_its_members(where, clock):
    data = content(3 * CHUNK + 1)
    async with place(where) as (at, nodes), clients(at, "sam", "tia", "uma") as (sam, tia, uma):
        team = await sam.create_group("team", ["tia"], policy="open")
        att = await sam.upload(data, name="plan.pdf")
        ack = await sam.send_file(att, group=team.group)
        assert ack.seq > 0
        assert await tia.download(att.id) == data
        assert await code_of(uma.download(att.id)) == timpy.Code.NOT_ALLOWED  # not in the group
