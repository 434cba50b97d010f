"""Fallback instead of failure: which model spoke and why, what never falls back, the
cool-down (shared through the store), and every face saying so."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _services import postgres_database
from harness import api_env, api_options, cli, connect, subprocess_env

from octave_tools import (
    MODELS,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    ConfigurationError,
    InvalidInputError,
    OctaveClient,
    ServerError,
    Settings,
)
from octave_tools.models import FallbackStep
from octave_tools.testing import FakeAIMLAPI

OCTAVE = "hume/octave-2"
OPENAI = "openai/tts-1"
DEEPGRAM = "deepgram/aura"
SERVER_DOWN = "503 from the API after retries"


def models_asked(api: FakeAIMLAPI) -> list[str]:
    return [r.json["model"] for r in api.tts_requests]


# ---------------------------------------------------------------- the setting


def test_the_setting_reads_models_voices_and_local_last() -> None:
    settings = Settings.load(fallback=f" {OPENAI}=NOVA , {DEEPGRAM}, LOCAL")
    assert settings.fallback == ((OPENAI, "nova"), (DEEPGRAM, None), ("local", None))
    assert Settings.load().fallback == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "openai/tts-2",
            "fallback names an unknown model 'openai/tts-2'. Did you mean 'openai/tts-1'? Use "
            "model ids from `octave-tools models` (or local), separated by commas, e.g. "
            "openai/tts-1=nova,local.",
        ),
        ("local,openai/tts-1", "fallback: local can only be the last resort; put it last."),
        (f"{OPENAI},{OPENAI}", "fallback names openai/tts-1 twice; name each model once."),
        (
            f"{OPENAI}=",
            "fallback: openai/tts-1= needs a voice after '=' (or leave '=' out "
            "for the model's default voice).",
        ),
        ("local=x", "fallback: the local engine takes no voice here; write just local."),
    ],
)
def test_a_bad_fallback_list_is_a_configuration_error_naming_it(value: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.load(fallback=value)
    assert str(caught.value) == message


def test_a_fallback_voice_the_model_does_not_have_is_refused_at_start() -> None:
    with pytest.raises(ConfigurationError, match=r"^OCTAVE_TOOLS_FALLBACK: Unknown voice 'Ava"):
        Settings.load(environ={"OCTAVE_TOOLS_FALLBACK": f"{OPENAI}=Ava Song"})


# ---------------------------------------------------------------- which failures move on


def test_a_server_error_moves_on_to_the_fallback_with_its_default_voice(
    synth: Any, fake_aimlapi: FakeAIMLAPI
) -> None:
    fake_aimlapi.outage(OCTAVE, 503)
    speech = synth("Hello there.", client={"fallback": OPENAI, "max_retries": 0})

    assert speech.model == OPENAI
    assert speech.voice == MODELS[OPENAI].default_voice
    assert speech.fallback_from == (FallbackStep(model=OCTAVE, reason=SERVER_DOWN),)
    assert models_asked(fake_aimlapi) == [OCTAVE, OPENAI]
    assert fake_aimlapi.tts_requests[1].json == {
        "model": OPENAI,
        "text": "Hello there.",
        "voice": "alloy",
        "response_format": "mp3",
    }
    assert speech.summary().endswith(f"fallback after {OCTAVE}: {SERVER_DOWN}).")


def test_the_configured_voice_format_and_speed_carry_over_where_the_model_has_them(
    synth: Any, fake_aimlapi: FakeAIMLAPI
) -> None:
    fake_aimlapi.outage(OCTAVE, 500)
    speech = synth(
        "Hello there.", format="wav", client={"fallback": f"{OPENAI}=Nova", "max_retries": 0}
    )
    assert (speech.model, speech.voice, speech.format) == (OPENAI, "nova", "wav")
    assert fake_aimlapi.tts_requests[1].json["response_format"] == "wav"


def test_a_retired_model_404_falls_back() -> None:
    with (
        FakeAIMLAPI(models=tuple(m for m in MODELS if m != OCTAVE)) as api,
        OctaveClient(**api_options(api, fallback=OPENAI)) as client,
    ):
        speech = client.synthesize("Hi.")
    assert speech.model == OPENAI
    assert speech.fallback_from == (
        FallbackStep(model=OCTAVE, reason="404 from the API (model unknown or retired)"),
    )


def test_a_429_whose_retry_after_is_past_the_deadline_falls_back(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    fake_aimlapi.fail(429, retry_after="3600")
    with OctaveClient(**api_options(fake_aimlapi, fallback=OPENAI, max_retries=2)) as client:
        speech = client.synthesize("Hi.")
    assert models_asked(fake_aimlapi) == [OCTAVE, OPENAI]
    assert speech.fallback_from == (
        FallbackStep(model=OCTAVE, reason="429 rate limited past its Retry-After"),
    )


def test_a_timeout_falls_back_and_the_fallback_gets_its_own_time(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    fake_aimlapi.delay(3)
    options = api_options(fake_aimlapi, fallback=OPENAI, timeout=0.5)
    with OctaveClient(**options) as client:
        speech = client.synthesize("Hi.")
    assert speech.model == OPENAI
    assert speech.fallback_from == (FallbackStep(model=OCTAVE, reason="no answer within 0.5 s"),)


def test_a_dropped_connection_falls_back(fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.drop()
    with OctaveClient(**api_options(fake_aimlapi, fallback=OPENAI)) as client:
        speech = client.synthesize("Hi.")
    assert speech.fallback_from == (
        FallbackStep(model=OCTAVE, reason="the connection failed after retries"),
    )


def test_invalid_input_never_falls_back_and_sends_nothing(fake_aimlapi: FakeAIMLAPI) -> None:
    with (
        OctaveClient(**api_options(fake_aimlapi, fallback=OPENAI)) as client,
        pytest.raises(InvalidInputError, match="Ava Sung"),
    ):
        client.synthesize("Hi.", voice="Ava Sung")
    assert fake_aimlapi.tts_requests == []


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, BadRequestError), (401, AuthenticationError), (403, AuthenticationError)],
)
def test_a_rejected_body_or_key_never_falls_back(
    fake_aimlapi: FakeAIMLAPI, status: int, error: type[Exception]
) -> None:
    fake_aimlapi.fail(status)
    with (
        OctaveClient(**api_options(fake_aimlapi, fallback=OPENAI)) as client,
        pytest.raises(error) as caught,
    ):
        client.synthesize("Hi.")
    assert models_asked(fake_aimlapi) == [OCTAVE]
    assert "Fallback" not in str(caught.value)


def test_a_budget_refusal_never_falls_back(fake_aimlapi: FakeAIMLAPI) -> None:
    with (
        OctaveClient(**api_options(fake_aimlapi, fallback=OPENAI, max_credits=1)) as client,
        pytest.raises(BudgetExceededError),
    ):
        client.synthesize("Hi.")
    assert fake_aimlapi.tts_requests == []


def test_when_no_model_speaks_the_first_error_says_what_the_others_did(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    fake_aimlapi.outage(OCTAVE, 502).outage(OPENAI, 503)
    options = api_options(fake_aimlapi, fallback=f"{OPENAI},{DEEPGRAM}")
    fake_aimlapi.outage(DEEPGRAM, 500)
    with OctaveClient(**options) as client, pytest.raises(ServerError) as caught:
        client.synthesize("Hi.")
    assert caught.value.status_code == 502
    assert str(caught.value).endswith(
        f" Fallback did not help: {OPENAI}: {SERVER_DOWN}; "
        f"{DEEPGRAM}: 500 from the API after retries."
    )
    assert models_asked(fake_aimlapi) == [OCTAVE, OPENAI, DEEPGRAM]


def test_a_fallback_that_cannot_take_the_text_is_passed_over(fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.outage(OCTAVE)
    text = "word " * 1_000  # 5,000 characters: over OpenAI's 4,096, within Octave's limit
    with (
        OctaveClient(**api_options(fake_aimlapi, fallback=OPENAI)) as client,
        pytest.raises(ServerError) as caught,
    ):
        client.synthesize(text)
    assert models_asked(fake_aimlapi) == [OCTAVE]
    assert f"Fallback did not help: {OPENAI}: cannot take this call (" in str(caught.value)


def test_local_as_the_last_resort_speaks_offline(fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.outage(OCTAVE).outage(OPENAI)
    with OctaveClient(**api_options(fake_aimlapi, fallback=f"{OPENAI},local")) as client:
        speech = client.synthesize("Hello there.")
    assert (speech.engine, speech.format) == ("local", "wav")
    assert speech.audio_url.startswith("file://")
    assert [step.model for step in speech.fallback_from or ()] == [OCTAVE, OPENAI]


def test_the_first_choice_speaking_leaves_the_result_as_it_always_was(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    with OctaveClient(**api_options(fake_aimlapi, fallback=OPENAI)) as client:
        speech = client.synthesize("Hi.")
    assert speech.fallback_from is None
    assert "fallback_from" not in speech.model_dump()
    assert "fallback" not in speech.summary()


def test_the_ledger_keeps_both_attempts_and_bills_only_the_one_that_spoke(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Any
) -> None:
    import sqlite3

    fake_aimlapi.outage(OCTAVE)
    options = api_options(fake_aimlapi, fallback=OPENAI, data_dir=str(tmp_path / "data"))
    with OctaveClient(**options) as client:
        speech = client.synthesize("Hello there.")
        client._spend.store.flush()  # type: ignore[union-attr]
    rows = (
        sqlite3.connect(tmp_path / "data" / "ledger.sqlite3")
        .execute("SELECT model, credits, outcome, text_sha256 FROM calls ORDER BY id")
        .fetchall()
    )
    assert [(m, c, o) for m, c, o, _ in rows] == [
        (OCTAVE, 0.0, "fallback"),
        (OPENAI, speech.credits_used, "ok"),
    ]
    assert rows[0][3] == rows[1][3]  # the same text: one call, two attempts
    report = client.usage_report("1h", "model")
    assert {g.key: (g.calls, g.credits) for g in report.groups} == {
        OPENAI: (1, speech.credits_used),
        OCTAVE: (0, 0.0),  # the failed attempt is kept, but it was no call
    }


# ---------------------------------------------------------------- the cool-down


def test_a_model_failing_twice_in_a_row_is_skipped_until_its_cooldown_ends(
    synth: Any, fake_aimlapi: FakeAIMLAPI
) -> None:
    client = {"fallback": OPENAI, "max_retries": 0, "fallback_cooldown": 1.0}
    fake_aimlapi.outage(OCTAVE)
    synth("One.", client=client)
    synth("Two.", client=client)  # each call is a new client: the record is in the store
    third = synth("Three.", client=client)
    assert models_asked(fake_aimlapi) == [OCTAVE, OPENAI, OCTAVE, OPENAI, OPENAI]
    (step,) = third.fallback_from or ()
    assert step.model == OCTAVE and step.reason in (
        "failing; skipped for 1 s",
        "failing; skipped for 0 s",
    )

    fake_aimlapi.restore(OCTAVE)
    time.sleep(1.05)
    fourth = synth("Four.", client=client)
    assert (fourth.model, fourth.fallback_from) == (OCTAVE, None)


def test_a_success_ends_the_run_of_failures(fake_aimlapi: FakeAIMLAPI) -> None:
    options = api_options(fake_aimlapi, fallback=OPENAI)
    with OctaveClient(**options) as client:
        fake_aimlapi.fail(503)
        client.synthesize("One.")  # Octave fails once, OpenAI speaks
        client.synthesize("Two.")  # Octave speaks: its run of failures ends
        fake_aimlapi.fail(503)
        client.synthesize("Three.")  # one failure again, not two in a row
        fourth = client.synthesize("Four.")
    assert fourth.model == OCTAVE
    assert models_asked(fake_aimlapi) == [OCTAVE, OPENAI, OCTAVE, OCTAVE, OPENAI, OCTAVE]


def test_a_cooldown_of_zero_never_skips(fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.outage(OCTAVE)
    with OctaveClient(**api_options(fake_aimlapi, fallback=OPENAI, fallback_cooldown=0)) as c:
        for text in ("One.", "Two.", "Three."):
            c.synthesize(text)
    assert models_asked(fake_aimlapi) == [OCTAVE, OPENAI] * 3


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    yield from postgres_database()


def test_the_cooldown_is_shared_by_replicas_on_one_postgresql_store(
    pg_url: str, fake_aimlapi: FakeAIMLAPI
) -> None:
    fake_aimlapi.outage(OCTAVE)
    options = api_options(fake_aimlapi, fallback=OPENAI, store_url=pg_url)
    with OctaveClient(**options) as one, OctaveClient(**options) as two:
        one.synthesize("One.")
        two.synthesize("Two.")  # the second failure in a row, seen by another replica
        third = one.synthesize("Three.")
        fourth = two.synthesize("Four.")
    assert models_asked(fake_aimlapi) == [OCTAVE, OPENAI, OCTAVE, OPENAI, OPENAI, OPENAI]
    assert [s.model for s in third.fallback_from or ()] == [OCTAVE]
    assert [s.model for s in fourth.fallback_from or ()] == [OCTAVE]


def test_a_planted_far_future_cooldown_is_bounded_by_the_setting(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    with OctaveClient(**api_options(fake_aimlapi, fallback=OPENAI, fallback_cooldown=5)) as c:
        store = c._spend.store
        assert store is not None
        value = json.dumps({"failures": 9, "until": time.time() + 10**9})
        store.cache_put("octave-tools:fallback:" + OCTAVE, value, time.time() + 10**9)
        speech = c.synthesize("Hi.")
    assert speech.fallback_from == (FallbackStep(model=OCTAVE, reason="failing; skipped for 5 s"),)


# ---------------------------------------------------------------- every face


async def test_mcp_results_say_which_model_spoke_and_why(
    fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_aimlapi.outage(OCTAVE)
    env = api_env(fake_aimlapi, OCTAVE_TOOLS_FALLBACK=OPENAI, OCTAVE_TOOLS_MAX_RETRIES="0")
    async with connect("memory", env, monkeypatch) as client:
        result = await client.call_tool("text_to_speech", {"text": "Hello there"})
    assert result.is_error is False
    structured = result.structured_content or {}
    assert structured["model"] == OPENAI
    assert structured["fallback_from"] == [{"model": OCTAVE, "reason": SERVER_DOWN}]
    assert f"fallback after {OCTAVE}: {SERVER_DOWN}" in structured["message"]


async def test_mcp_tool_error_when_no_model_speaks(
    fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_aimlapi.outage(OCTAVE).outage(OPENAI)
    env = api_env(fake_aimlapi, OCTAVE_TOOLS_FALLBACK=OPENAI, OCTAVE_TOOLS_MAX_RETRIES="0")
    async with connect("memory", env, monkeypatch) as client:
        result = await client.call_tool("text_to_speech", {"text": "Hello there"})
    assert result.is_error is True
    assert f"Fallback did not help: {OPENAI}: {SERVER_DOWN}." in str(result.content[0])


def test_a_bad_fallback_list_stops_the_server_at_start(fake_aimlapi: FakeAIMLAPI) -> None:
    from octave_tools.mcp import create_server

    with pytest.raises(ConfigurationError, match="unknown model 'hume/octave-3'"):
        create_server(**api_options(fake_aimlapi, fallback="hume/octave-3"))


def test_langchain_artifact_carries_fallback_from(fake_aimlapi: FakeAIMLAPI) -> None:
    from octave_tools.langchain import OctaveTTSTool

    fake_aimlapi.outage(OCTAVE)
    tool = OctaveTTSTool(**api_options(fake_aimlapi, fallback=OPENAI))
    message = tool.invoke(
        {"type": "tool_call", "id": "1", "name": tool.name, "args": {"text": "Hello there"}}
    )
    assert message.artifact["model"] == OPENAI
    assert message.artifact["fallback_from"] == ({"model": OCTAVE, "reason": SERVER_DOWN},)
    assert f"fallback after {OCTAVE}" in message.content


def test_cli_json_says_which_model_spoke(
    capsys: pytest.CaptureFixture[str],
    fake_aimlapi: FakeAIMLAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in subprocess_env(fake_aimlapi, OCTAVE_TOOLS_FALLBACK=OPENAI).items():
        if name.startswith(("AIMLAPI_", "OCTAVE_TOOLS_")):
            monkeypatch.setenv(name, value)
    fake_aimlapi.outage(OCTAVE)
    code, out, err = cli(capsys, "say", "Hello there", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["model"] == OPENAI
    assert record["fallback_from"] == [{"model": OCTAVE, "reason": SERVER_DOWN}]


def test_cli_refuses_an_unknown_fallback_model_before_any_call(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_FALLBACK", "openai/tts-one")
    code, out, err = cli(capsys, "say", "Hello there")
    assert (code, out) == (3, "")
    assert "OCTAVE_TOOLS_FALLBACK names an unknown model 'openai/tts-one'" in err
    assert api_env.tts_requests == []


def test_the_timeout_error_type_is_kept_when_every_model_times_out(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    fake_aimlapi.delay(3, times=2)
    with (
        OctaveClient(**api_options(fake_aimlapi, fallback=OPENAI, timeout=0.3)) as client,
        pytest.raises(APITimeoutError) as caught,
    ):
        client.synthesize("Hi.")
    assert str(caught.value).endswith(f"Fallback did not help: {OPENAI}: no answer within 0.3 s.")
