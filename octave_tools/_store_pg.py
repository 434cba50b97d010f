"""The ledger, budget and cache in PostgreSQL, shared by every replica (``postgres`` extra).

Every method is one short transaction on a pooled connection (psycopg 3), so the
budget holds exactly across processes: ``reserve`` takes a per-budget advisory lock,
sums the window and inserts its hold in one step. Writes are synchronous: once
``add`` or ``settle`` returned, the row is in the database for every replica.

Failures: ``reserve``, ``spent_since`` and ``usage`` raise ConfigurationError naming
the setting (the budget fails closed: no call is made that it cannot count). A
ledger write that fails after a paid call is kept in memory, counted, and written
on the next success; a cache failure is a miss.

Time: every operation ends by the call's deadline (``_calltime``), or OP_TIMEOUT
outside a call. Waiting for a pooled connection is bounded by it; the session's
``statement_timeout`` and ``lock_timeout`` are set from it before each operation, so
the server gives up a lock wait in time; and a watchdog shuts the socket down just
after it, for a network path that went silent (the server's own cancel could not
reach us then, and psycopg waits on a silent socket for ever). Connections also
get TCP keepalives and ``tcp_user_timeout`` unless the URL sets its own.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from . import observe as _observe
from ._calltime import current, remaining, watchdog
from ._redact import redact_url, scrub
from ._store import (
    LEDGER_COLUMNS,
    MARK_LIFETIME,
    PROBE_LOOKBACK,
    GroupBy,
    KeyBudget,
    LedgerEntry,
    Probe,
    ReservationRefused,
    UsageRow,
    _rates,
    _verdict,
    key_hold,
    usage_rows,
)
from .errors import ConfigurationError

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import ConnectionPool, PoolTimeout

    class StoreTimedOut(psycopg.OperationalError):
        """The store did not answer within the call's time limit."""

except ImportError:  # pragma: no cover - exercised without the extra
    psycopg = None  # type: ignore[assignment]
    ConnectionPool = None  # type: ignore[assignment,misc]

__all__ = ["SCHEMA_REVISION", "SCHEMA_VERSION", "PostgresStore", "open_postgres_store"]

logger = logging.getLogger("octave_tools")

# octave_schema.version is the compatibility level: a store whose version is higher than
# this code's is refused (every release so far refuses one newer than it knows). Additive
# changes, which older replicas keep working with, do not raise it: they raise the
# revision instead (octave_schema.revision, a column older releases never read).
SCHEMA_VERSION = 1
SCHEMA_REVISION = 2
# Two-key advisory locks, first key = this number: apart from other apps' locks.
_LOCK_SPACE = 0x6F637476  # "octv"
_CACHE_PURGE_EVERY = 60.0
# An operation outside any call (a flush at exit, a report) gets this long.
OP_TIMEOUT = 30.0
# A write that records a paid call is tried for at least this long, even when the call's
# time is up: dropped, it would be counted in this process only.
WRITE_FLOOR = 1.0
# The client cuts a silent socket this long after the deadline: the server's own
# timeouts (set to the deadline) answer first when it can still be heard.
CUT_GRACE = 0.2
# TCP settings a connection gets unless the URL sets them: a dead peer is noticed in
# about 25 s even between calls (keepalives), and sent data left unacknowledged for
# 15 s ends the connection (tcp_user_timeout, Linux).
TCP_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",
}
# Sets both per operation, in one prepared round trip.
_SET_TIMEOUTS = (
    "SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)"
)

