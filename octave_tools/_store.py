"""Where spend is remembered: one small storage interface, and SQLite as the default.

The ledger and the result cache sit behind ``Store`` so that a shared server
(PostgreSQL, Redis) can replace SQLite when several replicas share one budget.
Writes go through a background thread, so recording a call costs the caller a
queue put, never a disk sync on the hot path or on the event loop.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

from . import observe as _observe
from ._calltime import current

__all__ = [
    "LEDGER_COLUMNS",
    "LedgerEntry",
    "LedgerLockedError",
    "Probe",
    "ReservationRefused",
    "SQLiteStore",
    "Store",
    "UsageRow",
    "open_store",
]

logger = logging.getLogger("octave_tools")

GroupBy = Literal["day", "model", "voice", "engine", "job", "key"]
WINDOW_REFRESH = 1.0
BATCH_WINDOW = 0.02
# How long one statement waits for another connection's lock before it gives up
# (within a call: no longer than the call has left, see SQLiteStore._session).
BUSY_TIMEOUT = 5.0
# A write that records a paid call may wait this long even when the call's time is up.
WRITE_FLOOR = 1.0
# Queued writes that met a lock are retried, waiting at most this long between tries.
RETRY_MAX_WAIT = 1.0
# A ledger that failed for another reason (corrupt, unreadable) is tried again this often.
REOPEN_AFTER = 30.0
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
# A "billed far above its hold" mark (Store.mark_rate) is kept this long: longer than any
# process goes without re-reading learned rates (RATE_REFRESH in _spend).
MARK_LIFETIME = 3600.0
# A ledger row's ts is taken before its write commits, by at most this much.
PROBE_LOOKBACK = 300.0
_REOPEN = "reopen"  # a writer-queue message: try the broken ledger again


class LedgerLockedError(Exception):
    """Another program held the ledger locked for longer than the busy timeout."""


class _LedgerRefused(Exception):
    """The ledger path is not something octave-tools will open (a link, not a file)."""


def _is_lock(exc: BaseException) -> bool:
    """Whether ``exc`` only means another connection holds a lock (it will pass)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(exc)
    return isinstance(exc, sqlite3.OperationalError) and (
        "database is locked" in text or "database table is locked" in text
    )


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
    entry_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Made before the write: writing the same entry again (a retry) is a no-op."""
    estimated: bool = False
    """``credits`` is our estimate: the API did not say what it billed (or said nonsense)."""
    job_id: str | None = None
    """Shared by the parts of one long-form or dialogue call."""
    key_name: str | None = None
    """The client key the call was made with (None: the operator)."""
    outcome: str = "ok"
    """``ok``; ``fallback``: this model failed and the next model of the chain was tried."""

    def row(self) -> tuple[object, ...]:
        """The values for LEDGER_COLUMNS, in that order."""
        return (
            self.ts,
            self.engine,
            self.model,
            self.voice,
            self.format,
            self.characters,
            self.credits,
            self.usd,
            self.request_id,
            self.text_sha256,
            self.cached,
            self.entry_id,
            self.estimated,
            self.job_id,
            self.key_name,
            self.outcome,
        )


# The ledger's columns as every write names them (the v1 ones, then the v2 additions).
LEDGER_COLUMNS = (
    "ts, engine, model, voice, format, characters, credits, usd, request_id, text_sha256, "
    "cached, entry_id, estimated, job_id, key_name, outcome"
)


# An entry's values in field order, as the INSERTs name them. Not dataclasses.astuple,
# which deep-copies every value: ~13 µs an entry on the writer thread, this ~0.4.


@dataclass(frozen=True)
class UsageRow:
    """Totals for one group (a day, a model, a voice or an engine)."""

    key: str
    calls: int
    cached_calls: int
    characters: int
    credits: float
    usd: float
    estimated_credits: float = 0.0
    """The part of ``credits`` that is our estimate (the API did not bill a figure)."""


@dataclass(frozen=True)
class ReservationRefused:
    """A budget had no room: what it holds, and when its oldest charge leaves the window."""

    spent: float  # settled spend in the window (ledger rows, plus expired reservations)
    held: float  # live reservations: calls in flight somewhere on the store
    frees_at: float | None  # epoch seconds; None when nothing is counted
    busy: bool = False  # the probe asked for is taken: another call of the model is in flight
    rate: float | None = None  # the model's rate changed since the caller read it: this one
    marked_at: float | None = None  # when that change was marked (epoch seconds)
    budget: str = "daily"  # which budget refused: "daily", or a client key's ("key:<name>")


@dataclass(frozen=True)
class Probe:
    """A reservation for a model with no documented price (issue 22, item 3).

    ``exclusive``: the model's rate is not learned yet, so this call is its probe: at
    most one live probe per model on the whole store (refused with ``busy`` otherwise).
    ``rates_read``: when the caller last read learned rates (epoch seconds); if a settle
    far above its hold marked the model since, the reservation is refused with the new
    ``rate`` so the caller re-estimates first.
    """

    model: str
    exclusive: bool
    rates_read: float

    @property
    def key(self) -> str:
        return f"probe:{self.model}"

    @property
    def marker(self) -> str:
        return f"rate:{self.model}"


@dataclass(frozen=True)
class KeyBudget:
    """A client key's own daily budget, reserved in the same transaction as the global
    one (both must admit the call). Its spend is the key's ledger rows."""

    name: str
    limit: float

    @property
    def budget(self) -> str:
        return f"key:{self.name}"


