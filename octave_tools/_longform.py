"""Long text and dialogue: one call, any length, one audio file.

The pipeline, shared by both clients and so by every face:

split -> plan -> reserve -> synthesize parts -> fetch -> join -> one ``Speech``.

- *Split*: ``_split.split_text`` cuts the text (or each dialogue line) into parts one
  request takes (``OctaveClient._split_limit``: ``chunk_chars`` or the model's limit).
- *Plan*: every part is validated and its request built before anything is sent
  (voice, format, model, per dialogue line); all parts must give one joinable format.
  Each request carries ``X-Client-Request-Id: octave-tools-<job id>-<part>``; where the
  model's schema documents ``previous_text``/``next_text`` (ElevenLabs), each part
  carries up to STITCH_CHARS of its neighbours' text (of the same dialogue line).
- *Reserve*: parts paid before (the cache, or the "paid parts" memory kept for
  ``part_ttl`` seconds) are reused at no charge; one budget reservation holds the
  estimate of all the others before the first request, so the budget admits the whole
  job or none of it.
- *Synthesize*: at most ``max_concurrency`` parts in flight (threads for the sync
  client, an anyio task group for the async one), each through the single-call path
  (retries, validation). Order is kept by index, not by completion.
- *Deadline*: the whole call gets ``timeout x ceil(parts to send / max_concurrency)``
  seconds; each part also keeps its own ``timeout``.
- *Fetch and join*: each part's audio goes to a temp folder (the vetted
  ``_files.AudioFetcher``, one HTTP client for the job), then ``_join.join_files``
  streams them into one new file in the output folder, written atomically: a file://
  URL, which the HTTP server publishes at ``/audio/<name>`` like the local engine's clips.
- *Failure*: a part that fails for good stops the parts not yet sent; the error (same
  class as the part's) says which parts were paid, and as those are remembered the
  same call again pays only for the rest. Cancellation (a task cancel, Ctrl-C) stops
  the parts not yet sent and gives back their share of the reservation.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import inspect
import json
import math
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

from . import _protocol as proto
from ._calltime import call_deadline
from ._files import AudioFetcher, _url2pathname, new_audio_path
from ._join import check_joinable, join_files
from ._settings import ENV_MAX_TEXT_CHARS, MAX_PAUSE_MS
from ._spend import NO_HOLD, Hold
from ._split import split_text
from .errors import APIError, APITimeoutError, InvalidInputError, OctaveError
from .models import DialogueLine, Speech, SpeechPart

if TYPE_CHECKING:
    import anyio

    from ._settings import Settings
    from ._spend import Spend
    from .voices import VoiceCatalogue

# The clients are typed here by what the pipeline uses of them, not imported: the client
# imports this module (lazily) and the package keeps no import cycle.
ProgressCallback = Callable[[int, int], object]
_Job = Any  # client._Job: text, voice, format, call, model, characters, cache_key


class _BaseClient(Protocol):
    _spend: Spend

    @property
    def settings(self) -> Settings: ...
    def _split_limit(self, model: str | None) -> int: ...
    def _engine(self, *, strict: bool = True) -> str: ...
    def _check_model(self, model: str | None) -> str: ...
    def voice_catalogue(self, model: str | None = None) -> VoiceCatalogue | None: ...
    def _plan(
        self,
        text: str,
        voice: str | None,
        fmt: str | None,
        model: str | None = None,
        speed: float | None = None,
    ) -> _Job: ...


class OctaveClient(_BaseClient, Protocol):
    def _run(self, job: _Job, deadline: float | None = None) -> Speech: ...


class AsyncOctaveClient(_BaseClient, Protocol):
    async def _run(self, job: _Job, deadline: float | None = None) -> Speech: ...


__all__ = ["asynthesize_dialogue", "asynthesize_text", "synthesize_dialogue", "synthesize_text"]

# Neighbours' text sent with a part for stitching, at most (cut at a space).
STITCH_CHARS = 500
DIALOGUE_PAUSE_MS = 400
_LINE_KEYS = ("voice", "text", "model", "speaker")


@dataclass(eq=False)
class _Part:
    """One request of the job, and what became of it."""

    index: int
    start: int
    end: int
    text: str
    job: _Job
    line: int | None = None
    speaker: str | None = None
    key: str | None = None
    remembered: Speech | None = None
    estimate: float = 0.0
    hold: Hold = NO_HOLD
    state: str = "pending"  # pending -> running -> done | failed; pending -> skipped
    speech: Speech | None = None
    path: Path | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Plan:
    job_id: str
    parts: list[_Part]
    fmt: str
    engine: str
    pause_ms: int
    dialogue: bool
    holds: list[Hold] = field(default_factory=list)
    deadline: float = math.inf
    budget_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    tmp: Path | None = None
    fetcher: AudioFetcher | None = None
    released: bool = False


@dataclass(frozen=True)
class _Segment:
    start: int
    end: int
    text: str
    voice: str | None
    model: str | None
    line: int | None = None
    speaker: str | None = None


# ---------------------------------------------------------------- planning


def _check_length(client: _BaseClient, chars: int, what: str, field_name: str) -> None:
    limit = client.settings.max_text_chars
    if chars > limit:
        raise InvalidInputError(
            f"{what} is {chars:,} characters; one call takes at most {limit:,} "
            f"(max_text_chars). Send it in several calls, or raise {ENV_MAX_TEXT_CHARS[0]}.",
            field=field_name,
        )


def _text_segments(
    client: _BaseClient, text: str, voice: str | None, model: str | None
) -> list[_Segment]:
    proto.validate_text(text, limit=None)  # type, empty, invisible-only, lone surrogates
    _check_length(client, len(text), "text", "text")
    spans = split_text(text, client._split_limit(model))
    return [_Segment(s, e, text[s:e], voice, model) for s, e in spans]


def _line_error(number: int, exc: InvalidInputError) -> InvalidInputError:
    message = exc.message[:1].lower() + exc.message[1:]
    return InvalidInputError(f"line {number}: {message}", field=f"lines[{number - 1}].{exc.field}")


def _read_line(number: int, line: object) -> DialogueLine:
    voice: object
    text: object
    model: object
    speaker: object
    if isinstance(line, DialogueLine):
        voice, text, model, speaker = line.voice, line.text, line.model, line.speaker
    elif isinstance(line, Mapping):
        unknown = [k for k in line if k not in _LINE_KEYS]
        if unknown:
            raise InvalidInputError(
                f"line {number}: unknown key {str(unknown[0])[:40]!r}; a line has voice, "
                "text and optionally model and speaker.",
                field=f"lines[{number - 1}]",
            )
        voice, text = line.get("voice"), line.get("text")
        model, speaker = line.get("model"), line.get("speaker")
    else:
        raise InvalidInputError(
            f"line {number} must be an object with voice and text, not {type(line).__name__}.",
            field=f"lines[{number - 1}]",
        )
    where = f"lines[{number - 1}]"
    if not isinstance(voice, str) or not voice.strip():
        raise InvalidInputError(
            f"line {number}: voice is missing; name the voice that speaks the line "
            "(list_voices shows them).",
            field=f"{where}.voice",
        )
    if not isinstance(text, str):
        raise InvalidInputError(f"line {number}: text must be a string.", field=f"{where}.text")
    if model is not None and not isinstance(model, str):
        raise InvalidInputError(f"line {number}: model must be a model id.", field=f"{where}.model")
    if speaker is not None and not isinstance(speaker, str):
        speaker = str(speaker)
    try:
        proto.validate_text(text, limit=None)
    except InvalidInputError as exc:
        raise _line_error(number, exc) from None
    return DialogueLine(voice, text, model, (speaker or voice).strip()[:100])


def _dialogue_segments(client: _BaseClient, lines: object, model: str | None) -> list[_Segment]:
    if isinstance(lines, (str, bytes, Mapping)) or not isinstance(lines, Sequence):
        raise InvalidInputError(
            "lines must be a list of lines, each {voice, text} (and optionally model).",
            field="lines",
        )
    if not lines:
        raise InvalidInputError(
            "The dialogue has no lines. Pass at least one {voice, text}.", field="lines"
        )
    read = [_read_line(n, line) for n, line in enumerate(lines, 1)]
    _check_length(client, sum(len(line.text) for line in read), "The dialogue", "lines")
    local = client._engine() == "local"
    catalogue = client.voice_catalogue() if local else None
    segments: list[_Segment] = []
    for n, line in enumerate(read, 1):
        line_model = line.model if line.model is not None else model
        try:
            if catalogue is not None:
                catalogue.resolve(line.voice)
            spans = split_text(line.text, client._split_limit(line_model))
        except InvalidInputError as exc:
            raise _line_error(n, exc) from None
        segments += [
            _Segment(s, e, line.text[s:e], line.voice, line_model, n - 1, line.speaker)
            for s, e in spans
        ]
    return segments


@functools.lru_cache(maxsize=1)
def _schemas() -> dict[str, Any]:
    text = resources.files("octave_tools").joinpath("_data/tts-models.json").read_text("utf-8")
    models: dict[str, Any] = json.loads(text)["models"]
    return models


def stitches(model: str) -> bool:
    """Whether ``model``'s documented request takes ``previous_text`` and ``next_text``."""
    entry = _schemas().get(model) or {}
    properties = entry.get("request_schema", {}).get("properties", {})
    return "previous_text" in properties and "next_text" in properties


