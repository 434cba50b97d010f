"""One Store suite, run against SQLite, PostgreSQL and (for the cache) Redis.

PostgreSQL and Redis are real servers (see tests/_services.py): a fresh database per
run, a fresh schema per test; a fresh key prefix per run and test.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from _services import postgres_database, redis_prefix, with_database

from octave_tools._store import LedgerEntry, ReservationRefused, SQLiteStore
from octave_tools._store_url import SplitStore, open_store_url
from octave_tools.errors import ConfigurationError

DAY = 86_400.0
LEASE = 60.0


def entry(credits: float, *, ts: float | None = None, model: str = "hume/octave-2") -> LedgerEntry:
    return LedgerEntry(
        ts=time.time() if ts is None else ts,
        engine="aimlapi",
        model=model,
        voice="Ava Song",
        format="wav",
        characters=10,
        credits=credits,
        usd=credits / 1e6,
        request_id="r",
        text_sha256="0" * 64,
        cached=False,
    )


# ---------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    yield from postgres_database()


@pytest.fixture(scope="session")
def redis_run() -> Iterator[tuple[str, str]]:
    yield from redis_prefix()


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """A URL whose search_path is a fresh schema: each test starts from no tables."""
    import psycopg

    schema = f"t_{secrets.token_hex(5)}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield with_database(pg_database, urlsplit(pg_database).path.lstrip("/"), search_path=schema)


def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if kind == "sqlite":
        store: Any = SQLiteStore(tmp_path / "ledger.sqlite3")
    else:
        from octave_tools._store_pg import PostgresStore

        store = PostgresStore(request.getfixturevalue("pg_url"))
    request.addfinalizer(store.close)
    return store


def store_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite://{tmp_path / 'ledger.sqlite3'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(params=["sqlite", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return make_store(kind, request, tmp_path)


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param != "redis":
        return make_store(str(request.param), request, tmp_path)
    from octave_tools._cache_redis import RedisCache

    url, prefix = request.getfixturevalue("redis_run")
    made = RedisCache(url, prefix=f"{prefix}{secrets.token_hex(4)}:")
    request.addfinalizer(made.close)
    return made


def run_children(script: str, args: list[str], count: int) -> list[str]:
    """Run ``script`` in ``count`` processes at once; their stdout, each checked to exit 0."""
    code = textwrap.dedent(script)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        outs.append(out.strip())
    return outs


_OPEN = """
import sys, time
from octave_tools._store import LedgerEntry
from octave_tools._store_url import open_store_url
from pathlib import Path

def entry(credits):
    return LedgerEntry(time.time(), "aimlapi", "hume/octave-2", "Ava Song", "wav", 10,
                       credits, None, "r", "0" * 64, False)

