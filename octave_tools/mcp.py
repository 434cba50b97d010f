"""The MCP face: text-to-speech as tools for Claude Desktop and any MCP client.

``create_server()`` registers three tools and two resources over the core client:

- ``text_to_speech``: the audio URL as one sentence of text, plus ``structuredContent``
  (a ``SpeechResult``: the ``Speech`` fields and that sentence as ``message``) under a
  declared output schema. Never ``AudioContent``.
- ``list_voices``: the voice catalogue with the default marked; read-only, offline.
- ``usage``: what the local ledger says was spent; read-only, offline.
- resources ``octave://voices`` (``voice_catalogue``) and ``octave://usage``
  (``usage_report``): the same as JSON, under names no tool has.

Every tool's input schema is closed (``additionalProperties: false``, no non-null
default), so an unknown or misspelt argument is a tool error naming the valid ones.
This module only registers; ``octave-tools serve`` (``octave_tools._mcp_http``) hosts it
over stdio or streamable HTTP. Only this module and that one import ``mcp``.
"""

# `python -m octave_tools.mcp` is `octave-tools serve`. Handled before anything else so
# this file runs once, as the module the CLI imports, and never imports the CLI itself.
if __name__ == "__main__":
    import sys

    from octave_tools.cli import serve_main

    sys.exit(serve_main())

# No `from __future__ import annotations` here: the SDK reads the tool signatures at
# registration, and their Field descriptions are built per server from the catalogue,
# so the annotations must be real objects, not strings resolved in module globals.

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

try:
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
    from mcp.server.mcpserver.tools import Tool
    from mcp.types import CallToolResult, ContentBlock, TextContent, ToolAnnotations
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "The octave-tools MCP server needs the mcp extra: pip install 'octave-tools[mcp]'",
        name=exc.name,
    ) from exc

from ._settings import Settings
from ._version import __version__
from .client import AsyncOctaveClient, _BaseClient
from .errors import InvalidInputError, OctaveError
from .models import Speech, UsageReport
from .voices import DEFAULT_FORMAT, FORMATS, MAX_TEXT_CHARS, VoiceCatalogue

__all__ = ["SpeechResult", "VoiceList", "create_server"]

logger = logging.getLogger("octave_tools.mcp")

VOICES_URI = "octave://voices"
USAGE_URI = "octave://usage"


class SpeechResult(Speech):
    """The structured result of ``text_to_speech``: the ``Speech`` and one sentence about it.

    Some clients (Pydantic AI) hand the model only the structured content, so it carries
    the sentence too.
    """

    message: str = Field(
        description="One sentence for the user: the URL of the generated audio file, the "
        "voice and the format. Give the URL to the user unchanged."
    )


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


# pydantic ends each error with "For further information visit https://errors.pydantic.dev/..."
_PYDANTIC_URL = re.compile(r"\s*For further information visit \S+")


def _explain(error: ValidationError) -> str:
    """Arguments that failed the schema, each field with its problem, and no pydantic links."""
    problems = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "arguments"
        problems.append(f"{where}: {str(item['msg']).rstrip('.')}")
    return f"invalid arguments: {'; '.join(problems)}. Correct them and call the tool again."


class _ClosedTool(Tool):
    """A tool whose arguments are exactly its schema's properties.

    The SDK ignores an argument it does not know, so a misspelt ``vioce`` would silently
    fall back to the default voice (and spend credits on it). Here it is a tool error
    naming the argument and the valid ones, before the tool runs; schema errors read as
    one line per field instead of pydantic's report.
    """

    async def run(
        self, arguments: dict[str, Any], context: Any, convert_result: bool = False
    ) -> Any:
        """Check the argument names, then run the tool as the SDK would."""
        known = list(self.parameters.get("properties", {}))
        unknown = [name for name in arguments if name not in known]
        if unknown:
            names = ", ".join(repr(name) for name in unknown)
            takes = f"takes only: {', '.join(known)}" if known else "takes no arguments"
            noun = "argument" if len(unknown) == 1 else "arguments"
            raise ToolError(
                f"Error executing tool {self.name}: unknown {noun} {names}; {self.name} {takes}."
            )
        try:
            return await super().run(arguments, context, convert_result=convert_result)
        except UnexpectedToolError:
            raise  # a crash: the SDK logs its traceback and tells the model nothing more
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(
                    f"Error executing tool {self.name}: {_explain(exc.__cause__)}"
                ) from None
            if _PYDANTIC_URL.search(str(exc)):
                raise ToolError(_PYDANTIC_URL.sub("", str(exc))) from exc.__cause__
            raise


