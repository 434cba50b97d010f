"""Offline agent and LCEL round trips: a scripted chat model drives the tools over the fake API."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from octave_tools import ConfigurationError
from octave_tools.langchain import OctaveToolkit, OctaveTTSTool
from octave_tools.testing import CREDITS_PER_CHAR, FakeAIMLAPI

Policy = Callable[[list[BaseMessage], list[dict[str, Any]]], AIMessage]


class ScriptedChatModel(BaseChatModel):
    """A chat model whose replies come from a function of the conversation and bound tools.

    ``bind_tools`` converts the tools to the OpenAI format, as provider models do, so the
    policy sees exactly the schema a real model would.
    """

    policy: Policy

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = self.policy(messages, kwargs.get("tools", []))
        return ChatResult(generations=[ChatGeneration(message=message)])


def tool_call(args: dict[str, Any], id: str) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": "text_to_speech", "args": args, "id": id}])


def speak(text: str, voice: str) -> Policy:
    """Call text_to_speech once; follow a "did you mean" once; then answer with the result."""

    def policy(messages: list[BaseMessage], tools: list[dict[str, Any]]) -> AIMessage:
        assert [t["function"]["name"] for t in tools] == [
            "text_to_speech",
            "text_to_dialogue",
            "list_voices",
        ]
        last = messages[-1]
        if isinstance(last, HumanMessage):
            return tool_call({"text": text, "voice": voice}, id="call-1")
        assert isinstance(last, ToolMessage)
        suggestion = re.search(r"Did you mean '([^']+)'", str(last.content))
        if last.status == "error" and suggestion:
            return tool_call({"text": text, "voice": suggestion.group(1)}, id="call-2")
        return AIMessage(content=f"Here is your audio. {last.content}")

    return policy


@pytest.fixture
def tools(fake_aimlapi: FakeAIMLAPI) -> list[BaseTool]:
    return OctaveToolkit(
        api_key=fake_aimlapi.api_key,
        base_url=fake_aimlapi.base_url,
        engine="aimlapi",
        max_retries=0,
    ).get_tools()


def tool_messages(state: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in state["messages"] if isinstance(m, ToolMessage)]


def test_agent_gets_url_and_credits_back(tools: list[BaseTool], fake_aimlapi: FakeAIMLAPI) -> None:
    text = "Welcome aboard."
    agent = create_agent(ScriptedChatModel(policy=speak(text, "Campfire Narrator")), tools)

    state = agent.invoke({"messages": [HumanMessage("Read 'Welcome aboard.' by the campfire")]})

    (result,) = tool_messages(state)
    (url,) = fake_aimlapi.issued
    assert result.status == "success"
    assert url in str(result.content)
    assert "voice 'Campfire Narrator'" in str(result.content)
    assert result.artifact["credits_used"] == len(text) * CREDITS_PER_CHAR
    assert result.artifact["audio_url"] == url
    assert state["messages"][-1].content == f"Here is your audio. {result.content}"
    assert fake_aimlapi.tts_requests[0].json["voice"] == "Campfire Narrator"


def test_agent_corrects_a_bad_voice_from_the_suggestion(
    tools: list[BaseTool], fake_aimlapi: FakeAIMLAPI
) -> None:
    agent = create_agent(ScriptedChatModel(policy=speak("Bonjour!", "Frensh Chef")), tools)

    state = agent.invoke({"messages": [HumanMessage("Say bonjour like a French chef")]})

    refused, spoken = tool_messages(state)
    assert (refused.status, refused.tool_call_id) == ("error", "call-1")
    assert refused.content == (
        "Error: Unknown voice 'Frensh Chef' for model 'hume/octave-2'. Did you mean "
        "'French Chef'? Call list_voices (or run `octave-tools voices`) for the full list."
    )
    assert (spoken.status, spoken.tool_call_id) == ("success", "call-2")
    assert spoken.artifact["voice"] == "French Chef"
    # The mistake cost nothing: only the corrected call reached the API.
    assert [r.json["voice"] for r in fake_aimlapi.tts_requests] == ["French Chef"]


async def test_agent_runs_asynchronously(tools: list[BaseTool], fake_aimlapi: FakeAIMLAPI) -> None:
    agent = create_agent(ScriptedChatModel(policy=speak("Async agent.", "Tough Guy")), tools)

    state = await agent.ainvoke({"messages": [HumanMessage("Speak, tough guy")]})

    (result,) = tool_messages(state)
    assert result.artifact["voice"] == "Tough Guy"
    assert result.artifact["audio_url"] in fake_aimlapi.issued


def test_agent_run_stops_on_a_configuration_error() -> None:
    tools = OctaveToolkit(engine="aimlapi").get_tools()  # no key anywhere
    agent = create_agent(ScriptedChatModel(policy=speak("Hi", "Ava Song")), tools)

    with pytest.raises(ConfigurationError, match="No AIML API key"):
        agent.invoke({"messages": [HumanMessage("Say hi")]})


def test_lcel_prompt_model_tool_chain(tools: list[BaseTool], fake_aimlapi: FakeAIMLAPI) -> None:
    tts = tools[0]

    def read_aloud(messages: list[BaseMessage], bound: list[dict[str, Any]]) -> AIMessage:
        line = str(messages[-1].content).removeprefix("Read aloud: ")
        return tool_call({"text": line, "voice": "Literature Professor"}, id="lcel-1")

    prompt = ChatPromptTemplate.from_messages([("human", "Read aloud: {line}")])
    model = ScriptedChatModel(policy=read_aloud).bind_tools([tts])
    chain = prompt | model | (lambda message: message.tool_calls) | tts.map()

    (message,) = chain.invoke({"line": "To be, or not to be."})

    assert isinstance(message, ToolMessage)
    assert message.tool_call_id == "lcel-1"
    assert fake_aimlapi.issued[message.artifact["audio_url"]] == "To be, or not to be."


async def test_lcel_runnable_lambda_abatch(fake_aimlapi: FakeAIMLAPI) -> None:
    tts = OctaveTTSTool(
        api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url, engine="aimlapi"
    )

    def line(name: str) -> dict[str, str]:
        return {"text": f"Hello, {name}!", "format": "mp3"}

    chain = RunnableLambda(line) | tts

    contents = await chain.abatch(["Ada", "Grace", "Alan"], config={"max_concurrency": 3})

    urls = [c.split(": ", 1)[1].split(" ", 1)[0] for c in contents]
    spoken = [fake_aimlapi.issued[u] for u in urls]
    assert spoken == ["Hello, Ada!", "Hello, Grace!", "Hello, Alan!"]
    assert all(u.endswith(".mp3") for u in urls)
