"""The MCP face: text-to-speech as tools for Claude Desktop and any MCP client.

``create_server()`` registers two tools and one resource over the core client:

- ``text_to_speech``: the audio URL as one sentence of text, plus ``structuredContent``
  (a ``Speech``) under a declared output schema. Never ``AudioContent``.
- ``list_voices``: the voice catalogue with the default marked; read-only, offline.
- ``octave://voices``: the same catalogue as JSON.

``run_server()`` serves it over stdio (nothing but protocol messages on stdout) or
streamable HTTP at ``/mcp`` (stateless; loopback unless a bearer token guards it).
This is the only module that imports ``mcp``.
"""

# No `from __future__ import annotations` here: the SDK reads the tool signatures at
# registration, and their Field descriptions are built per server from the catalogue,
# so the annotations must be real objects, not strings resolved in module globals.

import asyncio
import hmac
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, Field, WithJsonSchema

try:
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.server.transport_security import TransportSecuritySettings
    from mcp.types import CallToolResult, ContentBlock, TextContent, ToolAnnotations
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "The octave-tools MCP server needs the mcp extra: pip install 'octave-tools[mcp]'",
        name=exc.name,
    ) from exc
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ._redact import basic_config
from ._settings import Settings, is_loopback
from ._version import __version__
from .client import AsyncOctaveClient, _BaseClient
from .errors import ConfigurationError, InvalidInputError, OctaveError
from .models import Speech, UsageReport
from .voices import DEFAULT_FORMAT, FORMATS, MAX_TEXT_CHARS, VoiceCatalogue

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ENV_ALLOWED_HOSTS",
    "ENV_SERVER_TOKEN",
    "VoiceList",
    "create_server",
    "main",
    "run_server",
]

logger = logging.getLogger("octave_tools.mcp")

ENV_SERVER_TOKEN = "OCTAVE_TOOLS_SERVER_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_ALLOWED_HOSTS = "OCTAVE_TOOLS_ALLOWED_HOSTS"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MCP_PATH = "/mcp"
VOICES_URI = "octave://voices"
USAGE_URI = "octave://usage"
MIN_TOKEN_CHARS = 16
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)


class VoiceList(BaseModel):
    """The voices ``text_to_speech`` accepts under the current settings."""

    model: str = Field(description="The model (or local engine) the voices belong to.")
    default: str | None = Field(
        description="The voice used when none is given (None when the model's list is unknown)."
    )
    voices: list[str] = Field(description="Every accepted voice name, in the provider's order.")

    @classmethod
    def of(cls, catalogue: VoiceCatalogue | None, settings: Settings) -> "VoiceList":
        """The list a call would be checked against, with the configured default voice."""
        if catalogue is None:
            return cls(model=settings.model, default=settings.voice, voices=[])
        default = catalogue.default
        if settings.voice is not None:
            try:
                default = catalogue.resolve(settings.voice)
            except InvalidInputError:  # shown as given; each call then explains the mistake
                default = settings.voice
        return cls(model=catalogue.model, default=default, voices=list(catalogue.voices))

    def summary(self) -> str:
        """One line for a model to read, with the default marked."""
        if not self.voices:
            return (
                f"octave-tools has no voice list for model {self.model!r}: pass a voice name that "
                "model accepts, or leave voice out for its default."
            )
        names = ", ".join(f"{v} (default)" if v == self.default else v for v in self.voices)
        return f"{len(self.voices)} voices for {self.model}: {names}."


class _Backend:
    """The core client of one running server, made on first use so startup stays fast."""

    def __init__(self, client: AsyncOctaveClient | None, options: dict[str, Any]) -> None:
        self._client = client
        self._options = options
        self._owned = client is None

    def client(self) -> AsyncOctaveClient:
        if self._client is None:
            self._client = AsyncOctaveClient(**self._options)
        return self._client

    async def aclose(self) -> None:
        if self._owned and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


_Ctx = Context[_Backend, Any]

# list_voices and usage: they read local state only, change nothing and cost nothing.
_LOCAL_READ_ONLY: dict[str, bool] = {
    "read_only_hint": True,
    "destructive_hint": False,
    "idempotent_hint": True,
    "open_world_hint": False,
}

# The schema offers exactly FORMATS; the core still checks the value, so a stray "MP3"
# works and a wrong one gets "Unknown format 'ogg'. Use one of: wav, mp3."
_FORMAT_SCHEMA = WithJsonSchema(
    {"anyOf": [{"enum": list(FORMATS), "type": "string"}, {"type": "null"}]}
)


@contextmanager
def _as_tool_errors(tool: str) -> Iterator[None]:
    """Every failure becomes a tool error with a message a model can act on."""
    try:
        yield
    except OctaveError as exc:
        raise ToolError(str(exc)) from None
    except Exception as exc:
        # A bug, not a user error: the traceback stays in the server log (stderr).
        logger.exception("octave-tools: %s failed unexpectedly", tool)
        raise ToolError(
            f"octave-tools failed unexpectedly ({type(exc).__name__}); the server log has the "
            "details. Retrying will probably not help."
        ) from None


