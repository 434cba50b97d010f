"""The Claude Desktop bundle (.mcpb), built, validated, packed and started as the app would.

``packaging/build_mcpb.py`` stages the bundle (its ``server/lib`` copied from this
environment, offline), the official CLI (``@anthropic-ai/mcpb``) validates, packs and
unpacks it, and the server starts exactly as the manifest says: the command, arguments
and environment computed by that package's own ``getMcpConfigForManifest`` (the
``${__dirname}`` and ``${user_config.*}`` substitution), then lists tools and makes a
call with the official MCP client against the fake API.

The CLI comes from npm: .ci/run installs it into a temporary prefix and names it in
``OCTAVE_TOOLS_TEST_NPM_PREFIX``. Without it these tests skip, except in CI
(``CI=true``), where a missing one is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import child_env
from mcp import Client, StdioServerParameters
from mcp.types import ResourceLink, TextContent

from octave_tools.testing import FakeAIMLAPI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packaging"))
import build_mcpb  # noqa: E402

TOOLS = ["list_voices", "text_to_dialogue", "text_to_speech", "usage"]
# Read at import: each test's clean environment drops OCTAVE_TOOLS_* variables.
NPM_PREFIX = os.environ.get("OCTAVE_TOOLS_TEST_NPM_PREFIX")


def npm_package(name: str) -> Path:
    """The folder of npm package ``name`` in the test prefix; skips (fails in CI) without."""
    prefix = NPM_PREFIX
    problem = None
    folder = Path(prefix or "/nonexistent") / "node_modules" / name
    if shutil.which("node") is None:
        problem = "node is not installed"
    elif not prefix:
        problem = "OCTAVE_TOOLS_TEST_NPM_PREFIX is not set (.ci/run installs the npm packages)"
    elif not (folder / "package.json").exists():
        problem = f"{name} is not installed under {prefix}"
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    return folder


def mcpb(*args: str | Path, cwd: Path | None = None) -> str:
    cli = npm_package("@anthropic-ai/mcpb") / "dist" / "cli" / "cli.js"
    done = subprocess.run(
        ["node", str(cli), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


CONFIG_SCRIPT = """
import { readFileSync } from "node:fs";
const [lib, manifestPath, dir, home, userConfig] = process.argv.slice(2);
const { getMcpConfigForManifest } = await import(lib);
const manifest = JSON.parse(readFileSync(manifestPath, "utf8"));
const config = await getMcpConfigForManifest({
  manifest,
  extensionPath: dir,
  systemDirs: { HOME: home, DESKTOP: home + "/Desktop", DOCUMENTS: home + "/Documents",
                DOWNLOADS: home + "/Downloads" },
  userConfig: JSON.parse(userConfig),
  pathSeparator: "/",
});
process.stdout.write(JSON.stringify(config));
"""


def app_config(bundle: Path, user_config: dict[str, Any], home: Path) -> dict[str, Any]:
    """The server config the app makes from the bundle's manifest and the user's settings."""
    lib = (npm_package("@anthropic-ai/mcpb") / "dist" / "index.js").as_uri()
    script = bundle.parent / "config.mjs"
    script.write_text(CONFIG_SCRIPT, encoding="utf-8")
    done = subprocess.run(
        [
            "node",
            str(script),
            lib,
            str(bundle / "manifest.json"),
            str(bundle),
            str(home),
            json.dumps(user_config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    config: dict[str, Any] = json.loads(done.stdout)
    return config


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bundle staged, validated, packed to a .mcpb, and unpacked where an app would."""
    work = tmp_path_factory.mktemp("mcpb")
    stage = work / "stage"
    manifest = build_mcpb.stage(stage, "env")
    assert "Manifest schema validation passes!" in mcpb("validate", manifest)
    packed = work / "octave-tools.mcpb"
    mcpb("pack", stage, packed)
    assert packed.stat().st_size > 0
    unpacked = work / "installed" / "octave-tools"
    mcpb("unpack", packed, unpacked)
    yield unpacked


