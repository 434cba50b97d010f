"""What MCP clients get from ``text_to_speech``: the text first, then a ``resource_link``.

The official Python client (2.x, and 1.x-style sessions), the official TypeScript client
(``@modelcontextprotocol/sdk``, run with node over stdio; .ci/run installs it into
``OCTAVE_TOOLS_TEST_NPM_PREFIX``, and without it that test skips, except in CI), and the
MCP Apps metadata every client sees. ``tests/test_mcp_langchain.py`` covers
``langchain-mcp-adapters``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from harness import api_env, child_env, http_server
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import Implementation, ResourceLink, TextContent

from octave_tools.mcp import PLAYER_URI, create_server
from octave_tools.testing import FakeAIMLAPI

NPM_PREFIX = os.environ.get("OCTAVE_TOOLS_TEST_NPM_PREFIX")  # read before the clean env
SERVER = [sys.executable, "-m", "octave_tools.mcp"]


def stdio(api: FakeAIMLAPI) -> StdioServerParameters:
    return StdioServerParameters(command=SERVER[0], args=SERVER[1:], env=child_env(api_env(api)))


async def test_the_python_client_gets_the_text_then_a_link_to_the_audio(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    server = create_server(api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url)
    async with Client(server) as client:
        result = await client.call_tool("text_to_speech", {"text": "Hello.", "voice": "Ava Song"})
    text, link = result.content
    url = result.structured_content["audio_url"]  # type: ignore[index]
    assert isinstance(text, TextContent) and url in text.text
    assert isinstance(link, ResourceLink)
    assert link.model_dump(mode="json", by_alias=True, exclude_none=True) == {
        "type": "resource_link",
        "uri": url,
        "name": url.rsplit("/", 1)[-1],
        "title": "Speech (Ava Song)",
        "mimeType": "audio/wav",
    }


@pytest.mark.parametrize(("name", "linked"), [(None, False), ("mcp", False), ("claude-ai", True)])
async def test_a_client_on_the_1x_protocol_named_only_mcp_gets_the_text_alone(
    fake_aimlapi: FakeAIMLAPI, name: str | None, linked: bool
) -> None:
    """The 1.x SDK's adapters pass every block to the model; a chat model refuses audio."""
    info = None if name is None else Implementation(name=name, version="1.0")
    async with Client(stdio(fake_aimlapi), mode="legacy", client_info=info) as client:
        result = await client.call_tool("text_to_speech", {"text": "Hello."})
    assert result.is_error is False
    kinds = [block.type for block in result.content]
    assert kinds == (["text", "resource_link"] if linked else ["text"])


async def test_every_client_sees_the_player_link_and_the_extension(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    async with Client(stdio(fake_aimlapi), mode="legacy") as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        resources = {str(r.uri): r for r in (await client.list_resources()).resources}
    async with Client(create_server(api_key="k")) as modern:  # the 2026 protocol
        capabilities = modern.server_capabilities
    assert tools["text_to_speech"].meta == {
        "ui": {"resourceUri": PLAYER_URI},
        "ui/resourceUri": PLAYER_URI,
    }
    assert tools["list_voices"].meta is None
    player = resources[PLAYER_URI]
    assert player.mime_type == "text/html;profile=mcp-app"
    assert player.meta == {
        "ui": {
            "csp": {"resourceDomains": ["https://cdn.aimlapi.com", fake_aimlapi.origin]},
            "prefersBorder": True,
        }
    }
    # Advertised where the protocol has extensions (the SDK leaves them out of 2025-11-25).
    assert capabilities.extensions == {"io.modelcontextprotocol/ui": {}}


TS_CLIENT = """
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const spec = JSON.parse(process.argv[2]);
const transport = new StdioClientTransport(spec);
const client = new Client({ name: "octave-tools-test", version: "1.0.0" });
await client.connect(transport);
const tools = await client.listTools();
const result = await client.callTool({ name: "text_to_speech", arguments: { text: "Hello." } });
const player = await client.readResource({ uri: "ui://octave-tools/player.html" });
process.stdout.write(JSON.stringify({
  protocol: client.getServerVersion(),
  meta: tools.tools.find((t) => t.name === "text_to_speech")._meta,
  result,
  player: { mimeType: player.contents[0].mimeType, length: player.contents[0].text.length },
}));
await client.close();
"""


def ts_sdk() -> Path:
    problem = None
    folder = Path(NPM_PREFIX or "/nonexistent") / "node_modules"
    if shutil.which("node") is None:
        problem = "node is not installed"
    elif not (folder / "@modelcontextprotocol" / "sdk" / "package.json").exists():
        problem = "@modelcontextprotocol/sdk is not installed under OCTAVE_TOOLS_TEST_NPM_PREFIX"
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{problem} (.ci/run installs it)")
        pytest.skip(problem)
    return folder


def test_the_typescript_client_validates_the_result_and_keeps_the_link(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    (tmp_path / "node_modules").symlink_to(ts_sdk(), target_is_directory=True)
    script = tmp_path / "client.mjs"
    script.write_text(TS_CLIENT, encoding="utf-8")
    spec = {"command": SERVER[0], "args": SERVER[1:], "env": child_env(api_env(fake_aimlapi))}
    run = subprocess.run(
        ["node", str(script), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    result = out["result"]
    url = result["structuredContent"]["audio_url"]
    text, link = result["content"]  # callTool checked both against its schemas
    assert text["type"] == "text" and url in text["text"]
    assert link == {
        "type": "resource_link",
        "uri": url,
        "name": url.rsplit("/", 1)[-1],
        "title": "Speech (Vince Douglas)",
        "mimeType": "audio/wav",
    }
    assert out["meta"]["ui"] == {"resourceUri": PLAYER_URI}
    assert out["player"]["mimeType"] == "text/html;profile=mcp-app"
    assert out["player"]["length"] > 1000


async def test_over_http_the_player_may_load_audio_the_server_serves(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    """The HTTP host serves its own clips: once its port is bound, its origin joins the
    player's media-src (``_meta.ui.csp.resourceDomains``)."""
    token = "t" * 32
    env = {**api_env(fake_aimlapi), "OCTAVE_TOOLS_SERVER_TOKEN": token}
    with http_server(env) as (url, _):
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(headers=headers) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            resources = {str(r.uri): r for r in (await client.list_resources()).resources}
    origin = url.removesuffix("/mcp")
    assert resources[PLAYER_URI].meta == {
        "ui": {
            "csp": {"resourceDomains": ["https://cdn.aimlapi.com", fake_aimlapi.origin, origin]},
            "prefersBorder": True,
        }
    }
