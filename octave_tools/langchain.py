"""LangChain tools over the octave-tools client: ``text_to_speech``, ``text_to_dialogue``,
``list_voices``, ``usage`` and a toolkit.

Install with ``pip install "octave-tools[langchain]"``. The tools read the same settings as
the clients (arguments first, then ``AIMLAPI_API_KEY`` and the ``OCTAVE_TOOLS_*`` variables),
build their HTTP clients on first use, and so construct with no key set.

Who sees a failure depends on who can fix it:

- the model gets the message, as the tool's output (a ``ToolMessage`` with
  ``status="error"``), when its next move can change the outcome: arguments it can correct
  (unknown voice with "did you mean", empty or too long text, unknown format; the API's 400)
  and transient API failures it can retry or work around (rate limit, 5xx, timeout,
  connection, unusable response);
- the caller gets the exception when only a person can fix it: ``ConfigurationError`` (no
  key, bad setting), ``AuthenticationError`` (key rejected, out of credits),
  ``NotFoundError`` (model retired) and ``BudgetExceededError`` (spend limit reached).

With ``handle_tool_error=False`` the first kind is raised too, as ``ToolException`` whose
``__cause__`` is the ``OctaveError``. No message ever contains the API key.

A long call (text spoken in parts, or a dialogue) dispatches a custom event named
``octave_tools_progress`` with ``{"done", "total", "message"}`` after each part, which
``astream_events`` and callback handlers' ``on_custom_event`` receive.
"""

# No ``from __future__ import annotations``: LangChain resolves the type hints of ``_run``
# on every call, and real annotations make that several times cheaper than strings.

import asyncio
import functools
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_type_hints

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.tools import BaseTool, BaseToolkit, ToolException
from langchain_core.tools.base import ArgsSchema, ToolExceptionHandlerOutput
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    SkipValidation,
    ValidationError,
    create_model,
    field_validator,
)
from pydantic.v1 import ValidationError as ValidationErrorV1

from . import (
    SETTING_NAMES,
    SETTINGS,
    AsyncOctaveClient,
    AuthenticationError,
    BudgetExceededError,
    ConfigurationError,
    NotFoundError,
    OctaveClient,
    OctaveError,
    Settings,
    SettingsOptions,
    check_options,
)
from .toolspec import ToolSet, ToolSpec, dialogue_lines, explain_arguments, tools_for

__all__ = [
    "PROGRESS_EVENT",
    "OctaveDialogueTool",
    "OctaveTTSTool",
    "OctaveToolkit",
    "OctaveUsageTool",
    "OctaveVoicesTool",
]

PROGRESS_EVENT = "octave_tools_progress"
"""The custom event a long call dispatches after each part: ``{"done", "total", "message"}``."""

# Raised to the caller: no retry by the model can fix these (see the module docstring).
_NEEDS_A_PERSON = (ConfigurationError, AuthenticationError, NotFoundError, BudgetExceededError)


# ---------------------------------------------------------------- settings


def _setting_fields() -> dict[str, Any]:
    """One optional field per setting, from the core's declaration of them."""
    hints = get_type_hints(SettingsOptions)
    fields: dict[str, Any] = {}
    for setting in SETTINGS:
        env = f" ({setting.env[0]})" if setting.env else ""
        description = setting.doc + env
        if setting.name == "api_key":
            # Typed to accept a plain string; the validator below always stores a SecretStr.
            fields["api_key"] = (
                SecretStr | str | None,
                Field(default=None, exclude=True, description=description),
            )
        else:
            fields[setting.name] = (
                hints[setting.name],
                Field(default=None, description=description),
            )
    return fields


if TYPE_CHECKING:
    _SettingFields = BaseModel
else:
    _SettingFields = create_model(
        "_SettingFields",
        __config__=ConfigDict(arbitrary_types_allowed=True),
        **_setting_fields(),
    )


