"""Traces: the HTTP server's spans reach a real OTLP/HTTP endpoint, checked span by span.

The receiver is in-process and decodes each export with the official opentelemetry-proto
messages, as a collector would.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from harness import MCP_HEADERS, api_env, http_server, rpc_result, tool_call
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from octave_tools.testing import FakeAIMLAPI

TOKEN = secrets.token_urlsafe(24)
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace endpoint on loopback: POST /v1/traces, protobuf bodies."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def wait_for(self, count: int, seconds: float = 15.0) -> list[dict[str, Any]]:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with self.lock:
                if len(self.spans) >= count:
                    return list(self.spans)
            time.sleep(0.05)
        raise AssertionError(f"expected {count} spans, got {self.spans}")


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        {
                            "name": span.name,
                            "scope": scope_spans.scope.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(),
                            "kind": span.kind,
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                            "events": [
                                (e.name, {a.key: _value(a.value) for a in e.attributes})
                                for e in span.events
                            ],
                            "status": span.status.code,
                            "resource": resource,
                            "raw": bytes(body),
                        }
                    )
        with self.server.lock:
            self.server.spans.extend(found)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def otel_env(api: FakeAIMLAPI, receiver: Receiver, **extra: str) -> dict[str, str]:
    return api_env(
        api,
        OCTAVE_TOOLS_SERVER_TOKEN=TOKEN,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_SERVICE_NAME="octave-tools-test",
        OTEL_BSP_SCHEDULE_DELAY="50",
        **extra,
    )


def call(url: str, arguments: dict[str, Any], headers: dict[str, str], meta: Any = None) -> Any:
    body = tool_call("")
    body["params"]["arguments"] = arguments
    if meta is not None:
        body["params"]["_meta"] = meta
    auth = {"Authorization": f"Bearer {TOKEN}"}
    return rpc_result(httpx.post(url, json=body, headers=MCP_HEADERS | auth | headers, timeout=30))


def by_name(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


def test_a_tool_call_is_one_span_with_an_upstream_child_in_the_callers_trace(
    fake_aimlapi: FakeAIMLAPI, receiver: Receiver
) -> None:
    text = "A sentence that must never be traced"
    fake_aimlapi.fail(503)  # one retry, as an event
    env = otel_env(
        fake_aimlapi, receiver, OCTAVE_TOOLS_MAX_RETRIES="1", OCTAVE_TOOLS_MAX_CREDITS="1e6"
    )
    with http_server(env) as (url, _):
        result = call(url, {"text": text}, {"traceparent": TRACEPARENT})
        spans = receiver.wait_for(5)
    assert result["isError"] is False
    (tool,) = by_name(spans, "tools/call text_to_speech")
    upstream = by_name(spans, "text_to_speech hume/octave-2")
    assert len(upstream) == 2
    assert tool["trace_id"] == CALLER_TRACE
    assert tool["parent_id"] == CALLER_SPAN
    assert {s["trace_id"] for s in spans} == {CALLER_TRACE}
    assert tool["attributes"]["mcp.method.name"] == "tools/call"
    assert tool["attributes"]["gen_ai.tool.name"] == "text_to_speech"
    assert tool["attributes"]["gen_ai.operation.name"] == "execute_tool"
    assert tool["attributes"]["gen_ai.request.model"] == "hume/octave-2"
    assert tool["attributes"]["gen_ai.provider.name"] == "aimlapi"
    assert tool["attributes"]["octave_tools.outcome"] == "ok"
    assert tool["attributes"]["octave_tools.characters"] == len(text)
    assert tool["attributes"]["gen_ai.response.id"] == result["structuredContent"]["request_id"]
    assert tool["events"] == [("retry", {"gen_ai.request.model": "hume/octave-2", "reason": "503"})]
    assert tool["resource"]["service.name"] == "octave-tools-test"
    for span in upstream:
        assert span["parent_id"] == tool["span_id"]
        assert span["kind"] == 3  # SPAN_KIND_CLIENT
        assert span["attributes"]["gen_ai.operation.name"] == "text_to_speech"
        assert span["attributes"]["gen_ai.request.model"] == "hume/octave-2"
        assert span["attributes"]["gen_ai.provider.name"] == "aimlapi"
    statuses = sorted(s["attributes"]["http.response.status_code"] for s in upstream)
    assert statuses == [201, 503]
    store_ops = [s for s in spans if s["name"].startswith("store ")]
    assert sorted(s["name"] for s in store_ops) == ["store budget.reserve", "store ledger.settle"]
    assert {s["parent_id"] for s in store_ops} == {tool["span_id"]}
    raw = b"".join(s["raw"] for s in spans)
    assert text.encode() not in raw
    assert fake_aimlapi.api_key.encode() not in raw
    assert result["structuredContent"]["audio_url"].encode() not in raw


def test_a_traceparent_in_meta_continues_the_callers_trace(
    fake_aimlapi: FakeAIMLAPI, receiver: Receiver
) -> None:
    with http_server(otel_env(fake_aimlapi, receiver)) as (url, _):
        call(url, {"text": "Hi"}, {}, meta={"traceparent": TRACEPARENT})
        spans = receiver.wait_for(2)
    (tool,) = by_name(spans, "tools/call text_to_speech")
    assert (tool["trace_id"], tool["parent_id"]) == (CALLER_TRACE, CALLER_SPAN)


def test_a_failed_call_marks_its_span(fake_aimlapi: FakeAIMLAPI, receiver: Receiver) -> None:
    with http_server(otel_env(fake_aimlapi, receiver)) as (url, _):
        result = call(url, {"text": "Hi", "voice": "Ava Sung"}, {})
        spans = receiver.wait_for(1)
    assert result["isError"] is True
    (tool,) = by_name(spans, "tools/call text_to_speech")
    assert tool["attributes"]["error.type"] in ("tool_error", "invalid_input")
    assert tool["attributes"]["octave_tools.outcome"] == "invalid_input"
    assert by_name(spans, "text_to_speech hume/octave-2") == []
