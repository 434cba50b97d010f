"""Issue 16 (outside security review): the upstream, the user and the logs are untrusted.

Request ids and audio content types from the upstream are vetted before they reach a
result, a file name, a ledger row or a log; the key is masked in every log record;
"loopback" means a loopback address, not a prefix; audio URLs to private addresses,
with credentials or of absurd length are refused; silent text is empty; settings and
echoed values are bounded.
"""

from __future__ import annotations

import logging
import secrets
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import api_env, cli_process, http_server, redirecting_server, subprocess_env
from mcp import Client

from octave_tools import (
    ConfigurationError,
    InvalidInputError,
    OctaveClient,
    UnexpectedResponseError,
)
from octave_tools import _mcp_http as octave_http
from octave_tools import _protocol as proto
from octave_tools._files import fetch_audio
from octave_tools._redact import RedactingFilter, basic_config
from octave_tools._settings import Settings, is_loopback
from octave_tools.cli import run
from octave_tools.testing import FakeAIMLAPI
from octave_tools.voices import catalogue_for, resolve_format

SECRET_PART = secrets.token_hex(12)
KEY = f"sk-sec-{SECRET_PART}"
PIECES = [SECRET_PART[i : i + 8] for i in range(len(SECRET_PART) - 7)]
BASE = "https://api.aimlapi.com/v1"
CDN_URL = "https://cdn.example/generations/a.wav"


def leaks(text: str) -> bool:
    """True if ``text`` holds the key or any 8-character piece of its random part."""
    return KEY in text or any(piece in text for piece in PIECES)


def call(**kw: Any) -> proto.Call:
    settings = Settings.load(api_key=KEY, environ={}, **kw)
    return proto.prepare(settings, "Hello there.", None, None)


def raw(status: int, body: object = b"", **headers: str) -> proto.RawResponse:
    import json

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return proto.RawResponse(status, {k.lower(): v for k, v in headers.items()}, data)


@pytest.fixture
def planted() -> Any:
    with FakeAIMLAPI(api_key=KEY) as api:
        yield api


@pytest.fixture
def planted_env(planted: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch) -> FakeAIMLAPI:
    monkeypatch.setenv("AIMLAPI_API_KEY", KEY)
    monkeypatch.setenv("AIMLAPI_BASE_URL", planted.base_url)
    monkeypatch.setenv("OCTAVE_TOOLS_ENGINE", "aimlapi")
    return planted


# ---------------------------------------------------------------- 1. request ids

ECHOED_IDS = [KEY, f"req-{KEY}", f"req-{SECRET_PART[2:14]}", f"{SECRET_PART[5:15]}-x"]


@pytest.mark.parametrize("echoed", ECHOED_IDS)
@pytest.mark.parametrize("where", ["header", "meta", "metadata", "requestId"])
def test_a_request_id_echoing_the_key_or_a_piece_is_redacted_on_success(
    echoed: str, where: str
) -> None:
    body: dict[str, Any] = {"audio": {"url": CDN_URL}}
    headers: dict[str, str] = {}
    if where == "header":
        headers["x-inference-id"] = echoed
    elif where == "requestId":
        body["requestId"] = echoed
    else:
        body[where] = {"request_id": echoed}
    speech = proto.interpret_success(call(), raw(201, body, **headers), BASE)
    assert not isinstance(speech, proto.AudioPayload)
    assert speech.request_id is None or not leaks(speech.request_id)
    assert not leaks(speech.model_dump_json())


