"""A floor for HTTP benchmarks: a canned-response HTTP/1.1 server that costs almost nothing.

Every ``POST /v1/tts`` gets the same 200 JSON answer, written in one ``write`` on a
keep-alive connection with TCP_NODELAY; anything else gets a canned 404. It runs an
asyncio Protocol (no HTTP library, no per-request parsing beyond the header block and
Content-Length) in a child process, so many concurrent connections are
fine and a client's ratio against a bare httpx call measures the client, not the server.

    with FloorServer() as floor:
        floor.base_url  # http://127.0.0.1:<port>/v1
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from types import TracebackType

API_KEY = "floor-key-0123456789abcdef"
BODY = b'{"audio": {"url": "https://cdn.example/a.wav"}, "meta": {"usage": {"credits_used": 10}}}'
OK = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(BODY)).encode() + b"\r\nconnection: keep-alive\r\n\r\n" + BODY
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"


class _Canned(asyncio.Protocol):
    """Answers each complete request in the buffer; pipelined requests are fine."""

    def __init__(self, live: set[asyncio.Transport]) -> None:
        self._buf = b""
        self._live = live
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._live.add(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            length = 0
            at = head.lower().find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(buf) < total:
                break
            out.append(OK if head.startswith(b"POST /v1/tts ") else NOT_FOUND)
            buf = buf[total:]
        self._buf = buf
        if out and self._transport is not None:
            self._transport.write(b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._live.discard(self._transport)


async def _serve() -> None:
    live: set[asyncio.Transport] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Canned(live), "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    # Runs until the parent closes our stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.read)


class FloorServer:
    """The canned server on 127.0.0.1 (a free port), started and stopped as a context.

    It runs in a child process: in-process, its thread would compete with the client
    for the GIL (a waiting thread can stall up to the 5 ms switch interval), which
    inflates and blurs every figure.
    """

    api_key = API_KEY

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FloorServer:
        self._proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.strip().isdigit():
            self._proc.kill()
            raise RuntimeError(f"floor server did not start (said {line!r})")
        self.port = int(line)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._proc is not None
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)


if __name__ == "__main__":
    asyncio.run(_serve())
