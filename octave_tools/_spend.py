"""Spend control for one client: the ledger, the budget and the opt-in result cache.

Policy lives here; storage is behind ``_store.Store``. Nothing here sends requests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ._calltime import remaining
from ._context import current_key
from ._files import default_output_dir, user_dir
from ._protocol import check_audio_url, clean_request_id
from ._redact import redact_url
from ._settings import ENV_MAX_CREDITS, Settings
from ._store import (
    MARK_LIFETIME,
    GroupBy,
    KeyBudget,
    LedgerEntry,
    LedgerLockedError,
    Probe,
    ReservationRefused,
    Store,
    UsageRow,
)
from ._store_url import open_store_url
from .catalogue import MODELS
from .errors import (
    APITimeoutError,
    BudgetExceededError,
    ClientKeyLimitError,
    ConfigurationError,
    InvalidInputError,
    OctaveError,
)
from .models import Speech, UsageGroup, UsageReport

__all__ = ["DAY", "Hold", "Spend", "default_data_dir", "parse_since"]

DAY = 86_400.0
# What a call is expected to cost before it is made. Documented rates come from the
# catalogue (hume/octave-2: 12,222 credits for 98 characters, about 125 per character);
# the offline engine is free. Every other model is estimated at DEFAULT_CREDITS_PER_CHAR
# so the budget never admits a paid call on a zero estimate.
CREDITS_PER_CHAR_ESTIMATE: dict[str, float] = {
    **{m: s.credits_per_char for m, s in MODELS.items() if s.credits_per_char is not None},
    "espeak-ng": 0.0,
}
# No other model's price is documented. The highest known rate is used, so a budget
# errs on refusing a call it could have afforded rather than overspending.
DEFAULT_CREDITS_PER_CHAR = max(CREDITS_PER_CHAR_ESTIMATE.values())
GROUPINGS: tuple[GroupBy, ...] = ("day", "model", "voice", "engine", "job", "key")
# ``by="job"``: the rows of requests that were no long-form or dialogue call.
SINGLE_REQUESTS = "(single requests)"
# Paid parts of long calls share the cache table under keys of their own.
_PAID_PREFIX = "paid-part:"
# A learned rate comes from this much of the ledger, and is re-read at most this often.
RATE_WINDOW = 30 * DAY
RATE_REFRESH = 60.0
# A reservation on a shared store outlives the call it holds by this much; a process that
# dies mid-call frees the budget after that (its call is then counted at the estimate).
LEASE_MARGIN = 60.0
# A model with no documented price (issue 22, item 3): until its rate is learned from a
# settled call, one call of it at a time is admitted (across replicas on a shared store),
# so a guess that was too low overshoots the budget by at most one call. A call waiting
# for that one looks again this often, for at most the call's timeout.
PROBE_RECHECK = 0.1
# A call billed more than this many times what it held re-estimates the model (here at
# once, on other replicas at their next reservation) before more calls are admitted.
FAR_ABOVE = 2.0


@dataclass(frozen=True)
class Hold:
    """What a call holds of the budget until it settles: the estimate, and where."""

    amount: float
    reservation: str | None = None
    """The shared store's reservation id (None: held in this process only)."""
    probe: str | None = None
    """The model whose in-process probe this call is (see PROBE_RECHECK)."""


class _Retry(Exception):
    """A reservation to try again: a probe is taken, or the model's rate just changed."""

    def __init__(self, rate: float | None = None, marked_at: float | None = None) -> None:
        super().__init__()
        self.rate = rate
        self.marked_at = marked_at


NO_HOLD = Hold(0.0)

# A cache entry written this far in the future (another replica's clock) still counts.
CLOCK_SKEW = 60.0
# Voice names and ids are short; a longer one in a cache entry is a planted one.
MAX_VOICE_CHARS = 256
MAX_FORMAT_CHARS = 16


@dataclass(frozen=True)
class _Expected:
    """What a cached or coalesced result for a call must say about it."""

    engine: str
    model: str
    voice: str | None
    characters: int


class CacheKey(str):
    """A cache key (a hex digest) that remembers what its result must look like."""

    expected: _Expected | None

    def __new__(cls, digest: str, expected: _Expected | None = None) -> CacheKey:
        made = super().__new__(cls, digest)
        made.expected = expected
        return made


def _plain(value: str, limit: int) -> bool:
    """Short, with no control or format characters."""
    return len(value) <= limit and value.isprintable()


def default_data_dir() -> Path:
    """The user data directory for octave-tools on this platform."""
    return user_dir("data")


