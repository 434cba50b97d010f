"""Long text and dialogue on every face: MCP progress per part, LangChain artifacts with
parts, and `say --file` / `say --script` end to end, all against the fake AIML API.

A tiny ``chunk_chars`` makes three short sentences three parts, so the tests stay fast.
"""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import pytest
from harness import CLI, api_options, cli, cli_process, connect, subprocess_env, text_of
from harness import api_env as env_for
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import ToolCall
from mcp import Client

from octave_tools.cli import _ProgressBar
from octave_tools.langchain import (
    PROGRESS_EVENT,
    OctaveDialogueTool,
    OctaveToolkit,
    OctaveTTSTool,
)
from octave_tools.mcp import create_server
from octave_tools.testing import FakeAIMLAPI

SENTENCES = ["First sentence here.", "Second one is here.", "Third is the last."]
TEXT = " ".join(SENTENCES)
SPANS = [(0, 20), (21, 40), (41, 59)]
CHUNK = "25"  # each sentence fits, no two do
LINES = [
    {"voice": "Ava Song", "text": "Welcome to the show."},
    {"voice": "Vince Douglas", "text": "Thanks for having me."},
    {"voice": "ava song", "text": "Let us begin."},
]
SCRIPT = """\
---
Host: Ava Song
Guest: Vince Douglas
---
# Episode 1
Host: Welcome to the show.
Guest: Thanks for having
  me.
Host: Let us begin.
"""


def call(args: dict[str, Any], name: str) -> ToolCall:
    return ToolCall(name=name, args=args, id="call-1", type="tool_call")


def spoken(api: FakeAIMLAPI) -> list[tuple[str, str]]:
    """(voice, text) of every request, sorted: parts may be sent in any order."""
    return sorted((r.json["voice"], r.json["text"]) for r in api.tts_requests)


def local_file(url: str) -> Path:
    assert url.startswith("file://"), url
    return Path(urlsplit(url).path)


# ---------------------------------------------------------------- MCP


async def test_mcp_reports_each_part_as_progress_over_stdio(
    fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    env = env_for(fake_aimlapi, OCTAVE_TOOLS_CHUNK_CHARS=CHUNK)
    async with connect("stdio", env, monkeypatch) as client:
        result = await client.call_tool(
            "text_to_speech", {"text": TEXT}, progress_callback=on_progress
        )

    assert result.is_error is False, text_of(result)
    assert seen == [
        (0, 1, "Generating speech"),
        (1, 3, "1 of 3 parts"),
        (2, 3, "2 of 3 parts"),
        (3, 3, "3 of 3 parts"),
    ]
    structured = result.structured_content
    assert structured is not None
    assert [(p["start"], p["end"]) for p in structured["parts"]] == SPANS
    assert structured["characters"] == sum(end - start for start, end in SPANS)
    assert local_file(structured["audio_url"]).is_file()
    assert sorted(text for _, text in spoken(fake_aimlapi)) == sorted(SENTENCES)


async def test_mcp_speaks_a_dialogue_in_order_with_progress(fake_aimlapi: FakeAIMLAPI) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(create_server(**api_options(fake_aimlapi))) as client:
        result = await client.call_tool(
            "text_to_dialogue", {"lines": LINES}, progress_callback=on_progress
        )

    assert result.is_error is False, text_of(result)
    parts = result.structured_content["parts"]  # type: ignore[index]
    assert [p["voice"] for p in parts] == ["Ava Song", "Vince Douglas", "Ava Song"]
    assert seen[0] == (0, 1, "Generating speech")
    assert seen[1:] == [(n, 3, f"{n} of 3 parts") for n in (1, 2, 3)]
    assert spoken(fake_aimlapi) == sorted(
        [
            ("Ava Song", "Welcome to the show."),
            ("Vince Douglas", "Thanks for having me."),
            ("Ava Song", "Let us begin."),
        ]
    )


async def test_mcp_dialogue_with_an_unknown_voice_names_the_line_and_sends_nothing(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    lines = [LINES[0], {"voice": "Ava Sung", "text": "Oops."}]
    async with Client(create_server(**api_options(fake_aimlapi))) as client:
        result = await client.call_tool("text_to_dialogue", {"lines": lines})

    assert result.is_error is True
    assert text_of(result).startswith(
        "Error executing tool text_to_dialogue: line 2: unknown voice 'Ava Sung' for model "
        "'hume/octave-2'. Did you mean 'Ava Song'?"
    )
    assert fake_aimlapi.requests == []


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ([], "lines: List should have at least 1 item after validation, not 0"),
        (
            [LINES[0], {**LINES[1], "speaker": "Guest"}],
            "line 2 speaker: unknown field; each line takes only: voice, text",
        ),
        ([{"voice": "Ava Song"}], "line 1 text: Field required"),
    ],
)
async def test_mcp_dialogue_arguments_that_fail_the_schema_are_explained(
    fake_aimlapi: FakeAIMLAPI, lines: list[dict[str, str]], problem: str
) -> None:
    async with Client(create_server(**api_options(fake_aimlapi))) as client:
        result = await client.call_tool("text_to_dialogue", {"lines": lines})

    assert result.is_error is True
    assert text_of(result) == (
        f"Error executing tool text_to_dialogue: invalid arguments: {problem}. "
        "Correct them and call the tool again."
    )
    assert fake_aimlapi.requests == []


