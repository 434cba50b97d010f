"""One harness for the tests and the benchmarks: settings builders, the CLI and MCP
server as subprocesses, text extraction from MCP results, and raw loopback servers
that misbehave in ways the fake AIML API does not.

Tests import it as ``harness`` (``tests/`` is on ``sys.path`` under pytest); the
scripts in ``bench/`` put ``tests/`` on ``sys.path`` first.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import queue
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Protocol

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import get_default_environment
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from octave_tools import AsyncOctaveClient, OctaveClient, Speech
from octave_tools._mcp_http import ENV_SERVER_TOKEN
from octave_tools.cli import run
from octave_tools.mcp import create_server
from octave_tools.testing import FakeAIMLAPI

SERVER = [sys.executable, "-m", "octave_tools.mcp"]
CLI = [sys.executable, "-m", "octave_tools.cli"]
# The console script `uvx --from "octave-tools[mcp]" octave-tools-mcp` runs; the stdio
# peer uses it when this environment has it installed.
SCRIPT = Path(sys.executable).with_name("octave-tools-mcp")
TOOL_ERROR = "Error executing tool text_to_speech: "
SETTING_PREFIXES = ("AIMLAPI_", "AIML_API_", "OCTAVE_TOOLS_")
# Set by tests/conftest.py: the network guard and the temp folders every child keeps.
_GUARD_VARS = (
    "PYTHONPATH",
    "OCTAVE_TOOLS_NETGUARD_LOG",
    "OCTAVE_TOOLS_OUTPUT_DIR",
    "OCTAVE_TOOLS_DATA_DIR",
)

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "0"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


# ---------------------------------------------------------------- settings


class Upstream(Protocol):
    """What a test points octave-tools at: the fake API or a raw loopback server."""

    @property
    def api_key(self) -> str: ...

    @property
    def base_url(self) -> str: ...


def api_env(api: Upstream, **extra: str) -> dict[str, str]:
    """Settings a user would put in the environment (or an MCP client's config) for ``api``."""
    return {
        "AIMLAPI_API_KEY": api.api_key,
        "AIMLAPI_BASE_URL": api.base_url,
        "OCTAVE_TOOLS_ENGINE": "aimlapi",
        **extra,
    }


def api_options(api: FakeAIMLAPI, **extra: Any) -> dict[str, Any]:
    """Keyword settings for a client, tool or server that calls ``api`` once, no retries."""
    return {
        "api_key": api.api_key,
        "base_url": api.base_url,
        "engine": "aimlapi",
        "max_retries": 0,
        **extra,
    }


def child_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` plus what every test subprocess needs: the network guard and temp folders."""
    return {**{k: os.environ[k] for k in _GUARD_VARS if k in os.environ}, **env}


def subprocess_env(api: FakeAIMLAPI | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without the developer's settings, plus ``api``'s and ``extra``.

    The network guard and the temp folders (under pytest) carry over.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(SETTING_PREFIXES) or k in _GUARD_VARS
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if api is not None:
        env.update(api_env(api))
    env.update(extra)
    return env


# ---------------------------------------------------------------- the clients


Synth = Callable[..., Speech]


def synthesize_on(kind: str, options: dict[str, Any], text: Any, **call: Any) -> Speech:
    """``synthesize(text, **call)`` on a fresh ``sync`` or ``async`` client made with
    ``options``."""
    if kind == "sync":
        with OctaveClient(**options) as client:
            return client.synthesize(text, **call)

    async def go() -> Speech:
        async with AsyncOctaveClient(**options) as client:
            return await client.synthesize(text, **call)

    return asyncio.run(go())


# ---------------------------------------------------------------- the CLI


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``octave-tools *argv`` in this process: exit status, stdout, stderr."""
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_process(
    *argv: str, env: dict[str, str], **options: Any
) -> subprocess.CompletedProcess[Any]:
    """``python -m octave_tools.cli *argv`` as a child, output captured, within 60 s."""
    options.setdefault("timeout", 60)
    return subprocess.run([*CLI, *argv], env=env, capture_output=True, check=False, **options)


# ---------------------------------------------------------------- the MCP server


class ServerProcess:
    """An MCP server subprocess whose stdout and stderr are read line by line in threads.

    ``env`` is the server's settings; the child also gets a minimal environment and the
    network guard (see ``child_env``).
    """

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        *,
        stdin: bool = False,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            SERVER + args,
            env=get_default_environment() | child_env(env),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            preexec_fn=preexec_fn,
        )
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, is_stdout: bool) -> None:
        for line in stream:
            if is_stdout:
                self.stdout_lines.append(line)
                self.stdout.put(line)
            else:
                self.stderr_lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def _stdin(self) -> Any:
        if self.proc.stdin is None:
            raise RuntimeError("this server was started without stdin=True")
        return self.proc.stdin

    def send(self, message: dict[str, Any]) -> None:
        """One JSON-RPC message on the server's stdin."""
        self._stdin().write(json.dumps(message) + "\n")
        self._stdin().flush()

    def close_stdin(self) -> None:
        """End the server's input, as a client that hangs up does."""
        self._stdin().close()

    def response(self, request_id: int) -> dict[str, Any]:
        """The next stdout message answering ``request_id`` (others are skipped)."""
        while True:
            message = json.loads(self.stdout.get(timeout=30))
            if message.get("id") == request_id:
                return message  # type: ignore[no-any-return]

    def wait_for_stderr(self, pattern: str, seconds: float = 15.0) -> re.Match[str]:
        """The first match of ``pattern`` in stderr, within ``seconds`` or while alive."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            found = re.search(pattern, self.stderr)
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"server never logged {pattern!r}; stderr:\n{self.stderr}")

    def url(self, seconds: float = 15.0) -> str:
        """The endpoint a ``--transport http`` server printed on start."""
        return self.wait_for_stderr(r"on (http://\S+/mcp) ", seconds).group(1)

    def rss_mb(self) -> float:
        """Resident memory of the server process, in MB (from /proc)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        if found is None:
            raise RuntimeError("VmRSS is missing from /proc: Linux is needed for this figure")
        return int(found.group(1)) / 1024

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for reader in self._readers:
            reader.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode


@contextmanager
def http_server(
    env: dict[str, str], *args: str, preexec_fn: Callable[[], None] | None = None
) -> Iterator[tuple[str, ServerProcess]]:
    """``octave-tools-mcp --transport http`` on 127.0.0.1 and a free port; always stopped.

    ``preexec_fn`` runs in the child before the server starts (to lower its limits)."""
    server = ServerProcess(
        ["--transport", "http", "--port", "0", *args], env, preexec_fn=preexec_fn
    )
    try:
        yield server.url(), server
    finally:
        server.stop()


@asynccontextmanager
async def connect(
    peer: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Client]:
    """A connected official MCP client (``memory``, ``stdio`` or ``http``), ``env`` as settings."""
    if peer == "memory":
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        async with Client(create_server()) as client:
            yield client
    elif peer == "stdio":
        command = [str(SCRIPT)] if SCRIPT.exists() else SERVER
        params = StdioServerParameters(command=command[0], args=command[1:], env=child_env(env))
        async with Client(params) as client:
            yield client
    else:
        token = secrets.token_urlsafe(32)
        with http_server({**env, ENV_SERVER_TOKEN: token}) as (url, _):
            headers = {"Authorization": f"Bearer {token}"}
            async with (
                httpx2.AsyncClient(headers=headers) as http,
                Client(streamable_http_client(url, http_client=http)) as client,
            ):
                yield client


def text_of(result: CallToolResult) -> str:
    """The one text block of an MCP tool result."""
    assert len(result.content) == 1
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def texts_of(result: CallToolResult) -> str:
    """Every text block of an MCP tool result, joined (for results that may hold several)."""
    return "".join(b.text for b in result.content if isinstance(b, TextContent))


async def until(event: threading.Event) -> None:
    """Wait for ``event``, set by a plain thread, in a way a cancel scope can stop."""
    while not event.is_set():  # noqa: ASYNC110
        await anyio.sleep(0.01)


async def cancel_mid_call(client: Client, api: StallingAPI) -> None:
    """Start ``text_to_speech``, cancel it once ``api`` has the request, then wait until
    the server hangs up on ``api`` (which is how a cancellation shows upstream); 30 s."""
    with anyio.fail_after(30):  # a guard, far below what the call would wait for the API
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "text_to_speech", {"text": "Hello"})
            await until(api.got_request)
            tg.cancel_scope.cancel()
        await until(api.hung_up)


# ---------------------------------------------------------------- raw upstream servers


class _Listener:
    """A loopback listener on a free port served by a daemon thread until ``close``."""

    api_key = "k"  # any key: these servers do not check it

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._take(conn)

    def _take(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


class StallingAPI(_Listener):
    """A loopback "API" that takes one request and never answers.

    ``hung_up`` is set when the caller closes the connection, which is how a
    cancelled call shows from the outside.
    """

    def __init__(self) -> None:
        self.got_request = threading.Event()
        self.hung_up = threading.Event()
        super().__init__()

    def _take(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.05)
            received = b""
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    self.hung_up.set()
                    self._stop.set()
                    return
                received += chunk
                if b"\r\n\r\n" in received:
                    self.got_request.set()


Script = Callable[[socket.socket], None]


class RawUpstream(_Listener):
    """A loopback server that answers each connection with the next raw-socket script."""

    def __init__(self, *scripts: Script) -> None:
        self._scripts = list(scripts)
        self.connections = 0
        super().__init__()

    def _take(self, conn: socket.socket) -> None:
        script = self._scripts[min(self.connections, len(self._scripts) - 1)]
        self.connections += 1
        threading.Thread(target=self._answer, args=(conn, script), daemon=True).start()

    def _answer(self, conn: socket.socket, script: Script) -> None:
        with conn:
            conn.settimeout(5)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,  # a GET
                )
                while len(body) < length:
                    body += conn.recv(65536)
                script(conn)
            except OSError:
                pass  # the client hung up first: that is what some tests want


@contextmanager
def redirecting_server(location: str) -> Iterator[str]:
    """A loopback HTTP server answering every GET with a 302 to ``location``; yields its
    origin (``http://127.0.0.1:PORT``)."""

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- raw JSON-RPC over HTTP


def tool_call(text: str, request_id: int = 2) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": "text_to_speech", "arguments": {"text": text}},
    }


def rpc_result(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC result of a stateless POST /mcp, answered as JSON or as SSE."""
    assert response.status_code == 200, (response.status_code, response.text)
    if response.headers["content-type"].startswith("application/json"):
        message = response.json()
    else:
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        message = json.loads(data[-1])
    assert "result" in message, message
    return message["result"]  # type: ignore[no-any-return]