@pytest.mark.parametrize("echoed", ECHOED_IDS)
def test_a_request_id_echoing_the_key_is_redacted_in_errors_and_raw_audio(echoed: str) -> None:
    error = proto.status_error(call(), raw(500, {"message": "boom", "requestId": echoed}), None)
    assert not leaks(str(error)) and not leaks(repr(error.request_id))
    with pytest.raises(UnexpectedResponseError) as info:
        proto.interpret_success(call(), raw(201, {"note": 1}, **{"x-inference-id": echoed}), BASE)
    assert not leaks(str(info.value)) and not leaks(repr(info.value.request_id))
    audio = proto.interpret_success(
        call(), raw(200, b"RIFF", **{"content-type": "audio/wav", "x-inference-id": echoed}), BASE
    )
    assert isinstance(audio, proto.AudioPayload)
    assert not leaks(repr(audio.request_id))


def test_a_key_inside_a_request_id_is_masked_and_the_rest_kept() -> None:
    assert proto.clean_request_id(f"req-{KEY}-7", KEY) == "req-**********-7"
    assert proto.clean_request_id(KEY, KEY) is None  # nothing but the key: no id at all


@pytest.mark.parametrize(
    "bad",
    [
        "x" * 129,
        "id with spaces",
        "id\nSet-Cookie: a=1",
        "ïd-unicode",
        "id\x1b[31m",
        "<script>",
        "../../etc/passwd",
    ],
)
def test_request_ids_are_bounded_and_plain_or_dropped(bad: str) -> None:
    assert proto.clean_request_id(bad, KEY) is None
    body = {"audio": {"url": CDN_URL}, "meta": {"request_id": bad}}
    speech = proto.interpret_success(call(), raw(201, body), BASE)
    assert not isinstance(speech, proto.AudioPayload)
    assert speech.request_id is None


def test_normal_request_ids_pass_unchanged() -> None:
    for good in ("inf-1", "8c1d9a0e-3b7f-4c2e-9d1a-0f2b3c4d5e6f", "req_01HX:a=b+c.d", "x" * 128):
        assert proto.clean_request_id(f"  {good} ", KEY) == good