# ---------------------------------------------------------------- LangChain


class Events(BaseCallbackHandler):
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: Any = None,
        metadata: Any = None,
        **kwargs: Any,
    ) -> None:
        self.seen.append((name, data))


def test_langchain_long_text_comes_back_with_its_parts_and_progress_events(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    tool = OctaveTTSTool(**api_options(fake_aimlapi, chunk_chars=int(CHUNK)))
    events = Events()

    message = tool.invoke(call({"text": TEXT}, tool.name), config={"callbacks": [events]})

    assert message.status == "success"
    assert [(p["start"], p["end"]) for p in message.artifact["parts"]] == SPANS
    assert local_file(message.artifact["audio_url"]).is_file()
    assert sorted(data["done"] for _, data in events.seen) == [0, 1, 2, 3]
    assert {(name, data["total"]) for name, data in events.seen} == {(PROGRESS_EVENT, 3)}


async def test_langchain_dialogue_tool_async_returns_one_file_with_parts_in_order(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    tool = OctaveDialogueTool(**api_options(fake_aimlapi))

    message = await tool.ainvoke(call({"lines": LINES, "format": "wav"}, tool.name))

    assert message.status == "success"
    assert str(message.content).startswith("Speech generated hume/octave-2: file://")
    assert [p["voice"] for p in message.artifact["parts"]] == [
        "Ava Song",
        "Vince Douglas",
        "Ava Song",
    ]
    assert message.artifact["format"] == "wav"
    assert local_file(message.artifact["audio_url"]).is_file()


def test_langchain_dialogue_with_an_unknown_voice_is_the_model_s_to_fix(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    tool = OctaveDialogueTool(**api_options(fake_aimlapi))

    message = tool.invoke(call({"lines": [{"voice": "Ava Sung", "text": "Hi"}]}, tool.name))

    assert message.status == "error"
    assert str(message.content).startswith("Error: line 1: ")
    assert fake_aimlapi.requests == []


def test_the_toolkit_offers_the_dialogue_tool() -> None:
    tools = OctaveToolkit(engine="aimlapi").get_tools()

    assert [t.name for t in tools] == ["text_to_speech", "text_to_dialogue", "list_voices"]
    assert isinstance(tools[1], OctaveDialogueTool)


# ---------------------------------------------------------------- the CLI


def test_say_file_speaks_long_text_as_one_file_quietly_when_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
    fake_aimlapi: FakeAIMLAPI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env_for(fake_aimlapi, OCTAVE_TOOLS_CHUNK_CHARS=CHUNK).items():
        monkeypatch.setenv(name, value)
    article = tmp_path / "article.txt"
    article.write_text(TEXT + "\n", encoding="utf-8")

    code, out, err = cli(capsys, "say", "--file", str(article), "--json")

    assert (code, err) == (0, "")
    record = json.loads(out)
    assert [(p["start"], p["end"], p["index"]) for p in record["parts"]] == [
        (start, end, index) for index, (start, end) in enumerate(SPANS)
    ]
    assert local_file(record["audio_url"]).is_file()
    assert sorted(text for _, text in spoken(fake_aimlapi)) == sorted(SENTENCES)


def test_say_file_dash_reads_stdin(fake_aimlapi: FakeAIMLAPI) -> None:
    proc = cli_process(
        "say",
        "--file",
        "-",
        input=TEXT.encode(),
        env=subprocess_env(fake_aimlapi, OCTAVE_TOOLS_CHUNK_CHARS=CHUNK),
    )

    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    assert local_file(proc.stdout.decode().strip()).is_file()
    assert len(fake_aimlapi.tts_requests) == 3


def test_say_script_casts_from_front_matter_and_the_option(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI, tmp_path: Path
) -> None:
    script = tmp_path / "show.txt"
    script.write_text(SCRIPT, encoding="utf-8")

    code, out, err = cli(
        capsys, "say", "--script", str(script), "--cast", "guest=Colton Rivers", "--json"
    )

    assert (code, err) == (0, "")
    record = json.loads(out)
    assert [(p["speaker"], p["voice"]) for p in record["parts"]] == [
        ("Host", "Ava Song"),
        ("Guest", "Colton Rivers"),
        ("Host", "Ava Song"),
    ]
    assert spoken(api_env) == sorted(
        [
            ("Ava Song", "Welcome to the show."),
            ("Colton Rivers", "Thanks for having me."),
            ("Ava Song", "Let us begin."),
        ]
    )


def test_say_script_with_an_uncast_speaker_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI, tmp_path: Path
) -> None:
    script = tmp_path / "show.txt"
    script.write_text("Host: Hi.\nGuest: Hello.\n", encoding="utf-8")

    code, out, err = cli(capsys, "say", "--script", str(script), "--cast", "Host=Ava Song")

    assert (code, out) == (2, "")
    assert err.startswith(
        f"octave-tools: error: {script}: speaker 'Guest' (line 2) has no voice. Cast it with "
        '--cast "Guest=VOICE"'
    )
    assert api_env.requests == []


def test_say_script_with_an_unknown_voice_names_the_script_line(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI, tmp_path: Path
) -> None:
    script = tmp_path / "show.txt"
    script.write_text(SCRIPT, encoding="utf-8")

    code, out, err = cli(capsys, "say", "--script", str(script), "--cast", "Guest=Ava Sung")

    assert (code, out) == (2, "")
    assert err.startswith(f"octave-tools: error: {script} line 7 (Guest): ")
    assert "Ava Sung" in err and "Ava Song" in err
    assert api_env.requests == []


@pytest.mark.parametrize(
    ("script", "extra", "message"),
    [
        ("# nothing yet\n", {}, "{path} has no lines to speak; write each as 'Speaker: words'"),
        (
            SCRIPT,
            {"OCTAVE_TOOLS_MAX_TEXT_CHARS": "40"},
            "The dialogue is 54 characters; one call takes at most 40 (max_text_chars).",
        ),
    ],
    ids=["no-lines", "over-the-limit"],
)
def test_say_script_with_nothing_to_say_or_too_much_exits_2_before_any_request(
    capsys: pytest.CaptureFixture[str],
    api_env: FakeAIMLAPI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    script: str,
    extra: dict[str, str],
    message: str,
) -> None:
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "show.txt"
    path.write_text(script, encoding="utf-8")

    code, out, err = cli(capsys, "say", "--script", str(path))

    assert (code, out) == (2, "")
    assert err.startswith(f"octave-tools: error: {message.format(path=path)}")
    assert api_env.requests == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["say"], "say takes one of TEXT, --file or --script (got none)"),
        (
            ["say", "Hi", "--file", "a.txt"],
            "say takes one of TEXT, --file or --script (got TEXT and --file)",
        ),
        (["say", "Hi", "--cast", "A=Ava Song"], "--cast casts the speakers of a --script"),
        (["say", "--script", "s.txt", "--voice", "Ava Song"], "--voice does not apply to --script"),
        (["say", "--file", "missing.txt"], "'missing.txt' does not exist"),
    ],
)
def test_say_source_mistakes_exit_2_before_any_request(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI, argv: list[str], message: str
) -> None:
    code, out, err = cli(capsys, *argv)

    assert (code, out) == (2, "")
    assert err.startswith(f"octave-tools: error: {message}")
    assert api_env.requests == []


