"""Long text: split, parts in parallel with order kept, one joined file, spend per part.

Against the fake (``octave_tools.testing``) with a per-request latency; structure is
asserted (bodies, order, concurrency seen by the fake), never timings.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest

from octave_tools import (
    APITimeoutError,
    AsyncOctaveClient,
    BadRequestError,
    BudgetExceededError,
    InvalidInputError,
    OctaveClient,
    Speech,
    UnexpectedResponseError,
)
from octave_tools._protocol import prepare
from octave_tools._settings import Settings
from octave_tools.testing import FakeAIMLAPI, Fault, RecordedRequest

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank today. "


class LatencyFake(FakeAIMLAPI):
    """The fake (with its per-request latency) counting the /tts requests in flight."""

    def __init__(self, latency: float = 0.05, **kw: Any) -> None:
        super().__init__(latency=latency, **kw)
        self.in_flight = 0
        self.max_in_flight = 0

    def _next_fault(self) -> Fault:
        fault = super()._next_fault()
        with self._lock:
            if fault.kind == "ok":  # answered by _answer after the latency
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return fault

    def _answer(self, path: str, req: RecordedRequest) -> tuple[int, bytes, str, dict[str, str]]:
        with self._lock:
            self.in_flight -= 1
        return super()._answer(path, req)


@pytest.fixture
def api() -> Iterator[LatencyFake]:
    with LatencyFake() as fake:
        yield fake


def options(api: FakeAIMLAPI, **extra: Any) -> dict[str, Any]:
    return {
        "api_key": api.api_key,
        "base_url": api.base_url,
        "engine": "aimlapi",
        "model": "openai/tts-1",
        "format": "wav",
        "max_retries": 0,
        **extra,
    }


def call(kind: str, opts: dict[str, Any], method: str, *args: Any, **kw: Any) -> Speech:
    """``client.<method>(*args, **kw)`` on a fresh sync or async client."""
    if kind == "sync":
        with OctaveClient(**opts) as client:
            result: Speech = getattr(client, method)(*args, **kw)
            return result

    async def go() -> Speech:
        async with AsyncOctaveClient(**opts) as client:
            result: Speech = await getattr(client, method)(*args, **kw)
            return result

    return asyncio.run(go())


def text_of(chars: int) -> str:
    """English text of exactly ``chars`` characters, no two sentences the same."""
    sentences = (f"Sentence {i}: {SENTENCE}" for i in range(chars))
    text = ""
    while len(text) < chars:
        text += next(sentences)
    return text[: chars - 1].rstrip() + "."


def in_part_order(requests: list[RecordedRequest]) -> list[RecordedRequest]:
    return sorted(requests, key=lambda r: r.headers["x-client-request-id"])


def path_of(url: str) -> Path:
    return Path(url2pathname(urlsplit(url).path))


def frames(path: Path) -> tuple[int, int]:
    with wave.open(str(path), "rb") as w:
        return w.getnframes(), w.getframerate()


KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


@KINDS
def test_long_text_is_split_at_sentences_sent_in_parallel_and_joined_in_order(
    kind: str, api: LatencyFake
) -> None:
    text = text_of(12_000)
    seen: list[tuple[int, int]] = []
    speech = call(
        kind,
        options(api, max_concurrency=2),
        "synthesize",
        text,
        on_progress=lambda done, total: seen.append((done, total)),
    )
    sent = in_part_order(api.tts_requests)
    assert speech.parts is not None and len(speech.parts) == len(sent) == 3
    bodies = [r.json for r in sent]
    for body, part in zip(bodies, speech.parts, strict=True):
        assert set(body) == {"model", "text", "voice", "response_format"}
        assert body["model"] == "openai/tts-1" and body["response_format"] == "wav"
        assert len(body["text"]) <= 4096
        assert body["text"] == text[part.start : part.end]
        assert body["text"].endswith(".")  # a sentence boundary
    assert " ".join(b["text"] for b in bodies).split() == text.split()
    # One job id prefix, a per-part suffix.
    ids = [r.headers["x-client-request-id"] for r in sent]
    assert ids == [f"octave-tools-{speech.job_id}-{i:04d}" for i in (1, 2, 3)]
    assert api.max_in_flight == 2
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]
    # The result: summed, each part with its own URL and credits.
    assert (
        speech.characters
        == sum(p.characters for p in speech.parts)
        == len("".join(b["text"] for b in bodies))
    )
    assert speech.credits_used == sum(p.credits_used or 0 for p in speech.parts)
    assert [p.index for p in speech.parts] == [0, 1, 2]
    assert all(p.audio_url in api.issued for p in speech.parts)
    assert "3 parts joined into one file" in speech.summary()
    # One file in the output folder; it decodes and its length is the sum of the parts'.
    joined = path_of(speech.audio_url)
    assert joined.name.startswith("speech-") and joined.suffix == ".wav"
    assert frames(joined) == (sum(part_frames(api, p.audio_url) for p in speech.parts), 24_000)


def part_frames(api: FakeAIMLAPI, url: str) -> int:
    """Frames of the WAV the fake serves at ``url``."""
    data = api._files[urlsplit(url).path]
    with wave.open(io.BytesIO(data), "rb") as w:
        return w.getnframes()


@KINDS
def test_concurrency_is_bounded_by_max_concurrency(kind: str, api: LatencyFake) -> None:
    speech = call(kind, options(api, chunk_chars=400), "synthesize", text_of(4000))
    assert speech.parts is not None and len(speech.parts) >= 10
    assert api.max_in_flight == 4  # the default
    assert len(api.tts_requests) == len(speech.parts)


@KINDS
def test_text_that_fits_one_request_takes_the_short_path_unchanged(
    kind: str, api: LatencyFake
) -> None:
    text = text_of(4000)
    speech = call(kind, options(api), "synthesize", text)
    (sent,) = api.tts_requests
    expected = prepare(Settings.load(**options(api), environ={}), text, None, None)
    assert sent.body == expected.body
    assert speech.parts is None and speech.job_id is None
    assert speech.audio_url in api.issued  # the provider's URL: no join
    assert sent.headers["x-client-request-id"].count("-") == 2  # octave-tools-<hex>


def test_the_short_path_imports_nothing_new(api: LatencyFake) -> None:
    code = (
        "import sys\nfrom octave_tools import OctaveClient\n"
        f"c = OctaveClient(api_key={api.api_key!r}, base_url={api.base_url!r}, engine='aimlapi')\n"
        "c.synthesize('Hello there.')\n"
        "print([m for m in ('octave_tools._longform', 'octave_tools._split', "
        "'octave_tools._join', 'concurrent.futures.thread') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@KINDS
def test_budget_admits_the_whole_job_or_none_of_it(kind: str, api: LatencyFake) -> None:
    text = text_of(9000)  # 3 parts of openai/tts-1
    with pytest.raises(BudgetExceededError):
        # Enough for one or two parts, not for three.
        call(kind, options(api, max_credits=2_000), "synthesize", text)
    assert api.tts_requests == []
    speech = call(kind, options(api, max_credits=10_000_000), "synthesize", text)
    assert speech.parts is not None and len(api.tts_requests) == len(speech.parts) == 3


@KINDS
def test_a_part_that_fails_then_the_same_call_pays_only_the_missing_parts(
    kind: str, api: LatencyFake
) -> None:
    text = text_of(20_000)  # 5 parts
    opts = options(api, max_concurrency=1)
    api.inject(Fault(), times=2)  # parts 1 and 2 answer; part 3 is refused for good
    api.fail(400, message="no")
    with pytest.raises(BadRequestError) as caught:
        call(kind, opts, "synthesize", text)
    message = str(caught.value)
    assert message.startswith("Part 3 of 5 failed: ")
    assert "Parts 1-2 of 5 are paid" in message
    assert "the same call again requests only the 3 parts not yet paid" in message
    assert caught.value.paid_parts == (0, 1)  # type: ignore[attr-defined]
    first = [r.json["text"] for r in in_part_order(api.tts_requests)]
    assert len(first) == 3  # parts 4 and 5 were never sent
    mark = len(api.tts_requests)  # the fake keeps serving the first audio
    speech = call(kind, opts, "synthesize", text)
    assert speech.parts is not None
    again = [r.json["text"] for r in in_part_order(api.tts_requests[mark:])]
    assert again == [text[p.start : p.end] for p in speech.parts[2:]]
    assert [p.cached for p in speech.parts] == [True, True, False, False, False]
    assert speech.credits_used == sum(len(t) for t in again) * 125


@KINDS
def test_paid_parts_are_remembered_in_the_store_across_clients(kind: str, api: LatencyFake) -> None:
    text = text_of(20_000)
    opts = options(api, max_concurrency=2)
    api.inject(Fault(), times=3)
    api.fail(400, message="no")
    with pytest.raises(BadRequestError) as caught:
        call(kind, opts, "synthesize", text)
    paid = caught.value.paid_parts  # type: ignore[attr-defined]
    assert paid  # at least one part was paid before the failure
    texts_first = {r.json["text"] for r in api.tts_requests if r.json["text"]}
    mark = len(api.tts_requests)  # the fake keeps serving the first audio
    speech = call(kind, opts, "synthesize", text)
    assert speech.parts is not None and len(speech.parts) == 5
    again = [r.json["text"] for r in api.tts_requests[mark:]]
    paid_texts = {text[speech.parts[i].start : speech.parts[i].end] for i in paid}
    # Only the parts not paid the first time were requested again, each once.
    assert sorted(again) == sorted(
        text[p.start : p.end] for p in speech.parts if text[p.start : p.end] not in paid_texts
    )
    assert paid_texts <= texts_first
    assert [p.cached for p in speech.parts] == [i in paid for i in range(5)]
    assert all(p.credits_used == 0 for p in speech.parts if p.cached)


def test_paid_parts_are_remembered_with_the_ledger_off_in_the_client(api: LatencyFake) -> None:
    text = text_of(20_000)
    with OctaveClient(**options(api, max_concurrency=1, ledger=False)) as client:
        api.inject(Fault(), times=2)
        api.fail(400, message="no")
        with pytest.raises(BadRequestError):
            client.synthesize(text)
        mark = len(api.tts_requests)  # the fake keeps serving the first audio
        speech = client.synthesize(text)
    assert speech.parts is not None
    assert [p.cached for p in speech.parts] == [True, True, False, False, False]
    assert len(api.tts_requests) - mark == 3


def test_part_ttl_zero_remembers_nothing(api: LatencyFake) -> None:
    text = text_of(20_000)
    opts = options(api, max_concurrency=1, part_ttl=0)
    api.inject(Fault(), times=1)
    api.fail(400, message="no")
    with pytest.raises(BadRequestError, match="not remembered"):
        call("sync", opts, "synthesize", text)
    mark = len(api.tts_requests)  # the fake keeps serving the first audio
    call("sync", opts, "synthesize", text)
    assert len(api.tts_requests) - mark == 5


def test_ctrl_c_stops_the_parts_not_yet_sent_and_gives_back_their_reservation(
    api: LatencyFake,
) -> None:
    text = text_of(20_000)

    def interrupt(done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with OctaveClient(**options(api, max_concurrency=1, max_credits=10_000_000)) as client:
        with pytest.raises(KeyboardInterrupt):
            client.synthesize(text, on_progress=interrupt)
        # The part in flight when Ctrl-C came may finish; nothing after it is sent.
        deadline = threading.Event()
        deadline.wait(0.3)
        assert len(api.tts_requests) <= 2
        assert client._spend._reserved == 0


def test_a_cancelled_task_stops_the_remaining_requests(api: LatencyFake) -> None:
    api.latency = 0.2
    text = text_of(20_000)

    async def go() -> tuple[int, float]:
        async with AsyncOctaveClient(
            **options(api, max_concurrency=1, max_credits=10_000_000)
        ) as client:
            task = asyncio.ensure_future(client.synthesize(text))
            for _ in range(500):  # until the first part is in flight
                if api.tts_requests:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.3)
            return len(api.tts_requests), client._spend._reserved

    sent, reserved = asyncio.run(go())
    assert sent == 1
    assert reserved == 0


@KINDS
def test_a_part_in_another_sample_rate_fails_clearly_and_writes_nothing(
    kind: str, api: LatencyFake, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    other = io.BytesIO()
    with wave.open(other, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(bytes(3200))
    api.inject(Fault(), times=2)
    api.respond(200, other.getvalue(), content_type="audio/wav")
    with pytest.raises((UnexpectedResponseError, InvalidInputError)) as caught:
        call(
            kind, options(api, max_concurrency=1, output_dir=str(out)), "synthesize", text_of(9000)
        )
    message = str(caught.value)
    assert message.startswith("The parts could not be joined into one file")
    assert "Parts 1-3 of 3 are paid" in message
    # Only the raw-audio part file is there (it is remembered); no joined file.
    assert [p.suffix for p in out.iterdir() if not p.name.startswith(".")] == [".wav"]


def test_over_max_text_chars_is_refused_before_any_request(api: LatencyFake) -> None:
    with pytest.raises(
        InvalidInputError, match=r"text is 5,001 characters; one call takes at most 5,000"
    ):
        call("sync", options(api, max_text_chars=5000), "synthesize", text_of(5001))
    assert api.requests == []


@KINDS
def test_an_unsplittable_word_is_refused_before_any_request(kind: str, api: LatencyFake) -> None:
    with pytest.raises(InvalidInputError, match="5,000 characters long"):
        call(kind, options(api), "synthesize", "Hello. " + "a" * 5000 + " end.")
    assert api.requests == []


def test_bad_voice_is_refused_before_any_request_on_the_long_path(api: LatencyFake) -> None:
    with pytest.raises(InvalidInputError, match="Unknown voice 'alloyy'"):
        call("sync", options(api), "synthesize", text_of(9000), voice="alloyy")
    assert api.requests == []


def test_stitching_sends_neighbours_text_where_the_model_documents_it(api: LatencyFake) -> None:
    text = text_of(5_000)  # parts of 2,000: no limit is documented
    speech = call(
        "sync",
        options(api, model="elevenlabs/eleven_multilingual_v2", format=None),
        "synthesize",
        text,
    )
    assert speech.parts is not None and len(speech.parts) == 3
    bodies = [r.json for r in in_part_order(api.tts_requests)]
    pieces = [text[p.start : p.end] for p in speech.parts]
    assert (
        "previous_text" not in bodies[0]
        and bodies[0]["next_text"] == pieces[1][:500].rsplit(" ", 1)[0]
    )
    assert bodies[1]["previous_text"].endswith(pieces[0][-100:])
    assert len(bodies[1]["previous_text"]) <= 500 and len(bodies[1]["next_text"]) <= 500
    assert "next_text" not in bodies[2] and pieces[1].endswith(bodies[2]["previous_text"])
    assert speech.format == "mp3" and path_of(speech.audio_url).suffix == ".mp3"
    # A model without stitching gets no such field.
    api.reset()
    call("sync", options(api), "synthesize", text)
    assert all("previous_text" not in r.json for r in api.tts_requests)


def test_the_joined_file_is_published_like_local_audio(api: LatencyFake, tmp_path: Path) -> None:
    from octave_tools._mcp_http import _AudioShelf

    folder = tmp_path / "served"
    speech = call("sync", options(api, output_dir=str(folder)), "synthesize", text_of(9000))
    shelf = _AudioShelf(folder, 0, "http://127.0.0.1:9")
    published = shelf.publish(speech)
    assert published.audio_url == f"http://127.0.0.1:9/audio/{path_of(speech.audio_url).name}"


def test_local_engine_splits_long_text_offline(tmp_path: Path) -> None:
    pytest.importorskip("espeakng_loader")
    text = text_of(1500)
    seen: list[tuple[int, int]] = []
    out = tmp_path / "out"
    with OctaveClient(engine="local", chunk_chars=500, output_dir=str(out)) as client:
        speech = client.synthesize(text, on_progress=lambda d, t: seen.append((d, t)))
    assert speech.engine == "local" and speech.parts is not None and len(speech.parts) == 4
    assert seen[-1] == (4, 4)
    joined = path_of(speech.audio_url)
    # Part files are gone (the local engine is free; nothing remembers them); one file left.
    assert [p.name for p in out.iterdir()] == [joined.name]
    n, rate = frames(joined)
    assert rate == 22_050 and n > 0


@KINDS
def test_every_part_is_a_ledger_row_with_the_job_id_and_usage_by_job_counts_calls(
    kind: str, api: LatencyFake, tmp_path: Path
) -> None:
    import sqlite3

    opts = options(api, data_dir=str(tmp_path / "ledger"))
    speech = call(kind, opts, "synthesize", text_of(9000))
    call(kind, opts, "synthesize", "A short one.")
    assert speech.parts is not None and len(speech.parts) == 3
    with OctaveClient(**opts) as client:
        by_model = client.usage("1h", by="model")
        by_job = client.usage("1h", by="job")
        store = client._spend.store
        assert store is not None
        store.flush()
    assert by_model.total_calls == 4  # rows: three parts and one single request
    groups = {g.key: g for g in by_job.groups}
    assert set(groups) == {speech.job_id, "(single requests)"}
    job = groups[speech.job_id]
    assert (job.calls, job.cached_calls) == (1, 0)
    assert job.credits == speech.credits_used and job.characters == speech.characters
    assert by_job.total_calls == 2
    db = sqlite3.connect(tmp_path / "ledger" / "ledger.sqlite3")
    rows = db.execute("SELECT job_id, request_id FROM calls ORDER BY ts").fetchall()
    db.close()
    assert sorted(r for r in rows if r[0]) == sorted(
        (speech.job_id, p.request_id) for p in speech.parts
    )
    assert [r for r in rows if not r[0]] and len(rows) == 4


def test_usage_by_job_on_the_cli(api: LatencyFake, tmp_path: Path, capsys: Any) -> None:
    from harness import cli

    speech = call("sync", options(api), "synthesize", text_of(9000))  # the env's data dir
    code, out, _ = cli(capsys, "usage", "--by", "job", "--since", "1h")
    assert code == 0 and (speech.job_id or "")[:34] in out


def test_paid_parts_memory_survives_a_json_roundtrip_of_the_speech(api: LatencyFake) -> None:
    speech = call("sync", options(api), "synthesize", text_of(9000))
    again = Speech.model_validate_json(speech.model_dump_json())
    assert again == speech and json.loads(speech.model_dump_json())["parts"][0]["index"] == 0


@KINDS
def test_the_whole_call_may_take_the_timeout_once_per_round_of_parts(
    kind: str, api: LatencyFake
) -> None:
    api.latency = 0.3
    # 8 or 9 parts at 4 at a time: 2 or 3 rounds of 0.3 s, longer than one timeout of 0.5 s.
    opts = options(api, chunk_chars=500, timeout=0.5)
    speech = call(kind, opts, "synthesize", text_of(3900))
    assert speech.parts is not None and len(speech.parts) > 4
    # A part still has one timeout of its own.
    api.latency = 0.8
    with pytest.raises(APITimeoutError, match=r"^Part \d of \d failed: .* No part was paid"):
        call(kind, opts, "synthesize", text_of(3900).replace("Sentence", "Line"))


def test_pcm_parts_join_with_the_models_rate_for_the_pause(api: LatencyFake) -> None:
    speech = call(
        "sync",
        options(api, model="minimax/speech-2.8-turbo", format="pcm", chunk_chars=300, pause_ms=100),
        "synthesize",
        text_of(700),
    )
    assert speech.parts is not None and len(speech.parts) == 3
    parts = sum(len(api._files[urlsplit(p.audio_url).path]) for p in speech.parts)
    # Two pauses of 100 ms at MiniMax's 32 kHz, 16-bit mono.
    assert path_of(speech.audio_url).stat().st_size == parts + 2 * 3200 * 2


def test_an_async_progress_callback_is_awaited_and_its_error_ends_the_call(
    api: LatencyFake,
) -> None:
    seen: list[tuple[int, int]] = []

    async def note(done: int, total: int) -> None:
        seen.append((done, total))
        if done == 2:
            raise RuntimeError("the client went away")

    async def go() -> None:
        opts = options(api, max_concurrency=1, max_credits=10_000_000)
        async with AsyncOctaveClient(**opts) as client:
            with pytest.raises(RuntimeError, match="went away"):
                await client.synthesize(text_of(20_000), on_progress=note)
            assert client._spend._reserved == 0

    asyncio.run(go())
    assert seen == [(0, 5), (1, 5), (2, 5)]
    assert len(api.tts_requests) <= 3  # the parts after the error were not sent


@KINDS
def test_a_remembered_part_whose_audio_is_gone_is_requested_again(
    kind: str, api: LatencyFake
) -> None:
    text = text_of(20_000)
    opts = options(api, max_concurrency=1, max_credits=10_000_000)
    api.inject(Fault(), times=2)
    api.fail(400, message="no")
    with pytest.raises(BadRequestError):
        call(kind, opts, "synthesize", text)
    api.reset()  # the fake forgets its files: the paid parts' URLs now answer 404
    speech = call(kind, opts, "synthesize", text)
    assert speech.parts is not None and not any(p.cached for p in speech.parts)
    assert len(api.tts_requests) == 5
