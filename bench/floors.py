"""Issue 15's hot paths, each against its floor measured in the same run.

Rows (``--row NAME``, or ``all``; ``--quick`` for a short run of each, under ~30 s):

- sync       OctaveClient.synthesize / bare httpx.Client.post of the same request (<= 1.10)
- async      200 concurrent AsyncOctaveClient / bare httpx.AsyncClient throughput (>= 0.95)
- langchain  tool.invoke(ToolCall) minus the direct call, against a no-op BaseTool invoke
             (<= no-op + 0.15 ms)
- mcp        in-memory MCP text_to_speech minus the direct call, against a bare MCPServer
             echo tool call (<= bare + 0.3 ms)
- ledger     200-concurrent async throughput, ledger on / off (>= 0.95)
- cold       new-process ``octave-tools say --out`` with the local engine (<= 0.30 s),
             against a process that loads eSpeak NG through ctypes and speaks a sentence
- stdio      MCP cold start over stdio (spawn, initialize, list tools) of ``octave-tools
             serve`` against the SDK's hello-world MCPServer (<= 1.05)
- http       kept-alive tools/list over streamable HTTP (stateless) against the SDK's
             hello-world MCPServer under uvicorn (<= 1.2x)

The HTTP rows talk to bench/_floor.py, a canned-response server that costs almost
nothing per request, so the ratios measure the client. Variants are interleaved in a
shuffled order each round.

    python bench/floors.py [all|sync|async|langchain|mcp|ledger|cold|stdio|http] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _floor import FloorServer
from _harness import TEXT, ainterleave, interleave, med, octave_request, use_temp_data_dir

ROWS = ("sync", "async", "langchain", "mcp", "ledger", "cold", "stdio", "http")


def _options(floor: FloorServer, **extra: Any) -> dict[str, Any]:
    return {"api_key": floor.api_key, "base_url": floor.base_url, "engine": "aimlapi", **extra}


# ---------------------------------------------------------------- sync


def row_sync(quick: bool) -> None:
    from octave_tools import OctaveClient

    calls = 300 if quick else 2000
    with FloorServer() as floor:
        url, headers, body = octave_request(floor.api_key, floor.base_url)
        with (
            httpx.Client() as bare,
            OctaveClient(**_options(floor)) as ours,
            OctaveClient(**_options(floor, ledger=False)) as nolog,
        ):

            def bare_call() -> str:
                r = bare.post(url, headers=headers, content=body)
                r.raise_for_status()
                return str(r.json()["audio"]["url"])

            times = interleave(
                {
                    "bare": bare_call,
                    "ours": lambda: ours.synthesize(TEXT),
                    "ours_noledger": lambda: nolog.synthesize(TEXT),
                },
                calls,
            )
    b, o, n = med(times["bare"]), med(times["ours"]), med(times["ours_noledger"])
    print(
        f"sync      bare httpx {b * 1e6:6.0f} us   OctaveClient {o * 1e6:6.0f} us "
        f"({(o - b) * 1e6:+.0f} us)   ratio {o / b:.3f}  (target <= 1.10)   "
        f"[ledger off: {n * 1e6:.0f} us, ratio {n / b:.3f}]"
    )


# ---------------------------------------------------------------- async / ledger


async def _throughput(
    variants: dict[str, Callable[[], Any]], n: int, rounds: int
) -> dict[str, float]:
    """Median seconds for ``n`` concurrent calls of each variant, rounds shuffled."""

    async def burst(fn: Callable[[], Any]) -> float:
        t = time.perf_counter()
        await asyncio.gather(*(fn() for _ in range(n)))
        return time.perf_counter() - t

    for fn in variants.values():  # warm pools (n connections each)
        await burst(fn)
    runs: dict[str, list[float]] = {k: [] for k in variants}
    rng = random.Random(15)
    for _ in range(rounds):
        order = list(variants.items())
        rng.shuffle(order)
        for name, fn in order:
            runs[name].append(await burst(fn))
    return {k: med(v) for k, v in runs.items()}


def row_async(quick: bool, n: int = 200) -> None:
    from octave_tools import AsyncOctaveClient

    rounds = 7 if quick else 25

    async def run(floor: FloorServer) -> dict[str, float]:
        url, headers, body = octave_request(floor.api_key, floor.base_url)
        async with (
            httpx.AsyncClient() as bare,
            httpx.AsyncClient(
                limits=httpx.Limits(max_connections=n, max_keepalive_connections=n)
            ) as wide,
            AsyncOctaveClient(**_options(floor)) as ours,
        ):

            async def bare_call() -> str:
                r = await bare.post(url, headers=headers, content=body)
                r.raise_for_status()
                return str(r.json()["audio"]["url"])

            async def wide_call() -> str:
                r = await wide.post(url, headers=headers, content=body)
                r.raise_for_status()
                return str(r.json()["audio"]["url"])

            async def ours_call() -> str:
                return (await ours.synthesize(TEXT)).audio_url

            return await _throughput(
                {"bare": bare_call, "wide": wide_call, "ours": ours_call}, n, rounds
            )

    with FloorServer() as floor:
        t = asyncio.run(run(floor))
    print(
        f"async     {n} concurrent: bare {n / t['bare']:6.0f} calls/s   AsyncOctaveClient "
        f"{n / t['ours']:6.0f} calls/s   ratio {t['bare'] / t['ours']:.3f}  (target >= 0.95)"
        f"   [bare with {n} "
        f"kept-alive connections: {n / t['wide']:.0f} calls/s]"
    )


def row_ledger(quick: bool, n: int = 200) -> None:
    from octave_tools import AsyncOctaveClient

    rounds = 7 if quick else 25

    async def run(floor: FloorServer) -> dict[str, float]:
        async with (
            AsyncOctaveClient(**_options(floor, ledger=True)) as on,
            AsyncOctaveClient(**_options(floor, ledger=False)) as off,
        ):
            return await _throughput(
                {"on": lambda: on.synthesize(TEXT), "off": lambda: off.synthesize(TEXT)},
                n,
                rounds,
            )

    with FloorServer() as floor:
        t = asyncio.run(run(floor))
    print(
        f"ledger    {n} concurrent: off {n / t['off']:6.0f} calls/s   on {n / t['on']:6.0f} "
        f"calls/s   ratio {t['off'] / t['on']:.3f}  (target >= 0.95)"
    )


# ---------------------------------------------------------------- langchain


def _noop_tool() -> Any:
    from langchain_core.tools import BaseTool
    from pydantic import BaseModel

    class Args(BaseModel):
        text: str
        voice: str | None = None

    class Noop(BaseTool):
        name: str = "text_to_speech"
        description: str = "No-op."
        args_schema: type[BaseModel] = Args

        def _run(self, text: str, voice: str | None = None, **_: Any) -> str:
            return "ok"

    return Noop()


def row_langchain(quick: bool) -> None:
    from langchain_core.messages import ToolCall

    from octave_tools import OctaveClient
    from octave_tools.langchain import OctaveTTSTool

    calls = 300 if quick else 2000
    args = {"text": TEXT, "voice": "Ava Song"}
    counter = iter(range(10**9))

    def call() -> ToolCall:
        return ToolCall(
            name="text_to_speech", args=dict(args), id=f"c{next(counter)}", type="tool_call"
        )

    with FloorServer() as floor, OctaveClient(**_options(floor)) as client:
        tool = OctaveTTSTool(client=client)
        noop = _noop_tool()
        times = interleave(
            {
                "direct": lambda: client.synthesize(TEXT, voice="Ava Song"),
                "tool": lambda: tool.invoke(call()),
                "noop": lambda: noop.invoke(call()),
            },
            calls,
        )
    d, t, n = med(times["direct"]), med(times["tool"]), med(times["noop"])
    over = t - d
    print(
        f"langchain direct {d * 1e3:.3f} ms   tool.invoke {t * 1e3:.3f} ms   overhead "
        f"{over * 1e3:.3f} ms   floor (no-op invoke) {n * 1e3:.3f} ms   overhead-floor "
        f"{(over - n) * 1e3:+.3f} ms  (target <= +0.15 ms)"
    )


# ---------------------------------------------------------------- mcp


def _echo_server() -> Any:
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("echo")

    @server.tool()
    async def echo(text: str, voice: str | None = None) -> str:
        """Echo the text."""
        return text

    return server


def row_mcp(quick: bool) -> None:
    from mcp import Client

    from octave_tools import AsyncOctaveClient
    from octave_tools.mcp import create_server

    calls = 200 if quick else 1500

    async def run(floor: FloorServer) -> dict[str, list[float]]:
        async with (
            AsyncOctaveClient(**_options(floor)) as octave,
            Client(create_server(octave)) as ours,
            Client(_echo_server()) as bare,
        ):

            async def via_mcp() -> None:
                result = await ours.call_tool("text_to_speech", {"text": TEXT})
                assert not result.is_error, result

            async def echo() -> None:
                result = await bare.call_tool("echo", {"text": TEXT})
                assert not result.is_error, result

            return await ainterleave(
                {"direct": lambda: octave.synthesize(TEXT), "mcp": via_mcp, "echo": echo}, calls
            )

    with FloorServer() as floor:
        times = asyncio.run(run(floor))
    d, m, e = med(times["direct"]), med(times["mcp"]), med(times["echo"])
    over = m - d
    print(
        f"mcp       direct {d * 1e3:.3f} ms   call_tool {m * 1e3:.3f} ms   overhead "
        f"{over * 1e3:.3f} ms   floor (bare echo call) {e * 1e3:.3f} ms   overhead-floor "
        f"{(over - e) * 1e3:+.3f} ms  (target <= +0.3 ms)"
    )


# ---------------------------------------------------------------- cold CLI

ESPEAK_FLOOR = """
import ctypes, espeakng_loader
lib = ctypes.CDLL(str(espeakng_loader.get_library_path()))
rate = lib.espeak_Initialize(2, 0, str(espeakng_loader.get_data_path()).encode(), 0x8000)
chunks = []
CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
def on_audio(wav, n, events):
    if wav and n > 0:
        chunks.append(ctypes.string_at(wav, 2 * n))
    return 0
