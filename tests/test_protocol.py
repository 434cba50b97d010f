"""The pure decisions: requests, parsing, errors and retry policy, with no server."""

from __future__ import annotations

import json
from email.utils import formatdate

import httpx
import pytest
from pydantic import ValidationError

from octave_tools import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    InvalidInputError,
    NotFoundError,
    RateLimitError,
    ServerError,
    UnexpectedResponseError,
)
from octave_tools import _protocol as proto
from octave_tools._settings import Settings
from octave_tools.models import Speech

KEY = "sk-unit-9b1c0d"
BASE = "https://api.aimlapi.com/v1"


def call(**kw: object) -> proto.Call:
    settings = Settings.load(api_key=KEY, environ={})
    return proto.prepare(settings, kw.get("text", "Hello there."), kw.get("voice"), kw.get("fmt"))  # type: ignore[arg-type]


def raw(status: int, body: object = b"", **headers: str) -> proto.RawResponse:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return proto.RawResponse(status, {k.lower(): v for k, v in headers.items()}, data)


# ------------------------------------------------------------ requests


def test_prepare_builds_the_documented_request() -> None:
    c = call(text="Hello there.", voice="relaxing asmr woman")
    assert c.url == "https://api.aimlapi.com/v1/tts"
    assert json.loads(c.body) == {
        "model": "hume/octave-2",
        "text": "Hello there.",
        "voice": "Relaxing ASMR Woman",
        "format": "wav",
    }
    assert c.headers["Authorization"] == f"Bearer {KEY}"
    assert c.headers["Content-Type"] == "application/json"
    assert c.headers["X-Client-Request-Id"] == c.client_request_id
    assert 1 <= len(c.client_request_id) <= 128
    assert KEY not in repr(c)


def test_request_body_keeps_the_text_exactly() -> None:
    text = 'Quotes " and \\ slashes, emoji 🎙️, NUL \x00 and newlines\n\tend'
    assert json.loads(call(text=text).body)["text"] == text


def test_each_settings_gets_its_own_body_for_the_same_arguments() -> None:
    ava = Settings.load(api_key=KEY, environ={}, voice="ava song", format="mp3")
    vince = Settings.load(api_key=KEY, environ={}, voice="Vince Douglas")
    bodies = [json.loads(proto.prepare(s, "Hi.", None, None).body) for s in (ava, vince, ava)]

    assert [(b["voice"], b["format"]) for b in bodies] == [
        ("Ava Song", "mp3"),
        ("Vince Douglas", "wav"),
        ("Ava Song", "mp3"),
    ]


@pytest.mark.parametrize(
    ("model", "voice", "fmt", "speed"),
    [
        (None, None, None, None),
        ("openai/tts-1", "NOVA", "flac", 1.5),
        ("openai/tts-1", None, None, 2),
        ("minimax/speech-2.6-hd", "Wise_Woman", "mp3", None),
        ("acme/tts-9", "Bob", "OGG", None),
        # A voice that holds the mark the body is cut at: built whole, never cut wrongly.
        ("acme/tts-9", "\x00octave-tools-text\x00", None, None),
    ],
)
def test_repeated_arguments_give_the_body_built_from_scratch(
    model: str | None, voice: str | None, fmt: str | None, speed: float | None
) -> None:
    settings = Settings.load(api_key=KEY, environ={})
    texts = ["First.", 'Quotes " \\ and 🎙️ and \x00', "\x00octave-tools-text\x00", "Last."]
    calls = [proto.prepare(settings, t, voice, fmt, model=model, speed=speed) for t in texts]
    proto._TEMPLATES.clear()
    fresh = [proto.prepare(settings, t, voice, fmt, model=model, speed=speed) for t in texts]

    assert [c.body for c in calls] == [c.body for c in fresh]
    assert [json.loads(c.body)["text"] for c in calls] == texts
    assert len({c.client_request_id for c in calls}) == len(texts)
    first = json.loads(calls[0].body)
    assert first.get("voice", first.get("voice_setting", {}).get("voice_id")) == (calls[0].voice)
    with pytest.raises(InvalidInputError, match="text is empty"):
        proto.prepare(settings, " ", voice, fmt, model=model, speed=speed)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "text is empty"),
        (" \n\t ", "text is empty"),
        ("x" * 500_001, "text is 500,001 characters; the limit is 500,000"),
        ("bad \ud800 surrogate", "text holds invalid Unicode at character 4"),
        (42, "text must be a string, not int"),
    ],
)
def test_invalid_text_is_refused_before_the_key_is_even_needed(text: object, message: str) -> None:
    settings = Settings.load(environ={})  # no key: validation comes first
    with pytest.raises(InvalidInputError, match=message) as info:
        proto.prepare(settings, text, None, None)
    assert info.value.field == "text"


