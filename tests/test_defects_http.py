"""Regression tests for the HTTP host's defects from the second outside review (issue 22):
connection floods with a low descriptor limit (item 5), a FIFO in the served folder
(item 6), the Host/Origin check on /audio and /healthz, and non-global IPv6 audio hosts
(item 8)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import secrets
import select
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from harness import MCP_HEADERS, api_env, http_server, redirecting_server

from octave_tools import Settings, UnexpectedResponseError
from octave_tools import _protocol as proto
from octave_tools._files import fetch_audio
from octave_tools._mcp_http import (
    ENV_SERVER_TOKEN,
    _Listener,
    _LogOnce,
    _Pool,
    _quiet_client_noise,
)
from octave_tools._spend import Spend
from octave_tools.cli import run
from octave_tools.testing import FakeAIMLAPI

FIFO_NAME = f"speech-{'f' * 32}.wav"
BASE = "https://api.aimlapi.com/v1"
TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _served_env(tmp_path: Path) -> dict[str, str]:
    return {
        "OCTAVE_TOOLS_OUTPUT_DIR": str(tmp_path / "audio"),
        "OCTAVE_TOOLS_DATA_DIR": str(tmp_path / "data"),
    }


# ---------------------------------------------------------------- item 6: no blocking I/O


def test_a_fifo_named_like_a_clip_is_404_at_once_and_freezes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "audio"
    folder.mkdir()
    fifo = folder / FIFO_NAME
    os.mkfifo(fifo)
    answers: dict[str, tuple[int, float]] = {}

    def fetch(key: str, url: str) -> None:
        started = time.monotonic()
        try:
            status = httpx.get(url, timeout=5).status_code
        except httpx.TimeoutException:
            status = 0
        answers[key] = (status, time.monotonic() - started)

    with http_server(_served_env(tmp_path)) as (url, _):
        base = url.removesuffix("/mcp")
        try:
            clip = threading.Thread(target=fetch, args=("fifo", f"{base}/audio/{FIFO_NAME}"))
            clip.start()
            time.sleep(0.2)
            fetch("health", f"{base}/healthz")
            clip.join(10)
        finally:  # on the old code the server waits in open() for a writer: give it one
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    assert answers["fifo"][0] == 404
    assert answers["health"][0] == 200
    assert answers["fifo"][1] < 2
    assert answers["health"][1] < 2
    assert fifo.exists()  # refused, not deleted


# ---------------------------------------------------------------- item 8: Host/Origin


def test_audio_and_healthz_check_host_and_origin_as_mcp_does(tmp_path: Path) -> None:
    folder = tmp_path / "audio"
    folder.mkdir()
    name = f"speech-{'a' * 32}.wav"
    (folder / name).write_bytes(b"RIFF....")
    token = secrets.token_urlsafe(32)
    auth = {"Authorization": f"Bearer {token}"}
    env = {**_served_env(tmp_path), ENV_SERVER_TOKEN: token}
    with http_server(env) as (url, server):
        base = url.removesuffix("/mcp")
        answers = {
            (path, label): httpx.get(f"{base}{path}", headers={**auth, **headers}).status_code
            for path in ("/healthz", f"/audio/{name}")
            for label, headers in {
                "own host": {},
                "localhost": {"Host": "localhost:1234"},
                "foreign host": {"Host": "evil.example"},
                "rebound host": {"Host": "evil.example:80"},
                "foreign origin": {"Origin": "http://evil.example"},
                "own origin": {"Origin": "http://127.0.0.1:9"},
            }.items()
        }
        anonymous_foreign = httpx.get(f"{base}/audio/{name}", headers={"Host": "evil.example"})
        mcp_foreign = httpx.post(
            url, json=TOOLS_LIST, headers={**auth, **MCP_HEADERS, "Host": "evil.example"}
        )

    for path in ("/healthz", f"/audio/{name}"):
        assert answers[path, "own host"] == 200
        assert answers[path, "localhost"] == 200
        assert answers[path, "own origin"] == 200
        assert answers[path, "foreign host"] == 421
        assert answers[path, "rebound host"] == 421
        assert answers[path, "foreign origin"] == 403
    assert mcp_foreign.status_code == 421
    assert anonymous_foreign.status_code == 401  # the token first, as on /mcp
    assert "WARNING" not in server.stderr


# ---------------------------------------------------------------- item 8: non-global IPv6

NON_GLOBAL_HOSTS = [
    "[fec0::1]",  # site-local (deprecated, but routed inside old networks)
    "[feff:ffff::1]",  # site-local, its last address
    "[fc00::1]",  # unique local
    "[fdff:ffff::1]",
    "[fe80::1]",  # link-local
    "[febf::1]",
    "[ff0e::1]",  # global-scope multicast
    "[100::1]",  # discard-only
    "[3fff::1]",  # documentation (RFC 9637)
    "[2001:db8::1]",  # documentation
    "[2001:2::1]",  # benchmarking
    "[2001:10::1]",  # ORCHID
    "[2001:0:4136:e378:8000:63bf:f7f7:f7f7]",  # Teredo
    "[2002:c0a8:101::1]",  # 6to4 carrying 192.168.1.1
    "[2002:6440:1::1]",  # 6to4 carrying 100.64.0.1 (shared address space)
    "[64:ff9b::808:808]",  # NAT64 well-known prefix
    "[64:ff9b:1::a00:1]",  # NAT64 local-use prefix carrying 10.0.0.1
    "[::ffff:8.8.8.8]",  # IPv4-mapped
    "[::808:808]",  # IPv4-compatible (deprecated)
    "[5f00::1]",  # segment routing
    "[4000::1]",  # unassigned, outside global unicast
    "[e000::1]",
    "192.0.0.8",  # IETF protocol assignments
    "192.88.99.1",  # 6to4 relay anycast (deprecated)
    "198.18.0.1",  # benchmarking
    "255.255.255.255",
]


@pytest.mark.parametrize("host", NON_GLOBAL_HOSTS)
def test_non_global_addresses_are_refused_as_audio_hosts(host: str) -> None:
    url = f"https://{host}/a.wav"
    assert proto.audio_url_problem(url, BASE) == "to a private, loopback or link-local address"
    spend = Spend(Settings.load(cache_ttl=60, environ={}))
    assert not spend._safe_cached_url(url)  # a cached entry is vetted by the same rule


@pytest.mark.parametrize(
    "host", ["[2606:4700::1111]", "[2a00:1450:4001::1]", "[2002:808:808::1]", "8.8.8.8"]
)
def test_global_unicast_addresses_are_still_audio_hosts(host: str) -> None:
    assert proto.audio_url_problem(f"https://{host}/a.wav", BASE) is None


def test_a_redirect_to_a_site_local_address_is_not_followed() -> None:
    with redirecting_server("https://[fec0::1]/a.wav") as base:
        settings = Settings.load(api_key="k", base_url=base + "/v1", timeout=1.0, environ={})
        with pytest.raises(UnexpectedResponseError, match="Refusing to follow a redirect") as info:
            fetch_audio(base + "/files/a.wav", settings)
    assert "to a private, loopback or link-local address: 'https://[fec0::1]/a.wav'" in str(
        info.value
    )


# ---------------------------------------------------------------- item 5: connection floods

FD_LIMIT = 128
FLOOD = 300
HALF_SENT = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: applic"


def _low_descriptor_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def _flood(port: int, count: int) -> list[socket.socket]:
    """``count`` connections to ``port`` that each send half a request and then wait;
    connecting without blocking, since a server that stops accepting fills its backlog."""
    flood = []
    for _ in range(count):
        half = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        half.setblocking(False)
        half.connect_ex(("127.0.0.1", port))
        flood.append(half)
    poll = select.poll()
    by_fd = {half.fileno(): half for half in flood}
    for fd in by_fd:
        poll.register(fd, select.POLLOUT)
    for fd, _event in poll.poll(2000):
        with contextlib.suppress(OSError):
            by_fd[fd].send(HALF_SENT)
    return flood


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts descriptors in /proc")
def test_half_sent_connections_neither_starve_a_client_nor_flood_the_log(
    tmp_path: Path,
) -> None:
    token = secrets.token_urlsafe(32)
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    env = {**_served_env(tmp_path), ENV_SERVER_TOKEN: token}
    with http_server(env, preexec_fn=_low_descriptor_limit) as (url, server):
        before = len(server.stderr.encode())
        flood = _flood(_port(url), FLOOD)
        try:
            time.sleep(0.5)
            held = _descriptors(server.proc.pid)
            started = time.monotonic()
            try:
                during = httpx.post(url, json=TOOLS_LIST, headers=headers, timeout=5).status_code
            except httpx.HTTPError:
                during = 0
            took = time.monotonic() - started
            time.sleep(1.5)  # asyncio retried its accept loop every second
            log = server.stderr.encode()[before:]
        finally:
            for half in flood:
                half.close()
        after = httpx.post(url, json=TOOLS_LIST, headers=headers, timeout=5).status_code

    assert during == 200
    assert took < 2
    assert after == 200
    assert held <= FD_LIMIT - 16  # a reserve stays free for the server's own files
    assert b"Traceback" not in log
    assert len(log) < 1000, log[:2000]
    assert log.count(b"\n") <= 2


def _closed(sock: socket.socket, within: float) -> bool:
    """True when the server closed ``sock`` within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_at_the_cap_a_new_connection_replaces_the_one_that_waited_longest() -> None:
    with http_server({}, "--max-connections", "2") as (url, server):
        port = _port(url)
        oldest = socket.create_connection(("127.0.0.1", port))
        oldest.sendall(HALF_SENT)
        time.sleep(0.2)
        younger = socket.create_connection(("127.0.0.1", port))
        younger.sendall(HALF_SENT)
        time.sleep(0.2)
        try:
            started = time.monotonic()
            answer = httpx.post(url, json=TOOLS_LIST, headers=MCP_HEADERS, timeout=5)
            took = time.monotonic() - started
            oldest_closed = _closed(oldest, 2)
            younger_closed = _closed(younger, 0.2)
        finally:
            oldest.close()
            younger.close()
        time.sleep(0.2)

    assert answer.status_code == 200
    assert took < 2
    assert (oldest_closed, younger_closed) == (True, False)
    warnings = [line for line in server.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1
    assert warnings[0].endswith(
        "octave-tools: 2 connections are open, the most this server takes (--max-connections, "
        "or fewer under ulimit -n); each new one replaces the one that has waited longest for "
        "a request."
    )


def test_at_the_cap_with_every_connection_busy_new_ones_wait_their_turn(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    fake_aimlapi.delay(1.0)
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "text_to_speech", "arguments": {"text": "Hello"}},
    }
    results: dict[str, tuple[int, float]] = {}

    def post(key: str, body: dict[str, object]) -> None:
        started = time.monotonic()
        status = httpx.post(url, json=body, headers=MCP_HEADERS, timeout=10).status_code
        results[key] = (status, time.monotonic() - started)

    with http_server(api_env(fake_aimlapi), "--max-connections", "1") as (url, _):
        slow = threading.Thread(target=post, args=("slow", call))
        slow.start()
        time.sleep(0.3)  # the call is in flight: its connection cannot make room
        post("next", TOOLS_LIST)
        slow.join(10)

    assert results["slow"][0] == 200
    assert results["next"][0] == 200
    assert 0.4 < results["next"][1] < 3  # accepted once the call's connection was free


