"""A LangChain agent's view of our MCP server, through ``langchain-mcp-adapters``.

The adapters pin ``mcp<2`` while this project uses ``mcp>=2``, so they run in a
separate virtual environment (built once, then cached by requirement) and talk to
our server over stdio. That also proves a 1.x MCP client can use the 2.x server.
Deselect with ``-m "not slow"``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from harness import api_env, child_env

from octave_tools.testing import FakeAIMLAPI
from octave_tools.voices import DEFAULT_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REQUIREMENTS = ("langchain-mcp-adapters>=0.1,<1", "mcp>=1.9,<2", "langchain-core>=1,<2")

CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys

    from langchain_mcp_adapters.client import MultiServerMCPClient


    async def main() -> None:
        spec = json.loads(sys.argv[1])
        client = MultiServerMCPClient({"octave": {"transport": "stdio", **spec}})
        tools = {tool.name: tool for tool in await client.get_tools()}
        calls = {
            "ok": {"text": "Hello from LangChain", "voice": "Ava Song"},
            "bad_voice": {"text": "Hi", "voice": "Ava Sung"},
        }
        results = {}
        for call_id, args in calls.items():
            message = await tools["text_to_speech"].ainvoke(
                {"type": "tool_call", "id": call_id, "name": "text_to_speech", "args": args}
            )
            results[call_id] = {
                "type": type(message).__name__,
                "tool_call_id": message.tool_call_id,
                "status": message.status,
                "text": [block["text"] for block in message.content if block["type"] == "text"],
                "content": message.content,
                "artifact": message.artifact,
            }
        print(json.dumps({"tools": sorted(tools), "results": results}))


    asyncio.run(main())
    """
)


def _pip_env() -> dict[str, str]:
    # pip needs the package index: no network guard, no test-only settings.
    return {
        k: v
        for k, v in os.environ.items()
        if k != "PYTHONPATH" and not k.startswith(("OCTAVE_TOOLS_", "AIMLAPI_"))
    }


def adapters_python() -> Path:
    """Python of a venv with langchain-mcp-adapters and mcp 1.x, built on first use."""
    key = hashlib.sha256(repr((REQUIREMENTS, sys.version)).encode()).hexdigest()[:16]
    home = Path(tempfile.gettempdir()) / f"octave-tools-lc-mcp-{key}"
    python = home / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if (home / "ready").exists():
        return python
    shutil.rmtree(home, ignore_errors=True)  # a half-built leftover
    building = Path(tempfile.mkdtemp(prefix=f"{home.name}-", dir=home.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, env=_pip_env())
        pip = subprocess.run(
            [
                str(building / python.relative_to(home)),
                *("-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
                *REQUIREMENTS,
            ],
            capture_output=True,
            text=True,
            env=_pip_env(),
            timeout=600,
        )
        if pip.returncode != 0:
            reason = (pip.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"pip could not install {', '.join(REQUIREMENTS)} (no index?): {reason}")
        (building / "ready").write_text("ok\n")
        with contextlib.suppress(OSError):  # another run may have finished first
            building.rename(home)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    assert (home / "ready").exists(), f"could not set up {home}"
    return python


def test_langchain_mcp_adapters_load_our_tools_and_a_tool_message_carries_the_url(
    tmp_path: Path,
) -> None:
    python = adapters_python()
    script = tmp_path / "adapters_client.py"
    script.write_text(CLIENT)
    with FakeAIMLAPI() as api:
        server = {
            "command": sys.executable,
            "args": ["-m", "octave_tools.mcp"],
            "env": child_env(api_env(api)),
        }
        run = subprocess.run(
            [str(python), str(script), json.dumps(server)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**_pip_env(), "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        )
        assert run.returncode == 0, run.stderr
        (url,) = api.issued
        (request,) = api.tts_requests

    out = json.loads(run.stdout)
    assert out["tools"] == ["list_voices", "text_to_dialogue", "text_to_speech", "usage"]
    assert request.json["voice"] == "Ava Song"
    ok, bad = out["results"]["ok"], out["results"]["bad_voice"]
    assert ok["type"] == "ToolMessage"
    assert (ok["tool_call_id"], ok["status"]) == ("ok", "success")
    assert ok["text"] == [
        f"Speech generated {DEFAULT_MODEL}: {url} (voice 'Ava Song', wav, 2,500 credits)."
    ]
    # Only the text: the adapters would hand a resource_link to the model as a file block,
    # which OpenAI Chat Completions refuses, so a 1.x client gets none (octave_tools.mcp).
    assert [block["type"] for block in ok["content"]] == ["text"]
    assert ok["artifact"]["structured_content"]["audio_url"] == url
    assert ok["artifact"]["structured_content"]["credits_used"] == 2500
    assert (bad["tool_call_id"], bad["status"]) == ("bad_voice", "error")
    assert bad["text"][0].startswith(
        "Error executing tool text_to_speech: Unknown voice 'Ava Sung' for model "
        "'hume/octave-2'. Did you mean 'Ava Song'?"
    )