def key_hold(reservation_id: str) -> str:
    """The id of a reservation's hold on its key's budget."""
    return f"{reservation_id}/key"


class Store(Protocol):
    """What the ledger, budget and cache need from storage.

    Budget protocol (atomic across every process sharing the store): ``reserve`` before
    the paid call, then exactly one of ``settle`` (the call ran: its ledger row replaces
    the hold) or ``release`` (nothing was billed). Each is one short transaction; none is
    held across the upstream call. A reservation's ``lease`` bounds how long it is
    "in flight"; one whose lease ran out (its process died, or never settled) counts as
    spent at its estimate until it leaves the window: the call may have been billed, so
    the budget fails safe rather than letting a crash buy a second call.
    """

    def add(self, entry: LedgerEntry) -> None: ...
    def spent_since(self, since: float) -> tuple[float, float | None]: ...
    def usage(self, since: float, by: GroupBy, key: str | None = None) -> list[UsageRow]: ...
    def rates(self, since: float) -> dict[str, float]: ...
    def cache_get(self, key: str, now: float) -> str | None: ...
    def cache_put(self, key: str, value: str, expires_at: float) -> None: ...
    def flush(self, timeout: float = 5.0) -> None: ...
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
    ) -> str | ReservationRefused: ...
    def settle(self, reservation_id: str, entry: LedgerEntry) -> None: ...
    def release(self, reservation_id: str) -> None: ...
    def mark_rate(self, model: str, rate: float, now: float) -> None: ...


def usage_rows(
    rows: dict[str, list[float]],
    unwritten: Sequence[LedgerEntry],
    by: GroupBy,
    only_key: str | None = None,
) -> list[UsageRow]:
    """Stored totals per group plus entries not yet written (of ``only_key``'s calls, if
    given), largest spend first."""
    for e in unwritten:
        if only_key is not None and (e.key_name or "operator") != only_key:
            continue
        key = {
            "day": time.strftime("%Y-%m-%d", time.gmtime(e.ts)),
            "model": e.model,
            "voice": e.voice or "(default)",
            "engine": e.engine,
            "job": e.job_id or "",
            "key": e.key_name or "operator",
        }[by]
        acc = rows.setdefault(key, [0, 0, 0, 0.0, 0.0, 0.0])
        values = (
            int(e.outcome == "ok"),
            int(e.cached),
            e.characters,
            e.credits,
            e.usd or 0.0,
            e.credits if e.estimated else 0.0,
        )
        for i, value in enumerate(values):
            acc[i] += value
    result = [
        UsageRow(
            k,
            int(v[0]),
            int(v[1]),
            int(v[2]),
            float(v[3]),
            float(v[4]),
            float(v[5]) if len(v) > 5 else 0.0,
        )
        for k, v in rows.items()
    ]
    return sorted(result, key=lambda r: (-r.credits, r.key))