def test_text_at_the_limit_is_accepted() -> None:
    assert call(text="x" * 500_000).text_chars == 500_000


# ------------------------------------------------------------ success shapes


def test_object_shape_with_usage() -> None:
    body = {
        "audio": {"url": "https://cdn.aimlapi.com/generations/a/1-u.wav"},
        "meta": {"usage": {"credits_used": 12222}},
    }
    speech = proto.interpret_success(call(), raw(201, body, **{"x-inference-id": "inf-1"}), BASE)
    assert not isinstance(speech, proto.AudioPayload)
    assert speech.model_dump() == {
        "audio_url": "https://cdn.aimlapi.com/generations/a/1-u.wav",
        "format": "wav",
        "voice": "Vince Douglas",
        "model": "hume/octave-2",
        "characters": 12,
        "credits_used": 12222,
        "usd_spent": None,
        "request_id": "inf-1",
        "engine": "aimlapi",
        "cached": False,
    }


def test_string_shape_with_null_meta_reads_usage_from_headers() -> None:
    body = {"audio": "https://cdn.example/x.wav", "meta": None}
    headers = {"x-aimlapi-credits-used": "1500", "x-aimlapi-usd-spent": "0.00075"}
    speech = proto.interpret_success(call(), raw(200, body, **headers), BASE)
    assert not isinstance(speech, proto.AudioPayload)
    assert speech.audio_url == "https://cdn.example/x.wav"
    assert speech.credits_used == 1500
    assert speech.usd_spent == 0.00075
    assert speech.request_id is None


def test_extra_fields_and_string_numbers_are_tolerated() -> None:
    body = {
        "audio": {"url": "https://cdn.example/x.wav", "duration": 1.8},
        "meta": {"usage": {"credits_used": "12.5", "usd_spent": 1e-5}, "extra": [1]},
        "metadata": {"request_id": "meta-id"},
    }
    speech = proto.interpret_success(call(), raw(200, body), BASE)
    assert not isinstance(speech, proto.AudioPayload)
    assert (speech.credits_used, speech.usd_spent, speech.request_id) == (12.5, 1e-5, "meta-id")


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ({"meta": {"usage": {"credits_used": 5}}}, "no audio URL"),
        ({"audio": {"url": ""}}, "no audio URL"),
        ({"audio": None}, "no audio URL"),
        ([1, 2], "no audio URL"),
        (b"<html>oops</html>", "a body that is not JSON"),
        (b"", "a body that is not JSON"),
    ],
)
def test_2xx_without_a_usable_url_is_unexpected(body: object, what: str) -> None:
    with pytest.raises(UnexpectedResponseError, match=f"answered 201 with {what}"):
        proto.interpret_success(call(), raw(201, body), BASE)


@pytest.mark.parametrize(
    "url",
    [
        "http://cdn.example/x.wav",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "data:audio/wav;base64,AAAA",
        "https://",
        "https://cdn.example/x.wav\nSet-Cookie: a",
    ],
)
def test_only_https_audio_urls_are_accepted(url: str) -> None:
    with pytest.raises(UnexpectedResponseError, match="audio URL that is not https"):
        proto.interpret_success(call(), raw(200, {"audio": {"url": url}}), BASE)


def test_loopback_http_urls_are_allowed_only_with_a_loopback_http_base() -> None:
    assert proto.check_audio_url("http://127.0.0.1:5/f.wav", "http://127.0.0.1:5/v1")
    assert not proto.check_audio_url("http://127.0.0.1:5/f.wav", BASE)
    assert not proto.check_audio_url("http://evil.example/f.wav", "http://127.0.0.1:5/v1")