def test_the_echoed_id_reaches_neither_the_cli_json_nor_the_ledger(
    planted_env: FakeAIMLAPI, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    planted_env.respond(
        201, {"audio": {"url": CDN_URL}, "meta": {"usage": {"credits_used": 5}}},
        headers={"x-inference-id": f"id-{KEY}"},
    )  # fmt: skip
    code = run(["say", "Hi", "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    assert '"request_id": "id-**********"' in out
    for file in (tmp_path / "data").rglob("*"):
        if file.is_file():
            assert not leaks(file.read_bytes().decode("latin-1")), file.name
    assert not leaks(out + err)


# ---------------------------------------------------------------- 2. raw audio file names


@pytest.mark.parametrize(
    ("content_type", "extension"),
    [
        ("audio/wav", "wav"),
        ("audio/x-wav", "wav"),
        ("audio/wave", "wav"),
        ("audio/vnd.wave", "wav"),
        ("Audio/WAV; codecs=1", "wav"),
        ("audio/mpeg", "mp3"),
        ("audio/mp3", "mp3"),
        ("audio/ogg", "ogg"),
        ("audio/opus", "opus"),
        ("audio/flac", "flac"),
        ("audio/x-flac", "flac"),
        ("audio/aac", "aac"),
        ("audio/L16; rate=16000", "pcm"),
        # Unknown types: the format asked for (wav, the default), never the upstream's word.
        ("audio/x.desktop", "wav"),
        ("audio/../../../etc/cron.d/x", "wav"),
        (f"audio/{KEY}", "wav"),
        ("audio/", "wav"),
        ("audio/exe", "wav"),
    ],
)
def test_raw_audio_gets_an_extension_from_a_fixed_set(content_type: str, extension: str) -> None:
    result = proto.interpret_success(
        call(), raw(200, b"RIFF", **{"content-type": content_type}), BASE
    )
    assert isinstance(result, proto.AudioPayload)
    assert result.extension == extension


@pytest.mark.parametrize("content_type", ["audio/x.desktop", f"audio/{KEY}", "audio/exe"])
def test_raw_audio_of_no_known_kind_for_no_known_format_is_saved_as_audio(
    content_type: str,
) -> None:
    unknown_format = proto.prepare(
        Settings.load(api_key=KEY, environ={}, model="acme/tts-9"), "Hello there.", None, None
    )
    result = proto.interpret_success(
        unknown_format, raw(200, b"\x00\x01data", **{"content-type": content_type}), BASE
    )
    assert unknown_format.format == "unknown"
    assert isinstance(result, proto.AudioPayload)
    assert result.extension == "audio"


def test_a_key_shaped_audio_subtype_names_no_file(planted: FakeAIMLAPI, tmp_path: Path) -> None:
    planted.respond(200, b"RIFFdata", content_type=f"audio/{KEY}")
    planted.respond(200, b"RIFFdata", content_type="audio/x.desktop")
    with OctaveClient(
        api_key=KEY, base_url=planted.base_url, engine="aimlapi", output_dir=str(tmp_path)
    ) as client:
        keyed = client.synthesize("Hi", format="mp3")
        desktop = client.synthesize("Hi")
    assert keyed.audio_url.endswith(".mp3") and desktop.audio_url.endswith(".wav")
    assert (keyed.format, desktop.format) == ("mp3", "wav")
    assert not leaks(keyed.audio_url)
    assert sorted(p.suffix for p in tmp_path.glob("speech-*")) == [".mp3", ".wav"]


def test_wav_bytes_under_an_unknown_type_are_saved_as_wav(
    planted: FakeAIMLAPI, tmp_path: Path
) -> None:
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(24)
    planted.respond(200, wav, content_type="audio/x-hume-octave")
    planted.respond(200, wav, content_type="audio/x-hume-octave")
    with OctaveClient(
        api_key=KEY, base_url=planted.base_url, engine="aimlapi", output_dir=str(tmp_path)
    ) as client:
        asked = client.synthesize("Hi", format="wav")
        other = client.synthesize("Hi", format="mp3")

    assert (asked.format, other.format) == ("wav", "wav")
    assert asked.audio_url.endswith(".wav") and other.audio_url.endswith(".wav")
    assert [p.read_bytes() for p in tmp_path.glob("speech-*.wav")] == [wav, wav]
    assert list(tmp_path.glob("*.audio")) == []


# ---------------------------------------------------------------- 3. logs


def test_the_key_echoed_in_a_response_header_is_masked_in_the_cli_debug_log(
    planted: FakeAIMLAPI, tmp_path: Path
) -> None:
    env = subprocess_env(
        planted,
        OCTAVE_TOOLS_DATA_DIR=str(tmp_path / "data"),
        OCTAVE_TOOLS_OUTPUT_DIR=str(tmp_path / "out"),
    )
    echo = {"x-echo": KEY, "x-half": SECRET_PART[3:15], "x-tail": KEY[-9:]}
    outputs = []
    for status in (201, 401):
        body = {"audio": {"url": CDN_URL}} if status == 201 else {"message": "no"}
        planted.respond(status, body, headers=echo)
        done = cli_process("-vv", "say", "Hi", env=env, text=True)
        assert done.returncode == (0 if status == 201 else 4), done.stderr
        assert "x-echo" in done.stderr  # httpcore's header dump is there, masked
        outputs.append(done.stdout + done.stderr)
    assert [o for o in outputs if leaks(o)] == []


async def test_the_key_echoed_in_a_response_header_is_masked_in_the_server_log(
    planted: FakeAIMLAPI,
) -> None:
    with http_server(api_env(planted), "--log-level", "DEBUG") as (url, server):
        planted.respond(
            201, {"audio": {"url": CDN_URL}}, headers={"x-echo": KEY, "x-half": SECRET_PART[:12]}
        )
        async with Client(url) as client:
            result = await client.call_tool("text_to_speech", {"text": "Hi"})
        log = server.stderr
    assert result.is_error is False
    assert "x-echo" in log
    assert not leaks(log)


def test_the_filter_masks_args_tracebacks_and_any_logger(
    planted: FakeAIMLAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    Settings.load(api_key=KEY, environ={})  # loading the key registers it
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    root.handlers = []  # as in a fresh CLI process
    try:
        basic_config(stream=sys.stderr, level=logging.DEBUG, format="%(message)s")
        assert any(isinstance(f, RedactingFilter) for f in root.handlers[0].filters)
        logging.getLogger("somelib.http").debug("headers=%r", [(b"x-echo", KEY.encode())])
        try:
            raise ValueError(f"bad {SECRET_PART[1:11]}")
        except ValueError:
            logging.getLogger("other").exception("failed for %s", KEY[:-2])
    finally:
        root.handlers = saved
        root.setLevel(level)
    err = capsys.readouterr().err
    assert "headers=[(b'x-echo', b'**********')]" in err
    assert "ValueError: bad **********" in err
    assert not leaks(err)


# ---------------------------------------------------------------- 10. loopback


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("127.attacker.example", False),
        ("127.0.0.1.nip.io", False),
        ("127.x.example", False),
        ("localhost.attacker.example", False),
        ("128.0.0.1", False),
        ("::2", False),
        ("", False),
        (None, False),
    ],
)
def test_loopback_is_an_address_not_a_prefix(host: str | None, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_a_plain_http_base_url_to_a_127_named_host_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="plain http to a non-loopback host"):
        Settings.load(base_url="http://127.attacker.example/v1", environ={})
    assert Settings.load(base_url="http://127.0.0.1:9/v1", environ={}).base_url == (
        "http://127.0.0.1:9/v1"
    )


def test_serving_on_a_127_named_host_needs_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[tuple[Any, ...]] = []
    monkeypatch.setattr(octave_http, "_serve_http", lambda *a: served.append(a))
    code = run(["serve", "--transport", "http", "--host", "127.x.example", "--port", "0"])
    err = capsys.readouterr().err
    assert code == 3
    assert served == []
    assert "Refusing to serve on 127.x.example without authentication" in err
    with pytest.raises(ConfigurationError, match="Refusing to serve on 127.evil.example"):
        octave_http._server_token("127.evil.example", False)
    assert octave_http._server_token("127.0.0.1", False) is None
    assert octave_http._server_token("::1", False) is None


# ---------------------------------------------------------------- 11. audio URLs

REFUSED_PRIVATE = [
    "https://169.254.169.254/latest/meta-data/",
    "https://10.0.0.5/a.wav",
    "https://192.168.1.1/a.wav",
    "https://172.16.0.1/a.wav",
    "https://172.31.255.255/a.wav",
    "https://100.64.0.1/a.wav",
    "https://0.0.0.0/a.wav",
    "https://127.0.0.1/a.wav",
    "https://localhost/a.wav",
    "https://[::1]/a.wav",
    "https://[::]/a.wav",
    "https://[fc00::1]/a.wav",
    "https://[fd12:3456::1]/a.wav",
    "https://[fe80::1]/a.wav",
    "https://[fe80::1%25eth0]/a.wav",
    "https://[::ffff:169.254.169.254]/a.wav",
    "https://[::ffff:a9fe:a9fe]/a.wav",
    "https://[::ffff:10.0.0.1]/a.wav",
    "https://[64:ff9b::a9fe:a9fe]/a.wav",
    "https://[2002:a9fe:a9fe::1]/a.wav",
    "https://[ff02::1]/a.wav",
    "https://2852039166/a.wav",
    "https://0xa9fea9fe/a.wav",
    "https://0xa9.0xfe.0xa9.0xfe/a.wav",
    "https://0251.0376.0251.0376/a.wav",
    "https://169.254.43518/a.wav",
    "https://127.1/a.wav",
    "https://0x7f.0.0.1/a.wav",
    "https://10.0.0.1./a.wav",
    "https://999.1.1.1/a.wav",
    "https://224.0.0.1/a.wav",
]


@pytest.mark.parametrize("url", REFUSED_PRIVATE)
def test_https_urls_to_private_or_special_addresses_are_refused(url: str) -> None:
    assert not proto.check_audio_url(url, BASE)
    with pytest.raises(
        UnexpectedResponseError, match="an audio URL to a private, loopback or link-local address"
    ):
        proto.interpret_success(call(), raw(201, {"audio": {"url": url}}), BASE)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.aimlapi.com@evil.example/a.wav",
        "https://user:pass@cdn.example/a.wav",
        "https://:x@cdn.example/a.wav",
        "https://@cdn.example/a.wav",
    ],
)
def test_urls_with_credentials_are_refused(url: str) -> None:
    assert not proto.check_audio_url(url, BASE)
    with pytest.raises(UnexpectedResponseError, match="an audio URL with a user name or password"):
        proto.interpret_success(call(), raw(201, {"audio": {"url": url}}), BASE)


