"""The MCP server and the LangChain tools say the same things, and take the same settings.

Both render the core's tool spec: for each configuration the model reads the same
description, the same argument help and schema, and the same hints on either face.
Every setting is accepted by every face and takes effect (a cache hit sends nothing,
a 1-credit budget refuses with no request), and a model outside the allow-list is
refused before any request.
"""

from __future__ import annotations

from typing import Any

import pytest
from harness import api_options, text_of
from langchain_core.tools import BaseTool
from mcp import Client

from octave_tools import BudgetExceededError
from octave_tools.langchain import (
    OctaveDialogueTool,
    OctaveTTSTool,
    OctaveUsageTool,
    OctaveVoicesTool,
)
from octave_tools.mcp import create_server
from octave_tools.testing import FakeAIMLAPI

CONFIGURATIONS: list[dict[str, Any]] = [
    {},
    {"voice": "ava song", "format": "mp3"},
    {"model": "openai/tts-1"},
    {"model": "minimax/speech-2.6-hd", "voice": "Wise_Woman"},
    {"model": "acme/tts-9"},
    {"models": ["hume/octave-2", "openai/tts-1", "elevenlabs/eleven_turbo_v2_5"]},
    {"model": "openai/tts-1", "models": "all"},
]


def _langchain_view(tool: BaseTool) -> dict[str, Any]:
    schema = tool.args_schema
    assert schema is not None and not isinstance(schema, dict)
    json_schema = schema.model_json_schema()
    return {
        "description": tool.description,
        "properties": json_schema.get("properties", {}),
        "required": json_schema.get("required", []),
        "closed": json_schema.get("additionalProperties"),
        "hints": {k: v for k, v in (tool.metadata or {}).items() if k.endswith("Hint")},
    }


def _mcp_view(tool: Any) -> dict[str, Any]:
    hints = tool.annotations.model_dump(by_alias=True, exclude_none=True)
    return {
        "description": tool.description,
        "properties": tool.input_schema.get("properties", {}),
        "required": tool.input_schema.get("required", []),
        "closed": tool.input_schema.get("additionalProperties"),
        "hints": {k: v for k, v in hints.items() if k.endswith("Hint")},
    }


@pytest.mark.parametrize("config", CONFIGURATIONS, ids=lambda c: ",".join(c) or "defaults")
async def test_both_faces_show_the_same_tools(config: dict[str, Any]) -> None:
    settings = {"engine": "aimlapi", **config}
    async with Client(create_server(**settings)) as client:
        mcp_tools = {t.name: _mcp_view(t) for t in (await client.list_tools()).tools}
    langchain_tools = {
        t.name: _langchain_view(t)
        for t in (
            OctaveTTSTool(**settings),
            OctaveDialogueTool(**settings),
            OctaveVoicesTool(**settings),
            OctaveUsageTool(**settings),
        )
    }

    assert sorted(mcp_tools) == ["list_voices", "text_to_dialogue", "text_to_speech", "usage"]
    for name, seen_by_mcp in mcp_tools.items():
        assert langchain_tools[name] == seen_by_mcp, name
    assert mcp_tools["text_to_speech"]["closed"] is False
    for speaking in ("text_to_speech", "text_to_dialogue"):
        assert mcp_tools[speaking]["hints"] == {
            "readOnlyHint": False,
            "destructiveHint": False,
            "idempotentHint": False,
            "openWorldHint": True,
        }
    assert mcp_tools["text_to_dialogue"]["properties"]["lines"]["items"][
        "additionalProperties"
    ] is (False)


def test_the_dialogue_lines_take_a_model_only_when_several_are_offered() -> None:
    one = OctaveDialogueTool(engine="aimlapi", model="openai/tts-1").args
    several = OctaveDialogueTool(engine="aimlapi", models="hume/octave-2,openai/tts-1").args

    assert list(one) == ["lines", "format"]
    assert list(one["lines"]["items"]["properties"]) == ["voice", "text"]
    assert one["lines"]["items"]["required"] == ["voice", "text"]
    assert "alloy" in one["lines"]["items"]["properties"]["voice"]["description"]
    assert "Leave it out" not in one["lines"]["items"]["properties"]["voice"]["description"]
    assert list(several["lines"]["items"]["properties"]) == ["voice", "text", "model"]
    assert several["lines"]["items"]["properties"]["model"]["anyOf"][0]["enum"] == [
        "hume/octave-2",
        "openai/tts-1",
    ]


