"""Fallback: which failures another model could fix, and which models are cooling down.

Pure policy plus a small failure record. The clients walk the chain (the asked model,
then the ``fallback`` setting's models in order); this module decides whether a failure
moves on to the next model and whether a model is skipped for now.

The record lives in the store's cache table (shared by every replica on a PostgreSQL
store, or by every process on one SQLite file), else in this process. It is read and
written without a transaction: two replicas failing at once may count one failure
between them, which only delays a cool-down by a call.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    NotFoundError,
    RateLimitError,
    ServerError,
    UnexpectedResponseError,
)

if TYPE_CHECKING:
    from ._store import Store

__all__ = ["FAILURES_TO_COOL", "Cooldowns", "fallback_reason"]

logger = logging.getLogger("octave_tools")

# A model that failed this many calls in a row is skipped for the cool-down.
FAILURES_TO_COOL = 2
_KEY_PREFIX = "octave-tools:fallback:"


def fallback_reason(exc: BaseException) -> str | None:
    """Why another model could succeed where this call failed; None when none could.

    Server errors, timeouts and dropped connections (after the call's own retries), a
    404 (a retired model) and a 429 still refused past its Retry-After: yes. Invalid
    input, a rejected body, a bad key or no credits, and a spent budget: no, another
    model would fail the same way or spend money the user did not allow.
    """
    if isinstance(exc, RateLimitError):
        return "429 rate limited past its Retry-After"
    if isinstance(exc, NotFoundError):
        return "404 from the API (model unknown or retired)"
    if isinstance(exc, ServerError) or (
        isinstance(exc, APIStatusError) and exc.status_code in (408, 409)
    ):
        return f"{exc.status_code} from the API after retries"
    if isinstance(exc, APITimeoutError):
        return f"no answer within {exc.timeout:g} s"
    if isinstance(exc, APIConnectionError):
        return "the connection failed after retries"
    if isinstance(exc, UnexpectedResponseError):
        return "an answer without usable audio"
    return None


class Cooldowns:
    """Consecutive failures per model, and the models skipped until a time passes."""

    def __init__(
        self,
        store: Callable[[], Store | None],
        cooldown: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._local: dict[str, tuple[int, float]] = {}

    def cooling(self, model: str) -> float | None:
        """Seconds ``model`` is still skipped for, or None when it may be tried."""
        if self._cooldown <= 0:
            return None
        now = self._clock()
        _, until = self._read(model, now)
        # Bounded by the setting: a planted far-future record cannot bench a model for good.
        return min(until - now, self._cooldown) if until > now else None

    def failed(self, model: str) -> None:
        """Count a failure another model could fix; the second in a row cools the model."""
        if self._cooldown <= 0:
            return
        now = self._clock()
        failures, until = self._read(model, now)
        failures += 1
        if failures >= FAILURES_TO_COOL:
            until = now + self._cooldown
            logger.warning(
                "octave-tools: %s failed %d calls in a row; skipped for %g s",
                model,
                failures,
                self._cooldown,
            )
        # Kept for a cool-down past the last failure: a model failing once an hour is
        # not "failing in a row".
        self._write(model, failures, until, max(until, now + self._cooldown))

    def succeeded(self, model: str) -> None:
        """A call on ``model`` worked: its run of failures ends."""
        if self._cooldown <= 0:
            return
        now = self._clock()
        failures, _ = self._read(model, now)
        if failures:
            self._write(model, 0, 0.0, now + 1.0)

    def _read(self, model: str, now: float) -> tuple[int, float]:
        store = self._shared()
        if store is not None:
            try:
                raw = store.cache_get(_KEY_PREFIX + model, now)
            except Exception:  # the record is advice: a store that fails never fails a call
                logger.debug("octave-tools: fallback record unreadable", exc_info=True)
            else:
                return _decode(raw)
        with self._lock:
            failures, until = self._local.get(model, (0, 0.0))
        return failures, until

    def _write(self, model: str, failures: int, until: float, expires_at: float) -> None:
        with self._lock:
            self._local[model] = (failures, until)
        store = self._shared()
        if store is None:
            return
        value = json.dumps({"failures": failures, "until": until})
        try:
            store.cache_put(_KEY_PREFIX + model, value, expires_at)
        except Exception:
            logger.debug("octave-tools: fallback record not written", exc_info=True)

    def _shared(self) -> Store | None:
        try:
            return self._store()
        except Exception:
            return None


def _decode(raw: str | None) -> tuple[int, float]:
    """A stored record, vetted (the store is shared, so it is not trusted blindly)."""
    if raw is None:
        return 0, 0.0
    try:
        data = json.loads(raw)
        failures, until = int(data["failures"]), float(data["until"])
    except (ValueError, TypeError, KeyError):
        return 0, 0.0
    if not (0 <= failures < 1_000_000 and math.isfinite(until)):
        return 0, 0.0
    return failures, until
