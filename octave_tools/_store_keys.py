"""Where client keys live: the store's own database (the SQLite ledger file, or the
PostgreSQL database of ``OCTAVE_TOOLS_STORE_URL``), in tables of their own, over a
connection of their own, so every replica sees the same keys.

Only a keyed hash of each key is stored (see ``_keys``). Tables are created on first
use with ``IF NOT EXISTS``: a store made by an older release gains them in place, and
older code never reads them.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ._calltime import remaining
from ._redact import redact_url, scrub
from .errors import ConfigurationError
from .models import ClientKey

__all__ = ["PostgresKeys", "SQLiteKeys", "open_keys"]

T = TypeVar("T")
_SELECT = (
    "SELECT name, key_id, created, expires, revoked, max_credits_per_day, rpm, models, last_used"
)
_TIMEOUT = 5.0


def _record(row: tuple[Any, ...]) -> ClientKey:
    name, key_id, created, expires, revoked, budget, rpm, models, last_used = row
    return ClientKey(
        name=str(name),
        key_id=str(key_id),
        created=float(created),
        expires=None if expires is None else float(expires),
        revoked=None if revoked is None else float(revoked),
        max_credits_per_day=None if budget is None else float(budget),
        rpm=None if rpm is None else int(rpm),
        models=tuple(m for m in str(models or "").split(",") if m),
        last_used=None if last_used is None else float(last_used),
    )


def _values(key: ClientKey, digest: str) -> tuple[Any, ...]:
    return (
        key.name,
        key.key_id,
        digest,
        key.created,
        key.expires,
        key.revoked,
        key.max_credits_per_day,
        key.rpm,
        ",".join(key.models),
    )


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS client_keys (
    name TEXT PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    digest TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    revoked REAL,
    max_credits_per_day REAL,
    rpm INTEGER,
    models TEXT NOT NULL DEFAULT '',
    last_used REAL
);
CREATE TABLE IF NOT EXISTS client_key_minutes (
    name TEXT NOT NULL,
    minute INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    PRIMARY KEY (name, minute)
);
CREATE TABLE IF NOT EXISTS store_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SQLiteKeys:
    """Client keys in the SQLite ledger file (WAL: safe beside the ledger's connection)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.is_symlink():
            raise ConfigurationError(f"{path} is a symbolic link, which the ledger never follows.")
        self._db = sqlite3.connect(
            path, timeout=_TIMEOUT, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SQLITE_SCHEMA)
        path.chmod(0o600)

    def _do(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # Within a call, no longer than the call has left (a locked file is an error).
        left = remaining(_TIMEOUT)
        if left <= 0 or not self._lock.acquire(timeout=left):
            raise _unavailable(self.path, "it did not answer in time")
        try:
            self._db.execute(f"PRAGMA busy_timeout = {max(1, int(left * 1000))}")
            try:
                return fn(self._db)
            finally:
                # A read left unfinished keeps a transaction open; a write made within it
                # would then hold the file's write lock and stall the ledger's writer.
                if self._db.in_transaction:
                    self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _unavailable(self.path, str(exc) or type(exc).__name__) from None
        finally:
            self._lock.release()

    def key_pepper(self) -> bytes:
        def read(db: sqlite3.Connection) -> bytes:
            db.execute(
                "INSERT OR IGNORE INTO store_meta (name, value) VALUES ('key_pepper', ?)",
                (secrets.token_hex(32),),
            )
            (row,) = db.execute(
                "SELECT value FROM store_meta WHERE name = 'key_pepper'"
            ).fetchall()
            return bytes.fromhex(str(row[0]))

        return self._do(read)

    def key_add(self, key: ClientKey, digest: str) -> bool:
        def add(db: sqlite3.Connection) -> bool:
            try:
                db.execute(
                    "INSERT INTO client_keys (name, key_id, digest, created, expires, revoked, "
                    "max_credits_per_day, rpm, models) VALUES (?,?,?,?,?,?,?,?,?)",
                    _values(key, digest),
                )
            except sqlite3.IntegrityError:
                return False
            return True

        return self._do(add)

    def key_find(self, key_id: str) -> tuple[ClientKey, str] | None:
        # fetchall: every read runs to its end, so no statement keeps a lock.
        rows = self._do(
            lambda db: db.execute(
                _SELECT + ", digest FROM client_keys WHERE key_id = ?",
                (key_id,),
            ).fetchall()
        )
        row = rows[0] if rows else None
        return None if row is None else (_record(row[:-1]), str(row[-1]))

    def key_by_name(self, name: str) -> ClientKey | None:
        rows = self._do(
            lambda db: db.execute(
                _SELECT + " FROM client_keys WHERE name = ?",
                (name,),
            ).fetchall()
        )
        row = rows[0] if rows else None
        return None if row is None else _record(row)

    def key_list(self) -> list[ClientKey]:
        rows = self._do(
            lambda db: db.execute(_SELECT + " FROM client_keys ORDER BY name").fetchall()
        )
        return [_record(r) for r in rows]

    def key_revoke(self, name: str, now: float) -> bool:
        cursor = self._do(
            lambda db: db.execute(
                "UPDATE client_keys SET revoked = ? WHERE name = ? AND revoked IS NULL",
                (now, name),
            )
        )
        return cursor.rowcount > 0

    def key_replace(self, name: str, key_id: str, digest: str) -> bool:
        cursor = self._do(
            lambda db: db.execute(
                "UPDATE client_keys SET key_id = ?, digest = ?, revoked = NULL WHERE name = ?",
                (key_id, digest, name),
            )
        )
        return cursor.rowcount > 0

    def key_touch(self, key_id: str, now: float) -> None:
        self._do(
            lambda db: db.execute(
                "UPDATE client_keys SET last_used = ? WHERE key_id = ?", (now, key_id)
            )
        )

    def key_rate(self, name: str, minute: int, limit: int) -> bool:
        def count(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = db.execute(
                    "SELECT calls FROM client_key_minutes WHERE name = ? AND minute = ?",
                    (name, minute),
                ).fetchall()
                if rows and int(rows[0][0]) >= limit:
                    return False
                db.execute(
                    "INSERT INTO client_key_minutes (name, minute, calls) VALUES (?, ?, 1) "
                    "ON CONFLICT (name, minute) DO UPDATE SET calls = calls + 1",
                    (name, minute),
                )
                db.execute("DELETE FROM client_key_minutes WHERE minute < ?", (minute - 1,))
                return True
            finally:
                db.execute("COMMIT")

        return self._do(count)

    def close(self) -> None:
        self._db.close()


_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS octave_client_keys (
    name TEXT PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    digest TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION,
    revoked DOUBLE PRECISION,
    max_credits_per_day DOUBLE PRECISION,
    rpm INTEGER,
    models TEXT NOT NULL DEFAULT '',
    last_used DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS octave_client_key_minutes (
    name TEXT NOT NULL,
    minute BIGINT NOT NULL,
    calls INTEGER NOT NULL,
    PRIMARY KEY (name, minute)
);
CREATE TABLE IF NOT EXISTS octave_store_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class PostgresKeys:
    """Client keys in the PostgreSQL store's database, over a small pool of their own."""

    def __init__(self, url: str, *, setting: str = "OCTAVE_TOOLS_STORE_URL") -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
            from psycopg_pool import PoolTimeout as _PoolTimeout

            from ._store_pg import TCP_DEFAULTS
        except ImportError:
            raise ConfigurationError(
                f"{setting} is a postgresql:// URL, which needs the PostgreSQL driver: "
                "pip install 'octave-tools[postgres]'."
            ) from None
        self._errors: tuple[type[BaseException], ...] = (psycopg.Error, _PoolTimeout)
        self.url, self.setting = url, setting
        options = {
            "autocommit": True,
            "connect_timeout": int(_TIMEOUT),
            "options": f"-c statement_timeout={int(_TIMEOUT * 1000)}",
            **TCP_DEFAULTS,  # a silent network ends the connection, not the call's wait
        }
        try:
            with psycopg.connect(url, **options) as conn, conn.transaction():  # type: ignore[arg-type]
                conn.execute("SELECT pg_advisory_xact_lock(1869575286, 1)")
                conn.execute(_PG_SCHEMA)
        except psycopg.Error as exc:
            raise self._unreachable(exc) from None
        self._pool = ConnectionPool(
            url,
            min_size=0,
            max_size=2,
            kwargs=options,
            timeout=_TIMEOUT,
            name="octave-keys",
            open=True,
        )

    def _unreachable(self, exc: BaseException) -> ConfigurationError:
        reason = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "", self.url)
        return ConfigurationError(
            f"The client keys in {self.setting} ({redact_url(self.url)}) cannot be used: "
            f"{reason or type(exc).__name__}. Keys fail closed: no client key is accepted "
            "until the store answers."
        )

    def _do(self, fn: Callable[[Any], T]) -> T:
        # Within a call, the pool wait and each statement end by the call's deadline.
        left = remaining(_TIMEOUT)
        if left <= 0:
            raise self._unreachable(TimeoutError("the call's time is up"))
        try:
            with self._pool.connection(timeout=left) as conn:
                conn.execute(
                    "SELECT set_config('statement_timeout', %s, false)",
                    (str(max(1, int(left * 1000))),),
                )
                return fn(conn)
        except self._errors as exc:
            raise self._unreachable(exc) from None

    def key_pepper(self) -> bytes:
        def read(conn: Any) -> bytes:
            conn.execute(
                "INSERT INTO octave_store_meta (name, value) VALUES ('key_pepper', %s) "
                "ON CONFLICT (name) DO NOTHING",
                (secrets.token_hex(32),),
            )
            row = conn.execute(
                "SELECT value FROM octave_store_meta WHERE name = 'key_pepper'"
            ).fetchone()
            return bytes.fromhex(str(row[0]))

        return self._do(read)

    def key_add(self, key: ClientKey, digest: str) -> bool:
        row = self._do(
            lambda conn: conn.execute(
                "INSERT INTO octave_client_keys (name, key_id, digest, created, expires, "
                "revoked, max_credits_per_day, rpm, models) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                "ON CONFLICT DO NOTHING RETURNING name",
                _values(key, digest),
            ).fetchone()
        )
        return row is not None

    def key_find(self, key_id: str) -> tuple[ClientKey, str] | None:
        row = self._do(
            lambda conn: conn.execute(
                _SELECT + ", digest FROM octave_client_keys WHERE key_id = %s",
                (key_id,),
            ).fetchone()
        )
        return None if row is None else (_record(row[:-1]), str(row[-1]))

    def key_by_name(self, name: str) -> ClientKey | None:
        row = self._do(
            lambda conn: conn.execute(
                _SELECT + " FROM octave_client_keys WHERE name = %s",
                (name,),
            ).fetchone()
        )
        return None if row is None else _record(row)

    def key_list(self) -> list[ClientKey]:
        rows = self._do(
            lambda conn: conn.execute(_SELECT + " FROM octave_client_keys ORDER BY name").fetchall()
        )
        return [_record(r) for r in rows]

    def key_revoke(self, name: str, now: float) -> bool:
        row = self._do(
            lambda conn: conn.execute(
                "UPDATE octave_client_keys SET revoked = %s WHERE name = %s AND revoked IS NULL "
                "RETURNING name",
                (now, name),
            ).fetchone()
        )
        return row is not None

    def key_replace(self, name: str, key_id: str, digest: str) -> bool:
        row = self._do(
            lambda conn: conn.execute(
                "UPDATE octave_client_keys SET key_id = %s, digest = %s, revoked = NULL "
                "WHERE name = %s RETURNING name",
                (key_id, digest, name),
            ).fetchone()
        )
        return row is not None

    def key_touch(self, key_id: str, now: float) -> None:
        self._do(
            lambda conn: conn.execute(
                "UPDATE octave_client_keys SET last_used = %s WHERE key_id = %s", (now, key_id)
            )
        )

    def key_rate(self, name: str, minute: int, limit: int) -> bool:
        """One more call in ``minute`` if under ``limit``: one atomic statement (and the
        key's past minutes dropped, so the table stays a row or two a key)."""

        def count(conn: Any) -> bool:
            row = conn.execute(
                "INSERT INTO octave_client_key_minutes (name, minute, calls) VALUES (%s, %s, 1) "
                "ON CONFLICT (name, minute) DO UPDATE SET "
                "calls = octave_client_key_minutes.calls + 1 "
                "WHERE octave_client_key_minutes.calls < %s RETURNING calls",
                (name, minute, limit),
            ).fetchone()
            conn.execute(
                "DELETE FROM octave_client_key_minutes WHERE name = %s AND minute < %s",
                (name, minute - 1),
            )
            return row is not None

        return self._do(count)

    def close(self) -> None:
        self._pool.close()


def _unavailable(path: Path, reason: str) -> ConfigurationError:
    return ConfigurationError(
        f"The client keys in {path} cannot be read ({reason}); keys fail closed until it "
        "can be. Close the program holding the file, or check its folder."
    )


def open_keys(store_url: str | None, ledger_path: Path) -> SQLiteKeys | PostgresKeys:
    """The key store beside the ledger that ``store_url`` (or the default file) names."""
    url = (store_url or "").strip()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("postgresql", "postgres"):
        return PostgresKeys(url)
    if scheme == "sqlite":
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(url)
        path = unquote(parts.netloc + parts.path)
        if path.startswith("/~"):
            path = path[1:]
        return SQLiteKeys(Path(path).expanduser())
    if url:
        raise ConfigurationError(
            f"OCTAVE_TOOLS_STORE_URL={redact_url(url)}: client keys need sqlite:/// or "
            "postgresql:// (or no store URL for the default ledger file)."
        )
    return SQLiteKeys(ledger_path)