@pytest.mark.parametrize(
    "body",
    [
        {"audio": {"url": "https://cdn.example/a.wav"}, "meta": {"usage": {"credits_used": 10}}},
        {"audio": "https://cdn.example/b.mp3", "meta": {"request_id": "r-1"}},
        {"audio": {"url": "https://cdn.example/c"}, "meta": {"usage": {"usd_spent": "0.5"}}},
    ],
)
def test_a_speech_from_an_answer_is_the_same_as_a_validated_one(body: dict[str, object]) -> None:
    speech = proto.interpret_success(call(voice="ava song"), raw(201, body), BASE)
    assert isinstance(speech, Speech)
    validated = Speech(**{name: getattr(speech, name) for name in speech.model_fields_set})

    assert speech == validated
    assert repr(speech) == repr(validated)
    assert speech.model_dump() == validated.model_dump()
    assert speech.model_dump_json() == validated.model_dump_json()
    assert speech.model_fields_set == validated.model_fields_set
    assert hash(speech) == hash(validated)
    with pytest.raises(ValidationError, match="frozen"):
        speech.cached = True  # type: ignore[misc]


def test_raw_audio_body_becomes_a_payload_to_save() -> None:
    result = proto.interpret_success(
        call(), raw(200, b"RIFF....WAVE", **{"content-type": "audio/wav"}), BASE
    )
    assert isinstance(result, proto.AudioPayload)
    assert (result.data, result.extension) == (b"RIFF....WAVE", "wav")
    assert proto.body_limit(httpx.Headers({"content-type": "audio/mpeg"})) == proto.MAX_AUDIO_BYTES
    assert proto.body_limit(httpx.Headers({"content-type": "application/json"})) == (
        proto.MAX_JSON_BYTES
    )


WAV = b"RIFF\x24\x00\x00\x00WAVEfmt "
OPUS = b"OggS\x00\x02" + bytes(22) + b"OpusHead\x01\x01"
VORBIS = b"OggS\x00\x02" + bytes(22) + b"\x01vorbis"
MP3_FRAME = b"\xff\xfb\x90\x64" + bytes(8)  # MPEG-1 layer III, 128 kb/s, 44.1 kHz


@pytest.mark.parametrize(
    ("data", "content_type", "fmt", "extension"),
    [
        # What the bytes show wins, whatever the content type says.
        (WAV, "audio/x-unknown", "wav", "wav"),
        (WAV, "audio/mpeg", "mp3", "wav"),
        (b"ID3\x04\x00" + bytes(8), "audio/x-unknown", "wav", "mp3"),
        (OPUS, "audio/x-unknown", "wav", "opus"),
        (VORBIS, "audio/x-unknown", "wav", "ogg"),
        (b"fLaC\x00\x00\x00\x22", "audio/x-unknown", "wav", "flac"),
        (b"\x00\x00\x00\x20ftypM4A ", "audio/x-unknown", "wav", "m4a"),
        # A frame sync only when the content type does not say.
        (MP3_FRAME, "audio/x-unknown", "wav", "mp3"),
        (b"\xff\xf1\x50\x80" + bytes(8), "audio/x-unknown", "wav", "aac"),
        (MP3_FRAME, "audio/L16; rate=24000", "pcm", "pcm"),
        # Bytes of no known kind: the content type, else the format asked for.
        (b"\x00\x01\x02\x03", "audio/flac", "wav", "flac"),
        (b"\x00\x01\x02\x03", "audio/x-unknown", "wav", "wav"),
        (b"\x00\x01\x02\x03", "audio/x-unknown", "mp3", "mp3"),
        (b"RIFF", "audio/x-unknown", "flac", "flac"),
    ],
)
def test_raw_audio_is_named_by_its_bytes_then_its_type_then_the_format_asked(
    data: bytes, content_type: str, fmt: str, extension: str
) -> None:
    asked = proto.prepare(
        Settings.load(api_key=KEY, environ={}, model="openai/tts-1"), "Hi.", None, fmt
    )
    result = proto.interpret_success(asked, raw(200, data, **{"content-type": content_type}), BASE)

    assert isinstance(result, proto.AudioPayload)
    assert result.extension == extension
    speech = proto.speech_from_file(asked, result, "file:///tmp/a")
    formats = ("wav", "mp3", "opus", "aac", "flac", "pcm")  # the format says what the file is
    assert speech.format == (extension if extension in formats else fmt)