def test_the_speaking_tools_state_the_limit_of_one_call_and_that_it_is_one_file() -> None:
    tts = OctaveTTSTool(engine="aimlapi", model="openai/tts-1")
    dialogue = OctaveDialogueTool(engine="aimlapi", model="openai/tts-1", max_text_chars=9_000)

    assert tts.args["text"]["description"] == (
        "The exact words to speak, 1 to 200,000 characters. Text longer than one request of "
        "openai/tts-1 takes, 4,096 characters, is split where sentences end and comes back as "
        "one audio file. Write numbers, abbreviations and symbols the way they should be said."
    )
    assert "up to 200,000 characters" in tts.description
    assert "comes back as one audio file, so never split it yourself" in tts.description
    assert "the lines together may hold up to 9,000 characters" in dialogue.description
    assert dialogue.args["lines"]["description"].endswith("at most 9,000 characters.")


def test_several_models_add_model_and_speed_arguments() -> None:
    tool = OctaveTTSTool(
        engine="aimlapi", models=["hume/octave-2", "openai/tts-1", "minimax/speech-2.6-hd"]
    )
    voices = OctaveVoicesTool(engine="aimlapi", models="hume/octave-2,openai/tts-1")

    args = tool.args
    assert list(args) == ["text", "voice", "format", "speed", "model"]
    assert args["model"]["anyOf"][0]["enum"] == [
        "hume/octave-2",
        "openai/tts-1",
        "minimax/speech-2.6-hd",
    ]
    assert args["speed"]["description"].startswith(
        "Speaking rate as a multiple of normal (1.0). Only openai/tts-1, minimax/speech-2.6-hd"
    )
    assert "wav" in str(args["format"]) and "flac" in str(args["format"])
    assert list(voices.args) == ["model"]


def test_one_model_with_a_speed_range_publishes_it() -> None:
    args = OctaveTTSTool(engine="aimlapi", model="openai/tts-1").args

    assert list(args) == ["text", "voice", "format", "speed"]
    assert (args["speed"]["anyOf"][0]["minimum"], args["speed"]["anyOf"][0]["maximum"]) == (
        0.25,
        4.0,
    )
    assert "alloy" in args["voice"]["description"]
    assert args["format"]["anyOf"][0]["enum"] == ["mp3", "opus", "aac", "flac", "wav", "pcm"]


# ---------------------------------------------------------------- settings take effect on MCP


