"""Client keys for a shared server: made once, kept only as a keyed hash, checked in
constant time.

A key reads ``otk_<id>_<secret>``: ``otk_`` lets secret scanners find a leaked one, the
12 hex characters of ``<id>`` find its record (and are shown by ``keys list`` as its
prefix), and ``<secret>`` holds 256 random bits. The store keeps only
HMAC-SHA256(pepper, key). The pepper is ``OCTAVE_TOOLS_KEYS_SECRET`` when set (the same
on every replica: then a copy of the database alone cannot even test a guess), else a
random one the store keeps for itself.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from ._context import current_key
from ._redact import register_secret, shown
from ._settings import Settings
from .errors import ClientKeyLimitError, ConfigurationError, InvalidInputError
from .models import ClientKey

__all__ = [
    "ENV_KEYS_SECRET",
    "KEY_PREFIX",
    "ClientKey",
    "KeyBook",
    "KeyGrant",
    "KeyStore",
    "Verified",
    "current_key",
    "new_key",
    "open_key_book",
    "parse_duration",
]

KEY_PREFIX = "otk_"
ENV_KEYS_SECRET = "OCTAVE_TOOLS_KEYS_SECRET"  # noqa: S105 - a variable name
_KEY = re.compile(r"otk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# How long a replica trusts what it read of a key: a revoked or expired key is refused
# on every replica at most this long after `keys revoke` (or its expiry).
VERIFY_TTL = 5.0


class KeyStore(Protocol):
    """What client keys need from the store (SQLite or PostgreSQL)."""

    def key_pepper(self) -> bytes: ...
    def key_add(self, key: ClientKey, digest: str) -> bool: ...
    def key_find(self, key_id: str) -> tuple[ClientKey, str] | None: ...
    def key_by_name(self, name: str) -> ClientKey | None: ...
    def key_list(self) -> list[ClientKey]: ...
    def key_revoke(self, name: str, now: float) -> bool: ...
    def key_replace(self, name: str, key_id: str, digest: str) -> bool: ...
    def key_touch(self, key_id: str, now: float) -> None: ...
    def key_rate(self, name: str, minute: int, limit: int) -> bool: ...


def new_key() -> tuple[str, str]:
    """A fresh key and its id."""
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    register_secret(key)  # printed once, never logged
    return key, key_id


def key_id_of(token: str) -> str | None:
    """The id of a well-formed client key, or None (the operator's token, or garbage)."""
    found = _KEY.fullmatch(token)
    return found.group(1) if found else None


def digest(key: str, pepper: bytes) -> str:
    return hmac.new(pepper, key.encode("ascii"), hashlib.sha256).hexdigest()


def check_name(name: str) -> str:
    if name.lower() == "operator":
        raise InvalidInputError(
            "Key name 'operator' is taken: it names the server token's calls in the ledger "
            "and the usage report. Choose another name.",
            field="name",
        )
    if not _NAME.fullmatch(name):
        raise InvalidInputError(
            f"Key name {shown(name)} is not allowed: use 1 to 64 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit.",
            field="name",
        )
    return name


def parse_duration(value: str) -> float:
    """``30d``, ``12h``, ``90m`` or seconds, as seconds."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*", value)
    if not found:
        raise InvalidInputError(
            f"--expires must be a duration such as 30d, 12h or 90m; got {shown(value)}.",
            field="expires",
        )
    amount = float(found.group(1)) * {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}[found.group(2)]
    if amount <= 0:
        raise InvalidInputError("--expires must be more than 0.", field="expires")
    return amount


def pepper_of(store: KeyStore) -> bytes:
    configured = os.environ.get(ENV_KEYS_SECRET, "").strip()
    if configured:
        register_secret(configured)
        return configured.encode()
    return store.key_pepper()


@dataclass(frozen=True)
class Verified:
    """A client key that checked out: its record, as of ``checked_at``."""

    key: ClientKey
    checked_at: float


class KeyBook:
    """Key management and verification over a store (every replica sees the same keys).

    The store is opened on first use (a server starts while its database is down; keys
    then fail closed until it answers). Verification answers from a short-lived cache
    (``VERIFY_TTL``), so a call does not read the store each time; a key is never
    trusted longer than that after it was revoked, rotated or expired.
    """

    def __init__(
        self, store: KeyStore | Callable[[], KeyStore], *, clock: Callable[[], float] = time.time
    ) -> None:
        self._store: KeyStore | None = None
        self._open: Callable[[], KeyStore] | None = None
        if callable(store) and not hasattr(store, "key_find"):
            self._open = store
        else:
            self._store = store  # type: ignore[assignment]
        self.clock = clock
        self._pepper: bytes | None = None
        self._seen: dict[str, tuple[float, str, Verified | None]] = {}
        self._lock = threading.Lock()

    @property
    def store(self) -> KeyStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    assert self._open is not None
                    self._store = self._open()
        return self._store

    def _digest(self, key: str) -> str:
        if self._pepper is None:
            self._pepper = pepper_of(self.store)
        return digest(key, self._pepper)

    def add(
        self,
        name: str,
        *,
        max_credits_per_day: float | None = None,
        rpm: int | None = None,
        models: Sequence[str] = (),
        expires_in: float | None = None,
    ) -> str:
        """Make a key named ``name``; returns the key (shown once, never again)."""
        check_name(name)
        if self.store.key_by_name(name) is not None:
            raise InvalidInputError(
                f"A key named {name!r} exists already; use `keys rotate {name}` for a new "
                "key with the same limits, or another name.",
                field="name",
            )
        key, key_id = new_key()
        now = self.clock()
        record = ClientKey(
            name=name,
            key_id=key_id,
            created=now,
            expires=now + expires_in if expires_in is not None else None,
            max_credits_per_day=max_credits_per_day,
            rpm=rpm,
            models=tuple(models),
        )
        if not self.store.key_add(record, self._digest(key)):
            raise InvalidInputError(
                f"A key named {name!r} exists already; use `keys rotate {name}`.", field="name"
            )
        return key

    def rotate(self, name: str) -> str:
        """A new key for ``name`` (same limits); the old one stops working."""
        record = self._named(name)
        key, key_id = new_key()
        self.store.key_replace(record.name, key_id, self._digest(key))
        return key

    def revoke(self, name: str) -> None:
        self._named(name)
        self.store.key_revoke(name, self.clock())

    def list(self) -> list[ClientKey]:
        return self.store.key_list()

    def close(self) -> None:
        """Close the store's connection, if it was opened."""
        store = self._store
        close = getattr(store, "close", None)
        if callable(close):
            close()
        self._store = None

    def _named(self, name: str) -> ClientKey:
        record = self.store.key_by_name(name)
        if record is None:
            raise InvalidInputError(
                f"No key named {shown(name)}; `keys list` shows the names.", field="name"
            )
        return record

    def verify(self, token: str) -> Verified | None:
        """The key's record when ``token`` is a usable client key, else None."""
        key_id = key_id_of(token)
        if key_id is None:
            return None
        now = self.clock()
        cached = self._seen.get(key_id)
        computed = self._digest(token)
        if cached is not None and now - cached[0] < VERIFY_TTL:
            _, stored, verified = cached
            if verified is None or not hmac.compare_digest(stored, computed):
                return None
            return verified if verified.key.usable(now) else None
        found = self.store.key_find(key_id)
        if len(self._seen) >= 10_000:  # guessed ids cannot grow this without bound
            self._seen.clear()
        if found is None:
            self._seen[key_id] = (now, "", None)
            return None
        record, stored = found
        verified = Verified(record, now)
        self._seen[key_id] = (now, stored, verified)
        if not hmac.compare_digest(stored, computed) or not record.usable(now):
            return None
        self.store.key_touch(key_id, now)
        return replace(verified)


@dataclass(frozen=True)
class KeyGrant:
    """The client key a call runs under (set by the HTTP server per request), with the
    book that counts its requests."""

    key: ClientKey
    book: KeyBook

    def model(self, model: str | None, default: str) -> str | None:
        """The model to use: ``model`` if the key allows it (else an error naming its
        models), or for none asked, the default when allowed, else the key's first."""
        allowed = self.key.models
        if not allowed:
            return model
        if model is None:
            return None if default in allowed else allowed[0]
        if model.strip() not in allowed:
            raise ClientKeyLimitError(
                f"This key may use only {', '.join(allowed)}; {shown(model)} is not one of "
                "them. Leave model out, or ask the operator for a key with more models.",
                limit="models",
            )
        return model

    def admit(self) -> None:
        """Count one request against the key's requests per minute, or refuse it."""
        rpm = self.key.rpm
        if rpm is None:
            return
        now = self.book.clock()
        minute = int(now // 60)
        if not self.book.store.key_rate(self.key.name, minute, rpm):
            resets = (minute + 1) * 60.0
            raise ClientKeyLimitError(
                f"This key's limit of {rpm} requests per minute is reached; it resets in "
                f"{max(1, round(resets - now))} s (at the start of the next minute).",
                limit="rpm",
                resets_at=resets,
            )




def open_key_book(settings: Settings) -> KeyBook:
    """The client keys of the store ``settings`` name (every replica on it sees them)."""
    from ._spend import default_data_dir
    from ._store_keys import open_keys
    from ._store_url import LEDGER_FILE

    data_dir = Path(settings.data_dir).expanduser() if settings.data_dir else default_data_dir()
    return KeyBook(lambda: open_keys(settings.store_url, data_dir / LEDGER_FILE))


def reject_unknown_models(models: Sequence[str]) -> tuple[str, ...]:
    """``--models`` checked against the catalogue."""
    from .catalogue import MODELS

    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ConfigurationError(
            f"--models names unknown model(s): {', '.join(map(shown, unknown))}; see "
            "`octave-tools models`."
        )
    return tuple(models)