# ------------------------------------------------------------ error statuses


@pytest.mark.parametrize(
    ("status", "kind", "fragment"),
    [
        (400, BadRequestError, "The API rejected the request (400: Body validation error!)"),
        (422, BadRequestError, "The API rejected the request (422"),
        (401, AuthenticationError, "Check AIMLAPI_API_KEY"),
        (403, AuthenticationError, "may be out of credits"),
        (404, NotFoundError, "Set OCTAVE_TOOLS_MODEL to a current text-to-speech model"),
        (429, RateLimitError, "Wait a few seconds and retry"),
        (500, ServerError, "usually temporary"),
        (504, ServerError, "(504: Body validation error!)"),
        (418, APIStatusError, "The API answered 418"),
    ],
)
def test_status_errors_are_typed_and_say_what_to_do(
    status: int, kind: type[Exception], fragment: str
) -> None:
    body = {"message": "Body validation error!", "statusCode": str(status), "requestId": "r-9"}
    err = proto.status_error(call(), raw(status, body), None)
    assert type(err) is kind
    assert fragment in str(err)
    assert err.status_code == status
    assert err.request_id == "r-9"


def test_rate_limit_error_carries_retry_after() -> None:
    err = proto.status_error(call(), raw(429, b"Too Many Requests"), 12.0)
    assert isinstance(err, RateLimitError)
    assert err.retry_after == 12.0
    assert str(err) == "The API rate limit was hit (429: Too Many Requests). Retry after 12 s."


def test_html_error_pages_are_quoted_as_short_plain_text() -> None:
    page = b"<html><head><title>502 Bad Gateway</title></head><body>" + b"x" * 5000 + b"</body>"
    err = proto.status_error(call(), raw(502, page), None)
    assert err.body_excerpt.startswith("502 Bad Gateway x")
    assert len(err.body_excerpt) <= proto.EXCERPT_CHARS
    assert "<" not in err.body_excerpt


def test_an_echoed_key_is_redacted_from_error_text() -> None:
    err = proto.status_error(call(), raw(401, {"message": f"Bad key {KEY}"}), None)
    assert KEY not in str(err)
    assert KEY not in err.body_excerpt
    assert "Bad key **********" in str(err)


# ------------------------------------------------------------ retry policy


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    assert proto.should_retry(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 200, 201, 418, 501])
def test_other_statuses_are_not_retried(status: int) -> None:
    assert not proto.should_retry(status)


def test_retry_after_in_seconds_milliseconds_and_http_date() -> None:
    now = 1_000_000.0
    assert proto.parse_retry_after(httpx.Headers({"retry-after": "3"}), now=now) == 3.0
    assert proto.parse_retry_after(httpx.Headers({"retry-after": "0.5"}), now=now) == 0.5
    assert proto.parse_retry_after(httpx.Headers({"retry-after-ms": "250"}), now=now) == 0.25
    date = formatdate(now + 7, usegmt=True)
    assert proto.parse_retry_after(httpx.Headers({"retry-after": date}), now=now) == 7.0
    past = formatdate(now - 60, usegmt=True)
    assert proto.parse_retry_after(httpx.Headers({"retry-after": past}), now=now) == 0.0
    for junk in ("soon", "-4", ""):
        assert proto.parse_retry_after(httpx.Headers({"retry-after": junk}), now=now) is None
    assert proto.parse_retry_after(httpx.Headers({}), now=now) is None


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    assert [proto.backoff_delay(n, rand=lambda: 0.0) for n in range(6)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        8.0,
    ]
    assert proto.backoff_delay(1, rand=lambda: 1.0) == 0.75


def test_retry_wait_honours_retry_after_and_gives_up_sensibly() -> None:
    zero = lambda: 0.0  # noqa: E731
    assert proto.retry_wait(0, 2, None, 60, zero) == 0.5
    assert proto.retry_wait(0, 2, 3.0, 60, zero) == 3.0
    assert proto.retry_wait(2, 2, None, 60, zero) is None  # retries spent
    assert proto.retry_wait(0, 0, None, 60, zero) is None  # retries disabled
    assert proto.retry_wait(0, 2, 3600.0, 1e9, zero) is None  # far future: give up, report
    assert proto.retry_wait(0, 2, 5.0, 4.0, zero) is None  # would pass the deadline