def pcm_rate(model: str) -> int:
    """Samples a second of ``model``'s raw PCM as we ask for it: its documented default
    ``sample_rate`` (MiniMax: 32,000), else 24,000 (OpenAI, ElevenLabs ``pcm_24000``)."""
    entry = _schemas().get(model) or {}
    pending = [entry.get("request_schema", {})]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            rate = node.get("properties", {}).get("sample_rate")
            if isinstance(rate, dict) and str(rate.get("default", "")).isdigit():
                return int(rate["default"])
            pending += [v for v in node.values() if isinstance(v, (dict, list))]
        elif isinstance(node, list):
            pending += node
    return 24_000


def _bounded(text: str, *, tail: bool) -> str:
    """At most STITCH_CHARS of ``text`` (its end, or its start), cut at a space."""
    if len(text) <= STITCH_CHARS:
        return text
    if tail:
        piece = text[-STITCH_CHARS:]
        cut = piece.find(" ")
        return piece[cut + 1 :] if 0 <= cut < len(piece) - 1 else piece
    piece = text[:STITCH_CHARS]
    cut = piece.rfind(" ")
    return piece[:cut] if cut > 0 else piece


def _build_call(
    call: proto.Call, request_id: str, previous: str | None, following: str | None
) -> proto.Call:
    headers = {**call.headers, "X-Client-Request-Id": request_id}
    body = call.body
    if previous is not None or following is not None:
        payload = json.loads(body)
        if previous:
            payload["previous_text"] = _bounded(previous, tail=True)
        if following:
            payload["next_text"] = _bounded(following, tail=False)
        body = proto._JSON.encode(payload).encode("utf-8")
    return dataclasses.replace(call, headers=headers, body=body, client_request_id=request_id)


