"""The store never holds a call past its timeout (issue 22, items 4 and 7, and the
bounded health check of item 8).

Against a real PostgreSQL (a fresh database per run) and Redis (tests/_services.py):
another session holds the budget's lock or a table lock, or a loopback proxy between
the client and the server stops forwarding without closing anything (a black hole,
as a frozen network path looks from the client). Each call must end with a clear
error at its own deadline, with no request sent to the API when a budget is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest
from _services import postgres_database, redis_prefix
from harness import api_env, cli_process, connect, subprocess_env, text_of

from octave_tools import (
    APITimeoutError,
    AsyncOctaveClient,
    ConfigurationError,
    OctaveClient,
    OctaveError,
)
from octave_tools.testing import FakeAIMLAPI

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

# How far past its limit a call may end: thread and event-loop scheduling on a busy
# 2-core machine, the watchdog's grace, the server's round trip.
MARGIN = 0.9
_LOCK_SPACE = 0x6F637476  # the store's advisory lock space (octave_tools._store_pg)

T = TypeVar("T")


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    yield from postgres_database()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    for url, _prefix in redis_prefix():
        yield url


# ---------------------------------------------------------------- a black-hole proxy


class FreezableProxy:
    """A loopback TCP forwarder to ``target`` that can freeze: it then stops reading
    and forwarding in both directions, and takes new connections without forwarding
    them, while every socket stays open (nothing is refused, reset or closed)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.frozen = threading.Event()
        self.connections = 0
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._sockets.append(client)
            if self.frozen.is_set():
                continue  # held open, never answered
            upstream = socket.create_connection(self.target)
            self._sockets.append(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self._closed.is_set():
            if self.frozen.is_set():
                time.sleep(0.02)
                continue
            try:
                # poll, not select: late in a long run this process's descriptors pass
                # select's 1,024 limit (select then raises, and the pump would die).
                poller = select.poll()
                poller.register(src, select.POLLIN)
                if not poller.poll(20):
                    continue
                if self.frozen.is_set():
                    continue
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by this proxy's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


def _forget_stores(url: str) -> None:
    """Drop the process-wide stores opened for ``url`` (their proxy is gone)."""
    from octave_tools import _cache_redis, _store_pg, _store_url

    for key in [k for k in _store_url._OPEN if url in k]:
        _store_url._OPEN.pop(key, None)
    store = _store_pg._STORES.pop(url, None)
    cache = _cache_redis._CACHES.pop(url, None)
    for thing in (store, cache):
        if thing is not None:
            threading.Thread(target=thing.close, daemon=True).start()


@pytest.fixture
def pg_proxy(pg_url: str) -> Iterator[tuple[FreezableProxy, str]]:
    parts = urlsplit(pg_url)
    proxy = FreezableProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    url = proxy.url(pg_url)
    try:
        yield proxy, url
    finally:
        _forget_stores(url)
        proxy.close()


# ---------------------------------------------------------------- helpers


def replica(api: FakeAIMLAPI, tmp_path: Path, name: str, **extra: Any) -> OctaveClient:
    return OctaveClient(**_options(api, tmp_path, name, **extra))


def _options(api: FakeAIMLAPI, tmp_path: Path, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "api_key": api.api_key,
        "base_url": api.base_url,
        "engine": "aimlapi",
        "max_retries": 0,
        "data_dir": str(tmp_path / name),
        "output_dir": str(tmp_path / name / "audio"),
        **extra,
    }


def timed(fn: Callable[[], T], *, give_up: float = 20.0) -> tuple[float, T | BaseException]:
    """(seconds, result or exception) of ``fn()`` in a thread; fails the test if it is
    still running after ``give_up`` s (the old code hung there, some for ever)."""
    out: list[T | BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(give_up)
    if thread.is_alive():
        pytest.fail(f"the call was still running after {give_up:g} s")
    return time.monotonic() - start, out[0]


@pytest.fixture
def locker(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """Another session on the store, for the test to take locks with."""
    conn = psycopg.connect(pg_url, autocommit=False)
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


def _hold(conn: psycopg.Connection[Any], how: str) -> None:
    """Take, inside an open transaction, the lock a budget reservation needs."""
    if how == "advisory":  # the one reserve() takes for the daily budget
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_SPACE, "daily"))
    else:  # a migration or a backup holding the ledger table
        conn.execute("LOCK TABLE octave_calls IN ACCESS EXCLUSIVE MODE")


# ---------------------------------------------------------------- item 4: a lock held


@pytest.mark.parametrize("how", ["advisory", "table"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_held_budget_lock_refuses_the_call_at_its_deadline(
    fake_aimlapi: FakeAIMLAPI,
    tmp_path: Path,
    pg_url: str,
    locker: psycopg.Connection[Any],
    how: str,
    kind: str,
) -> None:
    options = _options(
        fake_aimlapi, tmp_path, "r", store_url=pg_url, max_credits_per_day=1e9, timeout=1.7
    )
    with OctaveClient(**options) as warm:  # the store is open and migrated before the lock
        warm.usage_report("1d")
    _hold(locker, how)

    def call() -> Any:
        if kind == "sync":
            with OctaveClient(**options) as client:
                return client.synthesize("Hello there")

        async def go() -> Any:
            async with AsyncOctaveClient(**options) as client:
                return await client.synthesize("Hello there")

        return asyncio.run(go())

    elapsed, got = timed(call)

    assert isinstance(got, ConfigurationError), got
    assert "did not answer within the call's time limit (1.7 s)" in got.message
    assert "OCTAVE_TOOLS_STORE_URL" in got.message
    assert 1.6 <= elapsed <= 1.7 + MARGIN
    assert fake_aimlapi.tts_requests == []  # refused before the paid request


def test_say_with_a_timeout_is_refused_in_time_while_another_session_holds_the_lock(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, pg_url: str, locker: psycopg.Connection[Any]
) -> None:
    # The reproduction, with other numbers: `say --timeout 2.5` as a user runs it.
    env = subprocess_env(
        fake_aimlapi,
        OCTAVE_TOOLS_STORE_URL=pg_url,
        OCTAVE_TOOLS_MAX_CREDITS="1000000",
        OCTAVE_TOOLS_DATA_DIR=str(tmp_path / "cli"),
    )
    warm = cli_process("usage", env=env)
    assert warm.returncode == 0, warm.stderr
    _hold(locker, "advisory")

    start = time.monotonic()
    try:
        done = cli_process("say", "--timeout", "2.5", "Hello from the CLI", env=env, timeout=15)
    except Exception as exc:  # subprocess.TimeoutExpired: the old code hung
        pytest.fail(f"say --timeout 2.5 did not end: {exc}")
    elapsed = time.monotonic() - start

    assert done.returncode == 3, done.stderr
    err = done.stderr.decode()
    assert "did not answer within the call's time limit (2.5 s)" in err
    assert "Traceback" not in err
    # 2.5 s, plus starting Python and importing the package (under a second here).
    assert elapsed <= 2.5 + MARGIN + 1.5
    assert fake_aimlapi.tts_requests == []


def test_a_lock_held_only_briefly_delays_the_call_but_lets_it_through(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, pg_url: str, locker: psycopg.Connection[Any]
) -> None:
    # The bound is the call's deadline, not a short fixed wait: a lock released in time
    # is waited for and the call is made.
    client = replica(fake_aimlapi, tmp_path, "r", store_url=pg_url, max_credits_per_day=1e9)
    client.usage_report("1d")
    _hold(locker, "advisory")
    threading.Timer(0.5, locker.rollback).start()

    elapsed, got = timed(lambda: client.synthesize("Waited for"))

    assert not isinstance(got, BaseException), got
    assert 0.45 <= elapsed < 5
    assert len(fake_aimlapi.tts_requests) == 1
    client.close()


# ---------------------------------------------------------------- item 4: a frozen network


def test_a_frozen_network_path_to_the_store_ends_each_call_at_its_deadline(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, pg_proxy: tuple[FreezableProxy, str]
) -> None:
    proxy, url = pg_proxy
    client = replica(
        fake_aimlapi, tmp_path, "r", store_url=url, max_credits_per_day=1e9, timeout=2.2
    )
    client.synthesize("Before the freeze")  # the pool holds a live connection now
    proxy.frozen.set()

    # First a pooled connection goes silent mid-query, then new ones are never answered.
    for text in ("Frozen once", "Frozen twice"):
        elapsed, got = timed(lambda text=text: client.synthesize(text))  # type: ignore[misc]
        assert isinstance(got, ConfigurationError), got
        assert "did not answer within the call's time limit (2.2 s)" in got.message
        assert 2.1 <= elapsed <= 2.2 + MARGIN

    assert len(fake_aimlapi.tts_requests) == 1  # only the call before the freeze
    client.close()


async def test_an_mcp_call_ends_at_its_timeout_while_the_store_is_black_holed(
    fake_aimlapi: FakeAIMLAPI,
    tmp_path: Path,
    pg_proxy: tuple[FreezableProxy, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The MCP reproduction (4 s there), over the in-memory transport.
    proxy, url = pg_proxy
    env = api_env(
        fake_aimlapi,
        OCTAVE_TOOLS_STORE_URL=url,
        OCTAVE_TOOLS_MAX_CREDITS="1000000",
        OCTAVE_TOOLS_TIMEOUT="3",
        OCTAVE_TOOLS_MAX_RETRIES="0",
    )
    async with connect("memory", env, monkeypatch) as mcp:
        first = await mcp.call_tool("text_to_speech", {"text": "Before the freeze"})
        assert not first.is_error, text_of(first)
        proxy.frozen.set()

        start = time.monotonic()
        with anyio.fail_after(20):
            result = await mcp.call_tool("text_to_speech", {"text": "After the freeze"})
        elapsed = time.monotonic() - start

    assert result.is_error
    assert "did not answer within the call's time limit (3 s)" in text_of(result)
    assert 2.9 <= elapsed <= 3 + MARGIN
    assert len(fake_aimlapi.tts_requests) == 1


# ---------------------------------------------------------------- item 4: SQLite and Redis


def test_a_locked_sqlite_ledger_refuses_a_budgeted_call_at_its_deadline_not_the_busy_timeout(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    client = replica(fake_aimlapi, tmp_path, "r", max_credits_per_day=1e9, timeout=1.5)
    client.usage_report("1d")  # the ledger file exists
    other = sqlite3.connect(tmp_path / "r" / "ledger.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a sqlite3 shell holding the write lock
    try:
        elapsed, got = timed(lambda: client.synthesize("Locked out"))
    finally:
        other.execute("ROLLBACK")
        other.close()

    assert isinstance(got, ConfigurationError), got
    assert "this call's time limit (1.5 s)" in got.message
    assert 1.4 <= elapsed <= 1.5 + MARGIN  # not the 5 s busy timeout
    assert fake_aimlapi.tts_requests == []
    client.close()


def test_a_black_holed_redis_cache_costs_a_call_no_more_than_its_deadline(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    parts = urlsplit(redis_url)
    proxy = FreezableProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    cache_url = proxy.url(redis_url)
    try:
        client = replica(
            fake_aimlapi,
            tmp_path,
            "r",
            store_url=pg_url,
            cache_url=cache_url,
            cache_ttl=60,
            timeout=1.6,
        )
        client.synthesize("Before the freeze")
        proxy.frozen.set()

        elapsed, got = timed(lambda: client.synthesize("Cache frozen"))

        # Redis is only a saving: the call goes on without it, inside its deadline (the
        # old client retried each timed-out command three times, 5 s each).
        assert elapsed <= 1.6 + MARGIN
        assert isinstance(got, OctaveError) or not isinstance(got, BaseException), got
    finally:
        _forget_stores(cache_url)
        proxy.close()


# ---------------------------------------------------------------- item 7: followers


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_in_process_follower_waits_no_longer_than_its_own_deadline(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A leader held up (here: fault injection before its request) far past the limit.
    release = threading.Event()
    options = _options(fake_aimlapi, tmp_path, "r", cache_ttl=60, timeout=1.2)
    text = "Said twice at once"

    if kind == "sync":
        client = OctaveClient(**options)
        original = client._spend_and_run

        def slow_leader(job: Any) -> Any:
            release.wait(10)
            return original(job)

        monkeypatch.setattr(client, "_spend_and_run", slow_leader)
        leader = threading.Thread(target=lambda: _quietly(lambda: client.synthesize(text)))
        leader.start()
        time.sleep(0.3)  # the leader is in flight
        elapsed, got = timed(lambda: client.synthesize(text))
    else:

        async def both() -> tuple[float, Any]:
            aclient = AsyncOctaveClient(**options)
            original = aclient._spend_and_run

            async def slow_leader(job: Any) -> Any:
                await asyncio.to_thread(release.wait, 10)
                return await original(job)

            monkeypatch.setattr(aclient, "_spend_and_run", slow_leader)
            lead = asyncio.ensure_future(aclient.synthesize(text))
            await asyncio.sleep(0.3)
            start = time.monotonic()
            try:
                got: Any = await aclient.synthesize(text)
            except OctaveError as exc:
                got = exc
            elapsed = time.monotonic() - start
            release.set()
            await asyncio.gather(lead, return_exceptions=True)
            return elapsed, got

        _, inner = timed(lambda: asyncio.run(both()))
        assert isinstance(inner, tuple), inner
        elapsed, got = inner
    release.set()

    assert isinstance(got, APITimeoutError), got
    assert "did not finish within this call's 1.2 s limit" in got.message
    assert 1.1 <= elapsed <= 1.2 + MARGIN


def _quietly(fn: Callable[[], object]) -> None:
    with contextlib.suppress(OctaveError):
        fn()


def test_a_follower_on_another_replica_keeps_its_deadline_behind_a_slow_leader(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    # The leader may take 8 s; the follower's limit is 1.5 s. The old follower waited its
    # full limit for the leader, then made the call itself with a fresh limit (2x).
    text = f"Slow leader {time.monotonic_ns()}"
    shared = {"store_url": pg_url, "cache_url": redis_url, "cache_ttl": 30}
    leader = replica(fake_aimlapi, tmp_path, "leader", timeout=8, **shared)
    follower = replica(fake_aimlapi, tmp_path, "follower", timeout=1.5, **shared)
    fake_aimlapi.delay(2.5, times=2)
    lead = threading.Thread(target=lambda: leader.synthesize(text))
    lead.start()
    time.sleep(0.3)

    elapsed, got = timed(lambda: follower.synthesize(text))
    lead.join()

    assert isinstance(got, APITimeoutError), got
    assert "another process" in got.message
    assert 1.4 <= elapsed <= 1.5 + MARGIN
    assert len(fake_aimlapi.tts_requests) == 1  # the follower sent nothing


# ---------------------------------------------------------------- item 8: health checks


def test_health_checks_while_the_store_is_black_holed_share_one_probe(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, pg_proxy: tuple[FreezableProxy, str]
) -> None:
    proxy, url = pg_proxy
    client = replica(fake_aimlapi, tmp_path, "r", store_url=url, timeout=30)
    client.health()
    proxy.frozen.set()
    probes: list[float] = []
    spend = client._spend
    original = spend.usage

    def counted(*args: Any) -> Any:
        probes.append(time.monotonic())
        return original(*args)

    spend.usage = counted  # type: ignore[method-assign]
    results: list[tuple[float, BaseException | None]] = []

    def check() -> None:
        start = time.monotonic()
        try:
            client.health(timeout=1.0)
        except BaseException as exc:
            results.append((time.monotonic() - start, exc))
        else:
            results.append((time.monotonic() - start, None))

    threads = [threading.Thread(target=check, daemon=True) for _ in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert len(results) == 25  # none still waiting
    assert len(probes) == 1  # one read of the store in flight, not 25
    for elapsed, exc in results:
        assert isinstance(exc, ConfigurationError), exc
        assert elapsed <= 1.0 + MARGIN
    # Once it has ended, the next check probes again (and is bounded again).
    time.sleep(0.5)
    elapsed, got = timed(lambda: client.health(timeout=1.0))
    assert isinstance(got, ConfigurationError)
    assert elapsed <= 1.0 + MARGIN
    assert len(probes) == 2