cb = CB(on_audio)
lib.espeak_SetSynthCallback(cb)
lib.espeak_SetVoiceByName(b"en-us")
text = TEXT_REPR.encode()
lib.espeak_Synth(text, len(text) + 1, 0, 1, 0, 1, None, None)
assert sum(map(len, chunks)) > 1000
""".replace("TEXT_REPR", repr(TEXT))


def row_cold(quick: bool) -> None:
    runs = 5 if quick else 15
    out_dir = tempfile.mkdtemp(prefix="octave-bench-cold-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIMLAPI_", "OCTAVE_TOOLS_"))}
    env.update(
        OCTAVE_TOOLS_ENGINE="local", OCTAVE_TOOLS_DATA_DIR=out_dir, OCTAVE_TOOLS_OUTPUT_DIR=out_dir
    )
    cli = str(Path(sys.executable).with_name("octave-tools"))
    variants = {
        "say": [cli, "say", TEXT, "--out", os.path.join(out_dir, "a.wav")],
        "espeak": [sys.executable, "-c", ESPEAK_FLOOR],
        "python": [sys.executable, "-c", "pass"],
    }

    def once(argv: list[str]) -> Callable[[], None]:
        def run() -> None:
            subprocess.run(
                argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )

        return run

    times = interleave({k: once(v) for k, v in variants.items()}, runs, warmup=1)
    s, f, p = med(times["say"]), med(times["espeak"]), med(times["python"])
    print(
        f"cold      octave-tools say --out {s:.3f} s   floor (new process, eSpeak NG speaks) "
        f"{f:.3f} s   bare python {p:.3f} s   ratio {s / f:.2f}  (target <= 0.30 s)"
    )


# ---------------------------------------------------------------- MCP cold start, stdio

HELLO_STDIO = """
from mcp.server.mcpserver import MCPServer
server = MCPServer("hello")
@server.tool()
def hello(name: str) -> str:
    \"\"\"Say hello.\"\"\"
    return f"Hello, {name}!"
