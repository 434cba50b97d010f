"""The LangChain examples run offline, as a reader would run them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"
URL = r"http://127\.0\.0\.1:\d+/files/[0-9a-f]{32}"


def run(name: str, *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout.splitlines()


def test_agent_example_corrects_the_voice_and_returns_the_url() -> None:
    lines = run("langchain_agent.py")

    assert lines[:4] == [
        '[human] Please read "Welcome to octave-tools!" aloud in the Frensh Chef voice.',
        "[model -> text_to_speech] {'text': 'Welcome to octave-tools!', 'voice': 'Frensh Chef'}",
        "[text_to_speech, error] Error: Unknown voice 'Frensh Chef' for model 'hume/octave-2'. "
        "Did you mean 'French Chef'? Call list_voices (or run `octave-tools voices`) for the "
        "full list.",
        "[model -> text_to_speech] {'text': 'Welcome to octave-tools!', 'voice': 'French Chef'}",
    ]
    sentence = (
        rf"Speech generated hume/octave-2: {URL}\.wav \(voice 'French Chef', wav, 3,000 credits\)\."
    )
    assert re.fullmatch(rf"\[text_to_speech, success\] {sentence}", lines[4])
    assert re.fullmatch(r"    artifact: credits_used=3000, request_id=[0-9a-f-]{36}", lines[5])
    assert re.fullmatch(rf"\[ai\] Here you go! {sentence}", lines[6])
    assert len(lines) == 7


def test_chain_example_narrates_every_line_and_totals_the_credits() -> None:
    lines = run("langchain_chain.py")

    voices = ["Nature Documentary Narrator", "French Chef", "Tough Guy", "French Chef"]
    for number, (line, voice) in enumerate(zip(lines[:4], voices, strict=True), 1):
        pattern = (
            rf"line-{number}: Speech generated hume/octave-2: {URL}\.mp3 "
            rf"\(voice '{voice}', mp3, [\d,]+ credits\)\."
        )
        assert re.fullmatch(pattern, line), line
    assert lines[4:] == ["4 lines, 15,375 credits in all."]
