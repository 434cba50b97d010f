"""Defects a review of this session's change found: each test failed before its fix."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from harness import api_options

from octave_tools import AsyncOctaveClient, ConfigurationError, InvalidInputError, OctaveClient
from octave_tools._redact import redact_url, url_secrets
from octave_tools.testing import FakeAIMLAPI


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("postgresql://app:hun#ter2pass@127.0.0.1:1/octave", "hun#ter2pass"),
        ("postgresql://app:with?mark99@127.0.0.1:1/octave", "with?mark99"),
        ("host=127.0.0.1 port=1 user=app password=conninfo77 dbname=x", "conninfo77"),
        ("postgresql://127.0.0.1:1/x?user=app&password=inquery55", "inquery55"),
    ],
)
def test_a_store_password_is_never_shown_whatever_the_url_looks_like(
    fake_aimlapi: FakeAIMLAPI, url: str, password: str
) -> None:
    client = OctaveClient(**api_options(fake_aimlapi, store_url=url, max_credits_per_day=10**6))

    with pytest.raises(ConfigurationError) as caught:
        client.synthesize("Hello")

    assert password not in str(caught.value)
    assert password not in redact_url(url)
    assert password in url_secrets(url)
    assert "OCTAVE_TOOLS_STORE_URL" in str(caught.value)
    assert fake_aimlapi.requests == []


async def test_a_call_cancelled_while_it_reserves_gives_the_hold_back(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    client = AsyncOctaveClient(**api_options(fake_aimlapi, max_credits_per_day=10**6))
    spend = client._spend
    reserve = spend.reserve

    def slow_reserve(model: str, characters: int) -> object:
        time.sleep(0.3)  # the budget read is slow (a locked file, a far server)
        return reserve(model, characters)

    spend.reserve = slow_reserve  # type: ignore[method-assign]
    task = asyncio.create_task(client.synthesize("Hello"))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.5)  # the reservation finishes in its thread, then is undone

    assert spend._reserved == 0.0
    assert fake_aimlapi.requests == []
    await client.aclose()


def test_a_shared_store_with_the_ledger_off_is_no_crash(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    client = OctaveClient(
        **api_options(
            fake_aimlapi,
            ledger=False,
            store_url="postgresql://nobody@127.0.0.1:1/none",
            max_credits_per_day=10**6,
        )
    )

    speech = client.synthesize("Hello")

    assert speech.audio_url in fake_aimlapi.issued


def test_an_unlisted_voice_id_is_bounded(fake_aimlapi: FakeAIMLAPI) -> None:
    client = OctaveClient(**api_options(fake_aimlapi, model="bytedance/seed-audio-1-0"))

    with pytest.raises(
        InvalidInputError, match="a voice id for bytedance/seed-audio-1-0 is at most"
    ):
        client.synthesize("Hello", voice="v" * 100_000)
    assert fake_aimlapi.requests == []


def test_a_model_with_stray_spaces_passes_the_allow_list(fake_aimlapi: FakeAIMLAPI) -> None:
    client = OctaveClient(**api_options(fake_aimlapi, models="hume/octave-2,openai/tts-1"))

    speech = client.synthesize("Hello", model=" openai/tts-1 ")

    assert speech.model == "openai/tts-1"
