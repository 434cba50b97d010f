"""What the shared budget costs per call: reserve + settle on PostgreSQL vs SQLite vs none.

Interleaved call by call in one run, so drift hits every store alike. Prints the
median per-call time of each and the ratios, next to today's SQLite ledger write
(``add``: a queue put, the path with no budget reservation). PostgreSQL runs in a
fresh database that is dropped at the end.

    python bench/store_overhead.py [--calls 2000] [--postgres URL]

URL defaults to $OCTAVE_TOOLS_TEST_POSTGRES_URL, else postgresql://root@127.0.0.1:5432/postgres.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from octave_tools._store import LedgerEntry, SQLiteStore

WARMUP = 50
DAY = 86_400.0


def entry() -> LedgerEntry:
    return LedgerEntry(
        time.time(), "aimlapi", "hume/octave-2", "Ava Song", "wav", 44, 5500.0, 0.0027,
        "r", "0" * 64, False,
    )  # fmt: skip


def budget_call(store: object) -> Callable[[], None]:
    reserve = store.reserve  # type: ignore[attr-defined]
    settle = store.settle  # type: ignore[attr-defined]

    def call() -> None:
        rid = reserve("daily", 5500.0, 1e15, DAY, 60.0, time.time())
        assert isinstance(rid, str)
        settle(rid, entry())

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "OCTAVE_TOOLS_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()

    import psycopg

    from octave_tools._store_pg import PostgresStore

    name = f"octave_bench_{secrets.token_hex(4)}"
    admin = psycopg.connect(args.postgres, autocommit=True)
    admin.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(args.postgres)
    pg_url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
    tmp = Path(tempfile.mkdtemp(prefix="octave-bench-"))
    sqlite = SQLiteStore(tmp / "budget.sqlite3")
    ledger_only = SQLiteStore(tmp / "add.sqlite3")
    pg = PostgresStore(pg_url)
    try:
        cases: dict[str, Callable[[], None]] = {
            "none": lambda: None,
            "sqlite add (today)": lambda: ledger_only.add(entry()),
            "sqlite reserve+settle": budget_call(sqlite),
            "postgres reserve+settle": budget_call(pg),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        for i in range(WARMUP + args.calls):
            for label, call in cases.items():
                t = time.perf_counter()
                call()
                if i >= WARMUP:
                    times[label].append(time.perf_counter() - t)
        ledger_only.flush()
        median = {k: statistics.median(v) * 1e6 for k, v in times.items()}
        print(f"{args.calls} calls each, median per call:")
        for label, us in median.items():
            print(f"  {label:<26} {us:9.1f} us")
        base = median["sqlite reserve+settle"]
        print(
            f"  postgres / sqlite (reserve+settle): {median['postgres reserve+settle'] / base:.2f}x"
        )
        print(f"  sqlite reserve+settle / sqlite add: {base / median['sqlite add (today)']:.1f}x")
    finally:
        pg.close()
        sqlite.close()
        ledger_only.close()
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


if __name__ == "__main__":
    main()
