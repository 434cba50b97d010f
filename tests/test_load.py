"""A short run of bench/load.py: the HTTP MCP server under concurrent sessions and faults.

The full run (50 sessions, 2,000 calls) is ``python bench/load.py``; its figures are in
docs/reliability.md. This one keeps every promise of it at a tenth of the size.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _load_bench() -> ModuleType:
    path = Path(__file__).parent.parent / "bench" / "load.py"
    spec = importlib.util.spec_from_file_location("octave_bench_load", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


load = _load_bench()


@pytest.fixture(scope="module")
def report() -> Any:
    return asyncio.run(
        load.run_load(
            sessions=10, calls=200, fault_rate=0.10, seed=7, server_timeout=2.0, warmup=60
        )
    )


def test_faults_were_really_injected(report: Any) -> None:
    faults = {k: v for k, v in report.faults.items() if k != "none"}
    assert sum(faults.values()) >= 10
    assert report.upstream_requests > report.calls


def test_every_call_ends_in_its_own_result_or_a_clean_tool_error(report: Any) -> None:
    r = report
    assert r.lost == []
    assert r.unclean_errors == []
    assert r.ok + sum(r.tool_errors.values()) == r.calls
    assert r.ok > r.calls // 2
    assert (r.duplicated, r.crossed) == (0, 0)


def test_every_call_ends_within_the_server_timeout(report: Any) -> None:
    assert report.late == 0
    assert report.call_max <= report.timeout + report.margin


def test_list_voices_answers_throughout(report: Any) -> None:
    assert report.probes > 10
    assert report.probe_failures == []


def test_the_server_logs_no_unhandled_exception_and_never_the_key(report: Any) -> None:
    assert report.log_alarms == []
    assert report.key_leaks == 0


def test_upstream_connections_and_memory_stay_bounded(report: Any) -> None:
    checks = report.checks()
    bounded = {k: v for k, v in checks.items() if "connections" in k or "RSS" in k}
    assert len(bounded) == 3
    assert all(bounded.values()), report.table()


def test_the_ledger_counts_exactly_the_calls_that_returned_a_result(report: Any) -> None:
    assert report.ledger_calls == report.ledger_expected


def test_every_check_of_the_bench_passes(report: Any) -> None:
    failed = [name for name, ok in report.checks().items() if not ok]
    assert failed == [], report.table()
