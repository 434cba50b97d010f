"""The ledger's schema revision 2: idempotent writes, and an in-place migration that the
previous release (0.1.0) keeps working with, on SQLite and PostgreSQL.

The 0.1.0 schema and statements below are copied verbatim from that release: a store it
made is upgraded here, and its own SQL is then run against the upgraded store, as a
replica not yet upgraded would.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from _services import postgres_database, with_database
from test_store_suite import run_children

from octave_tools._store import SCHEMA_REVISION, LedgerEntry, SQLiteStore

DAY = 86_400.0

# ---------------------------------------------------------------- 0.1.0, verbatim

V1_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    engine TEXT NOT NULL,
    model TEXT NOT NULL,
    voice TEXT,
    format TEXT NOT NULL,
    characters INTEGER NOT NULL,
    credits REAL NOT NULL,
    usd REAL,
    request_id TEXT,
    text_sha256 TEXT NOT NULL,
    cached INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_ts ON calls (ts);
CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""
V1_SQLITE_RESERVATIONS = """
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    budget TEXT NOT NULL,
    amount REAL NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_budget ON reservations (budget, created);
"""
V1_SQLITE_INSERT = (
    "INSERT INTO calls (ts, engine, model, voice, format, characters, "
    "credits, usd, request_id, text_sha256, cached) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
V1_SQLITE_USAGE = (
    "SELECT model, count(*), sum(cached), sum(characters), "
    "sum(credits), coalesce(sum(usd), 0) FROM calls WHERE ts >= ? GROUP BY 1"
)
V1_SQLITE_WINDOW = (
    "SELECT coalesce(sum(credits), 0), min(ts) FROM calls WHERE ts >= ? AND credits > 0"
)

V1_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS octave_calls (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    engine TEXT NOT NULL,
    model TEXT NOT NULL,
    voice TEXT,
    format TEXT NOT NULL,
    characters INTEGER NOT NULL,
    credits DOUBLE PRECISION NOT NULL,
    usd DOUBLE PRECISION,
    request_id TEXT,
    text_sha256 TEXT NOT NULL,
    cached BOOLEAN NOT NULL
);
CREATE INDEX IF NOT EXISTS octave_calls_ts ON octave_calls (ts);
CREATE TABLE IF NOT EXISTS octave_reservations (
    id TEXT PRIMARY KEY,
    budget TEXT NOT NULL,
    amount DOUBLE PRECISION NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS octave_reservations_budget ON octave_reservations (budget, created);
CREATE TABLE IF NOT EXISTS octave_spend_minutes (
    minute BIGINT PRIMARY KEY,
    credits DOUBLE PRECISION NOT NULL,
    oldest DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS octave_cache (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
"""
V1_PG_INSERT = (
    "INSERT INTO octave_calls (ts, engine, model, voice, format, characters, credits, usd, "
    "request_id, text_sha256, cached) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
)
V1_PG_ADD_MINUTE = (
    "INSERT INTO octave_spend_minutes (minute, credits, oldest) "
    "VALUES (floor(%s::float8 / 60)::bigint, %s, %s) ON CONFLICT (minute) DO UPDATE SET "
    "credits = octave_spend_minutes.credits + excluded.credits, "
    "oldest = least(octave_spend_minutes.oldest, excluded.oldest)"
)
V1_PG_USAGE = (
    "SELECT model, count(*), sum(cached::int), sum(characters), "
    "sum(credits), coalesce(sum(usd), 0) FROM octave_calls WHERE ts >= %s "
    "GROUP BY 1"
)
V1_PG_RATES = (
    "SELECT model, sum(credits), sum(characters) FROM octave_calls "
    "WHERE ts >= %s AND NOT cached AND credits > 0 GROUP BY 1"
)
V1_PG_RESERVE = (
    "INSERT INTO octave_reservations (id, budget, amount, created, expires) "
    "VALUES (%s, %s, %s, %s, %s)"
)


