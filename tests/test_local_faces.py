"""Every face speaks offline: with no key, LangChain, MCP and the CLI return a file:// WAV."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest

from octave_tools import _local

pytestmark = pytest.mark.skipif(
    not _local.is_available(), reason="the [local] extra is not installed"
)

TEXT = "Hello from the offline engine."


def audible_wav(url: str) -> Path:
    """The file behind ``url``, after checking it is a WAV with sound in it."""
    assert url.startswith("file://")
    path = Path(url2pathname(urlsplit(url).path))
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22_050)
        frames = w.readframes(w.getnframes())
    assert len(frames) > 22_050  # more than half a second
    assert frames.count(0) < len(frames) * 0.9
    return path


def check_local_record(record: dict[str, Any]) -> None:
    assert record["engine"] == "local"
    assert record["model"] == "espeak-ng"
    assert record["credits_used"] == 0
    assert record["format"] == "wav"
    audible_wav(record["audio_url"])


# ------------------------------------------------------------------ LangChain


def tts_tool() -> Any:
    pytest.importorskip("langchain_core")
    face = pytest.importorskip("octave_tools.langchain")
    if not hasattr(face, "OctaveTTSTool"):
        pytest.skip("octave_tools.langchain has no OctaveTTSTool yet")
    return face.OctaveTTSTool()


def tool_call(text: str) -> dict[str, Any]:
    return {"type": "tool_call", "id": "call-1", "name": "text_to_speech", "args": {"text": text}}


def test_langchain_tool_returns_the_file_url_and_local_engine() -> None:
    message = tts_tool().invoke(tool_call(TEXT))
    check_local_record(message.artifact)
    assert message.artifact["audio_url"] in message.content
    assert "local engine (not Octave)" in message.content


async def test_langchain_tool_async_returns_the_file_url_and_local_engine() -> None:
    message = await tts_tool().ainvoke(tool_call(TEXT))
    check_local_record(message.artifact)
    assert message.artifact["audio_url"] in message.content


# ------------------------------------------------------------------ MCP


def mcp_server() -> Any:
    face = pytest.importorskip("octave_tools.mcp")
    if not hasattr(face, "create_server"):
        pytest.skip("octave_tools.mcp has no create_server yet")
    return face.create_server()


async def test_mcp_tool_returns_the_file_url_and_local_engine() -> None:
    from mcp import Client

    async with Client(mcp_server()) as client:
        result = await client.call_tool("text_to_speech", {"text": TEXT})
    assert not result.is_error
    check_local_record(result.structured_content)
    text = " ".join(block.text for block in result.content if block.type == "text")
    assert result.structured_content["audio_url"] in text
    assert "local engine (not Octave)" in text


async def test_mcp_lists_the_local_voices() -> None:
    from mcp import Client

    async with Client(mcp_server()) as client:
        result = await client.call_tool("list_voices", {})
    assert not result.is_error
    listed = json.dumps(result.structured_content)
    assert "espeak-ng" in listed and '"en-us"' in listed


async def test_mcp_unknown_local_voice_is_a_tool_error_with_a_suggestion() -> None:
    from mcp import Client

    async with Client(mcp_server()) as client:
        result = await client.call_tool("text_to_speech", {"text": TEXT, "voice": "en-uss"})
    assert result.is_error
    text = " ".join(block.text for block in result.content if block.type == "text")
    assert "Did you mean 'en-us'" in text


# ------------------------------------------------------------------ CLI


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("octave_tools.cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMLAPI_")}
    return subprocess.run(
        [sys.executable, "-m", "octave_tools.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_readme_first_command_writes_an_audible_wav_with_no_key(tmp_path: Path) -> None:
    done = cli("say", "Hello! This is octave-tools speaking.", "--out", "hello.wav", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = tmp_path / "hello.wav"
    audible_wav(saved.as_uri())
    assert done.stdout.strip().startswith("file://")
    audible_wav(done.stdout.strip())
    assert "not Octave" in done.stderr


def test_cli_voices_lists_the_local_catalogue(tmp_path: Path) -> None:
    done = cli("voices", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    assert listing["engine"] == "local"
    assert listing["default"] == "en-us"
    assert "fr-fr" in json.dumps(listing["voices"])
