"""The fake AIML API behaves like the documented endpoint."""

from __future__ import annotations

import httpx
import pytest

from octave_tools.testing import FakeAIMLAPI


def post(api: FakeAIMLAPI, body: object, key: str | None = "test-key") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(api.base_url + "/tts", json=body, headers=headers)


def test_success_is_201_with_a_url_it_serves(fake_aimlapi: FakeAIMLAPI) -> None:
    r = post(fake_aimlapi, {"model": "hume/octave-2", "text": "Hi", "voice": "Ava Song"})
    assert r.status_code == 201
    url = r.json()["audio"]["url"]
    assert r.json()["meta"]["usage"]["credits_used"] == 250
    assert r.headers["x-aimlapi-credits-used"] == "250"
    assert fake_aimlapi.issued == {url: "Hi"}
    audio = httpx.get(url)
    assert audio.status_code == 200
    assert audio.content.startswith(b"RIFF")


@pytest.mark.parametrize(
    ("body", "key", "status", "fragment"),
    [
        ({"model": "hume/octave-2", "text": "Hi"}, None, 401, "A valid API key is required"),
        ({"model": "hume/octave-2", "text": "Hi"}, "wrong", 401, "A valid API key is required"),
        ({"model": "hume/octave-2", "text": ""}, "test-key", 400, "Body validation error!"),
        (
            {"model": "hume/octave-2", "text": "Hi", "voice": "Deborah"},
            "test-key",
            400,
            "voice must be",
        ),
        (
            {"model": "hume/octave-2", "text": "Hi", "format": "ogg"},
            "test-key",
            400,
            "format must be",
        ),
        (
            {"model": "acme/tts-9", "text": "Hi"},
            "test-key",
            404,
            "Model acme/tts-9 not found",
        ),
        ({"text": "Hi"}, "test-key", 400, "model is required"),
    ],
)
def test_documented_errors(
    fake_aimlapi: FakeAIMLAPI, body: object, key: str | None, status: int, fragment: str
) -> None:
    r = post(fake_aimlapi, body, key)
    assert r.status_code == status
    assert fragment in r.json()["message"]
    assert r.json()["statusCode"] == status
    assert fake_aimlapi.issued == {}


def test_faults_apply_in_order_then_normal_service_resumes(fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.fail(429, retry_after="7").html(502)
    body = {"model": "hume/octave-2", "text": "Hi"}
    first, second, third = (post(fake_aimlapi, body) for _ in range(3))
    assert (first.status_code, first.headers["retry-after"]) == (429, "7")
    assert (second.status_code, second.headers["content-type"]) == (502, "text/html")
    assert third.status_code == 201
    assert len(fake_aimlapi.tts_requests) == 3


def test_dropped_connection_gives_no_response(fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.drop()
    with pytest.raises(httpx.RemoteProtocolError):
        post(fake_aimlapi, {"model": "hume/octave-2", "text": "Hi"})


def test_stop_frees_the_port_and_ends_delays() -> None:
    api = FakeAIMLAPI().start()
    base = api.base_url
    api.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.post(base + "/tts", json={})
