"""The LangChain face: schema, results, the error rule, async, callbacks and tracing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import httpx
import pytest
from harness import api_options
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.load import dumps
from langchain_core.messages import ToolCall, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import ToolException
from langchain_core.tracers import LangChainTracer
from langchain_core.utils.function_calling import convert_to_openai_tool
from langsmith import Client as LangSmithClient
from pydantic import SecretStr

from octave_tools import (
    VOICES,
    AsyncOctaveClient,
    AuthenticationError,
    BudgetExceededError,
    ConfigurationError,
    InvalidInputError,
    NotFoundError,
    OctaveClient,
)
from octave_tools.langchain import (
    OctaveDialogueTool,
    OctaveToolkit,
    OctaveTTSTool,
    OctaveVoicesTool,
)
from octave_tools.testing import CREDITS_PER_CHAR, FakeAIMLAPI

SECRET = "sk-live-7f3a9c2e11d04b"


def call(args: dict[str, Any], name: str = "text_to_speech", id: str = "call-1") -> ToolCall:
    return ToolCall(name=name, args=args, id=id, type="tool_call")


@pytest.fixture
def tool(fake_aimlapi: FakeAIMLAPI) -> OctaveTTSTool:
    return OctaveTTSTool(**api_options(fake_aimlapi))


@pytest.fixture
def secret_api() -> Iterator[FakeAIMLAPI]:
    with FakeAIMLAPI(api_key=SECRET) as api:
        yield api


def only_url(api: FakeAIMLAPI) -> str:
    (url,) = api.issued
    return url


# ---------------------------------------------------------------- construction


def test_constructs_with_no_key_and_fails_only_at_call_time() -> None:
    tool = OctaveTTSTool(engine="aimlapi")

    assert not tool.settings.has_key
    with pytest.raises(ConfigurationError, match=r"^No AIML API key\. Set AIMLAPI_API_KEY"):
        tool.invoke(call({"text": "Hello"}))


def test_settings_come_from_the_environment(api_env: FakeAIMLAPI) -> None:
    tool = OctaveTTSTool()

    tool.invoke({"text": "From the environment"})

    assert api_env.tts_requests[0].json == {
        "model": "hume/octave-2",
        "text": "From the environment",
        "format": "wav",
        "voice": "Vince Douglas",
    }


def test_arguments_override_the_environment(
    api_env: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_VOICE", "Tough Guy")
    tool = OctaveTTSTool(voice="French Chef", format="mp3")

    tool.invoke({"text": "Bonjour"})

    body = api_env.tts_requests[0].json
    assert (body["voice"], body["format"]) == ("French Chef", "mp3")


def test_ready_clients_serve_the_calls(fake_aimlapi: FakeAIMLAPI) -> None:
    client = OctaveClient(**api_options(fake_aimlapi, voice="Sitcom Girl"))
    tool = OctaveTTSTool(client=client)

    message = tool.invoke(call({"text": "Ready client"}))

    assert tool.client is client
    assert tool.settings is client.settings
    assert message.artifact["voice"] == "Sitcom Girl"
    assert "Leave it out for the default, Sitcom Girl." in tool.args["voice"]["description"]


async def test_a_ready_sync_client_lends_its_settings_to_async_calls(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    tool = OctaveTTSTool(client=OctaveClient(**api_options(fake_aimlapi, voice="Tough Guy")))

    message = await tool.ainvoke(call({"text": "Async from sync settings"}))

    assert message.artifact["voice"] == "Tough Guy"
    assert len(fake_aimlapi.tts_requests) == 1


def test_clients_and_settings_together_are_refused_without_quoting_the_key() -> None:
    with pytest.raises(ConfigurationError) as caught:
        OctaveTTSTool(client=OctaveClient(api_key="k"), api_key=SECRET, voice="Ava Song")

    assert str(caught.value) == (
        "Pass either ready clients or client settings, not both (got api_key, voice as well); "
        "the clients already hold their settings."
    )


def test_no_key_in_repr_or_serialisation() -> None:
    tool = OctaveTTSTool(api_key=SECRET, engine="aimlapi")

    assert isinstance(tool.api_key, SecretStr)
    for text in (repr(tool), str(tool), dumps(tool), json.dumps(tool.model_dump(), default=str)):
        assert SECRET not in text


# ---------------------------------------------------------------- what the model sees


def test_schema_lists_every_voice_and_the_defaults() -> None:
    tool = OctaveTTSTool(engine="aimlapi")

    function = convert_to_openai_tool(tool)["function"]

    assert function["name"] == "text_to_speech"
    assert function["parameters"]["required"] == ["text"]
    voice = function["parameters"]["properties"]["voice"]["description"]
    assert voice == (
        f"Voice name, one of: {', '.join(VOICES)}. Leave it out for the default, Vince Douglas. "
        "Case and spacing are forgiven."
    )
    fmt = function["parameters"]["properties"]["format"]
    assert fmt["anyOf"][0]["enum"] == ["wav", "mp3"]
    assert fmt["description"] == "Audio file format: wav or mp3. Leave it out for wav."


def test_schema_follows_the_configured_defaults() -> None:
    tool = OctaveTTSTool(engine="aimlapi", voice="ava song", format="mp3")

    assert tool.args["voice"]["description"].endswith(
        "Leave it out for the default, Ava Song. Case and spacing are forgiven."
    )
    assert tool.args["format"]["description"].endswith("Leave it out for mp3.")
    plain = OctaveTTSTool(engine="aimlapi").args
    assert "Leave it out for the default, Vince Douglas." in plain["voice"]["description"]


def test_schema_for_a_model_without_a_known_voice_list() -> None:
    tool = OctaveTTSTool(engine="aimlapi", model="acme/tts-9")

    assert tool.args["voice"]["description"] == (
        "A voice name that acme/tts-9 accepts. Leave it out for the model default."
    )


def test_descriptions_say_when_to_use_the_tools_and_what_they_return() -> None:
    tts, dialogue, voices = OctaveToolkit(engine="aimlapi").get_tools()

    assert tts.description.startswith("Turn text into natural speech with hume/octave-2")
    assert "Returns one sentence with the audio URL" in tts.description
    assert "find the exact name of a voice" in voices.description
    assert dialogue.description.startswith("Speak a dialogue in several voices with hume/octave-2")
    assert voices.args == {}


def test_annotations_in_metadata_mark_list_voices_read_only() -> None:
    tts = OctaveTTSTool(metadata={"team": "docs"})
    voices = OctaveVoicesTool()

    assert tts.metadata == {
        "readOnlyHint": False,
        "destructiveHint": False,
        "idempotentHint": False,
        "openWorldHint": True,
        "team": "docs",
    }
    assert voices.metadata["readOnlyHint"] is True


# ---------------------------------------------------------------- results


def test_tool_call_gives_url_sentence_and_speech_artifact(
    tool: OctaveTTSTool, fake_aimlapi: FakeAIMLAPI
) -> None:
    text = "The quick brown fox."

    message = tool.invoke(call({"text": text, "voice": "Ava Song", "format": "mp3"}))

    url = only_url(fake_aimlapi)
    credits = len(text) * CREDITS_PER_CHAR
    assert isinstance(message, ToolMessage)
    assert (message.status, message.tool_call_id, message.name) == (
        "success",
        "call-1",
        "text_to_speech",
    )
    assert message.content == (
        f"Speech generated hume/octave-2: {url} (voice 'Ava Song', mp3, {credits:,} credits)."
    )
    request_id = message.artifact.pop("request_id")
    assert isinstance(request_id, str)
    assert len(request_id) == 36
    assert message.artifact == {
        "audio_url": url,
        "format": "mp3",
        "voice": "Ava Song",
        "model": "hume/octave-2",
        "characters": len(text),
        "credits_used": credits,
        "usd_spent": credits / 2_000_000,
        "engine": "aimlapi",
        "cached": False,
    }
    assert fake_aimlapi.tts_requests[0].json == {
        "model": "hume/octave-2",
        "text": text,
        "format": "mp3",
        "voice": "Ava Song",
    }


def test_plain_invoke_gives_the_sentence(tool: OctaveTTSTool, fake_aimlapi: FakeAIMLAPI) -> None:
    content = tool.invoke({"text": "Just the sentence"})

    assert content == (
        f"Speech generated hume/octave-2: {only_url(fake_aimlapi)} "
        "(voice 'Vince Douglas', wav, 2,125 credits)."
    )


def test_a_string_input_is_the_text(tool: OctaveTTSTool, fake_aimlapi: FakeAIMLAPI) -> None:
    tool.invoke("Read me")

    assert fake_aimlapi.tts_requests[0].json["text"] == "Read me"


def test_loose_spellings_are_normalised(tool: OctaveTTSTool, fake_aimlapi: FakeAIMLAPI) -> None:
    voice = "english children\u2019s book narrator"

    message = tool.invoke(call({"text": "Hi", "voice": voice, "format": " .MP3"}))

    body = fake_aimlapi.tts_requests[0].json
    assert (body["voice"], body["format"]) == ("English Children's Book Narrator", "mp3")
    assert message.artifact["voice"] == "English Children's Book Narrator"


def test_blank_optional_arguments_mean_the_defaults(
    tool: OctaveTTSTool, fake_aimlapi: FakeAIMLAPI
) -> None:
    tool.invoke(call({"text": "Hi", "voice": "", "format": " "}))

    body = fake_aimlapi.tts_requests[0].json
    assert (body["voice"], body["format"]) == ("Vince Douglas", "wav")


def test_the_newer_string_response_shape_gives_the_same_result() -> None:
    with FakeAIMLAPI(success_status=200, response_shape="string") as api:
        message = OctaveTTSTool(**api_options(api)).invoke(call({"text": "Hi"}))

        assert message.artifact["audio_url"] == only_url(api)
        assert only_url(api) in message.content


# ---------------------------------------------------------------- errors the model can fix


@pytest.mark.parametrize(
    ("args", "content"),
    [
        (
            {"text": "Hi", "voice": "Ava Sung"},
            "Error: Unknown voice 'Ava Sung' for model 'hume/octave-2'. Did you mean 'Ava Song'? "
            "Call list_voices (or run `octave-tools voices`) for the full list.",
        ),
        (
            {"text": "   "},
            "Error: text is empty. Pass the words to speak (at least one non-space character).",
        ),
        (
            {"text": "a" * 500_001},
            "Error: text is 500,001 characters; one call takes at most 200,000 (max_text_chars). "
            "Send it in several calls, or raise OCTAVE_TOOLS_MAX_TEXT_CHARS.",
        ),
        (
            {"text": "Hi", "format": "ogg"},
            "Error: Unknown format 'ogg' for model 'hume/octave-2'. Use one of: wav, mp3.",
        ),
        (
            {"text": "Hi", "vioce": "Ava Song"},
            "Error: unknown argument 'vioce'; text_to_speech takes only: text, voice, format.",
        ),
        (
            {"voice": "Ava Song"},
            "Error: invalid arguments: text: Field required. Correct them and call the tool again.",
        ),
        (
            {"text": 42},
            "Error: invalid arguments: text: Input should be a valid string. "
            "Correct them and call the tool again.",
        ),
    ],
    ids=[
        "unknown-voice",
        "empty-text",
        "too-long",
        "bad-format",
        "unknown-argument",
        "no-text",
        "not-a-string",
    ],
)
def test_input_mistakes_come_back_to_the_model_before_any_request(
    tool: OctaveTTSTool, fake_aimlapi: FakeAIMLAPI, args: dict[str, Any], content: str
) -> None:
    message = tool.invoke(call(args))

    assert (message.status, message.content, message.tool_call_id) == ("error", content, "call-1")
    assert message.artifact is None
    assert fake_aimlapi.requests == []


@pytest.mark.parametrize(
    ("misbehave", "content"),
    [
        (
            lambda api: api.fail(429, retry_after="7"),
            "Error: The API rate limit was hit (429: Error 429). Retry after 7 s.",
        ),
        (
            lambda api: api.fail(503),
            "Error: The API failed (503: Error 503). This is usually temporary; try again later.",
        ),
        (
            lambda api: api.html(502),
            "Error: The API failed (502: 502 Bad Gateway nginx). "
            "This is usually temporary; try again later.",
        ),
        (
            lambda api: api.fail(400, message="Body validation error!"),
            "Error: The API rejected the request (400: Body validation error!). Check the text, "
            "voice 'Vince Douglas' and format 'wav' for model 'hume/octave-2'.",
        ),
    ],
    ids=["rate-limit", "server-error", "proxy-page", "api-400"],
)
def test_api_failures_the_model_can_retry_come_back_as_messages(
    tool: OctaveTTSTool, fake_aimlapi: FakeAIMLAPI, misbehave: Any, content: str
) -> None:
    misbehave(fake_aimlapi)

    message = tool.invoke(call({"text": "Hi"}))

    assert (message.status, message.content) == ("error", content)


def test_a_dropped_connection_comes_back_as_a_message(
    tool: OctaveTTSTool, fake_aimlapi: FakeAIMLAPI
) -> None:
    fake_aimlapi.drop()

    message = tool.invoke(call({"text": "Hi"}))

    assert message.status == "error"
    assert message.content.startswith(
        f"Error: Could not reach the API at 127.0.0.1:{fake_aimlapi.port} after 1 attempt ("
    )
    assert message.content.endswith("Check the network and AIMLAPI_BASE_URL, then try again.")


def test_a_response_without_audio_comes_back_as_a_message(
    tool: OctaveTTSTool, fake_aimlapi: FakeAIMLAPI
) -> None:
    fake_aimlapi.no_url()

    message = tool.invoke(call({"text": "Hi"}))

    assert message.status == "error"
    assert message.content.startswith(
        "Error: The API answered 201 with no audio URL, so there is no audio to return: "
    )


def test_a_timeout_comes_back_as_a_message(fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.delay(5)
    tool = OctaveTTSTool(**api_options(fake_aimlapi, timeout=0.3))

    message = tool.invoke(call({"text": "Hi"}))

    assert (message.status, message.content) == (
        "error",
        "Error: The call did not finish within its 0.3 s limit. Try again, send shorter text, "
        "or raise OCTAVE_TOOLS_TIMEOUT.",
    )


async def test_async_calls_follow_the_same_rule(
    tool: OctaveTTSTool, fake_aimlapi: FakeAIMLAPI
) -> None:
    fake_aimlapi.fail(503)

    unknown = await tool.ainvoke(call({"text": "Hi", "voice": "Frensh Chef"}))
    failed = await tool.ainvoke(call({"text": "Hi"}))

    assert unknown.status == failed.status == "error"
    assert "Did you mean 'French Chef'?" in unknown.content
    assert failed.content.startswith("Error: The API failed (503: Error 503).")


def test_handle_tool_error_false_raises_with_the_core_error_as_cause(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    tool = OctaveTTSTool(**api_options(fake_aimlapi), handle_tool_error=False)

    with pytest.raises(ToolException) as caught:
        tool.invoke(call({"text": "Hi", "voice": "Nobody"}))

    assert isinstance(caught.value.__cause__, InvalidInputError)
    assert caught.value.__cause__.field == "voice"


# ---------------------------------------------------------------- errors only a person can fix


def test_a_rejected_key_is_raised_without_the_key(secret_api: FakeAIMLAPI) -> None:
    tool = OctaveTTSTool(**api_options(secret_api, api_key=SECRET + "-revoked"))

    with pytest.raises(AuthenticationError) as caught:
        tool.invoke(call({"text": "Hi"}))

    assert caught.value.status_code == 401
    assert str(caught.value).startswith("The API key was rejected (401: ")
    assert SECRET not in str(caught.value)


def test_out_of_credits_is_raised(tool: OctaveTTSTool, fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.fail(403, message="Insufficient credits")

    with pytest.raises(AuthenticationError, match=r"^The API refused this call \(403: Insuff"):
        tool.invoke(call({"text": "Hi"}))


def test_a_retired_model_is_raised(fake_aimlapi: FakeAIMLAPI) -> None:
    tool = OctaveTTSTool(**api_options(fake_aimlapi, model="hume/octave-1"))

    with pytest.raises(NotFoundError, match="Set OCTAVE_TOOLS_MODEL to a current"):
        tool.invoke(call({"text": "Hi"}))


def test_a_spend_limit_is_raised_before_any_request(fake_aimlapi: FakeAIMLAPI) -> None:
    tool = OctaveTTSTool(client=OctaveClient(**api_options(fake_aimlapi), max_credits=1000))
    tool.invoke(call({"text": "x" * 8}))  # 1,000 credits: the whole limit

    with pytest.raises(BudgetExceededError, match="this client has spent 1,000 of its 1,000"):
        tool.invoke(call({"text": "one more"}))
    assert len(fake_aimlapi.tts_requests) == 1


async def test_configuration_errors_are_raised_on_the_async_path() -> None:
    tool = OctaveTTSTool(engine="aimlapi")

    with pytest.raises(ConfigurationError, match="No AIML API key"):
        await tool.ainvoke(call({"text": "Hi"}))


def test_an_api_error_echoing_the_key_reaches_the_model_redacted(
    secret_api: FakeAIMLAPI,
) -> None:
    secret_api.respond(500, {"message": f"upstream rejected Bearer {SECRET}"})
    tool = OctaveTTSTool(**api_options(secret_api, api_key=SECRET))

    message = tool.invoke(call({"text": "Hi"}))

    assert message.content == (
        "Error: The API failed (500: upstream rejected Bearer **********). "
        "This is usually temporary; try again later."
    )


# ---------------------------------------------------------------- async and batches


class CountingTransport(httpx.AsyncBaseTransport):
    """A real transport that counts requests, and can hold them until enough are in flight."""

    def __init__(self, hold_until: int = 1) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.hold_until = hold_until
        self.requests = 0
        self.in_flight = 0
        self.peak = 0
        self.gate = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.in_flight >= self.hold_until:
            self.gate.set()
        try:
            # Passes only once `hold_until` requests wait here together: proof of concurrency.
            await asyncio.wait_for(self.gate.wait(), timeout=10)
            return await self.inner.handle_async_request(request)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_ainvoke_runs_on_the_async_client(fake_aimlapi: FakeAIMLAPI) -> None:
    transport = CountingTransport()
    async with httpx.AsyncClient(transport=transport) as http:
        tool = OctaveTTSTool(
            async_client=AsyncOctaveClient(**api_options(fake_aimlapi), http_client=http)
        )

        message = await tool.ainvoke(call({"text": "Async hello", "voice": "Lady Elizabeth"}))

    assert transport.requests == 1
    assert message.content == (
        f"Speech generated hume/octave-2: {only_url(fake_aimlapi)} "
        "(voice 'Lady Elizabeth', wav, 1,375 credits)."
    )


async def test_abatch_runs_calls_concurrently_up_to_max_concurrency(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    transport = CountingTransport(hold_until=4)
    async with httpx.AsyncClient(transport=transport) as http:
        tool = OctaveTTSTool(
            async_client=AsyncOctaveClient(**api_options(fake_aimlapi), http_client=http)
        )
        calls: list[str | dict[str, Any] | ToolCall] = [
            call({"text": f"Line {i}"}, id=f"call-{i}") for i in range(8)
        ]

        messages = await tool.abatch(calls, config={"max_concurrency": 4})

    assert (transport.requests, transport.peak) == (8, 4)
    assert [m.tool_call_id for m in messages] == [f"call-{i}" for i in range(8)]
    assert [fake_aimlapi.issued[m.artifact["audio_url"]] for m in messages] == [
        f"Line {i}" for i in range(8)
    ]


def test_one_tool_serves_successive_event_loops(
    tool: OctaveTTSTool, fake_aimlapi: FakeAIMLAPI
) -> None:
    first = asyncio.run(tool.ainvoke({"text": "First loop"}))
    second = asyncio.run(tool.ainvoke({"text": "Second loop"}))

    assert first.startswith("Speech generated") and second.startswith("Speech generated")
    assert sorted(fake_aimlapi.issued.values()) == ["First loop", "Second loop"]


def test_batch_runs_on_the_sync_client(tool: OctaveTTSTool, fake_aimlapi: FakeAIMLAPI) -> None:
    contents = tool.batch([{"text": "One"}, {"text": "Two"}, {"text": "Three"}])

    urls = [content.split(": ", 1)[1].split(" ", 1)[0] for content in contents]
    assert [fake_aimlapi.issued[url] for url in urls] == ["One", "Two", "Three"]


# ---------------------------------------------------------------- callbacks and tracing


class RecordingHandler(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_tool_start(
        self, serialized: dict[str, Any], input_str: str, *, run_id: UUID, **kwargs: Any
    ) -> None:
        self.events.append(
            ("start", (serialized["name"], kwargs["inputs"], kwargs["tags"], kwargs["metadata"]))
        )

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append(("end", output))

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append(("error", error))


def test_callbacks_see_the_run(tool: OctaveTTSTool, fake_aimlapi: FakeAIMLAPI) -> None:
    handler = RecordingHandler()

    message = tool.invoke(
        call({"text": "Traced", "voice": "Tough Guy"}),
        config={"callbacks": [handler], "tags": ["demo"], "metadata": {"session": "s1"}},
    )

    (start_kind, (name, inputs, tags, metadata)), (end_kind, output) = handler.events
    assert (start_kind, name, inputs, tags) == (
        "start",
        "text_to_speech",
        {"text": "Traced", "voice": "Tough Guy"},
        ["demo"],
    )
    assert metadata["session"] == "s1"
    assert metadata["openWorldHint"] is True
    assert (end_kind, output) == ("end", message)


class RecordingLangSmith(LangSmithClient):
    """The LangSmith client, with the two calls a tracer makes recorded instead of sent."""

    def __init__(self) -> None:
        super().__init__(api_url="http://127.0.0.1:9", api_key="ls-test", auto_batch_tracing=False)
        self.created: list[dict[str, Any]] = []
        self.updated: list[dict[str, Any]] = []

    def create_run(self, name: str, inputs: dict[str, Any], run_type: Any, **kw: Any) -> None:
        self.created.append({"name": name, "inputs": inputs, "run_type": run_type, **kw})

    def update_run(self, run_id: Any, **kw: Any) -> None:
        self.updated.append({"run_id": run_id, **kw})


def test_langsmith_tracing_records_the_run_without_the_key(secret_api: FakeAIMLAPI) -> None:
    langsmith = RecordingLangSmith()
    tracer = LangChainTracer(client=langsmith, project_name="octave-tests")
    tool = OctaveTTSTool(**api_options(secret_api, api_key=SECRET))

    traced: RunnableConfig = {"callbacks": [tracer]}

    message = tool.invoke(call({"text": "Traced", "voice": "Ava Song"}), config=traced)
    secret_api.respond(500, {"message": f"echo {SECRET}"})
    failed = tool.invoke(call({"text": "Again"}, id="call-2"), config=traced)
    tracer.wait_for_futures()

    assert [(r["name"], r["run_type"], r["inputs"]) for r in langsmith.created] == [
        ("text_to_speech", "tool", {"text": "Traced", "voice": "Ava Song"}),
        ("text_to_speech", "tool", {"text": "Again"}),
    ]
    outputs = [r["outputs"]["output"] for r in langsmith.updated]
    assert outputs == [message, failed]
    assert outputs[0].artifact["credits_used"] == 6 * CREDITS_PER_CHAR
    assert failed.status == "error"
    sent = json.dumps([langsmith.created, langsmith.updated], default=repr)
    assert SECRET not in sent


def test_a_raised_error_is_traced_without_the_key(secret_api: FakeAIMLAPI) -> None:
    handler = RecordingHandler()
    tool = OctaveTTSTool(**api_options(secret_api, api_key=SECRET + "-revoked"))

    with pytest.raises(AuthenticationError):
        tool.invoke(call({"text": "Hi"}), config={"callbacks": [handler]})

    kind, error = handler.events[-1]
    assert kind == "error"
    assert isinstance(error, AuthenticationError)
    assert SECRET not in repr(error) and SECRET not in str(error)


# ---------------------------------------------------------------- list_voices and the toolkit


def test_list_voices_gives_the_catalogue_and_the_default() -> None:
    tool = OctaveVoicesTool(engine="aimlapi", voice="lady elizabeth")

    message = tool.invoke(call({}, name="list_voices"))

    names = ", ".join(f"{v} (default)" if v == "Lady Elizabeth" else v for v in VOICES)
    assert message.content == f"27 voices for hume/octave-2: {names}."
    assert message.artifact == {
        "model": "hume/octave-2",
        "voices": list(VOICES),
        "default": "Lady Elizabeth",
        "custom_voices": False,
        "custom_voice_max_chars": None,
    }


async def test_list_voices_for_a_model_it_does_not_know() -> None:
    tool = OctaveVoicesTool(engine="aimlapi", model="acme/tts-9")

    content = await tool.ainvoke({})

    assert content == (
        "octave-tools has no voice list for model 'acme/tts-9': pass a voice name that "
        "model accepts, or leave voice out for its default."
    )


def test_toolkit_gives_both_tools_with_one_set_of_settings(fake_aimlapi: FakeAIMLAPI) -> None:
    toolkit = OctaveToolkit(**api_options(fake_aimlapi, voice="Charming Cowgirl"))

    tts, dialogue, voices = toolkit.get_tools()

    assert [t.name for t in toolkit.get_tools()] == [
        "text_to_speech",
        "text_to_dialogue",
        "list_voices",
    ]
    assert isinstance(dialogue, OctaveDialogueTool)
    assert toolkit.get_tools()[0] is tts
    assert isinstance(tts, OctaveTTSTool) and isinstance(voices, OctaveVoicesTool)
    assert tts.invoke(call({"text": "Howdy"})).artifact["voice"] == "Charming Cowgirl"
    assert voices.invoke(call({}, name="list_voices")).artifact["default"] == "Charming Cowgirl"


def test_importing_the_langchain_face_does_not_import_mcp() -> None:
    code = (
        "import sys, octave_tools.langchain\n"
        "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout

    assert out.strip() == "[]"


# ---------------------------------------------------------------- every setting takes effect


def test_a_cache_ttl_on_the_tool_answers_a_repeat_from_the_cache(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    tool = OctaveTTSTool(**api_options(fake_aimlapi, cache_ttl=600))

    first = tool.invoke(call({"text": "Say it once"}))
    second = tool.invoke(call({"text": "Say it once"}, id="call-2"))

    assert len(fake_aimlapi.tts_requests) == 1
    assert (first.artifact["cached"], second.artifact["cached"]) == (False, True)
    assert second.artifact["audio_url"] == first.artifact["audio_url"]


@pytest.mark.parametrize("make", [OctaveTTSTool, OctaveToolkit], ids=["tool", "toolkit"])
def test_a_one_credit_daily_budget_refuses_before_any_request(
    fake_aimlapi: FakeAIMLAPI, make: Any
) -> None:
    made = make(**api_options(fake_aimlapi, max_credits_per_day=1))
    tool = made if isinstance(made, OctaveTTSTool) else made.get_tools()[0]

    with pytest.raises(BudgetExceededError, match="1-credit daily budget"):
        tool.invoke(call({"text": "Too dear"}))
    assert fake_aimlapi.requests == []


def test_a_per_client_credit_limit_on_the_toolkit_takes_effect(fake_aimlapi: FakeAIMLAPI) -> None:
    tts = OctaveToolkit(**api_options(fake_aimlapi, max_credits=10)).get_tools()[0]

    with pytest.raises(BudgetExceededError, match="max_credits"):
        tts.invoke(call({"text": "Too dear"}))
    assert fake_aimlapi.requests == []


@pytest.mark.parametrize("make", [OctaveTTSTool, OctaveVoicesTool, OctaveToolkit])
def test_an_unknown_option_is_refused_naming_the_close_setting(make: Any) -> None:
    with pytest.raises(TypeError) as caught:
        make(cache_tl=600, api_kye=SECRET)

    message = str(caught.value)
    assert message.startswith("Unknown setting 'cache_tl', 'api_kye'. ")
    assert "Did you mean 'cache_ttl'?" in message
    assert SECRET not in message
