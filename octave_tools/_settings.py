"""Settings: constructor arguments first, then the environment, then defaults.

The API key is held in a field that no repr, str or error ever shows.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from ._redact import register_secret, shown
from .errors import ConfigurationError
from .voices import DEFAULT_MODEL, AudioFormat, resolve_format

EngineChoice = Literal["auto", "aimlapi", "local"]
ENGINE_CHOICES: tuple[EngineChoice, ...] = ("auto", "aimlapi", "local")

# One place for every environment variable name (first name wins).
ENV_API_KEY = ("AIMLAPI_API_KEY", "AIML_API_KEY")
ENV_BASE_URL = ("AIMLAPI_BASE_URL", "AIMLAPI_API_BASE")
ENV_MODEL = ("OCTAVE_TOOLS_MODEL",)
ENV_VOICE = ("OCTAVE_TOOLS_VOICE",)
ENV_FORMAT = ("OCTAVE_TOOLS_FORMAT",)
ENV_TIMEOUT = ("OCTAVE_TOOLS_TIMEOUT",)
ENV_MAX_RETRIES = ("OCTAVE_TOOLS_MAX_RETRIES",)
ENV_ENGINE = ("OCTAVE_TOOLS_ENGINE",)
ENV_OUTPUT_DIR = ("OCTAVE_TOOLS_OUTPUT_DIR",)
ENV_DATA_DIR = ("OCTAVE_TOOLS_DATA_DIR",)
ENV_LEDGER = ("OCTAVE_TOOLS_LEDGER",)
ENV_MAX_CREDITS = ("OCTAVE_TOOLS_MAX_CREDITS",)
ENV_CACHE_TTL = ("OCTAVE_TOOLS_CACHE_TTL",)

DEFAULT_BASE_URL = "https://api.aimlapi.com/v1"
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")
DEFAULT_TIMEOUT = 60.0
# Past about 1e9 s the socket layer overflows; no call is worth waiting a day for.
MAX_TIMEOUT = 86_400.0
DEFAULT_MAX_RETRIES = 2
MAX_RETRIES_LIMIT = 10


class _Secret:
    """A string that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        # So that logs and upstream echoes are scrubbed of it, whoever prints them.
        register_secret(value)

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'**********'"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("the API key is not picklable")


