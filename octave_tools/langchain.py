"""LangChain tools over the octave-tools client: ``text_to_speech``, ``list_voices``, a toolkit.

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
"""

# No ``from __future__ import annotations``: LangChain resolves the type hints of ``_run``
# on every call, and real annotations make that several times cheaper than strings.

import asyncio
import functools
import threading
import weakref
from collections.abc import Callable
from typing import Annotated, Any, Literal

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
    model_validator,
)
from pydantic.v1 import ValidationError as ValidationErrorV1

from ._settings import Settings
from .client import AsyncOctaveClient, OctaveClient, _BaseClient
from .errors import (
    AuthenticationError,
    BudgetExceededError,
    ConfigurationError,
    InvalidInputError,
    NotFoundError,
    OctaveError,
)
from .models import Speech
from .voices import (
    DEFAULT_FORMAT,
    DEFAULT_MODEL,
    FORMATS,
    MAX_TEXT_CHARS,
    AudioFormat,
    VoiceCatalogue,
    catalogue_for,
    resolve_format,
)

__all__ = [
    "ListVoicesInput",
    "OctaveTTSTool",
    "OctaveToolkit",
    "OctaveVoicesTool",
    "TextToSpeechInput",
]

# Raised to the caller: no retry by the model can fix these (see the module docstring).
_NEEDS_A_PERSON = (ConfigurationError, AuthenticationError, NotFoundError, BudgetExceededError)

# MCP-style tool annotations, under the keys langchain-mcp-adapters puts in ``metadata``.
_TTS_HINTS: dict[str, Any] = {
    "readOnlyHint": False,
    "destructiveHint": False,
    "idempotentHint": False,
    "openWorldHint": True,
}
_VOICES_HINTS: dict[str, Any] = {
    "readOnlyHint": True,
    "destructiveHint": False,
    "idempotentHint": True,
    "openWorldHint": False,
}

TTS_DESCRIPTION = (
    "Turn text into spoken audio (text-to-speech) and get a link to the audio file. Use it "
    "when the user wants to hear words spoken: reading a text aloud, a voice-over, narration, "
    "a spoken message or an audio version of an answer. Give the exact words as `text`; "
    "`voice` and `format` are optional. Returns one sentence with the audio URL, the voice "
    "and the format: share that URL with the user. Each call costs credits per character, so "
    "do not repeat a call that succeeded."
)
VOICES_DESCRIPTION = (
    "List the voices text_to_speech can speak with, and which one is the default. Use it when "
    "the user asks what voices there are, or to find the exact name of a voice. Takes no "
    "arguments and costs nothing."
)


# ---------------------------------------------------------------- argument schemas


def _voice_help(catalogue: VoiceCatalogue | None, default: str | None) -> str:
    if catalogue is None:
        leave_out = f"the default, {default!r}" if default else "the API's default"
        return f"Name of the voice to speak with. Leave it out for {leave_out}."
    return (
        f"Name of the voice to speak with, exactly one of: {', '.join(catalogue.voices)}. "
        f"Leave it out for the default, {default!r}."
    )


def _format_help(default: str) -> str:
    choices = " or ".join(repr(f) for f in FORMATS)
    return f"Audio file format: {choices}. Leave it out for {default!r}."


_DEFAULT_CATALOGUE = catalogue_for(DEFAULT_MODEL)
_DEFAULT_VOICE_HELP = _voice_help(
    _DEFAULT_CATALOGUE, _DEFAULT_CATALOGUE.default if _DEFAULT_CATALOGUE else None
)
_DEFAULT_FORMAT_HELP = _format_help(DEFAULT_FORMAT)


class _ClosedInput(BaseModel):
    """Arguments that are exactly the fields: an unknown one is an error naming the valid ones.

    Closed (``additionalProperties: false``) for OpenAI's strict mode too; without it a
    misspelt ``vioce`` was dropped and the call spent credits on the default voice.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _only_known_names(cls, value: object) -> object:
        if isinstance(value, dict):
            unknown = [repr(name) for name in value if name not in cls.model_fields]
            if unknown:
                noun = "argument" if len(unknown) == 1 else "arguments"
                valid = ", ".join(cls.model_fields)
                takes = f"the arguments are {valid}" if valid else "this tool takes no arguments"
                raise ValueError(f"unknown {noun} {', '.join(unknown)} ({takes})")
        return value


class TextToSpeechInput(_ClosedInput):
    """Arguments of text_to_speech."""

    text: str = Field(
        description=f"The exact words to speak, as plain text (at most {MAX_TEXT_CHARS:,} "
        "characters)."
    )
    voice: str | None = Field(default=None, description=_DEFAULT_VOICE_HELP)
    format: AudioFormat | None = Field(default=None, description=_DEFAULT_FORMAT_HELP)

    # Models often send "" for an optional argument they mean to leave out; that costs no
    # round trip. Voice names are checked by the client, per model, with suggestions.
    @field_validator("voice", mode="before")
    @classmethod
    def _blank_voice_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("format", mode="before")
    @classmethod
    def _known_format(cls, value: object) -> object:
        if isinstance(value, str):
            return resolve_format(value) if value.strip() else None
        return value


class ListVoicesInput(_ClosedInput):
    """list_voices takes no arguments."""


@functools.lru_cache(maxsize=64)
def _input_schema(voice_help: str, format_help: str) -> type[TextToSpeechInput]:
    """TextToSpeechInput with field descriptions for one tool's model and defaults."""
    if (voice_help, format_help) == (_DEFAULT_VOICE_HELP, _DEFAULT_FORMAT_HELP):
        return TextToSpeechInput
    return create_model(
        "TextToSpeechInput",
        __base__=TextToSpeechInput,
        __doc__=TextToSpeechInput.__doc__,
        voice=(str | None, Field(default=None, description=voice_help)),
        format=(AudioFormat | None, Field(default=None, description=format_help)),
    )


