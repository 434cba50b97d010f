"""Every model on the endpoint, through both clients, against the fake API.

Each body the builder makes is also checked with ``jsonschema`` against the model's
documented schema, with undocumented fields forbidden as the real API forbids them.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from typing import Any

import httpx
import jsonschema
import pytest
from harness import Synth

from octave_tools import (
    MODELS,
    BudgetExceededError,
    ConfigurationError,
    InvalidInputError,
    NotFoundError,
    OctaveClient,
)
from octave_tools import _protocol as proto
from octave_tools._settings import Settings
from octave_tools.testing import FakeAIMLAPI, schema_errors

SCHEMAS: dict[str, Any] = json.loads(
    resources.files("octave_tools").joinpath("_data/tts-models.json").read_text("utf-8")
)["models"]
TEXT = "Hello there."


def strict(schema: Any) -> Any:
    """``schema`` with every object closed to undocumented properties."""
    schema = copy.deepcopy(schema)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                node.setdefault("additionalProperties", False)
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


def assert_documented(body: dict[str, Any]) -> None:
    """``body`` is valid for its model (jsonschema), and the fake's validator agrees."""
    schema = SCHEMAS[body["model"]]["request_schema"]
    jsonschema.validate(body, strict(schema))
    assert schema_errors(schema, body) == []


# The body each model gets for a call that names only the text.
DEFAULT_BODIES: dict[str, dict[str, Any]] = {
    "hume/octave-2": {"voice": "Vince Douglas", "format": "wav"},
    **{
        m: {"voice": "Alex", "format": "wav"}
        for m in (
            "inworld/tts-1",
            "inworld/tts-1-max",
            "inworld/tts-1-5-mini",
            "inworld/tts-1-5-max",
        )
    },
    **{
        m: {"voice": "alloy", "response_format": "mp3"}
        for m in ("openai/tts-1", "openai/tts-1-hd", "openai/gpt-4o-mini-tts")
    },
    "deepgram/aura": {"voice": "asteria", "encoding": "linear16", "stream": False},
    "deepgram/aura-2": {"voice": "thalia", "encoding": "linear16", "stream": False},
    **{
        m: {"voice": "Rachel", "stream": False}
        for m in (
            "elevenlabs/eleven_multilingual_v2",
            "elevenlabs/eleven_turbo_v2_5",
            "elevenlabs/v3_alpha",
        )
    },
    "alibaba/qwen3-tts-flash": {"voice": "Cherry"},
    "microsoft/mai-voice-2": {"voice": "en-US-AvaNeural", "response_format": "mp3"},
    **{
        m: {"speakers": [{"preset": "Alice [EN]"}]}
        for m in ("microsoft/vibevoice-1.5b", "microsoft/vibevoice-7b")
    },
    "bytedance/seed-audio-1-0": {"audio_config": {"format": "wav"}},
    **{
        m: {"voice_setting": {"voice_id": "Wise_Woman"}, "audio_setting": {"format": "mp3"}}
        for m in (
            "minimax/speech-2.5-turbo-preview",
            "minimax/speech-2.5-hd-preview",
            "minimax/speech-2.6-turbo",
            "minimax/speech-2.6-hd",
            "minimax/speech-2.8-turbo",
            "minimax/speech-2.8-hd",
        )
    },
}
DEFAULT_FORMATS = {
    "hume": "wav",
    "inworld": "wav",
    "openai": "mp3",
    "deepgram": "wav",
    "elevenlabs": "mp3",
    "alibaba": "wav",
    "microsoft/mai-voice-2": "mp3",
    "microsoft/vibevoice": "wav",
    "bytedance": "wav",
    "minimax": "mp3",
}


def default_format(model: str) -> str:
    [fmt] = [f for prefix, f in DEFAULT_FORMATS.items() if model.startswith(prefix)]
    return fmt


def text_field(model: str) -> str:
    return "script" if "vibevoice" in model else "text"