def _memory_key(client: _BaseClient, job: _Job) -> str | None:
    """The key a paid part is remembered under (as the cache's), None for a local part."""
    if job.cache_key is not None:
        return job.cache_key  # type: ignore[no-any-return]
    call: proto.Call | None = job.call
    if call is None:
        return None  # the local engine is free: nothing to remember
    fmt_key = call.format if call.speed is None else f"{call.format};speed={float(call.speed)!r}"
    return client._spend.cache_key("aimlapi", call.model, call.voice, fmt_key, job.text)


def _plan(
    client: _BaseClient,
    segments: list[_Segment],
    fmt: str | None,
    speed: float | None,
    pause_ms: int,
    dialogue: bool,
) -> _Plan:
    """Every part validated and its request built; raises before anything is sent."""
    job_id = uuid.uuid4().hex
    engine = client._engine()
    parts: list[_Part] = []
    for index, seg in enumerate(segments):
        try:
            job = client._plan(seg.text, seg.voice, fmt, seg.model, speed)
        except InvalidInputError as exc:
            if seg.line is None:
                raise
            raise _line_error(seg.line + 1, exc) from None
        parts.append(_Part(index, seg.start, seg.end, seg.text, job, seg.line, seg.speaker))
    formats = {p.job.call.format if p.job.call is not None else "wav" for p in parts}
    if len(formats) > 1:
        raise InvalidInputError(
            f"The parts would come back in different formats ({', '.join(sorted(formats))}) "
            "and cannot be joined: pass one format every model of the call gives.",
            field="format",
        )
    (out_format,) = formats
    check_joinable(out_format)
    for i, part in enumerate(parts):
        call = part.job.call
        if call is None:
            continue
        previous = following = None
        if stitches(call.model):  # neighbours of the same dialogue line only
            if i > 0 and parts[i - 1].line == part.line:
                previous = parts[i - 1].text
            if i + 1 < len(parts) and parts[i + 1].line == part.line:
                following = parts[i + 1].text
        request_id = f"octave-tools-{job_id}-{i + 1:04d}"
        part.job = dataclasses.replace(
            part.job, call=_build_call(call, request_id, previous, following)
        )
    return _Plan(job_id, parts, out_format, engine, pause_ms, dialogue)


