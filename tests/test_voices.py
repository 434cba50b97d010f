"""The voice catalogue and voice/format resolution."""

from __future__ import annotations

import pytest

from octave_tools import DEFAULT_VOICE, VOICES, InvalidInputError
from octave_tools.voices import catalogue_for, resolve_format, resolve_voice


def test_catalogue_has_the_27_documented_voices_in_order() -> None:
    assert len(VOICES) == 27
    assert len(set(VOICES)) == 27
    assert VOICES[0] == "Vince Douglas" == DEFAULT_VOICE
    assert VOICES[-1] == "Charming Cowgirl"
    assert "English Children's Book Narrator" in VOICES


def test_resolve_voice_defaults_to_vince_douglas() -> None:
    assert resolve_voice(None, "hume/octave-2") == "Vince Douglas"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ava song", "Ava Song"),
        ("  AVA   SONG ", "Ava Song"),
        ("english children\u2019s book narrator", "English Children's Book Narrator"),
        ("TikTok Fashion Influencer", "TikTok Fashion Influencer"),
    ],
)
def test_resolve_voice_normalises_case_space_and_apostrophes(given: str, expected: str) -> None:
    assert resolve_voice(given, "hume/octave-2") == expected


def test_unknown_voice_suggests_the_closest_name() -> None:
    with pytest.raises(InvalidInputError) as info:
        resolve_voice("Ava Sung", "hume/octave-2")
    assert info.value.field == "voice"
    assert str(info.value) == (
        "Unknown voice 'Ava Sung' for model 'hume/octave-2'. Did you mean 'Ava Song'? "
        "Call list_voices (or run `octave-tools voices`) for the full list."
    )


def test_unknown_voice_with_no_close_match_lists_every_voice() -> None:
    with pytest.raises(InvalidInputError) as info:
        resolve_voice("zzzzzzzz", "hume/octave-2")
    message = str(info.value)
    assert "Valid voices: Vince Douglas, Male English Actor," in message
    assert "Charming Cowgirl." in message


def test_empty_voice_is_rejected_with_the_fix() -> None:
    with pytest.raises(InvalidInputError, match="voice is empty. Leave it out"):
        resolve_voice("   ", "hume/octave-2")


def test_unknown_model_passes_voice_through() -> None:
    assert catalogue_for("acme/tts-9") is None
    assert resolve_voice("Deborah", "acme/tts-9") == "Deborah"
    assert resolve_voice(None, "acme/tts-9") is None


def test_every_catalogued_model_has_its_own_voices() -> None:
    assert resolve_voice("deborah", "inworld/tts-1") == "Deborah"
    assert resolve_voice(None, "inworld/tts-1") == "Alex"
    assert resolve_voice("NOVA", "openai/tts-1") == "nova"
    with pytest.raises(InvalidInputError, match="Unknown voice 'Ava Song' for model 'openai/"):
        resolve_voice("Ava Song", "openai/tts-1")


@pytest.mark.parametrize(("given", "expected"), [(None, "wav"), ("MP3", "mp3"), (".wav", "wav")])
def test_resolve_format(given: str | None, expected: str) -> None:
    assert resolve_format(given) == expected


def test_unknown_format_names_the_valid_ones() -> None:
    with pytest.raises(InvalidInputError) as info:
        resolve_format("ogg")
    assert info.value.field == "format"
    assert str(info.value) == "Unknown format 'ogg'. Use one of: wav, mp3."