def _explain_invalid_arguments(error: ValidationError | ValidationErrorV1) -> str:
    """The tool message for arguments that failed the schema: each field and its fix."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        cause = dict(item.get("ctx") or {}).get("error")
        problem = str(cause) if isinstance(cause, Exception) else str(item["msg"])
        problems.append(f"{where}: {problem.rstrip('.')}" if item["loc"] else problem)
    return f"Error: invalid arguments: {'; '.join(problems)}. Correct them and call the tool again."


# ---------------------------------------------------------------- shared settings

_OPTION_NAMES = (
    "api_key",
    "base_url",
    "model",
    "voice",
    "format",
    "timeout",
    "max_retries",
    "engine",
    "output_dir",
)


class _ClientOptions(BaseModel):
    """Client settings or ready clients, shared by the tools and the toolkit.

    Unset settings come from the environment, exactly as for ``OctaveClient``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    # Typed to accept a plain string; the validator below always stores a SecretStr.
    api_key: SecretStr | str | None = Field(
        default=None, exclude=True, description="AIML API key (default: AIMLAPI_API_KEY)."
    )
    base_url: str | None = Field(default=None, description="API base URL (AIMLAPI_BASE_URL).")
    model: str | None = Field(default=None, description="TTS model id (OCTAVE_TOOLS_MODEL).")
    voice: str | None = Field(default=None, description="Default voice (OCTAVE_TOOLS_VOICE).")
    format: str | None = Field(default=None, description="Default format (OCTAVE_TOOLS_FORMAT).")
    timeout: float | None = Field(default=None, description="Seconds per call, retries included.")
    max_retries: int | None = Field(default=None, description="Retries of transient failures.")
    engine: str | None = Field(default=None, description="auto, aimlapi or local.")
    output_dir: str | None = Field(default=None, description="Where raw audio answers are saved.")
    client: OctaveClient | None = Field(default=None, exclude=True)
    """A ready client for sync calls; then pass no settings."""
    async_client: AsyncOctaveClient | None = Field(default=None, exclude=True)
    """A ready client for async calls; then pass no settings."""

    _settings: Settings = PrivateAttr()

    @field_validator("api_key", mode="before")
    @classmethod
    def _keep_key_secret(cls, value: object) -> object:
        return SecretStr(value) if isinstance(value, str) else value

    def model_post_init(self, context: Any, /) -> None:
        """Resolve the settings once; no key is needed and no connection is opened."""
        super().model_post_init(context)
        ready = self.client or self.async_client
        if ready is None:
            self._settings = Settings.load(
                api_key=_reveal(self.api_key),
                base_url=self.base_url,
                model=self.model,
                voice=self.voice,
                format=self.format,
                timeout=self.timeout,
                max_retries=self.max_retries,
                engine=self.engine,
                output_dir=self.output_dir,
            )
            return
        given = [name for name in _OPTION_NAMES if getattr(self, name) is not None]
        if given:
            # Not a ValueError: pydantic would quote the arguments, key included, in its error.
            raise ConfigurationError(
                f"Pass either ready clients or client settings, not both (got {', '.join(given)} "
                "as well); the clients already hold their settings."
            )
        self._settings = ready.settings

    @property
    def settings(self) -> Settings:
        """The resolved client settings (the key is never shown)."""
        return self._settings

    def _options(self) -> dict[str, Any]:
        names = (*_OPTION_NAMES, "client", "async_client")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def _catalogue(self) -> VoiceCatalogue | None:
        ready: _BaseClient | None = self.client or self.async_client
        return (ready or _BaseClient(settings=self._settings)).voice_catalogue()

    def _default_voice(self, catalogue: VoiceCatalogue | None) -> str | None:
        configured = self._settings.voice
        if configured is None:
            return catalogue.default if catalogue else None
        if catalogue is None:
            return configured
        try:
            return catalogue.resolve(configured)
        except InvalidInputError:
            return configured  # the call itself will say what is wrong with it


def _reveal(key: SecretStr | str | None) -> str | None:
    return key.get_secret_value() if isinstance(key, SecretStr) else key


# ---------------------------------------------------------------- the tools