def _pause(client: _BaseClient, given: int | None, dialogue: bool) -> int:
    if given is None:
        given = client.settings.pause_ms
    if given is None:
        return DIALOGUE_PAUSE_MS if dialogue else 0
    if isinstance(given, bool) or not isinstance(given, int) or not 0 <= given <= MAX_PAUSE_MS:
        raise InvalidInputError(
            f"pause_ms must be a whole number of milliseconds from 0 to {MAX_PAUSE_MS:,}.",
            field="pause_ms",
        )
    return given


def _look_up(client: _BaseClient, plan: _Plan) -> None:
    """Find the parts paid before (blocking: the store), estimate the rest."""
    spend = client._spend
    for part in plan.parts:
        part.key = _memory_key(client, part.job)
        if part.key is not None and spend.remembers_parts:
            part.remembered = spend.remembered_part(part.key)
        if part.remembered is None:
            part.estimate = spend.estimate(part.job.model, part.job.characters)


def _reserve(client: _BaseClient, plan: _Plan) -> None:
    """Reserve every part still to pay before the first request: all or none (blocking).

    One reservation per model (one for a text; a dialogue whose lines use several models
    has one each, and a refusal gives back those already taken); each part then holds
    its share of its model's reservation, settled or given back part by part.
    """
    spend = client._spend
    to_send = [p for p in plan.parts if p.remembered is None]
    by_model: dict[str, list[_Part]] = {}
    for part in to_send:
        by_model.setdefault(part.job.model, []).append(part)
    try:
        for model, parts in by_model.items():
            chars = sum(p.job.characters for p in parts)
            hold = spend.reserve(model, chars)
            plan.holds.append(hold)
            if hold is not NO_HOLD:
                for part in parts:
                    part.hold = Hold(hold.amount * part.job.characters / max(1, chars))
    except BaseException:
        for part in to_send:
            part.hold = NO_HOLD
        for hold in plan.holds:
            spend.release(hold)
        plan.holds.clear()
        raise
    timeout = client.settings.timeout
    rounds = max(1, math.ceil(len(to_send) / client.settings.max_concurrency))
    plan.budget_seconds = timeout * rounds
    plan.deadline = time.monotonic() + plan.budget_seconds


def _release_rest(client: _BaseClient, plan: _Plan) -> None:
    """Give back the shares of parts never started, and the shared reservation (once)."""
    for part in plan.parts:
        _skip(client, plan, part)
    with plan.lock:
        release_whole = not plan.released
        plan.released = True
    if release_whole:
        for hold in plan.holds:  # the amounts went back part by part
            if hold.reservation is not None or hold.probe is not None:
                client._spend.release(Hold(0.0, hold.reservation, hold.probe))


def _skip(client: _BaseClient, plan: _Plan, part: _Part) -> None:
    """A part not yet started will not be: its share of the reservation goes back (once)."""
    with plan.lock:
        if part.state != "pending":
            return
        part.state = "skipped"
        hold, part.hold = part.hold, NO_HOLD
    client._spend.release(hold)


def _start(client: _BaseClient, plan: _Plan, part: _Part) -> bool:
    """Mark ``part`` running, unless the job stopped (then it is skipped)."""
    with plan.lock:
        if part.state == "pending" and not plan.stop.is_set():
            part.state = "running"
            return True
    _skip(client, plan, part)
    return False


def _reuse_failed(client: _BaseClient, part: _Part) -> None:
    """A remembered part whose audio is gone (an expired URL): it is made again."""
    spend = client._spend
    part.remembered = None
    part.estimate = spend.estimate(part.job.model, part.job.characters)
    part.hold = spend.reserve(part.job.model, part.job.characters)


