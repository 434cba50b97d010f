"""Dialogue: lines in order, each in its own voice, one file; every line checked first."""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest

from octave_tools import (
    AsyncOctaveClient,
    DialogueLine,
    InvalidInputError,
    OctaveClient,
    Speech,
)
from octave_tools.testing import FakeAIMLAPI

KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


@pytest.fixture
def api() -> Iterator[FakeAIMLAPI]:
    with FakeAIMLAPI(latency=0.02) as fake:
        yield fake


def options(api: FakeAIMLAPI, **extra: Any) -> dict[str, Any]:
    return {
        "api_key": api.api_key,
        "base_url": api.base_url,
        "engine": "aimlapi",
        "max_retries": 0,
        **extra,
    }


def dialogue(kind: str, opts: dict[str, Any], lines: Any, **kw: Any) -> Speech:
    if kind == "sync":
        with OctaveClient(**opts) as client:
            return client.synthesize_dialogue(lines, **kw)

    async def go() -> Speech:
        async with AsyncOctaveClient(**opts) as client:
            return await client.synthesize_dialogue(lines, **kw)

    return asyncio.run(go())


def wav_frames(data: bytes) -> tuple[int, int]:
    with wave.open(io.BytesIO(data), "rb") as w:
        return w.getnframes(), w.getframerate()


def in_part_order(api: FakeAIMLAPI) -> list[dict[str, Any]]:
    sent = sorted(api.tts_requests, key=lambda r: r.headers["x-client-request-id"])
    return [r.json for r in sent]


LINES = [
    {"voice": "Ava Song", "text": "Welcome to the show. Today we talk about rivers."},
    DialogueLine("Vince Douglas", "Thanks, Ava. Rivers are older than roads."),
    {"voice": "ava song", "text": "And they still carry most of the trade.", "speaker": "Host"},
]


