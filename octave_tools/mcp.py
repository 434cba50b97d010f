"""The MCP face: text-to-speech as tools for Claude Desktop and any MCP client.

``create_server()`` registers four tools and three resources over the core client:

- ``text_to_speech``: the audio URL as one sentence of text, plus ``structuredContent``
  (a ``SpeechResult``: the ``Speech`` fields and that sentence as ``message``) under a
  declared output schema. Never ``AudioContent``. Long text is spoken in parts, each
  reported as progress ("3 of 10 parts") to a client that sent a progress token.
- ``text_to_dialogue``: lines of ``{voice, text}`` spoken in order into one file; the
  same result and progress.
- ``list_voices``: the voice catalogue with the default marked; read-only, offline.
- ``usage``: what the local ledger says was spent; read-only, offline.
- resources ``octave://voices`` (``voice_catalogue``) and ``octave://usage``
  (``usage_report``): the same as JSON, under names no tool has.
- resource ``ui://octave-tools/player.html``: an inline audio player, an MCP App (the
  ``io.modelcontextprotocol/ui`` extension, spec 2026-01-26) that ``text_to_speech``
  and ``text_to_dialogue`` link in their ``_meta.ui.resourceUri``. Hosts that render
  MCP Apps show it with the result; every other client sees the same result and ignores
  the link.

``text_to_speech`` and ``text_to_dialogue`` results hold the sentence as a text block
first, then a ``resource_link`` block to the audio (its URL, audio MIME type and a
name), except for clients that name themselves only as the Python SDK's default
(``mcp``) on a protocol of 2025-11-25 or before, or name nothing there: the adapters
built on the 1.x SDK (LangChain's, LlamaIndex's, smolagents') hand every block to the
model, and a chat model refuses an audio file (OpenAI Chat Completions raises on it), so
they get the text alone.

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
import copy
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator, MutableSequence
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from typing_extensions import Unpack

try:
    from mcp.server.extension import Extension, ResourceBinding
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
    from mcp.server.mcpserver.resources import FunctionResource
    from mcp.server.mcpserver.tools import Tool
    from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase
    from mcp.types import (
        CallToolResult,
        ContentBlock,
        ResourceLink,
        TextContent,
        ToolAnnotations,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "The octave-tools MCP server needs the mcp extra: pip install 'octave-tools[mcp]'",
        name=exc.name,
    ) from exc

if TYPE_CHECKING:
    import httpx  # not at run time: a stdio server starts without the HTTP client stack

from . import (
    MODELS,
    AsyncOctaveClient,
    OctaveError,
    SettingsOptions,
    Speech,
    UsageReport,
    VoiceList,
    __version__,
)
from .keys import current_key
from .observe import observed_call
from .toolspec import ToolSpec, dialogue_lines, explain_arguments, tools_for

__all__ = ["SpeechResult", "VoiceList", "create_server"]

logger = logging.getLogger("octave_tools.mcp")

VOICES_URI = "octave://voices"
USAGE_URI = "octave://usage"
MODELS_URI = "octave://models"
PLAYER_URI = "ui://octave-tools/player.html"
APPS_EXTENSION = "io.modelcontextprotocol/ui"  # MCP Apps, spec 2026-01-26
APP_MIME_TYPE = "text/html;profile=mcp-app"
# Where the upstream API puts the audio it makes (the player's media-src).
UPSTREAM_AUDIO_ORIGIN = "https://cdn.aimlapi.com"
# The MIME type of each format, for the resource_link (pcm: raw 16-bit samples, no header).
AUDIO_MIME_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "ogg": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "m4a": "audio/mp4",
    "mp4": "audio/mp4",
    "webm": "audio/webm",
    "pcm": "audio/pcm",
}


def _plain_nullables(schema: dict[str, Any]) -> None:
    """``anyOf: [{type: a}, {type: null}]`` as ``type: [a, "null"]``: the same values.

    Clients check every result against the output schema (the SDK's client with
    jsonschema, per call); without the anyOf branches that check costs about a third less.
    """
    for prop in schema.get("properties", {}).values():
        options = prop.get("anyOf")
        if options and all(set(o) == {"type"} and isinstance(o["type"], str) for o in options):
            del prop["anyOf"]
            prop["type"] = [o["type"] for o in options]


class SpeechResult(Speech):
    """The structured result of ``text_to_speech``: the ``Speech`` and one sentence about it.

    Some clients (Pydantic AI) hand the model only the structured content, so it carries
    the sentence too.
    """

    model_config = ConfigDict(json_schema_extra=_plain_nullables)

    message: str = Field(
        description="One sentence for the user: the URL of the generated audio file, the "
        "voice and the format. Give the URL to the user unchanged."
    )


class _Backend:
    """The core client of one running server, made on first use so startup stays fast."""

    def __init__(self, client: AsyncOctaveClient | None, make: Callable[[], AsyncOctaveClient]):
        self._client = client
        self._make = make
        self._owned = client is None

    def client(self) -> AsyncOctaveClient:
        if self._client is None:
            self._client = self._make()
        return self._client

    async def aclose(self) -> None:
        if self._owned and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


_Ctx = Context[_Backend, Any]


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


class _Progress:
    """Progress notifications for one call: one per part of a long call, never backwards
    (the protocol wants each one above the last), and nothing without a progress token."""

    def __init__(self, ctx: _Ctx) -> None:
        self._ctx = ctx
        self._last = -1
        self._parts = False

    async def _report(self, done: int, total: int, message: str) -> None:
        if done > self._last:
            self._last = done
            await self._ctx.report_progress(done, total, message)

    async def start(self) -> None:
        await self._report(0, 1, "Generating speech")

    async def part(self, done: int, total: int) -> None:
        """The core's ``on_progress``: parts done of parts (one part is the short path)."""
        if total > 1:
            self._parts = True
            await self._report(done, total, f"{done} of {total} parts")

    async def finish(self) -> None:
        if not self._parts:
            await self._report(1, 1, "Speech ready")


