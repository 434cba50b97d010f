"""What the HTTP host gives an operator: ``/readyz``, ``/metrics``, JSON logs.

Kept apart from ``_mcp_http`` (the gate, limits and serving): these read the store and
the metrics registry, and none of them is on a tool call's path.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import anyio
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from . import OctaveClient, OctaveError
from . import observe as _observe
from ._metrics import CONTENT_TYPE, Metrics
from ._metrics import available as metrics_available
from ._oplog import CallLog, JsonFormatter
from .errors import ConfigurationError
from .keys import KeyBook

__all__ = [
    "METRICS_PATH",
    "READY_PATH",
    "MetricsEndpoint",
    "Readiness",
    "TraceContext",
    "install_log_format",
    "start_metrics",
    "start_tracing",
]

READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
LOG_FORMATS = ("text", "json")
logger = logging.getLogger("octave_tools.mcp")

Check = tuple[str, Callable[[], None]]


class Readiness:
    """``GET /readyz``: 200 when every dependency answers, else 503 naming the ones that
    do not (``store``, ``cache``). Why goes to the log, never to the (unauthenticated)
    caller. One probe runs at a time; concurrent requests share its answer."""

    def __init__(self, checks: Sequence[Check], timeout: float = 5.0) -> None:
        self._checks = tuple(checks)
        self._timeout = timeout
        self._running: anyio.Event | None = None
        self._last: dict[str, str | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._running is not None:  # a probe is under way: wait for it, do not add one
            await self._running.wait()
        else:
            self._running = anyio.Event()
            try:
                self._last = await self._probe()
            finally:
                self._running.set()
                self._running = None
        failed = [name for name, problem in self._last.items() if problem is not None]
        body: dict[str, Any] = {"status": "unavailable" if failed else "ok"}
        if failed:
            body["failed"] = failed
        response = JSONResponse(
            body, status_code=503 if failed else 200, headers={"Cache-Control": "no-store"}
        )
        await response(scope, receive, send)

    async def _probe(self) -> dict[str, str | None]:
        results: dict[str, str | None] = {}
        for name, check in self._checks:
            problem: str | None = None
            try:
                with anyio.fail_after(self._timeout):
                    await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
            except OctaveError as exc:
                problem = exc.message
            except TimeoutError:
                problem = f"no answer within {self._timeout:g} s"
            except Exception as exc:
                problem = f"unexpected {type(exc).__name__}"
            if problem != self._last.get(name):
                if problem is None:
                    logger.warning("octave-tools: %s: the %s answers again.", READY_PATH, name)
                else:
                    logger.warning("octave-tools: %s: the %s fails: %s", READY_PATH, name, problem)
            results[name] = problem
        return results


def readiness_checks(client: OctaveClient) -> list[Check]:
    """The store, and Redis when ``OCTAVE_TOOLS_CACHE_URL`` is set, each on its own (a
    client's store opens Redis with it, so the store is checked through one without)."""
    cache_url = client.settings.cache_url
    if not cache_url:
        return [("store", client.health)]
    from ._cache_redis import ping

    store_only = OctaveClient(settings=replace(client.settings, cache_url=None))
    return [("store", store_only.health), ("cache", lambda: ping(cache_url))]


class MetricsEndpoint:
    """``GET /metrics``: the Prometheus text format (behind the server token, if any);
    501 saying how to install the ``metrics`` extra when it is missing."""

    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._metrics is None:
            response: Response = JSONResponse(
                {"error": "Metrics need the metrics extra: pip install 'octave-tools[metrics]'."},
                status_code=501,
            )
        else:
            body = await anyio.to_thread.run_sync(self._metrics.exposition)
            response = Response(body, media_type=CONTENT_TYPE)
        await response(scope, receive, send)


def budgets_of(
    client: OctaveClient, keys: KeyBook | None = None
) -> Callable[[], Mapping[str, float | None]]:
    """Credits left per budget, read at scrape time: ``global`` (the daily budget) and
    each usable client key with a daily budget, by its name (from the ledger's 24 hours)."""

    def read() -> Mapping[str, float | None]:
        left: dict[str, float | None] = {"global": client.budget_left()}
        if keys is None:
            return left
        now = time.time()
        limited = [
            k for k in keys.list() if k.max_credits_per_day is not None and k.usable(now)
        ]
        if limited:
            spent = {g.key: g.credits for g in client.usage_report("24h", "key").groups}
            for k in limited:
                assert k.max_credits_per_day is not None
                left[k.name] = k.max_credits_per_day - spent.get(k.name, 0.0)
        return left

    return read


def start_metrics(
    client: OctaveClient, host: str | None, port: int | None, keys: KeyBook | None = None
) -> tuple[Metrics | None, str | None]:
    """The metrics sink (None without the extra), and the URL of a separate scrape
    listener when ``port`` is given (``host`` defaults to loopback)."""
    if not metrics_available():
        if port is not None:
            raise ConfigurationError(
                "--metrics-port needs the metrics extra: pip install 'octave-tools[metrics]'."
            )
        return None, None
    metrics = Metrics(budgets_of(client, keys))
    _observe.add_sink(metrics)
    if port is None:
        return metrics, None
    from prometheus_client import start_http_server

    bind = host or "127.0.0.1"
    try:
        server, _ = start_http_server(port, addr=bind, registry=metrics.registry)
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot listen for metrics on {bind}:{port} ({exc.strerror or exc}); "
            "pick another --metrics-port."
        ) from None
    bound = server.server_address
    bound_host = bound[0].decode() if isinstance(bound[0], bytes) else str(bound[0])
    bound_port = bound[1]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    url = f"http://{shown}:{bound_port}{METRICS_PATH}"
    print(f"Prometheus metrics on {url} (no authentication).", file=sys.stderr, flush=True)
    return metrics, url


class TraceContext:
    """ASGI: a W3C ``traceparent`` (and ``tracestate``) on the incoming HTTP request
    becomes the current trace context, so the SDK's ``tools/call`` span continues the
    caller's trace. (A ``traceparent`` in the request's ``_meta`` wins: the SDK reads it.)
    Installed only when traces are on."""

    def __init__(self, app: ASGIApp) -> None:
        from opentelemetry import context, propagate

        self._app = app
        self._context = context
        self._propagate = propagate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate") and len(value) <= 512
        }
        if "traceparent" not in carrier:
            await self._app(scope, receive, send)
            return
        token = self._context.attach(self._propagate.extract(carrier))
        try:
            await self._app(scope, receive, send)
        finally:
            self._context.detach(token)


def start_tracing() -> Callable[[], None] | None:
    """Traces per ``OTEL_*`` (None when not asked for, or the extra is missing): returns
    the shutdown that flushes the last spans."""
    from ._tracing import configure, wanted

    if not wanted():
        return None
    provider = configure()
    return provider.shutdown if provider is not None else None


def install_log_format(log_format: str) -> None:
    """JSON lines on the root handlers when asked; a log line per tool call either way."""
    if log_format not in LOG_FORMATS:
        raise ConfigurationError(
            f"log format must be one of {', '.join(LOG_FORMATS)}; got {log_format!r}."
        )
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    _observe.add_sink(CallLog())
