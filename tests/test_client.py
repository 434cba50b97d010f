"""OctaveClient and AsyncOctaveClient against the fake AIML API: same behaviour, both ways."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import Synth

from octave_tools import (
    APIConnectionError,
    APITimeoutError,
    AsyncOctaveClient,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    InvalidInputError,
    NotFoundError,
    OctaveClient,
    OctaveError,
    RateLimitError,
    ServerError,
    UnexpectedResponseError,
)
from octave_tools._protocol import MAX_JSON_BYTES
from octave_tools.testing import FakeAIMLAPI, Fault


def test_synthesize_returns_the_url_the_api_issued(synth: Synth, fake_aimlapi: FakeAIMLAPI) -> None:
    speech = synth("Hello there.", voice="ava song", format="mp3")
    assert fake_aimlapi.issued == {speech.audio_url: "Hello there."}
    assert speech.audio_url.endswith(".mp3")
    assert (speech.voice, speech.format, speech.model, speech.characters) == (
        "Ava Song",
        "mp3",
        "hume/octave-2",
        12,
    )
    assert speech.credits_used == 12 * 125
    assert speech.engine == "aimlapi"
    [req] = fake_aimlapi.tts_requests
    # The fake names each answer with a fresh UUID in x-inference-id; the speech carries it.
    assert uuid.UUID(str(speech.request_id)).version == 4
    assert req.json == {
        "model": "hume/octave-2",
        "text": "Hello there.",
        "voice": "Ava Song",
        "format": "mp3",
    }
    assert req.headers["authorization"] == "Bearer test-key"
    assert req.headers["x-client-request-id"].startswith("octave-tools-")


def test_newer_200_string_shape_is_accepted(synth: Synth) -> None:
    with FakeAIMLAPI(success_status=200, response_shape="string") as api:
        speech = synth(client={"api_key": api.api_key, "base_url": api.base_url})
        assert speech.audio_url in api.issued


def test_defaults_come_from_the_environment(
    synth: Synth, fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_VOICE", "french chef")
    monkeypatch.setenv("OCTAVE_TOOLS_FORMAT", "mp3")
    speech = synth("Bonjour")
    assert (speech.voice, speech.format) == ("French Chef", "mp3")
    assert fake_aimlapi.tts_requests[0].json["voice"] == "French Chef"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"text": ""}, "text"),
        ({"text": "x" * 500_001}, "text"),
        ({"text": "hi", "voice": "Ava Sung"}, "voice"),
        ({"text": "hi", "format": "flac"}, "format"),
    ],
)
def test_invalid_input_sends_nothing(
    synth: Synth, fake_aimlapi: FakeAIMLAPI, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        synth(**kwargs)
    assert info.value.field == field
    assert fake_aimlapi.requests == []


def test_missing_key_is_a_configuration_error_and_sends_nothing(
    synth: Synth, fake_aimlapi: FakeAIMLAPI
) -> None:
    with pytest.raises(ConfigurationError, match="No AIML API key. Set AIMLAPI_API_KEY"):
        synth(client={"api_key": None})
    assert fake_aimlapi.requests == []


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried_then_succeed(
    synth: Synth, fake_aimlapi: FakeAIMLAPI, status: int
) -> None:
    fake_aimlapi.fail(status, times=2, retry_after="0")
    speech = synth()
    assert len(fake_aimlapi.tts_requests) == 3
    assert speech.audio_url in fake_aimlapi.issued
    ids = {r.headers["x-client-request-id"] for r in fake_aimlapi.tts_requests}
    assert len(ids) == 1  # one logical call: the provider's log can match every attempt


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (422, BadRequestError),
    ],
)
def test_permanent_statuses_are_never_retried(
    synth: Synth, fake_aimlapi: FakeAIMLAPI, status: int, kind: type[OctaveError]
) -> None:
    fake_aimlapi.fail(status, times=3)
    with pytest.raises(kind) as info:
        synth()
    assert info.value.status_code == status  # type: ignore[attr-defined]
    assert len(fake_aimlapi.tts_requests) == 1


def test_retries_stop_after_max_retries(synth: Synth, fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.fail(503, times=5, retry_after="0")
    with pytest.raises(ServerError, match=r"The API failed \(503: Error 503\)"):
        synth(client={"max_retries": 1})
    assert len(fake_aimlapi.tts_requests) == 2


def test_retry_after_is_waited_out(synth: Synth, fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.fail(429, retry_after="0.3")
    synth()
    first, second = fake_aimlapi.tts_requests
    assert second.received_at - first.received_at >= 0.3


def test_retry_after_far_in_the_future_is_reported_not_waited(
    synth: Synth, fake_aimlapi: FakeAIMLAPI
) -> None:
    fake_aimlapi.fail(429, retry_after="3600")
    with pytest.raises(RateLimitError) as info:
        synth()
    assert info.value.retry_after == 3600
    assert "Retry after 3600 s." in str(info.value)
    assert len(fake_aimlapi.tts_requests) == 1


def test_dropped_connection_is_retried(synth: Synth, fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.drop()
    speech = synth()
    assert len(fake_aimlapi.tts_requests) == 2
    assert speech.audio_url in fake_aimlapi.issued


def test_connection_refused_becomes_a_connection_error(synth: Synth) -> None:
    with FakeAIMLAPI() as api:
        base = api.base_url
    with pytest.raises(APIConnectionError, match="Could not reach the API at 127.0.0.1") as info:
        synth(client={"base_url": base, "max_retries": 1})
    assert "after 2 attempts" in str(info.value)


def test_total_timeout_is_enforced(synth: Synth, fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.delay(5)
    started = time.monotonic()
    with pytest.raises(APITimeoutError) as info:
        synth(client={"timeout": 0.5})
    assert info.value.timeout == 0.5
    assert "within its 0.5 s limit" in str(info.value)
    assert time.monotonic() - started < 4  # generous: it must not wait for the slow answer


@pytest.mark.parametrize(
    ("inject", "fragment"),
    [
        (lambda api: api.malformed(), "answered 201 with a body that is not JSON"),
        (lambda api: api.no_url(), "answered 201 with no audio URL"),
        (
            lambda api: api.respond(200, {"audio": {"url": "javascript:alert(1)"}}),
            "not https (javascript:)",
        ),
        (lambda api: api.respond(201, b""), "a body that is not JSON"),
    ],
)
def test_unusable_success_bodies_are_typed_errors(
    synth: Synth, fake_aimlapi: FakeAIMLAPI, inject: Callable[[FakeAIMLAPI], object], fragment: str
) -> None:
    inject(fake_aimlapi)
    with pytest.raises(
        UnexpectedResponseError, match=fragment.replace("(", r"\(").replace(")", r"\)")
    ):
        synth()
    assert len(fake_aimlapi.tts_requests) == 1


def test_html_from_a_proxy_is_a_server_error_after_retries(
    synth: Synth, fake_aimlapi: FakeAIMLAPI
) -> None:
    fake_aimlapi.html(502, times=3)
    with pytest.raises(ServerError, match=r"\(502: 502 Bad Gateway nginx\)"):
        synth(client={"max_retries": 2})


def test_oversized_response_is_not_read(synth: Synth, fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.respond(201, b'{"pad": "' + b"x" * (MAX_JSON_BYTES + 10) + b'"}')
    with pytest.raises(UnexpectedResponseError, match="larger than 1,048,576 bytes"):
        synth()


def test_raw_audio_answer_is_saved_and_returned_as_a_file_url(
    synth: Synth, fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    fake_aimlapi.respond(
        200, b"RIFFfakeWAVE", content_type="audio/wav", headers={"x-inference-id": "i-7"}
    )
    speech = synth(client={"output_dir": str(tmp_path / "out")})
    assert speech.audio_url.startswith("file://")
    [saved] = (tmp_path / "out").iterdir()
    assert saved.read_bytes() == b"RIFFfakeWAVE"
    assert speech.audio_url == saved.as_uri()
    assert speech.request_id == "i-7"


def test_gzip_bodies_are_decoded(synth: Synth, fake_aimlapi: FakeAIMLAPI) -> None:
    import gzip

    body = gzip.compress(json.dumps({"audio": {"url": "https://cdn.example/a.wav"}}).encode())
    fake_aimlapi.respond(201, body, headers={"Content-Encoding": "gzip"})
    assert synth().audio_url == "https://cdn.example/a.wav"


def test_injected_sync_client_is_used_and_left_open() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"audio": {"url": "https://cdn.example/x.wav"}})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with OctaveClient(api_key="k", engine="aimlapi", http_client=http) as client:
        assert client.synthesize("hi").audio_url == "https://cdn.example/x.wav"
    assert seen[0].url == "https://api.aimlapi.com/v1/tts"
    assert not http.is_closed
    http.close()


async def test_injected_async_client_is_used_and_left_open() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"audio": "https://cdn.example/y.wav"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with AsyncOctaveClient(api_key="k", engine="aimlapi", http_client=http) as client:
        assert (await client.synthesize("hi")).audio_url == "https://cdn.example/y.wav"
    assert not http.is_closed
    await http.aclose()


def test_owned_clients_close_their_connections(fake_aimlapi: FakeAIMLAPI) -> None:
    client = OctaveClient(api_key="k", base_url=fake_aimlapi.base_url, engine="aimlapi")
    assert client._http is None  # nothing is built until the first call
    client.close()
    with OctaveClient(
        api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url, engine="aimlapi"
    ) as used:
        used.synthesize("hi")
        http = used._http
    assert http is not None and http.is_closed


async def test_async_calls_run_concurrently(fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.inject(Fault("ok", delay=0.3), times=20)
    async with AsyncOctaveClient(
        api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url, engine="aimlapi"
    ) as client:
        started = time.monotonic()
        results = await asyncio.gather(*(client.synthesize(f"line {i}") for i in range(20)))
        elapsed = time.monotonic() - started
    assert [fake_aimlapi.issued[s.audio_url] for s in results] == [f"line {i}" for i in range(20)]
    assert elapsed < 0.3 * 20 / 2  # far below serial time, without tying to machine speed


async def test_cancelling_a_call_leaves_no_open_connection(fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.delay(5)
    async with AsyncOctaveClient(
        api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url, engine="aimlapi"
    ) as client:
        task = asyncio.create_task(client.synthesize("never"))
        await asyncio.sleep(0.2)
        pool = client._http._transport._pool  # type: ignore[attr-defined]
        assert len(pool.connections) == 1  # the call is in flight
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.connections == []
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


def test_the_key_never_appears_in_errors_or_reprs(fake_aimlapi: FakeAIMLAPI) -> None:
    key = "sk-planted-d41d8cd98f00b204"
    fake_aimlapi.fail(401, message=f"Invalid key {key}")
    client = OctaveClient(api_key=key, base_url=fake_aimlapi.base_url, engine="aimlapi")
    texts = [repr(client), str(client), repr(client.settings)]
    with pytest.raises(AuthenticationError) as info:
        client.synthesize("hi")
    err: BaseException | None = info.value
    while err is not None:  # the whole chain, as a traceback would print it
        texts += [str(err), repr(err), *map(str, vars(err).values())]
        err = err.__cause__ or err.__context__
    fake_aimlapi.drop(times=3)
    with pytest.raises(APIConnectionError) as info2:
        client.synthesize("hi")
    texts += [str(info2.value), repr(info2.value)]
    assert info2.value.__cause__ is None and info2.value.__suppress_context__
    client.close()
    assert all(key not in t for t in texts)


async def test_upstream_connections_are_bounded(fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.inject(Fault("ok", delay=0.05), times=300)
    async with AsyncOctaveClient(
        api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url, engine="aimlapi"
    ) as client:
        results = await asyncio.gather(*(client.synthesize(f"n{i}") for i in range(300)))
    assert len(results) == 300
    assert 1 < fake_aimlapi.max_open_connections <= 64  # the client's pool limit


def test_sequential_calls_reuse_one_connection(synth: Synth, fake_aimlapi: FakeAIMLAPI) -> None:
    with OctaveClient(
        api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url, engine="aimlapi"
    ) as client:
        for i in range(5):
            client.synthesize(f"call {i}")
    assert len({r.peer for r in fake_aimlapi.tts_requests}) == 1