@pytest.fixture
def client(fake_aimlapi: FakeAIMLAPI) -> Iterator[OctaveClient]:
    with OctaveClient(
        api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url, engine="aimlapi"
    ) as c:
        yield c


def sent(api: FakeAIMLAPI) -> dict[str, Any]:
    [request] = api.tts_requests
    body: dict[str, Any] = request.json
    assert_documented(body)
    return body


# ------------------------------------------------------------ every model's default call


def test_every_model_has_an_expected_default_body() -> None:
    assert sorted(DEFAULT_BODIES) == sorted(MODELS)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_default_call_of_every_model(
    model: str, client: OctaveClient, fake_aimlapi: FakeAIMLAPI
) -> None:
    speech = client.synthesize(TEXT, model=model)
    assert sent(fake_aimlapi) == {"model": model, text_field(model): TEXT, **DEFAULT_BODIES[model]}
    expected_voice = MODELS[model].default_voice
    assert (speech.model, speech.voice, speech.format) == (
        model,
        expected_voice,
        default_format(model),
    )
    assert fake_aimlapi.issued == {speech.audio_url: TEXT}
    assert speech.audio_url.endswith("." + default_format(model))
    assert speech.credits_used == len(TEXT) * 125


def test_the_model_setting_picks_the_model(
    synth: Synth, fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_MODEL", "openai/tts-1-hd")
    speech = synth(voice="Shimmer")
    assert sent(fake_aimlapi) == {
        "model": "openai/tts-1-hd",
        "text": TEXT,
        "voice": "shimmer",
        "response_format": "mp3",
    }
    assert (speech.model, speech.voice, speech.format) == ("openai/tts-1-hd", "shimmer", "mp3")


# ------------------------------------------------------------ voices


@pytest.mark.parametrize(
    ("model", "voice", "fields"),
    [
        ("openai/tts-1", "NOVA", {"voice": "nova"}),
        ("elevenlabs/v3_alpha", "santa claus", {"voice": "Santa Claus"}),
        ("deepgram/aura-2", " Luna ", {"voice": "luna"}),
        ("inworld/tts-1-max", "MAIT\u00ca", {"voice": "Mait\u00ea"}),
        ("alibaba/qwen3-tts-flash", "jennifer", {"voice": "Jennifer"}),
        ("microsoft/mai-voice-2", "en-gb-soniaNEURAL", {"voice": "en-GB-SoniaNeural"}),
        ("microsoft/vibevoice-7b", "carter [en]", {"speakers": [{"preset": "Carter [EN]"}]}),
        ("minimax/speech-2.8-hd", "calm_woman", {"voice_setting": {"voice_id": "Calm_Woman"}}),
        # MiniMax also takes custom and cloned voice ids of up to 64 characters.
        ("minimax/speech-2.6-turbo", "my-clone-7", {"voice_setting": {"voice_id": "my-clone-7"}}),
        ("minimax/speech-2.6-hd", "v" * 64, {"voice_setting": {"voice_id": "v" * 64}}),
        # ByteDance Seed takes any voice id, as a reference speaker.
        (
            "bytedance/seed-audio-1-0",
            "zh_female_cancan_mars_bigtts",
            {"references": [{"speaker": "zh_female_cancan_mars_bigtts"}]},
        ),
    ],
)
def test_voice_is_matched_and_put_where_the_model_wants_it(
    model: str, voice: str, fields: dict[str, Any], client: OctaveClient, fake_aimlapi: FakeAIMLAPI
) -> None:
    speech = client.synthesize(TEXT, model=model, voice=voice)
    body = sent(fake_aimlapi)
    for name, value in fields.items():
        if isinstance(value, dict):
            assert {k: body[name][k] for k in value} == value
        else:
            assert body[name] == value
    leaf: Any = fields
    for step in MODELS[model].voice_path:
        leaf = leaf[step]
    assert speech.voice == leaf


@pytest.mark.parametrize(
    ("model", "voice", "message"),
    [
        (
            "openai/tts-1",
            "novva",
            "Unknown voice 'novva' for model 'openai/tts-1'. Did you mean 'nova'?",
        ),
        ("elevenlabs/eleven_turbo_v2_5", "Santa Clause", "Did you mean 'Santa Claus'?"),
        (
            "minimax/speech-2.8-turbo",
            "x" * 65,
            "A custom voice id may also be used, 1 to 64 characters.",
        ),
        ("microsoft/vibevoice-1.5b", "Vince Douglas", "for model 'microsoft/vibevoice-1.5b'"),
        ("hume/octave-2", "alloy", "Unknown voice 'alloy' for model 'hume/octave-2'"),
    ],
)
def test_unknown_voice_is_refused_before_any_request(
    synth: Synth, fake_aimlapi: FakeAIMLAPI, model: str, voice: str, message: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        synth(model=model, voice=voice)
    assert info.value.field == "voice"
    assert message in str(info.value)
    assert fake_aimlapi.requests == []


def test_configured_voice_yields_to_a_model_picked_per_call(
    synth: Synth, fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_VOICE", "french chef")  # an Octave voice
    speech = synth(model="openai/tts-1")
    assert sent(fake_aimlapi)["voice"] == "alloy"
    assert speech.voice == "alloy"


# ------------------------------------------------------------ formats


@pytest.mark.parametrize(
    ("model", "fmt", "fields"),
    [
        ("hume/octave-2", "MP3", {"format": "mp3"}),
        ("inworld/tts-1-5-mini", "mp3", {"format": "mp3"}),
        ("openai/gpt-4o-mini-tts", "opus", {"response_format": "opus"}),
        ("openai/tts-1", "aac", {"response_format": "aac"}),
        ("openai/tts-1", "flac", {"response_format": "flac"}),
        ("openai/tts-1", "wav", {"response_format": "wav"}),
        ("openai/tts-1", "pcm", {"response_format": "pcm"}),
        ("microsoft/mai-voice-2", ".wav", {"response_format": "wav"}),
        ("deepgram/aura", "wav", {"encoding": "linear16"}),
        ("deepgram/aura-2", "mp3", {"encoding": "mp3"}),
        ("deepgram/aura-2", "opus", {"encoding": "opus"}),
        ("elevenlabs/eleven_multilingual_v2", "mp3", {"output_format": "mp3_44100_128"}),
        ("elevenlabs/eleven_multilingual_v2", "opus", {"output_format": "opus_48000_64"}),
        ("elevenlabs/v3_alpha", "pcm", {"output_format": "pcm_24000"}),
        ("minimax/speech-2.5-hd-preview", "flac", {"audio_setting": {"format": "flac"}}),
        ("minimax/speech-2.8-turbo", "pcm", {"audio_setting": {"format": "pcm"}}),
        ("bytedance/seed-audio-1-0", "opus", {"audio_config": {"format": "ogg_opus"}}),
        ("bytedance/seed-audio-1-0", "mp3", {"audio_config": {"format": "mp3"}}),
    ],
)
def test_format_is_mapped_into_the_model_own_field(
    model: str, fmt: str, fields: dict[str, Any], client: OctaveClient, fake_aimlapi: FakeAIMLAPI
) -> None:
    speech = client.synthesize(TEXT, model=model, format=fmt)
    body = sent(fake_aimlapi)
    for name, value in fields.items():
        assert body[name] == value
    user_format = fmt.strip(".").lower()
    assert speech.format == user_format
    assert speech.audio_url.endswith("." + user_format)


@pytest.mark.parametrize(
    ("model", "fmt", "message"),
    [
        (
            "minimax/speech-2.6-hd",
            "wav",
            "Unsupported format 'wav' for model 'minimax/speech-2.6-hd'. "
            "Use one of: mp3, pcm, flac.",
        ),
        (
            "elevenlabs/v3_alpha",
            "wav",
            "Unsupported format 'wav' for model 'elevenlabs/v3_alpha'. Use one of: mp3, opus, pcm.",
        ),
        (
            "alibaba/qwen3-tts-flash",
            "mp3",
            "Model 'alibaba/qwen3-tts-flash' has no format choice (it answers in wav); "
            "leave format out.",
        ),
        (
            "microsoft/vibevoice-7b",
            "wav",
            "Model 'microsoft/vibevoice-7b' has no format choice (it answers in wav); "
            "leave format out.",
        ),
        (
            "openai/tts-1",
            "ogg",
            "Unknown format 'ogg' for model 'openai/tts-1'. "
            "Use one of: mp3, opus, aac, flac, wav, pcm.",
        ),
        (
            "hume/octave-2",
            "flac",
            "Unsupported format 'flac' for model 'hume/octave-2'. Use one of: wav, mp3.",
        ),
    ],
)
def test_format_the_model_cannot_give_is_refused_before_any_request(
    synth: Synth, fake_aimlapi: FakeAIMLAPI, model: str, fmt: str, message: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        synth(model=model, format=fmt)
    assert (info.value.field, str(info.value)) == ("format", message)
    assert fake_aimlapi.requests == []


def test_configured_format_is_checked_for_the_configured_model(
    synth: Synth, fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_FORMAT", "opus")
    with pytest.raises(InvalidInputError) as info:
        synth()
    assert str(info.value) == (
        "Unsupported format 'opus' for model 'hume/octave-2'. Use one of: wav, mp3. "
        "(The format comes from the setting OCTAVE_TOOLS_FORMAT; change it or pass a "
        "format per call.)"
    )
    assert fake_aimlapi.requests == []


def test_configured_format_yields_to_a_model_picked_per_call(
    synth: Synth, fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_FORMAT", "opus")
    speech = synth(model="minimax/speech-2.8-hd")  # MiniMax has no opus: its default
    assert sent(fake_aimlapi)["audio_setting"] == {"format": "mp3"}
    assert speech.format == "mp3"


def test_configured_format_applies_where_the_model_has_it(
    synth: Synth, fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_FORMAT", "opus")
    speech = synth(model="elevenlabs/eleven_turbo_v2_5")
    assert sent(fake_aimlapi)["output_format"] == "opus_48000_64"
    assert speech.format == "opus"


def test_the_format_setting_takes_every_model_format() -> None:
    for fmt in ("wav", "mp3", "opus", "aac", "flac", "pcm"):
        assert Settings.load(format=fmt.upper(), environ={}).format == fmt
    with pytest.raises(ConfigurationError, match="must be wav or mp3, or another format"):
        Settings.load(format="ogg", environ={})


# ------------------------------------------------------------ speed


@pytest.mark.parametrize(
    ("model", "speed", "fields"),
    [
        ("openai/tts-1", 0.25, {"speed": 0.25}),
        ("openai/gpt-4o-mini-tts", 4, {"speed": 4}),
        ("elevenlabs/eleven_multilingual_v2", 1.1, {"voice_settings": {"speed": 1.1}}),
        ("elevenlabs/v3_alpha", 0.7, {"voice_settings": {"speed": 0.7}}),
        (
            "minimax/speech-2.8-turbo",
            0.75,
            {"voice_setting": {"voice_id": "Wise_Woman", "speed": 0.75}},
        ),
        ("bytedance/seed-audio-1-0", 2.0, {"audio_config": {"format": "wav", "speech_rate": 100}}),
        ("bytedance/seed-audio-1-0", 0.5, {"audio_config": {"format": "wav", "speech_rate": -50}}),
        ("bytedance/seed-audio-1-0", 1.3, {"audio_config": {"format": "wav", "speech_rate": 30}}),
    ],
)
def test_speed_is_mapped_per_model(
    model: str,
    speed: float,
    fields: dict[str, Any],
    client: OctaveClient,
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    client.synthesize(TEXT, model=model, speed=speed)
    body = sent(fake_aimlapi)
    for name, value in fields.items():
        assert body[name] == value


@pytest.mark.parametrize(
    ("model", "speed", "message"),
    [
        (
            "openai/tts-1",
            4.5,
            "speed 4.5 is out of range for model 'openai/tts-1': use 0.25 to 4 (1 is normal).",
        ),
        ("elevenlabs/v3_alpha", 1.5, "use 0.7 to 1.2 (1 is normal)."),
        ("minimax/speech-2.6-hd", 0.4, "use 0.5 to 2 (1 is normal)."),
        ("bytedance/seed-audio-1-0", 2.5, "use 0.5 to 2 (1 is normal)."),
        ("openai/tts-1", float("nan"), "speed must be a number such as 1.0"),
        ("openai/tts-1", True, "speed must be a number such as 1.0"),
        ("openai/tts-1", "fast", "speed must be a number such as 1.0"),
        *(
            (model, 1.0, f"Model {model!r} has no speed setting; leave speed out.")
            for model in (
                "hume/octave-2",
                "inworld/tts-1",
                "alibaba/qwen3-tts-flash",
                "deepgram/aura",
                "microsoft/mai-voice-2",
                "microsoft/vibevoice-1.5b",
            )
        ),
    ],
)
def test_bad_speed_is_refused_before_any_request(
    synth: Synth, fake_aimlapi: FakeAIMLAPI, model: str, speed: Any, message: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        synth(model=model, speed=speed)
    assert info.value.field == "speed"
    assert message in str(info.value)
    assert fake_aimlapi.requests == []


# ------------------------------------------------------------ text limits


@pytest.mark.parametrize(
    ("model", "limit"),
    [
        ("alibaba/qwen3-tts-flash", 600),
        ("openai/tts-1", 4096),
        ("microsoft/mai-voice-2", 4096),
        ("bytedance/seed-audio-1-0", 3000),
        ("minimax/speech-2.5-turbo-preview", 5000),
        ("microsoft/vibevoice-1.5b", 5000),
        ("inworld/tts-1", 500_000),
    ],
)
def test_text_limit_is_the_model_own(
    model: str, limit: int, client: OctaveClient, fake_aimlapi: FakeAIMLAPI
) -> None:
    # One call takes at most max_text_chars (200,000); below that, the model's own limit
    # is where text is split into requests.
    part = min(limit, 200_000)
    speech = client.synthesize("x" * part, model=model)  # one request: the short path
    assert sent(fake_aimlapi)[text_field(model)] == "x" * part
    assert speech.characters == part and speech.parts is None
    with pytest.raises(InvalidInputError) as info:
        client.synthesize("x" * (part + 1), model=model)  # one word cannot be split
    assert info.value.field == "text"
    if part < 200_000:
        assert f"parts of at most {part:,} characters" in str(info.value)
    else:
        assert str(info.value).startswith(f"text is {part + 1:,} characters; one call takes")
    assert len(fake_aimlapi.tts_requests) == 1


@pytest.mark.parametrize("model", ["deepgram/aura", "elevenlabs/eleven_turbo_v2_5", "acme/tts-9"])
def test_models_without_a_documented_limit_get_a_conservative_one(
    model: str, client: OctaveClient, fake_aimlapi: FakeAIMLAPI
) -> None:
    fake_aimlapi.models = (*MODELS, "acme/tts-9")  # acme/tts-9: not catalogued at all
    # The docs give these models no limit (acme/tts-9 is not catalogued at all): the
    # conservative one (2,000) is where text is split, so no request is over it.
    with pytest.raises(InvalidInputError) as info:
        client.synthesize("y" * 2_001, model=model)  # one word: it cannot be split
    assert "parts of at most 2,000 characters" in str(info.value)
    assert fake_aimlapi.requests == []
    speech = client.synthesize("y" * 2_000, model=model)
    assert fake_aimlapi.tts_requests[-1].json["text"] == "y" * 2_000
    assert speech.characters == 2_000 and speech.parts is None
    if model == "acme/tts-9":
        return  # the fake's audio for an uncatalogued model: joinable, not checked here
    long = " ".join(["word"] * 1000)  # 4,999 characters
    speech = client.synthesize(long, model=model)
    sent_now = fake_aimlapi.tts_requests[1:]
    assert speech.parts is not None and len(speech.parts) == len(sent_now) == 3
    assert all(len(r.json["text"]) <= 2_000 for r in sent_now)


# ------------------------------------------------------------ both clients, mixed options


def test_both_clients_build_the_same_mixed_body(synth: Synth, fake_aimlapi: FakeAIMLAPI) -> None:
    speech = synth(model="minimax/speech-2.6-turbo", voice="my-clone-7", format="FLAC", speed=1.5)
    assert sent(fake_aimlapi) == {
        "model": "minimax/speech-2.6-turbo",
        "text": TEXT,
        "voice_setting": {"voice_id": "my-clone-7", "speed": 1.5},
        "audio_setting": {"format": "flac"},
    }
    assert (speech.model, speech.voice, speech.format) == (
        "minimax/speech-2.6-turbo",
        "my-clone-7",
        "flac",
    )


def test_vibevoice_script_goes_in_script(synth: Synth, fake_aimlapi: FakeAIMLAPI) -> None:
    script = "Speaker 1: Hello.\nSpeaker 1: Goodbye."
    speech = synth(script, model="microsoft/vibevoice-7b", voice="maya [en]")
    assert sent(fake_aimlapi) == {
        "model": "microsoft/vibevoice-7b",
        "script": script,
        "speakers": [{"preset": "Maya [EN]"}],
    }
    assert fake_aimlapi.issued == {speech.audio_url: script}


# ------------------------------------------------------------ models outside the catalogue


def test_unknown_model_is_passed_through_with_the_generic_fields(
    synth: Synth, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proto, "_warned_models", set())
    with FakeAIMLAPI(models=(*MODELS, "acme/tts-9")) as api:
        client = {"api_key": api.api_key, "base_url": api.base_url}
        with caplog.at_level(logging.WARNING, logger="octave_tools"):
            first = synth(client=client, model="acme/tts-9", voice="Bob", format="OGG")
            second = synth("Again.", client=client, model="acme/tts-9")
        bodies = [r.json for r in api.tts_requests]
    assert bodies == [
        {"model": "acme/tts-9", "text": TEXT, "voice": "Bob", "format": "OGG"},
        {"model": "acme/tts-9", "text": "Again."},
    ]
    assert (first.model, first.voice, first.format) == ("acme/tts-9", "Bob", "ogg")
    assert (second.voice, second.format) == (None, "unknown")
    warnings = [r.getMessage() for r in caplog.records if "acme/tts-9" in r.getMessage()]
    assert warnings == [
        "octave-tools: model 'acme/tts-9' is not in the catalogue; sending only model, text, "
        "voice and format, with no local checks of voice or format and a text limit of 2,000 "
        "characters (none is documented)."
    ]


def test_unknown_model_404_names_the_model_and_the_setting(
    synth: Synth, fake_aimlapi: FakeAIMLAPI
) -> None:
    with pytest.raises(NotFoundError) as info:
        synth(model="acme/retired-tts")
    assert "The API does not know model 'acme/retired-tts'" in str(info.value)
    assert "Set OCTAVE_TOOLS_MODEL" in str(info.value)


@pytest.mark.parametrize(
    ("fmt", "shown_as"), [(" .MP3", "mp3"), ("linear16", "linear16"), ("x" * 5000, "unknown")]
)
def test_unknown_model_result_shows_the_format_only_as_a_plain_word(
    fmt: str, shown_as: str
) -> None:
    settings = Settings.load(api_key="k", environ={})
    call = proto.prepare(settings, "Hi.", None, fmt, model="acme/tts-9")
    assert json.loads(call.body) == {"model": "acme/tts-9", "text": "Hi.", "format": fmt.strip()}
    assert call.format == shown_as


def test_unknown_model_takes_no_speed(synth: Synth, fake_aimlapi: FakeAIMLAPI) -> None:
    with pytest.raises(InvalidInputError) as info:
        synth(model="acme/tts-9", speed=1.2)
    assert info.value.field == "speed"
    assert fake_aimlapi.requests == []


def test_blank_model_is_refused(synth: Synth, fake_aimlapi: FakeAIMLAPI) -> None:
    with pytest.raises(InvalidInputError) as info:
        synth(model="  ")
    assert info.value.field == "model"
    assert str(info.value) == (
        "model must be a model id such as 'openai/tts-1'; got '  '. Leave it out for the "
        "configured model ('hume/octave-2')."
    )
    assert fake_aimlapi.requests == []


# ------------------------------------------------------------ spend


def test_budget_never_admits_a_paid_model_on_a_zero_estimate(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Any
) -> None:
    with (
        OctaveClient(
            api_key=fake_aimlapi.api_key,
            base_url=fake_aimlapi.base_url,
            engine="aimlapi",
            max_credits=100,
        ) as c,
        pytest.raises(BudgetExceededError) as info,
    ):
        c.synthesize("Hello", model="openai/tts-1")  # no documented rate: 125 per character
    assert info.value.estimate == 625
    assert fake_aimlapi.requests == []


def test_cache_key_holds_model_and_speed(fake_aimlapi: FakeAIMLAPI, tmp_path: Any) -> None:
    with OctaveClient(
        api_key=fake_aimlapi.api_key,
        base_url=fake_aimlapi.base_url,
        engine="aimlapi",
        cache_ttl=60,
        data_dir=str(tmp_path),
    ) as c:
        calls = [
            c.synthesize(TEXT, model="openai/tts-1"),
            c.synthesize(TEXT, model="openai/tts-1-hd"),
            c.synthesize(TEXT, model="openai/tts-1", speed=1.5),
            c.synthesize(TEXT, model="openai/tts-1", speed=1.5),
            c.synthesize(TEXT, model="openai/tts-1"),
        ]
    assert [s.cached for s in calls] == [False, False, False, True, True]
    assert len(fake_aimlapi.tts_requests) == 3


# ------------------------------------------------------------ every body the builder can make


def _every_request() -> Iterator[tuple[str, str | None, str | None, float | None]]:
    for model, spec in MODELS.items():
        voices = [None, *spec.voices[:2], *spec.voices[-1:]]
        if not spec.voices_closed:
            voices.append("custom-voice-1")
        speeds: list[float | None] = [None]
        if spec.speed is not None:
            speeds += [spec.speed.minimum, 1.0, spec.speed.maximum]
        for voice, fmt, speed in itertools.product(voices, [None, *spec.formats], speeds):
            yield model, voice, fmt, speed


def test_every_body_the_builder_makes_is_documented() -> None:
    settings = Settings.load(api_key="k", environ={})
    count = 0
    for model, voice, fmt, speed in _every_request():
        call = proto.prepare(settings, "Hi.", voice, fmt, model=model, speed=speed)
        assert_documented(json.loads(call.body))
        expected_format = fmt or MODELS[model].produced_format
        assert (call.model, call.format, call.speed) == (model, expected_format, speed)
        count += 1
    assert count > 300


def test_prepare_keeps_its_positional_shape_for_octave() -> None:
    settings = Settings.load(api_key="k", environ={})
    call = proto.prepare(settings, "Hi.", "ava song", "mp3")
    assert json.loads(call.body) == {
        "model": "hume/octave-2",
        "text": "Hi.",
        "voice": "Ava Song",
        "format": "mp3",
    }
    assert (call.model, call.voice, call.format, call.speed) == (
        "hume/octave-2",
        "Ava Song",
        "mp3",
        None,
    )


# ------------------------------------------------------------ the fake itself


def post(api: FakeAIMLAPI, body: object) -> httpx.Response:
    return httpx.post(
        api.base_url + "/tts", json=body, headers={"Authorization": "Bearer test-key"}
    )


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            {"model": "hume/octave-2", "text": "Hi", "speed": 1.2},
            "Body validation error! speed is not a documented field.",
        ),
        (
            {"model": "openai/tts-1", "text": "Hi", "format": "mp3"},
            "Body validation error! format is not a documented field.",
        ),
        (
            {"model": "microsoft/vibevoice-1.5b", "text": "Hi"},
            "script is required; text is not a documented field.",
        ),
        (
            {"model": "minimax/speech-2.8-hd", "text": "Hi", "stream": True},
            "stream must be one of: False.",
        ),
        (
            {"model": "minimax/speech-2.8-hd", "text": "Hi", "voice_setting": {"voice_id": ""}},
            "voice_setting.voice_id matches none of its allowed forms",
        ),
        (
            {
                "model": "bytedance/seed-audio-1-0",
                "text": "Hi",
                "audio_config": {"speech_rate": 1.5},
            },
            "audio_config.speech_rate must be of type integer.",
        ),
        (
            {"model": "elevenlabs/v3_alpha", "text": "Hi", "voice_settings": {"speed": 2}},
            "voice_settings.speed must be from 0.7 to 1.2.",
        ),
        (
            {"model": "alibaba/qwen3-tts-flash", "text": "x" * 601},
            "text must be 1 to 600 characters.",
        ),
    ],
)
def test_fake_refuses_what_the_schema_does_not_allow(
    fake_aimlapi: FakeAIMLAPI, body: dict[str, Any], fragment: str
) -> None:
    r = post(fake_aimlapi, body)
    assert r.status_code == 400
    assert fragment in r.json()["message"]
    assert r.json()["message"].startswith("Body validation error!")
    assert fake_aimlapi.issued == {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, strict(SCHEMAS[body["model"]]["request_schema"]))


@pytest.mark.parametrize(
    ("model", "content_type", "magic"),
    [
        ("deepgram/aura", "audio/wav", b"RIFF"),  # linear16 in a WAV container
        ("elevenlabs/eleven_multilingual_v2", "audio/mpeg", b"ID3"),  # its mp3 default
    ],
)
def test_fake_streams_raw_audio_where_the_docs_show_it(
    fake_aimlapi: FakeAIMLAPI, model: str, content_type: str, magic: bytes
) -> None:
    streamed = post(fake_aimlapi, {"model": model, "text": "Hi"})
    assert (streamed.status_code, streamed.headers["content-type"]) == (200, content_type)
    assert streamed.content.startswith(magic)
    explicit = post(fake_aimlapi, {"model": model, "text": "Hi", "stream": True})
    assert explicit.headers["content-type"] == content_type
    as_json = post(fake_aimlapi, {"model": model, "text": "Hi", "stream": False})
    assert as_json.status_code == 201
    assert as_json.json()["audio"]["url"] in fake_aimlapi.issued
    assert len(fake_aimlapi.issued) == 1


def test_fake_streams_mp3_for_an_mp3_encoding(fake_aimlapi: FakeAIMLAPI) -> None:
    r = post(fake_aimlapi, {"model": "deepgram/aura-2", "text": "Hi", "encoding": "mp3"})
    assert r.headers["content-type"] == "audio/mpeg"


def test_fake_serves_only_the_models_it_is_given() -> None:
    with FakeAIMLAPI(models=("hume/octave-2",)) as api:
        r = post(api, {"model": "openai/tts-1", "text": "Hi"})
    assert r.status_code == 404
    assert "Model openai/tts-1 not found" in r.json()["message"]


def test_the_fake_needs_no_jsonschema() -> None:
    code = (
        "import sys, octave_tools.testing as t; "
        "assert t.schema_errors(t.request_schema('hume/octave-2'), {'model': 'hume/octave-2'}) "
        "== ['text is required']; "
        "assert 'jsonschema' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"model": "openai/tts-1"}, "model", "Model 'openai/tts-1' needs the AIML API"),
        ({"speed": 1.2}, "speed", "The offline local engine has no speed option"),
    ],
)
def test_the_local_engine_refuses_a_model_or_speed_it_cannot_honour(
    kwargs: dict[str, Any], field: str, fragment: str
) -> None:
    with OctaveClient(engine="local") as c, pytest.raises(InvalidInputError) as info:
        c.synthesize("Hi.", **kwargs)
    assert info.value.field == field
    assert fragment in str(info.value)
