"""Pure parts of files and media: the file reference codec, chunk lengths,
what an upload must declare, HTTP byte ranges, signed URLs, and the
attachment queries on every backend."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timpy.config import FilesConfig
from timpy.crypto.file_urls import check_file_url, file_url
from timpy.errors import Code, RequestError
from timpy.gateway.admin import byte_range
from timpy.im.attachments import check_upload, chunk_length
from timpy.wire.messages import KIND_BURN, KIND_FILE, KIND_NORMAL, FileRef, file_ref_of


@given(st.text(max_size=40), st.text(max_size=40), st.integers(0, 2**62), st.text(max_size=20),
       st.text(max_size=64), st.binary(max_size=100))
def test_a_file_reference_round_trips(attachment, name, size, mime, sha256, thumbnail):
    ref = FileRef(attachment, name, size, mime, sha256, thumbnail)
    assert FileRef.unpack(ref.pack()) == ref
    assert file_ref_of(KIND_FILE, ref.pack(), {}) == ref
    assert file_ref_of(KIND_BURN, ref.pack(), {"file": "1"}) == ref
    assert file_ref_of(KIND_BURN, ref.pack(), {}) is None
    assert file_ref_of(KIND_NORMAL, ref.pack(), {}) is None


@given(st.binary(max_size=50))
def test_bytes_that_are_not_a_reference_are_refused(raw):
    try:
        FileRef.unpack(raw)
    except ValueError:
        return
    # the rare bytes that decode are a 7-item array: packing them again gives a reference too
    assert FileRef.unpack(FileRef.unpack(raw).pack()) == FileRef.unpack(raw)


@given(st.integers(0, 10**7), st.integers(1, 300_000))
def test_chunks_cover_the_file_exactly(size, chunk_size):
    chunks = -(-size // chunk_size)
    lengths = [chunk_length(size, chunk_size, i) for i in range(chunks)]
    assert sum(lengths) == size and all(0 < n <= chunk_size for n in lengths)
    assert chunk_length(size, chunk_size, chunks) == 0


def test_what_an_upload_must_declare():
    cfg = FilesConfig(max_size=1000)
    good = hashlib.sha256(b"x").hexdigest()
    check_upload(cfg, "a.txt", 1000, "text/plain", good)
    for name, size, mime, sha, code in [
        ("", 1, "", good, Code.BAD_REQUEST), ("a/b", 1, "", good, Code.BAD_REQUEST), ("x" * 256, 1, "", good, Code.BAD_REQUEST),
        ("a", 1001, "", good, Code.FILE_TOO_LARGE), ("a", -1, "", good, Code.BAD_REQUEST),
        ("a", 1, "m" * 128, good, Code.BAD_REQUEST), ("a", 1, "", good.upper(), Code.BAD_REQUEST),
        ("a", 1, "", good[:-1], Code.BAD_REQUEST),
    ]:
        with pytest.raises(RequestError) as e:
            check_upload(cfg, name, size, mime, sha)
        assert e.value.code == code


@pytest.mark.parametrize("header, expected", [
    (None, None), ("bytes=0-9", (0, 9)), ("bytes=5-", (5, 99)), ("bytes=-10", (90, 99)), ("bytes=90-200", (90, 99)),
    ("bytes=100-", "unsatisfiable"), ("bytes=-0", "unsatisfiable"), ("bytes=9-3", None), ("items=0-1", None),
    ("bytes=0-1,5-6", None), ("bytes=a-b", None), ("bytes=-200", (0, 99)),
])
def test_byte_ranges(header, expected):
    assert byte_range(header, 100) == expected


@given(st.text(min_size=1, max_size=20), st.integers(0, 2**40))
def test_a_signed_url_is_bound_to_file_user_and_time(user, expires):
    key = b"k" * 32
    url = file_url(key, "ab" * 16, user, expires)
    sig = url.rsplit("s=", 1)[1]
    assert check_file_url(key, "ab" * 16, user, str(expires), sig, expires) is None
    assert check_file_url(key, "ab" * 16, user, str(expires), sig, expires + 1) is not None  # expired
    assert check_file_url(key, "cd" * 16, user, str(expires), sig, 0) is not None
    assert check_file_url(key, "ab" * 16, user + "x", str(expires), sig, 0) is not None
    assert check_file_url(key, "ab" * 16, user, str(expires + 1), sig, 0) is not None
    assert check_file_url(b"o" * 32, "ab" * 16, user, str(expires), sig, 0) is not None
    assert check_file_url(key, "ab" * 16, user, "soon", sig, 0) is not None


@pytest.mark.parametrize("backend", ["sqlite-memory", "postgresql", "mariadb"])
def test_attachment_queries_and_chunks_bound_to_their_place(backend, tmp_path):
    from sqlalchemy import select, update

    from tests.store.backends import dump_tables, make_engine
    from timpy.crypto.keys import ClusterKeys
    from timpy.crypto.seal import Sealer
    from timpy.errors import StorageError
    from timpy.store import schema as s
    from timpy.store.features.attachments import AttachmentRow
    from timpy.store.repository import Repository

    repo = Repository(make_engine(backend, tmp_path), Sealer(ClusterKeys.generate().storage))
    repo.create_schema()
    att, other, user = b"a" * 16, b"b" * 16, b"u" * 16
    row = AttachmentRow(att, user, b"secret meta", 4, 2, False, 1000)
    repo.put_attachment(row)
    repo.put_attachment(row)  # a copy applied twice
    assert repo.get_attachment(att) == row
    repo.put_chunk(att, 0, b"MARK")
    repo.put_chunk(att, 1, b"ER")
    repo.put_chunk(att, 1, b"ER")
    assert repo.chunk_indexes(att) == [0, 1] and repo.get_chunk(att, 1) == b"ER"
    assert b"MARK" not in dump_tables(repo.engine) and b"secret meta" not in dump_tables(repo.engine)
    repo.complete_attachment(att)
    assert repo.get_attachment(att).complete
    assert not repo.may_read(att, other)
    repo.add_readers(att, [other, other])
    assert repo.may_read(att, other)
    repo.add_ref(att, b"c" * 16, 3)
    repo.add_ref(att, b"c" * 16, 4)
    assert repo.remove_ref(att, b"c" * 16, 3) == 1
    assert repo.expired_attachments(None, 0, 10) == [] and repo.expired_attachments(1001, 0, 10) == [att]
    # A sealed chunk moved to another index does not open.
    c = s.attachment_chunks
    with repo.engine.begin() as conn:
        sealed = conn.execute(select(c.c.content).where(c.c.att_id == att, c.c.idx == 0)).scalar_one()
        conn.execute(update(c).where(c.c.att_id == att, c.c.idx == 1).values(content=sealed))
    with pytest.raises(StorageError):
        repo.get_chunk(att, 1)
    repo.delete_attachment(att)
    assert repo.get_attachment(att) is None and repo.chunk_indexes(att) == [] and not repo.may_read(att, other)
    repo.close()
