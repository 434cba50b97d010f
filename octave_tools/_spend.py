"""Spend control for one client: the ledger, the budget and the opt-in result cache.

Policy lives here; storage is behind ``_store.Store``. Nothing here sends requests.
"""

from __future__ import annotations

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
from ._files import default_output_dir, user_dir
from ._protocol import check_audio_url
from ._redact import redact_url
from ._settings import ENV_MAX_CREDITS, Settings
from ._store import GroupBy, LedgerEntry, LedgerLockedError, ReservationRefused, Store
from ._store_url import open_store_url
from .catalogue import MODELS
from .errors import (
    APITimeoutError,
    BudgetExceededError,
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
GROUPINGS: tuple[GroupBy, ...] = ("day", "model", "voice", "engine")
# A learned rate comes from this much of the ledger, and is re-read at most this often.
RATE_WINDOW = 30 * DAY
RATE_REFRESH = 60.0
# A reservation on a shared store outlives the call it holds by this much; a process that
# dies mid-call frees the budget after that (its call is then counted at the estimate).
LEASE_MARGIN = 60.0


@dataclass(frozen=True)
class Hold:
    """What a call holds of the budget until it settles: the estimate, and where."""

    amount: float
    reservation: str | None = None
    """The shared store's reservation id (None: held in this process only)."""


NO_HOLD = Hold(0.0)


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


def _entry(speech: Speech, text: str, credits: float, ts: float) -> LedgerEntry:
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
        self._store: Store | None = None
        self._store_opened = False
        self._open_lock = threading.Lock()
        # A shared store (PostgreSQL) holds the daily budget itself, atomically across
        # replicas; the local SQLite default keeps today's in-process reservations.
        url = settings.store_url or ""
        self.shared = settings.ledger and bool(url) and not url.lower().startswith("sqlite:")
        self._rates: dict[str, float] = {}
        self._rates_read = -math.inf

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

    def reserve_needs_io(self) -> bool:
        """Whether reserve() may read the ledger file (else it is a few microseconds)."""
        if not self._store_opened:
            return True
        store = self._store
        if store is None:
            return False
        if self.shared or self._rate_is_stale():
            return True
        fresh = getattr(store, "window_is_fresh", None)
        return fresh is None or not fresh(self._clock() - DAY)

    @property
    def needs_budget_check(self) -> bool:
        return self.daily_limit is not None or self.client_limit is not None

    # ------------------------------------------------------------ cache

    def cache_key(self, engine: str, model: str, voice: str | None, fmt: str, text: str) -> str:
        parts = json.dumps([engine, model, voice, fmt, text_digest(text)])
        return hashlib.sha256(parts.encode()).hexdigest()

    def cached(self, key: str) -> Speech | None:
        """The earlier result for ``key`` within the TTL, marked cached and free."""
        store = self.store
        if self.cache_ttl <= 0 or store is None:
            return None
        value = store.cache_get(key, self._clock())
        if value is None:
            return None
        try:
            earlier = Speech.model_validate_json(value)
        except ValueError:
            return None
        # The cache table is a file anyone with access to it can edit: an entry is vetted
        # like a fresh answer, and one that fails is a miss.
        if not self._safe_cached_url(earlier.audio_url):
            return None
        return reused(earlier)

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
        if not self._safe_cached_url(earlier.audio_url):
            return None, None
        return None, reused(earlier)

    def finish_lead(self, key: str, token: str | None, speech: Speech | None) -> None:
        """Hand the leader's result (None: it failed) to the replicas waiting for it."""
        coalescer = getattr(self.store, "coalescer", None)
        if token is not None and coalescer is not None:
            coalescer.finish(key, token, speech.model_dump_json() if speech else None)

    # ------------------------------------------------------------ budget

    def estimate(self, model: str, characters: int) -> float:
        """Credits a call is expected to cost, before it is made.

        The documented rate where there is one; else what the ledger has seen the model
        billed per character; else DEFAULT_CREDITS_PER_CHAR, never zero for a paid model.
        """
        rate = CREDITS_PER_CHAR_ESTIMATE.get(model)
        if rate is None:
            rate = self._learned_rates().get(model, DEFAULT_CREDITS_PER_CHAR)
        return rate * characters

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
        return self._rates

    def reserve(self, model: str, characters: int) -> Hold:
        """Hold the estimated cost of a call, or raise BudgetExceededError."""
        if not self.needs_budget_check:
            return NO_HOLD
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
            if self.daily_limit is None:
                return Hold(estimate)
            if self.shared:
                return self._reserve_shared(estimate, now)
            with self._budget_lock:
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
            return Hold(estimate)
        except BaseException:
            self._unhold(Hold(estimate))
            raise

    def _reserve_shared(self, estimate: float, now: float) -> Hold:
        """Reserve on the shared store: one transaction, atomic across every replica."""
        store = self.store
        assert store is not None and self.daily_limit is not None
        lease = self._settings.timeout + LEASE_MARGIN
        got = store.reserve("daily", estimate, self.daily_limit, DAY, lease, now)
        if isinstance(got, ReservationRefused):
            spent = got.spent + got.held
            raise BudgetExceededError(
                _daily_message(estimate, spent, self.daily_limit, got.frees_at, now),
                limit=self.daily_limit,
                spent=spent,
                estimate=estimate,
                frees_at=got.frees_at,
            )
        return Hold(estimate, got)

    def release(self, hold: Hold) -> None:
        """Give back what a call that failed held: it was not billed."""
        self._unhold(hold)
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

    def settle(
        self, speech: Speech, text: str, cache_key: str | None, hold: Hold = NO_HOLD
    ) -> None:
        """Record a finished call (and remember it for the cache); ends its ``hold``."""
        credits = float(speech.credits_used or 0)
        now = self._clock()
        with self._lock:
            self._client_spent += credits
        store = self.store
        if store is None:
            if self.daily_limit is not None:  # else nothing keeps the entry: skip building it
                entry = _entry(speech, text, credits, now)
                with self._budget_lock, self._lock:
                    self._local_entries.append(entry)
            self._unhold(hold)
            return
        entry = _entry(speech, text, credits, now)
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
            store.cache_put(cache_key, speech.model_dump_json(), entry.ts + self.cache_ttl)

    def usage(self, since: str | float | None = None, by: str = "day") -> UsageReport:
        """What the ledger holds since ``since`` (``"7d"``, ``"24h"``, epoch seconds)."""
        if by not in GROUPINGS:
            raise InvalidInputError(
                f"by must be one of {', '.join(GROUPINGS)}; got {by!r}.", field="by"
            )
        start = parse_since(since)
        store = self.store
        rows = store.usage(start, by) if store is not None else []
        groups = [
            UsageGroup(
                key=r.key,
                calls=r.calls,
                cached_calls=r.cached_calls,
                characters=r.characters,
                credits=r.credits,
                usd=round(r.usd, 6),
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
            ledger=self.ledger_name if store is not None else "ledger off",
        )


def _daily_message(
    estimate: float, spent: float, limit: float, frees_at: float | None, now: float
) -> str:
    when = ""
    if frees_at is not None:
        minutes = max(1, round((frees_at - now) / 60))
        clock = time.strftime("%H:%M UTC", time.gmtime(frees_at))
        when = f" The oldest charge leaves the 24-hour window at {clock} (in {minutes} min)."
    return (
        f"Spend limit reached: this call would cost about {estimate:,.0f} credits and "
        f"{spent:,.0f} of the {limit:,.0f}-credit daily budget ({ENV_MAX_CREDITS[0]}) "
        f"were spent in the last 24 hours.{when} Wait, or raise the budget."
    )
