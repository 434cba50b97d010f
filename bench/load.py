"""Load with faults: the streamable-HTTP MCP server under many sessions and a flaky API.

Starts the fake AIML API (in this process) and ``python -m octave_tools.mcp --transport
http`` (a subprocess) on 127.0.0.1, then has ``--sessions`` concurrent MCP client
sessions make ``--calls`` ``text_to_speech`` calls in total, each with a unique text,
while the fake API answers about ``--fault-rate`` of its requests with a fault: 429 with
``Retry-After: 1``, 503, a dropped connection, or an answer slower than the server's
timeout. A probe session calls ``list_voices`` every 50 ms throughout.

Checks, printed as a table with the figures:
- every call ends within the server's timeout plus ``--margin``, in either a result
  whose URL the fake API issued for exactly that call's text, or a clean tool error
  (an actionable message, no traceback, no key); none lost, duplicated or crossed;
- ``list_voices`` never fails (p50/p99 latency reported);
- the server logs no unhandled exception and never the API key;
- upstream connections stay within the client's pool limit, and the idle pool after
  the run within its keep-alive limit;
- the server's RSS after the run is within ``--max-rss-growth-mb`` of its RSS after a
  warm-up phase (the same sessions and faults, ``--warmup`` calls);
- the ledger (on, in a temp folder) counts exactly the calls that returned a result.

    python bench/load.py [--sessions 50] [--calls 2000] [--fault-rate 0.10] [--seed 1]
                         [--timeout 3] [--warmup 300] [--json]

Exit status 0 when every check passes, 1 otherwise. ``tests/test_load.py`` runs a short
version of the same harness.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from octave_tools.client import MAX_CONNECTIONS
from octave_tools.testing import FakeAIMLAPI, Fault

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import TOOL_ERROR, ServerProcess, subprocess_env, texts_of

KEEPALIVE_CONNECTIONS = 16  # octave_tools.client keeps at most this many idle
# How each clean tool error starts or reads, by the fault that caused it.
ERROR_KINDS = {
    "rate limit (429)": "The API rate limit was hit (429",
    "server error (5xx)": "The API failed (503",
    "timeout": "The call did not finish within its",
    "connection": "Could not reach the API at",
}
LOG_ALARMS = re.compile(r"Traceback|Unhandled|Exception in|Task exception|\bERROR\b|CRITICAL")
PROBE_INTERVAL = 0.05
# Phrases mixed into each text so that texts differ in length and script, not just a number.
PHRASES = [
    "the quick brown fox",
    "jumps over the lazy dog",
    "Grüße aus Köln",
    "¿qué tal?",
    "日本語のテキスト",
    "emoji 🎙️ and symbols <&>",
    'quotes "double" and \\ backslash',
]


# ---------------------------------------------------------------- the fake, counting faults


class CountingFakeAPI(FakeAIMLAPI):
    """The fake AIML API, counting which fault (if any) each /tts request got."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fault_counts: Counter[str] = Counter()
        self._count_lock = threading.Lock()

    def _next_fault(self) -> Fault:
        fault = super()._next_fault()
        if fault.kind == "status":
            name = str(fault.status)
        elif fault.kind == "drop":
            name = "drop"
        else:
            name = "slow" if fault.delay else "none"
        with self._count_lock:
            self.fault_counts[name] += 1
        return fault


def fault_mix(timeout: float) -> list[Fault]:
    """The injected faults, in equal shares."""
    body = json.dumps({"message": "Service Unavailable", "statusCode": 503}).encode()
    limited = json.dumps({"message": "Too Many Requests", "statusCode": 429}).encode()
    return [
        Fault("status", 429, limited, headers={"Retry-After": "1"}),
        Fault("status", 503, body),
        Fault("drop"),
        Fault("ok", delay=timeout + 1.0),  # slower than the server waits
    ]


# ---------------------------------------------------------------- the server subprocess


def server_env(api: FakeAIMLAPI, timeout: float, data_dir: Path, out_dir: Path) -> dict[str, str]:
    """This environment (the network guard under pytest) minus any real settings, plus ours."""
    return subprocess_env(
        api,
        OCTAVE_TOOLS_TIMEOUT=f"{timeout:g}",
        OCTAVE_TOOLS_DATA_DIR=str(data_dir),  # the ledger stays on, in a temp folder
        OCTAVE_TOOLS_OUTPUT_DIR=str(out_dir),
        PYTHONUNBUFFERED="1",
    )


def upstream_connections(pid: int, port: int) -> int:
    """TCP sockets process ``pid`` holds open to ``port`` on loopback (the fake API).

    Read from /proc: the process's socket descriptors matched with the kernel's TCP
    table. Sockets already closed (TIME_WAIT) are not held and not counted; the fake's
    own count also holds sockets the server closed while a slow answer is pending.
    """
    try:
        held = {
            link.removeprefix("socket:[").removesuffix("]")
            for link in (os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir())
            if link.startswith("socket:[")
        }
    except OSError:  # the process is gone, or a descriptor closed while listing
        return 0
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            remote, inode = fields[2], fields[9]
            if inode in held and int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


