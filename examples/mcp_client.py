"""Use the octave-tools MCP server the way Claude Desktop does: spawn it over stdio.

Lists the tools with their annotations, makes the mistake a model often makes (a
misspelt voice), reads the tool error, and retries with the suggested name.

Offline by default (a fake AIML API on 127.0.0.1, no key, no network):

    python examples/mcp_client.py

With ``--live`` the server calls the real API with ``AIMLAPI_API_KEY`` (this costs credits).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from contextlib import ExitStack

from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

from octave_tools.testing import FakeAIMLAPI


def text(result: CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, TextContent))


async def session(env: dict[str, str]) -> None:
    server = StdioServerParameters(command=sys.executable, args=["-m", "octave_tools.mcp"], env=env)
    async with Client(server) as client:
        for tool in (await client.list_tools()).tools:
            hints = tool.annotations.model_dump(exclude_none=True) if tool.annotations else {}
            flags = ", ".join(f"{k}={v}" for k, v in hints.items() if k != "title")
            print(f"[tool] {tool.name}: {flags}")
        for voice in ("Campfire Narator", "Campfire Narrator"):
            args = {"text": "Gather round, and I will tell you a story.", "voice": voice}
            print(f"[call] text_to_speech {args}")
            result = await client.call_tool("text_to_speech", args)
            print(f"[{'error' if result.is_error else 'result'}] {text(result)}")
            if result.structured_content:
                print(f"[structured] {result.structured_content}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", action="store_true", help="call the real API (costs credits)")
    args = parser.parse_args()
    # The server gets only what an MCP client config would give it (plus PYTHONPATH,
    # so a source checkout works).
    env = {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}
    with ExitStack() as stack:
        if args.live:
            if not os.environ.get("AIMLAPI_API_KEY"):
                sys.exit("--live needs AIMLAPI_API_KEY in the environment.")
            env["AIMLAPI_API_KEY"] = os.environ["AIMLAPI_API_KEY"]
        else:
            api = stack.enter_context(FakeAIMLAPI())
            env |= {
                "AIMLAPI_API_KEY": api.api_key,
                "AIMLAPI_BASE_URL": api.base_url,
                "OCTAVE_TOOLS_ENGINE": "aimlapi",
                "OCTAVE_TOOLS_LEDGER": "off",  # fake calls stay out of your spend ledger
            }
        asyncio.run(session(env))


if __name__ == "__main__":
    main()