@KINDS
def test_two_voices_speak_in_order_with_a_pause_between_lines(kind: str, api: FakeAIMLAPI) -> None:
    seen: list[tuple[int, int]] = []
    speech = dialogue(kind, options(api), LINES, on_progress=lambda d, t: seen.append((d, t)))
    bodies = in_part_order(api)
    assert [(b["voice"], b["text"]) for b in bodies] == [
        ("Ava Song", LINES[0]["text"]),  # type: ignore[index]
        ("Vince Douglas", "Thanks, Ava. Rivers are older than roads."),
        ("Ava Song", "And they still carry most of the trade."),
    ]
    assert all(b["model"] == "hume/octave-2" and b["format"] == "wav" for b in bodies)
    assert speech.parts is not None
    assert [(p.line, p.speaker, p.voice) for p in speech.parts] == [
        (0, "Ava Song", "Ava Song"),
        (1, "Vince Douglas", "Vince Douglas"),
        (2, "Host", "Ava Song"),
    ]
    assert seen[-1] == (3, 3)
    assert speech.voice == "Ava Song, Vince Douglas"
    assert speech.characters == sum(len(b["text"]) for b in bodies)
    assert "3 parts joined into one file" in speech.summary()
    # The joined file: every part, and 400 ms of silence between lines.
    parts = [api._files[urlsplit(p.audio_url).path] for p in speech.parts]
    counts = [wav_frames(p) for p in parts]
    rate = counts[0][1]
    joined = Path(url2pathname(urlsplit(speech.audio_url).path)).read_bytes()
    assert wav_frames(joined) == (sum(n for n, _ in counts) + 2 * rate * 400 // 1000, rate)


@KINDS
def test_a_long_line_is_split_and_its_parts_keep_the_line(kind: str, api: FakeAIMLAPI) -> None:
    long_line = " ".join(f"Sentence {i} of the long answer." for i in range(40))
    lines = [
        {"voice": "Ava Song", "text": "Question?"},
        {"voice": "Vince Douglas", "text": long_line},
    ]
    speech = dialogue(kind, options(api, chunk_chars=300), lines, pause_ms=0)
    assert speech.parts is not None and len(speech.parts) > 3
    assert speech.parts[0].line == 0 and {p.line for p in speech.parts[1:]} == {1}
    assert [p.index for p in speech.parts] == list(range(len(speech.parts)))
    assert [long_line[p.start : p.end] for p in speech.parts[1:]] == [
        b["text"] for b in in_part_order(api)[1:]
    ]


def test_the_pause_falls_between_lines_not_inside_a_split_line(api: FakeAIMLAPI) -> None:
    long_line = " ".join(f"Sentence {i} of the long answer." for i in range(40))
    lines = [
        {"voice": "Ava Song", "text": "Question?"},
        {"voice": "Vince Douglas", "text": long_line},
    ]
    speech = dialogue("sync", options(api, chunk_chars=300), lines, pause_ms=500)
    assert speech.parts is not None and len(speech.parts) > 3
    counts = [wav_frames(api._files[urlsplit(p.audio_url).path]) for p in speech.parts]
    rate = counts[0][1]
    joined = Path(url2pathname(urlsplit(speech.audio_url).path)).read_bytes()
    # One pause: between the two speakers, none between the parts of line 2.
    assert wav_frames(joined) == (sum(n for n, _ in counts) + rate * 500 // 1000, rate)


def test_unknown_voice_names_the_line_and_the_fix_before_any_request(api: FakeAIMLAPI) -> None:
    lines = [*LINES[:2], {"voice": "Ava Sung", "text": "Hi."}]
    with pytest.raises(InvalidInputError) as caught:
        dialogue("sync", options(api), lines)
    message = str(caught.value)
    assert message.startswith("line 3: unknown voice 'Ava Sung'")
    assert "Did you mean 'Ava Song'?" in message
    assert caught.value.field == "lines[2].voice"
    assert api.requests == []


@pytest.mark.parametrize(
    ("lines", "field", "message"),
    [
        ([], "lines", "The dialogue has no lines"),
        ("Ava: hi", "lines", "lines must be a list"),
        ([{"voice": "Ava Song", "text": "Hi."}, {"voice": "Ava Song", "text": "  "}],
         "lines[1].text", "line 2: text is empty"),
        ([{"text": "Hi."}], "lines[0].voice", "line 1: voice is missing"),
        ([{"voice": "Ava Song", "text": "Hi.", "mood": "calm"}], "lines[0]",
         "line 1: unknown key 'mood'"),
        (["hello"], "lines[0]", "line 1 must be an object with voice and text"),
        ([{"voice": "Ava Song", "text": "x" * 60}, {"voice": "Ava Song", "text": "y" * 50}],
         "lines", "The dialogue is 110 characters; one call takes at most 100"),
    ],
)  # fmt: skip
def test_bad_dialogues_are_refused_before_any_request(
    api: FakeAIMLAPI, lines: Any, field: str, message: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        dialogue("sync", options(api, max_text_chars=100), lines)
    assert str(caught.value).startswith(message)
    assert caught.value.field == field
    assert api.requests == []


def test_lines_whose_models_give_different_formats_are_refused(api: FakeAIMLAPI) -> None:
    lines = [
        {"voice": "Ava Song", "text": "Hi."},
        {"voice": "alloy", "text": "Hello.", "model": "openai/tts-1"},
    ]
    with pytest.raises(InvalidInputError, match=r"different formats \(mp3, wav\)"):
        dialogue("sync", options(api), lines)
    assert api.requests == []
    # One format both give: accepted, each line on its own model.
    speech = dialogue("sync", options(api), lines, format="wav")
    assert [b["model"] for b in in_part_order(api)] == ["hume/octave-2", "openai/tts-1"]
    assert speech.model == "hume/octave-2, openai/tts-1"


def test_a_bad_line_model_names_the_line(api: FakeAIMLAPI) -> None:
    lines = [{"voice": "Ava Song", "text": "Hi."}, {"voice": "x", "text": "Yo.", "model": "a/b"}]
    with pytest.raises(InvalidInputError, match=r"^line 2: model 'a/b' is not offered here"):
        dialogue("sync", options(api, models="openai/tts-1"), lines)
    assert api.requests == []


def test_pause_ms_is_checked(api: FakeAIMLAPI) -> None:
    with pytest.raises(InvalidInputError, match="pause_ms must be"):
        dialogue("sync", options(api), LINES, pause_ms=-1)
    assert api.requests == []
