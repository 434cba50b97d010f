"""OpenTelemetry traces, configured only by the standard ``OTEL_*`` environment variables.

The MCP SDK already opens one span per ``tools/call`` (MCP semantic conventions, and a
``traceparent`` in the request's ``_meta`` continues the caller's trace). This sink adds
to it: the GenAI attributes of the call, a child span per upstream request (and so per
part of a long call), a span per store operation, retries, cache hits and coalesced
calls as events. Never the text, the key or an audio URL: lengths, ids and figures only.

Off unless an OTLP endpoint or exporter is named in the environment and the ``otel``
extra is installed; then nothing here is imported and the hot path pays nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .observe import CallRecord, Sink

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

__all__ = ["PROVIDER", "Tracing", "configure", "wanted"]

logger = logging.getLogger("octave_tools.mcp")
PROVIDER = "aimlapi"
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces (an OTLP endpoint, or an exporter)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter) or any(env.get(name, "").strip() for name in _ENDPOINT_VARS)


def configure() -> TracerProvider | None:
    """Install an OTLP/HTTP tracer provider from ``OTEL_*`` and a Tracing sink; None (and
    one warning) when the ``otel`` extra is missing."""
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logger.warning(
            "octave-tools: OTEL_* asks for traces, but the otel extra is missing: "
            "pip install 'octave-tools[otel]'. Serving without traces."
        )
        return None
    from . import __version__
    from .observe import add_sink

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the exporter
    # reads the endpoint, headers and timeout; the batch processor its OTEL_BSP_* delays.
    attributes = {"service.version": __version__}
    named = os.environ.get("OTEL_SERVICE_NAME", "").strip() or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    if not named:
        attributes["service.name"] = "octave-tools"
    resource = Resource.create(attributes)
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    add_sink(Tracing(provider.get_tracer("octave_tools", __version__)))
    return provider


class Tracing(Sink):
    """An ``observe`` sink that turns events into spans and span events."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._tracer = tracer
        self._trace = trace
        self._client = SpanKind.CLIENT
        self._internal = SpanKind.INTERNAL
        self._status, self._error = Status, StatusCode.ERROR

    def _current(self) -> Any:
        return self._trace.get_current_span()

    def call_started(self, record: CallRecord) -> None:
        self._current().set_attributes(
            {"gen_ai.provider.name": PROVIDER, "octave_tools.key": record.key}
        )

    def call_finished(self, record: CallRecord) -> None:
        attributes: dict[str, Any] = {
            "octave_tools.outcome": record.outcome,
            "octave_tools.characters": record.characters,
            "octave_tools.credits": record.credits,
        }
        if record.model:
            attributes["gen_ai.request.model"] = record.model
        if record.request_id:
            attributes["gen_ai.response.id"] = record.request_id
        if record.parts:
            attributes["octave_tools.parts"] = record.parts
        span = self._current()
        span.set_attributes(attributes)
        if record.outcome not in ("ok", "cached"):
            span.set_attribute("error.type", record.outcome)

    def _after(self, name: str, seconds: float, kind: Any, attributes: dict[str, Any]) -> Any:
        """A span for something that just ended, ``seconds`` long, under the current one."""
        end = time.time_ns()
        span = self._tracer.start_span(
            name, kind=kind, attributes=attributes, start_time=end - int(seconds * 1e9)
        )
        return span, end

    def upstream(self, model: str, status: int | None, seconds: float) -> None:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "text_to_speech",
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": model,
            "http.request.method": "POST",
        }
        if status is not None:
            attributes["http.response.status_code"] = status
        else:
            attributes["error.type"] = "transport"
        span, end = self._after(f"text_to_speech {model}", seconds, self._client, attributes)
        if status is None or status >= 400:
            span.set_status(self._status(self._error))
            if status is not None:
                span.set_attribute("error.type", str(status))
        span.end(end_time=end)

    def store(self, operation: str, seconds: float, ok: bool) -> None:
        span, end = self._after(
            f"store {operation}",
            seconds,
            self._internal,
            {"octave_tools.store.operation": operation},
        )
        if not ok:
            span.set_status(self._status(self._error))
        span.end(end_time=end)

    def retry(self, model: str, reason: str) -> None:
        self._current().add_event("retry", {"gen_ai.request.model": model, "reason": reason})

    def cache_hit(self, model: str) -> None:
        self._current().add_event("cache_hit", {"gen_ai.request.model": model})

    def coalesced(self, model: str) -> None:
        self._current().add_event("coalesced", {"gen_ai.request.model": model})

    def store_error(self, operation: str) -> None:
        self._current().add_event("store_error", {"octave_tools.store.operation": operation})
