"""What an operator of the HTTP server sees: /metrics, /readyz and JSON logs."""

from __future__ import annotations

import json
import re
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from harness import MCP_HEADERS, api_env, http_server, rpc_result, tool_call
from prometheus_client.parser import text_string_to_metric_families

from octave_tools.testing import FakeAIMLAPI

TOKEN = secrets.token_urlsafe(24)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def call(url: str, arguments: dict[str, Any], request_id: int = 2) -> dict[str, Any]:
    body = tool_call("", request_id)
    body["params"]["arguments"] = arguments
    return rpc_result(httpx.post(url, json=body, headers=MCP_HEADERS | AUTH, timeout=30))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(fake_aimlapi: FakeAIMLAPI) -> Iterator[tuple[str, Any]]:
    env = api_env(
        fake_aimlapi,
        OCTAVE_TOOLS_SERVER_TOKEN=TOKEN,
        OCTAVE_TOOLS_MAX_CREDITS="100000",
        OCTAVE_TOOLS_CACHE_TTL="600",
        OCTAVE_TOOLS_MAX_RETRIES="1",
    )
    with http_server(env, "--log-format", "json", "--log-level", "INFO") as (url, server):
        yield url, server


def test_metrics_count_calls_credits_characters_latency_retries_and_cache_hits(
    served: tuple[str, Any], fake_aimlapi: FakeAIMLAPI
) -> None:
    url, _ = served
    base = url.removesuffix("/mcp")
    fake_aimlapi.fail(503)  # retried once, then answered
    first = call(url, {"text": "Hello there"})
    assert first["isError"] is False
    call(url, {"text": "Hello there"})  # the same call again: a cache hit, no charge
    refused = call(url, {"text": "Hi", "voice": "Ava Sung"})
    assert refused["isError"] is True

    response = httpx.get(base + "/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    found = samples(response.text)
    model, tool = "hume/octave-2", "text_to_speech"
    billed = 11 * 125  # what the fake billed for "Hello there"
    labels = {"tool": tool, "model": model, "engine": "aimlapi", "key": "operator"}
    assert value(found, "octave_tools_calls_total", **labels, outcome="ok") == 1
    assert value(found, "octave_tools_calls_total", **labels, outcome="cached") == 1
    assert (
        value(
            found,
            "octave_tools_calls_total",
            tool=tool,
            model="none",
            engine="none",
            key="operator",
            outcome="invalid_input",
        )
        == 1
    )
    assert value(found, "octave_tools_credits_total", model=model, key="operator") == billed
    assert value(found, "octave_tools_characters_total", model=model, key="operator") == 22
    assert value(found, "octave_tools_retries_total", model=model, reason="503") == 1
    assert value(found, "octave_tools_cache_hits_total", model=model) == 1
    upstream = "octave_tools_upstream_request_duration_seconds_count"
    assert value(found, upstream, model=model, status="503") == 1
    assert value(found, upstream, model=model, status="201") == 1
    assert value(found, "octave_tools_call_duration_seconds_count", tool=tool, model=model) == 2
    assert value(found, "octave_tools_calls_in_flight", tool=tool) == 0
    assert value(found, "octave_tools_budget_remaining_credits", budget="global") == (
        100_000 - billed
    )
    assert len(fake_aimlapi.tts_requests) == 2


def test_metrics_need_the_server_token(served: tuple[str, Any]) -> None:
    url, _ = served
    base = url.removesuffix("/mcp")
    assert httpx.get(base + "/metrics").status_code == 401
    rebound = httpx.get(base + "/metrics", headers={**AUTH, "Host": "evil.example"})
    assert rebound.status_code == 421  # DNS rebinding: the token does not bypass it
    assert httpx.get(base + "/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_a_separate_metrics_listener_serves_the_same_registry_without_auth(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    env = api_env(fake_aimlapi, OCTAVE_TOOLS_SERVER_TOKEN=TOKEN)
    with http_server(env, "--metrics-port", "0") as (url, server):
        scrape = server.wait_for_stderr(r"Prometheus metrics on (http://\S+/metrics)").group(1)
        call(url, {"text": "Hi"})
        found = samples(httpx.get(scrape).text)
    assert scrape.startswith("http://127.0.0.1:")
    assert (
        value(
            found,
            "octave_tools_calls_total",
            tool="text_to_speech",
            model="hume/octave-2",
            engine="aimlapi",
            key="operator",
            outcome="ok",
        )
        == 1
    )


def test_json_logs_have_one_line_per_call_and_never_the_text_key_or_url(
    served: tuple[str, Any], fake_aimlapi: FakeAIMLAPI
) -> None:
    url, server = served
    text = "A sentence nobody else would write"
    result = call(url, {"text": text})
    audio_url = result["structuredContent"]["audio_url"]
    line = server.wait_for_stderr(r'\{[^\n]*"logger": "octave_tools.calls"[^\n]*\}').group(0)
    record = json.loads(line)
    latency = record.pop("latency_ms")
    assert isinstance(latency, float) and latency > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record.pop("time"))
    assert record == {
        "level": "INFO",
        "logger": "octave_tools.calls",
        "event": record["event"],
        "tool": "text_to_speech",
        "request_id": result["structuredContent"]["request_id"],
        "key": "operator",
        "model": "hume/octave-2",
        "engine": "aimlapi",
        "outcome": "ok",
        "credits": len(text) * 125.0,
        "characters": len(text),
    }
    assert record["event"].startswith("text_to_speech ok hume/octave-2 in ")
    for logged in server.stderr_lines[1:]:  # after the start banner, every line is JSON
        parsed = json.loads(logged)
        assert {"time", "level", "logger", "event"} <= set(parsed)
    assert text not in server.stderr
    assert fake_aimlapi.api_key not in server.stderr
    assert audio_url not in server.stderr


def test_readyz_is_ok_when_the_store_answers(served: tuple[str, Any]) -> None:
    url, _ = served
    response = httpx.get(url.removesuffix("/mcp") + "/readyz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert response.headers["cache-control"] == "no-store"


def test_readyz_names_the_store_when_postgresql_is_down(fake_aimlapi: FakeAIMLAPI) -> None:
    dead = f"postgresql://nobody:s3cret-pass@127.0.0.1:{free_port()}/db?connect_timeout=1"
    env = api_env(fake_aimlapi, OCTAVE_TOOLS_SERVER_TOKEN=TOKEN, OCTAVE_TOOLS_STORE_URL=dead)
    with http_server(env) as (url, server):
        response = httpx.get(url.removesuffix("/mcp") + "/readyz", timeout=30)
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable", "failed": ["store"]}
        server.wait_for_stderr(r"/readyz: the store fails")
    assert "s3cret-pass" not in server.stderr


def test_readyz_names_the_cache_when_redis_is_down(fake_aimlapi: FakeAIMLAPI) -> None:
    env = api_env(
        fake_aimlapi,
        OCTAVE_TOOLS_SERVER_TOKEN=TOKEN,
        OCTAVE_TOOLS_CACHE_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    with http_server(env) as (url, _):
        response = httpx.get(url.removesuffix("/mcp") + "/readyz", timeout=30)
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "failed": ["cache"]}


def test_a_bad_log_format_is_a_usage_error(fake_aimlapi: FakeAIMLAPI) -> None:
    from harness import cli_process, subprocess_env

    done = cli_process(
        "serve", "--transport", "http", "--log-format", "xml", env=subprocess_env(fake_aimlapi)
    )
    assert done.returncode == 2
    assert b"--log-format: invalid choice: 'xml'" in done.stderr