server.run("stdio")
"""


def row_stdio(quick: bool) -> None:
    from mcp import Client, StdioServerParameters

    rounds = 6 if quick else 20
    env = dict(os.environ)
    env.update(
        AIMLAPI_API_KEY="bench-key-not-used",
        OCTAVE_TOOLS_ENGINE="aimlapi",
        OCTAVE_TOOLS_DATA_DIR=tempfile.mkdtemp(prefix="octave-bench-stdio-"),
    )
    cli = str(Path(sys.executable).with_name("octave-tools"))
    servers = {
        "ours": StdioServerParameters(command=cli, args=["serve"], env=env),
        "hello": StdioServerParameters(command=sys.executable, args=["-c", HELLO_STDIO], env=env),
    }

    async def start(params: StdioServerParameters) -> float:
        began = time.perf_counter()
        async with Client(params, mode="legacy") as client:
            tools = await client.list_tools()
            took = time.perf_counter() - began
        assert tools.tools
        return took

    async def run() -> dict[str, float]:
        for params in servers.values():  # warm the OS file cache for both
            await start(params)
        runs: dict[str, list[float]] = {k: [] for k in servers}
        rng = random.Random(15)
        for _ in range(rounds):
            order = list(servers.items())
            rng.shuffle(order)
            for name, params in order:
                runs[name].append(await start(params))
        return {k: med(v) for k, v in runs.items()}

    t = asyncio.run(run())
    print(
        f"stdio     MCP cold start (spawn, initialize, list tools): octave-tools serve "
        f"{t['ours'] * 1e3:.0f} ms   hello-world MCPServer {t['hello'] * 1e3:.0f} ms   "
        f"ratio {t['ours'] / t['hello']:.3f}  (target <= 1.05)"
    )


# ---------------------------------------------------------------- streamable HTTP

HELLO_HTTP = """
import socket, sys, uvicorn
from mcp.server.mcpserver import MCPServer
server = MCPServer("hello", log_level="WARNING")
@server.tool()
def hello(name: str) -> str:
    \"\"\"Say hello.\"\"\"
    return f"Hello, {name}!"