# ---------------------------------------------------------------- the clients


@dataclass
class CallRecord:
    """How one text_to_speech call ended."""

    session: int
    index: int
    text: str
    outcome: str  # "ok", "tool_error" or "lost"
    seconds: float
    url: str | None = None
    message: str = ""


def text_for(session: int, index: int) -> str:
    phrase = PHRASES[(session * 7 + index) % len(PHRASES)]
    return f"Session {session} call {index}: {phrase}{'.' * (index % 5)}"


async def one_session(
    url: str, session: int, calls: int, guard: float, records: list[CallRecord]
) -> None:
    """One MCP client session making ``calls`` text_to_speech calls in a row."""
    try:
        async with Client(url) as client:
            for index in range(calls):
                text = text_for(session, index)
                started = time.monotonic()
                try:
                    with anyio.fail_after(guard):
                        result = await client.call_tool("text_to_speech", {"text": text})
                except Exception as exc:  # a lost call: it must show in the report
                    records.append(
                        CallRecord(
                            session,
                            index,
                            text,
                            "lost",
                            time.monotonic() - started,
                            None,
                            repr(exc),
                        )
                    )
                    continue
                seconds = time.monotonic() - started
                structured = result.structured_content or {}
                if result.is_error:
                    records.append(
                        CallRecord(
                            session, index, text, "tool_error", seconds, None, texts_of(result)
                        )
                    )
                else:
                    audio_url = structured.get("audio_url")
                    records.append(
                        CallRecord(
                            session,
                            index,
                            text,
                            "ok",
                            seconds,
                            audio_url if isinstance(audio_url, str) else None,
                            texts_of(result),
                        )
                    )
    except Exception as exc:  # the session itself failed: its remaining calls are lost
        done = {r.index for r in records if r.session == session}
        for index in range(calls):
            if index not in done:
                text = text_for(session, index)
                records.append(CallRecord(session, index, text, "lost", 0.0, None, repr(exc)))


@dataclass
class Probe:
    """list_voices latencies and upstream connection samples taken during a phase."""

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    max_upstream: int = 0


async def probe(url: str, upstream: tuple[int, int], stop: asyncio.Event, into: Probe) -> None:
    async with Client(url) as client:
        while not stop.is_set():
            into.max_upstream = max(into.max_upstream, upstream_connections(*upstream))
            started = time.monotonic()
            try:
                with anyio.fail_after(30):
                    result = await client.call_tool("list_voices", {})
            except Exception as exc:
                into.failures.append(repr(exc))
            else:
                into.latencies.append(time.monotonic() - started)
                if result.is_error or not (result.structured_content or {}).get("voices"):
                    into.failures.append(texts_of(result)[:200])
            with anyio.move_on_after(PROBE_INTERVAL):
                await stop.wait()


async def phase(
    url: str, sessions: int, calls: int, guard: float, upstream: tuple[int, int], offset: int
) -> tuple[list[CallRecord], Probe, float]:
    """``sessions`` concurrent sessions sharing ``calls`` calls, with the probe running."""
    records: list[CallRecord] = []
    found = Probe()
    stop = asyncio.Event()
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(probe, url, upstream, stop, found)
        async with anyio.create_task_group() as clients:
            for s in range(sessions):
                share = calls // sessions + (1 if s < calls % sessions else 0)
                if share:
                    clients.start_soon(one_session, url, offset + s, share, guard, records)
        stop.set()
    return records, found, time.monotonic() - started


async def ledger_calls(url: str) -> int:
    """How many calls the server's ledger recorded in the last hour (via the usage tool)."""
    async with Client(url) as client:
        result = await client.call_tool("usage", {"since": "1h"})
    return int((result.structured_content or {}).get("total_calls", -1))


# ---------------------------------------------------------------- the report


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


