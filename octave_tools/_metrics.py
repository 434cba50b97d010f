"""Prometheus metrics for the HTTP server, made with the official ``prometheus_client``.

Installed as an ``_observe`` sink when the ``metrics`` extra is present. Every series is
named ``octave_tools_*`` in the Prometheus style; docs/deploy.md lists them. Labels are
model ids, engines, tool names, outcomes, status codes and client-key names: never the
text, the API key or an audio URL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .observe import CallRecord, Sink

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["CONTENT_TYPE", "Metrics", "available"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Upstream TTS requests take from a fraction of a second to a minute or more.
_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0)
MAX_LABEL_CHARS = 100


def available() -> bool:
    """Whether the ``metrics`` extra (prometheus_client) is installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _label(value: str | None) -> str:
    # Model ids passed through from a caller are bounded: a label set is memory.
    return (value or "none")[:MAX_LABEL_CHARS]


class Metrics(Sink):
    """The server's metric families in their own registry, and the sink that feeds them.

    ``budgets`` is read at each scrape (in the scraping thread): the credits left per
    budget (``global``, or a client key's name); None when a budget is not set.
    """

    def __init__(self, budgets: Callable[[], Mapping[str, float | None]] | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(
            "octave_tools_calls_total",
            "Tool calls, by tool, model, engine, client key and outcome.",
            ["tool", "model", "engine", "key", "outcome"],
            registry=r,
        )
        self.credits = Counter(
            "octave_tools_credits_total",
            "Credits spent (billed, or estimated where upstream did not say), by model and key.",
            ["model", "key"],
            registry=r,
        )
        self.characters = Counter(
            "octave_tools_characters_total",
            "Characters synthesised, by model and key.",
            ["model", "key"],
            registry=r,
        )
        self.call_seconds = Histogram(
            "octave_tools_call_duration_seconds",
            "Whole tool call latency (validation, budget, upstream, audio), by tool and model.",
            ["tool", "model"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "octave_tools_upstream_request_duration_seconds",
            "Latency of one upstream /tts request, by model and HTTP status ('error': no answer).",
            ["model", "status"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "octave_tools_retries_total",
            "Upstream requests retried, by model and reason (a status code or a transport error).",
            ["model", "reason"],
            registry=r,
        )
        self.cache_hits = Counter(
            "octave_tools_cache_hits_total",
            "Calls answered from the result cache at no charge, by model.",
            ["model"],
            registry=r,
        )
        self.coalesced_calls = Counter(
            "octave_tools_coalesced_calls_total",
            "Calls that waited for an identical call in flight instead of paying again.",
            ["model"],
            registry=r,
        )
        self.in_flight = Gauge(
            "octave_tools_calls_in_flight",
            "Tool calls running now, by tool.",
            ["tool"],
            registry=r,
        )
        self.store_seconds = Histogram(
            "octave_tools_store_operation_duration_seconds",
            "Latency of store operations (budget.reserve, ledger.settle, cache.get), by operation.",
            ["operation"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.store_errors = Counter(
            "octave_tools_store_errors_total",
            "Failed store operations (ledger, budget, cache), by operation.",
            ["operation"],
            registry=r,
        )
        if budgets is not None:
            r.register(_BudgetCollector(budgets))

    # ------------------------------------------------------------ the sink

    def call_started(self, record: CallRecord) -> None:
        self.in_flight.labels(record.tool).inc()

    def call_finished(self, record: CallRecord) -> None:
        model = _label(record.model)
        self.in_flight.labels(record.tool).dec()
        self.calls.labels(
            record.tool, model, _label(record.engine), record.key, record.outcome
        ).inc()
        self.call_seconds.labels(record.tool, model).observe(record.seconds)
        if record.characters:
            self.characters.labels(model, record.key).inc(record.characters)
        if record.credits > 0:
            self.credits.labels(model, record.key).inc(record.credits)

    def upstream(self, model: str, status: int | None, seconds: float) -> None:
        status_label = str(status) if status is not None else "error"
        self.upstream_seconds.labels(_label(model), status_label).observe(seconds)

    def retry(self, model: str, reason: str) -> None:
        self.retries.labels(_label(model), reason).inc()

    def cache_hit(self, model: str) -> None:
        self.cache_hits.labels(_label(model)).inc()

    def coalesced(self, model: str) -> None:
        self.coalesced_calls.labels(_label(model)).inc()

    def store_error(self, operation: str) -> None:
        self.store_errors.labels(operation).inc()

    def store(self, operation: str, seconds: float, ok: bool) -> None:
        self.store_seconds.labels(operation).observe(seconds)

    # ------------------------------------------------------------ exposition

    def exposition(self) -> bytes:
        """The registry in the text exposition format (blocking: budgets read the store)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _BudgetCollector:
    """``octave_tools_budget_remaining_credits{budget=...}``, read at scrape time."""

    def __init__(self, budgets: Callable[[], Mapping[str, float | None]]) -> None:
        self._budgets = budgets

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "octave_tools_budget_remaining_credits",
            "Credits left in each budget's rolling window ('global', or a client key's name).",
            labels=["budget"],
        )
        try:
            budgets = self._budgets()
        except Exception:  # a store that fails shows as an error count, not a failed scrape
            logging.getLogger("octave_tools.mcp").debug("budget read failed", exc_info=True)
            budgets = {}
        for name, left in budgets.items():
            if left is not None:
                family.add_metric([name], max(0.0, left))
        yield family
