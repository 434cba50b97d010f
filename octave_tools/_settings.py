"""Settings: constructor arguments first, then the environment, then defaults.

The API key is held in a field that no repr, str or error ever shows.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict
from urllib.parse import urlsplit

from typing_extensions import Unpack

from ._redact import register_secret, shown, url_secrets
from .catalogue import ALL_FORMATS
from .errors import ConfigurationError
from .voices import DEFAULT_MODEL, normalise_format

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
ENV_MODELS = ("OCTAVE_TOOLS_MODELS",)
ENV_STORE_URL = ("OCTAVE_TOOLS_STORE_URL",)
ENV_CACHE_URL = ("OCTAVE_TOOLS_CACHE_URL",)

DEFAULT_BASE_URL = "https://api.aimlapi.com/v1"
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:-]*")
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


class SettingsOptions(TypedDict, total=False):
    """Every setting as a keyword argument (None or absent: the environment, then the default).

    ``SETTINGS`` below says, per name, its environment variable, default and meaning; a
    test keeps the two, ``Settings`` and the README's table the same list.
    """

    api_key: str | None
    base_url: str | None
    model: str | None
    voice: str | None
    format: str | None
    timeout: float | None
    max_retries: int | None
    engine: str | None
    output_dir: str | None
    data_dir: str | None
    ledger: bool | None
    max_credits_per_day: float | None
    max_credits: float | None
    cache_ttl: float | None
    models: str | Sequence[str] | None
    store_url: str | None
    cache_url: str | None


@dataclass(frozen=True)
class Setting:
    """One setting: its name, where it is read from, its default and what it does."""

    name: str
    env: tuple[str, ...]
    default: str
    doc: str
    parse: Callable[[str | None, str], Any]


@dataclass(frozen=True)
class Settings:
    """Everything a client needs to know, resolved once (fields as in ``SETTINGS``)."""

    api_key: _Secret | None = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    voice: str | None = None
    format: str | None = None
    """A format some model can give (checked against the model at call time);
    None uses each model's own default."""
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    engine: EngineChoice = "auto"
    output_dir: str | None = None
    data_dir: str | None = None
    ledger: bool = True
    max_credits_per_day: float | None = None
    max_credits: float | None = None
    cache_ttl: float = 0.0
    models: tuple[str, ...] = ()
    """Models a face offers besides ``model`` (empty: only ``model``)."""
    store_url: str | None = field(default=None, repr=False)
    """Where the ledger, budget and cache live (None: SQLite in ``data_dir``)."""
    cache_url: str | None = field(default=None, repr=False)
    """A Redis URL for the cache and the coalescing of identical calls (None: the store)."""

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
        cls, *, environ: Mapping[str, str] | None = None, **options: Unpack[SettingsOptions]
    ) -> Settings:
        """Resolve settings from ``options``, then ``environ`` (default ``os.environ``).

        An unknown option is a TypeError naming the known ones; a bad value is a
        ConfigurationError naming the setting (or its environment variable) and the fix.
        """
        check_options(options)
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            arg: Any = options.get(setting.name)
            raw: str | None
            if arg is not None:
                seq = isinstance(arg, (list, tuple))
                raw, source = ",".join(map(str, arg)) if seq else str(arg), setting.name
            else:
                raw, source = None, setting.env[0] if setting.env else setting.name
                for name in setting.env:
                    value = env.get(name, "").strip()
                    if value:
                        raw, source = value, name
                        break
            values[setting.name] = setting.parse(raw, source)
        return cls(**values)