_SCHEMA_V1 = """
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

# Revision 2 (idempotent ledger writes, estimated charges, attribution): new nullable or
# defaulted columns and a unique index, nothing renamed or dropped. ADD COLUMN with a
# constant default is a catalog change in PostgreSQL 11+ (no table rewrite); the index
# scans the table once. Rows written by an older replica after this get a NULL
# entry_id (NULLs never conflict) and estimated = false.
_SCHEMA_V2 = """
ALTER TABLE octave_schema ADD COLUMN IF NOT EXISTS revision INTEGER;
ALTER TABLE octave_calls
    ADD COLUMN IF NOT EXISTS entry_id TEXT,
    ADD COLUMN IF NOT EXISTS estimated BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS job_id TEXT,
    ADD COLUMN IF NOT EXISTS key_name TEXT,
    ADD COLUMN IF NOT EXISTS outcome TEXT NOT NULL DEFAULT 'ok';
CREATE UNIQUE INDEX IF NOT EXISTS octave_calls_entry_id ON octave_calls (entry_id);
CREATE INDEX IF NOT EXISTS octave_calls_key ON octave_calls (key_name, ts)
    WHERE key_name IS NOT NULL;
"""

_GROUP_SQL: dict[str, str] = {
    "day": "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "model": "model",
    "voice": "coalesce(voice, '(default)')",
    "engine": "engine",
    "job": "coalesce(job_id, '')",
    "key": "coalesce(key_name, 'operator')",
}

# One ledger row and, when it was paid, its minute total (see below), in one statement:
# a row already written (same entry_id: a retried write) adds nothing to either.
_INSERT_CALL = f"""
WITH added AS (
    INSERT INTO octave_calls ({LEDGER_COLUMNS})
    VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)
    ON CONFLICT (entry_id) DO NOTHING
    RETURNING ts, credits
)
INSERT INTO octave_spend_minutes (minute, credits, oldest)
SELECT floor(ts / 60)::bigint, credits, ts FROM added WHERE credits > 0
ON CONFLICT (minute) DO UPDATE SET
    credits = octave_spend_minutes.credits + excluded.credits,
    oldest = least(octave_spend_minutes.oldest, excluded.oldest)
"""  # noqa: S608 - constants only
# Paid spend per minute, kept with each ledger write: a window total reads at most a
# day's 1,441 minute rows plus the calls of its first, partial minute, not every call.
# Exact: the window's first minute is summed from its calls (ts >= since), the rest
# from whole minutes. Named parameter: since.
_WINDOW_SPENT = """
SELECT e.c + m.c, coalesce(e.o, m.o) FROM
  (SELECT coalesce(sum(credits), 0) AS c, min(ts) AS o FROM octave_calls
    WHERE ts >= %(since)s AND ts < %(since)s + 120 AND credits > 0
      AND floor(ts / 60) = floor(%(since)s::float8 / 60)) AS e,
  (SELECT coalesce(sum(credits), 0) AS c, min(oldest) AS o FROM octave_spend_minutes
    WHERE minute > floor(%(since)s::float8 / 60)) AS m