def _closed_tool(fn: Callable[..., Any], **options: Any) -> _ClosedTool:
    """``fn`` as a tool with a closed input schema (``additionalProperties: false``)."""
    tool = _ClosedTool.from_function(fn, **options)
    assert isinstance(tool, _ClosedTool)  # from_function builds the class it is called on
    base = tool.fn_metadata.arg_model
    closed: type[BaseModel] = type(
        base.__name__,
        (base,),
        {"model_config": ConfigDict(extra="forbid"), "__module__": base.__module__},
    )
    tool.fn_metadata.arg_model = closed  # type: ignore[assignment]
    tool.parameters = closed.model_json_schema(by_alias=True)
    return tool


def create_server(client: AsyncOctaveClient | None = None, **options: Any) -> MCPServer[_Backend]:
    """An MCP server with the ``text_to_speech``, ``list_voices`` and ``usage`` tools.

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
    ) -> Annotated[CallToolResult, SpeechResult]:
        await ctx.report_progress(0, 1, "Generating speech")
        with _as_tool_errors("text_to_speech"):
            speech = await ctx.request_context.lifespan_context.client().synthesize(
                text, voice=voice, format=format
            )
        await ctx.report_progress(1, 1, "Speech ready")
        sentence = speech.summary()
        return _result(sentence, {**speech.model_dump(mode="json"), "message": sentence})

    async def list_voices() -> Annotated[CallToolResult, VoiceList]:
        return _result(voices.summary(), voices.model_dump())

    async def voice_catalogue() -> str:
        return voices.model_dump_json()

    # Optional arguments default to null, not to a value: OpenAI's strict mode (the
    # Agents SDK converts MCP schemas to it) makes every property required and nullable.
    async def usage(
        since: Annotated[
            str | None,
            Field(description="How far back: a number and a unit, e.g. 24h, 7d, 30m. Default: 7d."),
        ] = None,
        by: Annotated[
            Literal["day", "model", "voice", "engine"] | None,
            Field(description="How to group the figures. Default: day."),
        ] = None,
    ) -> Annotated[CallToolResult, UsageReport]:
        with _as_tool_errors("usage"):
            report = await asyncio.to_thread(probe._spend.usage, since or "7d", by or "day")
        return _result(report.table(), report.model_dump(mode="json"))

    async def usage_report() -> str:
        report = await asyncio.to_thread(probe._spend.usage, "7d", "day")
        return report.model_dump_json()

    tools: list[Tool] = [
        _closed_tool(
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
        ),
        _closed_tool(
            list_voices,
            title="List voices",
            description=_VOICES_HELP,
            annotations=ToolAnnotations(title="List voices", **_LOCAL_READ_ONLY),
        ),
        _closed_tool(
            usage,
            title="Usage",
            description=_USAGE_HELP,
            annotations=ToolAnnotations(title="Usage", **_LOCAL_READ_ONLY),
        ),
    ]
    server: MCPServer[_Backend] = MCPServer(
        "octave-tools",
        title="Octave text-to-speech",
        description="Text-to-speech on the AIML API: returns a URL of the generated audio.",
        instructions=_instructions(voices, default_format),
        version=__version__,
        lifespan=lifespan,
        log_level="WARNING",
        tools=tools,
    )
    # Resource names differ from every tool name: clients that turn resources into tools
    # (LlamaIndex) would otherwise get two tools called `usage`, one hiding the other.
    server.resource(
        USAGE_URI,
        name="usage_report",
        title="Spend over the last 7 days",
        description="Calls, characters and credits per day from the local ledger, as JSON.",
        mime_type="application/json",
    )(usage_report)
    server.resource(
        VOICES_URI,
        name="voice_catalogue",
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
voice, format, model, characters, credits_used, request_id, and the same sentence as \
message. Every call makes new \
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
