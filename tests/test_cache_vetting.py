"""Issue 22 item 8: cached and coalesced results are vetted in every field, keyed by
tenant (API key fingerprint and base URL), and never handed out past today's TTL."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _services import redis_prefix

from octave_tools import OctaveClient
from octave_tools._spend import Spend
from octave_tools.models import Speech
from octave_tools.testing import FakeAIMLAPI


def client(api: FakeAIMLAPI, data_dir: Path, **kw: Any) -> OctaveClient:
    return OctaveClient(
        api_key=api.api_key,
        base_url=api.base_url,
        engine="aimlapi",
        data_dir=str(data_dir),
        output_dir=str(data_dir / "audio"),
        cache_ttl=kw.pop("cache_ttl", 600),
        **kw,
    )


def tamper(data_dir: Path, old: str, new: str) -> None:
    db = sqlite3.connect(data_dir / "ledger.sqlite3")
    with db:
        changed = db.execute("UPDATE cache SET value = replace(value, ?, ?)", (old, new)).rowcount
    db.close()
    assert changed == 1


def test_tenants_sharing_a_store_never_get_each_others_results(tmp_path: Path) -> None:
    with (
        FakeAIMLAPI(api_key="team-a-key") as a_api,
        FakeAIMLAPI(api_key="team-b-key") as b_api,
        client(a_api, tmp_path) as a,
        client(b_api, tmp_path) as b,
    ):
        a.synthesize("Hello")
        b.synthesize("Hello")  # was: team A's clip, and no request
        assert len(b_api.tts_requests) == 1
        a.synthesize("Hello")  # each tenant still hits its own entry
        assert len(a_api.tts_requests) == 1


@pytest.mark.parametrize(
    "change",
    [{"api_key": "another-key"}, {"base_url": "https://other.example/v1"}],
    ids=["api-key", "base-url"],
)
def test_the_cache_key_names_the_key_fingerprint_and_the_base_url(
    change: dict[str, str],
) -> None:
    base = {"api_key": "k-1", "base_url": "https://api.aimlapi.com/v1"}

    def spend(options: dict[str, str]) -> Spend:
        return OctaveClient(engine="aimlapi", **options)._spend  # type: ignore[arg-type]

    args = ("aimlapi", "hume/octave-2", "Ava Song", "wav", "Hello")
    key = spend(base).cache_key(*args)
    assert key != spend({**base, **change}).cache_key(*args)
    assert key == spend(base).cache_key(*args)
    assert "k-1" not in key


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"voice":"Ava Song"', '"voice":"Vince Douglas"'),
        ('"model":"hume/octave-2"', '"model":"hume/octave-1"'),
        ('"characters":5', '"characters":7'),
        ('"request_id":"', '"request_id":"bad id\\n'),
        ('"credits_used":625', '"credits_used":-625'),
        ('"usd_spent":', '"usd_spent":-'),
    ],
    ids=["voice", "model", "characters", "request-id", "credits", "usd"],
)
def test_a_planted_cache_entry_is_vetted_in_every_field(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, old: str, new: str
) -> None:
    with client(fake_aimlapi, tmp_path) as c:
        first = c.synthesize("Hello", voice="Ava Song")
        tamper(tmp_path, old, new)
        again = c.synthesize("Hello", voice="Ava Song")
    assert len(fake_aimlapi.tts_requests) == 2  # was 1: the planted entry was handed out
    assert (again.cached, again.voice, again.model) == (False, "Ava Song", "hume/octave-2")
    assert again.audio_url != first.audio_url


def test_an_untouched_entry_still_hits(fake_aimlapi: FakeAIMLAPI, tmp_path: Path) -> None:
    with client(fake_aimlapi, tmp_path) as c:
        first = c.synthesize("Hello", voice="Ava Song")
        again = c.synthesize("Hello", voice="Ava Song")
    assert len(fake_aimlapi.tts_requests) == 1
    assert (again.cached, again.audio_url, again.credits_used) == (True, first.audio_url, 0)


def test_a_cached_clip_is_never_handed_out_past_todays_ttl(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    # Written under a 1-hour TTL; read two minutes later by a client whose TTL is 60 s.
    with client(fake_aimlapi, tmp_path, cache_ttl=3600) as c:
        c.synthesize("Hello")
    with client(fake_aimlapi, tmp_path, cache_ttl=60) as c:
        c._spend._clock = lambda: time.time() + 120
        assert c.synthesize("Hello").cached is False  # was: served, 2 minutes old
    assert len(fake_aimlapi.tts_requests) == 2


def test_an_entry_whose_store_expiry_was_pushed_out_is_a_miss(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    with client(fake_aimlapi, tmp_path, cache_ttl=60) as c:
        c.synthesize("Hello")
        db = sqlite3.connect(tmp_path / "ledger.sqlite3")
        with db:
            db.execute("UPDATE cache SET expires_at = expires_at + 86400")
        db.close()
        c._spend._clock = lambda: time.time() + 120
        assert c.synthesize("Hello").cached is False
    assert len(fake_aimlapi.tts_requests) == 2


@pytest.fixture(scope="module")
def redis_run() -> Iterator[tuple[str, str]]:
    yield from redis_prefix()


def test_a_planted_coalesced_result_is_vetted_in_every_field(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, redis_run: tuple[str, str]
) -> None:
    import redis

    url, _ = redis_run
    with client(fake_aimlapi, tmp_path, cache_url=url) as c:
        other = c.synthesize("Other", voice="Vince Douglas")  # a real clip, another voice
        key = c._plan("Hello", "Ava Song", None).cache_key
        assert key is not None
        planted = Speech(
            audio_url=other.audio_url,
            format="wav",
            voice="Vince Douglas",
            model="hume/octave-2",
            characters=5,
        )
        r = redis.Redis.from_url(url)
        try:
            # A "leader" that holds the lock and has "finished" with the planted result.
            r.set(f"octave-tools:lead:{key}", "someone", px=5000)
            r.set(f"octave-tools:done:{key}", planted.model_dump_json(), px=5000)
            speech = c.synthesize("Hello", voice="Ava Song")
        finally:
            r.delete(f"octave-tools:lead:{key}", f"octave-tools:done:{key}")
            r.close()
    assert (speech.voice, speech.cached) == ("Ava Song", False)  # was: the planted clip
    assert len(fake_aimlapi.tts_requests) == 2
