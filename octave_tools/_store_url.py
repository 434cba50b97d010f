"""Which store a URL names: SQLite (the default), PostgreSQL, and Redis for the cache.

``OCTAVE_TOOLS_STORE_URL`` picks where the ledger, the budget and the cache live;
``OCTAVE_TOOLS_CACHE_URL`` (optional, ``redis://``) moves the cache, and the
coalescing of identical in-flight calls, to Redis. A store that cannot be reached
is a ``ConfigurationError`` naming the setting, never a quiet fallback to a local file.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit

from ._redact import redact_url
from ._store import (
    GroupBy,
    KeyBudget,
    LedgerEntry,
    Probe,
    ReservationRefused,
    Store,
    UsageRow,
    open_store,
)
from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._cache_redis import RedisCache

__all__ = [
    "ENV_CACHE_URL",
    "ENV_STORE_URL",
    "CacheBackend",
    "SplitStore",
    "open_store_url",
]

ENV_STORE_URL = "OCTAVE_TOOLS_STORE_URL"
ENV_CACHE_URL = "OCTAVE_TOOLS_CACHE_URL"
LEDGER_FILE = "ledger.sqlite3"


class CacheBackend(Protocol):
    """The cache half of a Store."""

    def cache_get(self, key: str, now: float) -> str | None: ...
    def cache_put(self, key: str, value: str, expires_at: float) -> None: ...


class SplitStore:
    """A store whose cache lives elsewhere (Redis); everything else goes to ``base``."""

    def __init__(self, base: Store, cache: RedisCache) -> None:
        self.base = base
        self.cache = cache

    @property
    def coalescer(self) -> RedisCache:
        """Coalescing of identical in-flight calls across replicas (see RedisCache.lead)."""
        return self.cache

    def add(self, entry: LedgerEntry) -> None:
        self.base.add(entry)

    def spent_since(self, since: float) -> tuple[float, float | None]:
        return self.base.spent_since(since)

    def rates(self, since: float) -> dict[str, float]:
        return self.base.rates(since)

    def usage(self, since: float, by: GroupBy, key: str | None = None) -> list[UsageRow]:
        return self.base.usage(since, by, key)

    def cache_get(self, key: str, now: float) -> str | None:
        return self.cache.cache_get(key, now)

    def cache_put(self, key: str, value: str, expires_at: float) -> None:
        self.cache.cache_put(key, value, expires_at)

    def flush(self, timeout: float = 5.0) -> None:
        self.base.flush(timeout)

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
        return self.base.reserve(budget, amount, limit, window, lease, now, probe, key)

    def mark_rate(self, model: str, rate: float, now: float) -> None:
        self.base.mark_rate(model, rate, now)

    def settle(self, reservation_id: str, entry: LedgerEntry) -> None:
        self.base.settle(reservation_id, entry)

    def release(self, reservation_id: str) -> None:
        self.base.release(reservation_id)


_OPEN: dict[tuple[str, str], Store] = {}
_OPEN_LOCK = threading.Lock()


def open_store_url(url: str | None, *, data_dir: Path, cache_url: str | None = None) -> Store:
    """The process-wide store that ``url`` names (``OCTAVE_TOOLS_STORE_URL``).

    - empty or None: today's SQLite ledger, ``data_dir / "ledger.sqlite3"``;
    - ``sqlite:///absolute/path.sqlite3`` (``sqlite:///~/x`` expands ``~``);
    - ``postgresql://user[:password]@host[:port]/db`` (or ``postgres://``): ledger,
      budget and cache in PostgreSQL; needs the ``postgres`` extra.

    ``cache_url`` (``OCTAVE_TOOLS_CACHE_URL``), ``redis://`` or ``rediss://``, moves the
    cache to Redis; the returned ``SplitStore`` also offers ``coalescer``. Raises
    ConfigurationError (naming the setting, never the password) for an unknown
    scheme, a missing driver, or a server that does not answer.
    """
    url = (url or "").strip()
    cache_url = (cache_url or "").strip()
    key = (url, cache_url)
    with _OPEN_LOCK:
        store = _OPEN.get(key)
        if store is None:
            store = _open_base(url, data_dir)
            if cache_url:
                store = SplitStore(store, _open_cache(cache_url))
            if url:  # the default is keyed by its folder in open_store, not here
                _OPEN[key] = store
        return store


def _open_base(url: str, data_dir: Path) -> Store:
    if not url:
        return open_store(data_dir.expanduser() / LEDGER_FILE)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        parts = urlsplit(url)
        path = unquote(parts.netloc + parts.path)
        if not path or path == "/":
            raise ConfigurationError(
                f"{ENV_STORE_URL}={redact_url(url)} names no file; use "
                "sqlite:///absolute/path/ledger.sqlite3, or unset it for the default."
            )
        if path.startswith("/~"):
            path = path[1:]
        return open_store(Path(path).expanduser())
    if scheme in ("postgresql", "postgres"):
        from ._store_pg import open_postgres_store

        return open_postgres_store(url, setting=ENV_STORE_URL)
    if scheme in ("redis", "rediss"):
        raise ConfigurationError(
            f"{ENV_STORE_URL} is a Redis URL, but Redis holds only the cache: set "
            f"{ENV_CACHE_URL}={redact_url(url)} instead, and {ENV_STORE_URL} to a "
            "postgresql:// URL (or leave it unset for the local SQLite ledger)."
        )
    raise ConfigurationError(
        f"{ENV_STORE_URL} must start with sqlite:/// or postgresql://; got {redact_url(url)!r}."
    )


def _open_cache(url: str) -> RedisCache:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("redis", "rediss"):
        raise ConfigurationError(
            f"{ENV_CACHE_URL} must be a redis:// or rediss:// URL; got {redact_url(url)!r}. "
            f"Unset it to keep the cache in the store ({ENV_STORE_URL})."
        )
    from ._cache_redis import open_redis_cache

    return open_redis_cache(url, setting=ENV_CACHE_URL)
