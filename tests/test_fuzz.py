"""Property tests: whatever goes in or comes back, the result is a Speech or an OctaveError."""

from __future__ import annotations

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from octave_tools import OctaveClient, OctaveError, Speech
from octave_tools import _protocol as proto
from octave_tools._settings import Settings

SETTINGS = Settings.load(api_key="k-fuzz", environ={})
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["audio", "url", "meta", "usage", "credits_used", "usd_spent", "x"])
            | st.text(max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(max_size=300),
    voice=st.none() | st.text(max_size=40),
    fmt=st.none() | st.text(max_size=6),
)
def test_any_arguments_either_validate_or_raise_octave_error(
    text: str, voice: str | None, fmt: str | None
) -> None:
    try:
        call = proto.prepare(SETTINGS, text, voice, fmt)
    except OctaveError:
        return
    assert json.loads(call.body)["text"] == text  # the request carries the text exactly


@settings(max_examples=50, deadline=None)
@given(size=st.integers(min_value=499_990, max_value=500_010))
def test_the_length_limit_is_exact(size: int) -> None:
    try:
        proto.prepare(SETTINGS, "a" * size, None, None)
    except OctaveError:
        assert size > 500_000
    else:
        assert size <= 500_000


@settings(max_examples=400, deadline=None)
@given(status=st.sampled_from([200, 201, 202, 204]), body=json_values)
def test_any_json_body_gives_speech_or_octave_error(status: int, body: object) -> None:
    call = proto.prepare(SETTINGS, "hi", None, None)
    raw = proto.RawResponse(status, {}, json.dumps(body).encode())
    try:
        result = proto.interpret_success(call, raw, SETTINGS.base_url)
    except OctaveError:
        return
    assert isinstance(result, Speech)
    assert result.audio_url.startswith("https://")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.integers(min_value=100, max_value=599),
    body=st.binary(max_size=300),
    content_type=st.sampled_from(
        ["application/json", "text/html", "audio/wav", "", "application/octet-stream"]
    ),
    retry_after=st.none() | st.text(max_size=12),
)
def test_any_upstream_answer_gives_speech_or_octave_error(
    status: int, body: bytes, content_type: str, retry_after: str | None
) -> None:
    headers = {"content-type": content_type}
    if retry_after is not None and retry_after.isprintable() and retry_after.isascii():
        headers["retry-after"] = retry_after

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers)

    http = httpx.Client(transport=httpx.MockTransport(handler))
    client = OctaveClient(api_key="k-fuzz", engine="aimlapi", max_retries=0, http_client=http)
    try:
        result = client.synthesize("hi")
    except OctaveError as exc:
        assert "k-fuzz" not in str(exc)
    else:
        assert isinstance(result, Speech)
    finally:
        http.close()