def test_say_draws_a_progress_bar_when_stderr_is_a_terminal(fake_aimlapi: FakeAIMLAPI) -> None:
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*CLI, "say", TEXT],
            env=subprocess_env(fake_aimlapi, OCTAVE_TOOLS_CHUNK_CHARS=CHUNK, COLUMNS="100"),
            stdout=subprocess.PIPE,
            stderr=follower,
        )
        os.close(follower)
        follower = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            drawn += chunk
        assert proc.wait(60) == 0
        assert proc.stdout is not None
        url = proc.stdout.read().decode().strip()
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)

    assert local_file(url).is_file()
    screen = drawn.decode("utf-8", "replace")
    assert "Speaking" in screen and "3/3" in screen and "parts" in screen


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_rich_the_bar_is_a_plain_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("rich", "rich.console", "rich.progress"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError
    screen = Terminal()
    bar = _ProgressBar(screen)

    bar(1, 3)
    bar(3, 3)
    bar.close()

    assert screen.getvalue() == "\rSpeaking: 1 of 3 parts\rSpeaking: 3 of 3 parts\n"


@pytest.mark.parametrize(("stream", "total"), [(io.StringIO(), 3), (Terminal(), 1)])
def test_the_bar_stays_quiet_off_a_terminal_and_for_one_part(
    stream: io.StringIO, total: int
) -> None:
    bar = _ProgressBar(stream)

    bar(1, total)
    bar.close()

    assert stream.getvalue() == ""


def test_the_bar_is_rich_s_and_the_cli_does_not_need_it_to_import() -> None:
    code = "import sys, octave_tools.cli; print('rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
