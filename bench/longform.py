"""Long text: wall time against the floor, the joiner's throughput, memory against length.

Against the fake (``octave_tools.testing``) answering every request after a fixed
latency (250 ms), with joinable audio scaled to the text:

- wall: a 40,000-character English text on ``openai/tts-1`` (10 parts of <= 4,096),
  sync and async clients at ``max_concurrency`` 4, against the sequential sum (the same
  call at ``max_concurrency`` 1, and parts x latency) and against the floor,
  ``ceil(parts / max_concurrency) x latency``. Target: <= 1.3x the floor.
- joiner: ``join_files`` over 10 parts of that text's audio (WAV and MP3), MB/s written.
- memory: peak RSS (VmHWM) of a fresh process making one call of 10k, 40k and 160k
  characters. Target: growth from 10k to 160k <= 20 MB.

The fake runs in a process of its own, so its work and its copies of the audio are not
the client's.

Each call pays (the cache is off and ``part_ttl`` is 0), so no run reuses another's parts.

    python bench/longform.py [--runs 3] [--latency 0.25]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _harness import use_temp_data_dir

MODEL = "openai/tts-1"
PARAGRAPH = (
    "The river had been rising for three days, and the town watched it with the calm of "
    "people who had seen it before. Dr. Alvarez, who kept the records, said the water was "
    "two feet below the mark of 1998; the mayor, e.g. in her morning address, said less. "
    "Nobody moved the sandbags yet. By the evening, the boats were tied higher up the bank."
)


def english_text(chars: int, salt: str = "") -> str:
    """Prose of ``chars`` characters in paragraphs of 400 (10 to a part of openai/tts-1).

    ``salt`` makes each run's text its own, so no run reuses another's paid parts.
    """
    out: list[str] = []
    n = 0
    while 400 * n < chars:
        head = f"{salt}Chapter {n}. "
        out.append((head + PARAGRAPH)[:398].rstrip(" ,;") + ".")
        n += 1
    return "\n\n".join(p.ljust(398) for p in out)[: chars - 1].rstrip() + "."


class FakeProcess:
    """The fake in a process of its own: its CPU and memory are not the client's."""

    def __init__(self, latency: float) -> None:
        code = (
            "import sys, time\n"
            "from octave_tools.testing import FakeAIMLAPI\n"
            f"api = FakeAIMLAPI(latency={latency!r}).start()\n"
            "print(api.base_url, api.api_key, flush=True)\n"
            "sys.stdin.read()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.base_url, self.api_key = self.proc.stdout.readline().split()

    def __enter__(self) -> FakeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


def options(api: Any, **extra: Any) -> dict[str, Any]:
    return {
        "api_key": api.api_key,
        "base_url": api.base_url,
        "engine": "aimlapi",
        "model": MODEL,
        "part_ttl": 0,
        **extra,
    }


def wall_sync(api: Any, texts: list[str], concurrency: int, fmt: str | None) -> list[float]:
    """Seconds per call of ``texts`` on one client, warmed by a short call first."""
    from octave_tools import OctaveClient

    times = []
    with OctaveClient(**options(api, max_concurrency=concurrency, format=fmt)) as client:
        client.synthesize("Warm up the connections.")
        for text in texts:
            t = time.perf_counter()
            speech = client.synthesize(text)
            times.append(time.perf_counter() - t)
            assert speech.parts is not None
    return times


def wall_async(api: Any, texts: list[str], concurrency: int, fmt: str | None) -> list[float]:
    from octave_tools import AsyncOctaveClient

    async def go() -> list[float]:
        times = []
        opts = options(api, max_concurrency=concurrency, format=fmt)
        async with AsyncOctaveClient(**opts) as client:
            await client.synthesize("Warm up the connections.")
            for text in texts:
                t = time.perf_counter()
                speech = await client.synthesize(text)
                times.append(time.perf_counter() - t)
                assert speech.parts is not None
        return times

    return asyncio.run(go())


def joiner(parts: int, chars: int, fmt: str, rounds: int) -> dict[str, float]:
    from octave_tools._join import join_files
    from octave_tools.testing import make_audio

    folder = Path(tempfile.mkdtemp(prefix="octave-bench-join-"))
    paths = []
    for i in range(parts):
        path = folder / f"part-{i}.{fmt}"
        path.write_bytes(make_audio(fmt, chars // parts))
        paths.append(path)
    target = folder / f"joined.{fmt}"
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        joined = join_files(paths, fmt, target)
        times.append(time.perf_counter() - t)
    size = joined.bytes
    for path in [*paths, target]:
        path.unlink()
    folder.rmdir()
    best = min(times)
    return {"mb": size / 1e6, "seconds": best, "mb_per_s": size / 1e6 / best}


_CHILD = """
import json, resource, sys, time
from octave_tools import OctaveClient
sys.path.insert(0, sys.argv[2])
from longform import english_text
text = english_text(int(sys.argv[1]), salt="rss ")
client = OctaveClient(max_concurrency=4)
t = time.perf_counter()
speech = client.synthesize(text)
elapsed = time.perf_counter() - t
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec (the parent's high-water mark).
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
usage = resource.getrusage(resource.RUSAGE_SELF)
peak = int(hwm[0].split()[1]) / 1024 if hwm else usage.ru_maxrss / 1024
print(json.dumps({"chars": len(text), "parts": len(speech.parts or ()), "seconds": elapsed,
                  "peak_rss_mb": peak}))
"""


def peak_rss(api: Any, chars: int) -> dict[str, Any]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIMLAPI_", "OCTAVE_TOOLS_"))},
        "AIMLAPI_API_KEY": api.api_key,
        "AIMLAPI_BASE_URL": api.base_url,
        "OCTAVE_TOOLS_ENGINE": "aimlapi",
        "OCTAVE_TOOLS_MODEL": MODEL,
        "OCTAVE_TOOLS_PART_TTL": "0",
        "OCTAVE_TOOLS_DATA_DIR": tempfile.mkdtemp(prefix="octave-bench-rss-"),
        "OCTAVE_TOOLS_OUTPUT_DIR": tempfile.mkdtemp(prefix="octave-bench-rss-out-"),
    }
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(chars), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.25)
    args = parser.parse_args()
    use_temp_data_dir()
    os.environ["OCTAVE_TOOLS_OUTPUT_DIR"] = tempfile.mkdtemp(prefix="octave-bench-out-")

    from octave_tools._split import split_text

    concurrency = 4
    parts = len(split_text(english_text(40_000), 4096))
    floor = math.ceil(parts / concurrency) * args.latency
    with FakeProcess(args.latency) as api:
        print(f"40,000 characters on {MODEL}: {parts} parts, latency {args.latency * 1e3:.0f} ms")
        print(f"  floor ceil({parts}/{concurrency}) x latency: {floor:.3f} s")
        print(f"  sequential sum (parts x latency): {parts * args.latency:.3f} s")
        seq = statistics.median(
            wall_sync(api, [english_text(40_000, f"seq {r} ") for r in range(2)], 1, None)
        )
        print(f"  measured at max_concurrency 1 (mp3): {seq:.3f} s")
        for name, fn, fmt in (
            ("sync", wall_sync, None),
            ("async", wall_async, None),
            ("sync", wall_sync, "wav"),
        ):
            texts = [english_text(40_000, f"{name} {fmt} {r} ") for r in range(args.runs)]
            wall = statistics.median(fn(api, texts, concurrency, fmt))
            print(
                f"  {name:<5} {fmt or 'mp3'}: wall {wall:.3f} s (median of {args.runs}), "
                f"{wall / floor:.2f}x the floor (target <= 1.3x), {wall / seq:.2f}x sequential"
            )

        print("joiner (10 parts of a 40,000-character text's audio, best of 5):")
        for fmt in ("wav", "mp3"):
            j = joiner(10, 40_000, fmt, 5)
            print(
                f"  {fmt}: {j['mb']:.1f} MB in {j['seconds'] * 1e3:.1f} ms = "
                f"{j['mb_per_s']:.0f} MB/s"
            )

        print("peak RSS of a fresh process making one call:")
        rss = {}
        for chars in (10_000, 40_000, 160_000):
            r = peak_rss(api, chars)
            rss[chars] = r["peak_rss_mb"]
            print(
                f"  {chars:>7,} characters: {r['parts']:>3} parts, {r['seconds']:.2f} s, "
                f"peak RSS {r['peak_rss_mb']:.1f} MB"
            )
        growth = rss[160_000] - rss[10_000]
        print(f"  growth 10k -> 160k: {growth:+.1f} MB (target <= 20 MB)")


if __name__ == "__main__":
    main()