def _part_deadline(client: _BaseClient, plan: _Plan) -> float:
    now = time.monotonic()
    if now >= plan.deadline:
        raise APITimeoutError(
            f"The call did not finish within its {plan.budget_seconds:g} s limit (the timeout "
            "times the rounds of parts). Try again, or raise OCTAVE_TOOLS_TIMEOUT.",
            timeout=plan.budget_seconds,
        )
    return min(plan.deadline, now + client.settings.timeout)


def _file_path(url: str) -> Path | None:
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    return Path(_url2pathname(unquote(parts.path)))


def _fetch(client: _BaseClient, plan: _Plan, part: _Part, speech: Speech) -> Path:
    """The part's audio as a file: its own when local, else downloaded to the temp folder."""
    local = _file_path(speech.audio_url)
    if local is not None:
        if not local.is_file():
            raise APIError(f"The audio file of part {part.index + 1} is gone ({local}).")
        return local
    assert plan.tmp is not None and plan.fetcher is not None
    data = plan.fetcher.fetch(speech.audio_url)
    path = plan.tmp / f"part-{part.index:05d}.{plan.fmt}"
    path.write_bytes(data)
    return path


def _settled_part(client: _BaseClient, part: _Part, speech: Speech) -> None:
    """After a part was paid: remember it (the cache has it when on)."""
    spend = client._spend
    if part.key is not None and spend.cache_ttl <= 0:
        spend.remember_part(part.key, speech)


def _clean_up(plan: _Plan) -> None:
    if plan.fetcher is not None:
        plan.fetcher.close()
    if plan.tmp is not None:
        shutil.rmtree(plan.tmp, ignore_errors=True)


# ---------------------------------------------------------------- the sync path


def _work(client: OctaveClient, plan: _Plan, part: _Part, slots: threading.Semaphore) -> None:
    """One part: at most ``max_concurrency`` requests in flight (``slots``); its download
    happens outside them, so the next part's request need not wait for it."""
    spend = client._spend
    try:
        if part.remembered is not None:
            if plan.stop.is_set():
                return
            try:
                part.path = _fetch(client, plan, part, part.remembered)
            except APIError:
                _reuse_failed(client, part)
            else:
                part.speech = part.remembered
                spend.settle(part.remembered, part.text, None, job_id=plan.job_id)
                part.state = "done"
                return
        with slots:
            if not _start(client, plan, part):
                return
            try:
                speech = client._run(part.job, _part_deadline(client, plan))
            except BaseException:
                spend.release(part.hold)
                raise
        spend.settle(speech, part.text, part.job.cache_key, part.hold, plan.job_id)
        part.speech = speech
        _settled_part(client, part, speech)
        part.path = _fetch(client, plan, part, speech)
        part.state = "done"
    except BaseException as exc:
        part.state = "failed"
        part.error = exc
        plan.stop.set()
        raise


def _execute(client: OctaveClient, plan: _Plan, on_progress: ProgressCallback | None) -> Speech:
    import concurrent.futures

    total = len(plan.parts)
    plan.tmp = Path(tempfile.mkdtemp(prefix="octave-tools-parts-"))
    plan.fetcher = AudioFetcher(client.settings)
    if plan.engine != "local":  # its TLS setup overlaps the first requests
        threading.Thread(target=plan.fetcher.warm, daemon=True).start()
    # Twice the requests in flight: a part downloading its audio leaves its slot free.
    slots = threading.Semaphore(client.settings.max_concurrency)
    workers = min(2 * client.settings.max_concurrency, total)
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="octave-tools-part")
    try:
        if on_progress is not None:
            on_progress(0, total)
        futures = {  # each in a copy of this context: the call's deadline goes along
            pool.submit(contextvars.copy_context().run, _work, client, plan, part, slots): part
            for part in plan.parts
        }
        done = 0
        for future in concurrent.futures.as_completed(futures):
            if futures[future].state == "done":
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
    except BaseException:  # Ctrl-C, or on_progress raised: stop the parts not yet sent
        plan.stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        _release_rest(client, plan)
        shutil.rmtree(plan.tmp, ignore_errors=True)
        raise
    pool.shutdown()
    plan.fetcher.close()
    _release_rest(client, plan)
    try:
        return _finish(client, plan)
    finally:
        shutil.rmtree(plan.tmp, ignore_errors=True)


