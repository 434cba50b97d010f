"""One-click install: ``server.json`` for the official MCP registry, and the setup snippets.

``server.json`` is checked against the registry's schema, vendored as
``tests/data/mcp-registry-server.schema.json`` from
https://github.com/modelcontextprotocol/registry/blob/13760d02395eed4195a90c80c511aa6a93b33028/docs/reference/server-json/draft/server.schema.json
(the source the registry publishes as
https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json, the
version ``server.json`` names). The registry proves a PyPI package is ours by finding
``mcp-name: <server name>`` in its README (the package description).

Each JSON snippet of ``docs/clients.md`` (Claude Desktop, Claude Code, Cursor, VS Code)
is parsed and its command started with the official MCP client, which lists the tools
and makes a call on the fake API. Tests stay offline, so ``uvx --from
"octave-tools[mcp]" SCRIPT`` runs SCRIPT as installed in this environment (what uvx
would install and run).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import child_env
from jsonschema import Draft202012Validator, FormatChecker
from mcp import Client, StdioServerParameters
from mcp.types import TextContent

from octave_tools import __version__
from octave_tools.testing import FakeAIMLAPI

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path(__file__).parent / "data" / "mcp-registry-server.schema.json"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def server_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "server.json").read_text(encoding="utf-8"))
    return data


def test_server_json_is_valid_against_the_registry_schema() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(server_json())]
    assert errors == []


def test_the_schema_rejects_what_the_registry_rejects() -> None:
    """The vendored schema is the real one: a too-long description or 'latest' fail."""
    validator = Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    long = {**server_json(), "description": "x" * 101}
    latest = server_json()
    latest["packages"][0]["version"] = "latest"
    assert not validator.is_valid(long)
    assert not validator.is_valid(latest)


def test_server_json_names_this_package_version_and_its_command() -> None:
    data = server_json()
    assert (
        data["$schema"]
        == "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"
    )
    (package,) = data["packages"]
    project = PYPROJECT["project"]
    assert data["version"] == package["version"] == project["version"] == __version__
    assert (package["registryType"], package["identifier"]) == ("pypi", project["name"])
    assert package["transport"] == {"type": "stdio"}
    # uvx --from "octave-tools[mcp]==V" octave-tools serve: a real script and subcommand.
    assert package["runtimeHint"] == "uvx"
    assert package["runtimeArguments"][0]["value"] == f"octave-tools[mcp]=={project['version']}"
    assert project["scripts"][package["identifier"]] == "octave_tools.cli:main"
    assert [a["value"] for a in package["packageArguments"]] == ["serve"]
    key = next(v for v in package["environmentVariables"] if v["name"] == "AIMLAPI_API_KEY")
    assert key["isSecret"] is True


def test_the_readme_carries_the_registry_name_marker() -> None:
    readme = (ROOT / project_readme()).read_text(encoding="utf-8")
    markers = re.findall(r"mcp-name: (\S+)", readme)
    assert markers == [server_json()["name"]]
    assert f"<!-- mcp-name: {server_json()['name']} -->" in readme


def project_readme() -> str:
    readme = PYPROJECT["project"]["readme"]
    return str(readme if isinstance(readme, str) else readme["file"])


# ---------------------------------------------------------------- the snippets

SNIPPET = re.compile(r"<!-- snippet: ([a-z-]+) -->\n```json\n(.*?)\n```", re.DOTALL)
CLIENTS = ["claude-desktop", "claude-code", "cursor", "vscode"]


def snippets() -> dict[str, dict[str, Any]]:
    text = (ROOT / "docs" / "clients.md").read_text(encoding="utf-8")
    return {name: json.loads(body) for name, body in SNIPPET.findall(text)}


def test_there_is_a_snippet_for_each_client() -> None:
    assert sorted(snippets()) == sorted(CLIENTS)


def entry_of(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The octave-tools server entry, where each client keeps it."""
    servers = config["servers"] if name == "vscode" else config["mcpServers"]
    assert list(servers) == ["octave-tools"]
    entry: dict[str, Any] = servers["octave-tools"]
    assert entry.get("type", "stdio") == "stdio"
    return entry


def resolve(command: str, args: list[str]) -> list[str]:
    """``uvx --from REQ SCRIPT ARGS`` as SCRIPT from this environment (offline)."""
    assert command == "uvx" and args[:2] == ["--from", "octave-tools[mcp]"], args
    script, *rest = args[2:]
    assert script in PYPROJECT["project"]["scripts"]
    found = shutil.which(script, path=str(Path(sys.executable).parent)) or shutil.which(script)
    if found is None:
        pytest.skip(f"the {script} console script is not installed (pip install -e .)")
    return [found, *rest]


KEY_PLACEHOLDERS = ("your-aimlapi-key", "${AIMLAPI_API_KEY}", "${input:aimlapi-key}")


@pytest.mark.parametrize("name", CLIENTS)
async def test_each_snippet_starts_the_server_with_its_key(
    name: str, fake_aimlapi: FakeAIMLAPI
) -> None:
    entry = entry_of(name, snippets()[name])
    command = resolve(entry["command"], entry["args"])
    env = dict(entry["env"])
    assert env["AIMLAPI_API_KEY"] in KEY_PLACEHOLDERS
    env["AIMLAPI_API_KEY"] = fake_aimlapi.api_key  # what the client puts there
    env["AIMLAPI_BASE_URL"] = fake_aimlapi.base_url
    params = StdioServerParameters(command=command[0], args=command[1:], env=child_env(env))
    async with Client(params) as client:
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        result = await client.call_tool("text_to_speech", {"text": "Set up."})
    assert tools == ["list_voices", "text_to_dialogue", "text_to_speech", "usage"]
    assert result.is_error is False
    first = result.content[0]
    assert isinstance(first, TextContent)
    assert result.structured_content is not None
    assert result.structured_content["audio_url"] in first.text
    (request,) = fake_aimlapi.tts_requests
    assert request.headers["authorization"] == f"Bearer {fake_aimlapi.api_key}"
    if name == "vscode":
        (prompt,) = snippets()[name]["inputs"]
        assert (prompt["id"], prompt["password"]) == ("aimlapi-key", True)