store = open_store_url(sys.argv[1], data_dir=Path("/nonexistent"))
"""


# ---------------------------------------------------------------- ledger


def test_ledger_totals_are_exact(store: Any) -> None:
    now = time.time()
    store.add(entry(100, ts=now - 10))
    store.add(entry(250, ts=now - 5, model="other/model"))
    store.add(entry(0, ts=now - 4))  # a free (cached) call: counted as a call, not spend
    store.add(entry(999, ts=now - 2 * DAY))
    store.flush()
    assert store.spent_since(now - DAY) == (350.0, now - 10)
    rows = store.usage(now - DAY, "model")
    assert [(r.key, r.calls, r.credits, r.characters) for r in rows] == [
        ("other/model", 1, 250.0, 10),
        ("hume/octave-2", 2, 100.0, 20),
    ]
    days = Counter(
        time.strftime("%Y-%m-%d", time.gmtime(t))
        for t in (now - 10, now - 5, now - 4, now - 2 * DAY)
    )
    assert {r.key: r.calls for r in store.usage(now - 3 * DAY, "day")} == dict(days)


def test_the_windows_first_minute_is_counted_call_by_call(store: Any) -> None:
    # The window starts mid-minute: of two calls in that minute, only the later counts.
    since = 60 * (time.time() // 60) - DAY + 30
    store.add(entry(5, ts=since - 1))
    store.add(entry(7, ts=since + 1))
    store.add(entry(11, ts=since + 90))
    store.flush()
    assert store.spent_since(since) == (18.0, since + 1)
    assert store.reserve("daily", 3, 20, DAY, LEASE, since + DAY) == ReservationRefused(
        spent=18.0, held=0.0, frees_at=since + 1 + DAY
    )


# ---------------------------------------------------------------- budget


def test_reserve_admits_until_the_limit_then_refuses_with_the_numbers(store: Any) -> None:
    now = time.time()
    store.add(entry(30, ts=now - 100))
    store.flush()
    first = store.reserve("daily", 40, 100, DAY, LEASE, now)
    second = store.reserve("daily", 30, 100, DAY, LEASE, now)
    assert isinstance(first, str) and isinstance(second, str) and first != second
    refused = store.reserve("daily", 1, 100, DAY, LEASE, now)
    assert refused == ReservationRefused(spent=30.0, held=70.0, frees_at=now - 100 + DAY)
    # Another budget name has its own holds (the ledger's spend counts for both).
    assert isinstance(store.reserve("other", 70, 100, DAY, LEASE, now), str)


def test_a_free_call_is_refused_once_the_limit_is_reached(store: Any) -> None:
    now = time.time()
    rid = store.reserve("daily", 100, 100, DAY, LEASE, now)
    assert isinstance(rid, str)
    assert isinstance(store.reserve("daily", 0, 100, DAY, LEASE, now), ReservationRefused)


def test_settle_replaces_the_hold_by_the_real_cost(store: Any) -> None:
    now = time.time()
    rid = store.reserve("daily", 60, 100, DAY, LEASE, now)
    store.settle(rid, entry(45, ts=now))
    assert store.spent_since(now - DAY) == (45.0, now)
    # 45 spent, nothing held: 55 fits, 56 does not.
    refused = store.reserve("daily", 56, 100, DAY, LEASE, now)
    assert refused == ReservationRefused(spent=45.0, held=0.0, frees_at=now + DAY)
    assert isinstance(store.reserve("daily", 55, 100, DAY, LEASE, now), str)


def test_release_frees_the_hold(store: Any) -> None:
    now = time.time()
    rid = store.reserve("daily", 100, 100, DAY, LEASE, now)
    assert isinstance(store.reserve("daily", 1, 100, DAY, LEASE, now), ReservationRefused)
    store.release(rid)
    assert isinstance(store.reserve("daily", 100, 100, DAY, LEASE, now), str)


def test_an_expired_lease_counts_as_spent_until_it_leaves_the_window(store: Any) -> None:
    start = time.time() - 2 * DAY
    rid = store.reserve("daily", 80, 100, DAY, LEASE, start)
    assert isinstance(rid, str)
    # Lease over, never settled: the call may have been billed, so it still counts.
    later = start + LEASE + 1
    assert store.reserve("daily", 30, 100, DAY, LEASE, later) == ReservationRefused(
        spent=80.0, held=0.0, frees_at=start + DAY
    )
    # Once the window has passed it, it is gone for good.
    assert isinstance(store.reserve("daily", 100, 100, DAY, LEASE, start + DAY + 1), str)


def test_settling_after_the_lease_ran_out_counts_the_call_once(store: Any) -> None:
    now = time.time()
    rid = store.reserve("daily", 80, 100, DAY, 0.5, now - 10)
    store.settle(rid, entry(50, ts=now))
    assert store.reserve("daily", 51, 100, DAY, LEASE, now) == ReservationRefused(
        spent=50.0, held=0.0, frees_at=now + DAY
    )


_CONTEND = (
    _OPEN
    + """
limit, amount, tries = 50.0, 10.0, 4
start = float(sys.argv[2])
while time.time() < start:  # every process begins at the same moment
    time.sleep(0.001)
admitted = 0
for _ in range(tries):
    rid = store.reserve("daily", amount, limit, 86400.0, 60.0, time.time())
    if isinstance(rid, str):
        admitted += 1
        time.sleep(0.005)  # the upstream call
        store.settle(rid, entry(amount))
print(admitted)
"""
)


def test_concurrent_processes_admit_exactly_the_room(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = store_url(kind, request, tmp_path)
    make_store(kind, request, tmp_path)  # the schema exists before the race
    outs = run_children(_CONTEND, [url, str(time.time() + 3.0)], 6)
    admitted = sum(int(o) for o in outs)
    assert 4 <= admitted <= 5  # room for K=5 calls: never more, at most one fewer
    check = make_store(kind, request, tmp_path)
    assert check.spent_since(time.time() - DAY)[0] == admitted * 10.0


_SETTLE_AND_DIE = (
    _OPEN
    + """
