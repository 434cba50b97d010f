"""Everything about a call that is not I/O: validation, the request, parsing, retries.

The sync and async clients share these pure functions and differ only in how
bytes move and how they sleep.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import json
import logging
import math
import os
import random
import re
import threading
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ._redact import MASK, shown
from ._redact import redact as _redact_all
from ._settings import ENV_API_KEY, ENV_FORMAT, ENV_MODEL, Settings, is_loopback
from ._version import __version__
from .catalogue import ALL_FORMATS, MODELS, UNDOCUMENTED_TEXT_LIMIT, BodyPath, ModelSpec
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvalidInputError,
    NotFoundError,
    RateLimitError,
    ServerError,
    UnexpectedResponseError,
)
from .models import Speech
from .voices import MAX_TEXT_CHARS, normalise_format, resolve_model_format, resolve_voice

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
# A Retry-After longer than this is not waited out: the caller gets the error and the hint.
MAX_RETRY_AFTER = 30.0
MAX_JSON_BYTES = 1 << 20
MAX_AUDIO_BYTES = 64 << 20
EXCERPT_CHARS = 200
logger = logging.getLogger("octave_tools")
_UNSAFE_URL_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")
# Real audio URLs are a few hundred characters; a longer one is a stuffed answer.
MAX_AUDIO_URL_CHARS = 4096
URL_EXCERPT_CHARS = 80
# An upstream request id is shown to users, models and logs: short and plain, or dropped.
MAX_REQUEST_ID_CHARS = 128
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:=+-]+")
# Characters that make no sound: controls, format characters (zero-width space and
# joiners, BOM, bidi marks) and separators. Lone surrogates (Cs) get their own message.
_SILENT_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
# The ASCII characters in those categories: the controls and the space.
_ASCII_SILENT = "".join(map(chr, (*range(0x21), 0x7F)))
# A dotted IPv4 spelling that getaddrinfo would take (127.1, 0x7f.0.0.1, 017700000001).
_NUMERIC_HOST = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?")
# Content types an audio answer may carry, and the only extensions its file may get.
_AUDIO_EXTENSIONS = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/mpeg3": "mp3",
    "audio/x-mpeg": "mp3",
    "audio/x-mp3": "mp3",
    "audio/ogg": "ogg",
    "audio/vorbis": "ogg",
    "audio/opus": "opus",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/aac": "aac",
    "audio/x-aac": "aac",
    "audio/aacp": "aac",
    "audio/mp4": "m4a",
    "audio/x-m4a": "m4a",
    "audio/webm": "webm",
    "audio/l16": "pcm",
    "audio/pcm": "pcm",
    "audio/x-pcm": "pcm",
    "audio/basic": "au",
}
# Any other audio type: the upstream does not get to choose the file's extension.
NEUTRAL_AUDIO_EXTENSION = "audio"
_EXTENSIONS = frozenset(_AUDIO_EXTENSIONS.values())
# How a file of each kind starts (offset, bytes), all of them: stronger than a content type.
_SIGNATURES: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...] = (
    ("wav", ((0, b"RIFF"), (8, b"WAVE"))),
    ("mp3", ((0, b"ID3"),)),
    ("opus", ((0, b"OggS"), (28, b"OpusHead"))),
    ("ogg", ((0, b"OggS"),)),
    ("flac", ((0, b"fLaC"),)),
    ("m4a", ((4, b"ftyp"),)),
    ("webm", ((0, b"\x1aE\xdf\xa3"),)),
    ("au", ((0, b".snd"),)),
)


@dataclass(slots=True)
class Call:
    """A validated request, ready to send (the same bytes on every attempt).

    Never changed after it is made; not a frozen dataclass only because that one's
    ``__init__`` sets each field through ``object.__setattr__``, a few µs on every call.
    """

    url: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    text_chars: int
    model: str
    voice: str | None
    format: str
    """The user format the answer is in (what was asked, or the model's default)."""
    client_request_id: str
    secret: str = field(repr=False, default="")
    speed: float | None = None


@dataclass(slots=True)
class RawResponse:
    """What came back from one attempt, body already capped and read (never changed).

    ``headers`` has lower-case names (a plain dict is much cheaper to query than
    ``httpx.Headers``, and this is on every call's path).
    """

    status_code: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class AudioPayload:
    """A 2xx that carried the audio bytes themselves instead of a URL."""

    data: bytes
    extension: str
    request_id: str | None
    credits_used: int | float | None
    usd_spent: float | None


def validate_text(
    text: object, *, limit: int | None = MAX_TEXT_CHARS, model: str | None = None
) -> str:
    """Return ``text`` if it can be sent, else raise InvalidInputError naming the fix.

    ``limit`` is the model's documented maximum (None: the docs give none, so the
    API is left to enforce it); ``model`` names it in the message.
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"text must be a string, not {type(text).__name__}.", field="text")
    if text.isascii() and text.strip(_ASCII_SILENT) and (limit is None or len(text) <= limit):
        return text  # the usual case, decided in C: audible, short enough, no surrogates
    if not text.strip():
        raise InvalidInputError(
            "text is empty. Pass the words to speak (at least one non-space character).",
            field="text",
        )
    # Stops at the first audible character, which is nearly always the first one.
    if all(unicodedata.category(c) in _SILENT_CATEGORIES for c in text):
        raise InvalidInputError(
            "text is empty: it holds only invisible or control characters (such as zero-width "
            "spaces or NUL). Pass the words to speak.",
            field="text",
        )
    if limit is not None and len(text) > limit:
        # A limit below the usual one is the model's own: say whose, as the fix may be
        # another model rather than shorter text.
        for_model = f" for model {model!r}" if model and limit != MAX_TEXT_CHARS else ""
        raise InvalidInputError(
            f"text is {len(text):,} characters; the limit is {limit:,}{for_model}. "
            "Split it into shorter parts and synthesise each.",
            field="text",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"text holds invalid Unicode at character {exc.start} (a lone surrogate). "
            "Remove it or decode the text properly.",
            field="text",
        ) from None
    return text


def prepare(
    settings: Settings,
    text: object,
    voice: str | None,
    fmt: str | None,
    *,
    model: str | None = None,
    speed: float | None = None,
) -> Call:
    """Validate the arguments and build the request for ``model``; raises before any I/O.

    ``model`` defaults to the configured one. A catalogued model gets the body its
    spec describes (voice, format and speed in its own fields, all checked first);
    any other id is sent with the generic fields only and no local checks.
    """
    key = _template_key(settings, voice, fmt, model, speed)
    template = None if key is None else _TEMPLATES.get(key)
    if template is None or template.settings is not settings:
        model_id = _model_id(model, settings)
        spec = MODELS.get(model_id)
        limit, limit_model = _limit_of(model_id, spec)
        text = validate_text(text, limit=limit, model=limit_model)
        template = _make_template(settings, model_id, spec, voice, fmt, speed)
        if key is not None and template.tail is not None:
            if len(_TEMPLATES) >= _MAX_TEMPLATES:
                _TEMPLATES.clear()
            _TEMPLATES[key] = template
    else:
        text = validate_text(text, limit=template.limit, model=template.limit_model)
    if template.spec is None:
        _warn_uncatalogued(template.model)
    if template.tail is None:  # the mark was not found once: build this body whole
        body = _JSON.encode(_body(settings, template, text, voice, fmt, speed)[0])
        encoded = body.encode("utf-8")
    else:
        encoded = template.head + _encode_text(text).encode("utf-8") + template.tail
    key_value = settings.require_key()
    # 128 random bits, as uuid4 has, at a quarter of its cost.
    client_request_id = f"octave-tools-{os.urandom(16).hex()}"
    return Call(
        url=settings.tts_url(),
        headers={
            "Authorization": f"Bearer {key_value}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": _USER_AGENT,
            "X-Client-Request-Id": client_request_id,
        },
        body=encoded,
        text_chars=len(text),
        model=template.model,
        voice=template.voice,
        format=template.format,
        client_request_id=client_request_id,
        secret=key_value,
        speed=speed,
    )


@dataclass(frozen=True)
class _Template:
    """The checked outcome of one (settings, model, voice, format, speed): the body as
    ``head + JSON string of the text + tail``, and what the Call reports."""

    settings: Settings
    head: bytes
    tail: bytes | None
    """None when the body could not be cut around the text (never cached)."""
    model: str
    spec: ModelSpec | None
    voice: str | None
    format: str
    limit: int | None
    limit_model: str | None


# Keyed on all a body depends on besides the text: the settings (the very object, so a
# setting the body comes to read needs no change here) and the arguments. Only ones
# that passed every check get in, so a hit re-checks nothing but the text. Bounded.
_TEMPLATES: dict[tuple[object, ...], _Template] = {}
_MAX_TEMPLATES = 256
# Marks where the text goes in a body (as JSON: "\u0000octave-tools-text\u0000").
_TEXT_MARK = "\x00octave-tools-text\x00"
# The JSON string of a text, as _JSON would write it inside the body.
_encode_text: Callable[[str], str] = json.encoder.encode_basestring
_PLAIN_TYPES = (str, type(None))
_SPEED_TYPES = (int, float, type(None))


def _template_key(
    settings: Settings, voice: object, fmt: object, model: object, speed: object
) -> tuple[object, ...] | None:
    """The cache key, or None for argument types that take the full path every time."""
    if (
        type(voice) in _PLAIN_TYPES
        and type(fmt) in _PLAIN_TYPES
        and type(model) in _PLAIN_TYPES
        and type(speed) in _SPEED_TYPES
    ):
        return (id(settings), model, voice, fmt, speed, type(speed))
    return None


def _make_template(
    settings: Settings,
    model_id: str,
    spec: ModelSpec | None,
    voice: str | None,
    fmt: str | None,
    speed: float | None,
) -> _Template:
    """Check the arguments (raising as the API would be told) and cut the body."""
    limit, limit_model = _limit_of(model_id, spec)
    partial = _Template(settings, b"", None, model_id, spec, voice, "", limit, limit_model)
    payload, sent_voice, produced = _body(settings, partial, _TEXT_MARK, voice, fmt, speed)
    body = _JSON.encode(payload)
    mark = _encode_text(_TEXT_MARK)
    if body.count(mark) == 1:
        head, _, rest = body.partition(mark)
        tail: bytes | None = rest.encode("utf-8")
    else:  # a voice or format that holds the mark itself
        head, tail = body, None
    return _Template(
        settings,
        head.encode("utf-8"),
        tail,
        model_id,
        spec,
        sent_voice,
        produced,
        limit,
        limit_model,
    )


def _body(
    settings: Settings,
    template: _Template,
    text: str,
    voice: str | None,
    fmt: str | None,
    speed: float | None,
) -> tuple[dict[str, Any], str | None, str]:
    if template.spec is None:
        return _generic_body(settings, template.model, text, voice, fmt, speed)
    return _spec_body(settings, template.spec, text, voice, fmt, speed)


_USER_AGENT = f"octave-tools/{__version__}"
# The same output as json.dumps(..., ensure_ascii=False), without building an encoder
# per call; no circular check, as the payload is built here (~2 us of ~5 a call).
_JSON = json.JSONEncoder(ensure_ascii=False, check_circular=False)


def _model_id(model: str | None, settings: Settings) -> str:
    if model is None:
        return settings.model
    if not isinstance(model, str) or not model.strip():
        raise InvalidInputError(
            f"model must be a model id such as 'openai/tts-1'; got {shown(model)}. Leave it out "
            f"for the configured model ({settings.model!r}).",
            field="model",
        )
    return model.strip()


def _spec_body(
    settings: Settings,
    spec: ModelSpec,
    text: str,
    voice: str | None,
    fmt: str | None,
    speed: float | None,
) -> tuple[dict[str, Any], str | None, str]:
    """The body ``spec`` describes, the voice sent and the user format produced."""
    configured = spec.id == settings.model
    if voice is not None:
        chosen_voice = resolve_voice(voice, spec.id)
    else:
        chosen_voice = _configured_voice(settings, spec, configured)
    if fmt is not None:
        chosen_format = resolve_model_format(fmt, spec)
    elif settings.format is not None and (configured or settings.format in spec.formats):
        # The setting is checked for the configured model; for a model picked per call it
        # is a preference that yields to that model's default when it cannot give it.
        chosen_format = _configured_format(settings.format, spec)
    else:
        chosen_format = spec.default_format
    body_speed = _speed_value(spec, speed)

    payload: dict[str, Any] = {"model": spec.id, spec.text_field: text}
    if chosen_voice is not None:
        _put(payload, spec.voice_path, chosen_voice)
    if chosen_format is not None and spec.format_path is not None:
        _put(payload, spec.format_path, spec.format_value(chosen_format))
    if body_speed is not None and spec.speed is not None:
        _put(payload, spec.speed.path, body_speed)
    if spec.stream_false:
        payload["stream"] = False
    return payload, chosen_voice, chosen_format or spec.native_format


def _configured_voice(settings: Settings, spec: ModelSpec, configured: bool) -> str | None:
    if settings.voice is None or configured:
        return resolve_voice(settings.voice, spec.id)
    # The configured voice belongs to the configured model; another model uses it only if
    # it has a voice of that name, else its own default.
    try:
        return resolve_voice(settings.voice, spec.id)
    except InvalidInputError:
        return resolve_voice(None, spec.id)


def _configured_format(fmt: str, spec: ModelSpec) -> str | None:
    try:
        return resolve_model_format(fmt, spec)
    except InvalidInputError as exc:
        raise InvalidInputError(
            f"{exc} (The format comes from the setting {ENV_FORMAT[0]}; change it or pass "
            "a format per call.)",
            field="format",
        ) from None


def _speed_value(spec: ModelSpec, speed: object) -> float | int | None:
    if speed is None:
        return None
    option = spec.speed
    if option is None:
        with_speed = ", ".join(m for m, s in MODELS.items() if s.speed is not None)
        raise InvalidInputError(
            f"Model {spec.id!r} has no speed setting; leave speed out. "
            f"Models with one: {with_speed}.",
            field="speed",
        )
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or speed != speed:
        raise InvalidInputError(
            f"speed must be a number such as 1.0 (normal) or 1.25; got {shown(speed)}.",
            field="speed",
        )
    if not option.minimum <= speed <= option.maximum:
        raise InvalidInputError(
            f"speed {speed:g} is out of range for model {spec.id!r}: use "
            f"{option.minimum:g} to {option.maximum:g} (1 is normal).",
            field="speed",
        )
    return option.to_body(float(speed))


def _put(payload: dict[str, Any], path: BodyPath, value: object) -> None:
    """Set ``value`` at ``path`` in ``payload``, making the objects and arrays on the way."""
    node: Any = payload
    for step, after in itertools.pairwise((*path, None)):
        child: Any = value if after is None else [] if isinstance(after, int) else {}
        if isinstance(step, int):
            while len(node) <= step:
                node.append(None)
            if after is None or node[step] is None:
                node[step] = child
            node = node[step]
        else:
            if after is None or step not in node:
                node[step] = child
            node = node[step]


_PLAIN_FORMAT = re.compile(r"[A-Za-z0-9_]{1,20}")
_warned_models: set[str] = set()
_warned_lock = threading.Lock()


def _limit_of(model_id: str, spec: ModelSpec | None) -> tuple[int, str]:
    """The text limit of one request, and the model it is named after in errors: the
    documented one, or for a model without one (or outside the catalogue) the
    conservative UNDOCUMENTED_TEXT_LIMIT."""
    if spec is None:
        return UNDOCUMENTED_TEXT_LIMIT, model_id
    return spec.text_limit, spec.id


def _warn_uncatalogued(model_id: str) -> None:
    """Once per model and process: say that an uncatalogued model is sent unchecked."""
    if model_id in _warned_models:
        return
    with _warned_lock:
        first = model_id not in _warned_models
        _warned_models.add(model_id)
    if first:
        logger.warning(
            "octave-tools: model %s is not in the catalogue; sending only model, text, voice "
            "and format, with no local checks of voice or format and a text limit of %s "
            "characters (none is documented).",
            shown(model_id),
            f"{UNDOCUMENTED_TEXT_LIMIT:,}",
        )


def _generic_body(
    settings: Settings,
    model_id: str,
    text: str,
    voice: str | None,
    fmt: str | None,
    speed: float | None,
) -> tuple[dict[str, Any], str | None, str]:
    """The body for a model outside the catalogue: the generic fields, unchecked."""
    if speed is not None:
        raise InvalidInputError(
            f"Model {shown(model_id)} is not in the catalogue, so where its speed goes is unknown; "
            "leave speed out or use a catalogued model (octave_tools.MODELS).",
            field="speed",
        )
    chosen_voice = resolve_voice(voice if voice is not None else settings.voice, model_id)
    chosen_format = fmt if fmt is not None else settings.format
    payload: dict[str, Any] = {"model": model_id, "text": text}
    if chosen_voice is not None:
        payload["voice"] = chosen_voice
    if chosen_format is not None:
        chosen_format = chosen_format.strip()
        payload["format"] = chosen_format
    # The body carries the format as given; results and messages show it only in our
    # vocabulary or as a short plain word, never an arbitrary string from the caller.
    produced = normalise_format(chosen_format) if chosen_format else None
    if produced is None and chosen_format and _PLAIN_FORMAT.fullmatch(chosen_format):
        produced = chosen_format.lower()
    return payload, chosen_voice, produced or "unknown"


# ---------------------------------------------------------------- responses


def body_limit(headers: Mapping[str, str]) -> int:
    """How many body bytes to accept for a response with these headers."""
    return MAX_AUDIO_BYTES if _is_audio(headers) else MAX_JSON_BYTES


def _is_audio(headers: Mapping[str, str]) -> bool:
    return headers.get("content-type", "").lower().startswith("audio/")


def redact(text: str, secret: str) -> str:
    """``text`` with ``secret``, every registered key and their 8-character pieces masked."""
    return _redact_all(text, secret)


def excerpt(body: bytes, secret: str) -> str:
    """A short, single-line, key-free quote of a response body."""
    window = body[: EXCERPT_CHARS * 4]
    text = redact(window.decode("utf-8", errors="replace"), secret)
    if secret and len(body) > len(window):
        # The cut may have gone through a copy of the key: what is left of it goes too.
        text = text[: -len(secret)]
    text = re.sub(r"<[^>]*>", " ", text)
    text = " ".join(text.split())
    text = redact(text, secret)
    if len(text) > EXCERPT_CHARS:
        text = text[: EXCERPT_CHARS - 1] + "…"
    return text or "(empty body)"


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _number(value: object) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        if parsed != parsed or abs(parsed) == float("inf"):
            return None
        return int(parsed) if parsed.is_integer() else parsed
    return None


def _dig(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def clean_request_id(value: object, secret: str) -> str | None:
    """An upstream request id fit to show: short, plain ASCII, key-free; else None."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > MAX_REQUEST_ID_CHARS or not _REQUEST_ID.fullmatch(value):
        return None
    value = redact(value, secret)
    return None if not value.replace(MASK, "").strip("*.:=+-_") else value


def _request_id(headers: Mapping[str, str], data: Any, secret: str) -> str | None:
    # In order, each looked up only when the ones before gave nothing usable (hot path).
    header = headers.get("x-inference-id")
    if header is not None and (cleaned := clean_request_id(header, secret)) is not None:
        return cleaned
    if not isinstance(data, dict):
        return None
    for place in ("meta", "metadata"):
        inner = data.get(place)
        if isinstance(inner, dict) and "request_id" in inner:
            cleaned = clean_request_id(inner["request_id"], secret)
            if cleaned is not None:
                return cleaned
    return clean_request_id(data.get("requestId"), secret)


def _usage(headers: Mapping[str, str], data: Any) -> tuple[int | float | None, float | None]:
    usage = _dig(data, "meta", "usage")
    if not isinstance(usage, dict):
        usage = {}
    credits = _number(usage.get("credits_used"))
    if credits is None:
        credits = _number(headers.get("x-aimlapi-credits-used"))
    usd = _number(usage.get("usd_spent"))
    if usd is None:
        usd = _number(headers.get("x-aimlapi-usd-spent"))
    return credits, (float(usd) if usd is not None else None)


# An upstream figure above this many credits a character is not believed: 100 times the
# highest documented rate (hume/octave-2, ~125). A real model billed several times a
# guessed estimate stays under it (and is charged as billed); an absurd figure does not.
MAX_PLAUSIBLE_CREDITS_PER_CHAR = 100 * max(
    (s.credits_per_char for s in MODELS.values() if s.credits_per_char), default=125.0
)
# USD: the same bound, at a credit's documented price or a dollar a character if higher.
MAX_PLAUSIBLE_USD_PER_CHAR = 1.0


def plausible_cost(
    credits: int | float | None, usd: float | None, characters: int, model: str
) -> tuple[int | float | None, float | None]:
    """The upstream cost figures, or None for each that cannot be believed.

    Negative, non-finite or implausibly large figures are treated as unknown (the
    budget then charges the estimate) and logged once per call, the value bounded.
    """
    chars = max(1, characters)
    if credits is not None and not (
        math.isfinite(credits) and 0 <= credits <= MAX_PLAUSIBLE_CREDITS_PER_CHAR * chars
    ):
        logger.warning(
            "octave-tools: the API reported %s credits for %d characters of %s; that figure "
            "is not believed and the call is charged at its estimate.",
            _bounded_figure(credits),
            characters,
            model[:64],
        )
        credits = None
    if usd is not None and not (
        math.isfinite(usd) and 0 <= usd <= MAX_PLAUSIBLE_USD_PER_CHAR * chars
    ):
        usd = None
    return credits, usd


def _bounded_figure(value: float) -> str:
    """A number for a log line: a few significant digits whatever its size."""
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _audio_url(data: Any) -> str | None:
    audio = _dig(data, "audio")
    if isinstance(audio, dict):
        audio = audio.get("url")
    if isinstance(audio, str) and audio.strip():
        return audio.strip()
    return None


def check_audio_url(url: str, base_url: str) -> bool:
    """True if ``url`` is safe to hand to a user and to fetch: see ``audio_url_problem``."""
    return audio_url_problem(url, base_url) is None


def audio_url_problem(url: str, base_url: str) -> str | None:
    """Why ``url`` may not be passed on or fetched (a phrase after "an audio URL"), or None.

    Allowed: https to a public host name or address. Refused: other schemes, control
    characters, user names or passwords, over-long URLs, and private, loopback,
    link-local or otherwise special addresses however spelt; loopback (http or https)
    only in the test mode where the API itself is plain http on loopback.
    """
    if len(url) > MAX_AUDIO_URL_CHARS:
        return f"of {len(url):,} characters (the limit is {MAX_AUDIO_URL_CHARS:,})"
    not_https = f"that is not https ({_scheme(url)})"
    if _UNSAFE_URL_CHARS.search(url):
        return not_https
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:
        return not_https
    if not hostname or parts.scheme not in ("http", "https"):
        return not_https
    if "@" in parts.netloc:
        # https://api.aimlapi.com@evil.example/ goes to evil.example, whatever it looks like.
        return "with a user name or password in it"
    host_kind = _host_kind(hostname)
    if host_kind == "loopback" and _loopback_http_base(base_url):
        return None
    if parts.scheme == "http":
        return not_https
    if host_kind != "public":
        return "to a private, loopback or link-local address"
    return None


@functools.lru_cache(maxsize=256)
def _host_kind(hostname: str) -> str:
    """``public``, ``loopback`` or ``special`` for a URL's (lower-case) host name."""
    host = hostname.rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return "loopback"
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    if ":" in host:
        try:
            address = ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return "special"
    elif _NUMERIC_HOST.fullmatch(hostname) or host.rpartition(".")[2][:1].isdigit():
        # The resolver reads 2852039166, 0xa9.0xfe.0xa9.0xfe and 0251.0376.0251.0376
        # all as 169.254.169.254; a top-level "domain" starting with a digit is no name.
        parsed = _inet_aton(host)
        if parsed is None:
            return "special"
        address = parsed
    else:
        return "public"
    return _address_kind(address)


def address_kind(address: str) -> str:
    """``public``, ``loopback`` or ``special`` for an IP address as a resolver gives it."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "special"
    return _address_kind(parsed)


def loopback_test_mode(base_url: str) -> bool:
    """Whether the API is plain http on loopback (tests), where loopback audio is allowed."""
    return _loopback_http_base(base_url)


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """``host`` read as the C resolver reads a numeric IPv4 address, or None."""
    parts = host.split(".")
    if not host.isascii() or not 1 <= len(parts) <= 4:
        return None
    numbers: list[int] = []
    for part in parts:
        try:
            if part.startswith("0x"):
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                numbers.append(int(part, 8))
            else:
                numbers.append(int(part, 10))
        except ValueError:
            return None
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for i, n in enumerate(leading):
        value |= n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


# Address blocks that no public audio host lives in, from IANA's special-purpose address
# registries (globally reachable: False or N/A), listed here rather than taken from
# ``ipaddress``'s ``is_global``, whose tables differ between Python releases (3.11 calls
# the site-local fec0::/10 and the documentation block 3fff::/20 global). Both must agree.
_V4_NOT_GLOBAL = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/3",  # multicast, reserved (240/4) and the broadcast address
    )
)
# IPv6: only global unicast (2000::/3) is public, less its special blocks. Everything
# else (::/8 with the mapped, compatible and NAT64 forms, 100::/64, fc00::/7 ULA,
# fe80::/10 link-local, fec0::/10 site-local, ff00::/8 multicast, the unassigned rest)
# is refused, whatever IPv4 address it carries.
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V6_NOT_GLOBAL = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "2001::/23",  # IETF protocol assignments: Teredo, benchmarking, ORCHID, ...
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing (outside 2000::/3 too; listed for clarity)
    )
)


def _address_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """``loopback``, ``public`` or ``special`` for an IP literal.

    IPv4 addresses carried inside IPv6 ones (mapped, 6to4, Teredo, NAT64, the old
    compatible form) reach the IPv4 host: a loopback one makes the whole loopback, and
    a 6to4 address is public only when the IPv4 address it carries is.
    """
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        packed = int(address)
        embedded = [address.ipv4_mapped, address.sixtofour]
        if address.teredo is not None:
            embedded.append(address.teredo[1])
        if address in ipaddress.IPv6Network("64:ff9b::/96") or packed >> 32 == 0:
            embedded.append(ipaddress.IPv4Address(packed & 0xFFFFFFFF))
        candidates += [a for a in embedded if a is not None]
    if any(a.is_loopback for a in candidates):
        return "loopback"
    if all(_is_public(a) for a in candidates):
        return "public"
    return "special"


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally reachable unicast by IANA's registries and by ``ipaddress`` alike."""
    if not address.is_global or address.is_multicast or address.is_reserved:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return not any(address in network for network in _V4_NOT_GLOBAL)
    if address.is_site_local or address not in _V6_GLOBAL_UNICAST:
        return False
    return not any(address in network for network in _V6_NOT_GLOBAL)


def url_excerpt(url: str, secret: str = "") -> str:
    """The start of ``url`` for an error message: bounded, single-line, key-free."""
    head = redact(url[: URL_EXCERPT_CHARS + 256], secret)
    head = _UNSAFE_URL_CHARS.sub(" ", head)
    return head[:URL_EXCERPT_CHARS] + ("…" if len(head) > URL_EXCERPT_CHARS else "")


@functools.lru_cache(maxsize=16)
def _loopback_http_base(base_url: str) -> bool:
    base = urlsplit(base_url)
    return base.scheme == "http" and is_loopback(base.hostname)


def interpret_success(call: Call, raw: RawResponse, base_url: str) -> Speech | AudioPayload:
    """Turn a 2xx into a Speech (or raw audio to save); raise if it holds neither."""
    if _is_audio(raw.headers):
        request_id = clean_request_id(raw.headers.get("x-inference-id"), call.secret)
        if not raw.body:
            raise _unexpected(call, raw, "an empty audio body", request_id)
        media_type = raw.headers["content-type"].split(";")[0].strip().lower()
        extension = audio_extension(raw.body, media_type, call.format)
        credits, usd = _usage(raw.headers, None)
        return AudioPayload(raw.body, extension, request_id, credits, usd)
    data = _json(raw.body)
    request_id = _request_id(raw.headers, data, call.secret)
    url = _audio_url(data)
    if data is None or url is None:
        what = "no audio URL" if data is not None else "a body that is not JSON"
        raise _unexpected(call, raw, what, request_id)
    problem = audio_url_problem(url, base_url)
    if problem is not None:
        raise _unexpected(call, raw, f"an audio URL {problem}", request_id)
    if call.secret and call.secret in url:
        # Passed on, the URL would show the key to the model, the user and every log.
        raise _unexpected(call, raw, "an audio URL that contains the API key", request_id)
    credits, usd = plausible_cost(*_usage(raw.headers, data), call.text_chars, call.model)
    return _vetted_speech(
        audio_url=url,
        format=call.format,
        voice=call.voice,
        model=call.model,
        characters=call.text_chars,
        credits_used=credits,
        usd_spent=usd,
        request_id=request_id,
        engine="aimlapi",
    )


# Every Speech field with its default (required ones None), in the model's order.
_SPEECH_DEFAULTS = {
    name: None if info.is_required() else info.default for name, info in Speech.model_fields.items()
}
_SPEECH_PLAIN = not any(info.default_factory for info in Speech.model_fields.values())
_new_object = object.__new__
_set_attribute = object.__setattr__


def _vetted_speech(**values: Any) -> Speech:
    """A Speech of values this module has just checked, without validating them again.

    What ``Speech.model_construct`` does, less its generic loops: on the hot path a
    validated Speech costs ~10 µs (its validator is cold after the HTTP stack ran), this
    ~3. Only for values of the declared types (see interpret_success); the result is
    equal to ``Speech(**values)`` in every way (fields, set fields, frozen).
    """
    if not _SPEECH_PLAIN:  # a field with a default factory: let pydantic fill it
        return Speech(**values)
    speech = _new_object(Speech)
    _set_attribute(speech, "__dict__", {**_SPEECH_DEFAULTS, **values})
    _set_attribute(speech, "__pydantic_fields_set__", set(values))
    _set_attribute(speech, "__pydantic_extra__", None)
    _set_attribute(speech, "__pydantic_private__", None)
    return speech


def audio_extension(data: bytes, media_type: str, asked: str) -> str:
    """The extension for raw audio, from a fixed set: what its bytes show, else its
    content type, else the format asked for; ``audio`` only when none of them tells.

    A file signature beats the content type (a WAV sent as audio/mpeg is a WAV). An
    MPEG or ADTS frame sync is weaker (raw PCM can start with those bits), so it counts
    only when the content type is not one we know.
    """
    for extension, marks in _SIGNATURES:
        if all(data[at : at + len(mark)] == mark for at, mark in marks):
            return extension
    known = _AUDIO_EXTENSIONS.get(media_type)
    if known is not None:
        return known
    synced = _frame_sync(data)
    if synced is not None:
        return synced
    return asked if asked in _EXTENSIONS else NEUTRAL_AUDIO_EXTENSION


def _frame_sync(data: bytes) -> str | None:
    """``aac`` for an ADTS header, ``mp3`` for an MPEG audio layer III one, else None."""
    if len(data) < 4 or data[0] != 0xFF:
        return None
    second = data[1]
    if second & 0xF6 == 0xF0:  # 12 sync bits, layer 00: ADTS
        return "aac"
    version, layer = (second >> 3) & 3, (second >> 1) & 3
    if second & 0xE0 == 0xE0 and version != 1 and layer == 1:  # 11 sync bits, layer III
        return "mp3"
    return None


def speech_from_file(call: Call, payload: AudioPayload, file_url: str) -> Speech:
    """The Speech for raw audio that was saved to ``file_url``."""
    credits, usd = plausible_cost(
        payload.credits_used, payload.usd_spent, call.text_chars, call.model
    )
    return Speech(
        audio_url=file_url,
        format=payload.extension if payload.extension in ALL_FORMATS else call.format,
        voice=call.voice,
        model=call.model,
        characters=call.text_chars,
        credits_used=credits,
        usd_spent=usd,
        request_id=payload.request_id,
        engine="aimlapi",
    )


def _scheme(url: str) -> str:
    scheme = url.split(":", 1)[0] if ":" in url else "no scheme"
    return (scheme[:20] or "no scheme") + ("" if scheme == "no scheme" else ":")


def _unexpected(
    call: Call, raw: RawResponse, what: str, request_id: str | None
) -> UnexpectedResponseError:
    quote = excerpt(raw.body, call.secret)
    return UnexpectedResponseError(
        f"The API answered {raw.status_code} with {what}, so there is no audio to return: "
        f"{quote!r}. Report this with request id {request_id or call.client_request_id}.",
        status_code=raw.status_code,
        body_excerpt=quote,
        request_id=request_id,
    )


def _error_message(body: bytes, secret: str) -> str:
    data = _json(body)
    message = _dig(data, "message") or _dig(data, "error", "message") or _dig(data, "error")
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message)
    if isinstance(message, str) and message.strip():
        return excerpt(message.encode("utf-8"), secret)
    return excerpt(body, secret)


