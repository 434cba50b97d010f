"""Every face speaks offline: with no key, LangChain, MCP and the CLI return a file:// WAV."""

from __future__ import annotations

import json
import subprocess
import wave
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest
from harness import cli_process, subprocess_env
from mcp import Client

from octave_tools import _local
from octave_tools.langchain import OctaveTTSTool
from octave_tools.mcp import create_server

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


def tts_tool() -> OctaveTTSTool:
    return OctaveTTSTool()


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


async def test_mcp_tool_returns_the_file_url_and_local_engine() -> None:
    async with Client(create_server()) as client:
        result = await client.call_tool("text_to_speech", {"text": TEXT})
    assert not result.is_error
    check_local_record(result.structured_content)
    text = " ".join(block.text for block in result.content if block.type == "text")
    assert result.structured_content["audio_url"] in text
    assert "local engine (not Octave)" in text


async def test_mcp_lists_the_local_voices() -> None:
    async with Client(create_server()) as client:
        result = await client.call_tool("list_voices", {})
    assert not result.is_error
    listed = json.dumps(result.structured_content)
    assert "espeak-ng" in listed and '"en-us"' in listed


async def test_mcp_unknown_local_voice_is_a_tool_error_with_a_suggestion() -> None:
    async with Client(create_server()) as client:
        result = await client.call_tool("text_to_speech", {"text": TEXT, "voice": "en-uss"})
    assert result.is_error
    text = " ".join(block.text for block in result.content if block.type == "text")
    assert "Did you mean 'en-us'" in text


# ------------------------------------------------------------------ CLI


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process with no key in its environment."""
    return cli_process(*args, env=subprocess_env(), cwd=cwd, text=True)


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
