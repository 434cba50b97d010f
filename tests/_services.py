"""Real PostgreSQL and Redis for tests: a fresh database / key prefix per run.

URLs come from OCTAVE_TOOLS_TEST_POSTGRES_URL and OCTAVE_TOOLS_TEST_REDIS_URL. Set
(as .ci/run does), a server that does not answer fails the test; unset, the local
default is tried and, when nothing answers, the test skips with the reason.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

PG_ENV = "OCTAVE_TOOLS_TEST_POSTGRES_URL"
REDIS_ENV = "OCTAVE_TOOLS_TEST_REDIS_URL"
PG_DEFAULT = "postgresql://root@127.0.0.1:5432/postgres"
REDIS_DEFAULT = "redis://127.0.0.1:6379/0"
# Read at import: the autouse _clean_env fixture removes OCTAVE_TOOLS_* from each test.
_PG_SET = os.environ.get(PG_ENV, "").strip()
_REDIS_SET = os.environ.get(REDIS_ENV, "").strip()


def _unavailable(env: str, was_set: bool, url: str, why: str) -> None:
    if was_set:
        pytest.fail(f"{env} is set but the server does not answer at {url}: {why}")
    pytest.skip(f"no server answers at {url} and {env} is unset: {why}")


def with_database(url: str, database: str, search_path: str | None = None) -> str:
    """``url`` pointing at ``database`` (and optionally a schema as search_path)."""
    parts = urlsplit(url)
    query = parts.query
    if search_path:
        option = "options=" + quote(f"-csearch_path={search_path}")
        query = f"{query}&{option}" if query else option
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, query, ""))


def postgres_database() -> Iterator[str]:
    """A fresh database for this run (dropped at the end): its URL."""
    psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    admin = _PG_SET or PG_DEFAULT
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        _unavailable(PG_ENV, bool(_PG_SET), admin, str(exc).strip().splitlines()[0])
        raise AssertionError("unreachable") from None
    name = f"octave_test_{secrets.token_hex(6)}"
    with conn:
        conn.execute(f"CREATE DATABASE {name}")
        try:
            yield with_database(admin, name)
        finally:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def redis_prefix() -> Iterator[tuple[str, str]]:
    """(url, fresh key prefix) for this run; every key under the prefix is deleted after."""
    redis = pytest.importorskip("redis", reason="the redis extra is not installed")
    url = _REDIS_SET or REDIS_DEFAULT
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        _unavailable(REDIS_ENV, bool(_REDIS_SET), url, str(exc))
    prefix = f"octave-test-{secrets.token_hex(6)}:"
    try:
        yield url, prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
        client.close()
