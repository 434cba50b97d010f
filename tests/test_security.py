"""Security: a planted key never comes back out of any face, and the HTTP gate holds.

One unique key is planted per run. The fake API is made to echo it in every way an
upstream can (error messages, bodies without audio, an audio URL, past the excerpt
cut), and every face is driven through those answers: the core clients, the LangChain
tools (messages, callbacks, traces, serialisation), the MCP server in memory and over
HTTP (results, resources, server log at DEBUG), the CLI at every verbosity, the
reprs of settings, clients and tools, and the files written (ledger, audio). Then
everything captured is scanned for the key and for any 8-character piece of it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from harness import INITIALIZE, MCP_HEADERS, api_env, cli_process, http_server, subprocess_env
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.load import dumps
from langchain_core.messages import ToolCall
from mcp import Client

from octave_tools import AsyncOctaveClient, OctaveClient, OctaveError
from octave_tools import _mcp_http as octave_http
from octave_tools._mcp_http import ENV_SERVER_TOKEN
from octave_tools.langchain import OctaveToolkit, OctaveTTSTool, OctaveVoicesTool
from octave_tools.mcp import create_server
from octave_tools.testing import FakeAIMLAPI, Fault

SECRET_PART = secrets.token_hex(10)
KEY = f"sk-planted-{SECRET_PART}"
PIECES = [SECRET_PART[i : i + 8] for i in range(len(SECRET_PART) - 7)]


def leaks(text: str) -> bool:
    """True if ``text`` holds the key or any 8-character piece of its random part."""
    return KEY in text or any(piece in text for piece in PIECES)


# Each way an upstream can hand the key back, applied to the next call(s).
ECHOES: dict[str, Callable[[FakeAIMLAPI], object]] = {
    "success": lambda api: None,
    "401 echo": lambda api: api.fail(401, message=f"Invalid key {KEY}"),
    "500 echo, retried": lambda api: api.fail(500, message=f"crash for {KEY}", times=2),
    "429 echo, far retry-after": lambda api: api.fail(
        429, retry_after="3600", message=f"slow down {KEY}"
    ),
    "201 without url": lambda api: api.respond(201, {"meta": {"note": f"key {KEY}"}}),
    "201 not json": lambda api: api.respond(201, f"<html>{KEY}</html>"),
    "echo past the excerpt cut": lambda api: api.respond(
        400, (" " * 780 + KEY).encode(), content_type="text/plain"
    ),
    "key in the audio url": lambda api: api.respond(
        201, {"audio": {"url": f"https://cdn.example/a.wav?k={KEY}"}}
    ),
    "dropped": lambda api: api.drop(times=2),
    "slow": lambda api: api.inject(Fault("ok", delay=2), times=2),
}


@pytest.fixture
def planted() -> Iterator[FakeAIMLAPI]:
    with FakeAIMLAPI(api_key=KEY) as api:
        yield api


def options(api: FakeAIMLAPI) -> dict[str, Any]:
    return {
        "api_key": KEY,
        "base_url": api.base_url,
        "engine": "aimlapi",
        "max_retries": 1,
        "timeout": 1.0,
    }


def chain_texts(exc: BaseException | None) -> list[str]:
    """Everything a traceback or a logger could print about ``exc`` and its chain."""
    texts: list[str] = []
    while exc is not None:
        texts += [str(exc), repr(exc), *map(repr, vars(exc).values())]
        exc = exc.__cause__ or exc.__context__
    return texts


class Recorder(BaseCallbackHandler):
    """Every callback argument, as text."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_tool_start(
        self, serialized: dict[str, Any], input_str: str, *, run_id: UUID, **kw: Any
    ) -> None:
        self.seen.append(json.dumps([serialized, input_str, kw], default=repr))

    def on_tool_end(self, output: Any, *, run_id: UUID, **kw: Any) -> None:
        self.seen.append(repr(output) + json.dumps(kw, default=repr))

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kw: Any) -> None:
        self.seen += [*chain_texts(error), json.dumps(kw, default=repr)]