def v1_pg_open(conn: Any) -> None:
    """What 0.1.0's PostgresStore._migrate does at start (SCHEMA_VERSION = 1)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (0x6F637476,))
        conn.execute("CREATE TABLE IF NOT EXISTS octave_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT max(version) FROM octave_schema").fetchone()
        version = row[0] if row else None
        if version is None:
            conn.execute(V1_PG_SCHEMA)
            conn.execute("INSERT INTO octave_schema (version) VALUES (%s)", (1,))
        elif int(str(version)) > 1:
            raise AssertionError(f"0.1.0 would refuse this store: schema version {version}")


def v1_row(credits: float, ts: float, model: str = "hume/octave-2") -> tuple[object, ...]:
    return (ts, "aimlapi", model, "Ava Song", "wav", 10, credits, None, "r", "0" * 64, False)


def entry(credits: float, ts: float, **extra: Any) -> LedgerEntry:
    return LedgerEntry(
        ts, "aimlapi", "hume/octave-2", "Ava Song", "wav", 10, credits, None, "r", "0" * 64,
        False, **extra,
    )  # fmt: skip


# ---------------------------------------------------------------- SQLite


def _v1_sqlite(path: Path, rows: list[tuple[object, ...]]) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V1_SQLITE_SCHEMA)
    db.executescript(V1_SQLITE_RESERVATIONS)
    db.executemany(V1_SQLITE_INSERT, rows)
    db.close()


def test_a_sqlite_ledger_from_the_previous_release_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    now = time.time()
    _v1_sqlite(path, [v1_row(100, now - 10), v1_row(0, now - 5), v1_row(40, now - 2 * DAY)])

    store = SQLiteStore(path)
    try:
        assert store.usable
        # Nothing lost, and the old rows read as billed (not estimated) charges.
        assert store.spent_since(now - DAY) == (100.0, now - 10)
        (row,) = store.usage(now - 3 * DAY, "model")
        assert (row.calls, row.credits, row.estimated_credits) == (3, 140.0, 0.0)
        db = sqlite3.connect(path)
        columns = [r[1] for r in db.execute("PRAGMA table_info(calls)")]
        assert columns[-5:] == ["entry_id", "estimated", "job_id", "key_name", "outcome"]
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_REVISION,)

        # A process still on 0.1.0 writes and reads the upgraded file with its own SQL.
        db.execute(V1_SQLITE_INSERT, v1_row(7, now - 3))
        db.commit()
        assert db.execute(V1_SQLITE_USAGE, (now - DAY,)).fetchall() == [
            ("hume/octave-2", 3, 0, 30, 107.0, 0)
        ]
        assert db.execute(V1_SQLITE_WINDOW, (now - DAY,)).fetchone() == (107.0, now - 10)
        db.close()
        store._window = None  # the next read goes to the file
        assert store.spent_since(now - DAY) == (107.0, now - 10)
    finally:
        store.close()
    # Opening it again (the migration is done) changes nothing.
    again = SQLiteStore(path)
    try:
        assert again.spent_since(now - DAY) == (107.0, now - 10)
    finally:
        again.close()


def test_processes_opening_an_old_sqlite_ledger_at_once_upgrade_it_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    now = time.time()
    _v1_sqlite(path, [v1_row(5, now - 1)])
    script = """
