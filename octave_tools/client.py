"""OctaveClient and AsyncOctaveClient: the same logic, only the send loop differs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from typing_extensions import Unpack

from . import _protocol as proto
from ._body import BodyTooLarge, CappedBody
from ._calltime import call_deadline, current
from ._files import fetch_audio, new_audio_path, write_atomic
from ._redact import shown
from ._settings import Settings, SettingsOptions, check_options
from ._spend import NO_HOLD, Hold, Spend, reused
from .errors import APITimeoutError, ConfigurationError, InvalidInputError
from .models import Speech, UsageReport, VoiceList
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
        self._health_lock = threading.Lock()
        self._health_probe: concurrent.futures.Future[None] | None = None

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
        """The models a call may name: the configured one first, then ``models``."""
        s = self._settings
        return tuple(dict.fromkeys((s.model, *s.models)))

    def _check_model(self, model: str | None) -> str:
        """``model`` or the configured one; refused when the ``models`` setting excludes it."""
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
        (day, model, voice or engine), across every process sharing the ledger.

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
    ) -> _Job:
        """Validate and route one call; raises before anything is spent."""
        if model is not None:
            model = self._check_model(model)
        if self._engine() == "local":
            from . import _local

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
    ) -> Speech:
        """Turn ``text`` into speech and return where the audio is.

        ``model`` picks any id in ``octave_tools.MODELS`` for this call (default: the
        configured one); ``voice``, ``format`` and ``speed`` (1.0 = normal) are checked
        against that model and mapped into its own fields. Raises InvalidInputError
        before any request for bad arguments, BudgetExceededError when a spend limit
        would be passed, and another OctaveError subclass when the call fails.
        """
        job = self._plan(text, voice, format, model, speed)
        # From here the call's time runs: the store, a coalesced leader and the API share it.
        with call_deadline(self._settings.timeout):
            return self._synthesize_job(job)

    def _synthesize_job(self, job: _Job) -> Speech:
        key = job.cache_key
        if key is None:
            return self._spend_and_run(job)
        hit = self._spend.cached(key)
        if hit is not None:
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
            self._spend.settle(earlier, job.text, None)
            return earlier
        speech: Speech | None = None
        try:
            speech = self._spend_and_run(job)
        finally:
            self._spend.finish_lead(key, token, speech)
        return speech

    def _spend_and_run(self, job: _Job) -> Speech:
        held = self._spend.reserve(job.model, job.characters)
        try:
            speech = self._run(job)
        except BaseException:
            self._spend.release(held)
            raise
        self._spend.settle(speech, job.text, job.cache_key, held)
        return speech

    def _run(self, job: _Job) -> Speech:
        call = job.call
        if call is None:
            from . import _local

            return _local.synthesize(
                job.text, voice=job.voice, format=job.format, settings=self._settings
            )
        if not _net_loaded:
            _load_net()
        deadline = self._deadline()
        attempt = 0
        while True:
            try:
                raw = self._send(call, deadline)
            except (httpx.HTTPError, TimeoutError) as exc:
                wait = self._after_transport_error(call, exc, attempt, deadline)
            else:
                step = self._next_step(call, raw, attempt, deadline)
                if isinstance(step, Speech):
                    return step
                wait = step
            time.sleep(wait)
            attempt += 1

    def usage(self, since: str | float | None = "7d", by: str = "day") -> UsageReport:
        """Spend in the ledger since ``since`` (``"7d"``, ``"24h"``), grouped by ``by``
        (day, model, voice or engine), across every process sharing the ledger."""
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
    ) -> Speech:
        """Turn ``text`` into speech and return where the audio is (see OctaveClient)."""
        job = self._plan(text, voice, format, model, speed)
        # From here the call's time runs: the store, a coalesced leader and the API share it.
        with call_deadline(self._settings.timeout):
            return await self._synthesize_job(job)

    async def _synthesize_job(self, job: _Job) -> Speech:
        key = job.cache_key
        if key is None:
            return await self._spend_and_run(job)
        hit = await asyncio.to_thread(self._spend.cached, key)
        if hit is not None:
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
        elif spend.reserve_needs_io():
            held = await _in_thread(
                lambda: spend.reserve(job.model, job.characters), undo=spend.release
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
            spend.settle(speech, text, cache_key, held)  # only an in-memory queue put
        else:
            await asyncio.to_thread(spend.settle, speech, text, cache_key, held)

    async def _run(self, job: _Job) -> Speech:
        call = job.call
        if call is None:
            from . import _local

            return await _local.asynthesize(
                job.text, voice=job.voice, format=job.format, settings=self._settings
            )
        if not _net_loaded:
            _load_net()
        deadline = self._deadline()
        attempt = 0
        while True:
            try:
                if self._slots is None:
                    raw = await self._send(call, deadline)
                else:
                    async with self._slots:
                        raw = await self._send(call, deadline)
            except (httpx.HTTPError, TimeoutError) as exc:
                wait = self._after_transport_error(call, exc, attempt, deadline)
            else:
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
