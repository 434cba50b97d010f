"""A response body read in chunks, refused past a byte limit: sans-I/O, for every reader."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["BodyTooLarge", "CappedBody"]


class BodyTooLarge(Exception):
    """The body (declared or received) is over the limit; nothing more is read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body larger than {limit} bytes")
        self.limit = limit


class CappedBody:
    """Collects the chunks of one body and stops at ``limit`` bytes.

    Fed by the sync client, the async client and the ``--out`` download alike, so
    the three share one rule: a declared length over the limit is refused before any
    byte is read, and a body that grows past it is refused at the chunk that did.
    """

    __slots__ = ("_data", "limit")

    def __init__(self, limit: int, headers: Mapping[str, str] | None = None) -> None:
        self.limit = limit
        self._data = bytearray()
        declared = (headers or {}).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(limit)

    def feed(self, chunk: bytes) -> None:
        """Add ``chunk``; raises BodyTooLarge once the body is over the limit."""
        self._data += chunk
        if len(self._data) > self.limit:
            raise BodyTooLarge(self.limit)

    def __len__(self) -> int:
        return len(self._data)

    def result(self) -> bytes:
        """The whole body."""
        return bytes(self._data)
