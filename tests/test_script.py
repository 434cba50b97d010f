"""The dialogue script format of `say --script`: front matter, cast, continuations, comments."""

from __future__ import annotations

import re

import pytest

from octave_tools import InvalidInputError
from octave_tools._script import ScriptLine, parse_cast, parse_script

SCRIPT = """\
---
Host: Ava Song
# the guest is the narrator voice
Guest: Vince Douglas
---
# Episode 1
Host: Welcome to the show.
Guest: Thanks for having me. It is
  good to be here.

Host: Let us begin.
"""


def test_front_matter_casts_the_speakers_and_lines_come_in_order() -> None:
    script = parse_script(SCRIPT, source="show.txt")

    assert script.cast == {"Host": "Ava Song", "Guest": "Vince Douglas"}
    assert script.lines == (
        ScriptLine("Host", "Welcome to the show.", 7),
        ScriptLine("Guest", "Thanks for having me. It is good to be here.", 8),
        ScriptLine("Host", "Let us begin.", 11),
    )
    assert script.dialogue() == [
        {"voice": "Ava Song", "text": "Welcome to the show.", "speaker": "Host"},
        {
            "voice": "Vince Douglas",
            "text": "Thanks for having me. It is good to be here.",
            "speaker": "Guest",
        },
        {"voice": "Ava Song", "text": "Let us begin.", "speaker": "Host"},
    ]


def test_the_cast_option_wins_over_the_front_matter_and_matches_any_case() -> None:
    script = parse_script(SCRIPT)

    lines = script.dialogue(parse_cast(["host=Colton Rivers"]))

    assert [line["voice"] for line in lines] == ["Colton Rivers", "Vince Douglas", "Colton Rivers"]


def test_a_script_without_front_matter_takes_its_cast_from_the_option() -> None:
    script = parse_script("A: One.\nB: Two.\n")

    assert script.cast == {}
    assert script.dialogue(parse_cast(["A=Ava Song, B = Vince Douglas", "B=Tough Guy"])) == [
        {"voice": "Ava Song", "text": "One.", "speaker": "A"},
        {"voice": "Tough Guy", "text": "Two.", "speaker": "B"},
    ]


def test_a_blank_line_inside_a_turn_keeps_the_paragraph_break() -> None:
    script = parse_script("Host: First paragraph.\n\nSecond paragraph.\nHost: Next.\n")

    assert [line.text for line in script.lines] == [
        "First paragraph.\n\nSecond paragraph.",
        "Next.",
    ]


def test_the_words_may_start_on_the_next_line() -> None:
    assert parse_script("Host:\n  Welcome.\n").lines == (ScriptLine("Host", "Welcome.", 1),)


@pytest.mark.parametrize(
    "row", ["At 10:30 we start.", "See https://example.org for more.", "  Note: indented."]
)
def test_a_colon_not_followed_by_a_space_or_an_indented_line_is_not_a_speaker(row: str) -> None:
    script = parse_script(f"Host: Hello.\n{row}\n")

    assert script.lines == (ScriptLine("Host", f"Hello. {row.strip()}", 1),)


def test_a_long_label_before_a_colon_is_words_not_a_speaker() -> None:
    row = "And this is what the long sentence before a colon says: words"
    assert parse_script(f"Host: Hi.\n{row}\n").lines[0].text == f"Hi. {row}"


def test_comment_lines_are_skipped_anywhere() -> None:
    script = parse_script("# intro\nHost: One.\n  # aside\nTwo.\n")

    assert script.lines == (ScriptLine("Host", "One. Two.", 2),)


def test_speakers_are_listed_once_as_first_written() -> None:
    assert parse_script("Host: a\nguest: b\nHOST: c\n").speakers() == ["Host", "guest"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "",
            "show.txt has no lines to speak; write each as 'Speaker: words' "
            "(e.g. 'Host: Welcome to the show.').",
        ),
        ("# only a comment\n\n", "show.txt has no lines to speak"),
        ("---\nHost: Ava Song\n---\n", "show.txt has no lines to speak"),
        (
            "Hello there.\nHost: Hi.",
            "show.txt line 1: words before the first speaker; begin "
            "each line of dialogue with 'Speaker: words' (e.g. 'Host: Welcome to the show.').",
        ),
        (
            "Host: Hi.\nGuest:\nHost: Bye.",
            "show.txt line 2: Guest says nothing; write the "
            "words after 'Guest:' or remove the line.",
        ),
        (
            "---\nHost: Ava Song\nHost: Hi.",
            "show.txt line 1: the front matter is never "
            "closed; end it with a line holding only '---'.",
        ),
        (
            "---\nHost Ava Song\n---\nHost: Hi.",
            "show.txt line 2: front matter casts a speaker "
            "as 'Speaker: voice' (e.g. 'Host: Ava Song'), not 'Host Ava Song'.",
        ),
        (
            "---\nHost: Ava Song\nhost: Tough Guy\n---\nHost: Hi.",
            "show.txt line 3: host is cast twice in the front matter; keep one.",
        ),
    ],
)
def test_bad_scripts_name_the_line_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(message)) as raised:
        parse_script(text, source="show.txt")
    assert raised.value.field == "script"


def test_a_speaker_without_a_voice_is_named_with_the_fix() -> None:
    script = parse_script("Host: Hi.\nGuest: Hello.\nHost: Bye.\n", source="show.txt")

    with pytest.raises(InvalidInputError) as raised:
        script.dialogue(parse_cast(["Host=Ava Song"]))

    assert str(raised.value) == (
        "show.txt: speaker 'Guest' (line 2) has no voice. Cast it with --cast \"Guest=VOICE\" "
        "or in front matter at the top of the file ('---', then 'Guest: VOICE', then '---'); "
        "`octave-tools voices` lists the names. If such a line continues the one above, "
        "indent it."
    )


def test_every_speaker_without_a_voice_is_named_at_once() -> None:
    script = parse_script("Host: Hi.\nGuest: Hello.\nNote: this one.\n")

    with pytest.raises(
        InvalidInputError,
        match=r"speakers 'Host' \(line 1\), 'Guest' \(line 2\), "
        r"'Note' \(line 3\) have no voice\. Cast them with --cast "
        r'"Host=VOICE,Guest=VOICE,Note=VOICE"',
    ):
        script.dialogue()


@pytest.mark.parametrize("spec", ["Host", "Host=", "=Ava Song", "Host:Ava Song"])
def test_a_cast_item_that_is_not_speaker_equals_voice_is_refused(spec: str) -> None:
    with pytest.raises(InvalidInputError, match=r"is not SPEAKER=VOICE; write it as --cast"):
        parse_cast([spec])
