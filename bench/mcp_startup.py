"""MCP server cost against bare baselines measured in the same run.

Prints:
- cold start over stdio (spawn, initialize, list tools) of ``python -m octave_tools.mcp``
  against a bare ``MCPServer`` hello-world: medians and their ratio (target <= 1.15)
- per-call overhead in memory: median ``text_to_speech`` through the official client
  minus median ``AsyncOctaveClient.synthesize`` on the same client and fake API
  (target <= 3 ms), for the default in-process path and the JSON-RPC (legacy) path

    python bench/mcp_startup.py [--starts 15] [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mcp import Client, StdioServerParameters

from octave_tools import AsyncOctaveClient
from octave_tools.mcp import create_server
from octave_tools.testing import FakeAIMLAPI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import api_env

TEXT = "The quick brown fox jumps over the lazy dog."

HELLO = """
from mcp.server.mcpserver import MCPServer

server = MCPServer("hello")


@server.tool()
def hello(name: str) -> str:
    \"\"\"Say hello.\"\"\"
    return f"Hello, {name}!"


server.run("stdio")
"""


async def cold_start(params: StdioServerParameters) -> float:
    """Seconds from spawning the server to having its tool list."""
    start = time.perf_counter()
    async with Client(params, mode="legacy") as client:
        tools = await client.list_tools()
        elapsed = time.perf_counter() - start
    assert tools.tools
    return elapsed


async def startups(env: dict[str, str], rounds: int) -> tuple[float, float]:
    ours = StdioServerParameters(command=sys.executable, args=["-m", "octave_tools.mcp"], env=env)
    bare = StdioServerParameters(command=sys.executable, args=["-c", HELLO], env=env)
    for params in (ours, bare):  # warm the OS file cache for both
        await cold_start(params)
    ours_times: list[float] = []
    bare_times: list[float] = []
    for i in range(rounds):  # alternate the order, so drift hits both alike
        pair = ((ours, ours_times), (bare, bare_times))
        for params, times in pair if i % 2 else reversed(pair):
            times.append(await cold_start(params))
    return statistics.median(bare_times), statistics.median(ours_times)


async def per_call(api: FakeAIMLAPI, calls: int, mode: str) -> tuple[float, float]:
    direct_times: list[float] = []
    mcp_times: list[float] = []
    async with (
        AsyncOctaveClient(api_key=api.api_key, base_url=api.base_url, engine="aimlapi") as octave,
        Client(create_server(octave), mode=mode) as client,
    ):
        for _ in range(30):  # warm the connection pool and both code paths
            await octave.synthesize(TEXT)
            await client.call_tool("text_to_speech", {"text": TEXT})
        for _ in range(calls):
            t = time.perf_counter()
            await octave.synthesize(TEXT)
            direct_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            result = await client.call_tool("text_to_speech", {"text": TEXT})
            mcp_times.append(time.perf_counter() - t)
            assert not result.is_error
    return statistics.median(direct_times), statistics.median(mcp_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=15)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="octave-bench-")
    os.environ["OCTAVE_TOOLS_DATA_DIR"] = data_dir  # keep the ledger out of the user's
    with FakeAIMLAPI() as api:
        env = api_env(api, OCTAVE_TOOLS_DATA_DIR=data_dir)
        bare, ours = asyncio.run(startups(env, args.starts))
        print(
            f"cold start (stdio: spawn, initialize, list tools)   bare MCPServer "
            f"{bare * 1e3:6.0f} ms   octave-tools {ours * 1e3:6.0f} ms   "
            f"ratio {ours / bare:.3f}  (target <= 1.15)"
        )
        for mode, label in (("auto", "in-process"), ("legacy", "JSON-RPC  ")):
            direct, via_mcp = asyncio.run(per_call(api, args.calls, mode))
            print(
                f"per call, in memory, {label}   synthesize {direct * 1e3:6.3f} ms   "
                f"text_to_speech {via_mcp * 1e3:6.3f} ms   "
                f"overhead {(via_mcp - direct) * 1e3:+.3f} ms  (target <= 3 ms)"
            )


if __name__ == "__main__":
    main()