def _rates(
    totals: dict[str, list[float]], unwritten: Sequence[LedgerEntry], since: float
) -> dict[str, float]:
    """Credits per character by model, from stored totals and entries not yet written.

    ``totals[model]`` is [billed credits, billed characters, estimated credits,
    estimated characters]. The rate is what the model was billed; a model whose
    answers never carried a cost has the rate it was charged at (its estimate), so it
    counts as seen: there is nothing more to learn about it.
    """
    for e in unwritten:
        if e.ts >= since and not e.cached and e.credits > 0:
            acc = totals.setdefault(e.model, [0.0, 0.0, 0.0, 0.0])
            acc[2 if e.estimated else 0] += e.credits
            acc[3 if e.estimated else 1] += e.characters
    rates = {}
    for model, (billed, chars, estimated, estimated_chars) in totals.items():
        if chars > 0:
            rates[model] = billed / chars
        elif estimated_chars > 0:
            rates[model] = estimated / estimated_chars
    return rates


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
# Schema revision 2, applied in place to a revision-1 file (see _migrate): additive only,
# so a process still running the previous release keeps writing and reading it (its
# INSERT names the v1 columns; the new ones take their defaults).
SCHEMA_REVISION = 2
_V2_COLUMNS = (
    ("entry_id", "TEXT"),
    ("estimated", "INTEGER NOT NULL DEFAULT 0"),
    ("job_id", "TEXT"),
    ("key_name", "TEXT"),
    ("outcome", "TEXT NOT NULL DEFAULT 'ok'"),
)
_V2_KEY_INDEX = (
    "CREATE INDEX IF NOT EXISTS calls_key ON calls (key_name, ts) WHERE key_name IS NOT NULL"
)
_V2_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS calls_entry_id ON calls (entry_id)"
_INSERT_CALL = (
    f"INSERT OR IGNORE INTO calls ({LEDGER_COLUMNS}) "  # noqa: S608 - constants only
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


_RATES_SQL = (
    "SELECT model, sum(CASE WHEN NOT estimated THEN credits END), "
    "sum(CASE WHEN NOT estimated THEN characters END), "
    "sum(CASE WHEN estimated THEN credits END), sum(CASE WHEN estimated THEN characters END) "
    "FROM calls WHERE ts >= ? AND cached = 0 AND credits > 0 GROUP BY 1"
)


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a ledger file to SCHEMA_REVISION, in place, nothing lost.

    Idempotent and safe with other processes opening the file at once: the check and
    the ALTERs run under the file's write lock. ``PRAGMA user_version`` records the
    revision; the previous release never reads it.
    """
    if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_REVISION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        have = {row[1] for row in db.execute("PRAGMA table_info(calls)")}
        for name, decl in _V2_COLUMNS:
            if name not in have:
                db.execute(f"ALTER TABLE calls ADD COLUMN {name} {decl}")
        db.execute(_V2_INDEX)
        db.execute(_V2_KEY_INDEX)
        db.execute(f"PRAGMA user_version = {SCHEMA_REVISION}")
        db.execute("COMMIT")
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")


_GROUP_SQL: dict[str, str] = {
    "day": "strftime('%Y-%m-%d', ts, 'unixepoch')",
    "model": "model",
    "voice": "coalesce(voice, '(default)')",
    "engine": "engine",
    "job": "coalesce(job_id, '')",
    "key": "coalesce(key_name, 'operator')",
}


class SQLiteStore:
    """The embedded default: a WAL-mode SQLite file, safe for several processes at once.

    The ledger and its folder are private to the user (0600, 0700), and a ledger path
    that is a symbolic link is refused. A lock held by another program only delays
    writes: they stay queued and are retried. A ledger that is broken (corrupt, not a
    regular file) is set aside with one warning and tried again every REOPEN_AFTER
    seconds; meanwhile this process's own spend is still counted in memory.
    """

    def __init__(self, path: Path, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._monotonic = monotonic  # tests pass a fake one
        self._lock = threading.Lock()  # guards the in-memory lists
        self._db_lock = threading.Lock()  # one connection, used from several threads
        self._db: sqlite3.Connection | None = None
        self._broken = False
        self._problem: str | None = None  # why the ledger is set aside
        self._broken_at = 0.0
        self._closed = False
        self._lock_warned = False
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
        self._queue: queue.SimpleQueue[LedgerEntry | str | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        try:
            with self._db_lock:
                self._ensure_db()
        except (sqlite3.Error, OSError, _LedgerRefused) as exc:
            if not _is_lock(exc):  # a lock only delays opening: the writer tries again
                self._disable(exc)

    @property
    def usable(self) -> bool:
        return not self._broken

    @property
    def unusable_reason(self) -> str | None:
        """Why the ledger is set aside (corrupt, a link...), or None when it is in use."""
        return self._problem if self._broken else None

    def _connect(self) -> sqlite3.Connection:
        """Open the ledger file: private, never through a link, in WAL mode."""
        path = self.path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for extra in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if extra.is_symlink():
                raise _LedgerRefused(
                    f"{extra} is a symbolic link, which the ledger never follows; "
                    "replace it with a regular file or remove it"
                )
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if path.is_symlink():  # created between the check and the open
                raise _LedgerRefused(f"{path} is a symbolic link") from None
            raise exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise _LedgerRefused(f"{path} is not a regular file")
            if os.name == "posix" and info.st_mode & 0o077 and info.st_uid == os.getuid():
                os.fchmod(fd, 0o600)  # earlier versions left it readable by everyone
        finally:
            os.close(fd)
        if os.name == "posix":
            for extra in (Path(f"{path}-wal"), Path(f"{path}-shm")):
                # SQLite gives these the database file's mode when it creates them.
                try:
                    if extra.stat().st_mode & 0o077:
                        extra.chmod(0o600)
                except OSError:
                    pass
        db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            _migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    def _ensure_db(self) -> sqlite3.Connection:
        """The open connection, opening it if needed. Call under ``_db_lock``."""
        if self._db is not None:
            return self._db
        if self._broken or self._closed:
            raise _LedgerRefused(self._problem or "the ledger is closed")
        self._db = self._connect()
        return self._db

    @contextmanager
    def _session(self, floor: float = 0.0) -> Iterator[None]:
        """``_db_lock`` for one operation: within a call, waiting for it and SQLite's busy
        wait end by the call's deadline (or ``floor`` seconds from now, if later)."""
        call = current()
        if call is None:
            with self._db_lock:
                yield
            return
        deadline = max(call.deadline, time.monotonic() + floor)
        left = deadline - time.monotonic()
        if left <= 0 or not self._db_lock.acquire(timeout=left):
            raise sqlite3.OperationalError("database is locked")
        try:
            db = self._db
            left = deadline - time.monotonic()
            short = db is not None and left < BUSY_TIMEOUT
            if short:
                assert db is not None
                if left <= 0:
                    raise sqlite3.OperationalError("database is locked")
                db.execute(f"PRAGMA busy_timeout = {max(1, int(left * 1000))}")
            try:
                yield
            finally:
                if short and self._db is db:
                    assert db is not None
                    db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        finally:
            self._db_lock.release()

    def _locked_or_disable(self, exc: BaseException) -> None:
        """A budget read that failed: a lock fails the budget closed; anything else sets
        the ledger aside (until it is tried again)."""
        if _is_lock(exc):
            call = current()
            if call is not None and call.left() < BUSY_TIMEOUT:  # the wait was cut short
                raise LedgerLockedError(
                    "another program held it locked for longer than this call's time "
                    f"limit ({call.limit:g} s) allows"
                ) from None
            raise LedgerLockedError(
                f"another program has held it locked for more than {BUSY_TIMEOUT:g} s"
            ) from None
        self._disable(exc)

    def _disable(self, exc: BaseException) -> None:
        if _observe.SINKS:
            _observe.report_store_error("the ledger file")
        with self._lock:
            self._broken_at = self._monotonic()
            if self._broken:
                return
            self._broken = True
            self._problem = str(exc) or type(exc).__name__
        with self._db_lock:
            db, self._db = self._db, None
            if db is not None:
                db.close()
        logger.warning(
            "octave-tools: the usage ledger at %s is unusable (%s); spend is counted "
            "in memory only until it can be used again (retried every %g s).",
            self.path,
            exc,
            REOPEN_AFTER,
        )

    def _maybe_reopen(self) -> None:
        """Try a broken ledger again, at most every REOPEN_AFTER seconds."""
        if not self._broken or self._closed:
            return
        if self._monotonic() - self._broken_at < REOPEN_AFTER:
            return
        with self._db_lock:
            if not self._broken or self._monotonic() - self._broken_at < REOPEN_AFTER:
                return
            self._broken_at = self._monotonic()  # one try per period, whatever happens
            try:
                db = self._connect()
            except (sqlite3.Error, OSError, _LedgerRefused) as exc:
                self._problem = str(exc) or type(exc).__name__
                return
            with self._lock:
                self._db = db
                self._broken = False
                self._problem = None
                # What was counted in memory meanwhile is written now.
                lost, self._lost = self._lost, []
                self._pending.extend(lost)
                self._window = None
                for e in lost:
                    if e.credits > 0:
                        self._unread_credits += e.credits
                        if self._unread_oldest is None or e.ts < self._unread_oldest:
                            self._unread_oldest = e.ts
                if lost:
                    self._idle.clear()
                    self._start_writer()
        logger.warning("octave-tools: the usage ledger at %s is in use again.", self.path)
        for e in lost:
            self._queue.put(e)

    def _start_writer(self) -> None:
        """Start the writer thread if it is not running. Call under ``_lock``."""
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_loop, name="octave-tools-ledger", daemon=True
            )
            self._writer.start()

    # ------------------------------------------------------------ writes

    def add(self, entry: LedgerEntry) -> None:
        """Queue ``entry``; a background thread writes it."""
        with self._lock:
            if self._broken or self._closed:
                self._lost.append(entry)
                due = not self._closed and self._monotonic() - self._broken_at >= REOPEN_AFTER
                if due:  # the writer tries the ledger again, off the caller's thread
                    self._start_writer()
                    self._queue.put(_REOPEN)
                return
            self._pending.append(entry)
            if entry.credits > 0:
                self._unread_credits += entry.credits
                if self._unread_oldest is None:
                    self._unread_oldest = entry.ts
            self._idle.clear()
            self._start_writer()
        self._queue.put(entry)

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            if isinstance(first, str):
                self._maybe_reopen()
                continue
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
                if isinstance(item, str):
                    continue
                batch.append(item)
            self._write(batch)

    def _write(self, batch: Sequence[LedgerEntry]) -> None:
        wait = 0.05
        while True:
            try:
                with self._db_lock:
                    db = self._ensure_db()
                    # One transaction: a batch is written whole or not at all, so a retry
                    # (or a later reopen) never writes a row twice.
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        db.executemany(_INSERT_CALL, [e.row() for e in batch])
                        db.execute("COMMIT")
                    finally:
                        if db.in_transaction:
                            db.execute("ROLLBACK")
                    # Still under the database lock: a window read sees each row in exactly
                    # one place, the database or the pending list.
                    with self._lock:
                        self._drop_pending(batch)
                if self._lock_warned:
                    self._lock_warned = False
                    logger.warning(
                        "octave-tools: the usage ledger at %s is free again; queued calls "
                        "were written.",
                        self.path,
                    )
                return
            except (sqlite3.Error, OSError, _LedgerRefused) as exc:
                if _is_lock(exc) and not self._closed:
                    # Another program (a backup, a sqlite3 shell) holds the ledger: the
                    # entries stay queued, and counted, until it lets go.
                    if not self._lock_warned:
                        self._lock_warned = True
                        logger.warning(
                            "octave-tools: the usage ledger at %s is locked by another "
                            "program; calls are queued and written once it is free.",
                            self.path,
                        )
                    time.sleep(wait)
                    wait = min(wait * 2, RETRY_MAX_WAIT)
                    continue
                with self._lock:
                    self._drop_pending(batch)
                    self._lost.extend(batch)  # counted from there from now on
                    self._unread_credits -= sum(e.credits for e in batch if e.credits > 0)
                if not self._closed:
                    self._disable(exc)
                return

    def _drop_pending(self, batch: Sequence[LedgerEntry]) -> None:
        done = {id(e) for e in batch}
        self._pending = [e for e in self._pending if id(e) not in done]
        if not self._pending:
            self._idle.set()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued entry is written (or given up on)."""
        self._idle.wait(timeout)

    def unwritten_count(self) -> int:
        """How many entries are still queued for the database."""
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        """Flush, stop the writer and close the database."""
        self.flush()
        with self._lock:
            self._closed = True
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
        """Credits spent since ``since`` (epoch seconds) and the oldest charge's time.

        Raises LedgerLockedError if another program held the ledger locked for longer
        than BUSY_TIMEOUT: its writers' spend cannot be known then.
        """
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
            and self._monotonic() - cached[0] < WINDOW_REFRESH
            and cached[1] <= since
        )

    def _window_total(self, since: float) -> tuple[float, float | None]:
        now = self._monotonic()
        cached = self._window
        # A cached read for an earlier start only over-counts, by what left the window.
        if cached is not None and now - cached[0] < WINDOW_REFRESH and cached[1] <= since:
            return cached[2], cached[3]
        self._maybe_reopen()
        if self._broken:
            return 0.0, None
        try:
            with self._session():
                db = self._ensure_db()
                # Read under the write lock: if another program holds it (its writes, or
                # other processes' queued ones, are unknown), this waits BUSY_TIMEOUT and
                # then says so instead of reporting a total that misses them.
                db.execute("BEGIN IMMEDIATE")
                try:
                    row = db.execute(
                        "SELECT coalesce(sum(credits), 0), min(ts) FROM calls "
                        "WHERE ts >= ? AND credits > 0",
                        (since,),
                    ).fetchone()
                finally:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                # Under the database lock, no write is half-done: what the read did not
                # see is exactly what is still pending.
                with self._lock:
                    paid = [e for e in self._pending if e.credits > 0]
                    self._unread_credits = sum(e.credits for e in paid)
                    self._unread_oldest = min((e.ts for e in paid), default=None)
                    self._window = (now, since, float(row[0]), row[1])
        except (sqlite3.Error, OSError, _LedgerRefused) as exc:
            self._locked_or_disable(exc)
            return 0.0, None
        return float(row[0]), row[1]

    def rates(self, since: float) -> dict[str, float]:
        """Credits per character each model was billed since ``since`` (paid calls only)."""
        totals: dict[str, list[float]] = {}
        self._maybe_reopen()
        if not self._broken:
            try:
                with self._session():
                    found = self._ensure_db().execute(_RATES_SQL, (since,)).fetchall()
                for model, *sums in found:
                    totals[str(model)] = [float(v or 0) for v in sums]
            except (sqlite3.Error, OSError, _LedgerRefused):
                pass  # the estimate falls back to the default rate
        return _rates(totals, self._unwritten(), since)

    def usage(self, since: float, by: GroupBy, key: str | None = None) -> list[UsageRow]:
        """Totals per group since ``since`` (of client ``key``'s calls only, if given;
        ``operator`` for the operator's), largest spend first."""
        rows: dict[str, list[float]] = {}
        unwritten: list[LedgerEntry] | None = None
        self._maybe_reopen()
        if not self._broken:
            group = _GROUP_SQL[by]
            try:
                with self._session():
                    db = self._ensure_db()
                    found = db.execute(
                        # A fallback's failed attempt is a row, not a call.
                        f"SELECT {group}, sum(outcome = 'ok'), sum(cached), "  # noqa: S608
                        "sum(characters), "
                        "sum(credits), coalesce(sum(usd), 0), "
                        "coalesce(sum(CASE WHEN estimated THEN credits END), 0) "
                        "FROM calls WHERE ts >= ? "
                        "AND (? IS NULL OR coalesce(key_name, 'operator') = ?) GROUP BY 1",
                        (since, key, key),
                    ).fetchall()
                    # Under the same lock as the writer's commit-and-drop: each row is
                    # counted once, from the file or from the queue, never in neither.
                    unwritten = self._unwritten()
                for group_key, calls, cached, chars, credits, usd, estimated in found:
                    rows[str(group_key)] = [calls, cached, chars, credits, usd, estimated]
            except (sqlite3.Error, OSError, _LedgerRefused) as exc:
                if _is_lock(exc):
                    logger.warning(
                        "octave-tools: the usage ledger at %s is locked by another program; "
                        "this report shows only this process's calls.",
                        self.path,
                    )
                else:
                    self._disable(exc)
        if unwritten is None:
            unwritten = self._unwritten()
        return usage_rows(rows, [e for e in unwritten if e.ts >= since], by, key)

    # ------------------------------------------------------------ cache

    def cache_get(self, key: str, now: float) -> str | None:
        self._maybe_reopen()
        if self._broken:
            return None
        try:
            with self._session():
                row = (
                    self._ensure_db()
                    .execute("SELECT value FROM cache WHERE key = ? AND expires_at > ?", (key, now))
                    .fetchone()
                )
        except (sqlite3.Error, OSError, _LedgerRefused) as exc:
            if not _is_lock(exc):  # locked: a miss this time
                self._disable(exc)
            return None
        return str(row[0]) if row else None

    def cache_put(self, key: str, value: str, expires_at: float) -> None:
        if self._broken:
            return
        try:
            with self._session():
                db = self._ensure_db()
                db.execute(
                    "INSERT OR REPLACE INTO cache (key, value, expires_at) VALUES (?, ?, ?)",
                    (key, value, expires_at),
                )
                db.execute("DELETE FROM cache WHERE expires_at <= ?", (time.time(),))
        except (sqlite3.Error, OSError, _LedgerRefused) as exc:
            if not _is_lock(exc):  # locked: the result is simply not cached
                self._disable(exc)

    # ------------------------------------------------------------ budget (see Store)

    _RESERVATIONS_SQL = """
    CREATE TABLE IF NOT EXISTS reservations (
        id TEXT PRIMARY KEY,
        budget TEXT NOT NULL,
        amount REAL NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS reservations_budget ON reservations (budget, created);
    """
    _reservations_ready: sqlite3.Connection | None = None  # the connection that has it
    # Holds made while the file is unusable: this process's budget still holds.
    _memory_holds: dict[str, tuple[str, float, float, float]] | None = None

    def _begin_reservations(self) -> sqlite3.Connection:
        """The connection, inside BEGIN IMMEDIATE. Call under ``_db_lock``."""
        db = self._ensure_db()
        # Created on first use, not at open: a process that never reserves pays nothing.
        if self._reservations_ready is not db:
            db.executescript(self._RESERVATIONS_SQL)
            self._reservations_ready = db
        # Takes the file's write lock now, so the sum and the insert are one step for
        # every process on this machine.
        db.execute("BEGIN IMMEDIATE")
        return db

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        if db.in_transaction:
            db.execute("ROLLBACK")

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
        """Hold ``amount`` of ``budget`` (``limit`` per rolling ``window`` seconds; None:
        no global limit) and, with ``key``, of that client key's budget too.

        Counts every paid ledger row in the window (for ``key``, the key's rows), this
        process's unwritten rows, and the budget's reservations: live ones as held,
        expired ones (lease over, never settled) as spent until they leave the window.
        Returns the reservation's id, or ``ReservationRefused`` (naming the budget) when
        ``amount`` does not fit either. Raises LedgerLockedError when another program
        held the file locked past BUSY_TIMEOUT (fails closed); a broken file is set aside
        and this process's holds are kept in memory.
        """
        since = now - window
        self._maybe_reopen()
        if not self._broken:
            try:
                with self._session():
                    db = self._begin_reservations()
                    try:
                        if probe is not None:
                            checked = _check_probe(db, probe, now)
                            if checked is not None:
                                return checked
                        with self._lock:
                            unwritten = [
                                e
                                for e in self._pending + self._lost
                                if e.ts >= since and e.credits > 0
                            ]
                        verdict = None
                        if limit is not None:
                            verdict = self._sqlite_verdict(
                                db, budget, None, amount, limit, window, now, unwritten
                            )
                        if verdict is None and key is not None:
                            verdict = self._sqlite_verdict(
                                db, key.budget, key.name, amount, key.limit, window, now, unwritten
                            )
                        rid = uuid.uuid4().hex
                        answer: str | ReservationRefused = verdict or rid
                        if verdict is None:
                            holds = []
                            if limit is not None:
                                holds.append((rid, budget, amount, now, now + lease))
                            if key is not None:
                                holds.append((key_hold(rid), key.budget, amount, now, now + lease))
                            if probe is not None and probe.exclusive:
                                holds.append((f"{rid}/probe", probe.key, 0.0, now, now + lease))
                            db.executemany(
                                "INSERT INTO reservations (id, budget, amount, created, expires) "
                                "VALUES (?, ?, ?, ?, ?)",
                                holds,
                            )
                        db.execute("COMMIT")
                    finally:
                        self._rollback(db)
                return answer
            except (sqlite3.Error, OSError, _LedgerRefused) as exc:
                self._locked_or_disable(exc)
        return self._reserve_in_memory(budget, amount, limit, window, lease, now, probe, key)

    @staticmethod
    def _sqlite_verdict(
        db: sqlite3.Connection,
        budget: str,
        key_name: str | None,
        amount: float,
        limit: float,
        window: float,
        now: float,
        unwritten: list[LedgerEntry],
    ) -> ReservationRefused | None:
        """One budget's verdict inside reserve's transaction (``key_name``: its rows only)."""
        since = now - window
        db.execute(
            "DELETE FROM reservations WHERE budget = ? AND created < ? AND expires <= ?",
            (budget, since, now),
        )
        spent, oldest = db.execute(
            "SELECT coalesce(sum(credits), 0), min(ts) FROM calls "
            "WHERE ts >= ? AND credits > 0 AND (? IS NULL OR key_name = ?)",
            (since, key_name, key_name),
        ).fetchone()
        expired, held, held_oldest = db.execute(
            "SELECT coalesce(sum(CASE WHEN expires <= ? THEN amount END), 0), "
            "coalesce(sum(CASE WHEN expires > ? THEN amount END), 0), "
            "min(created) FROM reservations WHERE budget = ?",
            (now, now, budget),
        ).fetchone()
        mine = [e for e in unwritten if key_name is None or e.key_name == key_name]
        verdict = _verdict(
            float(spent) + float(expired) + sum(e.credits for e in mine),
            float(held),
            amount,
            limit,
            window,
            [oldest, held_oldest, *(e.ts for e in mine)],
        )
        return None if verdict is None else replace(verdict, budget=budget)

    def _reserve_in_memory(
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
        since = now - window
        with self._lock:
            holds = self._memory_holds
            if holds is None:
                holds = self._memory_holds = {}
            taken = any(h[0] == getattr(probe, "key", None) and h[3] > now for h in holds.values())
            if probe is not None and probe.exclusive and taken:
                return ReservationRefused(0.0, 0.0, None, busy=True)
            checks: list[tuple[str, float, str | None]] = (
                [] if limit is None else [(budget, limit, None)]
            )
            if key is not None:
                checks.append((key.budget, key.limit, key.name))
            for name, cap, key_name in checks:
                for hold_id, (b, _, created, expires) in list(holds.items()):
                    if b == name and created < since and expires <= now:
                        del holds[hold_id]
                mine = [h for h in holds.values() if h[0] == name]
                lost = [
                    e
                    for e in self._pending + self._lost
                    if e.ts >= since and e.credits > 0 and key_name in (None, e.key_name)
                ]
                verdict = _verdict(
                    sum(e.credits for e in lost) + sum(h[1] for h in mine if h[3] <= now),
                    sum(h[1] for h in mine if h[3] > now),
                    amount,
                    cap,
                    window,
                    [*(e.ts for e in lost), *(h[2] for h in mine)],
                )
                if verdict is not None:
                    return replace(verdict, budget=name)
            rid = uuid.uuid4().hex
            if limit is not None:
                holds[rid] = (budget, amount, now, now + lease)
            if key is not None:
                holds[key_hold(rid)] = (key.budget, amount, now, now + lease)
            if probe is not None and probe.exclusive:
                holds[f"{rid}/probe"] = (probe.key, 0.0, now, now + lease)
            return rid

    def settle(self, reservation_id: str, entry: LedgerEntry) -> None:
        """Replace the reservation by the call's ledger row, in one transaction.

        Synchronous: when this returns, the row is on disk for every process. If the
        file is locked past BUSY_TIMEOUT or broken, the row goes the way of ``add``
        (queued and retried, or counted in memory); a hold left in the file then
        counts until its window ends, over-counting rather than under.
        """
        with self._lock:
            if self._memory_holds is not None:
                self._memory_holds.pop(reservation_id, None)
                self._memory_holds.pop(f"{reservation_id}/probe", None)
                self._memory_holds.pop(key_hold(reservation_id), None)
        if not self._broken:
            try:
                with self._session(WRITE_FLOOR):
                    db = self._begin_reservations()
                    try:
                        db.execute(
                            _DELETE_HOLD,
                            (reservation_id, f"{reservation_id}/probe", key_hold(reservation_id)),
                        )
                        db.execute(_INSERT_CALL, entry.row())
                        db.execute("COMMIT")
                    finally:
                        self._rollback(db)
                    # Still under the database lock: no window read is half-done, and the
                    # next one sees this row.
                    with self._lock:
                        self._window = None
                return
            except (sqlite3.Error, OSError, _LedgerRefused) as exc:
                if not _is_lock(exc):
                    self._disable(exc)
        self.add(entry)

    def mark_rate(self, model: str, rate: float, now: float) -> None:
        """Tell every process on the store that ``model`` was billed far above its hold:
        their next reservation of it re-estimates at ``rate`` (credits a character)."""
        if self._broken:
            return
        probe = Probe(model, False, now)
        try:
            with self._session(WRITE_FLOOR):
                db = self._begin_reservations()
                try:
                    db.execute(
                        "INSERT OR REPLACE INTO reservations (id, budget, amount, created, "
                        "expires) VALUES (?, ?, ?, ?, ?)",
                        (probe.marker, probe.marker, rate, now, now + MARK_LIFETIME),
                    )
                    db.execute("COMMIT")
                finally:
                    self._rollback(db)
        except (sqlite3.Error, OSError, _LedgerRefused) as exc:
            if not _is_lock(exc):
                self._disable(exc)

    def release(self, reservation_id: str) -> None:
        """Drop a reservation whose call was never billed (if locked, its lease ends it)."""
        with self._lock:
            if self._memory_holds is not None:
                self._memory_holds.pop(reservation_id, None)
                self._memory_holds.pop(f"{reservation_id}/probe", None)
                self._memory_holds.pop(key_hold(reservation_id), None)
        if self._broken:
            return
        try:
            with self._session(WRITE_FLOOR):
                db = self._begin_reservations()
                try:
                    db.execute(
                        _DELETE_HOLD,
                        (reservation_id, f"{reservation_id}/probe", key_hold(reservation_id)),
                    )
                    db.execute("COMMIT")
                finally:
                    self._rollback(db)
        except (sqlite3.Error, OSError, _LedgerRefused) as exc:
            if not _is_lock(exc):
                self._disable(exc)


_DELETE_HOLD = "DELETE FROM reservations WHERE id IN (?, ?, ?)"


def _check_probe(db: sqlite3.Connection, probe: Probe, now: float) -> ReservationRefused | None:
    """Inside reserve's transaction: None if ``probe`` may go ahead, else why not."""
    marked = db.execute(
        "SELECT amount, created FROM reservations WHERE id = ?", (probe.marker,)
    ).fetchone()
    if marked is not None and float(marked[1]) > probe.rates_read:
        return ReservationRefused(0.0, 0.0, None, rate=float(marked[0]), marked_at=marked[1])
    if probe.exclusive:
        db.execute("DELETE FROM reservations WHERE budget = ? AND expires <= ?", (probe.key, now))
        if db.execute("SELECT 1 FROM reservations WHERE budget = ?", (probe.key,)).fetchone():
            return ReservationRefused(0.0, 0.0, None, busy=True)
        # The last probe settled after the caller read its rates: read them again first.
        if db.execute(
            "SELECT 1 FROM calls WHERE ts >= ? AND model = ? AND cached = 0 AND credits > 0",
            (probe.rates_read - PROBE_LOOKBACK, probe.model),
        ).fetchone():
            return ReservationRefused(0.0, 0.0, None, busy=True)
    return None


def _verdict(
    spent: float,
    held: float,
    amount: float,
    limit: float,
    window: float,
    times: Sequence[float | None],
) -> ReservationRefused | None:
    """None when ``amount`` fits next to ``spent`` and ``held``, else the refusal.

    The same rule as the in-process budget: refused when the call would pass the
    limit, or when the limit is already reached (so free calls stop there too).
    """
    total = spent + held
    if total + amount <= limit and total < limit:
        return None
    known = [t for t in times if t is not None]
    return ReservationRefused(
        spent=spent, held=held, frees_at=min(known) + window if known else None
    )


_STORES: dict[Path, SQLiteStore] = {}
_STORES_LOCK = threading.Lock()


def open_store(path: Path) -> SQLiteStore:
    """The process-wide store for ``path`` (one writer thread per file)."""
    path = path.expanduser()
    # The folders are resolved, not the file: a ledger that is a link must be seen as one.
    path = path.parent.resolve() / path.name
    with _STORES_LOCK:
        store = _STORES.get(path)
        if store is None:
            store = _STORES[path] = SQLiteStore(path)
        return store


@atexit.register
def _flush_all() -> None:
    # A CLI run exits right after its call: write what it spent before leaving. A ledger
    # locked by another program gets up to the busy timeout, then the loss is reported.
    with _STORES_LOCK:
        stores = list(_STORES.values())
    for store in stores:
        store.flush(timeout=BUSY_TIMEOUT)
        left = store.unwritten_count()
        if left:
            logger.warning(
                "octave-tools: %d call(s) could not be written to the usage ledger at %s "
                "before exit: another program held it locked.",
                left,
                store.path,
            )