@dataclass(frozen=True)
class Settings:
    """Everything a client needs to know, resolved once."""

    api_key: _Secret | None = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    voice: str | None = None
    format: AudioFormat | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    engine: EngineChoice = "auto"
    output_dir: str | None = None
    data_dir: str | None = None
    ledger: bool = True
    max_credits_per_day: float | None = None
    cache_ttl: float = 0.0

    def __repr__(self) -> str:
        key = "set" if self.api_key else "missing"
        return (
            f"Settings(api_key=<{key}>, base_url={self.base_url!r}, model={self.model!r}, "
            f"voice={self.voice!r}, format={self.format!r}, timeout={self.timeout!r}, "
            f"max_retries={self.max_retries!r}, engine={self.engine!r})"
        )

    @property
    def has_key(self) -> bool:
        return self.api_key is not None

    def require_key(self) -> str:
        """The API key, or a ConfigurationError that says how to set it."""
        if self.api_key is None:
            raise ConfigurationError(
                f"No AIML API key. Set {ENV_API_KEY[0]} in the environment (or pass "
                "api_key=...); get a key at https://aimlapi.com/app/keys."
            )
        return self.api_key.get()

    def tts_url(self) -> str:
        return self.base_url.rstrip("/") + "/tts"

    @classmethod
    def load(
        cls,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str | None = None,
        voice: str | None = None,
        format: str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        engine: str | None = None,
        output_dir: str | None = None,
        data_dir: str | None = None,
        ledger: bool | None = None,
        max_credits_per_day: float | None = None,
        cache_ttl: float | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Resolve settings from arguments, then ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ

        def pick(arg: object, arg_name: str, names: tuple[str, ...]) -> tuple[str | None, str]:
            if arg is not None:
                return str(arg), arg_name
            for name in names:
                value = env.get(name, "").strip()
                if value:
                    return value, name
            return None, names[0]

        key, _ = pick(api_key, "api_key", ENV_API_KEY)
        raw_base, base_src = pick(base_url, "base_url", ENV_BASE_URL)
        raw_model, _ = pick(model, "model", ENV_MODEL)
        raw_voice, _ = pick(voice, "voice", ENV_VOICE)
        raw_format, format_src = pick(format, "format", ENV_FORMAT)
        raw_timeout, timeout_src = pick(timeout, "timeout", ENV_TIMEOUT)
        raw_retries, retries_src = pick(max_retries, "max_retries", ENV_MAX_RETRIES)
        raw_engine, engine_src = pick(engine, "engine", ENV_ENGINE)
        raw_out, _ = pick(output_dir, "output_dir", ENV_OUTPUT_DIR)
        raw_data, _ = pick(data_dir, "data_dir", ENV_DATA_DIR)
        raw_ledger, ledger_src = pick(
            None if ledger is None else ("on" if ledger else "off"), "ledger", ENV_LEDGER
        )
        raw_max, max_src = pick(max_credits_per_day, "max_credits_per_day", ENV_MAX_CREDITS)
        raw_ttl, ttl_src = pick(cache_ttl, "cache_ttl", ENV_CACHE_TTL)

        key = key.strip() if key else None
        if key and not _KEY_CHARS.fullmatch(key):
            # Said without the key: a pasted key with a newline or a stray character would
            # otherwise end up in an HTTP library's error message, in full.
            raise ConfigurationError(
                f"The API key ({ENV_API_KEY[0]} or api_key) holds a space, a control character "
                "or a non-ASCII character; copy it again from https://aimlapi.com/app/keys."
            )
        return cls(
            api_key=_Secret(key) if key else None,
            base_url=_parse_base_url(raw_base, base_src),
            model=raw_model or DEFAULT_MODEL,
            voice=raw_voice,
            format=_parse_format(raw_format, format_src),
            timeout=_parse_timeout(raw_timeout, timeout_src),
            max_retries=_parse_retries(raw_retries, retries_src),
            engine=_parse_engine(raw_engine, engine_src),
            output_dir=raw_out,
            data_dir=raw_data,
            ledger=_parse_switch(raw_ledger, ledger_src),
            max_credits_per_day=_parse_amount(raw_max, max_src, allow_zero=True),
            cache_ttl=_parse_amount(raw_ttl, ttl_src, allow_zero=True) or 0.0,
        )


def _parse_base_url(raw: str | None, source: str) -> str:
    if raw is None:
        return DEFAULT_BASE_URL
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{source} must be an http(s) URL such as {DEFAULT_BASE_URL}; got {shown(raw)}."
        )
    if parts.username or parts.password:
        raise ConfigurationError(f"{source} must not contain credentials; use the API key setting.")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigurationError(
            f"{source} uses plain http to a non-loopback host; use https so the key is not sent "
            "in clear text."
        )
    return raw.rstrip("/")


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and the 127.0.0.0/8, ::1 and ::ffff:127.x.x.x addresses.

    The host is parsed as an address, never prefix-matched: ``127.attacker.example``
    is a name anyone can point anywhere.
    """
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _parse_format(raw: str | None, source: str) -> AudioFormat | None:
    if raw is None:
        return None
    try:
        return resolve_format(raw)
    except ValueError:
        raise ConfigurationError(f"{source} must be wav or mp3; got {shown(raw)}.") from None


def _parse_timeout(raw: str | None, source: str) -> float:
    if raw is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT):
        raise ConfigurationError(
            f"{source} must be a positive number of seconds (e.g. 60), at most "
            f"{MAX_TIMEOUT:,.0f}; got {shown(raw)}."
        )
    return value


def _parse_retries(raw: str | None, source: str) -> int:
    if raw is None:
        return DEFAULT_MAX_RETRIES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_RETRIES_LIMIT:
        raise ConfigurationError(
            f"{source} must be a whole number from 0 to {MAX_RETRIES_LIMIT}; got {shown(raw)}."
        )
    return value


def _parse_engine(raw: str | None, source: str) -> EngineChoice:
    if raw is None:
        return "auto"
    folded = raw.strip().lower()
    for choice in ENGINE_CHOICES:
        if folded == choice:
            return choice
    raise ConfigurationError(
        f"{source} must be one of {', '.join(ENGINE_CHOICES)}; got {shown(raw)}."
    )


def _parse_switch(raw: str | None, source: str) -> bool:
    if raw is None:
        return True
    folded = raw.strip().lower()
    if folded in ("on", "1", "true", "yes"):
        return True
    if folded in ("off", "0", "false", "no"):
        return False
    raise ConfigurationError(f"{source} must be on or off; got {shown(raw)}.")


def _parse_amount(raw: str | None, source: str, *, allow_zero: bool) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value > 0 or (allow_zero and value == 0))):
        raise ConfigurationError(f"{source} must be a number of 0 or more; got {shown(raw)}.")
    return value