import sys
from pathlib import Path
from octave_tools._store import SQLiteStore
s = SQLiteStore(Path(sys.argv[1]))
assert s.usable, s.unusable_reason
s.close()
print("ok")
"""
    assert run_children(script, [str(path)], 4) == ["ok"] * 4
    db = sqlite3.connect(path)
    assert [r[1] for r in db.execute("PRAGMA table_info(calls)")].count("entry_id") == 1
    assert db.execute("SELECT count(*), sum(credits) FROM calls").fetchone() == (1, 5.0)


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    yield from postgres_database()


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    import psycopg

    schema = f"t_{secrets.token_hex(5)}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield with_database(pg_database, urlsplit(pg_database).path.lstrip("/"), search_path=schema)


def _v1_pg(url: str, rows: list[tuple[object, ...]]) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        v1_pg_open(conn)
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(V1_PG_INSERT, rows)
            paid = [r for r in rows if float(str(r[6])) > 0]
            cur.executemany(V1_PG_ADD_MINUTE, [(r[0], r[6], r[0]) for r in paid])


def test_a_postgres_store_from_the_previous_release_is_upgraded_while_it_runs(
    pg_url: str,
) -> None:
    import psycopg

    from octave_tools._store_pg import PostgresStore

    now = time.time()
    _v1_pg(pg_url, [v1_row(100, now - 10), v1_row(0, now - 5), v1_row(40, now - 2 * DAY)])
    old = psycopg.connect(pg_url, autocommit=True)  # an old replica, connected throughout
    try:
        store = PostgresStore(pg_url)
        try:
            assert store.spent_since(now - DAY) == (100.0, now - 10)
            (row,) = store.usage(now - 3 * DAY, "model")
            assert (row.calls, row.credits, row.estimated_credits) == (3, 140.0, 0.0)
            with psycopg.connect(pg_url) as conn:
                # The compatibility level stays 1, so 0.1.0 replicas are not refused ...
                assert conn.execute("SELECT version, revision FROM octave_schema").fetchall() == [
                    (1, 2)
                ]
            # ... as its own start-up check shows, on a fresh connection and the old one.
            with psycopg.connect(pg_url, autocommit=True) as conn:
                v1_pg_open(conn)
            v1_pg_open(old)

            # The old replica reserves, settles and reports with its 0.1.0 statements.
            with old.transaction():
                old.execute(V1_PG_RESERVE, ("old-hold", "daily", 50.0, now, now + 60))
            with old.transaction():
                old.execute("DELETE FROM octave_reservations WHERE id = %s", ("old-hold",))
                old.execute(V1_PG_INSERT, v1_row(30, now - 2))
                old.execute(V1_PG_ADD_MINUTE, (now - 2, 30, now - 2))
            assert old.execute(V1_PG_USAGE, (now - DAY,)).fetchall() == [
                ("hume/octave-2", 3, 0, 30, 130.0, 0.0)
            ]
            assert old.execute(V1_PG_RATES, (now - DAY,)).fetchall() == [
                ("hume/octave-2", 130.0, 20)
            ]
            # The new code sees the old replica's charge, and the old one sees the new one's.
            store.add(entry(9, now - 1, estimated=True, key_name="team-a"))
            assert store.spent_since(now - DAY) == (139.0, now - 10)
            assert old.execute(V1_PG_USAGE, (now - DAY,)).fetchall() == [
                ("hume/octave-2", 4, 0, 40, 139.0, 0.0)
            ]
            (row,) = store.usage(now - DAY, "model")
            assert (row.calls, row.credits, row.estimated_credits) == (4, 139.0, 9.0)
        finally:
            store.close()
    finally:
        old.close()


_OPEN_PG = """
import sys
from octave_tools._store_pg import PostgresStore
PostgresStore(sys.argv[1]).close()
print("ok")
"""


def test_replicas_upgrading_an_old_postgres_store_at_once_do_it_once(pg_url: str) -> None:
    import psycopg

    now = time.time()
    _v1_pg(pg_url, [v1_row(5, now - 1)])
    assert run_children(_OPEN_PG, [pg_url], 4) == ["ok"] * 4
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version, revision FROM octave_schema").fetchall() == [(1, 2)]
        assert conn.execute("SELECT count(*), sum(credits) FROM octave_calls").fetchone() == (
            1,
            5.0,
        )


# ---------------------------------------------------------------- idempotent writes


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        made: Any = SQLiteStore(tmp_path / "ledger.sqlite3")
    else:
        from octave_tools._store_pg import PostgresStore

        made = PostgresStore(request.getfixturevalue("pg_url"))
    request.addfinalizer(made.close)
    return made


def test_a_retried_ledger_write_is_counted_once(store: Any) -> None:
    now = time.time()
    paid = entry(100, now - 5)
    store.add(paid)
    store.add(paid)  # a retry after a commit whose answer was lost
    rid = store.reserve("daily", 60, 1000, DAY, 60, now)
    settled = entry(45, now - 1)
    store.settle(rid, settled)
    store.settle(rid, settled)
    store.flush()
    if isinstance(store, SQLiteStore):
        store._window = None
    assert store.spent_since(now - DAY) == (145.0, now - 5)
    (row,) = store.usage(now - DAY, "model")
    assert (row.calls, row.credits) == (2, 145.0)
    # The budget counts each once too: 145 spent, 855 left.
    assert isinstance(store.reserve("daily", 855, 1000, DAY, 60, now), str)


def test_entries_get_distinct_ids_made_before_the_write() -> None:
    first, second = entry(1, 0.0), entry(1, 0.0)
    assert len(first.entry_id) == 32 and int(first.entry_id, 16) >= 0
    assert first.entry_id != second.entry_id
    assert (first.estimated, first.job_id, first.key_name) == (False, None, None)