def test_an_overlong_url_is_refused_without_being_echoed() -> None:
    url = "https://cdn.example/a.wav?" + "q" * 900_000
    assert not proto.check_audio_url(url, BASE)
    assert proto.check_audio_url(url[: proto.MAX_AUDIO_URL_CHARS], BASE)
    with pytest.raises(UnexpectedResponseError) as info:
        proto.interpret_success(call(), raw(201, {"audio": {"url": url}}), BASE)
    message = str(info.value)
    assert "an audio URL of 900,026 characters (the limit is 4,096)" in message
    assert len(message) < 600


@pytest.mark.parametrize(
    "url",
    [
        CDN_URL,
        "https://cdn.aimlapi.com/generations/x.wav",
        "https://8.8.8.8/a.wav",
        "https://[2606:4700::1111]/a.wav",
        "https://cdn.example:8443/a.wav?sig=abc&exp=1",
        "https://10.example.com/a.wav",
        "https://a-127.0.0.1.example/a.wav",
    ],
)
def test_public_https_urls_are_still_accepted(url: str) -> None:
    assert proto.check_audio_url(url, BASE)
    speech = proto.interpret_success(call(), raw(201, {"audio": {"url": url}}), BASE)
    assert not isinstance(speech, proto.AudioPayload)
    assert speech.audio_url == url