def written_files(root: Path) -> dict[str, str]:
    """Every file under ``root`` (ledger, audio), by name, as text."""
    return {p.name: p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- in-process faces


async def test_the_key_never_leaves_the_core_langchain_or_mcp_faces(
    planted: FakeAIMLAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx and the SDK included
    seen: list[str] = []
    opts = options(planted)
    sync_client = OctaveClient(**opts)
    async_client = AsyncOctaveClient(**opts)
    tool = OctaveTTSTool(**opts)
    toolkit = OctaveToolkit(**opts)
    recorder = Recorder()
    seen += [repr(x) for x in (sync_client, async_client, sync_client.settings, tool, toolkit)]
    seen += [
        str(sync_client.settings),
        dumps(tool),
        json.dumps(tool.model_dump(), default=repr),
        repr(toolkit),
    ]
    seen += [repr(t) for t in toolkit.get_tools()] + [repr(OctaveVoicesTool(**opts))]

    async with Client(create_server(**opts)) as mcp_client:
        seen.append(json.dumps([t.model_dump() for t in (await mcp_client.list_tools()).tools]))
        seen.append(str(mcp_client.instructions))
        for name, echo in ECHOES.items():
            for face in ("sync", "async", "langchain", "langchain-async", "mcp"):
                echo(planted)
                try:
                    if face == "sync":
                        seen.append(repr(await asyncio.to_thread(sync_client.synthesize, "Hi")))
                    elif face == "async":
                        seen.append(repr(await async_client.synthesize("Hi")))
                    elif face.startswith("langchain"):
                        call = ToolCall(
                            name=tool.name, args={"text": "Hi"}, id=name, type="tool_call"
                        )
                        config: Any = {"callbacks": [recorder]}
                        if face == "langchain":
                            message = await asyncio.to_thread(tool.invoke, call, config)
                        else:
                            message = await tool.ainvoke(call, config)
                        seen.append(repr(message) + json.dumps(message.artifact, default=repr))
                    else:
                        result = await mcp_client.call_tool("text_to_speech", {"text": "Hi"})
                        seen.append(result.model_dump_json())
                except OctaveError as exc:
                    seen += chain_texts(exc)
                planted.reset()
        for uri in ("octave://voices", "octave://usage"):
            seen.append((await mcp_client.read_resource(uri)).model_dump_json())
        seen.append((await mcp_client.call_tool("usage", {"since": "1h"})).model_dump_json())
        seen.append((await mcp_client.call_tool("list_voices", {})).model_dump_json())
    sync_client.close()
    await async_client.aclose()

    seen += recorder.seen + [caplog.text] + [r.getMessage() for r in caplog.records]
    files = written_files(tmp_path)
    assert any(name.startswith("ledger") for name in files)  # the ledger was written
    seen += list(files.values())
    assert len(recorder.seen) >= 2 * len(ECHOES)
    assert [text[:300] for text in seen if leaks(text)] == []


# ---------------------------------------------------------------- subprocess faces


def _cli_env(api: FakeAIMLAPI) -> dict[str, str]:
    return subprocess_env(api, OCTAVE_TOOLS_TIMEOUT="1", OCTAVE_TOOLS_MAX_RETRIES="1")


def test_the_key_never_leaves_the_cli_at_any_verbosity(
    planted: FakeAIMLAPI, tmp_path: Path
) -> None:
    env = _cli_env(planted)
    runs: list[tuple[str, list[str]]] = []
    for name in ECHOES:
        runs.append((name, ["-vv", "say", "Hi", "--json"]))
        if name in ("success", "500 echo, retried", "201 not json"):
            out = str(tmp_path / f"{len(runs)}.wav")
            runs += [(name, ["say", "Hi"]), (name, ["-v", "say", "Hi", "--out", out])]
    outputs: list[str] = []
    for name, argv in runs:
        ECHOES[name](planted)
        done = cli_process(*argv, env=env, text=True)
        outputs += [done.stdout, done.stderr]
        assert "Traceback" not in done.stderr, (name, done.stderr)
        planted.reset()
    for argv in (["-vv", "voices", "--json"], ["-vv", "usage", "--json"]):
        done = cli_process(*argv, env=env, text=True)
        assert done.returncode == 0, done.stderr
        outputs += [done.stdout, done.stderr]

    assert "DEBUG " in "".join(outputs)
    assert [text[:300] for text in outputs if leaks(text)] == []


async def test_the_key_never_leaves_the_http_server_results_or_its_debug_log(
    planted: FakeAIMLAPI,
) -> None:
    env = api_env(planted, OCTAVE_TOOLS_TIMEOUT="1", OCTAVE_TOOLS_MAX_RETRIES="1")
    seen: list[str] = []
    with http_server(env, "--log-level", "DEBUG") as (url, server):
        async with Client(url) as client:
            for echo in ECHOES.values():
                echo(planted)
                seen.append(
                    (await client.call_tool("text_to_speech", {"text": "Hi"})).model_dump_json()
                )
                planted.reset()
            seen.append((await client.read_resource("octave://usage")).model_dump_json())
        log = server.stderr

    assert " DEBUG " in log
    assert "Traceback" not in log
    assert [text[:300] for text in [*seen, log] if leaks(text)] == []


# ---------------------------------------------------------------- the HTTP gate


async def _through_gate(token: str, authorization: str | None) -> tuple[int, bool]:
    """Status from the bearer gate for one request, and whether the app behind it ran."""
    reached: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    gate = octave_http._BearerTokenGate(app, token)
    headers = {"Authorization": authorization} if authorization is not None else {}
    transport = httpx.ASGITransport(app=gate)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        response = await http.post("/mcp", headers=headers)
    return response.status_code, bool(reached)


async def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_urlsafe(32)
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(octave_http.hmac, "compare_digest", recording)

    right = await _through_gate(token, f"Bearer {token}")
    lower = await _through_gate(token, f"bearer {token}")
    prefix = await _through_gate(token, f"Bearer {token[:-1]}")
    longer = await _through_gate(token, f"Bearer {token}x")

    assert right == (200, True)
    assert lower == (200, True)
    assert prefix == (401, False)
    assert longer == (401, False)
    # Every presented credential went through hmac.compare_digest, none through ==.
    assert [b for _, b in compared] == [token.encode()] * 4
    assert [a for a, _ in compared] == [
        token.encode(),
        token.encode(),
        token[:-1].encode(),
        (token + "x").encode(),
    ]


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer ", "Token abc", "Basic eA=="]
)
async def test_the_gate_refuses_malformed_authorization(authorization: str | None) -> None:
    assert await _through_gate(secrets.token_urlsafe(32), authorization) == (401, False)


def test_a_right_token_does_not_bypass_host_and_origin_checks() -> None:
    token = secrets.token_urlsafe(32)
    auth = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    with http_server({ENV_SERVER_TOKEN: token}) as (url, _):
        foreign_host = httpx.post(url, json=INITIALIZE, headers={**auth, "Host": "evil.example"})
        foreign_origin = httpx.post(
            url, json=INITIALIZE, headers={**auth, "Origin": "http://evil.example"}
        )
        wrong = httpx.post(
            url, json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": "Bearer guess-123"}
        )
        accepted = httpx.post(url, json=INITIALIZE, headers=auth)

    assert foreign_host.status_code == 421
    assert foreign_origin.status_code == 403
    assert wrong.status_code == 401
    assert "guess-123" not in wrong.text  # the refusal does not echo what was sent
    assert token not in wrong.text + foreign_host.text + foreign_origin.text
    assert accepted.status_code == 200
