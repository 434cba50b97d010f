"""Every spec in the catalogue agrees with its model's documented schema."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from typing import Any

import pytest

import octave_tools
from octave_tools.catalogue import ALL_FORMATS, MODELS, ModelSpec

SCHEMAS: dict[str, Any] = json.loads(
    resources.files("octave_tools").joinpath("_data/tts-models.json").read_text("utf-8")
)["models"]


def at(schema: dict[str, Any], path: tuple[str | int, ...]) -> dict[str, Any]:
    """The sub-schema a body path leads to (list indexes go through ``items``)."""
    node = schema
    for step in path:
        node = node["items"] if isinstance(step, int) else node["properties"][step]
    return node


def test_the_catalogue_has_exactly_the_documented_models() -> None:
    assert sorted(MODELS) == sorted(SCHEMAS)
    assert len(MODELS) == 24
    assert all(spec.id == model_id for model_id, spec in MODELS.items())


def test_models_is_public_and_read_only() -> None:
    assert octave_tools.MODELS is MODELS
    assert octave_tools.ModelSpec is ModelSpec
    with pytest.raises(TypeError):
        MODELS["acme/tts"] = MODELS["hume/octave-2"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        MODELS["hume/octave-2"].max_text_chars = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        MODELS["openai/tts-1"].formats["ogg"] = "ogg"  # type: ignore[index]


@pytest.mark.parametrize("model_id", sorted(SCHEMAS))
def test_text_field_and_limit_match_the_schema(model_id: str) -> None:
    spec, schema = MODELS[model_id], SCHEMAS[model_id]["request_schema"]
    text = schema["properties"][spec.text_field]
    assert text["type"] == "string"
    assert spec.text_field in schema["required"]
    assert spec.max_text_chars == text.get("maxLength")
    assert text.get("minLength", 1) == 1


@pytest.mark.parametrize("model_id", sorted(SCHEMAS))
def test_voices_match_the_schema(model_id: str) -> None:
    spec, schema = MODELS[model_id], SCHEMAS[model_id]["request_schema"]
    voice = at(schema, spec.voice_path)
    if "anyOf" in voice:  # MiniMax: the named voices, or any id of 1..64 characters
        named, custom = voice["anyOf"]
        assert spec.voices == tuple(named["enum"])
        assert not spec.voices_closed
        assert spec.custom_voice_max_chars == custom["maxLength"]
        assert custom["minLength"] == 1
    elif "enum" in voice:
        assert spec.voices == tuple(voice["enum"])
        assert spec.voices_closed
    else:  # ByteDance Seed: a free voice id
        assert voice["type"] == "string"
        assert (spec.voices, spec.voices_closed, spec.default_voice) == ((), False, None)
        assert spec.custom_voice_max_chars == voice.get("maxLength")
    if spec.default_voice is not None:
        assert spec.default_voice in spec.voices
        documented = voice.get("default")
        if documented is None:  # VibeVoice keeps its default on the speakers array
            documented = at(schema, spec.voice_path[:1])["default"][0]["preset"]
        assert spec.default_voice == documented


@pytest.mark.parametrize("model_id", sorted(SCHEMAS))
def test_formats_match_the_schema(model_id: str) -> None:
    spec, schema = MODELS[model_id], SCHEMAS[model_id]["request_schema"]
    if spec.format_path is None:
        assert spec.formats == {}
        assert spec.default_format is None
        return
    field = at(schema, spec.format_path)
    assert set(spec.formats.values()) <= set(field["enum"])
    assert set(spec.formats) <= set(ALL_FORMATS)
    if spec.default_format is None:
        assert "default" not in field
    else:
        assert spec.formats[spec.default_format] == field["default"]
        assert spec.native_format == spec.default_format


@pytest.mark.parametrize("model_id", sorted(SCHEMAS))
def test_speed_matches_the_schema(model_id: str) -> None:
    spec, schema = MODELS[model_id], SCHEMAS[model_id]["request_schema"]
    if spec.speed is None:
        text = json.dumps(schema)
        assert '"speed"' not in text and '"speech_rate"' not in text
        return
    field = at(schema, spec.speed.path)
    low, high = spec.speed.to_body(spec.speed.minimum), spec.speed.to_body(spec.speed.maximum)
    assert (low, high) == (field["minimum"], field["maximum"])
    assert spec.speed.to_body(1.0) == field["default"]
    assert field["type"] == ("integer" if spec.speed.percent else "number")


@pytest.mark.parametrize("model_id", sorted(SCHEMAS))
def test_stream_handling_matches_the_schema(model_id: str) -> None:
    spec, schema = MODELS[model_id], SCHEMAS[model_id]["request_schema"]
    stream = schema["properties"].get("stream")
    if stream is None:
        assert not spec.stream_false
    elif stream.get("enum") == [False]:
        assert not spec.stream_false  # false is already the only value and the default
    else:
        assert stream["default"] is True
        assert spec.stream_false
        assert spec.raw_audio_when_streaming


def test_seed_speed_maps_to_its_percent_scale() -> None:
    speed = MODELS["bytedance/seed-audio-1-0"].speed
    assert [speed.to_body(s) for s in (0.5, 1.0, 1.25, 2.0)] == [-50, 0, 25, 100]


def test_only_octave_has_a_documented_rate() -> None:
    rates = {m: s.credits_per_char for m, s in MODELS.items() if s.credits_per_char}
    assert rates == {"hume/octave-2": 125.0}


def test_all_formats_is_the_union_of_what_models_give() -> None:
    assert ALL_FORMATS == ("wav", "mp3", "opus", "aac", "flac", "pcm")


def test_the_readme_models_table_is_made_from_the_catalogue() -> None:
    from pathlib import Path

    from octave_tools.catalogue import models_table

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("-->\n", readme.index("<!-- models-table")) + len("-->\n")
    end = readme.index("\n<!-- /models-table -->")
    assert readme[start:end] == models_table()
