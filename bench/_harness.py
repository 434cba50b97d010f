"""Shared bench helpers: the request OctaveClient sends, interleaved timing, temp data dirs."""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

TEXT = "The quick brown fox jumps over the lazy dog."


def octave_request(
    api_key: str, base_url: str, text: str = TEXT
) -> tuple[str, dict[str, str], bytes]:
    """URL, headers and body exactly as OctaveClient sends them, for a bare-httpx baseline.

    The one place that couples the benches to ``octave_tools._protocol``: adapt it here if
    ``prepare`` changes.
    """
    from octave_tools._protocol import prepare
    from octave_tools._settings import Settings

    settings = Settings.load(api_key=api_key, base_url=base_url, environ={})
    call = prepare(settings, text, None, None)
    return call.url, dict(call.headers), call.body


def use_temp_data_dir() -> str:
    """Point the ledger and cache at a fresh temp folder (never the user's)."""
    path = tempfile.mkdtemp(prefix="octave-bench-")
    os.environ["OCTAVE_TOOLS_DATA_DIR"] = path
    return path


def shuffled(variants: dict[str, Any], rounds: int, seed: int = 15) -> list[list[tuple[str, Any]]]:
    """``rounds`` orderings of the variants, each shuffled, so drift hits all alike."""
    rng = random.Random(seed)
    out = []
    for _ in range(rounds):
        items = list(variants.items())
        rng.shuffle(items)
        out.append(items)
    return out


def interleave(
    variants: dict[str, Callable[[], Any]], calls: int, warmup: int = 30
) -> dict[str, list[float]]:
    """Per-call seconds of each variant, calls interleaved in a shuffled order each round."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    perf = time.perf_counter
    for order in shuffled(variants, calls):
        for name, fn in order:
            t = perf()
            fn()
            times[name].append(perf() - t)
    return times


async def ainterleave(
    variants: dict[str, Callable[[], Awaitable[Any]]], calls: int, warmup: int = 30
) -> dict[str, list[float]]:
    """``interleave`` for coroutine functions."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(warmup):
        for fn in variants.values():
            await fn()
    perf = time.perf_counter
    for order in shuffled(variants, calls):
        for name, fn in order:
            t = perf()
            await fn()
            times[name].append(perf() - t)
    return times


def med(values: list[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"