import os
rid = store.reserve("daily", 10.0, 100.0, 86400.0, 60.0, time.time())
store.settle(rid, entry(7.0))
store.add(entry(3.0))
store.flush()
os._exit(0)  # no atexit, no close: what returned must already be durable
"""
)


def test_a_settled_call_survives_its_process_dying(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = store_url(kind, request, tmp_path)
    run_children(_SETTLE_AND_DIE, [url], 1)
    store = make_store(kind, request, tmp_path)
    assert store.spent_since(time.time() - DAY)[0] == 10.0
    # The hold went with the settle: 90 of 100 is free.
    assert isinstance(store.reserve("daily", 90, 100, DAY, LEASE, time.time()), str)


# ---------------------------------------------------------------- cache


def test_cache_hits_until_expiry(cache: Any) -> None:
    now = time.time()
    assert cache.cache_get("k1", now) is None
    cache.cache_put("k1", '{"a": 1}', now + 30)
    cache.cache_put("k2", "short", now + 0.3)
    assert cache.cache_get("k1", now) == '{"a": 1}'
    cache.cache_put("k1", "newer", now + 30)
    assert cache.cache_get("k1", now) == "newer"
    time.sleep(0.4)
    assert cache.cache_get("k2", time.time()) is None


_CACHE_PUT = (
    _OPEN
    + """
