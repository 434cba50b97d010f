"""What the LangChain face adds to a call: tool.invoke against client.synthesize.

Both go through the very same OctaveClient (the tool is built on it), to the fake AIML
API on loopback, interleaved call by call so drift hits both alike. Prints the median
time of each and the median overhead per call (target <= 1 ms), for:

- ``tool.invoke({"text": ...})``            plain arguments, content only
- ``tool.invoke(ToolCall)``                 what an agent does: a ToolMessage + artifact
- ``await tool.ainvoke(ToolCall)``          against ``await AsyncOctaveClient.synthesize``

and checks that importing ``octave_tools.langchain`` does not import mcp.

    python bench/langchain_overhead.py [--calls 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.messages import ToolCall

from octave_tools import AsyncOctaveClient, OctaveClient
from octave_tools.langchain import OctaveTTSTool
from octave_tools.testing import FakeAIMLAPI

TEXT = "The quick brown fox jumps over the lazy dog."
VOICE = "Ava Song"
TARGET_MS = 1.0
WARMUP = 50


def tool_call(i: int) -> ToolCall:
    return ToolCall(
        name="text_to_speech", args={"text": TEXT, "voice": VOICE}, id=f"call-{i}", type="tool_call"
    )


def interleave(
    calls: int, baseline: Callable[[int], Any], candidate: Callable[[int], Any]
) -> tuple[list[float], list[float]]:
    base: list[float] = []
    cand: list[float] = []
    for i in range(WARMUP):
        baseline(i)
        candidate(i)
    for i in range(calls):
        t = time.perf_counter()
        baseline(i)
        base.append(time.perf_counter() - t)
        t = time.perf_counter()
        candidate(i)
        cand.append(time.perf_counter() - t)
    return base, cand


async def ainterleave(
    calls: int,
    baseline: Callable[[int], Awaitable[Any]],
    candidate: Callable[[int], Awaitable[Any]],
) -> tuple[list[float], list[float]]:
    base: list[float] = []
    cand: list[float] = []
    for i in range(WARMUP):
        await baseline(i)
        await candidate(i)
    for i in range(calls):
        t = time.perf_counter()
        await baseline(i)
        base.append(time.perf_counter() - t)
        t = time.perf_counter()
        await candidate(i)
        cand.append(time.perf_counter() - t)
    return base, cand


def report(label: str, base: list[float], cand: list[float]) -> float:
    b, c = statistics.median(base), statistics.median(cand)
    paired = statistics.median(y - x for x, y in zip(base, cand, strict=True))
    verdict = "ok" if paired * 1e3 <= TARGET_MS else "OVER TARGET"
    print(
        f"{label:<28} direct {b * 1e3:6.3f} ms   tool {c * 1e3:6.3f} ms   "
        f"overhead {paired * 1e3:+.3f} ms/call (median of paired differences; "
        f"of medians {(c - b) * 1e3:+.3f})   target <= {TARGET_MS:g} ms: {verdict}"
    )
    return paired


async def async_pair(api: FakeAIMLAPI, calls: int) -> tuple[list[float], list[float]]:
    options: dict[str, Any] = {
        "api_key": api.api_key,
        "base_url": api.base_url,
        "engine": "aimlapi",
    }
    async with AsyncOctaveClient(**options) as client:
        tool = OctaveTTSTool(async_client=client)

        async def direct(i: int) -> Any:
            return await client.synthesize(TEXT, voice=VOICE)

        async def through_tool(i: int) -> Any:
            return await tool.ainvoke(tool_call(i))

        return await ainterleave(calls, direct, through_tool)


def mcp_imported() -> bool:
    code = (
        "import sys, octave_tools.langchain\n"
        "print(any(m.split('.')[0] == 'mcp' for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    # The ledger stays on, as by default, but in a temp folder rather than the user's.
    os.environ["OCTAVE_TOOLS_DATA_DIR"] = tempfile.mkdtemp(prefix="octave-bench-")
    worst = 0.0
    with FakeAIMLAPI() as api:
        options: dict[str, Any] = {
            "api_key": api.api_key,
            "base_url": api.base_url,
            "engine": "aimlapi",
        }
        with OctaveClient(**options) as client:
            tool = OctaveTTSTool(client=client)

            def direct(i: int) -> Any:
                return client.synthesize(TEXT, voice=VOICE)

            def plain(i: int) -> Any:
                return tool.invoke({"text": TEXT, "voice": VOICE})

            def as_agent(i: int) -> Any:
                return tool.invoke(tool_call(i))

            worst = max(worst, report("tool.invoke(args)", *interleave(args.calls, direct, plain)))
            worst = max(
                worst, report("tool.invoke(ToolCall)", *interleave(args.calls, direct, as_agent))
            )
        worst = max(
            worst, report("await tool.ainvoke(ToolCall)", *asyncio.run(async_pair(api, args.calls)))
        )
    print(f"importing octave_tools.langchain imports mcp: {'yes' if mcp_imported() else 'no'}")
    print(f"worst median overhead {worst * 1e3:.3f} ms per call (target <= {TARGET_MS:g} ms)")


if __name__ == "__main__":
    main()
