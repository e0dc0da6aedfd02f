"""Streams for tests: bytes made as they are read."""

from __future__ import annotations

import io


class Zeros(io.RawIOBase):
    """`size` zero bytes, produced as they are read (an archive bomb without the memory)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n
