"""Length-prefixed framing for byte streams (TCP), as a sans-IO decoder.

Each frame is a 4-byte big-endian length followed by that many bytes. The
limit is checked as soon as the prefix arrives, before the body is buffered,
so an oversize frame costs the node four bytes of memory.
"""

from __future__ import annotations

import struct

from timpy.errors import Code, ProtocolError

_PREFIX = struct.Struct(">I")
PREFIX_SIZE = _PREFIX.size


def frame_bytes(body: bytes) -> bytes:
    return _PREFIX.pack(len(body)) + body


class FrameDecoder:
    """Feed bytes in, get complete frame bodies out."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Return the frames completed by ``data``; raise ProtocolError on an oversize frame."""
        self._buf += data
        frames: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buf) < PREFIX_SIZE:
                    return frames
                (length,) = _PREFIX.unpack_from(self._buf)
                if length > self.max_frame:
                    raise ProtocolError(
                        f"frame of {length} bytes exceeds the limit of {self.max_frame}",
                        Code.FRAME_TOO_LARGE,
                    )
                del self._buf[:PREFIX_SIZE]
                self._need = length
            if len(self._buf) < self._need:
                return frames
            frames.append(bytes(self._buf[: self._need]))
            del self._buf[: self._need]
            self._need = None

    @property
    def buffered(self) -> int:
        return len(self._buf)