"""

T = TypeVar("T")


class PostgresStore:
    """Ledger, budget reservations and cache in one PostgreSQL database."""

    def __init__(
        self,
        url: str,
        *,
        setting: str = "OCTAVE_TOOLS_STORE_URL",
        connect_timeout: float = 5.0,
        pool_size: int = 4,
    ) -> None:
        if psycopg is None or ConnectionPool is None:
            raise ConfigurationError(
                f"{setting} is a postgresql:// URL, which needs the PostgreSQL driver: "
                "pip install 'octave-tools[postgres]'."
            )
        self.url = url
        self.setting = setting
        self._lock = threading.Lock()
        # Paid calls not yet written (with the hold each replaces): still counted here.
        self._lost: list[tuple[str | None, LedgerEntry]] = []
        self._warned = False
        self._last_purge = 0.0
        # Opened on a call's first use: within what is left of it (libpq's least is 2 s).
        wait = remaining(connect_timeout)
        if wait <= 0:
            raise self._unreachable(StoreTimedOut(self._late()))
        timeout = max(1, math.ceil(wait))
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise self._unreachable(exc) from None
        tcp: dict[str, Any] = {k: v for k, v in TCP_DEFAULTS.items() if k not in params}
        try:
            # One direct connection first: its error says why (refused, no such
            # database, bad password); the pool's only says "timed out".
            with psycopg.connect(url, connect_timeout=timeout, autocommit=True, **tcp) as conn:
                self._bounded(conn, time.monotonic() + wait, self._migrate)
        except psycopg.Error as exc:
            raise self._unreachable(exc) from None
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "connect_timeout": max(2, round(connect_timeout)), **tcp},
            timeout=connect_timeout,
            open=False,
            name="octave-tools",
        )
        try:
            self._pool.open(wait=True, timeout=max(0.1, remaining(connect_timeout)))
        except Exception as exc:
            self._pool.close()
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: BaseException) -> ConfigurationError:
        reason = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "", self.url)
        reason = reason or type(exc).__name__
        return ConfigurationError(
            f"The store in {self.setting} ({redact_url(self.url)}) cannot be used: {reason}. "
            f"Check that PostgreSQL is running and the URL is right, or unset {self.setting} "
            "to keep the ledger in a local SQLite file."
        )

    def _migrate(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        # Replicas starting at once: concurrent CREATE TABLE IF NOT EXISTS can still
        # collide in the catalog, so they take turns under one transaction lock.
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCK_SPACE,))
            conn.execute("CREATE TABLE IF NOT EXISTS octave_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) FROM octave_schema").fetchone()
            version = row[0] if row else None
            if version is None:
                conn.execute(_SCHEMA_V1)
                conn.execute("INSERT INTO octave_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
            elif int(str(version)) > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"The store in {self.setting} ({redact_url(self.url)}) has schema "
                    f"version {version}, newer than this octave-tools knows "
                    f"({SCHEMA_VERSION}); upgrade octave-tools."
                )
            if _revision(conn) < SCHEMA_REVISION:
                # In place, under the same lock: replicas of the previous release keep
                # running on it (they never read the revision, and their writes name
                # only the columns they know).
                conn.execute(_SCHEMA_V2)
                conn.execute("UPDATE octave_schema SET revision = %s", (SCHEMA_REVISION,))

    def close(self) -> None:
        """Write what is left if possible, then close the pool."""
        self.flush()
        self._pool.close()

    # ------------------------------------------------------------ plumbing

    def _late(self) -> str:
        call = current()
        if call is None:
            return f"it did not answer within {OP_TIMEOUT:g} s"
        return f"it did not answer within the call's time limit ({call.limit:g} s)"

    def _run(
        self, fn: Callable[[psycopg.Connection[tuple[object, ...]]], T], *, floor: float = 0.0
    ) -> T:
        """``fn`` on a pooled connection, ended by the call's deadline (see the module)."""
        now = time.monotonic()
        deadline = now + max(remaining(OP_TIMEOUT), floor)
        # One retry: after a server restart the pool may hand out a dead connection
        # once (it drops it when it comes back broken).
        for attempt in (0, 1):
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreTimedOut(self._late())
            try:
                with self._pool.connection(timeout=left) as conn:
                    return self._bounded(conn, deadline, fn)
            except StoreTimedOut:
                raise
            except PoolTimeout:
                raise StoreTimedOut(self._late()) from None
            except psycopg.OperationalError:
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _bounded(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        deadline: float,
        fn: Callable[[psycopg.Connection[tuple[object, ...]]], T],
    ) -> T:
        """``fn(conn)`` with the server's timeouts set to ``deadline`` and the watchdog armed."""
        fd = conn.pgconn.socket
        alarm = watchdog.arm(deadline + CUT_GRACE, lambda: _cut(fd))
        try:
            ms = str(max(1, int((deadline - time.monotonic()) * 1000)))
            conn.execute(_SET_TIMEOUTS, (ms, ms))
            return fn(conn)
        except psycopg.Error as exc:
            if alarm.disarm() or isinstance(
                exc, (pg_errors.LockNotAvailable, pg_errors.QueryCanceled)
            ):
                raise StoreTimedOut(self._late()) from None
            raise
        finally:
            alarm.disarm()

    def _failed(self, what: str, exc: BaseException) -> None:
        if _observe.SINKS:
            _observe.report_store_error(what)
        with self._lock:
            first, self._warned = not self._warned, True
        if first:
            logger.warning(
                "octave-tools: %s failed on the store in %s (%s): %s",
                what,
                self.setting,
                redact_url(self.url),
                scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "", self.url)
                or type(exc).__name__,
            )

    def _write_lost(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        with self._lock:
            lost, self._lost = self._lost, []
        if not lost:
            return
        try:
            with conn.transaction():
                # Every hold of the call: the global one, its probe's and its key's.
                holds = [
                    (rid, f"{rid}/probe", key_hold(rid)) for rid, _ in lost if rid is not None
                ]
                if holds:
                    with conn.cursor() as cur:
                        cur.executemany(_DELETE_HOLD, holds)
                _insert(conn, [e for _, e in lost])
        except BaseException:
            with self._lock:
                self._lost[:0] = lost
            raise

    def _unwritten_in(self, since: float) -> list[LedgerEntry]:
        with self._lock:
            return [e for _, e in self._lost if e.ts >= since]

    # ------------------------------------------------------------ ledger

    def add(self, entry: LedgerEntry) -> None:
        """Write ``entry`` now; on failure keep and count it, and retry on the next write."""

        def write(conn: psycopg.Connection[tuple[object, ...]]) -> None:
            self._write_lost(conn)
            with conn.transaction():
                _insert(conn, [entry])

        try:
            self._run(write, floor=WRITE_FLOOR)
            self._warned = False
        except psycopg.Error as exc:
            with self._lock:
                self._lost.append((None, entry))
            self._failed("writing the ledger", exc)

    def flush(self, timeout: float = 5.0) -> None:
        """Writes are synchronous; this retries any write that failed earlier."""
        with self._lock:
            if not self._lost:
                return
        try:
            self._run(self._write_lost, floor=min(timeout, WRITE_FLOOR))
        except psycopg.Error as exc:
            self._failed("writing the ledger", exc)

    def spent_since(self, since: float) -> tuple[float, float | None]:
        """Credits spent since ``since`` by every process on the store, and the oldest."""
        try:
            row = self._run(lambda conn: conn.execute(_WINDOW_SPENT, {"since": since}).fetchone())
        except psycopg.Error as exc:
            raise self._unreachable(exc) from None
        total = float(str(row[0])) if row else 0.0
        oldest = float(str(row[1])) if row and row[1] is not None else None
        for e in self._unwritten_in(since):
            if e.credits > 0:
                total += e.credits
                oldest = e.ts if oldest is None else min(oldest, e.ts)
        return total, oldest

    def rates(self, since: float) -> dict[str, float]:
        """Credits per character each model was billed since ``since`` (paid calls only)."""
        try:
            found = self._run(
                lambda conn: conn.execute(
                    "SELECT model, sum(credits) FILTER (WHERE NOT estimated), "
                    "sum(characters) FILTER (WHERE NOT estimated), "
                    "sum(credits) FILTER (WHERE estimated), "
                    "sum(characters) FILTER (WHERE estimated) FROM octave_calls "
                    "WHERE ts >= %s AND NOT cached AND credits > 0 GROUP BY 1",
                    (since,),
                ).fetchall()
            )
        except psycopg.Error as exc:
            raise self._unreachable(exc) from None
        totals = {str(m): [0.0 if v is None else float(str(v)) for v in sums] for m, *sums in found}
        return _rates(totals, list(self._unwritten_in(since)), since)

    def usage(self, since: float, by: GroupBy, key: str | None = None) -> list[UsageRow]:
        """Totals per group since ``since`` (of client ``key``'s calls only, if given),
        largest spend first."""
        group = _GROUP_SQL[by]
        try:
            found = self._run(
                lambda conn: conn.execute(
                    # A fallback's failed attempt is a row, not a call.
                    f"SELECT {group}, count(*) FILTER (WHERE outcome = 'ok'), "  # noqa: S608
                    "sum(cached::int), sum(characters), "
                    "sum(credits), coalesce(sum(usd), 0), "
                    "coalesce(sum(credits) FILTER (WHERE estimated), 0) "
                    "FROM octave_calls WHERE ts >= %s "
                    "AND (%s::text IS NULL OR coalesce(key_name, 'operator') = %s) GROUP BY 1",
                    (since, key, key),
                ).fetchall()
            )
        except psycopg.Error as exc:
            raise self._unreachable(exc) from None
        rows: dict[str, list[float]] = {}
        for group_key, *values in found:
            rows[str(group_key)] = [float(str(v)) for v in values]
        return usage_rows(rows, list(self._unwritten_in(since)), by, key)

    # ------------------------------------------------------------ budget (see Store)

    def reserve(
        self,
        budget: str,
        amount: float,
        limit: float | None,
        window: float,
        lease: float,
        now: float,
        probe: Probe | None = None,
        key: KeyBudget | None = None,
    ) -> str | ReservationRefused:
        """Hold ``amount`` of ``budget`` (None ``limit``: no global limit) and, with
        ``key``, of that client key's budget, atomically across every process on the store.

        Under ``pg_advisory_xact_lock`` for each budget (the global one, then the key's,
        then a probe's: always in that order): counts paid ledger rows in the window (for
        the key, its own rows) and the budget's reservations (live ones as held; expired
        ones, whose process may have been billed before it died, as spent until they
        leave the window), inserts the holds if ``amount`` fits both and returns the id;
        else returns ``ReservationRefused`` naming the budget. Raises ConfigurationError
        when the store is down.
        """
        since = now - window
        unwritten = [e for e in self._unwritten_in(since) if e.credits > 0]

        def verdict_of(
            conn: psycopg.Connection[tuple[object, ...]],
            name: str,
            key_name: str | None,
            cap: float,
        ) -> ReservationRefused | None:
            conn.execute(
                "DELETE FROM octave_reservations WHERE budget = %s AND created < %s "
                "AND expires <= %s",
                (name, since, now),
            )
            if key_name is None:
                window_row = conn.execute(_WINDOW_SPENT, {"since": since}).fetchone()
            else:
                window_row = conn.execute(
                    "SELECT coalesce(sum(credits), 0), min(ts) FROM octave_calls "
                    "WHERE key_name = %s AND ts >= %s AND credits > 0",
                    (key_name, since),
                ).fetchone()
            row = conn.execute(
                "SELECT coalesce(sum(amount) FILTER (WHERE expires <= %s), 0),"
                "       coalesce(sum(amount) FILTER (WHERE expires > %s), 0),"
                "       min(created) "
                "FROM octave_reservations WHERE budget = %s",
                (now, now, name),
            ).fetchone()
            assert row is not None and window_row is not None
            spent, oldest, expired, held, held_oldest = (
                None if v is None else float(str(v)) for v in (*window_row, *row)
            )
            mine = [e for e in unwritten if key_name is None or e.key_name == key_name]
            verdict = _verdict(
                (spent or 0.0) + (expired or 0.0) + sum(e.credits for e in mine),
                held or 0.0,
                amount,
                cap,
                window,
                [oldest, held_oldest, *(e.ts for e in mine)],
            )
            return None if verdict is None else replace(verdict, budget=name)

        def attempt(conn: psycopg.Connection[tuple[object, ...]]) -> str | ReservationRefused:
            with conn.transaction():
                for name in ([budget] if limit is not None else []) + (
                    [key.budget] if key is not None else []
                ):
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_SPACE, name)
                    )
                if probe is not None:
                    checked = _check_probe(conn, probe, now)
                    if checked is not None:
                        return checked
                if limit is not None:
                    verdict = verdict_of(conn, budget, None, limit)
                    if verdict is not None:
                        return verdict
                if key is not None:
                    verdict = verdict_of(conn, key.budget, key.name, key.limit)
                    if verdict is not None:
                        return verdict
                rid = uuid.uuid4().hex
                holds = []
                if limit is not None:
                    holds.append((rid, budget, amount, now, now + lease))
                if key is not None:
                    holds.append((key_hold(rid), key.budget, amount, now, now + lease))
                if probe is not None and probe.exclusive:
                    holds.append((f"{rid}/probe", probe.key, 0.0, now, now + lease))
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO octave_reservations (id, budget, amount, created, expires) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        holds,
                    )
                return rid

        try:
            return self._run(attempt)
        except psycopg.Error as exc:
            raise self._unreachable(exc) from None

    def settle(self, reservation_id: str, entry: LedgerEntry) -> None:
        """Replace the hold by the call's ledger row in one transaction; durable on return.

        If the store is down the row is kept in memory, counted, and written later.
        """

        def write(conn: psycopg.Connection[tuple[object, ...]]) -> None:
            with conn.transaction():
                # Under the budget's lock, like reserve(): a reserve must never see the
                # hold gone but the charge not yet counted (it would admit one call too many).
                # The global budget's lock first, then the key's (as reserve takes them).
                held = conn.execute(
                    "SELECT budget FROM octave_reservations WHERE id IN (%s, %s) ORDER BY id",
                    (reservation_id, key_hold(reservation_id)),
                ).fetchall()
                for (name,) in held:
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_SPACE, name)
                    )
                conn.execute(
                    _DELETE_HOLD,
                    (reservation_id, f"{reservation_id}/probe", key_hold(reservation_id)),
                )
                _insert(conn, [entry])

        try:
            self._run(write, floor=WRITE_FLOOR)
        except psycopg.Error as exc:
            with self._lock:
                self._lost.append((reservation_id, entry))
            self._failed("settling a call", exc)
            return
        self._warned = False
        self.flush()

    def release(self, reservation_id: str) -> None:
        """Drop a hold whose call was never billed (if the store is down, its lease ends it)."""
        try:
            self._run(
                lambda conn: conn.execute(
                    _DELETE_HOLD,
                    (reservation_id, f"{reservation_id}/probe", key_hold(reservation_id)),
                ),
                floor=WRITE_FLOOR,
            )
        except psycopg.Error as exc:
            self._failed("releasing a reservation", exc)

    def mark_rate(self, model: str, rate: float, now: float) -> None:
        """Tell every replica that ``model`` was billed far above its hold: their next
        reservation of it re-estimates at ``rate`` (credits a character)."""
        marker = Probe(model, False, now).marker
        try:
            self._run(
                lambda conn: conn.execute(
                    "INSERT INTO octave_reservations (id, budget, amount, created, expires) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                    "amount = excluded.amount, created = excluded.created, "
                    "expires = excluded.expires",
                    (marker, marker, rate, now, now + MARK_LIFETIME),
                )
            )
        except psycopg.Error as exc:
            self._failed("marking a model's rate", exc)

    # ------------------------------------------------------------ cache

    def cache_get(self, key: str, now: float) -> str | None:
        try:
            row = self._run(
                lambda conn: conn.execute(
                    "SELECT value FROM octave_cache WHERE key = %s AND expires_at > %s",
                    (key, now),
                ).fetchone()
            )
        except psycopg.Error as exc:
            self._failed("reading the cache", exc)
            return None
        return str(row[0]) if row else None

    def cache_put(self, key: str, value: str, expires_at: float) -> None:
        now = time.time()
        purge = now - self._last_purge > _CACHE_PURGE_EVERY
        if purge:
            self._last_purge = now

        def write(conn: psycopg.Connection[tuple[object, ...]]) -> None:
            conn.execute(
                "INSERT INTO octave_cache (key, value, expires_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "expires_at = excluded.expires_at",
                (key, value, expires_at),
            )
            if purge:  # now and then, not per call
                conn.execute("DELETE FROM octave_cache WHERE expires_at <= %s", (now,))

        try:
            self._run(write)
        except psycopg.Error as exc:
            self._failed("writing the cache", exc)