def python_path() -> str:
    """PATH for the app's environment: a system python3 of this version when there is one
    (it has none of our dependencies: the bundle's own lib must do), else this one's."""
    system = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if system is not None:
        probe = subprocess.run(
            [system, "-c", "import sys; print(sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.stdout.strip() == str(sys.version_info[:2]):
            return "/usr/local/bin:/usr/bin:/bin"
    return os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])


def server_params(config: dict[str, Any], api: FakeAIMLAPI) -> StdioServerParameters:
    """``config`` as the app runs it; the test adds only the fake API's address and the
    network guard (after the bundle's lib on PYTHONPATH)."""
    env = dict(config["env"])
    guard = child_env({})
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], guard.pop("PYTHONPATH", "")])
    env.update(guard)
    env["PATH"] = python_path()
    env["AIMLAPI_BASE_URL"] = api.base_url
    return StdioServerParameters(command=config["command"], args=config["args"], env=env)


def test_the_manifest_says_a_python_server_with_a_sensitive_key_and_options(
    bundle: Path,
) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["manifest_version"] == "0.3"
    assert manifest["server"]["type"] == "python"
    assert manifest["server"]["mcp_config"]["args"] == ["${__dirname}/server/main.py"]
    options = manifest["user_config"]
    assert options["aimlapi_api_key"]["sensitive"] is True
    assert options["aimlapi_api_key"]["required"] is False
    assert (options["model"]["default"], options["voice"]["default"]) == ("hume/octave-2", "")
    assert sorted(t["name"] for t in manifest["tools"]) == TOOLS
    from octave_tools import __version__

    assert manifest["version"] == __version__
    assert manifest["compatibility"]["platforms"] == [
        {"linux": "linux"}.get(sys.platform, "darwin")
    ]


async def test_the_bundle_starts_as_the_manifest_says_and_speaks(
    bundle: Path, fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    config = app_config(bundle, {"aimlapi_api_key": fake_aimlapi.api_key}, tmp_path)
    assert config["command"] == "python3"
    assert config["args"] == [f"{bundle}/server/main.py"]
    assert config["env"] == {
        "PYTHONPATH": f"{bundle}/server/lib",
        "AIMLAPI_API_KEY": fake_aimlapi.api_key,
        "OCTAVE_TOOLS_MODEL": "hume/octave-2",
        "OCTAVE_TOOLS_VOICE": "",
        "OCTAVE_TOOLS_ENGINE": "aimlapi",
    }
    async with Client(server_params(config, fake_aimlapi)) as client:
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        result = await client.call_tool("text_to_speech", {"text": "Hello from the bundle."})
    assert tools == TOOLS
    assert result.is_error is False
    text, link = result.content
    assert isinstance(text, TextContent) and isinstance(link, ResourceLink)
    assert link.uri in text.text and link.uri.startswith(fake_aimlapi.origin)
    (request,) = fake_aimlapi.tts_requests
    assert request.headers["authorization"] == f"Bearer {fake_aimlapi.api_key}"


async def test_an_empty_key_starts_and_the_first_call_says_how_to_set_it(
    bundle: Path, fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    config = app_config(bundle, {}, tmp_path)  # the user left every option as it was
    assert config["env"]["AIMLAPI_API_KEY"] == ""
    async with Client(server_params(config, fake_aimlapi)) as client:
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        result = await client.call_tool("text_to_speech", {"text": "Hello."})
    assert tools == TOOLS
    assert result.is_error is True
    (block,) = result.content
    assert isinstance(block, TextContent)
    assert block.text == (
        "Error executing tool text_to_speech: No AIML API key. Set AIMLAPI_API_KEY in the "
        "environment (or pass api_key=...; in the Claude Desktop extension, enter it as the "
        "AIML API key in the extension's settings); get a key at https://aimlapi.com/app/keys."
    )
    assert fake_aimlapi.tts_requests == []