def test_loopback_urls_pass_only_in_the_loopback_test_mode() -> None:
    test_base = "http://127.0.0.1:5/v1"
    for url in ("http://127.0.0.1:5/f.wav", "https://127.0.0.1:5/f.wav", "http://[::1]:5/f.wav"):
        assert proto.check_audio_url(url, test_base)
        assert not proto.check_audio_url(url, BASE)
    assert not proto.check_audio_url("https://10.0.0.1/f.wav", test_base)
    assert not proto.check_audio_url("http://127.0.0.1@evil.example/f.wav", test_base)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://169.254.169.254/latest/meta-data/", "to a private, loopback or link-local"),
        (f"https://{KEY}@cdn.example/a.wav", "with a user name or password"),
        (f"https://cdn.example/{'p' * 5000}{KEY}", "characters (the limit is 4,096)"),
    ],
)
def test_out_refuses_such_urls_before_any_connection(url: str, problem: str) -> None:
    settings = Settings.load(api_key=KEY, timeout=1.0, environ={})
    with pytest.raises(UnexpectedResponseError, match="Refusing to download audio") as info:
        fetch_audio(url, settings)
    message = str(info.value)
    assert problem in message
    assert len(message) < 300
    assert not leaks(message)


def test_out_refuses_a_redirect_to_a_private_https_address() -> None:
    with redirecting_server("https://10.1.2.3/latest/meta-data") as base:
        settings = Settings.load(api_key="k", base_url=base + "/v1", timeout=1.0, environ={})
        with pytest.raises(UnexpectedResponseError, match="Refusing to follow a redirect") as info:
            fetch_audio(base + "/files/a.wav", settings)
    assert "to a private, loopback or link-local address: 'https://10.1.2.3/latest/meta-data'" in (
        str(info.value)
    )


