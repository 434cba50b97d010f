"""Issue 22 items 1-3: the budget holds whatever the API says a call cost.

A call that reports no cost is charged its estimate (marked estimated, shown apart in
the usage report); a negative, non-finite or absurd figure is treated the same way and
never summed or shown; a model with no documented price is admitted one call at a time
until its rate is learned. On SQLite and on a real PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from _services import postgres_database, with_database

from octave_tools import BudgetExceededError, OctaveClient
from octave_tools._store import Probe, SQLiteStore
from octave_tools.cli import run
from octave_tools.testing import CREDITS_PER_CHAR, FakeAIMLAPI


@pytest.fixture(scope="module")
def pg_db() -> Iterator[str]:
    yield from postgres_database()


def fresh_schema(base: str) -> str:
    """A URL on ``base`` whose search_path is a new, empty schema."""
    import psycopg

    schema = f"t_{secrets.token_hex(5)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return with_database(base, urlsplit(base).path.lstrip("/"), search_path=schema)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'shared' / 'ledger.sqlite3'}"
    return fresh_schema(request.getfixturevalue("pg_db"))


def client(api: FakeAIMLAPI, tmp_path: Path, name: str = "c", **kw: Any) -> OctaveClient:
    return OctaveClient(
        api_key=api.api_key,
        base_url=api.base_url,
        engine="aimlapi",
        max_retries=0,
        data_dir=str(tmp_path / name),
        output_dir=str(tmp_path / name / "audio"),
        **kw,
    )


def calls_until_refused(c: OctaveClient, count: int, **kw: Any) -> int:
    """How many of ``count`` calls of "Hello" (5 characters) the budget admitted."""
    admitted = 0
    for _ in range(count):
        try:
            c.synthesize("Hello", **kw)
        except BudgetExceededError:
            continue
        admitted += 1
    return admitted


# ---------------------------------------------------------------- item 1


def test_a_call_that_reports_no_cost_is_charged_its_estimate(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, store_url: str
) -> None:
    # "Hello" is estimated at 5 x 125 = 625 credits: 1,000 has room for one call.
    fake_aimlapi.billing(report="none")
    with client(fake_aimlapi, tmp_path, store_url=store_url, max_credits_per_day=1000) as c:
        assert calls_until_refused(c, 6) == 1  # was 6 of 6, "0 credits"
        report = c.usage(by="model")
    assert len(fake_aimlapi.tts_requests) == 1
    (group,) = report.groups
    assert (group.calls, group.credits, group.billed_credits, group.estimated_credits) == (
        1,
        625.0,
        0.0,
        625.0,
    )
    assert (report.total_credits, report.total_estimated_credits) == (625.0, 625.0)
    assert report.total_billed_credits == 0.0


def test_max_credits_counts_a_call_without_a_cost_at_its_estimate(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    fake_aimlapi.billing(report="none")
    with client(fake_aimlapi, tmp_path, max_credits=1000) as c:
        assert calls_until_refused(c, 4) == 1
    with client(fake_aimlapi, tmp_path, "off", max_credits=1000, ledger=False) as c:
        assert calls_until_refused(c, 4) == 1  # no ledger: the client's own count holds
    assert len(fake_aimlapi.tts_requests) == 2


def test_the_usage_table_and_json_show_estimated_credits_apart(
    fake_aimlapi: FakeAIMLAPI,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with client(fake_aimlapi, tmp_path) as c:
        c.synthesize("Hello")  # billed 625
        fake_aimlapi.billing(report="none")
        c.synthesize("Hi there")  # 8 characters, estimated 1,000
        c._spend.store.flush()  # type: ignore[union-attr]
    monkeypatch.setenv("OCTAVE_TOOLS_DATA_DIR", str(tmp_path / "c"))
    assert run(["usage", "--by", "model", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["total_credits"], report["total_billed_credits"]) == (1625.0, 625.0)
    assert report["total_estimated_credits"] == 1000.0
    assert run(["usage", "--by", "model"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == ["model", "calls", "cached", "chars", "credits", "estimated", "usd"]
    assert table[2].split()[:6] == ["hume/octave-2", "2", "0", "13", "625", "1,000"]
    assert table[3].split()[:4] == ["total", "2", "625", "1,000"]
    assert "charged at our estimate" in table[4]


# ---------------------------------------------------------------- item 2


@pytest.mark.parametrize(
    "figure",
    [-1_000_000_000, -1, float("nan"), "1e999", 10**15, "9" * 400],
    ids=["negative", "minus-one", "nan", "inf", "absurd", "huge-string"],
)
def test_a_hostile_cost_figure_is_never_trusted(
    fake_aimlapi: FakeAIMLAPI,
    tmp_path: Path,
    store_url: str,
    figure: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_aimlapi.billing(report=figure)
    with (
        caplog.at_level(logging.WARNING, logger="octave_tools"),
        client(fake_aimlapi, tmp_path, store_url=store_url, max_credits_per_day=1000) as c,
    ):
        first = c.synthesize("Hello")
        with pytest.raises(BudgetExceededError):
            c.synthesize("Hello")  # was admitted: -1e9 "reset" the spend
        report = c.usage(by="model")
    assert first.credits_used is None
    assert "credits" not in first.summary() and "1000000000" not in first.summary()
    (group,) = report.groups
    assert (group.credits, group.estimated_credits, group.billed_credits) == (625.0, 625.0, 0.0)
    assert "1,000,000,000" not in report.table() and "e+" not in report.table()
    # A warning names the figure, bounded (never the raw 400 digits).
    warnings = [r.getMessage() for r in caplog.records if "not believed" in r.getMessage()]
    if isinstance(figure, (int, float)) and figure == figure:  # a finite number
        assert len(warnings) == 1 and len(warnings[0]) < 300
    assert all("9" * 20 not in w for w in warnings)


def test_a_large_but_believable_bill_is_charged_as_billed(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    # Eight times the estimate is a real bill (an undocumented price): it counts in full.
    fake_aimlapi.billing(credits_per_char=8 * CREDITS_PER_CHAR)
    with client(fake_aimlapi, tmp_path, max_credits_per_day=100_000) as c:
        speech = c.synthesize("Hello")
        report = c.usage(by="model")
    assert speech.credits_used == 5000
    assert (report.total_credits, report.total_estimated_credits) == (5000.0, 0.0)


def test_the_ledger_marks_estimated_rows(fake_aimlapi: FakeAIMLAPI, tmp_path: Path) -> None:
    fake_aimlapi.billing(report="none")
    with client(fake_aimlapi, tmp_path) as c:
        c.synthesize("Hello")
        c._spend.store.flush()  # type: ignore[union-attr]
    db = sqlite3.connect(tmp_path / "c" / "ledger.sqlite3")
    assert db.execute("SELECT credits, estimated FROM calls").fetchall() == [(625.0, 1)]


def test_concurrent_calls_without_a_cost_stay_within_the_budget(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, store_url: str
) -> None:
    fake_aimlapi.billing(report="none")
    fake_aimlapi.delay(0.1, times=20)
    budget = 3 * 625
    clients = [
        client(fake_aimlapi, tmp_path, f"r{i}", store_url=store_url, max_credits_per_day=budget)
        for i in range(2)
    ]
    start = threading.Barrier(8)
    admitted: list[int] = []

    def one(c: OctaveClient) -> None:
        start.wait()
        try:
            c.synthesize("Hello")
            admitted.append(1)
        except BudgetExceededError:
            pass

    if store_url.startswith("sqlite"):
        clients = clients[:1]  # a SQLite ledger is one machine's: one client holds its budget
    threads = [threading.Thread(target=one, args=(clients[i % len(clients)],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    assert len(admitted) == len(fake_aimlapi.tts_requests) == 3


# ---------------------------------------------------------------- item 3

DAY = 86_400.0
UNPRICED = "openai/tts-1"  # no documented price: estimated at 125 a character until learned


def burst(clients: list[OctaveClient], count: int, text: str = "Hello") -> list[str]:
    """``count`` calls at once, spread over ``clients``: "ok" or the refusal, each."""
    start = threading.Barrier(count)
    results: list[str] = []

    def one(c: OctaveClient) -> None:
        start.wait()
        try:
            c.synthesize(text, model=UNPRICED)
            results.append("ok")
        except BudgetExceededError as exc:
            results.append(str(exc))

    threads = [
        threading.Thread(target=one, args=(clients[i % len(clients)],)) for i in range(count)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_an_unpriced_model_billed_far_above_its_estimate_overshoots_by_one_call_at_most(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, store_url: str
) -> None:
    # Billed 1,000 a character, estimated 125: "Hello" holds 625 and costs 5,000.
    fake_aimlapi.billing(credits_per_char=8 * CREDITS_PER_CHAR)
    fake_aimlapi.delay(0.2, times=10)
    budget = 10 * 625
    shared = not store_url.startswith("sqlite")
    clients = [
        client(fake_aimlapi, tmp_path, f"r{i}", store_url=store_url, max_credits_per_day=budget)
        for i in range(3 if shared else 1)
    ]
    try:
        results = burst(clients, 10)
    finally:
        for c in clients:
            c.close()
    # Was: 10 of 10 admitted, 50,000 spent. Now the first call is the model's only one in
    # flight; once it is billed the rate is known and the next estimate (5,000) does not fit.
    assert results.count("ok") == 1
    assert fake_aimlapi.charged == [5000.0]
    assert sum(fake_aimlapi.charged) <= budget + (5000 - 625)  # the documented bound


def test_a_bill_far_above_a_learned_rate_re_estimates_on_every_replica(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, pg_db: str
) -> None:
    url = fresh_schema(pg_db)
    a = client(fake_aimlapi, tmp_path, "a", store_url=url, max_credits_per_day=20_000)
    b = client(fake_aimlapi, tmp_path, "b", store_url=url, max_credits_per_day=20_000)
    try:
        a.synthesize("Hello", model=UNPRICED)  # billed 625 at 125: the rate is learned
        b.synthesize("Hello", model=UNPRICED)
        assert b._spend.estimate(UNPRICED, 5) == 625.0
        fake_aimlapi.billing(credits_per_char=24 * CREDITS_PER_CHAR)  # the price jumps
        assert a.synthesize("Hello", model=UNPRICED).credits_used == 15_000
        # 16,250 spent. B's rate is fresh (625 a call would fit), but A marked the model:
        # B re-estimates at 15,000 before admitting, and refuses.
        with pytest.raises(BudgetExceededError, match="would cost about 15,000"):
            b.synthesize("Hello", model=UNPRICED)
        with pytest.raises(BudgetExceededError, match="would cost about 15,000"):
            a.synthesize("Hello", model=UNPRICED)
    finally:
        a.close()
        b.close()
    assert fake_aimlapi.charged == [625.0, 625.0, 15_000.0]


def test_a_call_waiting_for_an_unpriced_models_probe_gives_up_at_its_timeout(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, pg_db: str
) -> None:
    url = fresh_schema(pg_db)
    fake_aimlapi.delay(1.5)
    slow = client(fake_aimlapi, tmp_path, "slow", store_url=url, max_credits_per_day=10_000)
    quick = client(
        fake_aimlapi, tmp_path, "quick", store_url=url, max_credits_per_day=10_000, timeout=0.5
    )
    try:
        first = threading.Thread(
            target=slow.synthesize, args=("Hello",), kwargs={"model": UNPRICED}
        )
        first.start()
        while not fake_aimlapi.tts_requests:
            threading.Event().wait(0.01)
        with pytest.raises(BudgetExceededError, match="one call of it at a time"):
            quick.synthesize("Hello", model=UNPRICED)
        first.join()
        quick.synthesize("Hello", model=UNPRICED)  # learned now: no wait
    finally:
        slow.close()
        quick.close()
    assert len(fake_aimlapi.tts_requests) == 2


def test_the_store_admits_one_probe_per_model_and_passes_on_rate_marks(store: Any) -> None:
    now = time.time()
    probe = Probe(UNPRICED, True, now)
    first = store.reserve("daily", 10, 1000, DAY, 60, now, probe)
    assert isinstance(first, str)
    assert store.reserve("daily", 10, 1000, DAY, 60, now, probe).busy is True
    # Another model, or a call that is not a probe, goes ahead.
    assert isinstance(store.reserve("daily", 10, 1000, DAY, 60, now, Probe("x/y", True, now)), str)
    assert isinstance(
        store.reserve("daily", 10, 1000, DAY, 60, now, Probe(UNPRICED, False, now)), str
    )
    store.release(first)
    second = store.reserve("daily", 10, 1000, DAY, 60, now, probe)
    assert isinstance(second, str)
    # A probe whose process died (never settled) frees the model when its lease ends.
    assert store.reserve("daily", 10, 1000, DAY, 60, now + 30, probe).busy is True
    assert isinstance(store.reserve("daily", 10, 1000, DAY, 60, now + 61, probe), str)
    # A mark newer than the caller's rates refuses with the new rate, once.
    store.mark_rate(UNPRICED, 1000.0, now + 70)
    marked = store.reserve("daily", 10, 1000, DAY, 60, now + 71, Probe(UNPRICED, False, now))
    assert (marked.rate, marked.marked_at) == (1000.0, now + 70)
    after = Probe(UNPRICED, False, now + 70)
    assert isinstance(store.reserve("daily", 10, 1000, DAY, 60, now + 71, after), str)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        made: Any = SQLiteStore(tmp_path / "ledger.sqlite3")
    else:
        from octave_tools._store_pg import PostgresStore

        made = PostgresStore(fresh_schema(request.getfixturevalue("pg_db")))
    request.addfinalizer(made.close)
    return made


async def test_the_async_client_waits_for_the_probe_off_the_event_loop(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    import asyncio

    from octave_tools import AsyncOctaveClient

    fake_aimlapi.billing(credits_per_char=8 * CREDITS_PER_CHAR)
    fake_aimlapi.delay(0.2)
    async with AsyncOctaveClient(
        api_key=fake_aimlapi.api_key,
        base_url=fake_aimlapi.base_url,
        engine="aimlapi",
        data_dir=str(tmp_path),
        output_dir=str(tmp_path / "audio"),
        max_credits_per_day=10 * 625,
    ) as c:
        ticks = 0

        async def ticker() -> None:  # the loop stays free while calls wait for the probe
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.create_task(ticker())
        results = await asyncio.gather(
            *(c.synthesize("Hello", model=UNPRICED) for _ in range(5)), return_exceptions=True
        )
        tick.cancel()
    assert [type(r).__name__ for r in results].count("Speech") == 1
    assert all(isinstance(r, BudgetExceededError) for r in results if type(r).__name__ != "Speech")
    assert fake_aimlapi.charged == [5000.0]
    assert ticks >= 10
