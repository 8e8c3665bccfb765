"""Files in the client library: resumable uploads in chunks, downloads with
the SHA-256 checked, file messages (``Client.upload``, ``Client.download``,
``Client.send_file``; see docs/features.md, "Files and media")."""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from thriftpy2.thrift import TPayload

from timpy.concurrency import unwrap_single_error
from timpy.wire import protocol as wp

#: ``progress(done_bytes, total_bytes)``, called after each chunk.
Progress = Callable[[int, int], None]
Request = Callable[..., Awaitable[tuple[str, TPayload]]]

WINDOW = 8  # chunks in flight at once


class HashMismatch(ValueError):
    """A downloaded file's content does not match the SHA-256 it was uploaded with."""


@dataclass(frozen=True)
class Attachment:
    """An uploaded file, as ``upload`` returns it and file messages name it."""

    id: str
    name: str
    size: int
    mime: str
    sha256: str
    chunk_size: int
    chunks: int
    url: str = ""  # from ``file_url``: a signed path on the node's HTTP listener
    url_expires: int = 0  # unix seconds


def attachment_of(body: TPayload) -> Attachment:
    return Attachment(
        body.id or "", body.name or "", body.size or 0, body.mime or "", body.sha256 or "", body.chunk_size or 0,
        body.chunks or 0, body.url or "", body.url_expires or 0,
    )


class Source:
    """The bytes to upload: a file (read chunk by chunk) or bytes in memory."""

    def __init__(self, source: bytes | str | Path, name: str | None, mime: str | None) -> None:
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._data: bytes | None = bytes(source)
            self._path: Path | None = None
            self.size = len(self._data)
            self.name = name or "file"
        else:
            self._data = None
            self._path = Path(source)
            self.size = self._path.stat().st_size
            self.name = name or self._path.name
        self.mime = mime or mimetypes.guess_type(self.name)[0] or "application/octet-stream"
        self.sha256 = self._hash()

    def _hash(self) -> str:
        if self._data is not None:
            return hashlib.sha256(self._data).hexdigest()
        digest = hashlib.sha256()
        assert self._path is not None
        with self._path.open("rb") as f:
            while block := f.read(1024 * 1024):
                digest.update(block)
        return digest.hexdigest()

    def read(self, offset: int, length: int) -> bytes:
        if self._data is not None:
            return self._data[offset:offset + length]
        assert self._path is not None
        with self._path.open("rb") as f:
            f.seek(offset)
            return f.read(length)


async def upload(
    request: Request, source: Source, upload_id: str, progress: Progress | None, window: int = WINDOW
) -> Attachment:
    _, state = await request(
        "upload_start", name=source.name, size=source.size, mime=source.mime, sha256=source.sha256,
        upload_id=upload_id,
    )
    chunk_size, chunks = state.chunk_size, state.chunks
    have = set(state.have or [])
    done = sum(min(chunk_size, source.size - i * chunk_size) for i in have)
    if progress is not None:
        progress(done, source.size)
    if not state.complete:
        limiter = trio.Semaphore(max(1, window))

        async def send(index: int) -> None:
            nonlocal done
            try:
                data = source.read(index * chunk_size, chunk_size)
                await request("upload_chunk", upload_id=state.upload_id, index=index, data=data)
                done += len(data)
                if progress is not None:
                    progress(done, source.size)
            finally:
                limiter.release()

        with unwrap_single_error():
            async with trio.open_nursery() as nursery:
                for index in range(chunks):
                    if index not in have:
                        await limiter.acquire()
                        nursery.start_soon(send, index)
    _, info = await request("upload_finish", upload_id=state.upload_id)
    return attachment_of(info)


async def download(
    request: Request, attachment: str, dest: str | Path | None, progress: Progress | None, window: int = WINDOW
) -> bytes | Path:
    _, body = await request("attachment_request", wp.thrift.AttachmentRequest(id=attachment, op="info"))
    info = attachment_of(body)
    parts: dict[int, bytes] = {}
    limiter = trio.Semaphore(max(1, window))
    done = 0
    out: Any = None if dest is None else Path(dest).open("wb")
    digest = hashlib.sha256()
    next_index = 0  # chunks are hashed (and written) in order as they arrive
    kept: list[bytes] = []

    def drain() -> None:
        nonlocal next_index
        while next_index in parts:
            data = parts.pop(next_index)
            digest.update(data)
            if out is not None:
                out.write(data)
            else:
                kept.append(data)
            next_index += 1

    async def fetch(index: int) -> None:
        nonlocal done
        try:
            _, chunk = await request("chunk_request", id=attachment, index=index)
            parts[index] = bytes(chunk.data or b"")
            done += len(parts[index])
            drain()
            if progress is not None:
                progress(done, info.size)
        finally:
            limiter.release()

    try:
        with unwrap_single_error():
            async with trio.open_nursery() as nursery:
                for index in range(info.chunks):
                    await limiter.acquire()
                    nursery.start_soon(fetch, index)
    finally:
        if out is not None:
            out.close()
    if digest.hexdigest() != info.sha256:
        if dest is not None:
            Path(dest).unlink(missing_ok=True)
        raise HashMismatch(f"the downloaded {info.name!r} does not match its SHA-256; download it again")
    return Path(dest) if dest is not None else b"".join(kept)