@dataclass
class Report:
    sessions: int
    calls: int
    fault_rate: float
    seed: int
    timeout: float
    margin: float
    warmup_calls: int
    wall_seconds: float
    upstream_requests: int
    faults: dict[str, int]
    ok: int
    tool_errors: dict[str, int]
    unclean_errors: list[str]
    lost: list[str]
    duplicated: int
    crossed: int
    late: int
    call_p50: float
    call_p99: float
    call_max: float
    probes: int
    probe_failures: list[str]
    probe_p50: float
    probe_p99: float
    probe_max: float
    max_upstream_kernel: int
    max_upstream_fake: int
    upstream_after: int
    rss_warm_mb: float
    rss_after_mb: float
    log_alarms: list[str]
    key_leaks: int
    ledger_calls: int
    ledger_expected: int

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_after_mb - self.rss_warm_mb

    def checks(self, max_rss_growth_mb: float = 20.0) -> dict[str, bool]:
        """Each promise of the harness, and whether this run kept it."""
        return {
            "every call ended: result or clean tool error": not self.lost
            and not self.unclean_errors
            and self.ok + sum(self.tool_errors.values()) == self.calls,
            "no URL returned twice": self.duplicated == 0,
            "every URL issued for that call's own text": self.crossed == 0,
            f"every call within timeout + {self.margin:g} s": self.late == 0,
            "list_voices answered throughout": self.probes > 0 and not self.probe_failures,
            "no unhandled exception in the server log": not self.log_alarms,
            "the key never in results or logs": self.key_leaks == 0,
            f"upstream connections <= {MAX_CONNECTIONS}": max(
                self.max_upstream_kernel, self.max_upstream_fake
            )
            <= MAX_CONNECTIONS,
            f"idle upstream connections after <= {KEEPALIVE_CONNECTIONS}": self.upstream_after
            <= KEEPALIVE_CONNECTIONS,
            f"RSS growth after warm-up <= {max_rss_growth_mb:g} MB": self.rss_growth_mb
            <= max_rss_growth_mb,
            "ledger counts exactly the successful calls": self.ledger_calls == self.ledger_expected,
        }

    def table(self, max_rss_growth_mb: float = 20.0) -> str:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.tool_errors.items())) or "none"
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()) if k != "none")
        rows = [
            ("sessions x calls", f"{self.sessions} sessions, {self.calls} calls"),
            ("faults injected", f"{faults} (rate {self.fault_rate:.0%}, seed {self.seed})"),
            ("upstream requests", f"{self.upstream_requests} (retries included)"),
            ("server timeout", f"{self.timeout:g} s per call, retries included"),
            (
                "wall time",
                f"{self.wall_seconds:.1f} s ({self.calls / self.wall_seconds:.0f} calls/s)",
            ),
            ("results (URL issued for that text)", str(self.ok)),
            ("clean tool errors", f"{sum(self.tool_errors.values())}: {errors}"),
            ("unclean tool errors", str(len(self.unclean_errors))),
            (
                "lost / duplicated / crossed",
                f"{len(self.lost)} / {self.duplicated} / {self.crossed}",
            ),
            (
                "call latency p50 / p99 / max",
                f"{self.call_p50 * 1000:.0f} / {self.call_p99 * 1000:.0f} / "
                f"{self.call_max * 1000:.0f} ms",
            ),
            (f"calls over timeout + {self.margin:g} s", str(self.late)),
            (
                "list_voices p50 / p99 / max",
                f"{self.probe_p50 * 1000:.1f} / {self.probe_p99 * 1000:.1f} / "
                f"{self.probe_max * 1000:.1f} ms ({self.probes} probes, "
                f"{len(self.probe_failures)} failed)",
            ),
            (
                "upstream connections, max",
                f"{self.max_upstream_kernel} held by the server, "
                f"{self.max_upstream_fake} seen by the fake API; limit {MAX_CONNECTIONS}",
            ),
            (
                "upstream connections idle after",
                f"{self.upstream_after} (limit {KEEPALIVE_CONNECTIONS})",
            ),
            (
                "server RSS warm-up -> after",
                f"{self.rss_warm_mb:.1f} -> {self.rss_after_mb:.1f} MB "
                f"({self.rss_growth_mb:+.1f} MB; {self.warmup_calls} warm-up calls)",
            ),
            ("server log alarms / key leaks", f"{len(self.log_alarms)} / {self.key_leaks}"),
            ("ledger calls / results", f"{self.ledger_calls} / {self.ledger_expected}"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"| {'figure':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
        lines += [f"| {name:<{width}} | {value} |" for name, value in rows]
        lines.append("")
        lines += [
            f"- [{'x' if passed else ' '}] {name}"
            for name, passed in self.checks(max_rss_growth_mb).items()
        ]
        return "\n".join(lines)


def judge(
    records: list[CallRecord], issued: dict[str, str], timeout: float, margin: float, key: str
) -> dict[str, Any]:
    """Lost, duplicated, crossed, late and unclean calls among ``records``."""
    urls = Counter(r.url for r in records if r.outcome == "ok")
    kinds: Counter[str] = Counter()
    unclean: list[str] = []
    for r in records:
        if r.outcome != "tool_error":
            continue
        detail = r.message.removeprefix(TOOL_ERROR)
        kind = next((k for k, start in ERROR_KINDS.items() if detail.startswith(start)), None)
        if kind is None or "Traceback" in r.message or not r.message.startswith(TOOL_ERROR):
            unclean.append(r.message[:300])
        else:
            kinds[kind] += 1
    return {
        "ok": sum(1 for r in records if r.outcome == "ok"),
        "tool_errors": dict(kinds),
        "unclean_errors": unclean,
        "lost": [
            f"session {r.session} call {r.index}: {r.message[:200]}"
            for r in records
            if r.outcome == "lost"
        ],
        "duplicated": sum(n - 1 for url, n in urls.items() if url is not None and n > 1),
        "crossed": sum(
            1
            for r in records
            if r.outcome == "ok" and (r.url is None or issued.get(r.url) != r.text)
        ),
        "late": sum(1 for r in records if r.seconds > timeout + margin),
        "key_leaks": sum(1 for r in records if key in r.message or key in (r.url or "")),
    }


async def run_load(
    *,
    sessions: int = 50,
    calls: int = 2000,
    fault_rate: float = 0.10,
    seed: int = 1,
    server_timeout: float = 3.0,
    margin: float = 2.0,
    warmup: int = 300,
) -> Report:
    """Run the whole harness and return its figures (everything is shut down after)."""
    timeout = server_timeout
    key = f"sk-load-{secrets.token_hex(12)}"  # planted: it must never come back out
    guard = timeout + margin + 30  # a call still running then is counted lost
    with tempfile.TemporaryDirectory(prefix="octave-load-") as tmp:
        api = CountingFakeAPI(api_key=key).start()
        server: ServerProcess | None = None
        try:
            env = server_env(api, timeout, Path(tmp) / "data", Path(tmp) / "audio")
            server = ServerProcess(["--transport", "http", "--port", "0"], env)
            url = server.url(30.0)
            api.random_faults(fault_rate, fault_mix(timeout), seed=seed)
            upstream = (server.proc.pid, api.port)
            warm, _, _ = await phase(url, sessions, warmup, guard, upstream, offset=100_000)
            await asyncio.sleep(timeout + 1.5)  # slow answers still pending upstream finish
            rss_warm = server.rss_mb()
            api.fault_counts.clear()
            api.max_open_connections = api.open_connections
            records, probed, wall = await phase(url, sessions, calls, guard, upstream, offset=0)
            await asyncio.sleep(timeout + 1.5)
            rss_after = server.rss_mb()
            upstream_after = upstream_connections(*upstream)
            ledger = await ledger_calls(url)
            issued = dict(api.issued)
        finally:
            if server is not None:
                server.stop()
            api.stop()
        log = server.stderr
    judged = judge(records, issued, timeout, margin, key)
    durations = [r.seconds for r in records if r.outcome != "lost"]
    warm_ok = sum(1 for r in warm if r.outcome == "ok")
    return Report(
        sessions=sessions,
        calls=calls,
        fault_rate=fault_rate,
        seed=seed,
        timeout=timeout,
        margin=margin,
        warmup_calls=warmup,
        wall_seconds=wall,
        upstream_requests=sum(api.fault_counts.values()),
        faults=dict(api.fault_counts),
        call_p50=percentile(durations, 0.50),
        call_p99=percentile(durations, 0.99),
        call_max=max(durations, default=float("nan")),
        probes=len(probed.latencies),
        probe_failures=probed.failures,
        probe_p50=percentile(probed.latencies, 0.50),
        probe_p99=percentile(probed.latencies, 0.99),
        probe_max=max(probed.latencies, default=float("nan")),
        max_upstream_kernel=probed.max_upstream,
        max_upstream_fake=api.max_open_connections,
        upstream_after=upstream_after,
        rss_warm_mb=rss_warm,
        rss_after_mb=rss_after,
        log_alarms=[line.rstrip() for line in log.splitlines() if LOG_ALARMS.search(line)],
        ledger_calls=ledger,
        ledger_expected=warm_ok + judged["ok"],
        **{k: v for k, v in judged.items() if k != "key_leaks"},
        key_leaks=judged["key_leaks"] + log.count(key),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--fault-rate", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3.0, help="the server's call timeout")
    parser.add_argument("--margin", type=float, default=2.0, help="allowed beyond the timeout")
    parser.add_argument("--warmup", type=int, default=300, help="calls before the RSS baseline")
    parser.add_argument("--max-rss-growth-mb", type=float, default=20.0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    report = asyncio.run(
        run_load(
            sessions=args.sessions,
            calls=args.calls,
            fault_rate=args.fault_rate,
            seed=args.seed,
            server_timeout=args.timeout,
            margin=args.margin,
            warmup=args.warmup,
        )
    )
    checks = report.checks(args.max_rss_growth_mb)
    if args.json:
        print(json.dumps({**asdict(report), "checks": checks}, indent=2, ensure_ascii=False))
    else:
        print(report.table(args.max_rss_growth_mb))
        for line in (report.lost + report.unclean_errors + report.log_alarms)[:10]:
            print("  !", line)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
