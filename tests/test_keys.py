"""Client keys on a shared HTTP server: made once, stored hashed, accepted beside the
operator's token, refused on every replica soon after revocation, limited per key."""

from __future__ import annotations

import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from _services import postgres_database
from harness import (
    MCP_HEADERS,
    api_env,
    cli,
    cli_process,
    http_server,
    rpc_result,
    subprocess_env,
    tool_call,
)

from octave_tools import ClientKeyLimitError, Settings
from octave_tools.keys import VERIFY_TTL, KeyBook, KeyGrant, open_key_book
from octave_tools.testing import FakeAIMLAPI

TOKEN = secrets.token_urlsafe(24)
KEY = re.compile(r"otk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


def post(url: str, credential: str, arguments: dict[str, Any]) -> httpx.Response:
    body = tool_call("")
    body["params"]["arguments"] = arguments
    headers = MCP_HEADERS | {"Authorization": f"Bearer {credential}"}
    return httpx.post(url, json=body, headers=headers, timeout=30)


def make_key(capsys: pytest.CaptureFixture[str], name: str, *options: str) -> str:
    code, out, err = cli(capsys, "keys", "add", name, *options)
    assert code == 0, err
    assert KEY.fullmatch(out.strip())
    return out.strip()


@pytest.fixture
def shared(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The environment of a server and of the operator's CLI, on one SQLite store."""
    env = api_env(
        fake_aimlapi,
        OCTAVE_TOOLS_SERVER_TOKEN=TOKEN,
        OCTAVE_TOOLS_DATA_DIR=str(tmp_path / "store"),
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_a_client_key_is_printed_once_and_stored_only_as_a_keyed_hash(
    capsys: pytest.CaptureFixture[str], shared: dict[str, str], tmp_path: Path
) -> None:
    key = make_key(capsys, "team-a", "--max-credits-per-day", "5000", "--rpm", "10")
    code, out, _ = cli(capsys, "keys", "list")
    assert code == 0
    assert key not in out
    assert key[:16] in out  # the prefix: otk_ and the id
    database = tmp_path / "store" / "ledger.sqlite3"
    raw = b"".join(p.read_bytes() for p in database.parent.iterdir() if p.is_file())
    assert key.encode() not in raw
    assert key.split("_")[2].encode() not in raw  # not even the secret part
    rows = sqlite3.connect(database).execute("SELECT name, digest FROM client_keys").fetchall()
    assert [(n, len(d)) for n, d in rows] == [("team-a", 64)]


def test_adding_a_name_twice_says_to_rotate(
    capsys: pytest.CaptureFixture[str], shared: dict[str, str]
) -> None:
    make_key(capsys, "team-a")
    code, out, err = cli(capsys, "keys", "add", "team-a")
    assert (code, out) == (2, "")
    assert err == (
        "octave-tools: error: A key named 'team-a' exists already; use `keys rotate team-a` "
        "for a new key with the same limits, or another name.\n"
    )


def test_the_server_takes_the_operator_token_or_a_client_key_and_nothing_else(
    capsys: pytest.CaptureFixture[str], shared: dict[str, str], fake_aimlapi: FakeAIMLAPI
) -> None:
    key = make_key(capsys, "team-a")
    other = make_key(capsys, "team-b")
    cli(capsys, "keys", "revoke", "team-b")
    with http_server(shared) as (url, server):
        assert rpc_result(post(url, TOKEN, {"text": "Hi"}))["isError"] is False
        assert rpc_result(post(url, key, {"text": "Hi"}))["isError"] is False
        forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        unknown = "otk_" + "0" * 12 + "_" + "A" * 43
        for bad in (forged, unknown, other, "otk_short", "x" * 5000):
            answer = post(url, bad, {"text": "Hi"})
            assert answer.status_code == 401, bad
            assert answer.json()["error"] == "invalid_token"
            assert bad[:12] not in answer.text
        base = url.removesuffix("/mcp")
        assert (
            httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {key}"}).status_code
            == 401
        )
    assert key not in server.stderr and other not in server.stderr
    assert len(fake_aimlapi.tts_requests) == 2


def test_a_revoked_key_is_refused_on_every_replica_within_the_verify_ttl(
    capsys: pytest.CaptureFixture[str], shared: dict[str, str]
) -> None:
    key = make_key(capsys, "team-a")
    with ExitStack() as stack:
        urls = [stack.enter_context(http_server(shared))[0] for _ in range(2)]
        for url in urls:  # each replica has seen (and cached) the key
            assert post(url, key, {"text": "Hi"}).status_code == 200
        code, _, _ = cli(capsys, "keys", "revoke", "team-a")
        revoked_at = time.monotonic()
        refused: dict[str, float] = {}
        while len(refused) < len(urls) and time.monotonic() - revoked_at < VERIFY_TTL + 5:
            for url in urls:
                if url not in refused and post(url, key, {"text": "Hi"}).status_code == 401:
                    refused[url] = time.monotonic() - revoked_at
            time.sleep(0.2)
    assert code == 0
    assert sorted(refused) == sorted(urls)
    assert max(refused.values()) <= VERIFY_TTL + 1.0


def test_a_rotated_key_replaces_the_old_one(
    capsys: pytest.CaptureFixture[str], shared: dict[str, str]
) -> None:
    old = make_key(capsys, "team-a")
    code, out, _ = cli(capsys, "keys", "rotate", "team-a")
    new = out.strip()
    assert code == 0 and KEY.fullmatch(new) and new != old
    book = open_key_book(Settings.load())
    assert book.verify(old) is None
    verified = book.verify(new)
    assert verified is not None and verified.key.name == "team-a"


def test_a_key_limited_to_models_uses_them_and_refuses_others(
    capsys: pytest.CaptureFixture[str], shared: dict[str, str], fake_aimlapi: FakeAIMLAPI
) -> None:
    key = make_key(capsys, "openai-only", "--models", "openai/tts-1")
    env = {**shared, "OCTAVE_TOOLS_MODELS": "hume/octave-2,openai/tts-1"}
    with http_server(env) as (url, _):
        spoke = rpc_result(post(url, key, {"text": "Hi"}))
        refused = rpc_result(post(url, key, {"text": "Hi", "model": "hume/octave-2"}))
    assert spoke["structuredContent"]["model"] == "openai/tts-1"
    assert refused["isError"] is True
    assert refused["content"][0]["text"] == (
        "Error executing tool text_to_speech: This key may use only openai/tts-1; "
        "'hume/octave-2' is not one of them. Leave model out, or ask the operator for a key "
        "with more models."
    )
    assert [r.json["model"] for r in fake_aimlapi.tts_requests] == ["openai/tts-1"]


def test_a_keys_requests_per_minute_are_counted_across_replicas(
    capsys: pytest.CaptureFixture[str], shared: dict[str, str], fake_aimlapi: FakeAIMLAPI
) -> None:
    key = make_key(capsys, "slow", "--rpm", "2")
    with ExitStack() as stack:
        urls = [stack.enter_context(http_server(shared))[0] for _ in range(2)]
        while time.time() % 60 > 50:  # three calls inside one minute
            time.sleep(0.5)
        answers = [rpc_result(post(urls[i % 2], key, {"text": f"Call {i}"})) for i in range(3)]
    assert [a["isError"] for a in answers] == [False, False, True]
    assert re.fullmatch(
        r"Error executing tool text_to_speech: This key's limit of 2 requests per minute is "
        r"reached; it resets in \d+ s \(at the start of the next minute\)\.",
        answers[2]["content"][0]["text"],
    )
    assert len(fake_aimlapi.tts_requests) == 2


def test_keys_fail_closed_when_the_store_is_down(fake_aimlapi: FakeAIMLAPI) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = api_env(
        fake_aimlapi,
        OCTAVE_TOOLS_SERVER_TOKEN=TOKEN,
        OCTAVE_TOOLS_STORE_URL=f"postgresql://u:pw@127.0.0.1:{port}/db?connect_timeout=1",
    )
    key = "otk_" + "a" * 12 + "_" + "B" * 43
    with http_server(env) as (url, _):
        answer = post(url, key, {"text": "Hi"})
    assert answer.status_code == 503
    assert answer.json()["error"] == "temporarily_unavailable"
    assert fake_aimlapi.tts_requests == []


# ---------------------------------------------------------------- the book itself


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    yield from postgres_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def book(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyBook]:
    from octave_tools._store_keys import open_keys

    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    store = open_keys(url, tmp_path / "ledger.sqlite3")
    try:
        yield KeyBook(store, clock=Clock())
    finally:
        store.close()


def test_expiry_and_rpm_follow_the_clock_on_both_stores(book: KeyBook) -> None:
    clock = book.clock
    assert isinstance(clock, Clock)
    name = f"k{secrets.token_hex(4)}"
    key = book.add(name, rpm=2, expires_in=3600)
    verified = book.verify(key)
    assert verified is not None
    grant = KeyGrant(verified.key, book)
    clock.now = 60 * 20_000 + 1.0
    grant.admit()
    grant.admit()
    with pytest.raises(ClientKeyLimitError) as caught:
        grant.admit()
    assert (caught.value.limit, caught.value.resets_at) == ("rpm", 60 * 20_001.0)
    clock.now += 60
    grant.admit()  # a new minute
    clock.now = 1_000_000.0 + 3600 + VERIFY_TTL + 1
    assert book.verify(key) is None  # expired


def test_a_guess_with_a_known_id_is_compared_in_constant_time(
    book: KeyBook, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hmac

    key = book.add(f"k{secrets.token_hex(4)}")
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert book.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert len(compared) == 1


# ---------------------------------------------------------------- attribution


def list_tools(url: str, credential: str) -> list[dict[str, Any]]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = MCP_HEADERS | {"Authorization": f"Bearer {credential}"}
    return rpc_result(httpx.post(url, json=body, headers=headers, timeout=30))["tools"]  # type: ignore[no-any-return]


def test_every_ledger_row_carries_its_key_and_each_key_sees_only_its_own_usage(
    capsys: pytest.CaptureFixture[str], shared: dict[str, str], fake_aimlapi: FakeAIMLAPI
) -> None:
    a = make_key(capsys, "team-a")
    b = make_key(capsys, "team-b")
    with http_server(shared) as (url, _):
        for credential, text in ((a, "One."), (a, "Two, two."), (b, "Three!"), (TOKEN, "Four")):
            assert rpc_result(post(url, credential, {"text": text}))["isError"] is False
        body = {
            "jsonrpc": "2.0",
            "id": 9,
            "method": "tools/call",
            "params": {"name": "usage", "arguments": {"by": "key"}},
        }

        def usage(credential: str) -> dict[str, Any]:
            headers = MCP_HEADERS | {"Authorization": f"Bearer {credential}"}
            return rpc_result(httpx.post(url, json=body, headers=headers, timeout=30))[
                "structuredContent"
            ]

        seen_by_a, seen_by_b, seen_by_operator = usage(a), usage(b), usage(TOKEN)

        def groups(report: dict[str, Any]) -> dict[str, tuple[int, float]]:
            return {g["key"]: (g["calls"], g["credits"]) for g in report["groups"]}

        # The operator's CLI, in another process, reads the file: the server's writer
        # thread puts rows there a moment after each call (asynchronously, by design).
        import json as _json

        deadline = time.monotonic() + 10
        while True:
            done = cli_process("usage", "--by", "key", "--json", env=subprocess_env(**shared))
            assert done.returncode == 0, done.stderr
            from_cli = groups(_json.loads(done.stdout))
            if from_cli == groups(seen_by_operator) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    billed = {r.json["text"]: len(r.json["text"]) * 125 for r in fake_aimlapi.tts_requests}

    assert groups(seen_by_a) == {"team-a": (2, billed["One."] + billed["Two, two."])}
    assert groups(seen_by_b) == {"team-b": (1, billed["Three!"])}
    assert groups(seen_by_operator) == {
        "team-a": (2, billed["One."] + billed["Two, two."]),
        "team-b": (1, billed["Three!"]),
        "operator": (1, billed["Four"]),
    }
    assert from_cli == groups(seen_by_operator)


def test_tools_list_shows_a_key_only_its_models(
    capsys: pytest.CaptureFixture[str], shared: dict[str, str]
) -> None:
    key = make_key(capsys, "openai-only", "--models", "openai/tts-1")
    env = {**shared, "OCTAVE_TOOLS_MODELS": "hume/octave-2,openai/tts-1,deepgram/aura"}
    with http_server(env) as (url, _):
        for_key = {t["name"]: t for t in list_tools(url, key)}
        for_operator = {t["name"]: t for t in list_tools(url, TOKEN)}

    def enum(tool: dict[str, Any]) -> list[str]:
        (choice,) = [o for o in tool["inputSchema"]["properties"]["model"]["anyOf"] if "enum" in o]
        return choice["enum"]  # type: ignore[no-any-return]

    assert enum(for_key["text_to_speech"]) == ["openai/tts-1"]
    assert enum(for_key["list_voices"]) == ["openai/tts-1"]
    line = for_key["text_to_dialogue"]["inputSchema"]["properties"]["lines"]["items"]
    line_model = line["properties"]["model"]
    assert [o["enum"] for o in line_model.get("anyOf", [line_model]) if "enum" in o] == [
        ["openai/tts-1"]
    ]
    assert enum(for_operator["text_to_speech"]) == [
        "hume/octave-2",
        "openai/tts-1",
        "deepgram/aura",
    ]


def test_a_key_may_not_be_named_operator(
    capsys: pytest.CaptureFixture[str], shared: dict[str, str]
) -> None:
    code, out, err = cli(capsys, "keys", "add", "Operator")
    assert (code, out) == (2, "")
    assert "Key name 'operator' is taken" in err


def test_guessed_key_ids_cannot_grow_the_verify_cache_without_bound(tmp_path: Path) -> None:
    from octave_tools._store_keys import open_keys

    store = open_keys(None, tmp_path / "ledger.sqlite3")
    book = KeyBook(store)
    for i in range(10_050):
        assert book.verify(f"otk_{i:012x}_" + "A" * 43) is None
    assert len(book._seen) <= 10_000
    store.close()


# ---------------------------------------------------------------- budgets per key


def test_on_sqlite_a_key_call_counts_the_operators_holds_in_flight_here(
    tmp_path: Path,
) -> None:
    from octave_tools import BudgetExceededError
    from octave_tools._context import current_key
    from octave_tools._spend import Spend
    from octave_tools._store_keys import open_keys

    settings = Settings.load(data_dir=str(tmp_path / "data"), max_credits_per_day=1_000)
    spend = Spend(settings, client_limit=None)
    held = spend.reserve("hume/octave-2", 5)  # an operator call in flight: 625 credits
    store = open_keys(None, tmp_path / "keys.sqlite3")
    book = KeyBook(store)
    verified = book.verify(book.add("team", max_credits_per_day=5_000))
    assert verified is not None
    token = current_key.set(KeyGrant(verified.key, book))
    try:
        with pytest.raises(BudgetExceededError, match="1,000-credit daily budget"):
            spend.reserve("hume/octave-2", 5)  # 625 more would pass the global 1,000
    finally:
        current_key.reset(token)
        spend.release(held)
        store.close()


def test_store_reserves_a_keys_budget_with_the_global_one_and_names_which_refused(
    book: KeyBook, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from octave_tools._store import KeyBudget, ReservationRefused
    from octave_tools._store_url import open_store_url

    url = request.getfixturevalue("pg_url") if "postgresql" in request.node.name else None
    store = open_store_url(url, data_dir=tmp_path / "ledger")
    key = KeyBudget(f"k{secrets.token_hex(3)}", 1_000.0)
    now = time.time()
    held = [store.reserve("daily", 400.0, 10_000.0, 86_400, 60, now, key=key) for _ in range(2)]
    assert all(isinstance(h, str) for h in held)
    refused = store.reserve("daily", 400.0, 10_000.0, 86_400, 60, now, key=key)
    assert isinstance(refused, ReservationRefused)
    assert (refused.budget, refused.held) == (key.budget, 800.0)
    # Another key (or the operator) is not limited by this key's budget ...
    other = store.reserve("daily", 400.0, 10_000.0, 86_400, 60, now, key=KeyBudget("b", 500))
    assert isinstance(other, str)
    # ... but the global budget still binds everyone, and says so.
    tight = store.reserve("daily", 400.0, 1_500.0, 86_400, 60, now, key=KeyBudget("c", 9e9))
    assert isinstance(tight, ReservationRefused) and tight.budget == "daily"
    for rid in [*held, other]:
        assert isinstance(rid, str)
        store.release(rid)
    again = store.reserve("daily", 400.0, 10_000.0, 86_400, 60, now, key=key)
    assert isinstance(again, str)  # releases gave the key's holds back
    store.release(again)


def test_each_keys_budget_and_rate_hold_exactly_under_a_burst_on_three_replicas_behind_nginx(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, pg_url: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from test_replicas import cluster

    from octave_tools._store_keys import open_keys

    store = open_keys(pg_url, tmp_path / "unused.sqlite3")
    book = KeyBook(store)
    suffix = secrets.token_hex(3)
    # "Hello" on Octave: 5 x 125 = 625 credits a call (documented rate: exact estimates).
    keys = {
        "a": book.add(f"team-a-{suffix}", max_credits_per_day=2_000),  # room for 3 calls
        "b": book.add(f"team-b-{suffix}", max_credits_per_day=1_300),  # room for 2
        "c": book.add(f"team-c-{suffix}", rpm=4),  # 4 calls a minute
    }
    fake_aimlapi.delay(0.3, times=100)  # overlapping calls: holds are in flight together
    env = api_env(fake_aimlapi, OCTAVE_TOOLS_STORE_URL=pg_url, OCTAVE_TOOLS_MAX_CREDITS="1e6")
    voices = ["Ava Song", "Vince Douglas", "Campfire Narrator", "Colton Rivers"]
    while time.time() % 60 > 45:  # the burst stays inside one minute
        time.sleep(0.5)
    with cluster(tmp_path, env) as (base, _, _token):

        def call(job: tuple[str, int]) -> tuple[str, dict[str, Any]]:
            name, i = job
            body = tool_call("Hello", request_id=i)
            body["params"]["arguments"]["voice"] = voices[i % len(voices)]
            headers = MCP_HEADERS | {"Authorization": f"Bearer {keys[name]}"}
            answer = httpx.post(f"{base}/mcp", json=body, headers=headers, timeout=60)
            return name, rpc_result(answer)

        jobs = [(name, i) for name in keys for i in range(8)]
        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(call, jobs))
    store.close()
    admitted = {n: sum(1 for m, r in results if m == n and not r["isError"]) for n in keys}
    assert admitted == {"a": 3, "b": 2, "c": 4}
    refusals = [r["content"][0]["text"] for m, r in results if r["isError"]]
    assert sum("daily budget (max_credits_per_day" in t for t in refusals) == 5 + 6
    assert sum("requests per minute is reached" in t for t in refusals) == 4
    assert len(fake_aimlapi.tts_requests) == 9
    assert all(keys[n] not in "".join(refusals) for n in keys)


def test_metrics_show_each_keys_budget_left(
    capsys: pytest.CaptureFixture[str], shared: dict[str, str]
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    key = make_key(capsys, "metered", "--max-credits-per-day", "10000")
    with http_server(shared) as (url, _):
        assert rpc_result(post(url, key, {"text": "Hi"}))["isError"] is False
        scraped = httpx.get(
            url.removesuffix("/mcp") + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
        ).text
    left = {
        s.labels["budget"]: s.value
        for family in text_string_to_metric_families(scraped)
        for s in family.samples
        if s.name == "octave_tools_budget_remaining_credits"
    }
    assert left == {"metered": 10_000 - 2 * 125}
