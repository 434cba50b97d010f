"""Regression tests for the MCP face's defects (issue 12 item 3, issue 16 items 14b-20):
the import graph, unknown and invalid arguments, closed schemas for OpenAI's strict mode,
resource names, the structured result, and the HTTP host under slow, idle, garbage and
too many clients."""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import logging
import select
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import INITIALIZE, MCP_HEADERS, api_env, http_server, text_of
from langchain_core.messages import ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from mcp import Client

from octave_tools._mcp_http import _Demote, _listen
from octave_tools.langchain import OctaveDialogueTool, OctaveTTSTool
from octave_tools.mcp import SpeechResult, create_server
from octave_tools.testing import FakeAIMLAPI

PACKAGE = Path(__file__).parent.parent / "octave_tools"
TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


# ---------------------------------------------------------------- issue 12 item 3: structure


def _imports_of(path: Path) -> set[str]:
    """The octave_tools modules ``path`` imports anywhere (lazy ones included), except
    under ``if __name__ == "__main__":``, which only runs when the file is the program."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = path.stem if path.stem != "__init__" else ""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = node.module or ""
                names = [base] if base else [alias.name for alias in node.names]
                found.update(n.split(".")[0] for n in names)
            elif node.module and node.module.startswith("octave_tools."):
                found.add(node.module.split(".")[1])
            elif node.module == "octave_tools":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("octave_tools."):
                    found.add(alias.name.split(".")[1])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    return {name for name in found if name in modules and name != own}


def test_the_package_has_no_import_cycle_lazy_imports_included() -> None:
    graph = {p.stem: _imports_of(p) for p in PACKAGE.glob("*.py")}
    cycles = []

    def walk(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in trail:
                cycles.append([*trail[trail.index(nxt) :], nxt])
            else:
                walk(nxt, [*trail, nxt])

    for start in graph:
        walk(start, [start])
    assert cycles == []
    assert "cli" not in graph["mcp"]
    assert graph["_mcp_http"] >= {"mcp"}
    assert "mcp" not in graph["cli"]  # the CLI reaches the face through its host only


def test_entry_points_are_leaves_and_the_script_skips_the_face_module() -> None:
    (script,) = [
        e
        for e in importlib.metadata.entry_points(group="console_scripts")
        if e.name == "octave-tools-mcp"
    ]
    assert script.value == "octave_tools.cli:serve_main"
    importers = [p.stem for p in PACKAGE.glob("*.py") if "__main__" in _imports_of(p)]
    assert importers == []


def test_python_m_octave_tools_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "octave_tools", "serve", "--transport", "carrier-pigeon"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("octave-tools: error: argument --transport: invalid choice")


def test_python_m_octave_tools_mcp_hands_over_before_running_the_module_body() -> None:
    # Before: `python -m octave_tools.mcp` ran the whole module (SDK imports included) as
    # __main__, then the CLI imported it again as octave_tools.mcp.
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "octave_tools.mcp", "--transport", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "octave-tools-mcp: error: argument --transport: invalid choice" in done.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()]
    assert "octave_tools.cli" in imported
    assert "mcp.server.mcpserver" not in imported


def test_importing_the_face_does_not_load_the_cli_or_the_host() -> None:
    code = "import sys, octave_tools.mcp; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert "octave_tools.mcp" in loaded
    assert loaded & {"octave_tools.cli", "octave_tools._mcp_http"} == set()


# ---------------------------------------------------------------- 14b: unknown arguments


async def test_an_unknown_argument_is_a_tool_error_naming_the_valid_ones_and_costs_nothing(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    server = create_server(
        api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url, engine="aimlapi"
    )
    async with Client(server) as client:
        typo = await client.call_tool("text_to_speech", {"text": "Hello", "vioce": "Ava Song"})
        two = await client.call_tool("text_to_speech", {"text": "Hi", "speed": 2, "pitch": 1})
        voices = await client.call_tool("list_voices", {"model": "x"})
        usage = await client.call_tool("usage", {"period": "1d"})

    assert typo.is_error is True
    assert text_of(typo) == (
        "Error executing tool text_to_speech: unknown argument 'vioce'; text_to_speech takes "
        "only: text, voice, format."
    )
    assert text_of(two) == (
        "Error executing tool text_to_speech: unknown arguments 'speed', 'pitch'; "
        "text_to_speech takes only: text, voice, format."
    )
    assert text_of(voices) == (
        "Error executing tool list_voices: unknown argument 'model'; list_voices takes no "
        "arguments."
    )
    assert text_of(usage) == (
        "Error executing tool usage: unknown argument 'period'; usage takes only: since, by."
    )
    assert fake_aimlapi.requests == []


async def test_invalid_arguments_read_as_one_line_per_field_without_pydantic_links(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    server = create_server(
        api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url, engine="aimlapi"
    )
    async with Client(server) as client:
        missing = await client.call_tool("text_to_speech", {})
        wrong = await client.call_tool("text_to_speech", {"text": 5, "voice": ["a"]})
        grouping = await client.call_tool("usage", {"by": "week"})

    assert text_of(missing) == (
        "Error executing tool text_to_speech: invalid arguments: text: Field required. "
        "Correct them and call the tool again."
    )
    assert text_of(wrong) == (
        "Error executing tool text_to_speech: invalid arguments: text: Input should be a valid "
        "string; voice: Input should be a valid string. Correct them and call the tool again."
    )
    assert text_of(grouping) == (
        "Error executing tool usage: by must be one of day, model, voice, engine, job, key; "
        "got 'week'."
    )
    for result in (missing, wrong, grouping):
        assert result.is_error is True
        assert "pydantic" not in text_of(result)
    assert fake_aimlapi.requests == []


def test_langchain_rejects_an_unknown_argument_naming_the_valid_ones(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    tool = OctaveTTSTool(
        api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url, engine="aimlapi"
    )
    call = {"type": "tool_call", "id": "c1", "name": tool.name}
    message = tool.invoke({**call, "args": {"text": "Hello", "vioce": "Ava Song"}})

    assert isinstance(message, ToolMessage)
    assert message.status == "error"
    assert message.content == (
        "Error: unknown argument 'vioce'; text_to_speech takes only: text, voice, format."
    )
    assert fake_aimlapi.requests == []


# ---------------------------------------------------------------- 18-20: names, schemas, result


async def test_no_resource_has_the_name_of_a_tool() -> None:
    async with Client(create_server(api_key="k", engine="aimlapi")) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        resources = {r.name for r in (await client.list_resources()).resources}

    assert tools & resources == set()
    assert resources == {"voice_catalogue", "usage_report", "model_catalogue", "speech_player"}


class NotStrict(Exception):
    pass


def openai_strict(schema: dict[str, Any], where: str = "$") -> dict[str, Any]:
    """``schema`` under OpenAI's strict-mode rules, or NotStrict saying why it cannot be.

    Every object is closed (``additionalProperties: false``) and lists every property in
    ``required``; a property that was optional must accept null, since the model will
    always send it; a default may only be null (it is dropped).
    """
    out = dict(schema)
    if out.pop("default", None) is not None:
        raise NotStrict(f"{where}: non-null default {schema['default']!r}")
    if out.get("type") == "object" or "properties" in out:
        if out.get("additionalProperties") is not False:
            raise NotStrict(f"{where}: additionalProperties is not false")
        properties = out.get("properties", {})
        required = set(out.get("required", []))
        for name, sub in properties.items():
            if name not in required and not _nullable(sub):
                raise NotStrict(f"{where}.{name}: optional but not nullable")
        out["properties"] = {
            name: openai_strict(sub, f"{where}.{name}") for name, sub in properties.items()
        }
        out["required"] = list(properties)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in out:
            out[key] = [openai_strict(sub, f"{where}.{key}") for sub in out[key]]
    if "items" in out:
        out["items"] = openai_strict(out["items"], f"{where}[]")
    for key in ("$defs", "definitions"):
        if key in out:
            out[key] = {n: openai_strict(s, f"{where}.{n}") for n, s in out[key].items()}
    return out


def _nullable(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(_nullable(sub) for sub in schema.get("anyOf", []))


def test_the_strict_conversion_rejects_what_openai_rejects() -> None:
    with pytest.raises(NotStrict, match="additionalProperties"):
        openai_strict({"type": "object", "properties": {}})
    with pytest.raises(NotStrict, match="non-null default '7d'"):
        openai_strict(
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {"since": {"type": ["string", "null"], "default": "7d"}},
            }
        )
    with pytest.raises(NotStrict, match=r"\$\.voice: optional but not nullable"):
        openai_strict(
            {"type": "object", "additionalProperties": False, "properties": {"voice": {}}}
        )


async def test_every_tool_schema_converts_to_openai_strict_mode() -> None:
    async with Client(create_server(api_key="k", engine="aimlapi")) as client:
        tools = (await client.list_tools()).tools

    converted = {tool.name: openai_strict(tool.input_schema) for tool in tools}
    assert converted["list_voices"]["properties"] == {}
    assert converted["usage"]["required"] == ["since", "by"]
    assert converted["text_to_speech"]["required"] == ["text", "voice", "format"]
    assert converted["text_to_dialogue"]["required"] == ["lines", "format"]
    assert converted["text_to_dialogue"]["properties"]["lines"]["items"]["required"] == [
        "voice",
        "text",
    ]
    for tool in tools:
        assert tool.input_schema["additionalProperties"] is False


def test_the_langchain_schema_is_closed_and_strict() -> None:
    tool = OctaveTTSTool(api_key="k", engine="aimlapi")
    schema = tool.args_schema.model_json_schema()  # type: ignore[union-attr]

    assert schema["additionalProperties"] is False
    assert openai_strict(schema)["required"] == ["text", "voice", "format"]
    strict = convert_to_openai_tool(tool, strict=True)["function"]
    assert openai_strict(strict["parameters"])["required"] == ["text", "voice", "format"]


def test_the_langchain_dialogue_schema_is_closed_and_strict_down_to_each_line() -> None:
    tool = OctaveDialogueTool(api_key="k", engine="aimlapi", models="hume/octave-2,openai/tts-1")
    strict = convert_to_openai_tool(tool, strict=True)["function"]["parameters"]

    converted = openai_strict(strict)
    assert converted["required"] == ["lines", "format"]
    assert converted["properties"]["lines"]["items"]["required"] == ["voice", "text", "model"]


async def test_the_structured_result_alone_says_what_the_url_is(fake_aimlapi: FakeAIMLAPI) -> None:
    server = create_server(
        api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url, engine="aimlapi"
    )
    async with Client(server) as client:
        tts = next(t for t in (await client.list_tools()).tools if t.name == "text_to_speech")
        result = await client.call_tool("text_to_speech", {"text": "Hello"})

    (url,) = fake_aimlapi.issued
    assert result.structured_content["message"] == (
        f"Speech generated hume/octave-2: {url} (voice 'Vince Douglas', wav, 625 credits)."
    )
    assert tts.output_schema == SpeechResult.model_json_schema()
    assert "message" in tts.output_schema["required"]
    SpeechResult.model_validate(result.structured_content)


# ---------------------------------------------------------------- 15: TCP_NODELAY


async def test_accepted_connections_have_nagle_off() -> None:
    listener = _listen("127.0.0.1", 0)
    accepted: asyncio.Queue[int] = asyncio.Queue()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.put_nowait(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Probe, sock=listener)
    try:
        port = listener.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        nodelay = await asyncio.wait_for(accepted.get(), 10)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert listener.proto == socket.IPPROTO_TCP
    assert nodelay != 0


def test_a_kept_alive_connection_answers_without_the_nagle_delay() -> None:
    # Nagle plus delayed ACK added ~40 ms to every request on a reused connection; 30 ms
    # is a bound only that breaks, even on a loaded machine.
    with http_server({}) as (url, _), httpx.Client(headers=MCP_HEADERS) as http:
        http.post(url, json=TOOLS_LIST).raise_for_status()
        times = []
        for _ in range(20):
            started = time.perf_counter()
            answer = http.post(url, json=TOOLS_LIST)
            times.append(time.perf_counter() - started)
            assert answer.status_code == 200
    assert statistics.median(times) < 0.030, [round(t * 1000, 1) for t in times]


# ---------------------------------------------------------------- 16: slow, idle and too many


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (reading b""), or None if it did not."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return time.monotonic() - started
    except TimeoutError:
        return None
    except ConnectionResetError:
        return time.monotonic() - started


def test_a_connection_sending_half_a_request_line_is_closed_after_the_timeout() -> None:
    with http_server({}, "--request-timeout", "1") as (url, _):
        with socket.create_connection(("127.0.0.1", _port(url))) as half:
            half.sendall(b"POST /mc")
            closed_after = _closed_within(half, 10)
        with socket.create_connection(("127.0.0.1", _port(url))) as idle:
            idle_after = _closed_within(idle, 10)

    assert closed_after is not None and 0.8 < closed_after < 5
    assert idle_after is not None and 0.8 < idle_after < 5


def test_a_trickling_client_is_closed_though_it_keeps_sending() -> None:
    head = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    with (
        http_server({}, "--request-timeout", "1") as (url, _),
        socket.create_connection(("127.0.0.1", _port(url))) as slow,
    ):
        started = time.monotonic()
        closed = False
        for byte in head * 4:
            try:
                slow.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            poller = select.poll()  # not select: this process may hold over 1,024 descriptors
            poller.register(slow, select.POLLIN)
            if poller.poll(100) and not slow.recv(4096):
                closed = True
                break
            if time.monotonic() - started > 8:
                break
        elapsed = time.monotonic() - started

    assert closed is True
    assert elapsed < 5


def test_a_slow_body_is_cut_off_but_a_slow_tool_call_is_not(fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.delay(2.0)
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "text_to_speech", "arguments": {"text": "Hello"}},
    }
    with http_server(api_env(fake_aimlapi), "--request-timeout", "1") as (url, server):
        with socket.create_connection(("127.0.0.1", _port(url))) as slow:
            slow.sendall(
                b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n{"
            )
            body_closed_after = _closed_within(slow, 10)
        answer = httpx.post(url, json=call, headers=MCP_HEADERS, timeout=30)

    assert body_closed_after is not None and body_closed_after < 5
    assert answer.status_code == 200
    assert '"isError":false' in answer.text
    assert "ERROR" not in server.stderr


def test_requests_over_the_cap_get_503_at_once_and_slots_come_back() -> None:
    head = (
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n{"
    )
    with http_server({}, "--max-requests", "2", "--request-timeout", "30") as (url, _):
        holders = [socket.create_connection(("127.0.0.1", _port(url))) for _ in range(2)]
        try:
            for holder in holders:
                holder.sendall(head)
            time.sleep(0.5)
            busy = httpx.post(url, json=TOOLS_LIST, headers=MCP_HEADERS)
        finally:
            for holder in holders:
                holder.close()
        after = None
        for _ in range(50):
            after = httpx.post(url, json=TOOLS_LIST, headers=MCP_HEADERS)
            if after.status_code == 200:
                break
            time.sleep(0.1)

    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "1"
    assert busy.json() == {
        "error": "server_busy",
        "error_description": "The server is already handling 2 requests; retry in a moment.",
    }
    assert after is not None and after.status_code == 200


def test_get_is_405_not_an_endless_stream_holding_a_request_slot() -> None:
    with http_server({}, "--max-requests", "1") as (url, _):
        streams = [httpx.get(url, headers=MCP_HEADERS, timeout=10) for _ in range(3)]
        after = httpx.post(url, json=TOOLS_LIST, headers=MCP_HEADERS, timeout=10)

    assert [s.status_code for s in streams] == [405, 405, 405]
    assert streams[0].headers["allow"] == "POST"
    assert streams[0].json()["error"] == "method_not_allowed"
    assert after.status_code == 200


def test_an_oversized_body_is_refused_before_it_is_read() -> None:
    with (
        http_server({}) as (url, _),
        socket.create_connection(("127.0.0.1", _port(url))) as big,
    ):
        big.sendall(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\n"
            b"Content-Length: 104857600\r\n\r\n"
        )
        big.settimeout(10)
        status_line = big.recv(4096).split(b"\r\n")[0]

    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"


# ---------------------------------------------------------------- 17: redirects and logs


def test_a_trailing_slash_is_404_not_a_redirect_built_from_the_host_header() -> None:
    with http_server({}) as (url, _):
        slash = httpx.post(
            url + "/", json=INITIALIZE, headers={**MCP_HEADERS, "Host": "localhost:1"}
        )
        other = httpx.get(url.replace("/mcp", "/elsewhere"))

    assert slash.status_code == 404
    assert "location" not in slash.headers
    assert other.status_code == 404


@contextmanager
def _garbage_and_hangups(url: str) -> Iterator[None]:
    """Malformed requests, foreign Host and Origin headers and clients that hang up."""
    port = _port(url)
    for payload in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\n"):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(payload + b"Connection: upgrade\r\n\r\n")
            raw.settimeout(5)
            raw.recv(4096)
    httpx.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Host": "evil.example"})
    httpx.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Origin": "http://evil.example"})
    with socket.create_connection(("127.0.0.1", port)) as hangup:
        hangup.sendall(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n{"
        )
        time.sleep(0.3)
    time.sleep(0.5)
    yield


def test_garbage_and_hangups_write_no_warning_or_traceback() -> None:
    with http_server({}) as (url, server), _garbage_and_hangups(url):
        pass
    lines = server.stderr.splitlines()
    assert lines[0].startswith("octave-tools MCP server on http://127.0.0.1:")
    assert lines[1:] == []


def test_at_debug_they_are_one_line_each_without_a_traceback() -> None:
    with http_server({}, "--log-level", "DEBUG") as (url, server), _garbage_and_hangups(url):
        pass
    log = server.stderr
    assert "Traceback" not in log
    assert " WARNING " not in log
    assert " ERROR " not in log
    assert "DEBUG uvicorn.error: Invalid HTTP request received." in log
    assert "DEBUG mcp.server.transport_security: Invalid Host header: evil.example" in log
    assert (
        "DEBUG mcp.server.streamable_http: Error handling POST request (the client hung up)" in log
    )


def test_the_demotion_keeps_the_server_s_own_warnings_and_errors() -> None:
    demote = _Demote(("Invalid HTTP request received.",), logging.WARNING)

    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", level, __file__, 1, message, None, None)

    own_error, own_warning = record(logging.ERROR, "boom"), record(logging.WARNING, "low disk")
    assert demote.filter(own_error) is True
    assert demote.filter(own_warning) is True
    assert (own_error.levelno, own_warning.levelno) == (logging.ERROR, logging.WARNING)
    assert demote.filter(record(logging.WARNING, "Invalid HTTP request received.")) is False