def status_error(call: Call, raw: RawResponse, retry_after: float | None) -> APIStatusError:
    """The typed error for a non-2xx response, with a message that says what to do."""
    status = raw.status_code
    data = _json(raw.body)
    request_id = _request_id(raw.headers, data, call.secret)
    detail = _error_message(raw.body, call.secret)
    common: dict[str, Any] = {
        "status_code": status,
        "body_excerpt": detail,
        "request_id": request_id,
    }
    if status in (400, 422):
        return BadRequestError(
            f"The API rejected the request ({status}: {detail}). Check the text, voice "
            f"{shown(call.voice)} and format {call.format!r} for model {shown(call.model)}.",
            **common,
        )
    if status == 401:
        return AuthenticationError(
            f"The API key was rejected (401: {detail}). Check {ENV_API_KEY[0]}: it must be a "
            "valid AIML API key (https://aimlapi.com/app/keys).",
            **common,
        )
    if status == 403:
        return AuthenticationError(
            f"The API refused this call (403: {detail}). The account may be out of credits or "
            f"not allowed to use {shown(call.model)}; check the balance and key permissions at "
            "https://aimlapi.com/app/billing.",
            **common,
        )
    if status == 404:
        return NotFoundError(
            f"The API does not know model {shown(call.model)} (404: {detail}); it may be retired. "
            f"Set {ENV_MODEL[0]} to a current text-to-speech model.",
            **common,
        )
    if status == 429:
        when = (
            f"Retry after {retry_after:g} s."
            if retry_after is not None
            else "Wait a few seconds and retry, or lower the request rate."
        )
        return RateLimitError(
            f"The API rate limit was hit (429: {detail}). {when}",
            retry_after=retry_after,
            **common,
        )
    if status >= 500:
        return ServerError(
            f"The API failed ({status}: {detail}). This is usually temporary; try again later.",
            **common,
        )
    return APIStatusError(f"The API answered {status}: {detail}.", **common)


