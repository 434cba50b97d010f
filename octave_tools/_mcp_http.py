"""Hosting the MCP face: stdio, or streamable HTTP at ``/mcp`` with uvicorn.

``octave_tools.mcp`` registers the tools; this module only serves them. Over HTTP it
adds what a listening socket needs and the SDK does not give: a bearer-token gate,
DNS-rebinding settings for every bind, TCP_NODELAY on every connection, a deadline for
sending a whole request, a cap on requests in flight, and quiet logs for unauthenticated
noise. It also serves the audio the server wrote itself at ``/audio/<name>`` (the tools
then return that URL, not a file:// path), answers ``/healthz`` for load balancers, and
on SIGTERM lets calls in flight finish before exiting 0. The CLI (``octave-tools
serve``, ``octave-tools-mcp``) is its only caller.
"""

# Imports this module; never imported by it (the package has no import cycle).
from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import logging
import math
import os
import re
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import anyio
import uvicorn
from mcp.server.transport_security import (
    DEFAULT_MAX_REQUEST_BODY_SIZE,
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from . import (
    ConfigurationError,
    OctaveClient,
    OctaveError,
    Speech,
    configure_logging,
    default_output_dir,
    is_loopback,
)
from ._mcp_ops import (
    METRICS_PATH,
    READY_PATH,
    MetricsEndpoint,
    Readiness,
    TraceContext,
    install_log_format,
    readiness_checks,
    start_metrics,
    start_tracing,
)
from .keys import KeyBook, KeyGrant, current_key, key_id_of, open_key_book
from .mcp import create_server
from .observe import call_key

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

__all__ = [
    "AUDIO_PATH",
    "DEFAULT_AUDIO_TTL",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ENV_ALLOWED_HOSTS",
    "ENV_AUDIO_TTL",
    "ENV_PUBLIC_URL",
    "ENV_SERVER_TOKEN",
    "HEALTH_PATH",
    "HttpLimits",
    "run_server",
]

ENV_SERVER_TOKEN = "OCTAVE_TOOLS_SERVER_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_ALLOWED_HOSTS = "OCTAVE_TOOLS_ALLOWED_HOSTS"
ENV_PUBLIC_URL = "OCTAVE_TOOLS_PUBLIC_URL"
ENV_AUDIO_TTL = "OCTAVE_TOOLS_AUDIO_TTL"
DEFAULT_AUDIO_TTL = 86400.0
AUDIO_PATH = "/audio/"
HEALTH_PATH = "/healthz"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MCP_PATH = "/mcp"
MIN_TOKEN_CHARS = 16
OPERATOR_PATHS = frozenset({METRICS_PATH})
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)


@dataclass(frozen=True)
class HttpLimits:
    """What one HTTP server grants its clients; each bound keeps a flood from costing memory.

    ``request_timeout``: seconds a connection has to send one whole request (headers and
    body), counted from the connection or from the end of the previous response; a slower
    or idle one is closed. ``max_requests``: requests handled at once; more get 503 at
    once. ``max_body_bytes``: a bigger body gets 413 before it is read whole (the SDK's
    4 MiB holds the longest text, 500,000 characters, even \\u-escaped).
    ``max_connections``: connections open at once (fewer when the descriptor limit is
    lower); a new one then takes the place of the one that has waited longest for a
    request, and when every one has a request in flight the listener stops accepting.
    """

    request_timeout: float = 30.0
    max_requests: int = 64
    max_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_SIZE
    max_connections: int = 512


