"""The ledger store and the spend policy, without a server."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from octave_tools import BudgetExceededError, InvalidInputError, Speech
from octave_tools._settings import Settings
from octave_tools._spend import DAY, Spend, parse_since
from octave_tools._store import LedgerEntry, SQLiteStore


def entry(
    credits: float,
    *,
    ts: float | None = None,
    model: str = "hume/octave-2",
    voice: str = "Ava Song",
) -> LedgerEntry:
    return LedgerEntry(
        ts=time.time() if ts is None else ts,
        engine="aimlapi",
        model=model,
        voice=voice,
        format="wav",
        characters=10,
        credits=credits,
        usd=credits / 2e6,
        request_id="r",
        text_sha256="0" * 64,
        cached=False,
    )


def speech(credits: float, text: str = "hello") -> Speech:
    return Speech(
        audio_url="https://cdn.example/a.wav",
        format="wav",
        voice="Ava Song",
        model="hume/octave-2",
        characters=len(text),
        credits_used=credits,
    )


def test_entries_are_written_in_the_background_and_summed(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "ledger.sqlite3")
    store.add(entry(100))
    store.add(entry(250))
    store.add(entry(999, ts=time.time() - 2 * DAY))
    store.flush()
    rows = (
        sqlite3.connect(tmp_path / "ledger.sqlite3").execute("SELECT credits FROM calls").fetchall()
    )
    assert sorted(r[0] for r in rows) == [100, 250, 999]
    total, oldest = store.spent_since(time.time() - DAY)
    assert total == 350
    assert oldest is not None and oldest > time.time() - 60
    store.close()


def test_ledger_is_wal_and_never_holds_text_or_key(tmp_path: Path) -> None:
    settings = Settings.load(api_key="sk-ledger-secret", data_dir=str(tmp_path), environ={})
    spend = Spend(settings)
    spend.settle(speech(100), "the secret words", None)
    spend.store.flush()  # type: ignore[union-attr]
    raw = (tmp_path / "ledger.sqlite3").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("*-wal")
    )
    assert b"the secret words" not in raw
    assert b"sk-ledger-secret" not in raw
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    digest = hashlib.sha256(b"the secret words").hexdigest()
    assert db.execute("SELECT text_sha256 FROM calls").fetchone()[0] == digest


def test_several_processes_write_one_ledger_at_once(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from octave_tools._store import SQLiteStore, LedgerEntry\n"
        "s = SQLiteStore(__import__('pathlib').Path(sys.argv[1]))\n"
        "for i in range(200):\n"
        "    s.add(LedgerEntry(time.time(), 'aimlapi', 'm', None, 'wav', 1, 1.0, None, None,\n"
        "                      'x', False))\n"
        "s.close()\n"
    )
    path = tmp_path / "ledger.sqlite3"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path)]) for _ in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    assert sqlite3.connect(path).execute("SELECT count(*), sum(credits) FROM calls").fetchone() == (
        800,
        800.0,
    )


def test_corrupt_ledger_warns_once_and_synthesis_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    store = SQLiteStore(path)
    store.add(entry(100))
    store.add(entry(50))
    assert not store.usable
    assert store.spent_since(0)[0] == 150  # still counted in memory
    warnings = [r for r in caplog.records if "usage ledger" in r.getMessage()]
    assert len(warnings) == 1
    assert "is unusable" in warnings[0].getMessage()


def test_usage_groups_by_day_model_and_voice(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "l.sqlite3")
    store.add(entry(100, voice="Ava Song"))
    store.add(entry(300, voice="French Chef"))
    store.add(entry(50, voice="Ava Song", model="other/model"))
    store.flush()
    by_voice = store.usage(0, "voice")
    assert [(r.key, r.calls, r.credits) for r in by_voice] == [
        ("French Chef", 1, 300.0),
        ("Ava Song", 2, 150.0),
    ]
    by_model = store.usage(0, "model")
    assert [(r.key, r.credits) for r in by_model] == [
        ("hume/octave-2", 400.0),
        ("other/model", 50.0),
    ]
    [today] = store.usage(0, "day")
    assert today.key == time.strftime("%Y-%m-%d", time.gmtime()) and today.calls == 3


def test_daily_budget_refuses_the_call_that_would_pass_it(tmp_path: Path) -> None:
    settings = Settings.load(data_dir=str(tmp_path), max_credits_per_day=2000, environ={})
    spend = Spend(settings)
    spend.settle(speech(1000), "x", None)
    held = spend.reserve("hume/octave-2", 8)  # 1,000 + 8 x 125 = 2,000: exactly the budget
    spend.release(held)
    with pytest.raises(BudgetExceededError) as info:
        spend.reserve("hume/octave-2", 9)  # 1,000 + 1,125 > 2,000
    err = info.value
    assert (err.limit, err.spent, err.estimate) == (2000, 1000, 1125)
    assert err.frees_at is not None and abs(err.frees_at - (time.time() + DAY)) < 60
    assert str(err).startswith(
        "Spend limit reached: this call would cost about 1,125 credits and 1,000 of the "
        "2,000-credit daily budget (OCTAVE_TOOLS_MAX_CREDITS) were spent in the last 24 hours. "
        "The oldest charge leaves the 24-hour window at "
    )


def test_reservations_stop_concurrent_calls_overshooting(tmp_path: Path) -> None:
    spend = Spend(Settings.load(data_dir=str(tmp_path), max_credits_per_day=1000, environ={}))
    spend.reserve("hume/octave-2", 4)  # 500 held by a call in flight
    spend.reserve("hume/octave-2", 4)  # 1,000 held
    with pytest.raises(BudgetExceededError):
        spend.reserve("hume/octave-2", 1)


def test_per_client_limit(tmp_path: Path) -> None:
    spend = Spend(Settings.load(data_dir=str(tmp_path), environ={}), client_limit=300)
    spend.settle(speech(250), "x", None)
    with pytest.raises(
        BudgetExceededError, match="this client has spent 250 of its 300-credit limit"
    ):
        spend.reserve("hume/octave-2", 1)


def test_budget_counts_in_memory_when_the_ledger_is_off(tmp_path: Path) -> None:
    spend = Spend(
        Settings.load(data_dir=str(tmp_path), ledger=False, max_credits_per_day=500, environ={})
    )
    spend.settle(speech(500), "x", None)
    with pytest.raises(BudgetExceededError):
        spend.reserve("hume/octave-2", 1)
    assert not (tmp_path / "ledger.sqlite3").exists()


def test_parse_since() -> None:
    now = 1_000_000.0
    assert parse_since("7d", now=now) == now - 7 * DAY
    assert parse_since("12h", now=now) == now - 12 * 3600
    assert parse_since("30m", now=now) == now - 1800
    assert parse_since(None, now=now) == now - 7 * DAY
    for bad in ("soon", "-3d", "7", "d"):
        with pytest.raises(InvalidInputError, match="since must look like 7d"):
            parse_since(bad, now=now)


def test_window_total_is_reread_after_a_second(tmp_path: Path) -> None:
    clock = [1000.0]
    path = tmp_path / "l.sqlite3"
    # Two processes, in effect, both on a clock this test moves.
    mine = SQLiteStore(path, monotonic=lambda: clock[0])
    other = SQLiteStore(path, monotonic=lambda: clock[0])
    mine.add(entry(100))
    mine.flush()
    assert mine.spent_since(0)[0] == 100
    mine.add(entry(10))  # this process's own writes count at once
    mine.flush()
    assert mine.spent_since(0)[0] == 110
    other.add(entry(1000))
    other.flush()
    assert mine.spent_since(0)[0] == 110  # another process's write: seen on the next read
    clock[0] += 1.01
    assert mine.spent_since(0)[0] == 1110
    mine.close()
    other.close()


@pytest.mark.parametrize("bad", ["1e20d", "1e400d", "nand", "infh"])
def test_parse_since_refuses_out_of_range_periods(bad: str) -> None:
    with pytest.raises(InvalidInputError, match="since must look like 7d"):
        parse_since(bad, now=1_000_000.0)