class _ClientOptions(_SettingFields):
    """Every client setting, or ready clients, shared by the tools and the toolkit.

    Unset settings come from the environment, exactly as for ``OctaveClient``; an
    option the class does not have is a TypeError, never silently ignored.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    client: OctaveClient | None = Field(default=None, exclude=True)
    """A ready client for sync calls; then pass no settings."""
    async_client: AsyncOctaveClient | None = Field(default=None, exclude=True)
    """A ready client for async calls; then pass no settings."""

    _settings: Settings = PrivateAttr()
    _core: OctaveClient | AsyncOctaveClient = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        # Refused by name, never quoting the value: it could be a key under a misspelt name.
        known = type(self).model_fields
        check_options({name: None for name in data if name not in known})
        super().__init__(**data)

    @field_validator("api_key", mode="before", check_fields=False)
    @classmethod
    def _keep_key_secret(cls, value: object) -> object:
        return SecretStr(value) if isinstance(value, str) else value

    def model_post_init(self, context: Any, /) -> None:
        """Resolve the settings once; no key is needed and no connection is opened."""
        super().model_post_init(context)
        given = {name: getattr(self, name) for name in SETTING_NAMES}
        given = {name: value for name, value in given.items() if value is not None}
        ready = self.client or self.async_client
        if ready is None:
            if "api_key" in given:
                given["api_key"] = _reveal(given["api_key"])
            self._settings = Settings.load(**given)
            self._core = OctaveClient(settings=self._settings)  # no I/O until a call
            return
        if given:
            # Not a ValueError: pydantic would quote the arguments, key included, in its error.
            raise ConfigurationError(
                f"Pass either ready clients or client settings, not both (got {', '.join(given)} "
                "as well); the clients already hold their settings."
            )
        self._settings = ready.settings
        self._core = ready

    @property
    def settings(self) -> Settings:
        """The resolved client settings (the key is never shown)."""
        return self._settings

    def _options(self) -> dict[str, Any]:
        names = (*SETTING_NAMES, "client", "async_client")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def _reveal(key: SecretStr | str | None) -> str | None:
    return key.get_secret_value() if isinstance(key, SecretStr) else key


@functools.lru_cache(maxsize=64)
def _arguments_model(spec: ToolSpec) -> type[BaseModel]:
    return spec.arguments_model()


def _render(tool: BaseTool, spec: ToolSpec) -> None:
    """Give ``tool`` the name, description, argument schema and hints of the core's spec."""
    tool.name = spec.name
    if "description" not in tool.model_fields_set:
        tool.description = spec.description
    if "args_schema" not in tool.model_fields_set:
        tool.args_schema = _arguments_model(spec)
    tool.metadata = {**spec.hints.camel_case(), **(tool.metadata or {})}
    if "handle_validation_error" not in tool.model_fields_set:
        tool.handle_validation_error = functools.partial(_explain_invalid_arguments, spec)


def _explain_invalid_arguments(spec: ToolSpec, error: ValidationError | ValidationErrorV1) -> str:
    """The tool message for arguments that failed the schema, in the core's words."""
    return f"Error: {explain_arguments(spec, error.errors())}"


@contextmanager
def _model_can_fix() -> Iterator[None]:
    """Failures the model can act on become its tool message; the others are raised."""
    try:
        yield
    except _NEEDS_A_PERSON:
        raise
    except OctaveError as exc:
        raise ToolException(f"Error: {exc}") from exc


# ---------------------------------------------------------------- the tools


class _SpecTool(_ClientOptions, BaseTool):
    """A tool that takes its name, words, argument schema and hints from the core's spec."""

    name: str = ""
    description: str = ""
    args_schema: Annotated[ArgsSchema | None, SkipValidation()] = None
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    handle_tool_error: bool | str | Callable[[ToolException], ToolExceptionHandlerOutput] | None = (
        True
    )
    handle_validation_error: (
        bool | str | Callable[[ValidationError | ValidationErrorV1], str] | None
    ) = True

    def _spec_of(self, tools: ToolSet) -> ToolSpec:
        raise NotImplementedError

    def model_post_init(self, context: Any, /) -> None:
        """Describe this tool's real model, voices and defaults to the model."""
        super().model_post_init(context)
        _render(self, self._spec_of(tools_for(self._core)))

    def _to_args_and_kwargs(
        self, tool_input: str | dict[str, Any], tool_call_id: str | None
    ) -> tuple[tuple[str, ...], dict[str, Any]]:
        # LangChain skips the schema of a tool that takes no arguments, so list_voices
        # given {"model": ...} would quietly list the default model's voices. Ours are
        # closed even when empty: an argument is refused by name, as on MCP.
        if isinstance(tool_input, dict) and tool_input and not self.args:
            self._parse_input(tool_input, tool_call_id)
        return super()._to_args_and_kwargs(tool_input, tool_call_id)