def _result(text: str, structured: dict[str, Any]) -> CallToolResult:
    """One sentence for the model, and the same facts as structured content."""
    content: list[ContentBlock] = [TextContent(type="text", text=text)]
    return CallToolResult(content=content, structured_content=structured)


def create_server(client: AsyncOctaveClient | None = None, **options: Any) -> MCPServer[_Backend]:
    """An MCP server with the ``text_to_speech`` and ``list_voices`` tools.

    Pass a ready ``client`` (yours to close), or the keyword arguments of
    ``AsyncOctaveClient`` (``api_key``, ``model``, ``voice``, ``timeout``, ...), each
    falling back to the environment; the server then makes one client per run. No
    API key is needed to start or list tools; a call without one returns a tool error
    saying how to set it. Raises ConfigurationError for an invalid setting.
    """
    if client is not None and options:
        raise TypeError("create_server() takes a client or client options, not both")
    # Checks every setting now, with no I/O; the client that sends is made on first use.
    settings_only = {k: v for k, v in options.items() if k != "http_client"}
    probe = client if client is not None else _BaseClient(**settings_only)
    voices = VoiceList.of(probe.voice_catalogue(), probe.settings)
    default_format = probe.settings.format or DEFAULT_FORMAT

    @asynccontextmanager
    async def lifespan(_: MCPServer[_Backend]) -> AsyncIterator[_Backend]:
        backend = _Backend(client, options)
        try:
            yield backend
        finally:
            await backend.aclose()

    server: MCPServer[_Backend] = MCPServer(
        "octave-tools",
        title="Octave text-to-speech",
        description="Text-to-speech on the AIML API: returns a URL of the generated audio.",
        instructions=_instructions(voices, default_format),
        version=__version__,
        lifespan=lifespan,
        log_level="WARNING",
    )

    async def text_to_speech(
        ctx: _Ctx,
        text: Annotated[
            str,
            Field(
                description=f"The exact words to speak, 1 to {MAX_TEXT_CHARS:,} characters. "
                "Write numbers, abbreviations and symbols the way they should be said."
            ),
        ],
        voice: Annotated[str | None, Field(description=_voice_help(voices))] = None,
        format: Annotated[
            str | None,
            _FORMAT_SCHEMA,
            Field(description=f"Audio file format: wav or mp3. Default: {default_format}."),
        ] = None,
    ) -> Annotated[CallToolResult, Speech]:
        await ctx.report_progress(0, 1, "Generating speech")
        with _as_tool_errors("text_to_speech"):
            speech = await ctx.request_context.lifespan_context.client().synthesize(
                text, voice=voice, format=format
            )
        await ctx.report_progress(1, 1, "Speech ready")
        return _result(speech.summary(), speech.model_dump(mode="json"))

    async def list_voices() -> Annotated[CallToolResult, VoiceList]:
        return _result(voices.summary(), voices.model_dump())

    async def voice_catalogue() -> str:
        return voices.model_dump_json()

    async def usage(
        since: Annotated[
            str, Field(description="How far back: a number and a unit, e.g. 24h, 7d, 30m.")
        ] = "7d",
        by: Annotated[
            Literal["day", "model", "voice", "engine"],
            Field(description="How to group the figures."),
        ] = "day",
    ) -> Annotated[CallToolResult, UsageReport]:
        with _as_tool_errors("usage"):
            report = await asyncio.to_thread(probe._spend.usage, since, by)
        return _result(report.table(), report.model_dump(mode="json"))

    async def usage_report() -> str:
        report = await asyncio.to_thread(probe._spend.usage, "7d", "day")
        return report.model_dump_json()

    server.add_tool(
        text_to_speech,
        title="Text to speech",
        description=_TTS_HELP.format(model=voices.model),
        annotations=ToolAnnotations(
            title="Text to speech",
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=True,
        ),
    )
    server.add_tool(
        list_voices,
        title="List voices",
        description=_VOICES_HELP,
        annotations=ToolAnnotations(title="List voices", **_LOCAL_READ_ONLY),
    )
    server.add_tool(
        usage,
        title="Usage",
        description=_USAGE_HELP,
        annotations=ToolAnnotations(title="Usage", **_LOCAL_READ_ONLY),
    )
    server.resource(
        USAGE_URI,
        name="usage",
        title="Spend over the last 7 days",
        description="Calls, characters and credits per day from the local ledger, as JSON.",
        mime_type="application/json",
    )(usage_report)
    server.resource(
        VOICES_URI,
        name="voices",
        title="Voice catalogue",
        description="The voices text_to_speech accepts, and the default, as JSON.",
        mime_type="application/json",
    )(voice_catalogue)
    return server


