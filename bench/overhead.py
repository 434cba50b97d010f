"""Core overhead against bare httpx, on the fake AIML API over loopback.

Prints two ratios measured in the same run (machines here are noisy; compare ratios):
- per call: median OctaveClient.synthesize / median bare httpx.Client.post of the same
  request, same headers and body, plus reading the URL from the JSON (target <= 1.10)
- concurrency: throughput of 200 concurrent AsyncOctaveClient calls / bare
  httpx.AsyncClient (target >= 0.90)

    python bench/overhead.py [--calls 400] [--concurrent 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

import httpx

from octave_tools import AsyncOctaveClient, OctaveClient
from octave_tools._protocol import prepare
from octave_tools._settings import Settings
from octave_tools.testing import FakeAIMLAPI

TEXT = "The quick brown fox jumps over the lazy dog."


def _request(api: FakeAIMLAPI) -> tuple[str, dict[str, str], bytes]:
    """The very request OctaveClient sends (same headers and body), for the bare baseline."""
    settings = Settings.load(api_key=api.api_key, base_url=api.base_url, environ={})
    call = prepare(settings, TEXT, None, None)
    return call.url, call.headers, call.body


def per_call(api: FakeAIMLAPI, calls: int) -> tuple[float, float]:
    url, headers, body = _request(api)
    bare_times: list[float] = []
    ours_times: list[float] = []
    with (
        httpx.Client() as bare,
        OctaveClient(api_key=api.api_key, base_url=api.base_url, engine="aimlapi") as ours,
    ):
        for _ in range(20):  # warm both connection pools
            bare.post(url, headers=headers, content=body).json()
            ours.synthesize(TEXT)
        for _ in range(calls):  # interleaved, so drift hits both alike
            t = time.perf_counter()
            r = bare.post(url, headers=headers, content=body)
            r.raise_for_status()
            r.json()["audio"]["url"]
            bare_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            ours.synthesize(TEXT)
            ours_times.append(time.perf_counter() - t)
    return statistics.median(bare_times), statistics.median(ours_times)


async def concurrent(api: FakeAIMLAPI, n: int, rounds: int) -> tuple[float, float]:
    url, headers, body = _request(api)
    bare_runs: list[float] = []
    ours_runs: list[float] = []
    async with (
        httpx.AsyncClient() as bare,
        AsyncOctaveClient(api_key=api.api_key, base_url=api.base_url, engine="aimlapi") as ours,
    ):

        async def bare_one() -> str:
            r = await bare.post(url, headers=headers, content=body)
            r.raise_for_status()
            return str(r.json()["audio"]["url"])

        async def ours_one() -> str:
            return (await ours.synthesize(TEXT)).audio_url

        await asyncio.gather(*(bare_one() for _ in range(n)))
        await asyncio.gather(*(ours_one() for _ in range(n)))
        for _ in range(rounds):
            t = time.perf_counter()
            await asyncio.gather(*(bare_one() for _ in range(n)))
            bare_runs.append(time.perf_counter() - t)
            t = time.perf_counter()
            await asyncio.gather(*(ours_one() for _ in range(n)))
            ours_runs.append(time.perf_counter() - t)
    return statistics.median(bare_runs), statistics.median(ours_runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # Default settings (ledger on), but the ledger goes to a temp folder, not the user's.
    os.environ["OCTAVE_TOOLS_DATA_DIR"] = tempfile.mkdtemp(prefix="octave-bench-")
    with FakeAIMLAPI() as api:
        bare, ours = per_call(api, args.calls)
        print(
            f"per call   bare httpx {bare * 1e3:7.3f} ms   OctaveClient {ours * 1e3:7.3f} ms   "
            f"overhead {(ours - bare) * 1e3:+.3f} ms   ratio {ours / bare:.3f}  (target <= 1.10)"
        )
        bare_t, ours_t = asyncio.run(concurrent(api, args.concurrent, args.rounds))
        n = args.concurrent
        print(
            f"{n} concurrent  bare {n / bare_t:7.0f} calls/s   AsyncOctaveClient {n / ours_t:7.0f} "
            f"calls/s   throughput ratio {bare_t / ours_t:.3f}  (target >= 0.90)"
        )


if __name__ == "__main__":
    main()