def synthesize_text(
    client: OctaveClient,
    text: str,
    voice: str | None,
    fmt: str | None,
    model: str | None,
    speed: float | None,
    on_progress: ProgressCallback | None,
) -> Speech:
    """``OctaveClient.synthesize`` for text longer than one request takes."""
    if model is not None:
        model = client._check_model(model)
    segments = _text_segments(client, text, voice, model)
    plan = _plan(client, segments, fmt, speed, _pause(client, None, False), False)
    return _run_sync(client, plan, on_progress)


def synthesize_dialogue(
    client: OctaveClient,
    lines: object,
    fmt: str | None,
    model: str | None,
    pause_ms: int | None,
    on_progress: ProgressCallback | None,
) -> Speech:
    """``OctaveClient.synthesize_dialogue``."""
    if model is not None:
        model = client._check_model(model)
    pause = _pause(client, pause_ms, True)
    segments = _dialogue_segments(client, lines, model)
    plan = _plan(client, segments, fmt, None, pause, True)
    return _run_sync(client, plan, on_progress)


def _run_sync(client: OctaveClient, plan: _Plan, on_progress: ProgressCallback | None) -> Speech:
    # The store's operations run under a call's deadline: one timeout for the look-ups and
    # the reservation, then the whole call's (see _reserve) for the parts.
    with call_deadline(client.settings.timeout):
        _look_up(client, plan)
        _reserve(client, plan)
    try:
        with call_deadline(plan.budget_seconds):
            return _execute(client, plan, on_progress)
    finally:
        _release_rest(client, plan)


# ---------------------------------------------------------------- the async path


async def _awork(
    client: AsyncOctaveClient, plan: _Plan, part: _Part, slots: anyio.Semaphore
) -> None:
    """``_work`` for the async client."""
    import anyio

    spend = client._spend
    if part.remembered is not None:
        if plan.stop.is_set():
            return
        try:
            part.path = await anyio.to_thread.run_sync(_fetch, client, plan, part, part.remembered)
        except APIError:
            await anyio.to_thread.run_sync(_reuse_failed, client, part)
        else:
            part.speech = part.remembered
            await _asettle(client, plan, part.remembered, part.text, None, NO_HOLD)
            part.state = "done"
            return
    async with slots:
        if not _start(client, plan, part):
            return
        try:
            speech = await client._run(part.job, _part_deadline(client, plan))
        except BaseException:
            spend.release(part.hold)  # no shared reservation of its own: in memory only
            raise
    await _asettle(client, plan, speech, part.text, part.job.cache_key, part.hold)
    part.speech = speech
    await anyio.to_thread.run_sync(_settled_part, client, part, speech)
    part.path = await anyio.to_thread.run_sync(_fetch, client, plan, part, speech)
    part.state = "done"


async def _asettle(
    client: AsyncOctaveClient,
    plan: _Plan,
    speech: Speech,
    text: str,
    cache_key: str | None,
    hold: Hold,
) -> None:
    """``spend.settle`` with the job id, off the event loop when it does I/O."""
    import anyio

    spend = client._spend
    if spend.settle_is_cheap(hold, cache_key):
        spend.settle(speech, text, cache_key, hold, plan.job_id)
    else:
        await anyio.to_thread.run_sync(spend.settle, speech, text, cache_key, hold, plan.job_id)


async def _aexecute(
    client: AsyncOctaveClient, plan: _Plan, on_progress: ProgressCallback | None
) -> Speech:
    import anyio

    total = len(plan.parts)
    slots = anyio.Semaphore(client.settings.max_concurrency)
    done = 0
    progress_errors: list[Exception] = []

    async def progress(count: int) -> None:
        if on_progress is not None:
            result = on_progress(count, total)
            if inspect.isawaitable(result):
                await result

    async def one(part: _Part) -> None:
        nonlocal done
        try:
            await _awork(client, plan, part, slots)
        except Exception as exc:
            part.state, part.error = "failed", exc
            plan.stop.set()
            return
        finally:
            _skip(client, plan, part)  # cancelled before it was sent: its share goes back
        if part.state == "done" and not progress_errors:
            done += 1
            try:
                await progress(done)
            except Exception as exc:  # the caller's callback: it ends the call, as in sync
                progress_errors.append(exc)
                plan.stop.set()

    plan.tmp = Path(await anyio.to_thread.run_sync(tempfile.mkdtemp, "", "octave-tools-parts-"))
    plan.fetcher = AudioFetcher(client.settings)
    try:
        await progress(0)
        async with anyio.create_task_group() as tg:
            if plan.engine != "local":  # its TLS setup overlaps the first requests
                tg.start_soon(functools.partial(anyio.to_thread.run_sync, plan.fetcher.warm))
            for part in plan.parts:
                tg.start_soon(one, part)
        if progress_errors:
            raise progress_errors[0]
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_release_rest, client, plan)
        return await anyio.to_thread.run_sync(_finish, client, plan)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_release_rest, client, plan)
            await anyio.to_thread.run_sync(_clean_up, plan)