def _speech_result(
    speech: Speech, publish: Callable[[Speech], Speech] | None, ctx: _Ctx
) -> CallToolResult:
    """The speech as the caller may see it: one sentence, the link to the audio where the
    client takes it (``_takes_links``), and the record under the schema."""
    if publish is not None:
        speech = publish(speech)
    sentence = speech.summary()
    structured = {**speech.model_dump(mode="json"), "message": sentence}
    return _result(sentence, structured, audio_link(speech) if _takes_links(ctx) else None)


def _result(
    text: str, structured: dict[str, Any], link: ResourceLink | None = None
) -> CallToolResult:
    """One sentence for the model, and the same facts as structured content.

    ``link`` (the audio) follows the text, which stays first: some clients show only
    the first block, or only the text.
    """
    content: list[ContentBlock] = [TextContent(type="text", text=text)]
    if link is not None:
        content.append(link)
    return CallToolResult(content=content, structured_content=structured)


def audio_link(speech: Speech) -> ResourceLink:
    """The ``resource_link`` content block of a ``Speech``: its URL, MIME type and a name."""
    name = speech.audio_url.rsplit("/", 1)[-1].split("?", 1)[0] or f"speech.{speech.format}"
    return ResourceLink(
        type="resource_link",
        uri=speech.audio_url,
        name=name,
        title=f"Speech ({speech.voice or speech.model})",
        mime_type=AUDIO_MIME_TYPES.get(speech.format, f"audio/{speech.format}"),
    )


# The last protocol version of the 1.x Python SDK; 2.x clients speak a later one.
_LEGACY_PROTOCOL = "2025-11-25"


def _takes_links(ctx: Any) -> bool:
    """Whether a ``resource_link`` reaches this client safely (see the module docstring)."""
    version = ctx.protocol_version
    if version is not None and version > _LEGACY_PROTOCOL:
        return True
    params = getattr(ctx.session, "client_params", None)
    info = getattr(params, "client_info", None)
    return info is not None and info.name != "mcp"