store.cache_put("shared-key", "from-another-process", time.time() + 60)
"""
)


def test_the_same_key_hits_from_another_process(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = store_url(kind, request, tmp_path)
    run_children(_CACHE_PUT, [url], 1)
    store = make_store(kind, request, tmp_path)
    assert store.cache_get("shared-key", time.time()) == "from-another-process"


def test_redis_cache_is_shared_between_processes(redis_run: tuple[str, str]) -> None:
    from octave_tools._cache_redis import RedisCache

    url, prefix = redis_run
    prefix += "shared:"
    script = (
        "import sys, time\nfrom octave_tools._cache_redis import RedisCache\n"
        "RedisCache(sys.argv[1], prefix=sys.argv[2]).cache_put('k', 'v1', time.time() + 60)\n"
    )
    run_children(script, [url, prefix], 1)
    here = RedisCache(url, prefix=prefix)
    assert here.cache_get("k", time.time()) == "v1"
    here.close()


# ---------------------------------------------------------------- coalescing (Redis)


def test_one_leader_and_followers_get_its_result(redis_run: tuple[str, str]) -> None:
    from octave_tools._cache_redis import RedisCache

    url, prefix = redis_run
    a = RedisCache(url, prefix=prefix + "co1:")
    b = RedisCache(url, prefix=prefix + "co1:")
    token = a.lead("call", ttl=10)
    assert isinstance(token, str)
    assert b.lead("call", ttl=10) is None
    got: list[str | None] = []
    waiter = threading.Thread(target=lambda: got.append(b.follow("call", timeout=5)))
    waiter.start()
    time.sleep(0.1)
    a.finish("call", token, '{"speech": 1}')
    waiter.join(5)
    assert got == ['{"speech": 1}']
    a.close()
    b.close()


def test_a_failed_or_dead_leader_releases_its_followers(redis_run: tuple[str, str]) -> None:
    from octave_tools._cache_redis import RedisCache

    url, prefix = redis_run
    c = RedisCache(url, prefix=prefix + "co2:")
    token = c.lead("failed", ttl=10)
    assert token is not None
    c.finish("failed", token, None)
    assert c.follow("failed", timeout=2) is None
    assert c.lead("failed", ttl=10) is not None  # the next caller may lead
    # A leader that dies: its lock lapses after the TTL, and so does the wait.
    assert c.lead("dead", ttl=0.3) is not None
    began = time.monotonic()
    assert c.follow("dead", timeout=5) is None
    assert time.monotonic() - began < 2
    # A bounded wait: a live leader that takes too long does not hold a follower.
    assert c.lead("slow", ttl=30) is not None
    began = time.monotonic()
    assert c.follow("slow", timeout=0.3) is None
    assert 0.3 <= time.monotonic() - began < 2
    c.close()


# ---------------------------------------------------------------- URLs and errors


def test_the_default_is_todays_sqlite_file(tmp_path: Path) -> None:
    store = open_store_url(None, data_dir=tmp_path)
    assert isinstance(store, SQLiteStore)
    assert store.path == (tmp_path / "ledger.sqlite3").resolve()
    assert open_store_url("", data_dir=tmp_path) is store


def test_a_sqlite_url_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "ledger.db"
    store = open_store_url(f"sqlite://{path}", data_dir=tmp_path / "unused")
    assert isinstance(store, SQLiteStore) and store.path == path.resolve()


def test_a_postgres_url_opens_the_shared_store(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    from octave_tools._store_pg import PostgresStore

    store = open_store_url(pg_url, data_dir=tmp_path)
    try:
        assert isinstance(store, PostgresStore)
        assert open_store_url(pg_url, data_dir=tmp_path) is store  # one pool per process
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT version FROM octave_schema").fetchall() == [(1,)]
    finally:
        store.close()  # type: ignore[attr-defined]


_OPEN_FRESH = """
import sys
from octave_tools._store_pg import PostgresStore
PostgresStore(sys.argv[1]).close()
print("ok")
"""


def test_replicas_starting_at_once_create_the_schema_once(pg_url: str) -> None:
    import psycopg

    assert run_children(_OPEN_FRESH, [pg_url], 5) == ["ok"] * 5
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM octave_schema").fetchall() == [(1,)]


def test_a_newer_schema_is_refused(pg_url: str) -> None:
    import psycopg

    from octave_tools._store_pg import PostgresStore

    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE octave_schema SET version = 2")
    with pytest.raises(ConfigurationError, match=r"schema version 2, newer"):
        PostgresStore(pg_url)


def test_an_unreachable_postgres_names_the_setting_not_the_password(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    url = "postgresql://root:hunter2-secret@127.0.0.1:1/octave"
    with pytest.raises(ConfigurationError) as err:
        open_store_url(url, data_dir=tmp_path)
    text = str(err.value)
    assert "OCTAVE_TOOLS_STORE_URL" in text and "postgresql://root:***@127.0.0.1:1/octave" in text
    assert "hunter2" not in text and "hunter2" not in repr(err.value)
    assert not (tmp_path / "ledger.sqlite3").exists()  # no quiet local fallback


def test_an_unreachable_redis_names_the_setting_not_the_password(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    with pytest.raises(ConfigurationError) as err:
        open_store_url(
            f"sqlite://{tmp_path / 'l.db'}",
            data_dir=tmp_path,
            cache_url="redis://:hunter2-secret@127.0.0.1:1/0",
        )
    text = str(err.value)
    assert "OCTAVE_TOOLS_CACHE_URL" in text and "redis://:***@127.0.0.1:1/0" in text
    assert "hunter2" not in text


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:6379/0", "Redis holds only the cache"),
        ("mysql://u:pw-secret@h/db", "must start with sqlite:/// or postgresql://"),
        ("sqlite://", "names no file"),
    ],
)
def test_bad_store_urls_are_clear(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=message) as err:
        open_store_url(url, data_dir=tmp_path)
    assert "OCTAVE_TOOLS_STORE_URL" in str(err.value) and "pw-secret" not in str(err.value)


def test_a_redis_cache_url_moves_only_the_cache(redis_run: tuple[str, str], tmp_path: Path) -> None:
    url, _ = redis_run
    store = open_store_url(f"sqlite://{tmp_path / 'l.db'}", data_dir=tmp_path, cache_url=url)
    assert isinstance(store, SplitStore)
    key = f"split-{secrets.token_hex(4)}"
    store.cache_put(key, "v", time.time() + 30)
    try:
        assert store.cache_get(key, time.time()) == "v"
        assert store.cache.cache_get(key, time.time()) == "v"
        tables = sqlite3.connect(tmp_path / "l.db").execute("SELECT count(*) FROM cache")
        assert tables.fetchone() == (0,)
        assert isinstance(store.reserve("daily", 1, 10, DAY, LEASE, time.time()), str)
    finally:
        store.cache._redis.delete(store.cache.prefix + "cache:" + key)


def test_an_unusable_sqlite_file_still_holds_the_budget_in_memory(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite3").mkdir()  # a folder where the file should be
    store = SQLiteStore(tmp_path / "dir.sqlite3")
    assert not store.usable
    now = time.time()
    rid = store.reserve("daily", 60, 100, DAY, LEASE, now)
    assert isinstance(rid, str)
    assert store.reserve("daily", 50, 100, DAY, LEASE, now) == ReservationRefused(
        spent=0.0, held=60.0, frees_at=now + DAY
    )
    store.settle(rid, entry(70, ts=now))
    assert store.reserve("daily", 31, 100, DAY, LEASE, now) == ReservationRefused(
        spent=70.0, held=0.0, frees_at=now + DAY
    )


def test_the_pool_survives_a_server_side_disconnect(pg_url: str) -> None:
    import psycopg

    from octave_tools._store_pg import PostgresStore

    store = PostgresStore(pg_url)
    try:
        store.add(entry(5))
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        time.sleep(0.2)
        assert store.spent_since(time.time() - DAY)[0] == 5.0
    finally:
        store.close()


def test_json_values_round_trip(cache: Any) -> None:
    value = json.dumps({"audio_url": "https://cdn.example/a.wav", "text": "é ✓"})
    cache.cache_put("j", value, time.time() + 30)
    assert cache.cache_get("j", time.time()) == value


def test_a_configured_server_that_is_down_fails_rather_than_skips() -> None:
    from _services import _unavailable

    with pytest.raises(pytest.fail.Exception, match="is set but the server does not answer"):
        _unavailable("OCTAVE_TOOLS_TEST_POSTGRES_URL", True, "postgresql://h/db", "refused")
    with pytest.raises(pytest.skip.Exception, match="no server answers"):
        _unavailable("OCTAVE_TOOLS_TEST_POSTGRES_URL", False, "postgresql://h/db", "refused")


def test_a_settle_the_store_refused_is_kept_counted_and_written_later(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    from octave_tools._store_pg import PostgresStore

    store = PostgresStore(pg_url)
    admin = psycopg.connect(pg_url, autocommit=True)
    try:
        now = time.time()
        rid = store.reserve("daily", 40, 100, DAY, LEASE, now)
        assert isinstance(rid, str)
        admin.execute("ALTER TABLE octave_calls RENAME TO octave_calls_away")
        store.settle(rid, entry(30, ts=now))  # the call was paid: no error for the caller
        assert "settling a call failed on the store in OCTAVE_TOOLS_STORE_URL" in caplog.text
    finally:
        admin.execute("ALTER TABLE IF EXISTS octave_calls_away RENAME TO octave_calls")
    try:
        store.flush()
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT credits FROM octave_calls").fetchall() == [(30.0,)]
            assert conn.execute("SELECT count(*) FROM octave_reservations").fetchone() == (0,)
        assert store.spent_since(now - 10) == (30.0, now)
    finally:
        store.close()
        admin.close()


def test_a_store_that_went_down_refuses_reservations_with_the_setting(pg_url: str) -> None:
    from octave_tools._store_pg import PostgresStore

    store = PostgresStore(pg_url)
    store._pool.close()  # as good as a server that stopped answering
    with pytest.raises(ConfigurationError, match=r"OCTAVE_TOOLS_STORE_URL \(postgresql://"):
        store.reserve("daily", 1, 100, DAY, LEASE, time.time())
    with pytest.raises(ConfigurationError, match="OCTAVE_TOOLS_STORE_URL"):
        store.spent_since(time.time() - DAY)
    assert store.cache_get("k", time.time()) is None  # a cache failure is a miss


def test_sqlite_reserve_fails_closed_while_another_program_holds_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from octave_tools import _store

    monkeypatch.setattr(_store, "BUSY_TIMEOUT", 0.2)
    path = tmp_path / "ledger.sqlite3"
    store = SQLiteStore(path)
    now = time.time()
    rid = store.reserve("daily", 10, 100, DAY, LEASE, now)
    assert isinstance(rid, str)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(_store.LedgerLockedError, match="locked for more than 0.2 s"):
            store.reserve("daily", 10, 100, DAY, LEASE, now)
        store.settle(rid, entry(8, ts=now))  # a paid call: queued, not lost
        assert store.usable
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.flush()
    assert store.spent_since(now - 1) == (8.0, now)
    # The hold the locked settle could not delete now counts as spent: 18 of 100.
    assert store.reserve("daily", 83, 100, DAY, LEASE, now + LEASE + 1) == ReservationRefused(
        spent=18.0, held=0.0, frees_at=now + DAY
    )
    store.close()


def test_usage_groups_rows_by_job_id(store: Any) -> None:
    import dataclasses

    now = time.time()
    for credits in (100, 200, 300):
        store.add(dataclasses.replace(entry(credits, ts=now - 3), job_id="job-a"))
    store.add(entry(50, ts=now - 2))
    store.flush()
    rows = {r.key: (r.calls, r.credits) for r in store.usage(now - DAY, "job")}
    assert rows == {"job-a": (3, 600.0), "": (1, 50.0)}