app = server.streamable_http_app(streamable_http_path="/mcp", stateless_http=True)
# As uvicorn binds a host/port itself: a TCP socket, so asyncio turns Nagle off.
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.bind(("127.0.0.1", 0))
sock.listen(128)
print(f"hello on http://127.0.0.1:{sock.getsockname()[1]}/mcp", file=sys.stderr, flush=True)
config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False,
                        server_header=False, lifespan="on")
uvicorn.Server(config).run(sockets=[sock])
"""

MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@contextmanager
def _served(argv: list[str], env: dict[str, str]) -> Iterator[str]:
    """A server subprocess; yields the URL it logs on stderr."""
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "http://" in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not found.wait(30):
            raise RuntimeError(f"{argv[:3]} never logged its URL: {''.join(lines)}")
        match = re.search(r"http://\S+/mcp", "".join(lines))
        assert match, lines
        yield match.group(0)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def row_http(quick: bool) -> None:
    requests = 50
    rounds = 2 if quick else 6
    with FloorServer() as floor:
        env = dict(os.environ)
        env.update(
            AIMLAPI_API_KEY=floor.api_key,
            AIMLAPI_BASE_URL=floor.base_url,
            OCTAVE_TOOLS_ENGINE="aimlapi",
            OCTAVE_TOOLS_DATA_DIR=tempfile.mkdtemp(prefix="octave-bench-http-"),
        )
        cli = str(Path(sys.executable).with_name("octave-tools"))
        with (
            _served([cli, "serve", "--transport", "http", "--port", "0"], env) as ours_url,
            _served([sys.executable, "-c", HELLO_HTTP], env) as hello_url,
            httpx.Client(headers=MCP_HEADERS, timeout=30) as ours_http,
            httpx.Client(headers=MCP_HEADERS, timeout=30) as hello_http,
        ):
            init = {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "bench", "version": "0"},
                },
            }
            listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}

            def lister(http: httpx.Client, url: str) -> Callable[[], None]:
                def run() -> None:
                    r = http.post(url, json=listing)
                    r.raise_for_status()
                    assert '"tools"' in r.text, r.text[:200]

                return run

            for http, url in ((ours_http, ours_url), (hello_http, hello_url)):
                http.post(url, json=init).raise_for_status()
            times = interleave(
                {"ours": lister(ours_http, ours_url), "hello": lister(hello_http, hello_url)},
                requests * rounds,
                warmup=5,
            )
    o, h = med(times["ours"]), med(times["hello"])
    print(
        f"http      tools/list kept-alive: octave-tools {o * 1e3:.2f} ms   hello-world MCPServer "
        f"{h * 1e3:.2f} ms   ratio {o / h:.2f}  (target <= 1.2)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("row", nargs="?", default="all", choices=("all", *ROWS))
    parser.add_argument("--quick", action="store_true", help="a short run of each row")
    args = parser.parse_args()
    use_temp_data_dir()
    rows = ROWS if args.row == "all" else (args.row,)
    for name in rows:
        globals()[f"row_{name}"](args.quick)


if __name__ == "__main__":
    main()