def _progress_event(done: int, total: int) -> dict[str, Any]:
    return {"done": done, "total": total, "message": f"{done} of {total} parts"}


def _sync_progress(
    run_manager: CallbackManagerForToolRun | None,
) -> Callable[[int, int], None] | None:
    """The core's ``on_progress`` as custom events of this tool run (None: nobody listens)."""
    if run_manager is None or not run_manager.handlers:
        return None
    events = run_manager.get_child()

    def report(done: int, total: int) -> None:
        if total > 1:
            events.on_custom_event(
                PROGRESS_EVENT, _progress_event(done, total), run_id=run_manager.run_id
            )

    return report


def _async_progress(
    run_manager: AsyncCallbackManagerForToolRun | None,
) -> Callable[[int, int], Awaitable[None]] | None:
    """The async twin of ``_sync_progress``."""
    if run_manager is None or not run_manager.handlers:
        return None
    events = run_manager.get_child()

    async def report(done: int, total: int) -> None:
        if total > 1:
            await events.on_custom_event(
                PROGRESS_EVENT, _progress_event(done, total), run_id=run_manager.run_id
            )

    return report


class _SpeakingTool(_SpecTool):
    """A tool that makes speech: a sync client for ``invoke``, one async client per loop."""

    _sync: OctaveClient | None = PrivateAttr(default=None)
    # One async client per event loop: an httpx pool cannot outlive the loop it was used on.
    _async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncOctaveClient] = PrivateAttr(
        default_factory=weakref.WeakKeyDictionary
    )
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _sync_client(self) -> OctaveClient:
        if self.client is not None:
            return self.client
        if isinstance(self._core, OctaveClient):
            return self._core
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    self._sync = OctaveClient(settings=self._settings)
        return self._sync

    def _async_client(self) -> AsyncOctaveClient:
        if self.async_client is not None:
            return self.async_client
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            with self._lock:
                client = self._async.get(loop)
                if client is None:
                    client = self._async[loop] = AsyncOctaveClient(settings=self._settings)
        return client