async def asynthesize_text(
    client: AsyncOctaveClient,
    text: str,
    voice: str | None,
    fmt: str | None,
    model: str | None,
    speed: float | None,
    on_progress: ProgressCallback | None,
) -> Speech:
    """``AsyncOctaveClient.synthesize`` for text longer than one request takes."""
    if model is not None:
        model = client._check_model(model)
    segments = _text_segments(client, text, voice, model)
    plan = _plan(client, segments, fmt, speed, _pause(client, None, False), False)
    return await _run_async(client, plan, on_progress)


async def asynthesize_dialogue(
    client: AsyncOctaveClient,
    lines: object,
    fmt: str | None,
    model: str | None,
    pause_ms: int | None,
    on_progress: ProgressCallback | None,
) -> Speech:
    """``AsyncOctaveClient.synthesize_dialogue``."""
    if model is not None:
        model = client._check_model(model)
    pause = _pause(client, pause_ms, True)
    segments = _dialogue_segments(client, lines, model)
    plan = _plan(client, segments, fmt, None, pause, True)
    return await _run_async(client, plan, on_progress)


async def _run_async(
    client: AsyncOctaveClient, plan: _Plan, on_progress: ProgressCallback | None
) -> Speech:
    import anyio

    with call_deadline(client.settings.timeout):  # worker threads get a copy of it
        await anyio.to_thread.run_sync(_look_up, client, plan)
    try:
        # Shielded (a short store write): a cancel now lands after it, and the finally
        # below gives the reservation back.
        with anyio.CancelScope(shield=True), call_deadline(client.settings.timeout):
            await anyio.to_thread.run_sync(_reserve, client, plan)
        with call_deadline(plan.budget_seconds):
            return await _aexecute(client, plan, on_progress)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_release_rest, client, plan)


# ---------------------------------------------------------------- the result


def _ranges(numbers: Sequence[int]) -> str:
    """``1-3, 5`` for [1, 2, 3, 5]."""
    out: list[str] = []
    start = prev = None
    for n in [*numbers, None]:
        if start is not None and n is not None and prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    return ", ".join(out)


def _paid_note(client: _BaseClient, plan: _Plan) -> tuple[str, tuple[int, ...]]:
    paid = [p for p in plan.parts if p.speech is not None]
    total = len(plan.parts)
    indices = tuple(p.index for p in paid)
    if not paid:
        return " No part was paid.", indices
    credits = sum(float(p.speech.credits_used or 0) for p in paid if p.speech is not None)
    listed = _ranges([i + 1 for i in indices])
    spend = client._spend
    if plan.engine == "local":
        return f" Parts {listed} of {total} were made (the local engine is free).", indices
    if not spend.remembers_parts:
        return (
            f" Parts {listed} of {total} were paid ({credits:,.0f} credits) but are not "
            "remembered (part_ttl is 0 and the cache is off): the same call again pays "
            "for them again.",
            indices,
        )
    window = max(spend.cache_ttl, client.settings.part_ttl)
    return (
        f" Parts {listed} of {total} are paid ({credits:,.0f} credits this time) and "
        f"remembered for {_duration(window)}: the same call again requests only the "
        f"{total - len(paid)} part{'s' if total - len(paid) != 1 else ''} not yet paid.",
        indices,
    )


def _duration(seconds: float) -> str:
    if seconds >= 86_400 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds:g} s"