def check_options(options: Mapping[str, object]) -> None:
    """Raise TypeError for any name in ``options`` that is not a setting."""
    unknown = [name for name in options if name not in SETTING_NAMES]
    if unknown:
        close = difflib.get_close_matches(unknown[0], SETTING_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TypeError(
            f"Unknown setting {', '.join(map(repr, unknown))}.{hint} "
            f"Settings: {', '.join(SETTING_NAMES)}."
        )


def _parse_key(raw: str | None, source: str) -> _Secret | None:
    key = raw.strip() if raw else None
    if key and not _KEY_CHARS.fullmatch(key):
        # Said without the key: a pasted key with a newline or a stray character would
        # otherwise end up in an HTTP library's error message, in full.
        raise ConfigurationError(
            f"The API key ({ENV_API_KEY[0]} or api_key) holds a space, a control character "
            "or a non-ASCII character; copy it again from https://aimlapi.com/app/keys."
        )
    return _Secret(key) if key else None


def _parse_text(raw: str | None, source: str) -> str | None:
    return raw


def _parse_model(raw: str | None, source: str) -> str:
    return (raw or "").strip() or DEFAULT_MODEL


def _parse_ttl(raw: str | None, source: str) -> float:
    return _parse_amount(raw, source, allow_zero=True) or 0.0


def _parse_models(raw: str | None, source: str) -> tuple[str, ...]:
    if raw is None or not raw.strip():
        return ()
    if raw.strip().lower() == "all":
        from .catalogue import MODELS

        return tuple(MODELS)
    ids = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    for model in ids:
        if len(model) > 100 or not _MODEL_ID.fullmatch(model):
            raise ConfigurationError(
                f"{source} must be model ids separated by commas (e.g. hume/octave-2,openai/tts-1) "
                f"or all; got {shown(model)}."
            )
    return ids


def _parse_url(raw: str | None, source: str) -> str | None:
    if raw is None or not raw.strip():
        return None
    url = raw.strip()
    # A password in the URL is as secret as the API key: scrubbed from every log line.
    for password in url_secrets(url):
        register_secret(password, min_chars=1)  # a short one too (as a whole token)
    return url


def _parse_limit(raw: str | None, source: str) -> float | None:
    return _parse_amount(raw, source, allow_zero=True)


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


def _parse_format(raw: str | None, source: str) -> str | None:
    if raw is None:
        return None
    fmt = normalise_format(raw)
    if fmt is None:
        raise ConfigurationError(
            f"{source} must be wav or mp3, or another format some model gives "
            f"({', '.join(f for f in ALL_FORMATS if f not in ('wav', 'mp3'))}); "
            f"got {shown(raw)}."
        )
    return fmt


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


SETTINGS: tuple[Setting, ...] = (
    Setting("api_key", ENV_API_KEY, "none",
            "Your AIML API key; never printed, logged or stored.", _parse_key),
    Setting("base_url", ENV_BASE_URL, f"`{DEFAULT_BASE_URL}`",
            "API base URL (https; plain http only to loopback).", _parse_base_url),
    Setting("model", ENV_MODEL, f"`{DEFAULT_MODEL}`",
            "Text-to-speech model id; voices are checked for known models.", _parse_model),
    Setting("voice", ENV_VOICE, "the model's (`Vince Douglas`)",
            "Default voice for calls that name none.", _parse_text),
    Setting("format", ENV_FORMAT, "the model's (`wav` for Octave)",
            "Default audio format: `wav`, `mp3`, `opus`, `aac`, `flac` or `pcm`, as the model "
            "can give it.", _parse_format),
    Setting("timeout", ENV_TIMEOUT, f"`{DEFAULT_TIMEOUT:g}`",
            "Total seconds for one call: retries and waits for the store included.",
            _parse_timeout),
    Setting("max_retries", ENV_MAX_RETRIES, f"`{DEFAULT_MAX_RETRIES}`",
            f"Retries on 408/409/429/5xx and dropped connections (0 to {MAX_RETRIES_LIMIT}).",
            _parse_retries),
    Setting("engine", ENV_ENGINE, "`auto`",
            "`auto` (the AIML API with a key, else the local engine), `aimlapi` or `local`.",
            _parse_engine),
    Setting("output_dir", ENV_OUTPUT_DIR, "the user cache folder (`~/.cache/octave-tools`)",
            "Where audio files are written (local engine, raw-audio answers).", _parse_text),
    Setting("data_dir", ENV_DATA_DIR, "the user data folder (`~/.local/share/octave-tools`)",
            "Where the spend ledger and the cache live.", _parse_text),
    Setting("ledger", ENV_LEDGER, "`on`", "`on` or `off`: record every call in the ledger.",
            _parse_switch),
    Setting("max_credits_per_day", ENV_MAX_CREDITS, "none",
            "Credit budget for a rolling 24 hours, shared by every process on the ledger.",
            _parse_limit),
    Setting("max_credits", (), "none",
            "Credit limit for one client (or tool, toolkit, server) over its lifetime.",
            _parse_limit),
    Setting("cache_ttl", ENV_CACHE_TTL, "`0` (off)",
            "Seconds to reuse the result of an identical request, at no charge.", _parse_ttl),
    Setting("models", ENV_MODELS, "only `model`",
            "Models the MCP server and LangChain tool offer per call (comma list, or `all`); "
            "`model` is the default among them.", _parse_models),
    Setting("store_url", ENV_STORE_URL, "SQLite in `data_dir`",
            "`sqlite:///path` or `postgresql://...`: one ledger, budget and cache for every "
            "replica (see docs/deploy.md).", _parse_url),
    Setting("cache_url", ENV_CACHE_URL, "the store",
            "`redis://...`: the cache and the coalescing of identical calls in Redis.",
            _parse_url),
)  # fmt: skip
SETTING_NAMES: tuple[str, ...] = tuple(s.name for s in SETTINGS)


def settings_table() -> str:
    """The README's configuration table, made from ``SETTINGS``."""
    rows = ["| argument | environment variable | meaning | default |", "|---|---|---|---|"]
    for s in SETTINGS:
        env = " (fallback ".join(f"`{name}`" for name in s.env) + ")" * (len(s.env) - 1)
        rows.append(f"| `{s.name}` | {env or 'none (argument only)'} | {s.doc} | {s.default} |")
    return "\n".join(rows)
