"""Where spend is remembered: one small storage interface, and SQLite as the default.

The ledger and the result cache sit behind ``Store`` so that a shared server
(PostgreSQL, Redis) can replace SQLite when several replicas share one budget.
Writes go through a background thread, so recording a call costs the caller a
queue put, never a disk sync on the hot path or on the event loop.
"""

from __future__ import annotations

import atexit
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Literal, Protocol

__all__ = ["LedgerEntry", "SQLiteStore", "Store", "UsageRow", "open_store"]

logger = logging.getLogger("octave_tools")

GroupBy = Literal["day", "model", "voice", "engine"]
WINDOW_REFRESH = 1.0
BATCH_WINDOW = 0.02


@dataclass(frozen=True)
class LedgerEntry:
    """One synthesis, as the ledger keeps it: never the text, never the key."""

    ts: float
    engine: str
    model: str
    voice: str | None
    format: str
    characters: int
    credits: float
    usd: float | None
    request_id: str | None
    text_sha256: str
    cached: bool


@dataclass(frozen=True)
class UsageRow:
    """Totals for one group (a day, a model, a voice or an engine)."""

    key: str
    calls: int
    cached_calls: int
    characters: int
    credits: float
    usd: float


class Store(Protocol):
    """What the ledger, budget and cache need from storage."""

    def add(self, entry: LedgerEntry) -> None: ...
    def spent_since(self, since: float) -> tuple[float, float | None]: ...
    def usage(self, since: float, by: GroupBy) -> list[UsageRow]: ...
    def cache_get(self, key: str, now: float) -> str | None: ...
    def cache_put(self, key: str, value: str, expires_at: float) -> None: ...
    def flush(self, timeout: float = 5.0) -> None: ...


