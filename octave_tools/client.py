"""OctaveClient and AsyncOctaveClient: the same logic, only the send loop differs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from typing_extensions import Unpack

from . import _protocol as proto
from . import observe as _observe
from ._body import BodyTooLarge, CappedBody
from ._calltime import call_deadline, current
from ._context import current_key
from ._fallback import Cooldowns, fallback_reason
from ._files import fetch_audio, new_audio_path, write_atomic
from ._redact import shown
from ._settings import LOCAL_FALLBACK, Settings, SettingsOptions, check_options
from ._spend import NO_HOLD, Hold, Spend, reused
from .catalogue import MODELS, UNDOCUMENTED_TEXT_LIMIT
from .errors import APITimeoutError, ConfigurationError, InvalidInputError, OctaveError
from .models import DialogueLine, FallbackStep, Speech, UsageReport, VoiceList
from .voices import VoiceCatalogue, catalogue_for

__all__ = ["AsyncOctaveClient", "OctaveClient"]

logger = logging.getLogger("octave_tools")

# At most 64 connections; 16 kept idle. More idle ones make httpcore's per-response
# pool cleanup quadratic, and with the async client's own queue (``_slots``) a burst
# seldom leaves more than a few connections idle at once, so they are reused anyway.
# Re-measured (bench/floors.py async --quick, 200 concurrent, runs back to back): 16 kept
# idle 437-455 calls/s; all 64 kept idle 92-95 calls/s (httpcore's idle scans dominate).
MAX_CONNECTIONS = 64
MAX_KEEPALIVE = 16
# A health check waits this long for the store at most (less if the call timeout is).
HEALTH_TIMEOUT = 5.0

# Long text goes in parts of at most this many characters on the local engine (which has
# no limit, but a part bounds its memory).
LOCAL_PART_CHARS = 4000

ProgressCallback = Callable[[int, int], object]
"""``on_progress(done, total)``: parts finished of a long-form or dialogue call."""

if TYPE_CHECKING:
    import asyncio
    import concurrent.futures

    import anyio
    import httpx

    from ._deadline import deadline_transport, hard_deadline

    _LIMITS: httpx.Limits

_net_loaded = False


def _load_asyncio() -> None:
    """Import asyncio and anyio as module globals (the async client's first needs)."""
    global asyncio, concurrent, anyio
    import asyncio
    import concurrent.futures

    import anyio


def _load_net() -> None:
    """Import asyncio and the HTTP stack (~100 ms cold, httpx alone up to 150) as module
    globals, once.

    Deferred so that a local-engine call (the CLI speaking offline) and a starting MCP
    server never pay for them; every path that sends calls this first (a no-op after
    the first time).
    """
    global httpx, deadline_transport, hard_deadline, _LIMITS
    global _net_loaded
    _load_asyncio()
    import httpx

    from ._deadline import deadline_transport, hard_deadline

    _LIMITS = httpx.Limits(
        max_connections=MAX_CONNECTIONS,
        max_keepalive_connections=MAX_KEEPALIVE,
        keepalive_expiry=30,
    )
    _net_loaded = True


@dataclass
class _Tried:
    """What a fallback chain has been through: each model that did not speak and why,
    and the first error (raised, with the rest, if no model speaks)."""

    steps: list[FallbackStep] = field(default_factory=list)
    error: OctaveError | None = None

    def fail(self, exc: OctaveError) -> OctaveError:
        """The error to raise: the first one, saying what the models after it did."""
        error = self.error or exc
        after = self.steps[1:] if self.error is not None else self.steps
        if after:
            tried = "; ".join(f"{s.model}: {s.reason}" for s in after)
            error.message = f"{error.message} Fallback did not help: {tried}."
            error.args = (error.message,)
        return error


def _spoken(speech: Speech, tried: _Tried) -> Speech:
    """The Speech of the model that spoke, saying which did not first and why."""
    return (
        speech.model_copy(update={"fallback_from": tuple(tried.steps)}) if tried.steps else speech
    )


@dataclass(frozen=True)
class _Route:
    """One model of a fallback chain and how to call it."""

    model: str
    voice: str | None
    first: bool = False
    local: bool = False


@dataclass(slots=True)
class _Job:
    """One validated call: the request for the API (None for local) and its cache key.

    Never changed once made (not frozen: a frozen dataclass's __init__ costs µs a call).
    """

    text: str
    voice: str | None
    format: str | None
    call: proto.Call | None
    model: str
    characters: int
    cache_key: str | None


def _refuse_for_local(model: str | None, speed: float | None, configured: str) -> None:
    """The local engine speaks one way: a model or speed it cannot honour is an error."""
    if model is not None and model.strip() != configured:
        raise InvalidInputError(
            f"Model {model!r} needs the AIML API, but the offline local engine is in use. Set "
            "AIMLAPI_API_KEY (and OCTAVE_TOOLS_ENGINE=aimlapi or auto), or leave model out.",
            field="model",
        )
    if speed is not None:
        raise InvalidInputError(
            "The offline local engine has no speed option; leave speed out or use the AIML "
            "API with a model that has one.",
            field="speed",
        )


class _BaseClient:
    """Settings, validation, engine choice and response handling; no I/O of its own."""

    def __init__(
        self, *, settings: Settings | None = None, **options: Unpack[SettingsOptions]
    ) -> None:
        if settings is not None and options:
            check_options(options)
            raise TypeError("Pass settings= or individual settings, not both.")
        self._settings = settings or Settings.load(**options)
        self._spend = Spend(self._settings, client_limit=self._settings.max_credits)
        self._cooldowns = Cooldowns(lambda: self._spend.store, self._settings.fallback_cooldown)
        # Text longer than this takes the long-form path (the configured model's limit).
        self._split_at = self._split_limit(None)
        self._health_lock = threading.Lock()
        self._health_probe: concurrent.futures.Future[None] | None = None

    def _split_limit(self, model: str | None) -> int:
        """Characters one request of ``model`` (default: the configured one) takes here.

        ``chunk_chars`` when set (never above the model's limit), else the model's limit
        (the conservative UNDOCUMENTED_TEXT_LIMIT when its docs give none;
        LOCAL_PART_CHARS when the local engine may serve the call),
        never more than ``max_text_chars``. Settings only: no engine is loaded.
        """
        s = self._settings
        if s.engine == "local" or (s.engine == "auto" and not s.has_key):
            limit = s.chunk_chars or LOCAL_PART_CHARS
        else:
            name = s.model if model is None else model.strip() if isinstance(model, str) else ""
            spec = MODELS.get(name)
            # The documented limit, or the conservative one for a model with none.
            most = spec.text_limit if spec is not None else UNDOCUMENTED_TEXT_LIMIT
            limit = min(s.chunk_chars or most, most)
        return min(limit, s.max_text_chars)

    @property
    def settings(self) -> Settings:
        """The resolved settings (the key is never shown)."""
        return self._settings

    def __repr__(self) -> str:
        s = self._settings
        key = "set" if s.has_key else "missing"
        return (
            f"{type(self).__name__}(model={s.model!r}, base_url={s.base_url!r}, "
            f"engine={s.engine!r}, api_key=<{key}>)"
        )

    def active_engine(self) -> str:
        """``"aimlapi"`` or ``"local"``: the engine a call would use now (needs no key)."""
        return self._engine(strict=False)

    def voice_catalogue(self, model: str | None = None) -> VoiceCatalogue | None:
        """The voices of the engine and model (default: the configured one) a call would use.

        Needs no API key; None when the model's catalogue is unknown.
        """
        if self._engine(strict=False) == "local":
            from . import _local

            return _local.catalogue()
        return catalogue_for(self._check_model(model))

    def download(self, speech: Speech) -> bytes:
        """The audio bytes behind ``speech.audio_url`` (blocking; never sends the API key).

        The URL is vetted like the API's answer was, every redirect hop included.
        """
        return fetch_audio(speech.audio_url, self._settings)

    def allowed_models(self) -> tuple[str, ...]:
        """The models a call may name: the configured one first, then ``models``; on a
        shared server, a client key limited to some models gets those."""
        grant = current_key.get()
        if grant is not None and grant.key.models:
            return grant.key.models
        s = self._settings
        return tuple(dict.fromkeys((s.model, *s.models)))

    def _check_model(self, model: str | None) -> str:
        """``model`` or the configured one; refused when the ``models`` setting excludes it
        (or, on a shared server, the caller's client key)."""
        grant = current_key.get()
        if grant is not None:
            model = grant.model(model, self._settings.model)
        if model is None:
            return self._settings.model
        allowed = self.allowed_models()
        # Compared as the request builder will read it (stripped); passed on as given.
        wanted = model.strip() if isinstance(model, str) else model
        if self._settings.models and wanted not in allowed:
            raise InvalidInputError(
                f"Model {shown(model)} is not offered here. Use one of: {', '.join(allowed)} "
                f"(or leave model out for {allowed[0]}).",
                field="model",
            )
        return model

    def usage_report(self, since: str | float | None = "7d", by: str = "day") -> UsageReport:
        """Spend in the ledger since ``since`` (``"7d"``, ``"24h"``), grouped by ``by``
        (day, model, voice, engine or client key), across every process sharing the ledger.

        Blocking (it reads the ledger): the async client's ``usage()`` runs it in a thread.
        """
        with call_deadline(self._settings.timeout):
            return self._spend.usage(since, by)

    def health(self, timeout: float | None = None) -> None:
        """Return if the ledger store answers a query, else raise OctaveError (blocking).

        For a server's health check: one cheap read of the store (none with the ledger
        off), given ``timeout`` seconds (default: HEALTH_TIMEOUT, or the call timeout if
        shorter). Concurrent checks share one read in flight, so a store that does not
        answer never piles up checks: each caller waits at most its own ``timeout``.
        The error names the store without its password.
        """
        import concurrent.futures

        limit = min(self._settings.timeout, HEALTH_TIMEOUT) if timeout is None else timeout
        with self._health_lock:
            probe = self._health_probe
            if probe is None:
                probe = self._health_probe = concurrent.futures.Future()
                threading.Thread(
                    target=self._run_health_probe,
                    args=(probe, limit),
                    name="octave-tools-health",
                    daemon=True,
                ).start()
        try:
            probe.result(timeout=limit)
        except concurrent.futures.TimeoutError:
            raise self._health_late(limit) from None

    def _health_late(self, limit: float) -> ConfigurationError:
        return ConfigurationError(
            f"The usage ledger at {self._spend.ledger_name} did not answer within {limit:g} s."
        )

    def _run_health_probe(self, probe: concurrent.futures.Future[None], limit: float) -> None:
        try:
            with call_deadline(limit):
                self._check_store()
        except BaseException as exc:
            with self._health_lock:
                self._health_probe = None
            probe.set_exception(exc)
        else:
            with self._health_lock:
                self._health_probe = None
            probe.set_result(None)

    def _check_store(self) -> None:
        spend = self._spend
        spend.usage("1s", "day")  # a store that cannot be reached raises here
        problem = getattr(spend.store, "unusable_reason", None)  # SQLite degrades instead
        if problem:
            raise ConfigurationError(
                f"The usage ledger at {spend.ledger_name} is unusable: {problem}."
            )

    def budget_left(self) -> float | None:
        """Credits left in the daily budget (``max_credits_per_day``) now, across every
        process on the store; None when no daily budget is set. Blocking (reads the store).
        """
        return self._spend.budget_left()

    def voices(self, model: str | None = None) -> VoiceList:
        """The voices a call would be checked against, with the default a call gets.

        For ``model`` (default: the configured one). Needs no API key and makes no
        request. A configured default voice is shown in its canonical spelling, or as
        given when it is not valid for the configured model (each call then says why).
        """
        catalogue = self.voice_catalogue(model)
        configured = self._settings.voice if model in (None, self._settings.model) else None
        name = self._settings.model if model is None else model
        if catalogue is None:
            return VoiceList(model=name, default=configured, voices=[])
        default = catalogue.default
        if configured is not None:
            try:
                default = catalogue.resolve(configured)
            except InvalidInputError:
                default = configured
        return VoiceList(
            model=catalogue.model,
            default=default,
            voices=list(catalogue.voices),
            custom_voice_max_chars=None if catalogue.closed else catalogue.max_custom_chars,
            custom_voices=not catalogue.closed,
        )

    def _engine(self, *, strict: bool = True) -> str:
        """Which engine serves a call under the current settings.

        With ``strict`` (a real call), a choice that cannot work raises
        ConfigurationError; without it the AIML API is assumed.
        """
        choice = self._settings.engine
        if choice != "auto":
            return choice
        if self._settings.has_key:
            return "aimlapi"
        from . import _local

        if _local.is_available():
            if strict:
                _local.announce_auto_choice()
            return "local"
        if not strict:
            return "aimlapi"
        raise ConfigurationError(
            "No AIML API key and no local engine. Either set AIMLAPI_API_KEY to use "
            "hume/octave-2, or install the offline engine with "
            "pip install 'octave-tools[local]'."
        )

    def _plan(
        self,
        text: str,
        voice: str | None,
        fmt: str | None,
        model: str | None = None,
        speed: float | None = None,
        *,
        route: _Route | None = None,
    ) -> _Job:
        """Validate and route one call; raises before anything is spent.

        ``route`` is set for a fallback attempt: its model is the operator's choice (not
        checked against ``models``), and ``local`` sends it to the offline engine.
        """
        if route is None and (model is not None or current_key.get() is not None):
            model = self._check_model(model)
        if (route is not None and route.local) or self._engine() == "local":
            from . import _local

            if route is None:
                _refuse_for_local(model, speed, self._settings.model)
            text = proto.validate_text(text)
            call = None
            model_key, voice_key, fmt_key, chars = _local.MODEL, voice, fmt or "wav", len(text)
        else:
            call = proto.prepare(self._settings, text, voice, fmt, model=model, speed=speed)
            model_key, voice_key, chars = call.model, call.voice, call.text_chars
            # The speed is part of what was asked; without one the key is as it always was.
            fmt_key = call.format if speed is None else f"{call.format};speed={float(speed)!r}"
        key = None
        if self._spend.cache_ttl > 0:
            engine = "aimlapi" if call is not None else "local"
            key = self._spend.cache_key(engine, model_key, voice_key, fmt_key, text)
        return _Job(text, voice, fmt, call, model_key, chars, key)

    def _deadline(self) -> float:
        """When the call must be over: set when it started (store time counts too)."""
        call = current()
        return call.deadline if call is not None else time.monotonic() + self._settings.timeout

    def _follower_timeout(self) -> APITimeoutError:
        timeout = self._settings.timeout
        return APITimeoutError(
            f"The same call was already being made and did not finish within this call's "
            f"{timeout:g} s limit. Try again, or raise OCTAVE_TOOLS_TIMEOUT.",
            timeout=timeout,
        )

    def _fallback_chain(self, model: str | None) -> list[_Route]:
        """The asked model, then the ``fallback`` models not already in the chain."""
        first = self._check_model(model)
        chain = [_Route(first, None, first=True)]
        grant = current_key.get()
        allowed = grant.key.models if grant is not None else ()
        for name, voice in self._settings.fallback:
            if allowed and name not in allowed and name != LOCAL_FALLBACK:
                continue  # a client key's models bound its fallbacks too
            if name != first.strip():
                chain.append(_Route(name, voice, local=name == LOCAL_FALLBACK))
        return chain

    @staticmethod
    def _attempt_args(
        route: _Route, voice: str | None, fmt: str | None, speed: float | None
    ) -> tuple[str | None, str | None, str | None, float | None]:
        """(voice, format, model, speed) for one attempt of the chain.

        The first is the call as asked. A fallback speaks with its configured voice or its
        own default, keeps the format and speed where it can give them, else its defaults.
        """
        if route.first:
            return voice, fmt, route.model, speed
        if route.local:
            return None, fmt if fmt == "wav" else None, None, None
        spec = MODELS.get(route.model)
        keep_fmt = fmt if spec is not None and fmt is not None and fmt in spec.formats else None
        keep_speed = speed if spec is not None and spec.speed is not None else None
        return route.voice, keep_fmt, route.model, keep_speed

    def _record_attempt(self, route: _Route, exc: OctaveError, job: _Job | None) -> None:
        """The ledger keeps the attempt that failed, beside the one that then spoke."""
        if job is None or job.call is None:
            return
        try:
            self._spend.record_fallback(
                job.model,
                job.call.voice,
                job.call.format,
                job.characters,
                job.text,
                getattr(exc, "request_id", None),
            )
        except OctaveError:  # the record is a courtesy: it never fails the call
            logger.debug("octave-tools: a failed attempt was not recorded", exc_info=True)

    def _fallback_step(
        self,
        route: _Route,
        exc: OctaveError,
        tried: _Tried,
        last: bool,
        job: _Job | None = None,
    ) -> None:
        """Note why ``route`` did not speak; raise when the chain ends here.

        The asked model's invalid input, auth and budget errors end the call as they are:
        no other model is tried. A fallback model that cannot take the call (its limits,
        its budget, no local engine) is passed over. When no model spoke, the first
        model's error is raised, saying what the others did.
        """
        reason = fallback_reason(exc)
        if reason is not None:
            with call_deadline(self._settings.timeout):  # the store: no longer than a call
                self._cooldowns.failed(route.model)
                self._record_attempt(route, exc, job)
        elif route.first:
            raise exc
        else:
            reason = f"cannot take this call ({exc.message.rstrip('.')})"
        logger.warning("octave-tools: %s did not speak (%s)", route.model, reason)
        if tried.error is None and not tried.steps:
            tried.error = exc
        tried.steps.append(FallbackStep(model=route.model, reason=reason))
        if last:
            raise tried.fail(exc)

    def _cooled_down(self, model: str) -> None:
        with call_deadline(self._settings.timeout):
            self._cooldowns.succeeded(model)

    def _admit(self) -> None:
        """Count the call against the client key's requests per minute (a shared server)."""
        grant = current_key.get()
        if grant is not None:
            with call_deadline(self._settings.timeout):
                grant.admit()

    def _key_model(self, model: str | None) -> str | None:
        """For a client key limited to some models, the model it will use (so long text
        is split for that model's limit)."""
        if model is None and current_key.get() is not None:
            return self._check_model(None)
        return model

    def _skip_cooling(self, route: _Route, tried: _Tried) -> bool:
        with call_deadline(self._settings.timeout):
            left = self._cooldowns.cooling(route.model)
        if left is None:
            return False
        reason = f"failing; skipped for {left:.0f} s"
        tried.steps.append(FallbackStep(model=route.model, reason=reason))
        return True

    def _next_step(
        self, call: proto.Call, raw: proto.RawResponse, attempt: int, deadline: float
    ) -> Speech | float:
        """A Speech when done, seconds to wait before retrying, or raise."""
        if 200 <= raw.status_code < 300:
            result = proto.interpret_success(call, raw, self._settings.base_url)
            if isinstance(result, proto.AudioPayload):
                path = write_atomic(
                    new_audio_path(self._settings.output_dir, result.extension), result.data
                )
                return proto.speech_from_file(call, result, path.as_uri())
            return result
        retry_after = proto.parse_retry_after(raw.headers, now=time.time())
        if proto.should_retry(raw.status_code):
            wait = proto.retry_wait(
                attempt, self._settings.max_retries, retry_after, deadline - time.monotonic()
            )
            if wait is not None:
                if _observe.SINKS:
                    _observe.report_retry(call.model, str(raw.status_code))
                logger.info(
                    "octave-tools: %s from the API, retry %d in %.2f s",
                    raw.status_code,
                    attempt + 1,
                    wait,
                )
                return wait
        raise proto.status_error(call, raw, retry_after)

    def _after_transport_error(
        self, call: proto.Call, exc: Exception, attempt: int, deadline: float
    ) -> float:
        """Seconds to wait before retrying a failed send, or raise its typed error.

        Raised ``from None``: httpx exceptions carry the request, headers and all.
        """
        if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
            raise proto.timeout_error(call, self._settings.timeout) from None
        wait = proto.retry_wait(
            attempt, self._settings.max_retries, None, deadline - time.monotonic()
        )
        if wait is None:
            raise proto.connection_error(call, exc, attempt + 1) from None
        if _observe.SINKS:
            _observe.report_retry(call.model, type(exc).__name__)
        logger.info("octave-tools: %s, retry %d in %.2f s", type(exc).__name__, attempt + 1, wait)
        return wait


class OctaveClient(_BaseClient):
    """Blocking client for the AIML API text-to-speech endpoint.

    Settings come from the arguments, then the environment (``AIMLAPI_API_KEY``,
    ``OCTAVE_TOOLS_*``). Pass ``http_client`` to use your own ``httpx.Client``;
    it is then yours to close.
    """

    def __init__(
        self,
        *,
        http_client: httpx.Client | None = None,
        settings: Settings | None = None,
        **options: Unpack[SettingsOptions],
    ) -> None:
        super().__init__(settings=settings, **options)
        self._owns_http = http_client is None
        # Built on first use: its TLS setup costs tens of ms that a local-engine
        # call, `voices` or a starting MCP server should not pay.
        self._http: httpx.Client | None = http_client
        self._inflight: dict[str, concurrent.futures.Future[Speech]] = {}
        self._inflight_lock = threading.Lock()

    def synthesize(
        self,
        text: str,
        *,
        voice: str | None = None,
        format: str | None = None,
        model: str | None = None,
        speed: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Speech:
        """Turn ``text`` into speech and return where the audio is.

        ``model`` picks any id in ``octave_tools.MODELS`` for this call (default: the
        configured one); ``voice``, ``format`` and ``speed`` (1.0 = normal) are checked
        against that model and mapped into its own fields. Raises InvalidInputError
        before any request for bad arguments, BudgetExceededError when a spend limit
        would be passed, and another OctaveError subclass when the call fails.

        Text longer than one request takes (the model's limit, or ``chunk_chars``; up to
        ``max_text_chars``) is split at paragraphs, sentences, clauses or spaces, the parts
        are synthesised ``max_concurrency`` at a time and joined into one file; the
        result's ``parts`` say which text each request spoke and what it cost, and
        ``on_progress(done, total)`` is called as parts finish. The whole call may take
        ``timeout`` times the number of rounds, ``ceil(parts / max_concurrency)``.

        With the ``fallback`` setting, a call that fits one request and fails for a reason
        another model could fix moves on to the next model (``Speech.fallback_from`` says
        which were tried and why). Long text retries its parts instead.
        """
        self._admit()  # a client key's requests per minute, shared by every replica
        model = self._key_model(model)
        if isinstance(text, str) and len(text) > (
            self._split_at if model is None else self._split_limit(model)
        ):
            from . import _longform

            return _longform.synthesize_text(self, text, voice, format, model, speed, on_progress)
        if self._settings.fallback:
            return self._with_fallback(text, voice, format, model, speed)
        return self._synthesize(self._plan(text, voice, format, model, speed))

    def _with_fallback(
        self,
        text: str,
        voice: str | None,
        fmt: str | None,
        model: str | None,
        speed: float | None,
    ) -> Speech:
        chain = self._fallback_chain(model)
        tried = _Tried()
        for index, route in enumerate(chain):
            last = index == len(chain) - 1
            if not last and self._skip_cooling(route, tried):
                continue
            job = None
            try:
                args = self._attempt_args(route, voice, fmt, speed)
                job = self._plan(text, *args, route=route)
                speech = self._synthesize(job)
            except OctaveError as exc:
                self._fallback_step(route, exc, tried, last, job)
                continue
            self._cooled_down(route.model)
            return _spoken(speech, tried)
        raise AssertionError("unreachable: the last model raises or returns")

    def _synthesize(self, job: _Job) -> Speech:
        # From here the call's time runs: the store, a coalesced leader and the API share it.
        with call_deadline(self._settings.timeout):
            return self._synthesize_job(job)

    def _synthesize_job(self, job: _Job) -> Speech:
        key = job.cache_key
        if key is None:
            return self._spend_and_run(job)
        hit = _observe.in_store("cache.get", self._spend.cached, key)
        if hit is not None:
            if _observe.SINKS:
                _observe.report_cache_hit(job.model)
            self._spend.settle(hit, job.text, None)
            return hit
        import concurrent.futures  # only calls with the cache on get here

        with self._inflight_lock:
            leader = self._inflight.get(key)
            if leader is None:
                future: concurrent.futures.Future[Speech] = concurrent.futures.Future()
                self._inflight[key] = future
        if leader is not None:
            try:  # waits no longer than this call may take
                earlier = leader.result(timeout=max(0.0, self._deadline() - time.monotonic()))
            except concurrent.futures.TimeoutError:
                raise self._follower_timeout() from None
            speech = reused(earlier)  # a coalesced duplicate
            if _observe.SINKS:
                _observe.report_coalesced(job.model)
            self._spend.settle(speech, job.text, None)
            return speech
        try:
            speech = self._lead_and_run(job, key)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(speech)
            return speech
        finally:
            with self._inflight_lock:
                self._inflight.pop(key, None)

    def _lead_and_run(self, job: _Job, key: str) -> Speech:
        """Make the call, unless another replica is making the same one right now."""
        token, earlier = self._spend.follow_or_lead(key)
        if earlier is not None:
            if _observe.SINKS:
                _observe.report_coalesced(job.model)
            self._spend.settle(earlier, job.text, None)
            return earlier
        speech: Speech | None = None
        try:
            speech = self._spend_and_run(job)
        finally:
            self._spend.finish_lead(key, token, speech)
        return speech

    def _spend_and_run(self, job: _Job) -> Speech:
        held = _observe.in_store("budget.reserve", self._spend.reserve, job.model, job.characters)
        try:
            speech = self._run(job)
        except BaseException:
            self._spend.release(held)
            raise
        _observe.in_store(
            "ledger.settle", self._spend.settle, speech, job.text, job.cache_key, held
        )
        return speech

    def synthesize_dialogue(
        self,
        lines: Sequence[DialogueLine | Mapping[str, Any]],
        *,
        format: str | None = None,
        model: str | None = None,
        pause_ms: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Speech:
        """Speak ``lines`` in order, each in its own voice, into one audio file.

        Each line is a ``DialogueLine(voice, text, model=None, speaker=None)`` or a mapping
        with those keys. Every line is checked (voice, text, model) before anything is
        sent; an error names the line ("line 3: unknown voice ..."). Long lines are split
        like long text; ``pause_ms`` of silence (default: the ``pause_ms`` setting, else
        400) goes between lines. Budget, cache, parts and progress as in ``synthesize``.
        """
        from . import _longform

        self._admit()
        return _longform.synthesize_dialogue(self, lines, format, model, pause_ms, on_progress)

    def _run(self, job: _Job, deadline: float | None = None) -> Speech:
        call = job.call
        if call is None:
            from . import _local

            return _local.synthesize(
                job.text, voice=job.voice, format=job.format, settings=self._settings
            )
        if not _net_loaded:
            _load_net()
        if deadline is None:
            deadline = self._deadline()
        attempt = 0
        sinks = _observe.SINKS
        while True:
            started = time.monotonic() if sinks else 0.0
            try:
                raw = self._send(call, deadline)
            except (httpx.HTTPError, TimeoutError) as exc:
                if sinks:
                    _observe.report_upstream(call.model, None, time.monotonic() - started)
                wait = self._after_transport_error(call, exc, attempt, deadline)
            else:
                if sinks:
                    _observe.report_upstream(
                        call.model, raw.status_code, time.monotonic() - started
                    )
                step = self._next_step(call, raw, attempt, deadline)
                if isinstance(step, Speech):
                    return step
                wait = step
            time.sleep(wait)
            attempt += 1

    def usage(self, since: str | float | None = "7d", by: str = "day") -> UsageReport:
        """Spend in the ledger since ``since`` (``"7d"``, ``"24h"``), grouped by ``by``
        (day, model, voice, engine or client key), across every process sharing the ledger."""
        return self.usage_report(since, by)

    def _send(self, call: proto.Call, deadline: float) -> proto.RawResponse:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        http = self._http
        if http is None:
            with self._inflight_lock:
                if self._http is None:
                    self._http = httpx.Client(
                        transport=deadline_transport(_LIMITS), follow_redirects=False
                    )
                http = self._http
        with (
            hard_deadline(deadline),
            http.stream(
                "POST", call.url, content=call.body, headers=call.headers, timeout=remaining
            ) as response,
        ):
            # One pass over httpx.Headers (each lookup there decodes every header).
            headers = dict(response.headers.items())
            try:
                body = CappedBody(proto.body_limit(headers), headers)
                for chunk in response.iter_bytes():
                    body.feed(chunk)
                    if time.monotonic() > deadline:
                        raise TimeoutError
            except BodyTooLarge as exc:
                raise proto.too_large_error(call, response.status_code, exc.limit) from None
            return proto.RawResponse(response.status_code, headers, body.result())

    def close(self) -> None:
        """Close the HTTP connections this client opened (not an injected client)."""
        if self._owns_http and self._http is not None:
            self._http.close()

    def __enter__(self) -> OctaveClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_T = TypeVar("_T")


async def _in_thread(work: Callable[[], _T], *, undo: Callable[[_T], object]) -> _T:
    """``work()`` in a worker thread; if the caller is cancelled meanwhile, ``undo`` its result.

    A thread cannot be stopped: a reservation or a lead it takes after the caller gave
    up would otherwise be held until its lease runs out.
    """
    future = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:

        def cleanup(done: asyncio.Future[_T]) -> None:
            if not done.cancelled() and done.exception() is None:
                threading.Thread(target=undo, args=(done.result(),), daemon=True).start()

        future.add_done_callback(cleanup)
        raise


class AsyncOctaveClient(_BaseClient):
    """The asyncio twin of OctaveClient: same arguments, same results, same errors."""

    def __init__(
        self,
        *,
        http_client: httpx.AsyncClient | None = None,
        settings: Settings | None = None,
        **options: Unpack[SettingsOptions],
    ) -> None:
        super().__init__(settings=settings, **options)
        _load_asyncio()  # the HTTP stack waits for the first call (see _run)
        self._owns_http = http_client is None
        self._http: httpx.AsyncClient | None = http_client  # built on first use
        # Calls beyond the pool size wait here, not in httpcore's queue, whose
        # hand-out scans every connection for every queued request (quadratic).
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS) if http_client is None else None
        self._inflight: dict[str, asyncio.Future[Speech]] = {}

    async def synthesize(
        self,
        text: str,
        *,
        voice: str | None = None,
        format: str | None = None,
        model: str | None = None,
        speed: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Speech:
        """Turn ``text`` into speech and return where the audio is (see OctaveClient).

        ``on_progress(done, total)`` may return an awaitable; it is awaited.
        """
        if current_key.get() is not None:
            await asyncio.to_thread(self._admit)
        model = self._key_model(model)
        if isinstance(text, str) and len(text) > (
            self._split_at if model is None else self._split_limit(model)
        ):
            from . import _longform

            return await _longform.asynthesize_text(
                self, text, voice, format, model, speed, on_progress
            )
        if self._settings.fallback:
            return await self._with_fallback(text, voice, format, model, speed)
        return await self._synthesize(self._plan(text, voice, format, model, speed))

    async def _with_fallback(
        self,
        text: str,
        voice: str | None,
        fmt: str | None,
        model: str | None,
        speed: float | None,
    ) -> Speech:
        chain = self._fallback_chain(model)
        tried = _Tried()
        for index, route in enumerate(chain):
            last = index == len(chain) - 1
            # The failure record may live in the store: read and written off the loop.
            if not last and await asyncio.to_thread(self._skip_cooling, route, tried):
                continue
            job = None
            try:
                args = self._attempt_args(route, voice, fmt, speed)
                job = self._plan(text, *args, route=route)
                speech = await self._synthesize(job)
            except OctaveError as exc:
                await asyncio.to_thread(self._fallback_step, route, exc, tried, last, job)
                continue
            await asyncio.to_thread(self._cooled_down, route.model)
            return _spoken(speech, tried)
        raise AssertionError("unreachable: the last model raises or returns")

    async def _synthesize(self, job: _Job) -> Speech:
        # From here the call's time runs: the store, a coalesced leader and the API share it.
        with call_deadline(self._settings.timeout):
            return await self._synthesize_job(job)

    async def _synthesize_job(self, job: _Job) -> Speech:
        key = job.cache_key
        if key is None:
            return await self._spend_and_run(job)
        hit = await asyncio.to_thread(_observe.in_store, "cache.get", self._spend.cached, key)
        if hit is not None:
            if _observe.SINKS:
                _observe.report_cache_hit(job.model)
            await self._settle(hit, job.text, None)
            return hit
        while (leader := self._inflight.get(key)) is not None:
            try:  # waits no longer than this call may take
                left = max(0.0, self._deadline() - time.monotonic())
                earlier = await asyncio.wait_for(asyncio.shield(leader), left)
            except asyncio.TimeoutError:  # not the builtin before Python 3.11
                raise self._follower_timeout() from None
            except asyncio.CancelledError:
                if leader.cancelled():
                    continue  # the leading caller was cancelled, not this one: go on alone
                raise
            speech = reused(earlier)  # a coalesced duplicate
            if _observe.SINKS:
                _observe.report_coalesced(job.model)
            await self._settle(speech, job.text, None)
            return speech
        future: asyncio.Future[Speech] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            speech = await self._lead_and_run(job, key)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: no warning when nobody was waiting
            raise
        else:
            future.set_result(speech)
            return speech
        finally:
            self._inflight.pop(key, None)

    async def _lead_and_run(self, job: _Job, key: str) -> Speech:
        """Make the call, unless another replica is making the same one right now."""
        spend = self._spend
        if spend.coalesces_across_processes:
            token, earlier = await _in_thread(
                lambda: spend.follow_or_lead(key),
                undo=lambda got: spend.finish_lead(key, got[0], None),
            )
        else:
            token, earlier = None, None
        if earlier is not None:
            if _observe.SINKS:
                _observe.report_coalesced(job.model)
            await self._settle(earlier, job.text, None)
            return earlier
        speech: Speech | None = None
        try:
            speech = await self._spend_and_run(job)
        finally:
            if token is not None:
                await asyncio.to_thread(spend.finish_lead, key, token, speech)
        return speech

    async def _spend_and_run(self, job: _Job) -> Speech:
        spend = self._spend
        # Budget reads touch the ledger (a file or a server): keep them off the event loop.
        if not spend.needs_budget_check:
            held = NO_HOLD
        elif spend.reserve_needs_io(job.model):
            held = await _in_thread(
                lambda: _observe.in_store(
                    "budget.reserve", spend.reserve, job.model, job.characters
                ),
                undo=spend.release,
            )
        else:
            held = spend.reserve(job.model, job.characters)
        try:
            speech = await self._run(job)
        except BaseException:
            if held.reservation is None:
                spend.release(held)
            else:
                await asyncio.to_thread(spend.release, held)
            raise
        await self._settle(speech, job.text, job.cache_key, held)
        return speech

    async def _settle(
        self, speech: Speech, text: str, cache_key: str | None, held: Hold = NO_HOLD
    ) -> None:
        spend = self._spend
        if spend.settle_is_cheap(held, cache_key):
            # Only an in-memory queue put.
            _observe.in_store("ledger.settle", spend.settle, speech, text, cache_key, held)
        else:
            await asyncio.to_thread(
                _observe.in_store, "ledger.settle", spend.settle, speech, text, cache_key, held
            )

    async def synthesize_dialogue(
        self,
        lines: Sequence[DialogueLine | Mapping[str, Any]],
        *,
        format: str | None = None,
        model: str | None = None,
        pause_ms: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Speech:
        """Speak ``lines`` in order into one file (see OctaveClient.synthesize_dialogue)."""
        from . import _longform

        if current_key.get() is not None:
            await asyncio.to_thread(self._admit)
        return await _longform.asynthesize_dialogue(
            self, lines, format, model, pause_ms, on_progress
        )

    async def _run(self, job: _Job, deadline: float | None = None) -> Speech:
        call = job.call
        if call is None:
            from . import _local

            return await _local.asynthesize(
                job.text, voice=job.voice, format=job.format, settings=self._settings
            )
        if not _net_loaded:
            _load_net()
        if deadline is None:
            deadline = self._deadline()
        attempt = 0
        sinks = _observe.SINKS
        while True:
            started = time.monotonic() if sinks else 0.0
            try:
                if self._slots is None:
                    raw = await self._send(call, deadline)
                else:
                    async with self._slots:
                        raw = await self._send(call, deadline)
            except (httpx.HTTPError, TimeoutError) as exc:
                if sinks:
                    _observe.report_upstream(call.model, None, time.monotonic() - started)
                wait = self._after_transport_error(call, exc, attempt, deadline)
            else:
                if sinks:
                    _observe.report_upstream(
                        call.model, raw.status_code, time.monotonic() - started
                    )
                step = self._next_step(call, raw, attempt, deadline)
                if isinstance(step, Speech):
                    return step
                wait = step
            await asyncio.sleep(wait)
            attempt += 1

    async def usage(self, since: str | float | None = "7d", by: str = "day") -> UsageReport:
        """Spend in the ledger (see OctaveClient.usage), read off the event loop."""
        return await asyncio.to_thread(self.usage_report, since, by)

    async def _send(self, call: proto.Call, deadline: float) -> proto.RawResponse:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        # The cancel scope makes the total limit hard, even against a slow trickle of bytes.
        with anyio.fail_after(remaining):
            if self._http is None:
                self._http = httpx.AsyncClient(limits=_LIMITS, follow_redirects=False)
            async with self._http.stream(
                "POST", call.url, content=call.body, headers=call.headers, timeout=remaining
            ) as response:
                headers = dict(response.headers.items())  # one pass over httpx.Headers
                try:
                    body = CappedBody(proto.body_limit(headers), headers)
                    async for chunk in response.aiter_bytes():
                        body.feed(chunk)
                except BodyTooLarge as exc:
                    raise proto.too_large_error(call, response.status_code, exc.limit) from None
                return proto.RawResponse(response.status_code, headers, body.result())

    async def aclose(self) -> None:
        """Close the HTTP connections this client opened (not an injected client)."""
        if self._owns_http and self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncOctaveClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
