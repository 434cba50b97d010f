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
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from typing_extensions import Unpack

try:
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
    from mcp.server.mcpserver.tools import Tool
    from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase
    from mcp.types import CallToolResult, ContentBlock, TextContent, ToolAnnotations
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
from .toolspec import ToolSpec, explain_arguments, tools_for

__all__ = ["SpeechResult", "VoiceList", "create_server"]

logger = logging.getLogger("octave_tools.mcp")

VOICES_URI = "octave://voices"
USAGE_URI = "octave://usage"
MODELS_URI = "octave://models"


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


def _result(text: str, structured: dict[str, Any]) -> CallToolResult:
    """One sentence for the model, and the same facts as structured content."""
    content: list[ContentBlock] = [TextContent(type="text", text=text)]
    return CallToolResult(content=content, structured_content=structured)


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


def create_server(
    client: AsyncOctaveClient | None = None,
    *,
    http_client: "httpx.AsyncClient | None" = None,
    publish: Callable[[Speech], Speech] | None = None,
    **options: Unpack[SettingsOptions],
) -> MCPServer[_Backend]:
    """An MCP server with the ``text_to_speech``, ``list_voices`` and ``usage`` tools.

    Pass a ready ``client`` (yours to close), or any setting of ``AsyncOctaveClient``
    (``api_key``, ``model``, ``models``, ``voice``, ``cache_ttl``,
    ``max_credits_per_day``, ...), each falling back to the environment; the server
    then makes one client per run. No API key is needed to start or list tools; a call
    without one returns a tool error saying how to set it. Raises ConfigurationError for
    an invalid setting and TypeError for an unknown one.

    ``publish``, when given, turns each ``Speech`` into the one the caller gets before
    it is worded (the HTTP host swaps a file:// URL for one it serves).
    """
    if client is not None and (options or http_client is not None):
        raise TypeError("create_server() takes a client or client options, not both")
    # Checks every setting now, with no I/O; the client that sends is made on first use.
    probe = client if client is not None else AsyncOctaveClient(**options)
    settings = probe.settings
    specs = tools_for(probe)

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
        await ctx.report_progress(0, 1, "Generating speech")
        with _as_tool_errors("text_to_speech"):
            speech = await ctx.request_context.lifespan_context.client().synthesize(
                text, voice=voice, format=format, speed=speed, model=model
            )
        if publish is not None:
            speech = publish(speech)
        await ctx.report_progress(1, 1, "Speech ready")
        sentence = speech.summary()
        return _result(sentence, {**speech.model_dump(mode="json"), "message": sentence})

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

    tools: list[Tool] = [
        _tool(text_to_speech, specs.text_to_speech),
        _tool(list_voices, specs.list_voices),
        _tool(usage, specs.usage),
    ]
    server: MCPServer[_Backend] = MCPServer(
        "octave-tools",
        title="Octave text-to-speech",
        description="Text-to-speech on the AIML API: returns a URL of the generated audio.",
        instructions=specs.instructions,
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