def _with_message(exc: OctaveError, message: str, paid: tuple[int, ...]) -> OctaveError:
    """A copy of ``exc`` (same class and fields) with ``message``; ``paid_parts`` set."""
    new = type(exc).__new__(type(exc), message)
    new.__dict__.update(exc.__dict__)
    new.message = message
    new.args = (message,)
    new.paid_parts = paid  # type: ignore[attr-defined]
    new.__cause__ = exc
    return new


def _failure(client: _BaseClient, plan: _Plan) -> BaseException | None:
    failed = [p for p in plan.parts if p.error is not None]
    if not failed:
        return None
    first = min(failed, key=lambda p: p.index)
    exc = first.error
    assert exc is not None
    if not isinstance(exc, OctaveError):
        return exc
    note, paid = _paid_note(client, plan)
    where = f"Part {first.index + 1} of {len(plan.parts)}"
    if first.line is not None:
        where += f" (line {first.line + 1})"
    return _with_message(exc, f"{where} failed: {exc.message}{note}", paid)


def _finish(client: _BaseClient, plan: _Plan) -> Speech:
    """Join the parts into one file and make the Speech (blocking), or raise the failure."""
    failure = _failure(client, plan)
    if failure is not None:
        raise failure
    paths = [p.path for p in plan.parts if p.path is not None]
    assert len(paths) == len(plan.parts)
    target = new_audio_path(client.settings.output_dir, plan.fmt)
    try:
        rate = pcm_rate(plan.parts[0].job.model)
        if plan.dialogue:
            paths = _lines_joined(plan, paths, rate)
        join_files(paths, plan.fmt, target, pause_ms=plan.pause_ms, pcm_rate=rate)
    except OctaveError as exc:
        note, paid = _paid_note(client, plan)
        raise _with_message(
            exc, f"The parts could not be joined into one file: {exc.message}{note}", paid
        ) from exc
    _drop_part_files(client, plan)
    return _speech(plan, target)


def _lines_joined(plan: _Plan, paths: list[Path], rate: int) -> list[Path]:
    """One file per dialogue line (its parts joined with no pause): the pause then falls
    between speakers only, not inside a line that took several requests."""
    assert plan.tmp is not None
    out: list[Path] = []
    index = 0
    while index < len(paths):
        line = plan.parts[index].line
        end = index
        while end < len(paths) and plan.parts[end].line == line:
            end += 1
        if end - index == 1:
            out.append(paths[index])
        else:
            joined = plan.tmp / f"line-{line}.{plan.fmt}"
            join_files(paths[index:end], plan.fmt, joined, pause_ms=0, pcm_rate=rate)
            out.append(joined)
        index = end
    return out


def _drop_part_files(client: _BaseClient, plan: _Plan) -> None:
    """Delete part files in the output folder that nothing remembers (local, no cache)."""
    spend = client._spend
    if spend.cache_ttl > 0 or (plan.engine != "local" and client.settings.part_ttl > 0):
        return
    for part in plan.parts:
        if part.speech is not None and (path := _file_path(part.speech.audio_url)) is not None:
            with contextlib.suppress(OSError):
                path.unlink()


def _total(values: list[int | float | None]) -> int | float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _speech(plan: _Plan, target: Path) -> Speech:
    speeches = [p.speech for p in plan.parts if p.speech is not None]
    parts = tuple(
        SpeechPart(
            index=p.index,
            start=p.start,
            end=p.end,
            characters=s.characters,
            audio_url=s.audio_url,
            credits_used=s.credits_used,
            request_id=s.request_id,
            voice=s.voice,
            cached=s.cached,
            speaker=p.speaker,
            line=p.line,
        )
        for p in plan.parts
        if (s := p.speech) is not None
    )
    voices = list(dict.fromkeys(s.voice for s in speeches if s.voice))
    models = list(dict.fromkeys(s.model for s in speeches))
    usd = _total([s.usd_spent for s in speeches])
    return Speech(
        audio_url=target.absolute().as_uri(),
        format=plan.fmt,
        voice=", ".join(voices) if voices else None,
        model=", ".join(models),
        characters=sum(s.characters for s in speeches),
        credits_used=_total([s.credits_used for s in speeches]),
        usd_spent=float(usd) if usd is not None else None,
        request_id=None,
        engine=speeches[0].engine,
        cached=all(s.cached for s in speeches),
        parts=parts,
        job_id=plan.job_id,
    )
