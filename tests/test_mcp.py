"""The MCP face, against real peers: the official client in memory, over a stdio
subprocess and over a streamable-HTTP subprocess, with the fake AIML API behind them."""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import (
    INITIALIZE,
    MCP_HEADERS,
    SERVER,
    TOOL_ERROR,
    ServerProcess,
    StallingAPI,
    api_env,
    cancel_mid_call,
    child_env,
    connect,
    http_server,
    text_of,
)
from mcp import Client, StdioServerParameters
from mcp.client.stdio import get_default_environment

from octave_tools import AsyncOctaveClient, ConfigurationError
from octave_tools._mcp_http import ENV_SERVER_TOKEN, _transport_security
from octave_tools._settings import Settings
from octave_tools.mcp import SpeechResult, VoiceList, create_server
from octave_tools.models import UsageReport
from octave_tools.testing import FakeAIMLAPI
from octave_tools.voices import DEFAULT_MODEL, DEFAULT_VOICE, VOICES, catalogue_for

PEERS = ["memory", "stdio", "http"]
ALL_VOICES = VoiceList(model=DEFAULT_MODEL, default=DEFAULT_VOICE, voices=list(VOICES))


# ---------------------------------------------------------------- peers


@pytest.fixture
def stalling_api() -> Iterator[StallingAPI]:
    api = StallingAPI()
    yield api
    api.close()


# ---------------------------------------------------------------- the spec, on every peer


@pytest.mark.parametrize("peer", PEERS)
async def test_lists_both_tools_with_schemas_and_annotations(
    peer: str, fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect(peer, api_env(fake_aimlapi), monkeypatch) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}

    assert sorted(tools) == ["list_voices", "text_to_dialogue", "text_to_speech", "usage"]
    tts, voices, usage = tools["text_to_speech"], tools["list_voices"], tools["usage"]
    dialogue = tools["text_to_dialogue"]
    assert dialogue.title == "Text to dialogue"
    assert dialogue.annotations == tts.annotations.model_copy(update={"title": "Text to dialogue"})
    assert dialogue.input_schema["required"] == ["lines"]
    assert dialogue.output_schema == SpeechResult.model_json_schema()
    assert tts.title == "Text to speech"
    assert tts.annotations.model_dump(exclude_none=True) == {
        "title": "Text to speech",
        "read_only_hint": False,
        "destructive_hint": False,
        "idempotent_hint": False,
        "open_world_hint": True,
    }
    assert voices.annotations.model_dump(exclude_none=True) == {
        "title": "List voices",
        "read_only_hint": True,
        "destructive_hint": False,
        "idempotent_hint": True,
        "open_world_hint": False,
    }
    assert tts.input_schema["required"] == ["text"]
    assert list(tts.input_schema["properties"]) == ["text", "voice", "format"]
    assert tts.input_schema["properties"]["format"]["anyOf"] == [
        {"enum": ["wav", "mp3"], "type": "string"},
        {"type": "null"},
    ]
    assert "Ava Song" in tts.input_schema["properties"]["voice"]["description"]
    assert tts.output_schema == SpeechResult.model_json_schema()
    assert voices.input_schema["properties"] == {}
    assert voices.output_schema == VoiceList.model_json_schema()
    assert usage.annotations.model_dump(exclude_none=True) == {
        "title": "Usage",
        "read_only_hint": True,
        "destructive_hint": False,
        "idempotent_hint": True,
        "open_world_hint": False,
    }
    assert usage.input_schema.get("required") is None
    assert usage.input_schema["properties"]["by"]["anyOf"] == [
        {"enum": ["day", "model", "voice", "engine", "job", "key"], "type": "string"},
        {"type": "null"},
    ]
    assert usage.output_schema == UsageReport.model_json_schema()


