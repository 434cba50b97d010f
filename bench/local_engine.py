"""The offline local engine: time to first audio (cold and warm) and memory.

Time to first audio is from the call to ``synthesize`` until it returns, i.e. until
the WAV file is complete on disk. Measured in the same run, against baselines:

- cold: a new Python process per run. ``import`` is timed apart; time to first audio
  is ``OctaveClient()`` plus the first call, which loads the library, lists its voices
  and synthesises. The whole process (spawn to exit) is compared with one that only
  imports octave_tools.
- warm: median of many calls in one process, against the bare library render of the
  same text (no validation, WAV encoding or file write), so the ratio is our overhead;
  and the real-time factor (seconds of audio per second of work).
- memory: peak RSS of the cold process against the import-only one, and RSS growth
  over the warm calls (a leak would show here).

    python bench/local_engine.py [--runs 10] [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

TEXT = "The quick brown fox jumps over the lazy dog."

_CHILD_IMPORT_ONLY = """
import json, resource, time
t0 = time.perf_counter()
import octave_tools
t1 = time.perf_counter()
print(json.dumps({"import_ms": (t1 - t0) * 1e3,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

_CHILD_COLD = """
import json, resource, sys, time
t0 = time.perf_counter()
from octave_tools import OctaveClient
t1 = time.perf_counter()
client = OctaveClient(engine="local")
t2 = time.perf_counter()
speech = client.synthesize(sys.argv[1])
t3 = time.perf_counter()
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "client_ms": (t2 - t1) * 1e3,
                  "first_call_ms": (t3 - t2) * 1e3, "first_audio_ms": (t3 - t1) * 1e3,
                  "url": speech.audio_url,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(code: str, *args: str, env: dict[str, str]) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True
    )
    wall = (time.perf_counter() - start) * 1e3
    return json.loads(done.stdout), wall


def cold(runs: int, out_dir: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIMLAPI_", "OCTAVE_TOOLS_"))}
    env["OCTAVE_TOOLS_OUTPUT_DIR"] = out_dir
    env["OCTAVE_TOOLS_DATA_DIR"] = os.environ["OCTAVE_TOOLS_DATA_DIR"]
    base_wall: list[float] = []
    base_rss: list[float] = []
    import_ms: list[float] = []
    client_ms: list[float] = []
    first_call: list[float] = []
    first: list[float] = []
    wall: list[float] = []
    rss: list[float] = []
    for _ in range(runs):  # interleaved, so drift hits both alike
        data, w = _child(_CHILD_IMPORT_ONLY, env=env)
        base_wall.append(w)
        base_rss.append(data["peak_rss_mb"])
        data, w = _child(_CHILD_COLD, TEXT, env=env)
        import_ms.append(data["import_ms"])
        client_ms.append(data["client_ms"])
        first_call.append(data["first_call_ms"])
        first.append(data["first_audio_ms"])
        wall.append(w)
        rss.append(data["peak_rss_mb"])
    return {
        "import_only_process_ms": statistics.median(base_wall),
        "import_ms": statistics.median(import_ms),
        "client_ms": statistics.median(client_ms),
        "first_call_ms": statistics.median(first_call),
        "first_audio_ms": statistics.median(first),
        "first_audio_max_ms": max(first),
        "process_ms": statistics.median(wall),
        "import_only_peak_rss_mb": statistics.median(base_rss),
        "peak_rss_mb": statistics.median(rss),
    }


def _rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def warm(calls: int) -> dict[str, float]:
    from octave_tools import AsyncOctaveClient, OctaveClient, _local

    client = OctaveClient(engine="local")
    speech = client.synthesize(TEXT)
    with wave.open(str(Path(speech.audio_url.removeprefix("file://"))), "rb") as w:
        audio_s = w.getnframes() / w.getframerate()
    voices = _local._loaded_voices()
    library_voice = voices.identifiers[voices.catalogue.default]
    for _ in range(10):
        client.synthesize(TEXT)
    rss_before = _rss_mb()

    ours: list[float] = []
    bare: list[float] = []
    for _ in range(calls):  # interleaved
        t = time.perf_counter()
        with _local._LOCK:
            _local._load().render(TEXT, library_voice)
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        client.synthesize(TEXT)
        ours.append(time.perf_counter() - t)
    rss_after = _rss_mb()

    async def async_calls() -> list[float]:
        times = []
        async with AsyncOctaveClient(engine="local") as c:
            await c.synthesize(TEXT)
            for _ in range(calls):
                t = time.perf_counter()
                await c.synthesize(TEXT)
                times.append(time.perf_counter() - t)
        return times

    async_times = asyncio.run(async_calls())
    return {
        "audio_s": audio_s,
        "bare_render_ms": statistics.median(bare) * 1e3,
        "sync_ms": statistics.median(ours) * 1e3,
        "async_ms": statistics.median(async_times) * 1e3,
        "overhead_ratio": statistics.median(ours) / statistics.median(bare),
        "realtime_factor": audio_s / statistics.median(ours),
        "rss_growth_mb": rss_after - rss_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="cold processes (default 10)")
    parser.add_argument("--calls", type=int, default=200, help="warm calls (default 200)")
    args = parser.parse_args()
    # The ledger stays on, as by default, but in a temp folder rather than the user's.
    os.environ["OCTAVE_TOOLS_DATA_DIR"] = tempfile.mkdtemp(prefix="octave-bench-")
    with tempfile.TemporaryDirectory(prefix="octave-bench-") as out_dir:
        os.environ["OCTAVE_TOOLS_OUTPUT_DIR"] = out_dir
        c = cold(args.runs, out_dir)
        w = warm(args.calls)
    print(f"text: {TEXT!r} -> {w['audio_s']:.2f} s of audio")
    print(f"cold, new process (median of {args.runs}):")
    print(f"  import octave_tools            {c['import_ms']:7.1f} ms")
    print(
        f"  time to first audio            {c['first_audio_ms']:7.1f} ms"
        f"  (max {c['first_audio_max_ms']:.1f}), of which:"
    )
    print(f"    OctaveClient()  (httpx pool)   {c['client_ms']:7.1f} ms")
    print(f"    first synthesize (load+speak)  {c['first_call_ms']:7.1f} ms")
    print(
        f"  whole process                  {c['process_ms']:7.1f} ms"
        f"  vs {c['import_only_process_ms']:.1f} ms importing only"
        f"  (+{c['process_ms'] - c['import_only_process_ms']:.1f} ms)"
    )
    print(
        f"  peak RSS                       {c['peak_rss_mb']:7.1f} MB"
        f"  vs {c['import_only_peak_rss_mb']:.1f} MB importing only"
        f"  (+{c['peak_rss_mb'] - c['import_only_peak_rss_mb']:.1f} MB)"
    )
    print(f"warm, one process (median of {args.calls}):")
    print(f"  bare library render            {w['bare_render_ms']:7.2f} ms")
    print(
        f"  OctaveClient.synthesize        {w['sync_ms']:7.2f} ms"
        f"  ({w['overhead_ratio']:.2f}x bare: validation, WAV, atomic write + fsync)"
    )
    print(f"  AsyncOctaveClient.synthesize   {w['async_ms']:7.2f} ms")
    print(f"  real-time factor               {w['realtime_factor']:7.0f}x")
    print(f"  RSS growth over {args.calls} calls     {w['rss_growth_mb']:7.2f} MB")


if __name__ == "__main__":
    main()
