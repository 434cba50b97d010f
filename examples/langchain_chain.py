"""An LCEL chain that narrates a scene with several voices, all lines at once.

``RunnableLambda(line -> ToolCall) | OctaveTTSTool()`` is an ordinary runnable: ``abatch``
runs the lines concurrently on the tool's async client, and each result is a
``ToolMessage`` whose artifact says what the line cost.

Offline by default (a fake AIML API on 127.0.0.1, no key, no network):

    python examples/langchain_chain.py

With ``--live`` it calls the real API with ``AIMLAPI_API_KEY`` (this costs credits).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from langchain_core.messages import ToolCall, ToolMessage
from langchain_core.runnables import Runnable, RunnableLambda

from octave_tools.langchain import OctaveTTSTool
from octave_tools.testing import FakeAIMLAPI

SCENE: list[tuple[str, str]] = [
    ("Nature Documentary Narrator", "At dawn, the kitchen stirs."),
    ("French Chef", "Bonjour! Today, the perfect omelette."),
    ("Tough Guy", "Eggs. Butter. Heat. That's it."),
    ("French Chef", "Non, non, non! Also patience."),
]


def as_tool_call(numbered: tuple[int, tuple[str, str]]) -> ToolCall:
    """One scene line as the tool call a model would make (a ToolCall gives the artifact)."""
    number, (voice, text) = numbered
    return ToolCall(
        name="text_to_speech",
        args={"text": text, "voice": voice, "format": "mp3"},
        id=f"line-{number}",
        type="tool_call",
    )


def narrate_chain(tts: OctaveTTSTool) -> Runnable[tuple[int, tuple[str, str]], ToolMessage]:
    return RunnableLambda(as_tool_call) | tts


async def narrate(tts: OctaveTTSTool, scene: list[tuple[str, str]]) -> list[ToolMessage]:
    chain = narrate_chain(tts)
    messages: list[ToolMessage] = await chain.abatch(
        list(enumerate(scene, 1)), config={"max_concurrency": 4}
    )
    total = 0.0
    for message in messages:
        print(f"{message.tool_call_id}: {message.content}")
        if message.status == "success":
            total += message.artifact["credits_used"] or 0
    print(f"{len(messages)} lines, {total:,.0f} credits in all.")
    return messages


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", action="store_true", help="call the real AIML API")
    args = parser.parse_args(argv)

    if args.live:
        if not os.environ.get("AIMLAPI_API_KEY"):
            sys.exit("--live needs AIMLAPI_API_KEY in the environment.")
        asyncio.run(narrate(OctaveTTSTool(engine="aimlapi"), SCENE))
        return
    os.environ["OCTAVE_TOOLS_LEDGER"] = "off"  # fake calls stay out of your usage report
    with FakeAIMLAPI() as api:
        tts = OctaveTTSTool(api_key=api.api_key, base_url=api.base_url, engine="aimlapi")
        asyncio.run(narrate(tts, SCENE))


if __name__ == "__main__":
    main()