@pytest.mark.parametrize("peer", PEERS)
async def test_text_to_speech_returns_the_url_as_text_and_the_call_as_structured_content(
    peer: str, fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect(peer, api_env(fake_aimlapi), monkeypatch) as client:
        result = await client.call_tool(
            "text_to_speech", {"text": "Hello there", "voice": "ava song", "format": "mp3"}
        )

    (request,) = fake_aimlapi.tts_requests
    assert request.json == {
        "model": DEFAULT_MODEL,
        "text": "Hello there",
        "format": "mp3",
        "voice": "Ava Song",
    }
    (url,) = fake_aimlapi.issued
    assert result.is_error is False
    structured = dict(result.structured_content or {})
    request_id = structured.pop("request_id")
    assert isinstance(request_id, str) and request_id
    assert structured == {
        "audio_url": url,
        "format": "mp3",
        "voice": "Ava Song",
        "model": DEFAULT_MODEL,
        "characters": 11,
        "credits_used": 11 * 125,
        "usd_spent": 11 * 125 / 2_000_000,
        "engine": "aimlapi",
        "cached": False,
        "message": text_of(result),
    }
    assert text_of(result) == (
        f"Speech generated {DEFAULT_MODEL}: {url} (voice 'Ava Song', mp3, 1,375 credits)."
    )


@pytest.mark.parametrize("peer", PEERS)
async def test_list_voices_and_the_resource_give_the_catalogue_with_the_default(
    peer: str, fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect(peer, api_env(fake_aimlapi), monkeypatch) as client:
        result = await client.call_tool("list_voices", {})
        resources = (await client.list_resources()).resources
        read = await client.read_resource("octave://voices")

    assert result.is_error is False
    assert result.structured_content == ALL_VOICES.model_dump()
    assert text_of(result).startswith(
        f"27 voices for {DEFAULT_MODEL}: Vince Douglas (default), Male English Actor, Ava Song,"
    )
    assert text_of(result).endswith("Spanish Instructor, Charming Cowgirl.")
    assert sorted((str(r.uri), r.name, r.mime_type) for r in resources) == [
        ("octave://models", "model_catalogue", "application/json"),
        ("octave://usage", "usage_report", "application/json"),
        ("octave://voices", "voice_catalogue", "application/json"),
        ("ui://octave-tools/player.html", "speech_player", "text/html;profile=mcp-app"),
    ]
    (contents,) = read.contents
    assert contents.mime_type == "application/json"
    assert json.loads(getattr(contents, "text", "")) == ALL_VOICES.model_dump()
    assert fake_aimlapi.requests == []


@pytest.mark.parametrize("peer", PEERS)
async def test_an_unknown_voice_is_a_tool_error_with_suggestions_and_costs_nothing(
    peer: str, fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalogue = catalogue_for(DEFAULT_MODEL)
    with pytest.raises(ValueError) as expected:
        catalogue.resolve("Ava Sung")

    async with connect(peer, api_env(fake_aimlapi), monkeypatch) as client:
        result = await client.call_tool("text_to_speech", {"text": "Hi", "voice": "Ava Sung"})

    assert result.is_error is True
    assert result.structured_content is None
    assert text_of(result) == TOOL_ERROR + str(expected.value)
    assert "Did you mean 'Ava Song'?" in text_of(result)
    assert fake_aimlapi.requests == []


@pytest.mark.parametrize("peer", PEERS)
async def test_without_a_key_the_server_starts_lists_and_explains_how_to_set_it(
    peer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError) as expected:
        Settings.load(environ={}).require_key()

    async with connect(peer, {"OCTAVE_TOOLS_ENGINE": "aimlapi"}, monkeypatch) as client:
        names = [tool.name for tool in (await client.list_tools()).tools]
        voices = await client.call_tool("list_voices", {})
        result = await client.call_tool("text_to_speech", {"text": "Hi"})

    assert names == ["text_to_speech", "text_to_dialogue", "list_voices", "usage"]
    assert voices.is_error is False
    assert result.is_error is True
    assert text_of(result) == TOOL_ERROR + str(expected.value)
    assert "AIMLAPI_API_KEY" in text_of(result)


@pytest.mark.parametrize("peer", PEERS)
async def test_progress_is_reported_to_a_client_that_asks(
    peer: str, fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with connect(peer, api_env(fake_aimlapi), monkeypatch) as client:
        result = await client.call_tool(
            "text_to_speech", {"text": "Hello"}, progress_callback=on_progress
        )

    assert result.is_error is False
    assert seen == [(0, 1, "Generating speech"), (1, 1, "Speech ready")]


# ---------------------------------------------------------------- errors (in memory)


async def test_the_server_instructions_tell_a_model_how_to_use_the_tools(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    server = create_server(api_key="k", base_url=fake_aimlapi.base_url, engine="aimlapi")
    async with Client(server) as client:
        instructions = client.instructions

    assert instructions.startswith(
        "octave-tools speaks text aloud: text_to_speech turns text into audio with "
        f"{DEFAULT_MODEL} and returns a URL of the audio file."
    )
    for phrase in ("list_voices", "Vince Douglas", "wav or mp3", "credits"):
        assert phrase in instructions


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            401,
            {"message": "Invalid key sk-canary-4f9a1c7e2b"},
            "The API key was rejected (401: Invalid key **********). Check AIMLAPI_API_KEY: it "
            "must be a valid AIML API key (https://aimlapi.com/app/keys).",
        ),
        (
            503,
            {"message": "Service Unavailable"},
            "The API failed (503: Service Unavailable). This is usually temporary; try again "
            "later.",
        ),
        (
            404,
            {"message": "Model hume/octave-2 not found or deprecated."},
            "The API does not know model 'hume/octave-2' (404: Model hume/octave-2 not found or "
            "deprecated.); it may be retired. Set OCTAVE_TOOLS_MODEL to a current "
            "text-to-speech model.",
        ),
    ],
)
async def test_api_failures_are_tool_errors_with_the_actionable_message_and_never_the_key(
    status: int, body: dict[str, str], expected: str
) -> None:
    key = "sk-canary-4f9a1c7e2b"
    with FakeAIMLAPI(api_key=key) as api:
        api.respond(status, body)
        server = create_server(api_key=key, base_url=api.base_url, engine="aimlapi", max_retries=0)
        async with Client(server) as client:
            result = await client.call_tool("text_to_speech", {"text": "Hi"})

    assert result.is_error is True
    assert text_of(result) == TOOL_ERROR + expected
    assert key not in result.model_dump_json()


async def test_an_unexpected_failure_is_a_tool_error_without_its_details() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("internal detail sk-canary-4f9a1c7e2b")

    http = httpx.AsyncClient(transport=httpx.MockTransport(broken))
    server = create_server(api_key="sk-canary-4f9a1c7e2b", engine="aimlapi", http_client=http)
    async with http, Client(server) as client:
        result = await client.call_tool("text_to_speech", {"text": "Hi"})

    assert result.is_error is True
    assert text_of(result) == TOOL_ERROR + (
        "octave-tools failed unexpectedly (RuntimeError); the server log has the details. "
        "Retrying will probably not help."
    )


async def test_an_unknown_model_lists_no_voices_and_passes_voices_through(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    server = create_server(
        api_key=fake_aimlapi.api_key,
        base_url=fake_aimlapi.base_url,
        engine="aimlapi",
        model="acme/tts-9",
    )
    async with Client(server) as client:
        result = await client.call_tool("list_voices", {})

    assert result.structured_content == {
        "model": "acme/tts-9",
        "default": None,
        "voices": [],
        "custom_voices": False,
        "custom_voice_max_chars": None,
    }
    assert text_of(result) == (
        "octave-tools has no voice list for model 'acme/tts-9': pass a voice name that model "
        "accepts, or leave voice out for its default."
    )


async def test_a_configured_default_voice_is_the_one_listed_described_and_used(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    server = create_server(
        api_key=fake_aimlapi.api_key,
        base_url=fake_aimlapi.base_url,
        engine="aimlapi",
        voice="french chef",
    )
    async with Client(server) as client:
        tts = next(t for t in (await client.list_tools()).tools if t.name == "text_to_speech")
        voices = await client.call_tool("list_voices", {})
        spoken = await client.call_tool("text_to_speech", {"text": "Bonjour"})

    assert tts.input_schema["properties"]["voice"]["description"].endswith(
        "Leave it out for the default, French Chef. Case and spacing are forgiven."
    )
    assert voices.structured_content == {**ALL_VOICES.model_dump(), "default": "French Chef"}
    assert "Vince Douglas, " in text_of(voices)
    assert "French Chef (default), " in text_of(voices)
    assert fake_aimlapi.tts_requests[0].json["voice"] == "French Chef"
    assert spoken.structured_content["voice"] == "French Chef"


async def test_a_given_client_is_used_and_left_open(fake_aimlapi: FakeAIMLAPI) -> None:
    async with AsyncOctaveClient(
        api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url, engine="aimlapi"
    ) as octave:
        async with Client(create_server(octave)) as client:
            result = await client.call_tool("text_to_speech", {"text": "One"})
        after = await octave.synthesize("Two")

    assert result.is_error is False
    assert [r.json["text"] for r in fake_aimlapi.tts_requests] == ["One", "Two"]
    assert after.audio_url in fake_aimlapi.issued


def test_create_server_rejects_a_bad_setting_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="OCTAVE_TOOLS_TIMEOUT must be a positive number"):
        create_server()


# ---------------------------------------------------------------- cancellation


async def test_a_cancelled_call_stops_the_upstream_request_in_memory(
    stalling_api: StallingAPI,
) -> None:
    server = create_server(
        api_key="k", base_url=stalling_api.base_url, engine="aimlapi", timeout=600
    )
    async with Client(server) as client:
        await cancel_mid_call(client, stalling_api)
        assert (await client.call_tool("list_voices", {})).is_error is False


async def test_a_cancelled_call_stops_the_upstream_request_over_stdio(
    stalling_api: StallingAPI,
) -> None:
    env = api_env(stalling_api, OCTAVE_TOOLS_TIMEOUT="600")
    params = StdioServerParameters(command=SERVER[0], args=SERVER[1:], env=child_env(env))
    async with Client(params) as client:
        # Checked while the server process still runs: only the cancellation closes it.
        await cancel_mid_call(client, stalling_api)
        assert (await client.call_tool("list_voices", {})).is_error is False


# ---------------------------------------------------------------- stdio specifics


def test_stdio_writes_only_protocol_messages_to_stdout_and_logs_to_stderr(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    server = ServerProcess(["--log-level", "DEBUG"], api_env(fake_aimlapi), stdin=True)
    try:
        server.send(INITIALIZE)
        assert server.response(1)["result"]["serverInfo"]["name"] == "octave-tools"
        server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        call = {"name": "text_to_speech", "arguments": {"text": "Hello"}}
        server.send(
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {**call, "_meta": {"progressToken": "tok-1"}},
            }
        )
        with_token = server.response(2)
        server.send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": call})
        without_token = server.response(3)
        server.close_stdin()
        assert server.proc.wait(20) == 0
    finally:
        server.stop()

    messages = [json.loads(line) for line in server.stdout_lines]
    assert all(m["jsonrpc"] == "2.0" for m in messages)
    assert with_token["result"]["isError"] is False
    assert without_token["result"]["isError"] is False
    progress = [m["params"] for m in messages if m.get("method") == "notifications/progress"]
    assert progress == [
        {"progressToken": "tok-1", "progress": 0.0, "total": 1.0, "message": "Generating speech"},
        {"progressToken": "tok-1", "progress": 1.0, "total": 1.0, "message": "Speech ready"},
    ]
    assert " DEBUG " in server.stderr
    assert fake_aimlapi.api_key not in server.stderr


def test_importing_the_mcp_face_does_not_load_langchain() -> None:
    code = "import sys, octave_tools.mcp; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {m.split(".")[0] for m in out.stdout.split()}
    assert loaded & {"langchain", "langchain_core", "langgraph"} == set()


def test_a_server_starts_and_lists_its_tools_without_the_http_client_stack() -> None:
    # httpx costs a stdio server's cold start up to 150 ms; the first call loads it.
    code = (
        "import asyncio, sys\n"
        "from mcp import Client\n"
        "from octave_tools.mcp import create_server\n"
        "async def main():\n"
        "    async with Client(create_server(engine='aimlapi')) as client:\n"
        "        names = [t.name for t in (await client.list_tools()).tools]\n"
        "    print(sorted(names), 'httpx' in sys.modules)\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=child_env({})
    )
    assert out.stdout.split("] ")[1].strip() == "False", out.stdout


# ---------------------------------------------------------------- http specifics


def test_http_refuses_a_public_bind_without_a_token() -> None:
    run = subprocess.run(
        [*SERVER, "--transport", "http", "--host", "0.0.0.0", "--port", "0"],
        env=get_default_environment() | child_env({}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 3
    assert run.stdout == ""
    assert run.stderr == (
        "octave-tools-mcp: error: Refusing to serve on 0.0.0.0 without authentication: "
        "anyone who can reach it could spend your credits. Set OCTAVE_TOOLS_SERVER_TOKEN to a "
        "long random secret (clients send 'Authorization: Bearer <token>'), bind 127.0.0.1, or "
        "pass --insecure-no-auth if something else guards the port.\n"
    )


def test_http_refuses_a_short_token() -> None:
    run = subprocess.run(
        [*SERVER, "--transport", "http", "--port", "0"],
        env=get_default_environment() | child_env({ENV_SERVER_TOKEN: "hunter2"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 3
    assert run.stderr.startswith(
        "octave-tools-mcp: error: OCTAVE_TOOLS_SERVER_TOKEN is too short (7 characters)"
    )
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-0123456789abcdef", "Basic x"])
def test_http_answers_401_without_the_right_bearer_token(authorization: str | None) -> None:
    token = secrets.token_urlsafe(32)
    headers = dict(MCP_HEADERS)
    if authorization is not None:
        headers["Authorization"] = authorization
    with http_server({ENV_SERVER_TOKEN: token}) as (url, server):
        response = httpx.post(url, json=INITIALIZE, headers=headers)
        accepted = httpx.post(
            url, json=INITIALIZE, headers={**headers, "Authorization": f"Bearer {token}"}
        )

    assert "bearer token required" in server.stderr
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="octave-tools"'
    assert response.json() == {
        "error": "invalid_token",
        "error_description": "Missing, wrong, revoked or expired token. Send "
        "'Authorization: Bearer <OCTAVE_TOOLS_SERVER_TOKEN or your client key>'.",
    }
    assert accepted.status_code == 200


def test_http_keeps_dns_rebinding_protection_on() -> None:
    with http_server({}) as (url, server):
        response = httpx.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Host": "evil.example"})
        from_page = httpx.post(
            url, json=INITIALIZE, headers={**MCP_HEADERS, "Origin": "http://evil.example"}
        )

    assert "no authentication" in server.stderr
    assert (response.status_code, response.text) == (421, "Invalid Host header")
    assert (from_page.status_code, from_page.text) == (403, "Invalid Origin header")


async def test_http_on_loopback_needs_no_token(fake_aimlapi: FakeAIMLAPI) -> None:
    with http_server(api_env(fake_aimlapi)) as (url, _):
        async with Client(url) as client:
            result = await client.call_tool("text_to_speech", {"text": "Hi"})

    assert result.is_error is False
    assert result.structured_content["audio_url"] in fake_aimlapi.issued


def test_dns_rebinding_protection_allows_only_the_names_of_the_bind() -> None:
    loopback = ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"]
    assert _transport_security("127.0.0.1", None).allowed_hosts == loopback

    public = _transport_security("192.0.2.7", "tts.example.org, proxy.example.org:8443")
    assert public.enable_dns_rebinding_protection is True
    assert public.allowed_hosts == [
        *loopback,
        "192.0.2.7",
        "192.0.2.7:*",
        "tts.example.org",
        "tts.example.org:*",
        "proxy.example.org:8443",
    ]
    assert "https://tts.example.org" in public.allowed_origins
    assert "http://evil.example" not in public.allowed_origins

    wildcard = _transport_security("0.0.0.0", None)
    assert wildcard.allowed_hosts == [*loopback, socket.gethostname(), f"{socket.gethostname()}:*"]


def test_the_stdio_client_example_runs_offline() -> None:
    example = Path(__file__).parent.parent / "examples" / "mcp_client.py"
    done = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[:6] == [
        "[tool] text_to_speech: read_only_hint=False, destructive_hint=False, "
        "idempotent_hint=False, open_world_hint=True",
        "[tool] text_to_dialogue: read_only_hint=False, destructive_hint=False, "
        "idempotent_hint=False, open_world_hint=True",
        "[tool] list_voices: read_only_hint=True, destructive_hint=False, "
        "idempotent_hint=True, open_world_hint=False",
        "[tool] usage: read_only_hint=True, destructive_hint=False, "
        "idempotent_hint=True, open_world_hint=False",
        "[call] text_to_speech {'text': 'Gather round, and I will tell you a story.', "
        "'voice': 'Campfire Narator'}",
        "[error] Error executing tool text_to_speech: Unknown voice 'Campfire Narator' for "
        "model 'hume/octave-2'. Did you mean 'Campfire Narrator' or 'Booming British Narrator' "
        "or 'Booming American Narrator'? Call list_voices (or run `octave-tools voices`) for "
        "the full list.",
    ]
    assert re.fullmatch(
        r"\[result\] Speech generated hume/octave-2: http://127\.0\.0\.1:\d+/files/[0-9a-f]{32}"
        r"\.wav \(voice 'Campfire Narrator', wav, 5,250 credits\)\.",
        lines[7],
    )
    assert lines[8].startswith("[structured] {'audio_url': 'http://127.0.0.1:")


@pytest.mark.parametrize("peer", PEERS)
async def test_usage_tool_and_resource_report_the_ledger(
    peer: str, fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect(peer, api_env(fake_aimlapi), monkeypatch) as client:
        await client.call_tool("text_to_speech", {"text": "Hello", "voice": "Ava Song"})
        await client.call_tool("text_to_speech", {"text": "Hi"})
        result = await client.call_tool("usage", {"since": "1h", "by": "voice"})
        read = await client.read_resource("octave://usage")
        bad = await client.call_tool("usage", {"since": "soon"})

    assert result.is_error is False
    groups = result.structured_content["groups"]  # type: ignore[index]
    assert [(g["key"], g["calls"], g["credits"]) for g in groups] == [
        ("Ava Song", 1, 625.0),
        ("Vince Douglas", 1, 250.0),
    ]
    assert result.structured_content["total_credits"] == 875.0  # type: ignore[index]
    assert "Ava Song" in text_of(result)
    (contents,) = read.contents
    assert json.loads(getattr(contents, "text", ""))["total_calls"] == 2
    assert bad.is_error is True
    assert "since must look like 7d" in text_of(bad)


async def test_a_spend_limit_comes_back_as_a_tool_error_before_any_request(
    fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = api_env(fake_aimlapi, OCTAVE_TOOLS_MAX_CREDITS="1000")
    async with connect("memory", env, monkeypatch) as client:
        first = await client.call_tool("text_to_speech", {"text": "x" * 8})  # 1,000 credits
        second = await client.call_tool("text_to_speech", {"text": "one more"})

    assert first.is_error is False
    assert second.is_error is True
    assert text_of(second).startswith(TOOL_ERROR + "Spend limit reached: this call would cost")
    assert "OCTAVE_TOOLS_MAX_CREDITS" in text_of(second)
    assert len(fake_aimlapi.tts_requests) == 1
