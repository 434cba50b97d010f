"""An agent that speaks: LangChain's create_agent with the octave-tools toolkit.

Offline by default: a fake AIML API on 127.0.0.1 and a scripted chat model stand in for
the real services, so this runs with no key and no network. The script asks for a voice
with a typo on purpose, to show the agent getting "did you mean" back and correcting it.

    python examples/langchain_agent.py
    python examples/langchain_agent.py --prompt 'Read "Good night." in the Tough Guy voice'

With ``--live`` it uses the real API (``AIMLAPI_API_KEY``) and a real chat model: by
default ``gpt-4o-mini`` through the AIML API's OpenAI-compatible endpoint, which needs
``pip install langchain-openai``; ``--model provider:name`` picks any model
``init_chat_model`` knows (with that provider's package and key). Live calls cost credits.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool

from octave_tools.langchain import OctaveToolkit
from octave_tools.testing import FakeAIMLAPI

DEFAULT_PROMPT = 'Please read "Welcome to octave-tools!" aloud in the Frensh Chef voice.'
SYSTEM_PROMPT = (
    "You are a helpful assistant that can speak. When the user wants to hear something, call "
    "text_to_speech and give them the audio URL it returns."
)


class ScriptedChatModel(BaseChatModel):
    """A stand-in chat model: calls text_to_speech for the quoted words, follows one
    "did you mean", then answers with the tool's sentence."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(
        self, tools: Sequence[Any], **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        last = messages[-1]
        request = next(str(m.content) for m in messages if isinstance(m, HumanMessage))
        quoted = re.search(r'"([^"]+)"', request)
        args: dict[str, Any] = {"text": quoted.group(1) if quoted else request}
        asked_voice = re.search(r"in the (.+?) voice", request)
        if asked_voice:
            args["voice"] = asked_voice.group(1)
        if isinstance(last, HumanMessage):
            reply = AIMessage(content="", tool_calls=[_call(args, "call-1")])
        elif isinstance(last, ToolMessage) and last.status == "error":
            suggestion = re.search(r"Did you mean '([^']+)'", str(last.content))
            if suggestion is None:
                reply = AIMessage(content=f"Sorry, I could not make the audio: {last.content}")
            else:
                reply = AIMessage(
                    content="",
                    tool_calls=[_call({**args, "voice": suggestion.group(1)}, "call-2")],
                )
        else:
            reply = AIMessage(content=f"Here you go! {last.content}")
        return ChatResult(generations=[ChatGeneration(message=reply)])


def _call(args: dict[str, Any], id: str) -> dict[str, Any]:
    return {"name": "text_to_speech", "args": args, "id": id, "type": "tool_call"}


def live_model(name: str) -> BaseChatModel:
    """A real chat model: ``provider:name``, or a bare name served by the AIML API."""
    from langchain.chat_models import init_chat_model

    if ":" in name:
        return init_chat_model(name)
    try:
        return init_chat_model(
            name,
            model_provider="openai",
            base_url=os.environ.get("AIMLAPI_BASE_URL", "https://api.aimlapi.com/v1"),
            api_key=os.environ["AIMLAPI_API_KEY"],
        )
    except ImportError:
        sys.exit("--live with an AIML API chat model needs: pip install langchain-openai")


def show(messages: Sequence[BaseMessage]) -> None:
    for message in messages:
        if isinstance(message, AIMessage) and message.tool_calls:
            for tc in message.tool_calls:
                print(f"[model -> {tc['name']}] {tc['args']}")
        elif isinstance(message, ToolMessage):
            print(f"[{message.name}, {message.status}] {message.content}")
            artifact = message.artifact if message.status == "success" else None
            if artifact and "credits_used" in artifact:
                print(
                    f"    artifact: credits_used={artifact['credits_used']}, "
                    f"request_id={artifact['request_id']}"
                )
        else:
            print(f"[{message.type}] {message.content}")


def run(tools: list[BaseTool], model: BaseChatModel, prompt: str) -> list[BaseMessage]:
    agent = create_agent(model, tools, system_prompt=SYSTEM_PROMPT)
    state = agent.invoke({"messages": [HumanMessage(prompt)]})
    messages: list[BaseMessage] = state["messages"]
    show(messages)
    return messages


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--live", action="store_true", help="real API and real chat model")
    parser.add_argument("--model", default="gpt-4o-mini", help="chat model for --live")
    args = parser.parse_args(argv)

    if args.live:
        if not os.environ.get("AIMLAPI_API_KEY"):
            sys.exit("--live needs AIMLAPI_API_KEY in the environment.")
        run(OctaveToolkit(engine="aimlapi").get_tools(), live_model(args.model), args.prompt)
        return
    os.environ["OCTAVE_TOOLS_LEDGER"] = "off"  # fake calls stay out of your usage report
    with FakeAIMLAPI() as api:
        toolkit = OctaveToolkit(api_key=api.api_key, base_url=api.base_url, engine="aimlapi")
        run(toolkit.get_tools(), ScriptedChatModel(), args.prompt)


if __name__ == "__main__":
    main()
