"""Clients that share nothing but OCTAVE_TOOLS_STORE_URL: one budget, one ledger, one cache.

Against a real PostgreSQL (a fresh database per run) and Redis (see tests/_services.py);
every client has its own data folder, as separate replicas would.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _services import postgres_database, redis_prefix

from octave_tools import BudgetExceededError, OctaveClient
from octave_tools.cli import run
from octave_tools.testing import CREDITS_PER_CHAR, FakeAIMLAPI


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    yield from postgres_database()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    for url, _prefix in redis_prefix():
        yield url


def replica(api: FakeAIMLAPI, tmp_path: Path, name: str, **extra: Any) -> OctaveClient:
    return OctaveClient(
        api_key=api.api_key,
        base_url=api.base_url,
        engine="aimlapi",
        max_retries=0,
        data_dir=str(tmp_path / name),
        output_dir=str(tmp_path / name / "audio"),
        **extra,
    )


def test_replicas_admit_at_most_the_room_of_one_daily_budget(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, pg_url: str
) -> None:
    # "Hi" costs 2 x 125 credits; a budget of 1,000 has room for exactly 4 such calls.
    budget = 4 * 2 * CREDITS_PER_CHAR
    clients = [
        replica(fake_aimlapi, tmp_path, f"r{i}", store_url=pg_url, max_credits_per_day=budget)
        for i in range(3)
    ]
    fake_aimlapi.delay(0.2, times=100)  # the calls overlap: every reservation is in flight
    admitted: list[int] = []
    refused: list[BudgetExceededError] = []
    start = threading.Barrier(12)

    def call(client: OctaveClient) -> None:
        start.wait()
        try:
            client.synthesize("Hi")
        except BudgetExceededError as exc:
            refused.append(exc)
        else:
            admitted.append(1)

    threads = [threading.Thread(target=call, args=(clients[i % 3],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert 3 <= len(admitted) <= 4
    assert len(fake_aimlapi.tts_requests) == len(admitted)
    assert len(refused) == 12 - len(admitted)
    report = replica(fake_aimlapi, tmp_path, "reader", store_url=pg_url).usage_report("1d", "model")
    assert report.total_credits == len(admitted) * 2 * CREDITS_PER_CHAR
    assert report.total_calls == len(admitted)
    assert report.ledger.startswith("postgresql://")
    for client in clients:
        client.close()


def test_the_same_request_on_two_replicas_reaches_the_api_once(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, pg_url: str
) -> None:
    text = f"Cached across replicas {secrets.token_hex(4)}"
    one = replica(fake_aimlapi, tmp_path, "one", store_url=pg_url, cache_ttl=600)
    two = replica(fake_aimlapi, tmp_path, "two", store_url=pg_url, cache_ttl=600)

    first = one.synthesize(text)
    second = two.synthesize(text)

    assert len(fake_aimlapi.tts_requests) == 1
    assert (first.cached, second.cached) == (False, True)
    assert second.audio_url == first.audio_url


def test_identical_calls_in_flight_on_two_replicas_are_coalesced_through_redis(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    text = f"Coalesced {secrets.token_hex(4)}"
    options = {"store_url": pg_url, "cache_url": redis_url, "cache_ttl": 30}
    one = replica(fake_aimlapi, tmp_path, "one", **options)
    two = replica(fake_aimlapi, tmp_path, "two", **options)
    fake_aimlapi.delay(0.5)
    results: dict[str, Any] = {}
    start = threading.Barrier(2)

    def call(name: str, client: OctaveClient) -> None:
        start.wait()
        results[name] = client.synthesize(text)

    threads = [threading.Thread(target=call, args=item) for item in (("one", one), ("two", two))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(fake_aimlapi.tts_requests) == 1
    assert sorted(r.cached for r in results.values()) == [False, True]
    assert results["one"].audio_url == results["two"].audio_url


def test_an_unreachable_store_is_a_configuration_error_naming_the_setting(
    api_env: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_STORE_URL", "postgresql://octave:hunter2pass@127.0.0.1:1/db")
    monkeypatch.setenv("OCTAVE_TOOLS_MAX_CREDITS", "5000")

    code = run(["say", "Hello"])

    err = capsys.readouterr().err
    assert code == 3
    assert "OCTAVE_TOOLS_STORE_URL" in err
    assert "hunter2pass" not in err
    assert "Traceback" not in err
    assert api_env.requests == []


def test_an_undocumented_models_rate_is_learned_from_the_ledger(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    client = replica(fake_aimlapi, tmp_path, "learner", model="openai/tts-1")
    spend = client._spend
    before = spend.estimate("openai/tts-1", 10)
    # OpenAI bills 15 credits a character here (its price is not documented).
    fake_aimlapi.respond(
        200,
        {
            "audio": {"url": f"{fake_aimlapi.origin}/files/a.mp3"},
            "meta": {"usage": {"credits_used": 12 * 15}},
        },
    )

    client.synthesize("Twelve chars")
    spend._rates_read = float("-inf")  # the next estimate re-reads the ledger

    assert before == 10 * 125.0  # the conservative default until a call is seen
    assert spend.estimate("openai/tts-1", 10) == 10 * 15.0
    assert spend.estimate("hume/octave-2", 10) == 10 * 125.0  # documented rates stay
