"""Keeping API keys out of everything this process prints, logs or passes on.

Every key a Settings object holds is registered here (see ``_settings._Secret``).
``redact`` masks each registered key, and every 8-character piece of it, in a
string; ``RedactingFilter`` does the same to every log record a handler that
octave-tools installed is about to write, whichever library logged it (httpcore
dumps response headers verbatim at DEBUG, and an upstream may echo the key there).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from typing import Any
from urllib.parse import unquote

__all__ = ["MASK", "RedactingFilter", "basic_config", "redact", "register_secret", "shown"]

MASK = "**********"
# A piece of the key this long is as good as the key to someone who sees several pieces.
PIECE_CHARS = 8
# Shorter "keys" are test placeholders ("k"); masking them everywhere would garble every log.
MIN_REGISTERED_CHARS = PIECE_CHARS
SHOWN_CHARS = 60

_lock = threading.Lock()
_registered: tuple[str, ...] = ()


def register_secret(secret: str, *, min_chars: int = MIN_REGISTERED_CHARS) -> None:
    """Have ``redact`` and the log filter mask ``secret`` from now on, process-wide.

    ``min_chars=1`` registers a short one too (a store password, whatever its length):
    below PIECE_CHARS it is masked where it stands as a whole token, not inside words.
    """
    global _registered
    if not secret or len(secret) < min_chars or secret in _registered:
        return
    with _lock:
        if secret not in _registered:
            _registered = (*_registered, secret)


@functools.lru_cache(maxsize=32)
def _pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    alternatives = {s for s in secrets if len(s) >= PIECE_CHARS}
    for secret in secrets:
        alternatives.update(
            secret[i : i + PIECE_CHARS] for i in range(len(secret) - PIECE_CHARS + 1)
        )
    short = {s for s in secrets if 0 < len(s) < PIECE_CHARS}
    if not alternatives and not short:
        return None
    # Longest first: a whole key is masked as one, its pieces only where it was cut.
    ordered = [re.escape(s) for s in sorted(alternatives, key=lambda s: (-len(s), s))]
    # A short password only as a token of its own ("pw" in "password=pw", not in "pwd").
    ordered += [
        rf"(?<![A-Za-z0-9]){re.escape(s)}(?![A-Za-z0-9])"
        for s in sorted(short, key=lambda s: (-len(s), s))
    ]
    return re.compile("|".join(ordered))


def redact(text: str, *secrets: str) -> str:
    """``text`` with every registered key, each of ``secrets`` and their pieces masked."""
    extra = tuple(s for s in secrets if s and s not in _registered)
    pattern = _pattern(_registered + extra)
    return pattern.sub(MASK, text) if pattern is not None else text


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr`` of a user-supplied value for an error message: key-free, at most ``limit`` chars.

    A 1.6 MB "voice" must not come back whole in the error that refuses it.
    """
    text = value if isinstance(value, str) else repr(value)
    # Redact a window a little wider than what is shown, so no cut reveals a piece.
    head = redact(text[: limit + 2 * PIECE_CHARS + 256])
    if len(text) > limit or len(head) > limit:
        head = head[:limit] + "…"
    return repr(head) if isinstance(value, str) else head


class RedactingFilter(logging.Filter):
    """Masks every registered API key (and its pieces) in each record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it, not us
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def basic_config(**kwargs: Any) -> None:
    """``logging.basicConfig(**kwargs)``, with a RedactingFilter on each handler it adds."""
    root = logging.getLogger()
    before = set(root.handlers)
    logging.basicConfig(**kwargs)
    for handler in root.handlers:
        if handler not in before and not any(
            isinstance(f, RedactingFilter) for f in handler.filters
        ):
            handler.addFilter(RedactingFilter())


# libpq's spellings of a secret: ``password`` (and ``sslpassword``, the client key's).
# Keywords are case-sensitive to libpq, but any case is masked here.
_SECRET_KEY = re.compile(r"(?i)(ssl)?password")
# ``key = value`` (a conninfo string): a value is '...' with backslash escapes, or a run
# of non-blanks in which a backslash escapes the next character (``a\ b`` is "a b").
_CONNINFO_PAIR = re.compile(
    r"""([^\s=&?]+)(\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:\\.|[^\s\\])*\\?)""", re.DOTALL
)
# ``?key=value&...`` (a URI): keys and values may be percent-encoded (``pass%77ord``);
# a value runs to the next ``&`` (libpq gives ``#`` no meaning there).
_QUERY_PAIR = re.compile(r"([?&])([^&=?#\s]*)=([^&]*)")
# libpq reads a string as a URI when it starts with a scheme, else as key=value pairs.
_URI = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """(scheme://, user[:password], @rest) split at the last ``@``, or None.

    Not ``urlsplit``: a ``#`` or ``?`` inside a password ends its host part early, and
    the password would then be shown as if it were part of the path.
    """
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if not sep or at < 0:
        return None
    return scheme + sep, rest[:at], rest[at:]


def _is_secret_key(key: str) -> bool:
    return _SECRET_KEY.fullmatch(unquote(key).strip()) is not None


def _conninfo_value(raw: str) -> str:
    """A conninfo value as libpq reads it: quotes dropped, backslash escapes undone."""
    if raw.startswith("'"):
        raw = raw[1:-1] if len(raw) > 1 and raw.endswith("'") else raw[1:]
    return re.sub(r"\\(.)", r"\1", raw, flags=re.DOTALL)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: in the userinfo, a ``password=``
    (or ``sslpassword=``) query parameter in any case or percent-encoding, or a
    ``key=value`` connection string (quoted or escaped values included)."""
    parts = _userinfo(url)
    if parts is not None:
        head, userinfo, rest = parts
        user, colon, _ = userinfo.partition(":")
        url = head + user + (":***" if colon else "") + rest

    def query(m: re.Match[str]) -> str:
        return f"{m[1]}{m[2]}=***" if _is_secret_key(m[2]) else m[0]

    def pair(m: re.Match[str]) -> str:
        return f"{m[1]}{m[2]}***" if _is_secret_key(m[1]) else m[0]

    url = _QUERY_PAIR.sub(query, url)
    return url if _URI.match(url) else _CONNINFO_PAIR.sub(pair, url)


def url_secrets(url: str) -> list[str]:
    """The password(s) in ``url``, as written and as the driver reads them, to scrub
    from any text before it is shown."""
    found: list[str] = []
    parts = _userinfo(url)
    if parts is not None:
        _, colon, password = parts[1].partition(":")
        if colon and password:
            found += [password, unquote(password)]
    for m in _QUERY_PAIR.finditer(url):
        if _is_secret_key(m[2]):
            found += [m[3], unquote(m[3])]
    for m in () if _URI.match(url) else _CONNINFO_PAIR.finditer(url):
        if _is_secret_key(m[1]):
            found += [m[3], _conninfo_value(m[3])]
    # Longest first, so a value is never half-replaced by a shorter form of itself.
    return sorted((s for s in dict.fromkeys(found) if s), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's error message) with the URL's password removed."""
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text