async def test_a_cache_ttl_on_the_server_answers_a_repeat_from_the_cache(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    server = create_server(**api_options(fake_aimlapi, cache_ttl=600))
    async with Client(server) as client:
        first = await client.call_tool("text_to_speech", {"text": "Once only"})
        second = await client.call_tool("text_to_speech", {"text": "Once only"})

    assert len(fake_aimlapi.tts_requests) == 1
    assert first.structured_content is not None and second.structured_content is not None
    assert (first.structured_content["cached"], second.structured_content["cached"]) == (
        False,
        True,
    )


async def test_a_one_credit_daily_budget_on_the_server_refuses_with_no_request(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    server = create_server(**api_options(fake_aimlapi, max_credits_per_day=1))
    async with Client(server) as client:
        result = await client.call_tool("text_to_speech", {"text": "Too dear"})

    assert result.is_error is True
    assert "1-credit daily budget" in text_of(result)
    assert fake_aimlapi.requests == []


def test_an_unknown_server_option_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Unknown setting 'cache_tl'\. Did you mean 'cache_ttl'\?"):
        create_server(cache_tl=600)  # type: ignore[call-arg]


async def test_the_allow_list_lets_a_call_pick_a_model_and_refuses_others(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    server = create_server(**api_options(fake_aimlapi, models="hume/octave-2,openai/tts-1"))
    async with Client(server) as client:
        picked = await client.call_tool(
            "text_to_speech", {"text": "Hi", "model": "openai/tts-1", "voice": "NOVA"}
        )
        refused = await client.call_tool(
            "text_to_speech", {"text": "Hi", "model": "minimax/speech-2.6-hd"}
        )
        voices = await client.call_tool("list_voices", {"model": "openai/tts-1"})

    assert picked.is_error is False
    assert [r.json for r in fake_aimlapi.tts_requests] == [
        {"model": "openai/tts-1", "text": "Hi", "voice": "nova", "response_format": "mp3"}
    ]
    assert refused.is_error is True
    assert text_of(refused) == (
        "Error executing tool text_to_speech: invalid arguments: model: Input should be "
        "'hume/octave-2' or 'openai/tts-1'. Correct them and call the tool again."
    )
    assert voices.structured_content["model"] == "openai/tts-1"
    assert voices.structured_content["default"] == "alloy"


@pytest.mark.parametrize("model", ["openai/tts-1", "minimax/speech-2.6-hd", "acme/tts-9"])
async def test_a_one_credit_budget_refuses_a_model_whose_price_is_not_documented(
    fake_aimlapi: FakeAIMLAPI, model: str
) -> None:
    server = create_server(**api_options(fake_aimlapi, model=model, max_credits_per_day=1))
    async with Client(server) as client:
        result = await client.call_tool("text_to_speech", {"text": "Hi"})
    tool = OctaveTTSTool(**api_options(fake_aimlapi, model=model, max_credits_per_day=1))

    assert result.is_error is True
    assert "1-credit daily budget" in text_of(result)
    with pytest.raises(BudgetExceededError, match="1-credit daily budget"):
        tool.invoke({"type": "tool_call", "id": "c", "name": tool.name, "args": {"text": "Hi"}})
    assert fake_aimlapi.requests == []


# ---------------------------------------------------------------- list_voices and its model


async def _list_voices_both_faces(settings: dict[str, Any], args: dict[str, Any]) -> list[Any]:
    """(is_error, text) of list_voices with ``args`` on MCP, then on LangChain."""
    async with Client(create_server(**settings)) as client:
        result = await client.call_tool("list_voices", args)
    tool = OctaveVoicesTool(**settings)
    message = tool.invoke({"type": "tool_call", "id": "c", "name": "list_voices", "args": args})
    prefix = "Error executing tool list_voices: "
    mcp_text = text_of(result)
    return [
        (result.is_error, mcp_text.removeprefix(prefix)),
        (message.status == "error", str(message.content).removeprefix("Error: ")),
    ]


async def test_list_voices_with_one_model_refuses_a_model_argument_on_both_faces() -> None:
    mcp, langchain = await _list_voices_both_faces({"engine": "aimlapi"}, {"model": "openai/tts-1"})

    assert mcp == langchain == (True, "unknown argument 'model'; list_voices takes no arguments.")


async def test_list_voices_with_several_models_lists_and_names_the_one_asked_for() -> None:
    settings = {"engine": "aimlapi", "models": "hume/octave-2,openai/tts-1"}
    mcp, langchain = await _list_voices_both_faces(settings, {"model": "openai/tts-1"})
    refused_mcp, refused_langchain = await _list_voices_both_faces(
        settings, {"model": "minimax/speech-2.6-hd"}
    )

    assert mcp == langchain
    assert mcp == (
        False,
        "11 voices for openai/tts-1: alloy (default), ash, ballad, coral, echo, fable, nova, "
        "onyx, sage, shimmer, verse.",
    )
    assert refused_mcp == refused_langchain
    assert refused_mcp == (
        True,
        "invalid arguments: model: Input should be 'hume/octave-2' or 'openai/tts-1'. "
        "Correct them and call the tool again.",
    )