_SCHEMA = """
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

_GROUP_SQL: dict[str, str] = {
    "day": "strftime('%Y-%m-%d', ts, 'unixepoch')",
    "model": "model",
    "voice": "coalesce(voice, '(default)')",
    "engine": "engine",
}


class SQLiteStore:
    """The embedded default: a WAL-mode SQLite file, safe for several processes at once.

    Any database error disables the store with one warning; synthesis goes on and
    this process's own spend is still counted in memory.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # guards the in-memory lists
        self._db_lock = threading.Lock()  # one connection, used from several threads
        self._db: sqlite3.Connection | None = None
        self._broken = False
        self._pending: list[LedgerEntry] = []  # queued, not yet written
        self._lost: list[LedgerEntry] = []  # could not be written: still counted
        # The database's window total, re-read at most every WINDOW_REFRESH seconds so a
        # budget check does not scan a day of rows per call. What this process spent that
        # the read did not see (queued then, or added since) is kept as a running sum, so
        # a check costs the same after a million calls; other processes' spend shows up
        # on the next read.
        self._window: tuple[float, float, float, float | None] | None = None
        self._unread_credits = 0.0
        self._unread_oldest: float | None = None
        self._queue: queue.SimpleQueue[LedgerEntry | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=5.0, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
        except (sqlite3.Error, OSError) as exc:
            self._disable(exc)

    @property
    def usable(self) -> bool:
        return not self._broken

    def _disable(self, exc: BaseException) -> None:
        if not self._broken:
            self._broken = True
            logger.warning(
                "octave-tools: the usage ledger at %s is unusable (%s); spend is counted "
                "in memory only until this process ends.",
                self.path,
                exc,
            )

    # ------------------------------------------------------------ writes

    def add(self, entry: LedgerEntry) -> None:
        """Queue ``entry``; a background thread writes it."""
        with self._lock:
            if self._broken or self._db is None:
                self._lost.append(entry)
                return
            self._pending.append(entry)
            if entry.credits > 0:
                self._unread_credits += entry.credits
                if self._unread_oldest is None:
                    self._unread_oldest = entry.ts
            self._idle.clear()
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="octave-tools-ledger", daemon=True
                )
                self._writer.start()
        self._queue.put(entry)

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            # Gather what arrives in the next moment: one write for many calls costs the
            # callers' threads less GIL time than a write each.
            time.sleep(BATCH_WINDOW)
            batch = [first]
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._write(batch)
                    return
                batch.append(item)
            self._write(batch)

    def _write(self, batch: Sequence[LedgerEntry]) -> None:
        try:
            with self._lock:
                db = self._db
                if db is None or self._broken:
                    raise sqlite3.OperationalError("ledger closed")
            with self._db_lock:
                db.executemany(
                    "INSERT INTO calls (ts, engine, model, voice, format, characters, credits, "
                    "usd, request_id, text_sha256, cached) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    [astuple(e) for e in batch],
                )
                # Still under the database lock: a window read sees each row in exactly
                # one place, the database or the pending list.
                with self._lock:
                    self._drop_pending(batch)
        except (sqlite3.Error, OSError) as exc:
            with self._lock:
                self._drop_pending(batch)
                self._lost.extend(batch)  # counted from there from now on
                self._unread_credits -= sum(e.credits for e in batch if e.credits > 0)
            self._disable(exc)

    def _drop_pending(self, batch: Sequence[LedgerEntry]) -> None:
        done = {id(e) for e in batch}
        self._pending = [e for e in self._pending if id(e) not in done]
        if not self._pending:
            self._idle.set()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued entry is written (or given up on)."""
        self._idle.wait(timeout)

    def close(self) -> None:
        """Flush, stop the writer and close the database."""
        self.flush()
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            self._queue.put(None)
            writer.join(timeout=5)
        with self._lock, self._db_lock:
            db, self._db = self._db, None
            if db is not None:
                db.close()

    # ------------------------------------------------------------ reads

    def _unwritten(self) -> list[LedgerEntry]:
        with self._lock:
            return self._pending + self._lost

    def spent_since(self, since: float) -> tuple[float, float | None]:
        """Credits spent since ``since`` (epoch seconds) and the oldest charge's time."""
        total, oldest = self._window_total(since)
        with self._lock:
            total += self._unread_credits
            recent_oldest = self._unread_oldest
            lost = list(self._lost) if self._lost else []
        if recent_oldest is not None:
            oldest = recent_oldest if oldest is None else min(oldest, recent_oldest)
        for e in lost:
            if e.ts >= since and e.credits > 0:
                total += e.credits
                oldest = e.ts if oldest is None else min(oldest, e.ts)
        return total, oldest

    def window_is_fresh(self, since: float) -> bool:
        """Whether spent_since(since) would be answered from memory, without a read."""
        cached = self._window
        return (
            cached is not None
            and time.monotonic() - cached[0] < WINDOW_REFRESH
            and cached[1] <= since
        )

    def _window_total(self, since: float) -> tuple[float, float | None]:
        now = time.monotonic()
        cached = self._window
        # A cached read for an earlier start only over-counts, by what left the window.
        if cached is not None and now - cached[0] < WINDOW_REFRESH and cached[1] <= since:
            return cached[2], cached[3]
        db = self._db
        if db is None or self._broken:
            return 0.0, None
        try:
            with self._db_lock:
                row = db.execute(
                    "SELECT coalesce(sum(credits), 0), min(ts) FROM calls "
                    "WHERE ts >= ? AND credits > 0",
                    (since,),
                ).fetchone()
                # Under the database lock, no write is half-done: what the read did not
                # see is exactly what is still pending.
                with self._lock:
                    paid = [e for e in self._pending if e.credits > 0]
                    self._unread_credits = sum(e.credits for e in paid)
                    self._unread_oldest = min((e.ts for e in paid), default=None)
                    self._window = (now, since, float(row[0]), row[1])
        except (sqlite3.Error, OSError) as exc:
            self._disable(exc)
            return 0.0, None
        return float(row[0]), row[1]

    def usage(self, since: float, by: GroupBy) -> list[UsageRow]:
        """Totals per group since ``since``, largest spend first."""
        rows: dict[str, list[float]] = {}
        db = self._db
        if db is not None and not self._broken:
            group = _GROUP_SQL[by]
            try:
                with self._db_lock:
                    found = db.execute(
                        f"SELECT {group}, count(*), sum(cached), sum(characters), "  # noqa: S608
                        "sum(credits), coalesce(sum(usd), 0) FROM calls WHERE ts >= ? GROUP BY 1",
                        (since,),
                    ).fetchall()
                for key, calls, cached, chars, credits, usd in found:
                    rows[str(key)] = [calls, cached, chars, credits, usd]
            except (sqlite3.Error, OSError) as exc:
                self._disable(exc)
        for e in self._unwritten():
            if e.ts < since:
                continue
            key = {
                "day": time.strftime("%Y-%m-%d", time.gmtime(e.ts)),
                "model": e.model,
                "voice": e.voice or "(default)",
                "engine": e.engine,
            }[by]
            acc = rows.setdefault(key, [0, 0, 0, 0.0, 0.0])
            for i, value in enumerate((1, int(e.cached), e.characters, e.credits, e.usd or 0.0)):
                acc[i] += value
        result = [
            UsageRow(k, int(v[0]), int(v[1]), int(v[2]), float(v[3]), float(v[4]))
            for k, v in rows.items()
        ]
        return sorted(result, key=lambda r: (-r.credits, r.key))

    # ------------------------------------------------------------ cache

    def cache_get(self, key: str, now: float) -> str | None:
        db = self._db
        if db is None or self._broken:
            return None
        try:
            with self._db_lock:
                row = db.execute(
                    "SELECT value FROM cache WHERE key = ? AND expires_at > ?", (key, now)
                ).fetchone()
        except (sqlite3.Error, OSError) as exc:
            self._disable(exc)
            return None
        return str(row[0]) if row else None

    def cache_put(self, key: str, value: str, expires_at: float) -> None:
        db = self._db
        if db is None or self._broken:
            return
        try:
            with self._db_lock:
                db.execute(
                    "INSERT OR REPLACE INTO cache (key, value, expires_at) VALUES (?, ?, ?)",
                    (key, value, expires_at),
                )
                db.execute("DELETE FROM cache WHERE expires_at <= ?", (time.time(),))
        except (sqlite3.Error, OSError) as exc:
            self._disable(exc)


_STORES: dict[Path, SQLiteStore] = {}
_STORES_LOCK = threading.Lock()


def open_store(path: Path) -> SQLiteStore:
    """The process-wide store for ``path`` (one writer thread per file)."""
    path = path.expanduser().resolve()
    with _STORES_LOCK:
        store = _STORES.get(path)
        if store is None:
            store = _STORES[path] = SQLiteStore(path)
        return store


@atexit.register
def _flush_all() -> None:
    # A CLI run exits right after its call: write what it spent before leaving.
    with _STORES_LOCK:
        stores = list(_STORES.values())
    for store in stores:
        store.flush(timeout=2.0)
