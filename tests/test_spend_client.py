"""Spend control through the clients and the CLI, counted against the fake API."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from harness import cli_process, subprocess_env

from octave_tools import AsyncOctaveClient, BudgetExceededError, OctaveClient
from octave_tools._spend import Spend
from octave_tools.cli import run
from octave_tools.testing import FakeAIMLAPI, Fault


def client(api: FakeAIMLAPI, **kw: object) -> OctaveClient:
    return OctaveClient(api_key=api.api_key, base_url=api.base_url, engine="aimlapi", **kw)  # type: ignore[arg-type]


def aclient(api: FakeAIMLAPI, **kw: object) -> AsyncOctaveClient:
    return AsyncOctaveClient(api_key=api.api_key, base_url=api.base_url, engine="aimlapi", **kw)  # type: ignore[arg-type]


def ledger_rows(data_dir: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(data_dir / "ledger.sqlite3")
    return db.execute(
        "SELECT model, voice, characters, credits, cached FROM calls ORDER BY id"
    ).fetchall()


def test_every_call_is_in_the_ledger_and_the_usage_report(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    with client(fake_aimlapi, data_dir=str(tmp_path)) as c:
        c.synthesize("Hello", voice="Ava Song")
        c.synthesize("Hello", voice="Ava Song")
        c.synthesize("Other words")
        report = c.usage(by="voice")
    assert len(fake_aimlapi.tts_requests) == 3
    assert [(g.key, g.calls, g.credits) for g in report.groups] == [
        ("Vince Douglas", 1, 1375.0),
        ("Ava Song", 2, 1250.0),
    ]
    assert report.total_credits == 2625
    c._spend.store.flush()  # type: ignore[union-attr]
    assert ledger_rows(tmp_path) == [
        ("hume/octave-2", "Ava Song", 5, 625.0, 0),
        ("hume/octave-2", "Ava Song", 5, 625.0, 0),
        ("hume/octave-2", "Vince Douglas", 11, 1375.0, 0),
    ]


def test_ledger_off_writes_nothing(fake_aimlapi: FakeAIMLAPI, tmp_path: Path) -> None:
    with client(fake_aimlapi, data_dir=str(tmp_path), ledger=False) as c:
        c.synthesize("Hello")
        assert c.usage().total_calls == 0
    assert not (tmp_path / "ledger.sqlite3").exists()


def test_cache_returns_the_earlier_result_for_free(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    with client(fake_aimlapi, data_dir=str(tmp_path), cache_ttl=60) as c:
        first = c.synthesize("Hello", voice="ava song")
        second = c.synthesize("Hello", voice="Ava Song")
        other = c.synthesize("Hello", voice="Ava Song", format="mp3")
    assert len(fake_aimlapi.tts_requests) == 2
    assert second.audio_url == first.audio_url
    assert (second.cached, second.credits_used) == (True, 0)
    assert (first.cached, other.cached) == (False, False)
    c._spend.store.flush()  # type: ignore[union-attr]
    assert [r[3:] for r in ledger_rows(tmp_path)] == [(625.0, 0), (0.0, 1), (625.0, 0)]


def test_cache_is_shared_between_clients_and_processes(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    with client(fake_aimlapi, data_dir=str(tmp_path), cache_ttl=60) as c:
        url = c.synthesize("Shared").audio_url
    with client(fake_aimlapi, data_dir=str(tmp_path), cache_ttl=60) as c2:
        assert c2.synthesize("Shared").audio_url == url
    assert len(fake_aimlapi.tts_requests) == 1


def test_cache_entries_expire_at_the_ttl(fake_aimlapi: FakeAIMLAPI, tmp_path: Path) -> None:
    now = [time.time()]
    with client(fake_aimlapi, data_dir=str(tmp_path), cache_ttl=10) as c:
        # The client's spend keeper, on a clock this test moves.
        c._spend = Spend(c.settings, client_limit=c.settings.max_credits, clock=lambda: now[0])
        c.synthesize("Tick")
        now[0] += 9.99
        assert c.synthesize("Tick").cached
        now[0] += 0.02  # 10.01 s after the first call
        assert not c.synthesize("Tick").cached
    assert len(fake_aimlapi.tts_requests) == 2


def test_concurrent_identical_async_calls_are_coalesced(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    fake_aimlapi.inject(Fault("ok", delay=0.3))

    async def go() -> list[object]:
        async with aclient(fake_aimlapi, data_dir=str(tmp_path), cache_ttl=60) as c:
            return await asyncio.gather(*(c.synthesize("Same words") for _ in range(10)))

    results = asyncio.run(go())
    assert len(fake_aimlapi.tts_requests) == 1
    assert len({r.audio_url for r in results}) == 1  # type: ignore[attr-defined]
    assert sum(not r.cached for r in results) == 1  # type: ignore[attr-defined]


def test_concurrent_identical_thread_calls_are_coalesced(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    fake_aimlapi.inject(Fault("ok", delay=0.3))
    results: list[object] = []
    with client(fake_aimlapi, data_dir=str(tmp_path), cache_ttl=60) as c:
        threads = [
            threading.Thread(target=lambda: results.append(c.synthesize("Same"))) for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(fake_aimlapi.tts_requests) == 1
    assert len(results) == 8


def test_a_failed_leader_fails_its_followers_without_a_second_charge(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    fake_aimlapi.inject(Fault("status", 400, b'{"message": "no"}', delay=0.3))

    async def go() -> list[object]:
        async with aclient(fake_aimlapi, data_dir=str(tmp_path), cache_ttl=60) as c:
            return await asyncio.gather(
                *(c.synthesize("Doomed") for _ in range(5)), return_exceptions=True
            )

    results = asyncio.run(go())
    assert len(fake_aimlapi.tts_requests) == 1
    assert all(type(r).__name__ == "BadRequestError" for r in results)


def test_budget_refuses_before_any_request(fake_aimlapi: FakeAIMLAPI, tmp_path: Path) -> None:
    with client(fake_aimlapi, data_dir=str(tmp_path), max_credits_per_day=2000) as c:
        c.synthesize("x" * 8)  # 1,000 credits
        c.synthesize("x" * 8)  # 2,000: exactly the budget
        with pytest.raises(BudgetExceededError) as info:
            c.synthesize("y")
    assert len(fake_aimlapi.tts_requests) == 2
    assert info.value.spent == 2000


async def test_async_budget_and_per_client_limit(fake_aimlapi: FakeAIMLAPI, tmp_path: Path) -> None:
    async with aclient(fake_aimlapi, data_dir=str(tmp_path), max_credits=1000) as c:
        await c.synthesize("x" * 8)
        with pytest.raises(
            BudgetExceededError, match="this client has spent 1,000 of its 1,000-credit limit"
        ):
            await c.synthesize("y")
    assert len(fake_aimlapi.tts_requests) == 1


def test_cli_loop_matches_fake_requests_and_ledger(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = subprocess_env(
        fake_aimlapi, OCTAVE_TOOLS_DATA_DIR=str(tmp_path), OCTAVE_TOOLS_CACHE_TTL="300"
    )
    for text in ("one", "two", "one", "one"):
        proc = cli_process("say", text, env=env, text=True)
        assert proc.returncode == 0, proc.stderr
    assert len(fake_aimlapi.tts_requests) == 2
    proc = cli_process("usage", "--json", env=env, text=True)
    import json

    report = json.loads(proc.stdout)
    assert report["total_calls"] == 4
    assert report["groups"][0]["cached_calls"] == 2
    assert report["total_credits"] == 2 * 3 * 125


def test_usage_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["usage", "--since", "soon"]) == 2
    assert "since must look like 7d" in capsys.readouterr().err


def test_a_cancelled_leader_does_not_cancel_the_callers_waiting_on_it(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    fake_aimlapi.inject(Fault("ok", delay=0.5))

    async def go() -> object:
        async with aclient(fake_aimlapi, data_dir=str(tmp_path), cache_ttl=60) as c:
            leader = asyncio.create_task(c.synthesize("Shared words"))
            await asyncio.sleep(0.1)
            follower = asyncio.create_task(c.synthesize("Shared words"))
            await asyncio.sleep(0.1)
            leader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leader
            return await follower

    speech = asyncio.run(go())
    assert speech.audio_url in fake_aimlapi.issued  # type: ignore[attr-defined]
    assert speech.cached is False  # type: ignore[attr-defined]
