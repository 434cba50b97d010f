"""Faults at the edges that the per-module tests do not reach.

An upstream that cuts a body after the headers or trickles it past the timeout, a
gzip bomb, unsafe audio URLs through the real clients and the MCP face, an empty 201
over MCP, a far Retry-After date, ``--out`` when the download or the write fails,
a cancelled call over HTTP, the ledger under concurrent first calls and over many
calls, and property tests that send any text through the real HTTP stack.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import os
import socket
import time
import unicodedata
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import (
    RawUpstream,
    Script,
    StallingAPI,
    api_env,
    cancel_mid_call,
    http_server,
    redirecting_server,
    synthesize_on,
    text_of,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from octave_tools import (
    APIConnectionError,
    APITimeoutError,
    AsyncOctaveClient,
    InvalidInputError,
    OctaveClient,
    OctaveError,
    RateLimitError,
    Speech,
    UnexpectedResponseError,
)
from octave_tools._protocol import MAX_JSON_BYTES
from octave_tools._settings import DEFAULT_MAX_TEXT_CHARS
from octave_tools._store import LedgerEntry, SQLiteStore
from octave_tools.cli import run
from octave_tools.mcp import create_server
from octave_tools.testing import FakeAIMLAPI

GOOD = json.dumps({"audio": {"url": "https://cdn.example/a.wav"}}).encode()


def cut_body(conn: socket.socket) -> None:
    """Headers promising 500 bytes, then 10 of them, then the connection closes."""
    conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n")
    conn.sendall(b"Content-Length: 500\r\n\r\n" + b'{"audio": ')


def good(conn: socket.socket) -> None:
    conn.sendall(
        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(GOOD)}\r\n\r\n".encode()
        + GOOD
    )


def trickle(conn: socket.socket) -> None:
    """A byte of body every 0.1 s, for far longer than any client here waits."""
    body = b" " * 100 + GOOD
    conn.sendall(
        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    for byte in body:
        conn.sendall(bytes([byte]))
        time.sleep(0.1)


@pytest.fixture
def upstream() -> Iterator[Callable[..., RawUpstream]]:
    made: list[RawUpstream] = []

    def make(*scripts: Script) -> RawUpstream:
        made.append(RawUpstream(*scripts))
        return made[-1]

    yield make
    for server in made:
        server.close()


def synthesize(kind: str, text: str = "Hello", **options: Any) -> Speech:
    """One call on a fresh sync or async client."""
    return synthesize_on(kind, {"api_key": "k-edge", "engine": "aimlapi", **options}, text)


KINDS = ["sync", "async"]


# ---------------------------------------------------------------- the upstream misbehaves


@pytest.mark.parametrize("kind", KINDS)
def test_a_body_cut_after_the_headers_is_retried_then_succeeds(
    kind: str, upstream: Callable[..., RawUpstream]
) -> None:
    api = upstream(cut_body, good)
    speech = synthesize(kind, base_url=api.base_url)
    assert speech.audio_url == "https://cdn.example/a.wav"
    assert api.connections == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_body_cut_every_time_is_a_connection_error(
    kind: str, upstream: Callable[..., RawUpstream]
) -> None:
    api = upstream(cut_body)
    with pytest.raises(APIConnectionError, match="after 2 attempts") as info:
        synthesize(kind, base_url=api.base_url, max_retries=1)
    assert "k-edge" not in str(info.value)
    assert api.connections == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_body_trickling_past_the_timeout_ends_at_the_timeout(
    kind: str, upstream: Callable[..., RawUpstream]
) -> None:
    api = upstream(trickle)
    started = time.monotonic()
    with pytest.raises(APITimeoutError, match="within its 1 s limit"):
        synthesize(kind, base_url=api.base_url, timeout=1.0)
    # Within the timeout (plus a read's worth of slack): the body alone would take 10 s.
    assert time.monotonic() - started < 1.0 + 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_a_gzip_bomb_is_refused_at_the_cap(kind: str, fake_aimlapi: FakeAIMLAPI) -> None:
    bomb = gzip.compress(b'{"pad": "' + b" " * (8 * MAX_JSON_BYTES) + b'"}')
    assert len(bomb) < MAX_JSON_BYTES // 50  # small on the wire, 8 MB unpacked
    fake_aimlapi.respond(201, bomb, headers={"Content-Encoding": "gzip"})
    with pytest.raises(UnexpectedResponseError, match="larger than 1,048,576 bytes"):
        synthesize(kind, api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url)


UNSAFE_URLS = [
    ("http://cdn.example/a.wav", "http:"),  # plain http off loopback, even with a loopback base
    ("file:///etc/passwd", "file:"),
    ("data:audio/wav;base64,UklGRg==", "data:"),
    ("javascript:alert(1)", "javascript:"),
    ("ftp://cdn.example/a.wav", "ftp:"),
    ("https:///a.wav", "https:"),
    ("https://cdn.example/a.wav\r\nSet-Cookie: x=1", "https:"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("url", "scheme"), UNSAFE_URLS)
def test_unsafe_audio_urls_are_refused_by_the_real_clients(
    kind: str, url: str, scheme: str, fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    fake_aimlapi.respond(200, {"audio": {"url": url}})
    with pytest.raises(
        UnexpectedResponseError, match=f"audio URL that is not https \\({scheme}\\)"
    ):
        synthesize(
            kind,
            api_key=fake_aimlapi.api_key,
            base_url=fake_aimlapi.base_url,
            output_dir=str(tmp_path / "out"),
        )
    assert len(fake_aimlapi.tts_requests) == 1  # not retried: a second call would pay again
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        ({"audio": {"url": "file:///etc/passwd"}}, "audio URL that is not https (file:)"),
        ({"audio": {"url": "data:audio/wav;base64,AAAA"}}, "audio URL that is not https (data:)"),
        (b"", "answered 201 with a body that is not JSON"),
    ],
)
async def test_unusable_answers_are_tool_errors_over_mcp(
    answer: Any, fragment: str, fake_aimlapi: FakeAIMLAPI
) -> None:
    fake_aimlapi.respond(201, answer)
    server = create_server(
        api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url, engine="aimlapi"
    )
    async with Client(server) as client:
        result = await client.call_tool("text_to_speech", {"text": "Hi"})

    assert result.is_error is True
    assert result.structured_content is None
    assert fragment in text_of(result)
    assert "Traceback" not in text_of(result)


@pytest.mark.parametrize("kind", KINDS)
def test_a_retry_after_date_far_ahead_is_reported_not_waited(
    kind: str, fake_aimlapi: FakeAIMLAPI
) -> None:
    fake_aimlapi.fail(429, retry_after=formatdate(time.time() + 7200, usegmt=True))
    started = time.monotonic()
    with pytest.raises(RateLimitError) as info:
        synthesize(kind, api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url)
    assert info.value.retry_after is not None and 7100 < info.value.retry_after <= 7200
    assert len(fake_aimlapi.tts_requests) == 1
    assert time.monotonic() - started < 5  # reported at once, not waited out


# ---------------------------------------------------------------- --out never half-done


class CutAudio:
    """An audio host that promises 100 kB and sends 1 kB before hanging up."""

    def __init__(self) -> None:
        self.upstream = RawUpstream(self._send)

    @staticmethod
    def _send(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: 100000\r\n")
        conn.sendall(b"\r\nRIFF" + bytes(1000))

    @property
    def base(self) -> str:
        return self.upstream.base_url.removesuffix("/v1") + "/files"


def test_out_is_left_untouched_when_the_download_breaks_mid_way(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = CutAudio()
    base = host.base
    try:
        with FakeAIMLAPI(audio_url_base=base) as api:
            monkeypatch.setenv("AIMLAPI_API_KEY", api.api_key)
            monkeypatch.setenv("AIMLAPI_BASE_URL", api.base_url)
            monkeypatch.setenv("OCTAVE_TOOLS_ENGINE", "aimlapi")
            folder = tmp_path / "out"
            folder.mkdir()
            target = folder / "speech.wav"
            target.write_bytes(b"the previous take")
            code = run(["say", "Hello", "--out", str(target)])
    finally:
        host.upstream.close()

    out, err = capsys.readouterr()
    assert code == 4
    assert out.startswith(base + "/")  # the call was paid: its URL is kept
    error = err.splitlines()[-1]
    assert error.startswith("octave-tools: error: Could not download the audio from 127.0.0.1:")
    assert error.endswith(f"--out {target} was not written.")
    assert target.read_bytes() == b"the previous take"
    assert sorted(p.name for p in folder.iterdir()) == ["speech.wav"]  # no temp file left


def test_out_is_left_untouched_when_the_write_fails(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    api_env: FakeAIMLAPI,
    tmp_path: Path,
) -> None:
    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("octave_tools._files.os.fsync", full_disk)
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "speech.wav"
    target.write_bytes(b"the previous take")

    code = run(["say", "Hello", "--out", str(target)])

    out, err = capsys.readouterr()
    assert code == 6  # the local write failed; the paid call's URL is still printed
    assert out.strip() in api_env.issued
    assert err.splitlines()[-1] == (
        f"octave-tools: error: could not write --out {target} (No space left on device). "
        "The call was made and its audio URL is printed above."
    )
    assert "Traceback" not in err
    assert target.read_bytes() == b"the previous take"
    assert sorted(p.name for p in folder.iterdir()) == ["speech.wav"]


# ---------------------------------------------------------------- cancellation over HTTP


async def test_a_cancelled_call_over_http_stops_the_upstream_request() -> None:
    stalling = StallingAPI()
    env = api_env(stalling, OCTAVE_TOOLS_TIMEOUT="600")
    try:
        with http_server(env) as (url, server):
            async with Client(url) as client:
                await cancel_mid_call(client, stalling)  # the server let go of the upstream call
                assert (await client.call_tool("list_voices", {})).is_error is False
            assert "Traceback" not in server.stderr
    finally:
        stalling.close()


# ---------------------------------------------------------------- the ledger under load


async def test_concurrent_first_calls_are_all_recorded_in_the_ledger(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    async with AsyncOctaveClient(
        api_key=fake_aimlapi.api_key,
        base_url=fake_aimlapi.base_url,
        engine="aimlapi",
        data_dir=str(tmp_path / "ledger"),
    ) as client:
        results = await asyncio.gather(*(client.synthesize(f"first {i}") for i in range(20)))
        report = await client.usage("1h")

    assert len(results) == 20
    assert report.total_calls == 20


def test_the_ledger_holds_no_written_entries_in_memory_without_a_budget(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "ledger.sqlite3")

    def entry(i: int) -> LedgerEntry:
        return LedgerEntry(
            ts=time.time(),
            engine="aimlapi",
            model="hume/octave-2",
            voice="Ava Song",
            format="wav",
            characters=5,
            credits=625.0,
            usd=0.0003,
            request_id=f"edge-ledger-{i}",
            text_sha256=f"{i:064x}",
            cached=False,
        )

    try:
        for i in range(3000):
            store.add(entry(i))
        store.flush()
        store.add(entry(-1))  # the writer's last batch is let go on its next write
        store.flush()
        gc.collect()
        alive = sum(
            1
            for o in gc.get_objects()
            if isinstance(o, LedgerEntry) and (o.request_id or "").startswith("edge-ledger-")
        )
        assert alive <= 2  # at most what the writer thread's loop variables still name
        assert [r.calls for r in store.usage(0, "model")] == [3001]
    finally:
        store.close()


# ---------------------------------------------------------------- any text, for real


@pytest.fixture(scope="module")
def shared_api() -> Iterator[FakeAIMLAPI]:
    with FakeAIMLAPI() as api:
        yield api


any_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=200
)
control_text = st.text(
    alphabet=st.sampled_from([chr(c) for c in range(0x20)] + ["\x7f", "\u2028", "\ufeff", "a"]),
    min_size=1,
    max_size=50,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=any_text | control_text)
def test_any_text_reaches_the_api_exactly_or_is_refused_before_sending(
    shared_api: FakeAIMLAPI, text: str
) -> None:
    shared_api.reset()
    with OctaveClient(
        api_key=shared_api.api_key, base_url=shared_api.base_url, engine="aimlapi"
    ) as client:
        try:
            speech = client.synthesize(text)
        except InvalidInputError:
            # Nothing speakable: only spaces, controls and invisible format characters.
            assert {unicodedata.category(c) for c in text} <= {"Cc", "Cf", "Zs", "Zl", "Zp"}
            assert shared_api.requests == []
            return
    assert shared_api.issued[speech.audio_url] == text
    assert json.loads(shared_api.tts_requests[0].body)["text"] == text
    assert speech.characters == len(text)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    chunk=st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=9
    ),
    extra=st.integers(min_value=-3, max_value=3),
)
def test_huge_texts_round_trip_up_to_the_limit_and_are_refused_past_it(
    shared_api: FakeAIMLAPI, chunk: str, extra: int
) -> None:
    shared_api.reset()
    # The limit of one call is max_text_chars (200,000), below Octave's 500,000 a request.
    limit = DEFAULT_MAX_TEXT_CHARS
    text = (chunk * (limit // len(chunk) + 1))[: limit + extra]
    with OctaveClient(
        api_key=shared_api.api_key, base_url=shared_api.base_url, engine="aimlapi"
    ) as client:
        try:
            speech = client.synthesize(text)
        except InvalidInputError as exc:
            silent = {unicodedata.category(c) for c in text} <= {"Cc", "Cf", "Zs", "Zl", "Zp"}
            assert len(text) > limit or silent
            assert shared_api.requests == []
            assert "k-" not in str(exc)
            return
    assert len(text) <= limit
    assert shared_api.issued[speech.audio_url] == text


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet=st.characters(codec=None), max_size=30),
    voice=st.none() | st.text(alphabet=st.characters(codec=None), max_size=30),
    fmt=st.none() | st.text(alphabet=st.characters(codec=None), max_size=8),
)
def test_lone_surrogates_anywhere_are_refused_before_sending(
    text: str, voice: str | None, fmt: str | None
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["text"] == text  # only valid text is ever sent, and exactly
        return httpx.Response(201, json={"audio": {"url": "https://cdn.example/a.wav"}})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    try:
        with OctaveClient(api_key="k-fuzz", engine="aimlapi", http_client=http) as client:
            result = client.synthesize(text, voice=voice, format=fmt)
    except OctaveError as exc:
        assert "k-fuzz" not in str(exc)
    else:
        assert isinstance(result, Speech)
        text.encode("utf-8")  # never a lone surrogate
    finally:
        http.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.integers(min_value=100, max_value=599),
    body=st.binary(max_size=200),
    encoding=st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "x-junk", "gzip, gzip"]),
    content_type=st.sampled_from(["application/json", "audio/mpeg", "audio/", "text/plain", ""]),
    retry_after=st.none() | st.sampled_from(["0", "-1", "1e308", "nan", "inf", "Wed, 99 Foo"]),
)
def test_any_encoded_answer_to_the_async_client_is_speech_or_octave_error(
    status: int, body: bytes, encoding: str, content_type: str, retry_after: str | None
) -> None:
    headers = {"content-encoding": encoding, "content-type": content_type}
    if retry_after is not None:
        headers["retry-after"] = retry_after

    async def go() -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(status, content=body, headers=headers)

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            client = AsyncOctaveClient(
                api_key="k-fuzz",
                engine="aimlapi",
                max_retries=0,
                http_client=http,
                output_dir=os.environ["OCTAVE_TOOLS_OUTPUT_DIR"],
            )
            try:
                result = await client.synthesize("hi")
            except OctaveError as exc:
                assert "k-fuzz" not in str(exc)
            else:
                assert isinstance(result, Speech)

    asyncio.run(go())


def test_out_refuses_a_redirect_to_a_url_that_is_not_allowed() -> None:
    from octave_tools import UnexpectedResponseError
    from octave_tools._files import fetch_audio
    from octave_tools._settings import Settings

    with redirecting_server("http://169.254.169.254/latest/meta-data") as base:
        settings = Settings.load(api_key="k", base_url=base + "/v1", environ={})
        with pytest.raises(UnexpectedResponseError, match="Refusing to follow a redirect"):
            fetch_audio(base + "/files/a.wav", settings)


def trickle_headers(conn: socket.socket) -> None:
    """The status line and headers a byte every 0.2 s, never reaching the body."""
    for byte in b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n" * 100:
        conn.sendall(bytes([byte]))
        time.sleep(0.2)


@pytest.mark.parametrize("mode", ["sync", "async", "download"])
def test_a_server_trickling_bytes_cannot_hold_a_call_past_its_timeout(
    mode: str, upstream: Callable[..., RawUpstream]
) -> None:
    from octave_tools._files import fetch_audio
    from octave_tools._settings import Settings

    base = upstream(trickle_headers).base_url
    options = {"api_key": "k", "base_url": base, "engine": "aimlapi", "timeout": 1.0}
    started = time.monotonic()
    with pytest.raises(APITimeoutError):
        if mode == "sync":
            with OctaveClient(max_retries=0, **options) as client:  # type: ignore[arg-type]
                client.synthesize("hi")
        elif mode == "async":

            async def go() -> None:
                async with AsyncOctaveClient(max_retries=0, **options) as client:  # type: ignore[arg-type]
                    await client.synthesize("hi")

            asyncio.run(go())
        else:
            settings = Settings.load(api_key="k", base_url=base, timeout=1.0, environ={})
            fetch_audio(base.removesuffix("/v1") + "/files/a.wav", settings)
    # Each read is short, so only a total deadline stops this; allow scheduling slack.
    assert time.monotonic() - started < 1.0 + 0.5