class OctaveTTSTool(_ClientOptions, BaseTool):
    """Text-to-speech on the AIML API (``hume/octave-2`` by default) as a LangChain tool.

    Invoked with a ``ToolCall`` it returns a ``ToolMessage`` whose content is one sentence
    with the audio URL, voice and format, and whose ``artifact`` is the ``Speech`` record
    as a dict (URL, voice, format, model, characters, credits_used, request_id, ...).

    Construct it with no arguments (settings from the environment), with client settings
    (``api_key=``, ``voice=``, ``format=``, ...), or with ready clients (``client=``,
    ``async_client=``). ``ainvoke`` runs on the async client, with no thread pool.
    """

    name: str = "text_to_speech"
    description: str = TTS_DESCRIPTION
    args_schema: Annotated[ArgsSchema | None, SkipValidation()] = TextToSpeechInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    handle_tool_error: bool | str | Callable[[ToolException], ToolExceptionHandlerOutput] | None = (
        True
    )
    handle_validation_error: (
        bool | str | Callable[[ValidationError | ValidationErrorV1], str] | None
    ) = _explain_invalid_arguments

    _sync: OctaveClient | None = PrivateAttr(default=None)
    # One async client per event loop: an httpx pool cannot outlive the loop it was used on.
    _async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncOctaveClient] = PrivateAttr(
        default_factory=weakref.WeakKeyDictionary
    )
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def model_post_init(self, context: Any, /) -> None:
        """Describe this tool's real voices and defaults to the model."""
        super().model_post_init(context)
        if "args_schema" not in self.model_fields_set:
            catalogue = self._catalogue()
            self.args_schema = _input_schema(
                _voice_help(catalogue, self._default_voice(catalogue)),
                _format_help(self._settings.format or DEFAULT_FORMAT),
            )
        self.metadata = {**_TTS_HINTS, **(self.metadata or {})}

    def _run(
        self,
        text: str,
        voice: str | None = None,
        format: str | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        try:
            speech = self._sync_client().synthesize(text, voice=voice, format=format)
        except _NEEDS_A_PERSON:
            raise
        except OctaveError as exc:
            raise ToolException(f"Error: {exc}") from exc
        return _content_and_artifact(speech)

    async def _arun(
        self,
        text: str,
        voice: str | None = None,
        format: str | None = None,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        try:
            speech = await self._async_client().synthesize(text, voice=voice, format=format)
        except _NEEDS_A_PERSON:
            raise
        except OctaveError as exc:
            raise ToolException(f"Error: {exc}") from exc
        return _content_and_artifact(speech)

    def _sync_client(self) -> OctaveClient:
        if self.client is not None:
            return self.client
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


def _content_and_artifact(speech: Speech) -> tuple[str, dict[str, Any]]:
    return speech.summary(), speech.model_dump()


class OctaveVoicesTool(_ClientOptions, BaseTool):
    """The voices ``text_to_speech`` accepts and the default, as a read-only LangChain tool.

    Content is one line for the model; the artifact is ``{"model", "voices", "default"}``.
    It opens no connection and needs no key.
    """

    name: str = "list_voices"
    description: str = VOICES_DESCRIPTION
    args_schema: Annotated[ArgsSchema | None, SkipValidation()] = ListVoicesInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"

    def model_post_init(self, context: Any, /) -> None:
        """Mark the tool read-only in its metadata."""
        super().model_post_init(context)
        self.metadata = {**_VOICES_HINTS, **(self.metadata or {})}

    def _run(
        self, run_manager: CallbackManagerForToolRun | None = None
    ) -> tuple[str, dict[str, Any]]:
        return self._listing()

    async def _arun(
        self, run_manager: AsyncCallbackManagerForToolRun | None = None
    ) -> tuple[str, dict[str, Any]]:
        return self._listing()

    def _listing(self) -> tuple[str, dict[str, Any]]:
        catalogue = self._catalogue()
        default = self._default_voice(catalogue)
        model = catalogue.model if catalogue else self._settings.model
        if catalogue is None:
            content = (
                f"octave-tools has no voice list for model {model!r}: pass a voice name its "
                "provider documents, or leave voice out to let the API choose."
            )
            return content, {"model": model, "voices": [], "default": default}
        content = (
            f"Voices for {model} (default {default!r}): {', '.join(catalogue.voices)}. "
            "Pass one, spelled exactly, as `voice` to text_to_speech."
        )
        return content, {"model": model, "voices": list(catalogue.voices), "default": default}


class OctaveToolkit(_ClientOptions, BaseToolkit):
    """``text_to_speech`` and ``list_voices`` with one set of settings.

    Takes the same arguments as the tools; ``get_tools()`` returns the same two tool
    instances on every call, so their HTTP connections are reused.
    """

    _tools: list[BaseTool] = PrivateAttr(default_factory=list)

    def model_post_init(self, context: Any, /) -> None:
        """Build both tools from this toolkit's settings."""
        super().model_post_init(context)
        options = self._options()
        self._tools = [OctaveTTSTool(**options), OctaveVoicesTool(**options)]

    def get_tools(self) -> list[BaseTool]:
        """The tools, ready to pass to ``create_agent`` or ``bind_tools``."""
        return list(self._tools)