def _origin(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, or None."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rpartition("@")[2]
    if scheme.lower() not in ("http", "https") or not host:
        return None
    return f"{scheme.lower()}://{host.lower()}"


def _read_player() -> str:
    """The player page, read from the package on each request (never at start-up)."""
    from importlib.resources import files

    return files("octave_tools").joinpath("_data/player.html").read_text(encoding="utf-8")


class _Apps(Extension):
    """The MCP Apps extension (``io.modelcontextprotocol/ui``) with the player page.

    The SDK's ``mcp.server.apps.Apps`` does the same; this one only adds a resource and
    skips that module's import (stdio cold start).
    """

    identifier = APPS_EXTENSION

    def __init__(self, audio_origins: MutableSequence[str]) -> None:
        # The list is kept by reference in the resource's ``_meta.ui.csp``, so a host
        # that learns its own address later (the HTTP server, once its port is bound)
        # adds to it.
        self._player = FunctionResource(
            uri=PLAYER_URI,
            name="speech_player",
            title="Speech player",
            description="Plays the audio of a text_to_speech or text_to_dialogue result inline: "
            "play/pause, seek, download, with the voice, model, credits and who speaks.",
            mime_type=APP_MIME_TYPE,
            meta={"ui": {"csp": {"resourceDomains": audio_origins}, "prefersBorder": True}},
            fn=_read_player,
        )

    def resources(self) -> list[ResourceBinding]:
        return [ResourceBinding(resource=self._player)]


def _plain(line: Any) -> dict[str, Any]:
    """A validated dialogue line as the mapping the core takes (unset model left out)."""
    fields: dict[str, Any] = line.model_dump() if isinstance(line, BaseModel) else dict(line)
    return {key: value for key, value in fields.items() if value is not None}


# pydantic ends each error with "For further information visit https://errors.pydantic.dev/..."
_PYDANTIC_URL = re.compile(r"\s*For further information visit \S+")


class _SpecTool(Tool):
    """A tool whose arguments are exactly its spec's: unknown names and bad values are
    tool errors worded by the core (the same words the LangChain face uses)."""

    _spec: ToolSpec | None = PrivateAttr(default=None)

    async def run(
        self, arguments: dict[str, Any], context: Any, convert_result: bool = False
    ) -> Any:
        """Run the tool as the SDK would, with the core's words for argument mistakes."""
        assert self._spec is not None
        try:
            return await super().run(arguments, context, convert_result=convert_result)
        except UnexpectedToolError:
            raise  # a crash: the SDK logs its traceback and tells the model nothing more
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                problem = explain_arguments(self._spec, exc.__cause__.errors(include_url=False))
                raise ToolError(f"Error executing tool {self.name}: {problem}") from None
            if _PYDANTIC_URL.search(str(exc)):
                raise ToolError(_PYDANTIC_URL.sub("", str(exc))) from exc.__cause__
            raise


def _tool(fn: Callable[..., Any], spec: ToolSpec) -> _SpecTool:
    """``fn`` registered as the core's ``spec``: its name, words, hints and closed schema."""
    h = spec.hints
    tool = _SpecTool.from_function(
        fn,
        name=spec.name,
        title=spec.title,
        description=spec.description,
        annotations=ToolAnnotations(
            title=spec.title,
            read_only_hint=h.read_only,
            destructive_hint=h.destructive,
            idempotent_hint=h.idempotent,
            open_world_hint=h.open_world,
        ),
    )
    assert isinstance(tool, _SpecTool)  # from_function builds the class it is called on
    arguments = spec.arguments_model()
    model: type[BaseModel] = type(
        arguments.__name__, (arguments, ArgModelBase), {"__module__": arguments.__module__}
    )
    tool.fn_metadata.arg_model = model  # type: ignore[assignment]
    tool.parameters = model.model_json_schema(by_alias=True)
    tool._spec = spec
    return tool


class _KeyView:
    """``tools/list`` as the caller's client key sees it: a key limited to some models
    finds only those in every ``model`` argument (the HTTP host sets the key)."""

    def __init__(self, probe: AsyncOctaveClient) -> None:
        self._probe = probe

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        result = await call_next(ctx)
        grant = current_key.get()
        if ctx.method != "tools/list" or grant is None or not grant.key.models:
            return result
        models = list(self._probe.allowed_models())
        data = (
            result.model_dump(by_alias=True, exclude_none=True, mode="json")
            if hasattr(result, "model_dump")
            else copy.deepcopy(result)
        )
        for tool in data.get("tools", []):
            props = tool.get("inputSchema", {}).get("properties", {})
            line = props.get("lines", {}).get("items", {}).get("properties", {})
            for prop in (props.get("model"), line.get("model")):  # a dialogue's lines too
                if prop is None:
                    continue
                for option in prop.get("anyOf", [prop]):
                    if "enum" in option:
                        option["enum"] = models
                prop["description"] = (
                    f"Which model speaks: {', '.join(models)}. Leave it out for {models[0]}."
                )
        return data


def create_server(
    client: AsyncOctaveClient | None = None,
    *,
    http_client: "httpx.AsyncClient | None" = None,
    publish: Callable[[Speech], Speech] | None = None,
    audio_origins: MutableSequence[str] | None = None,
    **options: Unpack[SettingsOptions],
) -> MCPServer[_Backend]:
    """An MCP server with the ``text_to_speech``, ``text_to_dialogue``, ``list_voices`` and
    ``usage`` tools.

    Pass a ready ``client`` (yours to close), or any setting of ``AsyncOctaveClient``
    (``api_key``, ``model``, ``models``, ``voice``, ``cache_ttl``,
    ``max_credits_per_day``, ...), each falling back to the environment; the server
    then makes one client per run. No API key is needed to start or list tools; a call
    without one returns a tool error saying how to set it. Raises ConfigurationError for
    an invalid setting and TypeError for an unknown one.

    ``publish``, when given, turns each ``Speech`` into the one the caller gets before
    it is worded (the HTTP host swaps a file:// URL for one it serves).

    ``audio_origins``: origins, besides the upstream API's, that audio URLs may name (the
    player page's ``media-src``); the list is kept, so appending to it later counts.
    """
    if client is not None and (options or http_client is not None):
        raise TypeError("create_server() takes a client or client options, not both")
    # Checks every setting now, with no I/O; the client that sends is made on first use.
    probe = client if client is not None else AsyncOctaveClient(**options)
    settings = probe.settings
    specs = tools_for(probe)
    origins = audio_origins if audio_origins is not None else []
    for origin in (UPSTREAM_AUDIO_ORIGIN, _origin(settings.base_url)):
        if origin is not None and origin not in origins:
            origins.append(origin)

    def make_client() -> AsyncOctaveClient:
        return AsyncOctaveClient(http_client=http_client, settings=settings)

    @asynccontextmanager
    async def lifespan(_: MCPServer[_Backend]) -> AsyncIterator[_Backend]:
        backend = _Backend(client, make_client)
        try:
            yield backend
        finally:
            await backend.aclose()

    async def text_to_speech(
        ctx: _Ctx,
        text: str,
        voice: str | None = None,
        format: str | None = None,
        speed: float | None = None,
        model: str | None = None,
    ) -> Annotated[CallToolResult, SpeechResult]:
        progress = _Progress(ctx)
        await progress.start()
        with _as_tool_errors("text_to_speech"), observed_call("text_to_speech") as record:
            speech = await ctx.request_context.lifespan_context.client().synthesize(
                text,
                voice=voice,
                format=format,
                speed=speed,
                model=model,
                on_progress=progress.part,
            )
            record.finish(speech)
        await progress.finish()
        return _speech_result(speech, publish, ctx)

    async def text_to_dialogue(
        ctx: _Ctx, lines: list[Any], format: str | None = None
    ) -> Annotated[CallToolResult, SpeechResult]:
        progress = _Progress(ctx)
        await progress.start()
        with _as_tool_errors("text_to_dialogue"), observed_call("text_to_dialogue") as record:
            speech = await ctx.request_context.lifespan_context.client().synthesize_dialogue(
                dialogue_lines(lines), format=format, on_progress=progress.part
            )
            record.finish(speech)
        await progress.finish()
        return _speech_result(speech, publish, ctx)

    async def list_voices(model: str | None = None) -> Annotated[CallToolResult, VoiceList]:
        with _as_tool_errors("list_voices"):
            voices = probe.voices(model)
        return _result(voices.summary(), voices.model_dump())

    async def usage(
        since: str | None = None, by: str | None = None
    ) -> Annotated[CallToolResult, UsageReport]:
        with _as_tool_errors("usage"):
            report = await asyncio.to_thread(probe.usage_report, since or "7d", by or "day")
        return _result(report.table(), report.model_dump(mode="json"))

    async def voice_catalogue() -> str:
        return specs.voices.model_dump_json()

    async def usage_report() -> str:
        report = await asyncio.to_thread(probe.usage_report, "7d", "day")
        return report.model_dump_json()

    async def model_catalogue() -> str:
        offered = probe.allowed_models()
        records = [MODELS[m].describe() for m in offered if m in MODELS]
        return json.dumps({"default": settings.model, "models": records}, ensure_ascii=False)

    speak = _tool(text_to_speech, specs.text_to_speech)
    # MCP Apps: hosts that render them show the player with the result. The flat key is
    # the spec's deprecated form, still read by hosts that predate 2026-01-26.
    talk = _tool(text_to_dialogue, specs.text_to_dialogue)
    for tool in (speak, talk):
        tool.meta = {"ui": {"resourceUri": PLAYER_URI}, "ui/resourceUri": PLAYER_URI}
    tools: list[Tool] = [
        speak,
        talk,
        _tool(list_voices, specs.list_voices),
        _tool(usage, specs.usage),
    ]
    server: MCPServer[_Backend] = MCPServer(
        "octave-tools",
        middleware=[_KeyView(probe)],
        title="Octave text-to-speech",
        description="Text-to-speech on the AIML API: returns a URL of the generated audio.",
        instructions=specs.instructions,
        version=__version__,
        lifespan=lifespan,
        log_level="WARNING",
        tools=tools,
        extensions=[_Apps(origins)],
    )
    # Resource names differ from every tool name: clients that turn resources into tools
    # (LlamaIndex) would otherwise get two tools called `usage`, one hiding the other.
    server.resource(
        USAGE_URI,
        name="usage_report",
        title="Spend over the last 7 days",
        description="Calls, characters and credits per day from the ledger, as JSON.",
        mime_type="application/json",
    )(usage_report)
    server.resource(
        VOICES_URI,
        name="voice_catalogue",
        title="Voice catalogue",
        description="The voices text_to_speech accepts, and the default, as JSON.",
        mime_type="application/json",
    )(voice_catalogue)
    server.resource(
        MODELS_URI,
        name="model_catalogue",
        title="Models",
        description="The models text_to_speech offers: voices, formats, text limit, speed.",
        mime_type="application/json",
    )(model_catalogue)
    return server