def parse_since(value: str | float | None, *, now: float | None = None) -> float:
    """Epoch seconds for ``7d``, ``12h``, ``30m``, ``90s`` ago (default 7 days)."""
    now = time.time() if now is None else now
    if value is None:
        return now - 7 * DAY
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip().lower()
    units = {"d": DAY, "h": 3600.0, "m": 60.0, "s": 1.0}
    try:
        amount = float(text[:-1]) if text and text[-1] in units else float("nan")
    except ValueError:
        amount = float("nan")
    if not (math.isfinite(amount) and 0 <= amount * units.get(text[-1:], 0) <= now):
        raise InvalidInputError(
            f"since must look like 7d, 12h, 30m or 90s; got {value!r}.", field="since"
        )
    return now - amount * units[text[-1]]


def reused(speech: Speech) -> Speech:
    """``speech`` handed out again: marked cached, and free this time."""
    return speech.model_copy(update={"cached": True, "credits_used": 0, "usd_spent": 0.0})


def _entry(
    speech: Speech,
    text: str,
    credits: float,
    ts: float,
    estimated: bool = False,
    job_id: str | None = None,
) -> LedgerEntry:
    grant = current_key.get()
    return LedgerEntry(
        ts=ts,
        engine=speech.engine,
        model=speech.model,
        voice=speech.voice,
        format=speech.format,
        characters=speech.characters,
        credits=credits,
        usd=speech.usd_spent,
        request_id=speech.request_id,
        text_sha256=text_digest(text),
        cached=speech.cached,
        estimated=estimated,
        job_id=job_id,
        key_name=grant.key.name if grant is not None else None,
    )


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Spend:
    """Ledger, budget and cache as one client sees them; safe across threads."""

    def __init__(
        self,
        settings: Settings,
        *,
        client_limit: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._clock = clock  # epoch seconds; tests pass a fake one
        self.client_limit = client_limit
        self.daily_limit = settings.max_credits_per_day
        self.cache_ttl = settings.cache_ttl
        self._lock = threading.Lock()
        # Held across "read the day's spend, check, hold" and "record, unhold", so a call
        # settling in between can never drop out of both counts (daily budget only).
        self._budget_lock = threading.Lock()
        self._client_spent = 0.0
        self._reserved = 0.0
        self._local_entries: list[LedgerEntry] = []  # when the ledger is off
        self._paid: dict[str, tuple[float, str]] = {}  # paid parts, when the ledger is off
        self._store: Store | None = None
        self._store_opened = False
        self._open_lock = threading.Lock()
        # A shared store (PostgreSQL) holds the daily budget itself, atomically across
        # replicas; the local SQLite default keeps today's in-process reservations.
        url = settings.store_url or ""
        self.shared = settings.ledger and bool(url) and not url.lower().startswith("sqlite:")
        self._rates: dict[str, float] = {}
        self._rates_read = -math.inf
        self._tenant: list[str] | None = None  # the cache key's API key fingerprint and URL
        self._rates_read_wall = -math.inf  # the same moment, on the store's clock
        # Rates this process saw settle (the only source when the ledger is off), and
        # floors set by a call billed far above its hold: (rate, until) by model.
        self._seen: dict[str, float] = {}
        self._floors: dict[str, tuple[float, float]] = {}
        self._marks_seen: dict[str, float] = {}  # the newest rate mark acted on, by model
        self._probing: set[str] = set()  # models whose probe call runs in this process
        self._probe_cond = threading.Condition()

    @property
    def data_dir(self) -> Path:
        base = Path(self._settings.data_dir) if self._settings.data_dir else default_data_dir()
        return base.expanduser()

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.sqlite3"

    @property
    def ledger_name(self) -> str:
        """Where the ledger is, as a user may see it (a store URL without its password)."""
        url = self._settings.store_url
        return redact_url(url) if url else str(self.ledger_path)

    @property
    def store(self) -> Store | None:
        """The shared store, opened on first use; None when the ledger is off."""
        if not self._store_opened:
            # Under a lock, and marked open only once it is: concurrent first calls (each
            # settling in its own thread) must all see the store, not a None that means "off".
            with self._open_lock:
                if not self._store_opened:
                    if self._settings.ledger:
                        self._store = open_store_url(
                            self._settings.store_url,
                            data_dir=self.data_dir,
                            cache_url=self._settings.cache_url,
                        )
                    self._store_opened = True
        return self._store

    @property
    def store_is_open(self) -> bool:
        return self._store_opened

    def reserve_needs_io(self, model: str | None = None) -> bool:
        """Whether reserve() may read the ledger file or wait (else a few microseconds)."""
        if not self._store_opened or _key_budget() is not None:
            return True
        if model is not None and self._may_probe(model):
            return True  # may wait for another call of an unpriced model
        store = self._store
        if store is None:
            return False
        if self.shared or self._rate_is_stale():
            return True
        fresh = getattr(store, "window_is_fresh", None)
        return fresh is None or not fresh(self._clock() - DAY)

    @property
    def needs_budget_check(self) -> bool:
        return (
            self.daily_limit is not None
            or self.client_limit is not None
            or _key_budget() is not None
        )

    # ------------------------------------------------------------ cache

    def cache_key(self, engine: str, model: str, voice: str | None, fmt: str, text: str) -> str:
        """The key of a call's result in the cache and for coalescing.

        For the API it names the tenant too, the API key's fingerprint and the base URL,
        so clients sharing a store never get each other's results. The returned key
        also carries what a result for it must look like (see ``_vetted``).
        """
        tenant: list[str] = []
        if engine == "aimlapi":
            if self._tenant is None:
                secret = self._settings.api_key.get() if self._settings.api_key else ""
                digest = hashlib.sha256(b"octave-tools cache key\0" + secret.encode())
                self._tenant = [digest.hexdigest(), self._settings.base_url.rstrip("/")]
            tenant = self._tenant
        parts = json.dumps([engine, model, voice, fmt, text_digest(text), *tenant])
        return CacheKey(
            hashlib.sha256(parts.encode()).hexdigest(),
            _Expected(engine, model, voice, len(text)),
        )

    def cached(self, key: str) -> Speech | None:
        """The earlier result for ``key`` within the TTL, marked cached and free."""
        store = self.store
        if self.cache_ttl <= 0 or store is None:
            return None
        now = self._clock()
        value = store.cache_get(key, now)
        if value is None:
            return None
        try:
            entry = json.loads(value)
            # Written at "at"; the TTL is checked again here, with today's setting: an
            # entry that the store kept longer (planted, or written under a longer TTL)
            # is a miss.
            at = float(entry["at"])
            if not (now - self.cache_ttl < at <= now + CLOCK_SKEW):
                return None
            earlier = Speech.model_validate(entry["speech"])
        except (ValueError, TypeError, KeyError, RecursionError):
            return None
        # The cache table is a file anyone with access to it can edit: an entry is vetted
        # like a fresh answer, and one that fails is a miss.
        if not self._vetted(earlier, key):
            return None
        return reused(earlier)

    # ------------------------------------------------------------ paid parts

    @property
    def remembers_parts(self) -> bool:
        """Whether paid parts of long calls are remembered (cache on, or ``part_ttl`` > 0)."""
        return self.cache_ttl > 0 or self._settings.part_ttl > 0

    def remembered_part(self, key: str) -> Speech | None:
        """A part paid within the cache window or ``part_ttl``, marked cached and free.

        With the cache on, that is the cache; else a "paid parts" memory under its own
        keys in the store (in this process when the ledger is off). Vetted like a cache hit.
        """
        if self.cache_ttl > 0:
            hit = self.cached(key)
            if hit is not None or self._settings.part_ttl <= 0:
                return hit
        if self._settings.part_ttl <= 0:
            return None
        now = self._clock()
        store = self.store
        value: str | None
        if store is not None:
            value = store.cache_get(_PAID_PREFIX + key, now)
        else:
            with self._lock:
                expires, value = self._paid.get(key, (0.0, None))
            if expires <= now:
                value = None
        if value is None:
            return None
        try:
            earlier = Speech.model_validate_json(value)
        except ValueError:
            return None
        return reused(earlier) if self._vetted(earlier, key) else None

    def remember_part(self, key: str, speech: Speech) -> None:
        """Remember a paid part for ``part_ttl`` (the cache, if on, has it already)."""
        ttl = self._settings.part_ttl
        if ttl <= 0 or speech.cached:
            return
        value = speech.model_dump_json()
        expires = self._clock() + ttl
        store = self.store
        if store is not None:
            store.cache_put(_PAID_PREFIX + key, value, expires)
        else:
            with self._lock:
                self._paid[key] = (expires, value)

    def _vetted(self, earlier: Speech, key: str) -> bool:
        """Whether a cached or coalesced result may stand for a call under ``key``.

        Every field, not only the URL: the engine, model and voice the call asked for;
        a request id fit to show; no negative or non-finite figures; and an audio URL
        that passes the same checks as a fresh one.
        """
        expected = getattr(key, "expected", None)
        if expected is not None:
            if (earlier.engine, earlier.model) != (expected.engine, expected.model):
                return False
            if expected.engine == "aimlapi" and earlier.voice != expected.voice:
                return False
            if earlier.characters != expected.characters:
                return False
        if earlier.voice is not None and not _plain(earlier.voice, MAX_VOICE_CHARS):
            return False
        if not (earlier.format.isalnum() and len(earlier.format) <= MAX_FORMAT_CHARS):
            return False
        if earlier.request_id is not None and (
            clean_request_id(earlier.request_id, "") != earlier.request_id
        ):
            return False
        for figure in (earlier.credits_used, earlier.usd_spent, earlier.characters):
            if figure is not None and not (math.isfinite(figure) and figure >= 0):
                return False
        return self._safe_cached_url(earlier.audio_url)

    def _safe_cached_url(self, url: str) -> bool:
        """Whether a cached audio URL may be handed out again.

        An https (or test loopback) URL passes the same check as a fresh one; a
        file:// URL only if it names a clip this package wrote into the output folder.
        """
        if check_audio_url(url, self._settings.base_url):
            return True
        try:
            parts = urlsplit(url)
        except ValueError:
            return False
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            return False
        if parts.query or parts.fragment:
            return False
        from urllib.request import url2pathname  # imports http.client: ~20 ms

        path = Path(url2pathname(unquote(parts.path)))
        folder = self._settings.output_dir
        out_dir = (Path(folder).expanduser() if folder else default_output_dir()).absolute()
        try:
            if path.parent.resolve() != out_dir.resolve():
                return False
            # Only the names new_audio_path gives, and only a regular file (not a link).
            return path.name.startswith("speech-") and not path.is_symlink() and path.is_file()
        except OSError:
            return False

    @property
    def coalesces_across_processes(self) -> bool:
        """Whether identical calls are coalesced across replicas (a Redis cache)."""
        return bool(self._settings.cache_url)

    def follow_or_lead(self, key: str) -> tuple[str | None, Speech | None]:
        """Across replicas (a Redis cache): lead the call for ``key``, or wait for its leader.

        ``(token, None)``: this process makes the call and must ``finish`` the token;
        ``(None, speech)``: another replica made it, here is its result, free;
        ``(None, None)``: no coalescing (none configured, or the leader failed): call.
        """
        coalescer = getattr(self.store, "coalescer", None)
        if coalescer is None:
            return None, None
        timeout = self._settings.timeout
        token: str | None = coalescer.lead(key, timeout + LEASE_MARGIN)
        if token is not None:
            return token, None
        # Waiting ends with the call's own deadline (what is left of it), not the leader's.
        value = coalescer.follow(key, remaining(timeout))
        if value is None:
            if remaining(timeout) <= 0:
                raise APITimeoutError(
                    f"The same call was being made by another process and did not finish "
                    f"within this call's {timeout:g} s limit. Try again, or raise "
                    "OCTAVE_TOOLS_TIMEOUT.",
                    timeout=timeout,
                )
            return None, None
        try:
            earlier = Speech.model_validate_json(value)
        except ValueError:
            return None, None
        # Redis is shared: its value is vetted like a cache entry, and one that fails
        # (or a file only another replica has) means this process makes the call itself.
        if not self._vetted(earlier, key):
            return None, None
        return None, reused(earlier)

    def finish_lead(self, key: str, token: str | None, speech: Speech | None) -> None:
        """Hand the leader's result (None: it failed) to the replicas waiting for it."""
        coalescer = getattr(self.store, "coalescer", None)
        if token is not None and coalescer is not None:
            coalescer.finish(key, token, speech.model_dump_json() if speech else None)

    # ------------------------------------------------------------ budget

    def estimate(self, model: str, characters: int, *, refresh: bool = True) -> float:
        """Credits a call is expected to cost, before it is made.

        The documented rate where there is one; else what the ledger has seen the model
        billed per character; else DEFAULT_CREDITS_PER_CHAR, never zero for a paid model.
        """
        rate = CREDITS_PER_CHAR_ESTIMATE.get(model)
        if rate is None:
            rates = self._learned_rates() if refresh else self._rates  # refresh: may read
            rate = rates.get(model, self._seen.get(model, DEFAULT_CREDITS_PER_CHAR))
            floor = self._floors.get(model)
            if floor is not None and floor[1] > self._clock():
                rate = max(rate, floor[0])
        return rate * characters

    def _may_probe(self, model: str) -> bool:
        """Whether a call of ``model`` may have to be its probe (no documented price)."""
        return self.needs_budget_check and model not in CREDITS_PER_CHAR_ESTIMATE

    def _is_learned(self, model: str) -> bool:
        """Whether a settled call of ``model`` is known (here, or in the ledger)."""
        if model in self._seen or model in self._learned_rates():
            return True
        if time.monotonic() - self._rates_read > PROBE_RECHECK:
            self._rates_read = -math.inf  # another process's probe may have settled since
            return model in self._learned_rates()
        return False

    def _rate_is_stale(self) -> bool:
        return time.monotonic() - self._rates_read > RATE_REFRESH

    def _learned_rates(self) -> dict[str, float]:
        if self._rate_is_stale():
            store = self.store
            try:
                rates = store.rates(self._clock() - RATE_WINDOW) if store is not None else {}
            except (OctaveError, LedgerLockedError):
                rates = self._rates  # keep what was known; the default covers the rest
            self._rates, self._rates_read = rates, time.monotonic()
            self._rates_read_wall = self._clock()
        return self._rates

    def reserve(self, model: str, characters: int) -> Hold:
        """Hold the estimated cost of a call, or raise BudgetExceededError.

        A model with no documented price is admitted one call at a time until a call of
        it has settled (its rate is then learned): waiting for that call at most the
        call's timeout. On a shared store this holds across replicas.
        """
        if not self.needs_budget_check:
            return NO_HOLD
        if not self._may_probe(model):
            return self._reserve(model, characters)
        deadline = time.monotonic() + self._settings.timeout
        while True:
            exclusive = not self._is_learned(model)
            # The store keeps the probe only where it reserves; else this process does.
            store_budget = self.shared and (
                self.daily_limit is not None or _key_budget() is not None
            )
            local = exclusive and not store_budget
            if local and not self._take_probe(model, characters, deadline):
                continue  # the probe settled meanwhile: look again
            probe = None
            if store_budget:
                seen = max(self._rates_read_wall, self._marks_seen.get(model, -math.inf))
                probe = Probe(model, exclusive, seen)
            try:
                return self._reserve(model, characters, probe, model if local else None)
            except _Retry as retry:
                if local:
                    self._give_probe(model)
                if retry.rate is not None:  # re-estimate at the new rate, then try again
                    self._set_floor(model, retry.rate)
                    if retry.marked_at is not None:  # whatever the clocks of the replicas
                        self._marks_seen[model] = retry.marked_at
                    continue
                if time.monotonic() + PROBE_RECHECK > deadline:
                    raise self._probe_busy(model, characters) from None
                time.sleep(PROBE_RECHECK)
                self._rates_read = -math.inf  # the probe may have settled: read rates again
            except BaseException:
                if local:
                    self._give_probe(model)
                raise

    def _take_probe(self, model: str, characters: int, deadline: float) -> bool:
        """Become ``model``'s probe in this process; False after waiting for another."""
        with self._probe_cond:
            if model not in self._probing:
                self._probing.add(model)
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._probe_busy(model, characters)
            self._probe_cond.wait(min(left, PROBE_RECHECK))
            return False

    def _give_probe(self, model: str | None) -> None:
        if model is None:
            return
        with self._probe_cond:
            self._probing.discard(model)
            self._probe_cond.notify_all()

    def _set_floor(self, model: str, rate: float) -> None:
        now = self._clock()
        with self._lock:
            old = self._floors.get(model)
            if old is None or old[1] <= now or rate > old[0]:
                self._floors[model] = (rate, now + MARK_LIFETIME)
        self._rates_read = -math.inf  # and re-read the ledger before the next estimate

    def _probe_busy(self, model: str, characters: int) -> BudgetExceededError:
        limit = self.daily_limit if self.daily_limit is not None else self.client_limit
        return BudgetExceededError(
            f"Another call of {model} is in flight and its price is not documented: the "
            "budget admits one call of it at a time until its rate is known, and that call "
            f"did not finish within {self._settings.timeout:g} s. Try again in a moment.",
            limit=limit or 0.0,
            spent=0.0,
            estimate=self.estimate(model, characters, refresh=False),
        )

    def _reserve(
        self,
        model: str,
        characters: int,
        probe: Probe | None = None,
        local_probe: str | None = None,
    ) -> Hold:
        estimate = self.estimate(model, characters)
        now = self._clock()
        with self._lock:
            if self.client_limit is not None:
                spent = self._client_spent + self._reserved
                if spent + estimate > self.client_limit or spent >= self.client_limit:
                    raise BudgetExceededError(
                        f"Spend limit reached: this call would cost about {estimate:,.0f} "
                        f"credits and this client has spent {spent:,.0f} of its "
                        f"{self.client_limit:,.0f}-credit limit (max_credits). Create a "
                        "client with a higher max_credits to go on.",
                        limit=self.client_limit,
                        spent=spent,
                        estimate=estimate,
                    )
            self._reserved += estimate  # held from here: a refusal below gives it back
        try:
            key = _key_budget()
            if self.shared:
                if self.daily_limit is None and key is None:
                    return Hold(estimate, probe=local_probe)
                # The global budget and a client key's, in one transaction on the store.
                return self._reserve_shared(estimate, now, probe, key, local_probe)
            if self.daily_limit is None and key is None:
                return Hold(estimate, probe=local_probe)
            with self._budget_lock:
                if self.daily_limit is not None:
                    # Here, not in the file: this process's holds are in memory.
                    day_spent, oldest = self._spent_in_window(now)
                    with self._lock:
                        spent = day_spent + self._reserved - estimate
                    if spent + estimate > self.daily_limit or spent >= self.daily_limit:
                        frees_at = oldest + DAY if oldest is not None else None
                        raise BudgetExceededError(
                            _daily_message(estimate, spent, self.daily_limit, frees_at, now),
                            limit=self.daily_limit,
                            spent=spent,
                            estimate=estimate,
                            frees_at=frees_at,
                        )
                if key is not None:  # a client key's budget: its ledger rows, in the file
                    return self._reserve_shared(
                        estimate, now, None, key, local_probe, with_global=False
                    )
            return Hold(estimate, probe=local_probe)
        except BaseException:
            self._unhold(Hold(estimate))
            raise

    def _reserve_shared(
        self,
        estimate: float,
        now: float,
        probe: Probe | None = None,
        key: KeyBudget | None = None,
        local_probe: str | None = None,
        *,
        with_global: bool = True,
    ) -> Hold:
        """Reserve on the store: one transaction, atomic across every replica (and, with a
        client key's budget, for both budgets at once; ``with_global=False``: the key's
        only, the global one checked by the caller)."""
        store = self.store
        if store is None:
            raise ConfigurationError(
                "A client key's daily budget is kept in the ledger, which is off "
                "(OCTAVE_TOOLS_LEDGER=off); turn the ledger on to serve client keys with "
                "budgets. No call was made."
            )
        lease = self._settings.timeout + LEASE_MARGIN
        limit = self.daily_limit if with_global else None
        try:
            if probe is None and key is None:  # the store's call as it always was
                assert limit is not None
                got = store.reserve("daily", estimate, limit, DAY, lease, now)
            else:
                got = store.reserve("daily", estimate, limit, DAY, lease, now, probe, key)
        except LedgerLockedError as exc:
            raise self._ledger_refusal(
                str(exc), "close the program holding it (a sqlite3 shell, a backup) "
            ) from None
        if isinstance(got, ReservationRefused) and (got.busy or got.rate is not None):
            raise _Retry(got.rate, got.marked_at)
        if isinstance(got, ReservationRefused):
            spent = got.spent + got.held
            if key is not None and got.budget == key.budget:
                raise ClientKeyLimitError(
                    _key_message(key, estimate, spent, got.frees_at, now),
                    limit="max_credits_per_day",
                    resets_at=got.frees_at,
                )
            assert limit is not None
            raise BudgetExceededError(
                _daily_message(estimate, spent, limit, got.frees_at, now),
                limit=limit,
                spent=spent,
                estimate=estimate,
                frees_at=got.frees_at,
            )
        return Hold(estimate, got, probe=local_probe)

    def budget_left(self) -> float | None:
        """Credits left in the daily budget's window now; None without a daily budget."""
        if self.daily_limit is None:
            return None
        spent, _ = self._spent_in_window(self._clock())
        return self.daily_limit - spent

    def release(self, hold: Hold) -> None:
        """Give back what a call that failed held: it was not billed."""
        self._unhold(hold)
        self._give_probe(hold.probe)
        if hold.reservation is not None and self._store is not None:
            self._store.release(hold.reservation)

    def _unhold(self, hold: Hold) -> None:
        if hold is NO_HOLD:  # nothing held (no budget): no lock to take
            return
        with self._lock:
            self._reserved = max(0.0, self._reserved - hold.amount)

    def _spent_in_window(self, now: float) -> tuple[float, float | None]:
        store = self.store
        if store is not None:
            # A daily budget is shared through the ledger: without it each process would
            # count only its own spend, so an unusable ledger refuses the call (fail closed).
            try:
                spent = store.spent_since(now - DAY)
            except LedgerLockedError as exc:
                raise self._ledger_refusal(
                    str(exc), "close the program holding it (a sqlite3 shell, a backup) "
                ) from None
            problem = getattr(store, "unusable_reason", None)
            if problem is not None:
                raise self._ledger_refusal(
                    str(problem), "move the damaged or linked file aside (a new one is made) "
                )
            return spent
        with self._lock:
            recent = [e for e in self._local_entries if e.ts >= now - DAY and e.credits > 0]
        return sum(e.credits for e in recent), min((e.ts for e in recent), default=None)

    def _ledger_refusal(self, problem: str, fix: str) -> ConfigurationError:
        return ConfigurationError(
            f"The usage ledger at {self.ledger_name} cannot be used ({problem}), so the "
            f"daily budget ({ENV_MAX_CREDITS[0]}) cannot be enforced and no call was made. "
            f"Fix: {fix}and try again, or unset the daily budget."
        )

    # ------------------------------------------------------------ ledger

    def settle_is_cheap(self, hold: Hold, cache_key: str | None) -> bool:
        """Whether settle() is only an in-memory queue put (fine on an event loop)."""
        return (
            self._store_opened
            and hold.reservation is None
            and not self.shared
            and (cache_key is None or self.cache_ttl <= 0)
        )

    def record_fallback(
        self,
        model: str,
        voice: str | None,
        fmt: str,
        characters: int,
        text: str,
        request_id: str | None,
    ) -> None:
        """Keep a failed attempt of a fallback chain in the ledger (nothing billed: its
        hold was given back), beside the row of the model that then spoke."""
        store = self.store
        if store is None:
            return
        store.add(
            LedgerEntry(
                ts=self._clock(),
                engine="aimlapi",
                model=model,
                voice=voice,
                format=fmt,
                characters=characters,
                credits=0.0,
                usd=None,
                request_id=request_id,
                text_sha256=text_digest(text),
                cached=False,
                key_name=_key_name(),
                outcome="fallback",
            )
        )

    def settle(
        self,
        speech: Speech,
        text: str,
        cache_key: str | None,
        hold: Hold = NO_HOLD,
        job_id: str | None = None,
    ) -> None:
        """Record a finished call (and remember it for the cache); ends its ``hold``.

        ``job_id`` ties the parts of one long-form or dialogue call together in the ledger.

        A call whose cost the API did not report (or reported as a negative, non-finite
        or absurd figure, which _protocol turns into None) is charged its estimate and
        marked estimated: never 0, never the figure.
        """
        credits, estimated = self._charge(speech, hold)
        now = self._clock()
        with self._lock:
            self._client_spent += credits
        try:
            self._record(speech, text, cache_key, hold, credits, estimated, now, job_id)
            # Only once the charge is in the ledger: a call admitted on the learned rate
            # must also see this one's charge, not the smaller hold it replaced.
            if speech.model not in CREDITS_PER_CHAR_ESTIMATE and not speech.cached:
                self._learn(speech, hold, credits, estimated, now)
        finally:
            self._give_probe(hold.probe)  # after the rate is known here: waiters see it

    def _record(
        self,
        speech: Speech,
        text: str,
        cache_key: str | None,
        hold: Hold,
        credits: float,
        estimated: bool,
        now: float,
        job_id: str | None = None,
    ) -> None:
        store = self.store
        if store is None:
            if self.daily_limit is not None:  # else nothing keeps the entry: skip building it
                entry = _entry(speech, text, credits, now, estimated, job_id)
                with self._budget_lock, self._lock:
                    self._local_entries.append(entry)
            self._unhold(hold)
            return
        entry = _entry(speech, text, credits, now, estimated, job_id)
        if hold.reservation is not None:
            store.settle(hold.reservation, entry)  # the hold becomes the charge, atomically
            self._unhold(hold)
        elif self.daily_limit is not None and hold is not NO_HOLD:
            with self._budget_lock:  # the entry counts before the hold goes (see reserve)
                store.add(entry)
                self._unhold(hold)
        else:
            store.add(entry)
            self._unhold(hold)
        if cache_key is not None and self.cache_ttl > 0 and not speech.cached:
            value = f'{{"at":{entry.ts!r},"speech":{speech.model_dump_json()}}}'
            store.cache_put(cache_key, value, entry.ts + self.cache_ttl)

    def _learn(
        self, speech: Speech, hold: Hold, credits: float, estimated: bool, now: float
    ) -> None:
        """What a settled call of an unpriced model teaches: its rate, and a surprise."""
        rate = credits / max(1, speech.characters)
        with self._lock:
            if speech.model not in self._seen or not estimated:
                self._seen[speech.model] = rate
        if not estimated and hold.amount > 0 and credits > FAR_ABOVE * hold.amount:
            self._set_floor(speech.model, rate)
            store = self.store
            if self.shared and store is not None:
                store.mark_rate(speech.model, rate, now)  # every replica re-estimates

    def _charge(self, speech: Speech, hold: Hold) -> tuple[float, bool]:
        """Credits to record for a finished call, and whether they are our estimate."""
        reported = speech.credits_used
        if speech.cached or speech.engine != "aimlapi":
            return max(0.0, float(reported or 0)), False  # reused, or the offline engine
        if reported is not None and math.isfinite(reported) and reported >= 0:
            return float(reported), False
        if hold.amount > 0:
            return hold.amount, True  # what the budget held for it (documented or learned)
        # No hold (no budget): the rates known now, without a read (settle may be on a loop).
        return self.estimate(speech.model, speech.characters, refresh=False), True

    def usage(self, since: str | float | None = None, by: str = "day") -> UsageReport:
        """What the ledger holds since ``since`` (``"7d"``, ``"24h"``, epoch seconds)."""
        if by not in GROUPINGS:
            raise InvalidInputError(
                f"by must be one of {', '.join(GROUPINGS)}; got {by!r}.", field="by"
            )
        start = parse_since(since)
        store = self.store
        # On a shared server a client key sees its own calls only; the operator sees all.
        grant = current_key.get()
        only = grant.key.name if grant is not None else None
        rows = store.usage(start, by, only) if store is not None else []
        if by == "job":
            rows = [_one_call_per_job(r) for r in rows]
        groups = [
            UsageGroup(
                key=r.key,
                calls=r.calls,
                cached_calls=r.cached_calls,
                characters=r.characters,
                credits=r.credits,
                usd=round(r.usd, 6),
                billed_credits=r.credits - r.estimated_credits,
                estimated_credits=r.estimated_credits,
            )
            for r in rows
        ]
        return UsageReport(
            since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
            by=by,
            groups=groups,
            total_calls=sum(g.calls for g in groups),
            total_credits=sum(g.credits for g in groups),
            total_usd=round(sum(g.usd for g in groups), 6),
            total_billed_credits=sum(g.billed_credits for g in groups),
            total_estimated_credits=sum(g.estimated_credits for g in groups),
            ledger=self.ledger_name if store is not None else "ledger off",
        )


def _key_name() -> str | None:
    grant = current_key.get()
    return grant.key.name if grant is not None else None


def _key_budget() -> KeyBudget | None:
    """The daily budget of the client key this call runs under, if it has one."""
    grant = current_key.get()
    if grant is None or grant.key.max_credits_per_day is None:
        return None
    return KeyBudget(grant.key.name, grant.key.max_credits_per_day)


def _frees(frees_at: float | None, now: float) -> tuple[str, int] | None:
    """When a budget frees up: its UTC clock time and the minutes until then."""
    if frees_at is None:
        return None
    return time.strftime("%H:%M UTC", time.gmtime(frees_at)), max(1, round((frees_at - now) / 60))


def _key_message(
    key: KeyBudget, estimate: float, spent: float, frees_at: float | None, now: float
) -> str:
    frees = _frees(frees_at, now)
    when = (
        f"; it frees up as the oldest charge leaves the 24-hour window, at {frees[0]} "
        f"(in {frees[1]} min)"
        if frees
        else ""
    )
    return (
        f"This key's daily budget (max_credits_per_day, {key.limit:,.0f} credits) would be "
        f"passed: it has {spent:,.0f} spent or in flight, and this call would cost about "
        f"{estimate:,.0f}{when}. No call was made."
    )


def _one_call_per_job(row: UsageRow) -> UsageRow:
    """A job's parts counted as the one call they were (cached when every part was)."""
    if not row.key:
        return dataclasses.replace(row, key=SINGLE_REQUESTS)
    return dataclasses.replace(row, calls=1, cached_calls=int(row.cached_calls == row.calls))


def _daily_message(
    estimate: float, spent: float, limit: float, frees_at: float | None, now: float
) -> str:
    frees = _frees(frees_at, now)
    when = (
        f" The oldest charge leaves the 24-hour window at {frees[0]} (in {frees[1]} min)."
        if frees
        else ""
    )
    return (
        f"Spend limit reached: this call would cost about {estimate:,.0f} credits and "
        f"{spent:,.0f} of the {limit:,.0f}-credit daily budget ({ENV_MAX_CREDITS[0]}) "
        f"were spent in the last 24 hours.{when} Wait, or raise the budget."
    )