def _cut(fd: int) -> None:
    """Shut a connection's socket down under the driver: its wait ends at once."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


_DELETE_HOLD = "DELETE FROM octave_reservations WHERE id IN (%s, %s, %s)"


def _check_probe(
    conn: psycopg.Connection[tuple[object, ...]], probe: Probe, now: float
) -> ReservationRefused | None:
    """Inside reserve's transaction: None if ``probe`` may go ahead, else why not.

    Under a lock of its own (taken after the budget's, always in that order): holds of
    other budgets (a client key's, say) must not admit a second probe meanwhile.
    """
    marked = conn.execute(
        "SELECT amount, created FROM octave_reservations WHERE id = %s", (probe.marker,)
    ).fetchone()
    if marked is not None and float(str(marked[1])) > probe.rates_read:
        return ReservationRefused(
            0.0, 0.0, None, rate=float(str(marked[0])), marked_at=float(str(marked[1]))
        )
    if probe.exclusive:
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_SPACE, probe.key))
        conn.execute(
            "DELETE FROM octave_reservations WHERE budget = %s AND expires <= %s",
            (probe.key, now),
        )
        taken = conn.execute(
            "SELECT 1 FROM octave_reservations WHERE budget = %s LIMIT 1", (probe.key,)
        ).fetchone()
        if taken is not None:
            return ReservationRefused(0.0, 0.0, None, busy=True)
        # The last probe settled after the caller read its rates: read them again first.
        settled = conn.execute(
            "SELECT 1 FROM octave_calls WHERE ts >= %s AND model = %s AND NOT cached "
            "AND credits > 0 LIMIT 1",
            (probe.rates_read - PROBE_LOOKBACK, probe.model),
        ).fetchone()
        if settled is not None:
            return ReservationRefused(0.0, 0.0, None, busy=True)
    return None


def _revision(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """The store's schema revision (1: made by a release before revisions existed)."""
    has_column = conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'octave_schema' "
        "AND column_name = 'revision' AND table_schema = current_schema()"
    ).fetchone()
    if has_column is None:
        return 1
    row = conn.execute("SELECT max(revision) FROM octave_schema").fetchone()
    return int(str(row[0])) if row and row[0] is not None else 1


def _insert(conn: psycopg.Connection[tuple[object, ...]], entries: list[LedgerEntry]) -> None:
    """Ledger rows and their minute totals; inside the caller's transaction.

    Idempotent per entry (its entry_id): a write retried after a commit whose answer
    was lost adds nothing.
    """
    ordered = sorted(entries, key=lambda e: e.ts)  # minute rows locked in one order
    with conn.cursor() as cur:
        cur.executemany(_INSERT_CALL, [e.row() for e in ordered])


_STORES: dict[str, PostgresStore] = {}
_STORES_LOCK = threading.Lock()


def open_postgres_store(url: str, *, setting: str = "OCTAVE_TOOLS_STORE_URL") -> PostgresStore:
    """The process-wide PostgresStore for ``url`` (one connection pool per URL)."""
    with _STORES_LOCK:
        store = _STORES.get(url)
        if store is None:
            store = _STORES[url] = PostgresStore(url, setting=setting)
        return store


@atexit.register
def _close_all() -> None:
    with _STORES_LOCK:
        stores = list(_STORES.values())
        _STORES.clear()
    for store in stores:
        with contextlib.suppress(Exception):  # exiting; nothing left to tell
            store.close()