def run_server(
    *,
    transport: str = "stdio",
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    insecure_no_auth: bool = False,
    log_level: str = "WARNING",
    limits: HttpLimits | None = None,
    log_format: str = "text",
    metrics_host: str | None = None,
    metrics_port: int | None = None,
) -> None:
    """Serve until the client hangs up (stdio) or the process is interrupted (http).

    ``transport`` is ``stdio`` or ``http`` (streamable HTTP at ``/mcp``). Over HTTP a
    host other than loopback needs ``OCTAVE_TOOLS_SERVER_TOKEN`` (clients send it as
    ``Authorization: Bearer ...``) unless ``insecure_no_auth``; a token that is set is
    always enforced. Over HTTP, ``OCTAVE_TOOLS_PUBLIC_URL`` and ``OCTAVE_TOOLS_AUDIO_TTL``
    shape the audio URLs. Raises ConfigurationError for an unusable setting.
    """
    level = _log_level(log_level)
    if transport not in ("stdio", "http"):
        raise ConfigurationError(f"transport must be stdio or http; got {transport!r}.")
    limits = limits or HttpLimits()
    if (
        not limits.request_timeout > 0
        or limits.max_requests < 1
        or limits.max_body_bytes < 1
        or limits.max_connections < 1
    ):
        raise ConfigurationError(
            "The request timeout, the request cap, the body cap and the connection cap must "
            f"be positive; got {limits.request_timeout}, {limits.max_requests}, "
            f"{limits.max_body_bytes} and {limits.max_connections}."
        )
    token = _server_token(host, insecure_no_auth) if transport == "http" else None
    if transport == "http":  # checked before anything starts
        _public_url(os.environ.get(ENV_PUBLIC_URL))
        _audio_ttl(os.environ.get(ENV_AUDIO_TTL))
    # Before the server exists, so the SDK's own logging setup finds a handler and stays out.
    # The handler masks the API key: at DEBUG httpcore logs upstream headers verbatim.
    configure_logging(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    install_log_format(log_format)
    if level != "DEBUG":
        # httpx logs each request's URL at INFO: the provider's audio URLs (and their
        # signed query strings) stay out of an operator's INFO log.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    stop_tracing = start_tracing()
    try:
        _run_transport(
            transport,
            host,
            port,
            token,
            level,
            limits,
            metrics_host,
            metrics_port,
            traced=stop_tracing is not None,
        )
    finally:
        if stop_tracing is not None:
            stop_tracing()


def _run_transport(
    transport: str,
    host: str,
    port: int,
    token: str | None,
    level: LogLevel,
    limits: HttpLimits,
    metrics_host: str | None,
    metrics_port: int | None,
    *,
    traced: bool,
) -> None:
    if transport == "stdio":
        create_server().run("stdio")  # a local client reads file:// URLs itself
        return
    public_url = _public_url(os.environ.get(ENV_PUBLIC_URL))
    audio_ttl = _audio_ttl(os.environ.get(ENV_AUDIO_TTL))
    # The server's own settings (the environment), for the health check and the audio
    # folder; no I/O until used, and it shares the server's store (one per URL/file).
    probe = OctaveClient()
    settings = probe.settings
    # The sweep deletes expired clips: by default in a folder of the server's own, never
    # among the clips the CLI or other tools left in the shared cache folder.
    folder = (
        Path(settings.output_dir).expanduser()
        if settings.output_dir
        else default_output_dir() / "served"
    )
    shelf = _AudioShelf(folder, audio_ttl, public_url)
    server = create_server(
        output_dir=str(folder), publish=shelf.publish, audio_origins=shelf.origins
    )
    security = _transport_security(host, os.environ.get(ENV_ALLOWED_HOSTS))
    keys = open_key_book(settings) if token is not None else None
    metrics, _ = start_metrics(probe, metrics_host, metrics_port, keys)
    extras = _Extras(
        shelf=shelf,
        health=probe.health,
        grace=settings.timeout,
        ready=Readiness(readiness_checks(probe)),
        metrics=MetricsEndpoint(metrics),
        traced=traced,
        keys=keys,
    )
    _serve_http(server, host, port, token, security, level, limits, extras)


def _log_level(name: str) -> LogLevel:
    folded = name.strip().upper()
    for level in LOG_LEVELS:
        if folded == level:
            return level
    raise ConfigurationError(f"log level must be one of {', '.join(LOG_LEVELS)}; got {name!r}.")


def _server_token(host: str, insecure_no_auth: bool) -> str | None:
    """The bearer token HTTP clients must send, or None; raises when one is required."""
    token = os.environ.get(ENV_SERVER_TOKEN, "").strip() or None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigurationError(
            f"{ENV_SERVER_TOKEN} is too short ({len(token)} characters); use at least "
            f"{MIN_TOKEN_CHARS} random characters, for example the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'."
        )
    if token is None and not is_loopback(host) and not insecure_no_auth:
        raise ConfigurationError(
            f"Refusing to serve on {host} without authentication: anyone who can reach it could "
            f"spend your credits. Set {ENV_SERVER_TOKEN} to a long random secret (clients send "
            "'Authorization: Bearer <token>'), bind 127.0.0.1, or pass --insecure-no-auth if "
            "something else guards the port."
        )
    return token


def _public_url(raw: str | None) -> str | None:
    """``OCTAVE_TOOLS_PUBLIC_URL`` checked: an http(s) origin with an optional path prefix."""
    if raw is None or not raw.strip():
        return None
    url = raw.strip().rstrip("/")
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ConfigurationError(
            f"{ENV_PUBLIC_URL} must be the server's external base URL, like "
            f"https://tts.example.com or https://example.com/octave; got {raw.strip()!r}."
        )
    return url


def _audio_ttl(raw: str | None) -> float:
    """``OCTAVE_TOOLS_AUDIO_TTL``: seconds a served clip lives (0: forever)."""
    if raw is None or not raw.strip():
        return DEFAULT_AUDIO_TTL
    try:
        ttl = float(raw.strip())
    except ValueError:
        ttl = math.nan
    if not (math.isfinite(ttl) and ttl >= 0):
        raise ConfigurationError(
            f"{ENV_AUDIO_TTL} must be seconds (0 or more; 0 keeps clips forever); got "
            f"{raw.strip()!r}."
        )
    return ttl


def _transport_security(host: str, extra_hosts: str | None) -> TransportSecuritySettings:
    """DNS-rebinding protection on for every bind: only known Host and Origin values pass.

    The SDK turns it on for loopback only; here a specific address is allowed as itself,
    a wildcard address as this machine's name, and ``OCTAVE_TOOLS_ALLOWED_HOSTS``
    (comma-separated names, optionally with a port) adds the names clients use.
    """
    names = ["127.0.0.1", "localhost", "[::1]"]
    bare = host.strip("[]")
    if bare in ("", "0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding it
        names.append(socket.gethostname())
    elif not is_loopback(bare):
        names.append(f"[{bare}]" if ":" in bare else bare)
    names += [n.strip() for n in (extra_hosts or "").split(",") if n.strip()]
    hosts: list[str] = []
    for name in dict.fromkeys(names):
        has_port = name.rpartition(":")[2].isdigit() and not name.endswith("]")
        hosts += [name] if has_port else [name, f"{name}:*"]
    origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


# ---------------------------------------------------------------- ASGI layers


class _BearerTokenGate:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>``,
    where the token is the operator's (``OCTAVE_TOOLS_SERVER_TOKEN``) or a client key
    (``octave-tools keys add``). A client key's name and limits go with the request to
    the tool call (``keys.current_key``); the operator's calls are the ``operator``'s.

    Not the SDK's ``TokenVerifier``: that seam is OAuth's (``AuthSettings`` needs an
    issuer URL, is fixed when ``MCPServer`` is made, and guards only the ``/mcp`` route),
    while these tokens are hosting matters checked here before any body is read, for
    ``/audio`` and ``/metrics`` too.
    """

    def __init__(self, app: ASGIApp, token: str, keys: KeyBook | None = None) -> None:
        self._app = app
        self._token = token.encode()
        self._keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        credential = self._credential(scope)
        if credential is not None and hmac.compare_digest(credential, self._token):
            await self._app(scope, receive, send)
            return
        grant = None
        unavailable = False
        if scope["path"] in OPERATOR_PATHS:  # every key's figures: the operator's only
            await self._refuse(scope, receive, send, False)
            return
        if credential is not None and self._keys is not None:
            text = credential.decode("ascii", "replace")
            if key_id_of(text) is not None:
                try:
                    verified = await anyio.to_thread.run_sync(self._keys.verify, text)
                except OctaveError:
                    verified, unavailable = None, True  # the store is down: fail closed
                if verified is not None:
                    grant = KeyGrant(verified.key, self._keys)
        if grant is None:
            await self._refuse(scope, receive, send, unavailable)
            return
        tokens = (current_key.set(grant), call_key.set(grant.key.name))
        try:
            await self._app(scope, receive, send)
        finally:
            call_key.reset(tokens[1])
            current_key.reset(tokens[0])

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, unavailable: bool) -> None:
        if unavailable:
            response = JSONResponse(
                {
                    "error": "temporarily_unavailable",
                    "error_description": "Client keys cannot be checked right now; retry soon.",
                },
                status_code=503,
                headers={"Retry-After": "5"},
            )
        else:
            response = JSONResponse(
                {
                    "error": "invalid_token",
                    "error_description": "Missing, wrong, revoked or expired token. Send "
                    f"'Authorization: Bearer <{ENV_SERVER_TOKEN} or your client key>'.",
                },
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="octave-tools"'},
            )
        await response(scope, receive, send)

    @staticmethod
    def _credential(scope: Scope) -> bytes | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credential = bytes(value).partition(b" ")
                return credential.strip() if scheme.lower() == b"bearer" else None
        return None


class _RequestCap:
    """ASGI middleware: at most ``limit`` requests in flight; the next ones get 503 at once.

    Counted per request, not per connection, so idle keep-alive connections take no slot.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self._app = app
        self._limit = limit
        self._active = 0  # one event loop: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if self._active >= self._limit:
            response = JSONResponse(
                {
                    "error": "server_busy",
                    "error_description": f"The server is already handling {self._limit} "
                    "requests; retry in a moment.",
                },
                status_code=503,
                headers={"Retry-After": "1"},
            )
            await response(scope, receive, send)
            return
        self._active += 1
        try:
            await self._app(scope, receive, send)
        finally:
            self._active -= 1


class _NoStandaloneStream:
    """ASGI middleware: ``GET /mcp`` gets 405 instead of an event stream that never ends.

    A stateless server has no session to push messages on, so the SDK's stream stays
    empty until the client hangs up, holding a request slot all along; the MCP spec lets
    a server without such a stream answer 405, and clients then carry on without it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == MCP_PATH:
            response = JSONResponse(
                {
                    "error": "method_not_allowed",
                    "error_description": "This stateless server has no event stream to GET; "
                    f"POST JSON-RPC messages to {MCP_PATH}.",
                },
                status_code=405,
                headers={"Allow": "POST"},
            )
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)


class _HostCheck:
    """ASGI middleware: the SDK's DNS-rebinding check (``Host``, then ``Origin``) for the
    routes it does not guard itself, ``/audio/...`` and ``/healthz``: a foreign ``Host``
    gets 421 and a foreign ``Origin`` 403, exactly as on ``/mcp``."""

    def __init__(self, app: ASGIApp, security: TransportSecuritySettings) -> None:
        self._app = app
        self._check = TransportSecurityMiddleware(security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = await self._check.validate_request(Request(scope), is_post=False)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self._app(scope, receive, send)


# ---------------------------------------------------------------- audio and health

# The only names ever served: what new_audio_path() makes (a uuid4 is 122 random bits).
_CLIP_NAME = re.compile(r"speech-[0-9a-f]{32}\.[a-z0-9]{1,5}")
_CONTENT_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "ogg": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "m4a": "audio/mp4",
    "mp4": "audio/mp4",
    "webm": "audio/webm",
    "pcm": "application/octet-stream",
}
_CHUNK = 1 << 16


def _not_found(scope: Scope, receive: Receive, send: Send, status: int = 404) -> Any:
    words = "has expired" if status == 410 else "does not exist"
    body = {"error": "not_found", "error_description": f"This audio clip {words}."}
    return JSONResponse(body, status_code=status)(scope, receive, send)


class _AudioShelf:
    """The clips this server wrote, served at ``/audio/<name>`` until they expire.

    ``publish`` swaps the file:// URL of a clip in ``folder`` for its http URL under
    the public base; other URLs pass unchanged. Only names like ``speech-<32 hex>.<ext>``
    directly in the folder are served, opened without following a link, as regular
    files younger than ``ttl`` seconds (0: no expiry); ``sweep`` deletes older ones.
    """

    def __init__(self, folder: Path, ttl: float, public_url: str | None) -> None:
        self.folder = folder.absolute()
        self.ttl = ttl
        self.public_url = public_url
        self.base = public_url or ""  # set once the port is known
        # The origins of the URLs it serves: the player page may load audio from them.
        self.origins: list[str] = []
        if public_url:
            parts = urlsplit(public_url)
            self.origins.append(f"{parts.scheme}://{parts.netloc}")

    def publish(self, speech: Speech) -> Speech:
        """``speech`` with its URL served over HTTP when it names a clip of the folder;
        a long call's parts likewise (a part file the join deleted keeps no path)."""
        if not self.base:
            return speech
        update: dict[str, object] = {}
        name = self._clip_name(speech.audio_url)
        if name is not None:
            update["audio_url"] = f"{self.base}{AUDIO_PATH}{name}"
        if speech.parts:
            parts = []
            for part in speech.parts:
                if not part.audio_url.startswith("file:"):
                    parts.append(part)
                    continue
                clip = self._clip_name(part.audio_url)
                served = f"{self.base}{AUDIO_PATH}{clip}" if clip is not None else ""
                parts.append(part.model_copy(update={"audio_url": served}))
            update["parts"] = tuple(parts)
        return speech.model_copy(update=update) if update else speech

    def _clip_name(self, url: str) -> str | None:
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            return None
        path = Path(url2pathname(unquote(parts.path)))
        if not _CLIP_NAME.fullmatch(path.name):
            return None
        try:
            same = path.parent.resolve() == self.folder.resolve()
        except OSError:
            return None
        return path.name if same else None

    def expired(self, mtime: float, now: float) -> bool:
        return self.ttl > 0 and now - mtime > self.ttl

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            response = JSONResponse(
                {"error": "method_not_allowed", "error_description": "GET an audio clip."},
                status_code=405,
                headers={"Allow": "GET, HEAD"},
            )
            await response(scope, receive, send)
            return
        name = str(scope["path"])[len(AUDIO_PATH) :]
        if not _CLIP_NAME.fullmatch(name):
            await _not_found(scope, receive, send)
            return
        # Off the event loop, like every read: a slow or stuck file system must not
        # freeze the server for everyone.
        opened = await anyio.to_thread.run_sync(self._open, name)
        if opened is None:  # absent, a link, not a regular file, unreadable: one answer
            await _not_found(scope, receive, send)
            return
        fd, info = opened
        try:
            if self.expired(info.st_mtime, time.time()):
                await anyio.to_thread.run_sync(self._unlink, name)
                await _not_found(scope, receive, send, 410)
                return
            await self._send_file(fd, info.st_size, name, scope, send)
        finally:
            os.close(fd)

    def _open(self, name: str) -> tuple[int, os.stat_result] | None:
        """``name`` opened for reading when it is a regular file (not through a link), else
        None. ``O_NONBLOCK``: opening a FIFO named like a clip waits for no writer (a
        plain open would block until one came), and it is then refused by its type."""
        flags = os.O_RDONLY
        for extra in ("O_NONBLOCK", "O_NOFOLLOW", "O_CLOEXEC"):  # not all exist on Windows
            flags |= getattr(os, extra, 0)
        try:
            fd = os.open(self.folder / name, flags)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
        except OSError:
            os.close(fd)
            return None
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return None
        return fd, info

    def _unlink(self, name: str) -> None:
        with contextlib.suppress(OSError):
            (self.folder / name).unlink()

    async def _send_file(self, fd: int, size: int, name: str, scope: Scope, send: Send) -> None:
        kind = _CONTENT_TYPES.get(name.rpartition(".")[2], "application/octet-stream")
        headers = [
            (b"content-type", kind.encode()),
            (b"content-length", str(size).encode()),
            (b"cache-control", b"private, max-age=3600"),
            (b"x-content-type-options", b"nosniff"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        left = size  # what fstat saw: a file growing meanwhile is not sent past it
        while left > 0:
            chunk = await anyio.to_thread.run_sync(os.read, fd, min(_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
        if left > 0:  # the file shrank: end the body; the length mismatch tells the client
            await send({"type": "http.response.body", "body": b""})

    def sweep(self, now: float | None = None) -> int:
        """Delete the folder's expired clips (never a link, never another name); the count."""
        if self.ttl <= 0:
            return 0
        now = time.time() if now is None else now
        removed = 0
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return 0
        for entry in entries:
            if not _CLIP_NAME.fullmatch(entry.name):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and self.expired(info.st_mtime, now):
                    os.unlink(entry.path)
                    removed += 1
            except OSError:  # gone already (another replica sweeping the same folder)
                continue
        return removed


class _Sweeper:
    """A daemon thread that calls ``shelf.sweep()`` every ``interval`` seconds."""

    def __init__(self, shelf: _AudioShelf) -> None:
        self._shelf = shelf
        self._stop = threading.Event()
        self.interval = min(max(shelf.ttl / 4, 1.0), 600.0)
        self._thread = threading.Thread(target=self._loop, name="octave-tools-sweep", daemon=True)

    def start(self) -> None:
        if self._shelf.ttl > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._shelf.sweep()
            except Exception:  # never let the sweep kill the thread; say why, once a period
                logging.getLogger("octave_tools.mcp").exception("audio sweep failed")
            self._stop.wait(self.interval)


class _Health:
    """``GET /healthz``: 200 ``{"status": "ok"}`` when the store answers, else 503.

    Open to all (a load balancer sends no token), so it says nothing else; why the
    store does not answer goes to the server log, once per change.
    """

    def __init__(self, check: Callable[[], None], timeout: float = 10.0) -> None:
        self._check = check
        self._timeout = timeout
        self._failing: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem: str | None = None
        try:
            with anyio.fail_after(self._timeout):
                await anyio.to_thread.run_sync(self._check, abandon_on_cancel=True)
        except OctaveError as exc:
            problem = exc.message
        except TimeoutError:
            problem = f"the store did not answer within {self._timeout:g} s"
        except Exception as exc:  # a bug or driver error: unhealthy, with the detail logged
            problem = f"unexpected {type(exc).__name__}"
            logging.getLogger("octave_tools.mcp").debug("health check failed", exc_info=True)
        if problem != self._failing:
            log = logging.getLogger("octave_tools.mcp")
            if problem is None:
                log.warning("octave-tools: the store answers again; %s is 200.", HEALTH_PATH)
            else:
                log.warning("octave-tools: %s is 503: %s", HEALTH_PATH, problem)
            self._failing = problem
        status = "ok" if problem is None else "unavailable"
        response = JSONResponse(
            {"status": status},
            status_code=200 if problem is None else 503,
            headers={"Cache-Control": "no-store"},
        )
        await response(scope, receive, send)


class _Route:
    """ASGI: HTTP requests whose path ``matches`` go to ``handler``, the rest to ``rest``."""

    def __init__(self, matches: Callable[[str], bool], handler: ASGIApp, rest: ASGIApp) -> None:
        self._matches = matches
        self._handler = handler
        self._rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._matches(scope["path"]):
            await self._handler(scope, receive, send)
            return
        await self._rest(scope, receive, send)


def _is_audio(path: str) -> bool:
    return path.startswith(AUDIO_PATH) or path == AUDIO_PATH.rstrip("/")


@dataclass(frozen=True)
class _Extras:
    """What the HTTP host adds to the MCP app: served audio, the health check, the grace."""

    shelf: _AudioShelf
    health: Callable[[], None]
    grace: float  # seconds in-flight calls get to finish on SIGTERM
    ready: ASGIApp | None = None  # /readyz, open to all like /healthz
    metrics: ASGIApp | None = None  # /metrics, behind the server token
    traced: bool = False  # an incoming traceparent header continues the caller's trace
    keys: KeyBook | None = None  # client keys the gate accepts beside the server token


# ---------------------------------------------------------------- the connection


class _DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for receiving each whole request.

    uvicorn arms its keep-alive timer only after a response and cancels it on any byte,
    so a connection that trickles a request (or sends nothing at all) is held forever.
    Here the timer starts when the connection opens or a response ends, is not reset by
    data, and stops only once the request is complete; when it fires the connection is
    closed. A subclass per server sets ``request_timeout``.
    """

    request_timeout: float = HttpLimits.request_timeout
    pool: _Pool | None = None  # the server's connection bookkeeping (None in unit tests)
    opened = False
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.opened = True
        if self.pool is not None:
            self.pool.opened()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.pool is not None:
            self.pool.closed(self)
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        cycle = self.cycle
        if cycle is not None and not cycle.more_body and not cycle.response_complete:
            self._disarm()  # the whole request is in: the app may take as long as it needs

    def on_response_complete(self) -> None:
        self._arm()  # first: the base class may go on to a pipelined request at once
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.request_timeout, self._expire)
            if self.pool is not None:
                self.pool.waiting(self)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
            if self.pool is not None:
                self.pool.busy(self)

    def _expire(self) -> None:
        self._deadline = None
        if self.pool is not None:
            self.pool.busy(self)
        if not self.transport.is_closing():
            self.logger.debug("Closing a connection that sent no whole request in time")
            self.transport.close()

    def evict(self) -> None:
        """Close this connection, which waits for a request, to make room for a new one."""
        self._disarm()
        if not self.transport.is_closing():
            self.logger.debug("Closing the connection that waited longest, to take a new one")
            self.transport.close()


def _protocol_for(limits: HttpLimits, pool: _Pool | None = None) -> type[_DeadlineProtocol]:
    attributes = {"request_timeout": limits.request_timeout, "pool": pool}
    return type("DeadlineProtocol", (_DeadlineProtocol,), attributes)


class _Pool:
    """The connections of one server: how many are open, and which wait for a request
    (a new one, or the next on a kept-alive connection), oldest first."""

    def __init__(self) -> None:
        self._open = 0
        self.pending = 0  # accepted, not yet connected to their protocol
        self.closures = 0  # connections closed so far
        self._closing: set[_DeadlineProtocol] = set()  # evicted, not yet gone
        self._waiting: dict[_DeadlineProtocol, None] = {}  # insertion order: oldest first
        self.on_change: Callable[[], None] | None = None  # the listener, to resume

    @property
    def open(self) -> int:
        """Connections open and not on their way out."""
        return self._open - len(self._closing)

    @property
    def any_waiting(self) -> bool:
        return bool(self._waiting)

    def accepted(self) -> None:
        self.pending += 1

    def abandoned(self) -> None:
        self.pending -= 1

    def opened(self) -> None:
        self.pending = max(0, self.pending - 1)
        self._open += 1

    def closed(self, connection: _DeadlineProtocol) -> None:
        self._open -= 1
        self.closures += 1
        self._closing.discard(connection)
        self._waiting.pop(connection, None)
        self._changed()

    def waiting(self, connection: _DeadlineProtocol) -> None:
        self._waiting.pop(connection, None)
        self._waiting[connection] = None
        self._changed()

    def busy(self, connection: _DeadlineProtocol) -> None:
        self._waiting.pop(connection, None)

    def evict_oldest(self) -> bool:
        """Close the connection that has waited longest for a request; False if none waits."""
        for connection in self._waiting:
            del self._waiting[connection]
            self._closing.add(connection)
            connection.evict()
            return True
        return False

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


# Errors of accept() that mean "no resources now", not "this connection failed".
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BATCH = 32  # connections taken per readiness event, as asyncio does (it takes 100)
_RETRY_AFTER_ERROR = 0.5  # seconds the listener rests after accept() ran out of resources
_RECHECK = 1.0  # seconds between checks while paused at the cap with no one to evict


def _descriptor_budget(limits: HttpLimits) -> tuple[int, int | None]:
    """How many connections may be open at once, and the descriptor number at which the
    listener stops accepting (None where there is no such limit).

    A reserve stays free for what the server itself opens (upstream connections, audio
    files, the store): a quarter of the soft ``RLIMIT_NOFILE``, at most 128.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return limits.max_connections, None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return limits.max_connections, None
    reserve = min(128, soft // 4)
    ceiling = soft - reserve
    in_use = _descriptors_in_use()
    return max(1, min(limits.max_connections, ceiling - in_use)), ceiling


def _descriptors_in_use() -> int:
    """How many descriptors this process has open (a lower bound where /proc is missing)."""
    with contextlib.suppress(OSError):
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir used
    try:
        probe = os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return 0
    os.close(probe)
    return probe  # descriptors are numbered lowest free first


class _Listener:
    """Accepts connections on one listening socket, within the cap and the descriptors.

    asyncio's own accept loop, when ``accept()`` fails for want of descriptors, logs a
    traceback for every try (up to its backlog, 2,048 under uvicorn) and schedules as
    many retries: 300 half-sent connections against a low descriptor limit wrote 10 MB
    of log in 7 s and starved real clients (issue 22). Here: at most ``limit`` connections are
    open; at the cap, or when an accepted descriptor reaches ``ceiling`` (the reserve
    kept free for the server's own files and upstream connections), the connection that
    has waited longest for a request is closed to make room; when every connection has
    a request in flight, the listener stops accepting (clients wait in the kernel's
    backlog) until one is free.
    Accept errors rest the listener and are logged once a minute, counted.
    """

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        pool: _Pool,
        limit: int,
        ceiling: int | None,
        log: _LogOnce,
    ) -> None:
        self._sock = sock
        self._factory = factory
        self._pool = pool
        self._limit = limit
        self._ceiling = ceiling
        self._log = log
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._resting = False
        self._short_since: int | None = None  # closures seen when descriptors ran short
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._sock.setblocking(False)
        self._pool.on_change = self._resume
        self._resume()

    def close(self) -> None:
        self._closed = True
        self._pool.on_change = None
        self._pause()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._sock.close()

    def _pause(self, *, rest: float | None = None) -> None:
        """Stop accepting: for ``rest`` seconds after an accept error, else until a
        connection closes or waits for a request (``_RECHECK`` at the latest)."""
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False
        if self._closed or self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._resting = rest is not None
        self._timer = self._loop.call_later(_RECHECK if rest is None else rest, self._retry)

    def _retry(self) -> None:
        self._timer = None
        self._resting = False
        self._resume()

    def _resume(self) -> None:
        if not self._reading and not self._closed and not self._resting and self._room():
            assert self._loop is not None
            self._loop.add_reader(self._sock.fileno(), self._accept)
            self._reading = True

    def _count(self) -> int:
        return self._pool.open + self._pool.pending

    def _room(self) -> bool:
        """Whether a connection can be taken: one waits to be replaced, or the server is
        below the cap and, if descriptors ran short, a connection has closed since."""
        if self._pool.any_waiting:
            return True
        short = self._short_since is not None and self._short_since == self._pool.closures
        return self._count() < self._limit and not short

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            if not self._room():  # every connection has a request in flight
                self._full()
                self._pause()
                return
            try:
                conn, _address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._accept_failed(exc)
                return
            over_cap = self._count() >= self._limit
            if over_cap or (self._ceiling is not None and conn.fileno() >= self._ceiling):
                self._full()
                evicted = self._pool.evict_oldest()  # always, over the cap (see _room)
                self._take(conn)  # one past the ceiling at most: that is what the reserve is for
                if not evicted:  # descriptors are short and no connection can give one back
                    self._short_since = self._pool.closures
                    self._pause()
                return  # the evicted connection closes before the listener runs again
            self._take(conn)

    def _full(self) -> None:
        self._log.warning(
            "full",
            f"octave-tools: {self._count()} connections are open, the most this server "
            "takes (--max-connections, or fewer under ulimit -n); each new one replaces the "
            "one that has waited longest for a request.",
        )

    def _accept_failed(self, exc: OSError) -> None:
        hint = "."
        if exc.errno in _OUT_OF_RESOURCES:  # an idle connection gives back a descriptor
            hint = "; raise the descriptor limit (ulimit -n) or lower --max-connections."
            self._pool.evict_oldest()
        reason = exc.strerror or str(exc)
        self._log.warning(
            f"accept {exc.errno}", f"octave-tools: cannot accept connections: {reason}{hint}"
        )
        self._pause(rest=_RETRY_AFTER_ERROR)

    def _take(self, conn: socket.socket) -> None:
        assert self._loop is not None
        conn.setblocking(False)
        self._pool.accepted()
        task = self._loop.create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        assert self._loop is not None
        made: list[asyncio.Protocol] = []

        def factory() -> asyncio.Protocol:
            made.append(self._factory())
            return made[0]

        try:
            await self._loop.connect_accepted_socket(factory, conn)
        except Exception:  # the client left already, or the loop is closing
            conn.close()
            if not any(getattr(protocol, "opened", False) for protocol in made):
                self._pool.abandoned()


class _Server(uvicorn.Server):
    """uvicorn's server, with ``_Listener`` accepting connections instead of asyncio."""

    def __init__(self, config: uvicorn.Config, pool: _Pool, limit: int, ceiling: int | None):
        super().__init__(config)
        self._pool = pool
        self._limit = limit
        self._ceiling = ceiling
        self._listeners: list[_Listener] = []

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the lifespan and the state, no listening
        loop = asyncio.get_running_loop()
        config = self.config

        def factory() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=loop,
            )

        log = _LogOnce(logging.getLogger("octave_tools.mcp"))
        for sock in sockets or []:
            listener = _Listener(sock, factory, self._pool, self._limit, self._ceiling, log)
            try:
                listener.start(loop)
            except NotImplementedError:  # pragma: no cover - Windows' proactor loop
                server = await loop.create_server(factory, sock=sock, backlog=config.backlog)
                self.servers.append(server)
                continue
            self._listeners.append(listener)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for listener in self._listeners:
            listener.close()
        await super().shutdown(sockets=sockets)


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket made with ``IPPROTO_TCP``.

    ``socket.create_server()`` leaves ``proto`` 0, and asyncio sets TCP_NODELAY only on
    sockets whose ``proto`` is ``IPPROTO_TCP``: without it every response on a kept-alive
    connection waited ~40 ms for Nagle and the client's delayed ACK. Accepted sockets
    inherit the protocol, so asyncio turns Nagle off on each of them.
    """
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if os.name != "nt":  # as create_server(): rebinding right after a restart works
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((bare, port))
        sock.listen()
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Choose another --port or "
            "--host."
        ) from None
    return sock


# ---------------------------------------------------------------- logs

# Lines that anyone who can open a connection can make the server write, before or
# without authentication; at WARNING they would let garbage flood the log. A client that
# hangs up mid-request (ClientDisconnect, logged with a traceback at ERROR by the SDK) is
# demoted on these loggers too.
_NOISE: dict[str, tuple[str, ...]] = {
    "mcp.server.streamable_http": (),
    "uvicorn.error": (
        "Invalid HTTP request received.",
        "Unsupported upgrade request.",
        "No supported WebSocket library detected.",
    ),
    "mcp.server.transport_security": (
        "Invalid Host header",
        "Invalid Origin header",
        "Missing Host header",
    ),
}


class _LogOnce:
    """At most one line per kind of event every ``period`` seconds, then a count of the
    ones held back: a flood of failing connections writes a line a minute, not a line
    each. ``clock`` is injectable for tests."""

    def __init__(
        self,
        logger: logging.Logger,
        period: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._period = period
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}

    def warning(self, kind: str, message: str) -> bool:
        """Log ``message`` unless a line of this ``kind`` went out within the period."""
        now = self._clock()
        last, held = self._seen.get(kind, (-math.inf, 0))
        if now - last < self._period:
            self._seen[kind] = (last, held + 1)
            return False
        if len(self._seen) > 64:  # kinds are few (errno values); never let them grow
            self._seen.clear()
        more = f" ({held} more like it in the last {now - last:.0f} s)" if held else ""
        self._logger.warning("%s%s", message, more)
        self._seen[kind] = (now, 0)
        return True


class _QuietAccept(logging.Filter):
    """On the ``asyncio`` logger: its "socket.accept() out of system resource" records
    (a traceback each, possibly thousands a second) become a counted line a minute.
    The server accepts with ``_Listener``, so these come only from another listener."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, log: _LogOnce) -> None:
        super().__init__()
        self._log = log

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self.MESSAGE):
            return True
        error = record.exc_info[1] if record.exc_info else None
        self._log.warning("asyncio accept", f"octave-tools: asyncio: {self.MESSAGE}: {error}")
        return False


class _Demote(logging.Filter):
    """Turns client-caused warnings into DEBUG lines without a traceback."""

    def __init__(self, prefixes: tuple[str, ...], threshold: int) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG:
            return True
        message = record.getMessage()
        hung_up = _is_disconnect(record)
        if not (hung_up or message.startswith(self._prefixes)):
            return True
        if self._threshold > logging.DEBUG:
            return False
        first_line = message.splitlines()[0] if message else message
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg = f"{first_line} (the client hung up)" if hung_up else first_line
        record.args, record.exc_info, record.exc_text = None, None, None
        return True


def _is_disconnect(record: logging.LogRecord) -> bool:
    """A client that hung up mid-request: its business, not an error of this server."""
    from starlette.requests import ClientDisconnect

    error = record.exc_info[1] if record.exc_info else None
    while error is not None:
        if isinstance(error, ClientDisconnect):
            return True
        group = getattr(error, "exceptions", None)
        if group and len(group) == 1:
            error = group[0]
            continue
        error = error.__cause__ or error.__context__
    return False


def _quiet_client_noise(level: LogLevel) -> None:
    threshold = logging.getLevelName(level)
    for name, prefixes in _NOISE.items():
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _Demote)]:
            logger.removeFilter(old)
        logger.addFilter(_Demote(prefixes, threshold))
    aio = logging.getLogger("asyncio")
    for old_filter in [f for f in aio.filters if isinstance(f, _QuietAccept)]:
        aio.removeFilter(old_filter)
    aio.addFilter(_QuietAccept(_LogOnce(logging.getLogger("octave_tools.mcp"))))


# ---------------------------------------------------------------- serving


def _http_app(
    server: MCPServer[Any],
    host: str,
    token: str | None,
    security: TransportSecuritySettings,
    limits: HttpLimits,
    extras: _Extras | None = None,
) -> ASGIApp:
    """The ASGI app: ``/healthz`` open to all; then the gate and the request cap in front
    of ``/audio/...`` and the SDK's streamable-HTTP app (no GET stream). Every route
    checks ``Host`` and ``Origin`` (the SDK on ``/mcp``, ``_HostCheck`` on the others)."""
    # Stateless: no session lives in this process, so replicas can share a load balancer.
    mcp_app: Starlette = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        transport_security=security,
        host=host,
        max_request_body_size=limits.max_body_bytes,
    )
    # `/mcp/` would get a 307 whose Location is built from the client's Host header.
    mcp_app.router.redirect_slashes = False
    app: ASGIApp = _NoStandaloneStream(mcp_app)
    if extras is not None:
        app = _Route(_is_audio, _HostCheck(extras.shelf, security), app)
        if extras.metrics is not None:
            metrics = _HostCheck(extras.metrics, security)  # rebinding: as every route
            app = _Route(lambda path: path == METRICS_PATH, metrics, app)
    app = _RequestCap(app, limits.max_requests)
    if token is not None:
        app = _BearerTokenGate(app, token, extras.keys if extras is not None else None)
    if extras is not None:
        health = _HostCheck(_Health(extras.health), security)
        app = _Route(lambda path: path == HEALTH_PATH, health, app)
        if extras.ready is not None:
            ready = _HostCheck(extras.ready, security)
            app = _Route(lambda path: path == READY_PATH, ready, app)
        if extras.traced:
            app = TraceContext(app)
    return app


def _serve_http(
    server: MCPServer[Any],
    host: str,
    port: int,
    token: str | None,
    security: TransportSecuritySettings,
    level: LogLevel,
    limits: HttpLimits,
    extras: _Extras | None = None,
) -> None:
    app = _http_app(server, host, token, security, limits, extras)
    # Bound here so a busy port is a clear error, and port 0 reports the port it got.
    sock = _listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if sock.family == socket.AF_INET6 else bound_host
    auth = "bearer token required" if token else "no authentication"
    limit, ceiling = _descriptor_budget(limits)
    if limit < limits.max_connections:
        print(
            f"At most {limit} connections at once, not {limits.max_connections}: the "
            "descriptor limit is low (raise it with ulimit -n).",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"octave-tools MCP server on http://{shown}:{bound_port}{MCP_PATH} "
        f"(streamable HTTP, {auth}); Ctrl+C stops it.",
        file=sys.stderr,
        flush=True,
    )
    if not is_loopback(bound_host):
        names = ", ".join(h for h in security.allowed_hosts if not h.endswith(":*"))
        print(
            f"Clients must reach it by one of these names: {names}; add others with "
            f"{ENV_ALLOWED_HOSTS}.",
            file=sys.stderr,
            flush=True,
        )
    if extras is not None and not extras.shelf.base:
        extras.shelf.base = f"http://{shown}:{bound_port}"
        extras.shelf.origins.append(extras.shelf.base)
    _quiet_client_noise(level)
    grace = math.ceil(extras.grace) if extras is not None else None
    pool = _Pool()
    config = uvicorn.Config(
        app,
        http=_protocol_for(limits, pool),
        log_config=None,
        log_level=level.lower(),
        access_log=level == "DEBUG",
        server_header=False,
        lifespan="on",
        # SIGTERM: stop accepting, let calls in flight finish (each is bounded by the call
        # timeout), then cancel the rest, which releases their budget reservations.
        timeout_graceful_shutdown=grace,
    )
    _keep_streams_open_on_sigterm()
    sweeper = _Sweeper(extras.shelf) if extras is not None else None
    if sweeper is not None:
        sweeper.start()
    try:
        with _sigterm_is_an_exit():
            _Server(config, pool, limit, ceiling).run(sockets=[sock])
    finally:
        if sweeper is not None:
            sweeper.stop()


def _keep_streams_open_on_sigterm() -> None:
    """Let an answer being streamed (SSE) finish when uvicorn gets SIGTERM.

    sse-starlette (the SDK's SSE responses) ends every stream the moment uvicorn starts
    shutting down, which cut off tool calls in flight. Here no stream outlives its call
    (stateless, and GET /mcp is 405), and uvicorn's grace period bounds the wait.
    """
    try:
        from sse_starlette.sse import AppStatus
    except ImportError:  # pragma: no cover - an SDK without sse-starlette
        return
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def _sigterm_is_an_exit() -> Iterator[None]:
    """After a graceful SIGTERM shutdown, exit 0 rather than die of the signal.

    uvicorn handles SIGTERM, then raises it again once done, to the handler that was
    there before it: by default that kills the process (status -15), which process
    managers report as a crash. A no-op handler there makes the shutdown a normal exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