class OctaveTTSTool(_SpeakingTool):
    """Text-to-speech on the AIML API (``hume/octave-2`` by default) as a LangChain tool.

    Invoked with a ``ToolCall`` it returns a ``ToolMessage`` whose content is one sentence
    with the audio URL, voice and format, and whose ``artifact`` is the ``Speech`` record
    as a dict (URL, voice, format, model, characters, credits_used, request_id, and
    ``parts`` when long text was spoken in parts).

    Construct it with no arguments (settings from the environment), with any client
    setting (``api_key=``, ``voice=``, ``cache_ttl=``, ``max_credits_per_day=``, ...), or
    with ready clients (``client=``, ``async_client=``). ``ainvoke`` runs on the async
    client, with no thread pool.
    """

    name: str = "text_to_speech"

    def _spec_of(self, tools: ToolSet) -> ToolSpec:
        return tools.text_to_speech

    def _run(
        self,
        text: str,
        voice: str | None = None,
        format: str | None = None,
        speed: float | None = None,
        model: str | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        with _model_can_fix():
            speech = self._sync_client().synthesize(
                text,
                voice=voice,
                format=format,
                speed=speed,
                model=model,
                on_progress=_sync_progress(run_manager),
            )
        return speech.summary(), speech.model_dump()

    async def _arun(
        self,
        text: str,
        voice: str | None = None,
        format: str | None = None,
        speed: float | None = None,
        model: str | None = None,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        with _model_can_fix():
            speech = await self._async_client().synthesize(
                text,
                voice=voice,
                format=format,
                speed=speed,
                model=model,
                on_progress=_async_progress(run_manager),
            )
        return speech.summary(), speech.model_dump()


class OctaveDialogueTool(_SpeakingTool):
    """A dialogue in several voices, spoken in order into one audio file, as a LangChain tool.

    Takes ``lines`` (each ``{"voice", "text"}``, and ``"model"`` when several are offered)
    and an optional ``format``. The ``ToolMessage`` content is one sentence with the audio
    URL; the ``artifact`` is the ``Speech`` record as a dict, with ``parts`` (each part's
    speaker, voice, character range, URL and credits). Settings as for ``OctaveTTSTool``.
    """

    name: str = "text_to_dialogue"

    def _spec_of(self, tools: ToolSet) -> ToolSpec:
        return tools.text_to_dialogue

    def _run(
        self,
        lines: list[Any],
        format: str | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        with _model_can_fix():
            speech = self._sync_client().synthesize_dialogue(
                dialogue_lines(lines),
                format=format,
                on_progress=_sync_progress(run_manager),
            )
        return speech.summary(), speech.model_dump()

    async def _arun(
        self,
        lines: list[Any],
        format: str | None = None,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        with _model_can_fix():
            speech = await self._async_client().synthesize_dialogue(
                dialogue_lines(lines),
                format=format,
                on_progress=_async_progress(run_manager),
            )
        return speech.summary(), speech.model_dump()


class OctaveVoicesTool(_SpecTool):
    """The voices ``text_to_speech`` accepts and the default, as a read-only LangChain tool.

    Content is one line for the model; the artifact is ``{"model", "default", "voices"}``.
    It opens no connection and needs no key.
    """

    name: str = "list_voices"

    def _spec_of(self, tools: ToolSet) -> ToolSpec:
        return tools.list_voices

    def _run(
        self, model: str | None = None, run_manager: CallbackManagerForToolRun | None = None
    ) -> tuple[str, dict[str, Any]]:
        with _model_can_fix():
            voices = self._core.voices(model)
        return voices.summary(), voices.model_dump()

    async def _arun(
        self, model: str | None = None, run_manager: AsyncCallbackManagerForToolRun | None = None
    ) -> tuple[str, dict[str, Any]]:
        return self._run(model)


class OctaveUsageTool(_SpecTool):
    """What text-to-speech has spent, from the ledger, as a read-only LangChain tool.

    Content is a small table; the artifact is the ``UsageReport`` as a dict. No API call.
    """

    name: str = "usage"

    def _spec_of(self, tools: ToolSet) -> ToolSpec:
        return tools.usage

    def _run(
        self,
        since: str | None = None,
        by: str | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        with _model_can_fix():
            report = self._core.usage_report(since or "7d", by or "day")
        return report.table(), report.model_dump(mode="json")

    async def _arun(
        self,
        since: str | None = None,
        by: str | None = None,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        return await asyncio.to_thread(self._run, since, by)


class OctaveToolkit(_ClientOptions, BaseToolkit):
    """``text_to_speech``, ``text_to_dialogue`` and ``list_voices`` with one set of settings.

    Takes the same arguments as the tools; ``get_tools()`` returns the same tool instances
    on every call, so their HTTP connections are reused.
    """

    _tools: list[BaseTool] = PrivateAttr(default_factory=list)

    def model_post_init(self, context: Any, /) -> None:
        """Build the tools from this toolkit's settings."""
        super().model_post_init(context)
        options = self._options()
        self._tools = [
            OctaveTTSTool(**options),
            OctaveDialogueTool(**options),
            OctaveVoicesTool(**options),
        ]

    def get_tools(self) -> list[BaseTool]:
        """The tools, ready to pass to ``create_agent`` or ``bind_tools``."""
        return list(self._tools)
