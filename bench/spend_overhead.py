"""What spend control costs a call: ledger on vs off, and a budget check, on the fake API.

Prints ratios measured in the same run (target: the ledger adds no visible share,
i.e. ratio close to 1.00; the write happens on a background thread).

    python bench/spend_overhead.py [--calls 400]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time

from octave_tools import AsyncOctaveClient, OctaveClient
from octave_tools.testing import FakeAIMLAPI

TEXT = "The quick brown fox jumps over the lazy dog."


def sync_medians(
    api: FakeAIMLAPI, calls: int, variants: dict[str, dict[str, object]]
) -> dict[str, float]:
    clients = {
        name: OctaveClient(api_key=api.api_key, base_url=api.base_url, engine="aimlapi", **kw)  # type: ignore[arg-type]
        for name, kw in variants.items()
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for c in clients.values():
        for _ in range(20):
            c.synthesize(TEXT)
    order = list(clients.items())
    for _ in range(calls):
        random.shuffle(order)  # no variant always runs first after the others
        for name, c in order:
            t = time.perf_counter()
            c.synthesize(TEXT)
            times[name].append(time.perf_counter() - t)
    for c in clients.values():
        c.close()
    return {name: statistics.median(v) for name, v in times.items()}


async def async_throughput(
    api: FakeAIMLAPI, n: int, rounds: int, variants: dict[str, dict[str, object]]
) -> dict[str, float]:
    results: dict[str, list[float]] = {name: [] for name in variants}
    clients = {
        name: AsyncOctaveClient(api_key=api.api_key, base_url=api.base_url, engine="aimlapi", **kw)  # type: ignore[arg-type]
        for name, kw in variants.items()
    }
    for c in clients.values():
        await asyncio.gather(*(c.synthesize(TEXT) for _ in range(n)))
    order = list(clients.items())
    for _ in range(rounds):
        random.shuffle(order)
        for name, c in order:
            t = time.perf_counter()
            await asyncio.gather(*(c.synthesize(TEXT) for _ in range(n)))
            results[name].append(n / (time.perf_counter() - t))
    for c in clients.values():
        await c.aclose()
    return {name: statistics.median(v) for name, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    data = tempfile.mkdtemp(prefix="octave-bench-")
    variants: dict[str, dict[str, object]] = {
        "ledger off": {"ledger": False},
        "ledger on": {"data_dir": data},
        "ledger + daily budget": {"data_dir": data, "max_credits_per_day": 1e15},
    }
    with FakeAIMLAPI() as api:
        med = sync_medians(api, args.calls, variants)
        base = med["ledger off"]
        print("sync, median per call")
        for name, value in med.items():
            print(f"  {name:<24} {value * 1e3:7.3f} ms   ratio {value / base:.3f}")
        thr = asyncio.run(async_throughput(api, args.concurrent, args.rounds, variants))
        base = thr["ledger off"]
        print(f"async, {args.concurrent} concurrent calls")
        for name, value in thr.items():
            print(f"  {name:<24} {value:7.0f} calls/s   ratio {value / base:.3f}")


if __name__ == "__main__":
    main()