_TTS_HELP = """\
Turn text into natural speech with {model} and get a link to the audio.

Use it when the user wants to hear something: a voice-over, a narration, an audio \
version of a text or an answer. Pass the exact words to speak. Returns one sentence \
with the audio URL (give it to the user unchanged) plus structured data: audio_url, \
voice, format, model, characters, credits_used, request_id. Every call makes new \
audio and may spend credits in proportion to the text length, so do not repeat a \
call for the same text. An error message says what to change (an unknown voice \
comes back with the closest names)."""

_USAGE_HELP = """\
Report what text-to-speech has spent: calls, cached calls, characters, credits and USD.

Use it when the user asks about cost or usage, or before a long series of calls. \
Reads the local ledger (every process on this machine that shares it); makes no API \
call and costs nothing."""

_VOICES_HELP = """\
List the voices text_to_speech accepts, with the default marked.

Use it to pick a voice that fits what the user asked for (for example "a British \
narrator"). Returns the names as text plus structured data: model, default, voices. \
Makes no API call and costs nothing."""


def _voice_help(voices: VoiceList) -> str:
    if not voices.voices:
        return f"A voice name that {voices.model} accepts. Leave it out for the model's default."
    return (
        f"Voice name, one of: {', '.join(voices.voices)}. Leave it out for the default, "
        f"{voices.default}. Case and spacing are forgiven."
    )


def _instructions(voices: VoiceList, default_format: str) -> str:
    default = f"the voice is {voices.default}" if voices.default else "the model picks one"
    return (
        f"octave-tools speaks text aloud: text_to_speech turns text into audio with {voices.model} "
        "and returns a URL of the audio file.\n"
        "- Call text_to_speech with the exact words to speak. Answer the user with the URL it "
        "returns, unchanged. You cannot hear the audio, so do not describe how it sounds.\n"
        "- Leave voice out unless the user asks for a particular voice or style; then pick a "
        f"name from list_voices (or the {VOICES_URI} resource). Without one, {default}.\n"
        f"- format is wav or mp3 (default {default_format}).\n"
        "- Each call makes new audio and may cost credits: do not call it twice for the same "
        "text.\n"
        "- If a call fails, the message says what to change (a misspelt voice comes back with "
        "'Did you mean ...'; a missing key with how to set it)."
    )


# ---------------------------------------------------------------- running it


def run_server(
    *,
    transport: str = "stdio",
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    insecure_no_auth: bool = False,
    log_level: str = "WARNING",
) -> None:
    """Serve until the client hangs up (stdio) or the process is interrupted (http).

    ``transport`` is ``stdio`` or ``http`` (streamable HTTP at ``/mcp``). Over HTTP a
    host other than loopback needs ``OCTAVE_TOOLS_SERVER_TOKEN`` (clients send it as
    ``Authorization: Bearer ...``) unless ``insecure_no_auth``; a token that is set is
    always enforced. Raises ConfigurationError for an unusable setting.
    """
    level = _log_level(log_level)
    if transport not in ("stdio", "http"):
        raise ConfigurationError(f"transport must be stdio or http; got {transport!r}.")
    token = _server_token(host, insecure_no_auth) if transport == "http" else None
    # Before the server exists, so the SDK's own logging setup finds a handler and stays out.
    # The handler masks the API key: at DEBUG httpcore logs upstream headers verbatim.
    basic_config(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    server = create_server()
    if transport == "stdio":
        server.run("stdio")
        return
    security = _transport_security(host, os.environ.get(ENV_ALLOWED_HOSTS))
    _serve_http(server, host, port, token, security, level)


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


class _BearerTokenGate:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._authorized(scope):
            response = JSONResponse(
                {
                    "error": "invalid_token",
                    "error_description": "Missing or wrong bearer token. Send "
                    f"'Authorization: Bearer <{ENV_SERVER_TOKEN}>'.",
                },
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="octave-tools"'},
            )
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credential = bytes(value).partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    credential.strip(), self._token
                )
        return False


def _serve_http(
    server: MCPServer[_Backend],
    host: str,
    port: int,
    token: str | None,
    security: TransportSecuritySettings,
    level: LogLevel,
) -> None:
    import uvicorn

    # Stateless: no session lives in this process, so replicas can share a load balancer.
    app: ASGIApp = server.streamable_http_app(
        streamable_http_path=MCP_PATH, stateless_http=True, transport_security=security, host=host
    )
    if token is not None:
        app = _BearerTokenGate(app, token)
    # Bound here so a busy port is a clear error, and port 0 reports the port it got.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family)
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Choose another --port or "
            "--host."
        ) from None
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
    auth = "bearer token required" if token else "no authentication"
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
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=level.lower(),
        access_log=level == "DEBUG",
        server_header=False,
        lifespan="on",
    )
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: Sequence[str] | None = None) -> int:
    """The ``octave-tools-mcp`` command: ``octave-tools serve`` under its own name."""
    from .cli import serve_main

    return serve_main(argv)


if __name__ == "__main__":
    sys.exit(main())