# ---------------------------------------------------------------- 12. silent text


@pytest.mark.parametrize(
    "text", ["\u200b", "\x00", "\u200b\u200c\ufeff", "\x00\x01", " \u2060\u00ad\u202e \u200d"]
)
def test_text_of_only_invisible_or_control_characters_is_empty(
    text: str, planted: FakeAIMLAPI
) -> None:
    with (
        OctaveClient(api_key=KEY, base_url=planted.base_url, engine="aimlapi") as client,
        pytest.raises(InvalidInputError, match="text is empty: it holds only invisible") as info,
    ):
        client.synthesize(text)
    assert info.value.field == "text"
    assert planted.tts_requests == []


@pytest.mark.parametrize(
    "text",
    [
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family emoji, joined by ZWJ
        "\u0915\u094d\u200d\u0937",  # Devanagari with a zero-width joiner
        "a\u200b",
        "\u200b\x00.",
    ],
)
def test_text_with_something_visible_and_embedded_joiners_is_sent(
    text: str, planted: FakeAIMLAPI
) -> None:
    with OctaveClient(api_key=KEY, base_url=planted.base_url, engine="aimlapi") as client:
        client.synthesize(text)
    assert [r.json["text"] for r in planted.tts_requests] == [text]


# ---------------------------------------------------------------- 14. bounds


@pytest.mark.parametrize("timeout", ["1e308", "1e10", "86401"])
def test_an_absurd_timeout_is_a_configuration_error(
    timeout: str, api_env: FakeAIMLAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(["say", "hi", "--timeout", timeout])
    err = capsys.readouterr().err
    assert code == 3
    assert err.startswith(
        "octave-tools: error: timeout must be a positive number of seconds (e.g. 60), "
        "at most 86,400; got "
    )
    assert api_env.tts_requests == []
    with pytest.raises(ConfigurationError, match="OCTAVE_TOOLS_TIMEOUT must be .* at most 86,400"):
        Settings.load(environ={"OCTAVE_TOOLS_TIMEOUT": timeout})
    assert Settings.load(environ={"OCTAVE_TOOLS_TIMEOUT": "86400"}).timeout == 86_400


def test_a_huge_voice_is_not_echoed_whole() -> None:
    catalogue = catalogue_for("hume/octave-2")
    voice = "v" * 1_600_000
    with pytest.raises(InvalidInputError) as info:
        catalogue.resolve(voice)
    message = str(info.value)
    assert message.startswith(f"Unknown voice '{'v' * 60}…' for model 'hume/octave-2'.")
    assert len(message) < 1200
    # A normal misspelling is still quoted whole.
    with pytest.raises(InvalidInputError, match="Unknown voice 'Ava Sung' for model"):
        catalogue.resolve("Ava Sung")


def test_huge_formats_models_and_settings_are_not_echoed_whole() -> None:
    with pytest.raises(InvalidInputError) as info:
        resolve_format("f" * 100_000)
    assert str(info.value) == f"Unknown format '{'f' * 60}…'. Use one of: wav, mp3."
    for env in (
        {"OCTAVE_TOOLS_FORMAT": "f" * 100_000},
        {"OCTAVE_TOOLS_ENGINE": "e" * 100_000},
        {"OCTAVE_TOOLS_MAX_RETRIES": "9" * 100_000},
        {"AIMLAPI_BASE_URL": "ftp://" + "u" * 100_000},
    ):
        with pytest.raises(ConfigurationError) as config_info:
            Settings.load(environ=env)
        assert len(str(config_info.value)) < 300, env.keys()
    huge_model = "m" * 100_000
    error = proto.status_error(call(model=huge_model), raw(404, {"message": "no"}), None)
    assert len(str(error)) < 500
    assert f"model '{'m' * 60}…'" in str(error)