# ---------------------------------------------------------------- retries


def should_retry(status_code: int) -> bool:
    """Whether a response with this status is worth another attempt."""
    return status_code in RETRY_STATUSES


def parse_retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        value = _number(ms.strip())
        if value is not None and value >= 0:
            return float(value) / 1000
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    value = _number(raw)
    if value is not None:
        return float(value) if value >= 0 else None
    from email.utils import parsedate_to_datetime  # rare (an HTTP-date): ~8 ms to import

    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


def backoff_delay(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter for retry number ``attempt`` (0-based)."""
    delay = min(INITIAL_RETRY_DELAY * 2.0**attempt, MAX_RETRY_DELAY)
    return delay * (1 - 0.25 * rand())


def retry_wait(
    attempt: int,
    max_retries: int,
    retry_after: float | None,
    remaining: float,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds to wait before the next attempt, or None to give up now.

    Gives up when retries are spent, when the server asks for a wait longer than
    MAX_RETRY_AFTER, or when the wait would not leave time for another attempt.
    """
    if attempt >= max_retries:
        return None
    if retry_after is not None:
        if retry_after > MAX_RETRY_AFTER:
            return None
        wait = retry_after
    else:
        wait = backoff_delay(attempt, rand)
    return wait if wait < remaining else None


def timeout_error(call: Call, timeout: float) -> APITimeoutError:
    return APITimeoutError(
        f"The call did not finish within its {timeout:g} s limit. Try again, send shorter "
        "text, or raise OCTAVE_TOOLS_TIMEOUT.",
        timeout=timeout,
    )


def connection_error(call: Call, exc: BaseException, attempts: int) -> APIConnectionError:
    reason = redact(str(exc) or type(exc).__name__, call.secret)
    host = urlsplit(call.url).netloc
    return APIConnectionError(
        f"Could not reach the API at {host} after {attempts} attempt"
        f"{'s' if attempts != 1 else ''} ({type(exc).__name__}: {reason}). Check the network "
        "and AIMLAPI_BASE_URL, then try again."
    )


def too_large_error(call: Call, raw_status: int, limit: int) -> UnexpectedResponseError:
    return UnexpectedResponseError(
        f"The API's response was larger than {limit:,} bytes and was not read. "
        "This is not a normal answer; try again later.",
        status_code=raw_status,
        body_excerpt="",
    )