def test_log_once_writes_a_line_a_period_per_kind_with_the_count_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = _LogOnce(logging.getLogger("octave_tools.test"), period=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="octave_tools.test"):
        sent = [log.warning("emfile", "cannot accept") for _ in range(1000)]
        log.warning("other", "another kind")
        now[0] = 61.0
        log.warning("emfile", "cannot accept")
        log.warning("emfile", "cannot accept")
    assert sent.count(True) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "cannot accept",
        "another kind",
        "cannot accept (999 more like it in the last 61 s)",
    ]


class _OutOfDescriptors(socket.socket):
    """A listening socket whose accept() always fails as with no descriptor left."""

    tries = 0

    def accept(self) -> tuple[socket.socket, object]:
        type(self).tries += 1
        raise OSError(errno.EMFILE, "Too many open files")


def test_accept_errors_rest_the_listener_and_are_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run() -> None:
        listening = _OutOfDescriptors(socket.AF_INET, socket.SOCK_STREAM)
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        waiting = socket.create_connection(listening.getsockname())  # always readable
        log = _LogOnce(logging.getLogger("octave_tools.mcp"))
        listener = _Listener(listening, asyncio.Protocol, _Pool(), 10, None, log)
        listener.start(asyncio.get_running_loop())
        await asyncio.sleep(1.2)
        listener.close()
        waiting.close()

    with caplog.at_level(logging.WARNING):
        asyncio.run(run())
    # asyncio's own loop tried up to its backlog at once, then again every second.
    assert 2 <= _OutOfDescriptors.tries <= 4
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "octave_tools.mcp",
            "WARNING",
            "octave-tools: cannot accept connections: Too many open files; raise the "
            "descriptor limit (ulimit -n) or lower --max-connections.",
        )
    ]


def test_asyncio_s_accept_tracebacks_become_one_line_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _quiet_client_noise("WARNING")
    error = OSError(errno.EMFILE, "Too many open files")
    aio = logging.getLogger("asyncio")
    with caplog.at_level(logging.DEBUG):
        for _ in range(2048):
            aio.error("socket.accept() out of system resource", exc_info=error)
        aio.error("something else")
    assert [(r.name, r.getMessage(), r.exc_info) for r in caplog.records] == [
        (
            "octave_tools.mcp",
            "octave-tools: asyncio: socket.accept() out of system resource: [Errno 24] Too "
            "many open files",
            None,
        ),
        ("asyncio", "something else", None),
    ]


@pytest.mark.parametrize(
    "option", [("--max-connections", "0"), ("--max-requests", "0"), ("--request-timeout", "nan")]
)
def test_limits_that_are_not_positive_are_refused(
    option: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(["serve", "--transport", "http", "--port", "0", *option])
    err = capsys.readouterr().err
    assert code == 3
    assert "the request cap, the body cap and the connection cap must be positive" in err
