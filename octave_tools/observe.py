"""What happened, for whoever watches: metrics, traces and logs plug in here.

The core reports a few events (an upstream request answered, a retry, a cache hit, a
coalesced call, a store error); a face reports whole tool calls. With no sink installed
(the default), each report is one truthiness check of a module global: the hot path
pays nothing else. Sinks never see the text, the key or an audio URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .models import Speech

__all__ = [
    "SINKS",
    "CallRecord",
    "Sink",
    "add_sink",
    "call_key",
    "in_store",
    "observed_call",
    "outcome_of",
    "remove_sink",
    "report_cache_hit",
    "report_coalesced",
    "report_retry",
    "report_store_error",
    "report_upstream",
    "store_operation",
]

_T = TypeVar("_T")

# The client key a call runs under ("operator": the server token, or no server at all).
call_key: ContextVar[str] = ContextVar("octave_tools_call_key", default="operator")


@dataclass
class CallRecord:
    """One tool call, filled in as it goes; sinks read it when it ends."""

    tool: str
    key: str
    model: str | None = None
    engine: str | None = None
    outcome: str = "error"
    """``ok``, ``cached``, ``invalid_input``, ``budget``, ``upstream_error``, ``error``."""
    credits: float = 0.0
    characters: int = 0
    parts: int = 0
    seconds: float = 0.0
    request_id: str | None = None

    def finish(self, speech: Speech) -> None:
        """Fill in what the call gave (never its URL or text)."""
        self.model, self.engine = speech.model, speech.engine
        self.outcome = "cached" if speech.cached else "ok"
        self.characters = speech.characters
        credits = speech.credits_used
        self.credits = float(credits) if credits is not None and not speech.cached else 0.0
        self.request_id = speech.request_id
        parts = getattr(speech, "parts", None)
        self.parts = len(parts) if parts else 0


def outcome_of(exc: BaseException) -> str:
    """A call's outcome label from the error that ended it."""
    from .errors import APIError, BudgetExceededError, ConfigurationError, InvalidInputError

    if isinstance(exc, InvalidInputError):
        return "invalid_input"
    if isinstance(exc, BudgetExceededError):
        return "budget"
    if isinstance(exc, ConfigurationError):
        return "configuration"
    if isinstance(exc, APIError):
        return "upstream_error"
    if isinstance(exc, (KeyboardInterrupt, SystemExit)) or type(exc).__name__ == "CancelledError":
        return "cancelled"
    return "error"


class Sink:
    """Receives events: subclass it and override what you watch (the rest do nothing).

    Every method must be cheap and must never raise.
    """

    def call_started(self, record: CallRecord) -> None:
        pass

    def call_finished(self, record: CallRecord) -> None:
        pass

    def upstream(self, model: str, status: int | None, seconds: float) -> None:
        pass

    def retry(self, model: str, reason: str) -> None:
        pass

    def cache_hit(self, model: str) -> None:
        pass

    def coalesced(self, model: str) -> None:
        pass

    def store_error(self, operation: str) -> None:
        pass

    def store(self, operation: str, seconds: float, ok: bool) -> None:
        pass


SINKS: list[Sink] = []


def add_sink(sink: Sink) -> None:
    """Start sending events to ``sink`` (process-wide)."""
    if sink not in SINKS:
        SINKS.append(sink)


def remove_sink(sink: Sink) -> None:
    """Stop sending events to ``sink``."""
    if sink in SINKS:
        SINKS.remove(sink)


def report_upstream(model: str, status: int | None, seconds: float) -> None:
    """One upstream request answered (``status``) or failed in transport (None)."""
    for sink in SINKS:
        sink.upstream(model, status, seconds)


def report_retry(model: str, reason: str) -> None:
    for sink in SINKS:
        sink.retry(model, reason)


def report_cache_hit(model: str) -> None:
    for sink in SINKS:
        sink.cache_hit(model)


def report_coalesced(model: str) -> None:
    for sink in SINKS:
        sink.coalesced(model)


@contextmanager
def store_operation(operation: str) -> Iterator[None]:
    """Time one store operation (a budget reservation, a settle, a cache read)."""
    started = time.perf_counter()
    ok = False
    try:
        yield
        ok = True
    finally:
        seconds = time.perf_counter() - started
        for sink in SINKS:
            sink.store(operation, seconds, ok)


def in_store(operation: str, fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)``, timed as store ``operation`` when anyone watches."""
    if not SINKS:
        return fn(*args)
    with store_operation(operation):
        return fn(*args)


def report_store_error(operation: str) -> None:
    for sink in SINKS:
        sink.store_error(operation)


@contextmanager
def observed_call(tool: str) -> Iterator[CallRecord]:
    """Time one tool call and report it to every sink, however it ends.

    The caller fills in the record (model, outcome, credits...) as it learns them.
    """
    record = CallRecord(tool=tool, key=call_key.get())
    if not SINKS:
        yield record
        return
    for sink in SINKS:
        sink.call_started(record)
    started = time.perf_counter()
    try:
        yield record
    except BaseException as exc:
        record.outcome = outcome_of(exc)
        raise
    finally:
        record.seconds = time.perf_counter() - started
        for sink in SINKS:
            sink.call_finished(record)
