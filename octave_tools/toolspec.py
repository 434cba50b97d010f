"""The tools every face offers, written once: names, words for the model, hints.

The MCP server and the LangChain tools render these specs in their own types, so an
LLM reads the same description, the same argument help and the same hints on either
face; the CLI prints the same listings. Nothing here imports langchain or mcp.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model, model_validator

from ._settings import DEFAULT_MAX_TEXT_CHARS
from .catalogue import MODELS
from .models import VoiceList
from .voices import DEFAULT_FORMAT, FORMATS, MAX_TEXT_CHARS

if TYPE_CHECKING:
    from .client import AsyncOctaveClient, OctaveClient

__all__ = [
    "ArgSpec",
    "Hints",
    "SpeechOptions",
    "ToolSet",
    "ToolSpec",
    "dialogue_lines",
    "explain_arguments",
    "instructions",
    "list_voices_spec",
    "speech_options",
    "text_to_dialogue_spec",
    "text_to_speech_spec",
    "tools_for",
    "usage_spec",
]


@dataclass(frozen=True)
class Hints:
    """MCP tool annotations: what calling the tool does to the world."""

    read_only: bool
    destructive: bool
    idempotent: bool
    open_world: bool

    def camel_case(self) -> dict[str, bool]:
        """The hints under MCP's wire names (as LangChain tool metadata carries them)."""
        return {
            "readOnlyHint": self.read_only,
            "destructiveHint": self.destructive,
            "idempotentHint": self.idempotent,
            "openWorldHint": self.open_world,
        }


@dataclass(frozen=True)
class ArgSpec:
    """One argument: its help for the model, and the values it may take.

    Only ``text`` is required; every other argument may be left out (None).
    """

    name: str
    description: str
    kind: type[str] | type[float] | type[list[Any]] = str
    required: bool = False
    choices: tuple[str, ...] = ()
    strict: bool = False
    """Only ``choices`` pass the schema (else they are published but the core checks)."""
    minimum: float | None = None
    maximum: float | None = None
    items: tuple[ArgSpec, ...] = ()
    """For ``kind=list``: the fields of each item, a closed object (at least one item)."""

    def annotation(self) -> Any:
        """The argument's type for a pydantic model; optional ones may be None.

        A closed set is published as an enum, but any string passes the schema: the core
        checks the value itself, so "MP3" still works and "ogg" gets a message naming
        the valid ones instead of a schema error.
        """
        base: Any = self.kind
        if self.kind is list:
            base = self._list_annotation()
        elif self.choices and self.strict:
            base = Literal[self.choices]
        elif self.choices:
            base = Annotated[str, WithJsonSchema({"enum": list(self.choices), "type": "string"})]
        return base if self.required else base | None

    def field(self) -> Any:
        """A pydantic Field with this argument's help, range and default."""
        return Field(
            default=... if self.required else None,
            description=self.description,
            ge=self.minimum,
            le=self.maximum,
            min_length=1 if self.kind is list else None,
        )

    def _list_annotation(self) -> Any:
        """A list of closed objects, published inline (no ``$ref``: some clients lack it)."""
        fields: dict[str, Any] = {arg.name: (arg.annotation(), arg.field()) for arg in self.items}
        item: type[BaseModel] = create_model(
            f"{_camel(self.name)}Item", __base__=_Arguments, __doc__=None, **fields
        )
        schema = item.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return Annotated[
            list[item],  # type: ignore[valid-type]
            WithJsonSchema({"type": "array", "items": schema, "minItems": 1}),
        ]


@dataclass(frozen=True)
class ToolSpec:
    """A tool as every face presents it."""

    name: str
    title: str
    description: str
    hints: Hints
    args: tuple[ArgSpec, ...] = ()

    def arg(self, name: str) -> ArgSpec:
        """The argument called ``name``."""
        for arg in self.args:
            if arg.name == name:
                return arg
        raise KeyError(name)

    def arg_names(self) -> tuple[str, ...]:
        return tuple(arg.name for arg in self.args)

    def arguments_model(self) -> type[BaseModel]:
        """The arguments as a closed pydantic model: the input schema both faces publish."""
        fields: dict[str, Any] = {arg.name: (arg.annotation(), arg.field()) for arg in self.args}
        model: type[BaseModel] = create_model(
            f"{_camel(self.name)}Arguments",
            __base__=_Arguments,
            __doc__=f"Arguments of {self.name}.",
            **fields,
        )
        return model


class _Arguments(BaseModel):
    """Closed: an argument the tool does not have is an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _blank_means_left_out(cls, data: Any) -> Any:
        # Models often send "" for an optional argument they mean to leave out.
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {
            name: None
            if name in fields
            and not fields[name].is_required()
            and isinstance(value, str)
            and not value.strip()
            else value
            for name, value in data.items()
        }


def dialogue_lines(lines: Sequence[Any]) -> list[dict[str, Any]]:
    """``text_to_dialogue``'s validated ``lines`` as the mappings the core takes (a line's
    unset ``model`` left out)."""
    plain = (line.model_dump() if isinstance(line, BaseModel) else dict(line) for line in lines)
    return [{key: value for key, value in line.items() if value is not None} for line in plain]


def explain_arguments(spec: ToolSpec, errors: Sequence[Mapping[str, Any]]) -> str:
    """What was wrong with a call's arguments, in words a model can act on (no links).

    ``errors`` are pydantic's, from validating against ``spec.arguments_model()``.
    """
    unknown = [
        str(e["loc"][0])
        for e in errors
        if e.get("type") == "extra_forbidden" and len(e["loc"]) == 1
    ]
    if unknown:
        noun = "argument" if len(unknown) == 1 else "arguments"
        names = ", ".join(repr(name) for name in unknown)
        takes = f"takes only: {', '.join(spec.arg_names())}" if spec.args else "takes no arguments"
        return f"unknown {noun} {names}; {spec.name} {takes}."
    problems = []
    for item in errors:
        where = _where(tuple(item["loc"]))
        cause = dict(item.get("ctx") or {}).get("error")
        problem = str(cause) if isinstance(cause, Exception) else str(item["msg"])
        if item.get("type") == "extra_forbidden" and item["loc"]:
            # A field inside an item (a dialogue line): name the fields an item has.
            name = str(item["loc"][0])
            fields = ", ".join(arg.name for arg in spec.arg(name).items)
            problem = f"unknown field; each {_singular(name)} takes only: {fields}"
        problems.append(f"{where}: {problem.rstrip('.')}")
    return f"invalid arguments: {'; '.join(problems)}. Correct them and call the tool again."


def _where(loc: tuple[Any, ...]) -> str:
    """A pydantic error location in words: ``("lines", 2, "voice")`` is "line 3 voice"."""
    if len(loc) >= 2 and isinstance(loc[1], int):
        head = f"{_singular(str(loc[0]))} {loc[1] + 1}"
        return " ".join((head, *(str(part) for part in loc[2:])))
    return ".".join(str(part) for part in loc) or "arguments"


def _singular(name: str) -> str:
    return name[:-1] if name.endswith("s") else name


def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))


# Speaking makes something new and may cost credits; the listings only read local state.
SPEAKS = Hints(read_only=False, destructive=False, idempotent=False, open_world=True)
READS_LOCAL_STATE = Hints(read_only=True, destructive=False, idempotent=True, open_world=False)

_TTS_DESCRIPTION = """\
Turn text into natural speech with {model} and get a link to the audio file.

Use it when the user wants to hear something: a text read aloud, a voice-over, a \
narration, a spoken message or an audio version of an answer. Pass the exact words \
to speak as text; the other arguments are optional. Long text, up to {limit:,} \
characters (a whole article or chapter), goes in one call: it is spoken in parts and \
comes back as one audio file, so never split it yourself. Returns one sentence with the \
audio URL (give it to the user unchanged) plus structured data: audio_url, voice, \
format, model, characters, credits_used, request_id, and parts for long text. Every \
call makes new audio and may spend credits in proportion to the text length, so do not \
repeat a call that succeeded. An error message says what to change (an unknown voice \
comes back with the closest names)."""

_DIALOGUE_DESCRIPTION = """\
Speak a dialogue in several voices with {model} and get a link to one audio file.

Use it for a conversation, an interview, a two-host summary or a story with characters. \
Pass the lines in the order they are spoken, each with its voice and its exact words; \
the lines together may hold up to {limit:,} characters. A short pause is put between \
lines. Returns one sentence with the audio URL (give it to the user unchanged) plus \
structured data: audio_url, format, model, characters, credits_used and parts (each \
part's speaker, voice and range). Every line's voice is checked before anything is \
spent: an error names the line and the closest voice names. Every call makes new audio \
and may spend credits, so do not repeat a call that succeeded. For one voice, use \
text_to_speech."""

_VOICES_DESCRIPTION = """\
List the voices text_to_speech accepts, with the default marked.

Use it to pick a voice that fits what the user asked for (for example "a British \
narrator") or to find the exact name of a voice. Returns the names as text plus \
structured data: model, default, voices. Makes no API call and costs nothing."""

_USAGE_DESCRIPTION = """\
Report what text-to-speech has spent: calls, cached calls, characters, credits and USD.

Use it when the user asks about cost or usage, or before a long series of calls. \
Reads the ledger (shared by every process that uses the same store); makes no API \
call and costs nothing."""


def voice_help(voices: VoiceList, *, several_models: bool = False, required: bool = False) -> str:
    """How to fill ``voice``, naming the valid values and the default (unless ``required``)."""
    default = f"the default, {voices.default}" if voices.default else "the model default"
    leave_out = "" if required else f" Leave it out for {default}."
    if not voices.voices:
        named = repr(voices.default) if voices.default else "the model default"
        help = f"A voice name that {voices.model} accepts." + (
            "" if required else f" Leave it out for {named}."
        )
    else:
        help = (
            f"Voice name, one of: {', '.join(voices.voices)}.{leave_out} "
            f"Case and spacing are forgiven.{voices.custom_note()}"
        )
    if several_models:
        help = (
            f"For {voices.model}: {help} Other models have their own voices: call list_voices "
            "with the model to see them"
            + ("." if required else "; leave voice out for the chosen model's default.")
        )
    return help


@dataclass(frozen=True)
class SpeechOptions:
    """What ``text_to_speech`` offers under one configuration: the facts its help states."""

    voices: VoiceList
    """The default model's voices."""
    formats: tuple[str, ...]
    """Formats a user may ask for (empty: the model takes no format)."""
    default_format: str | None
    text_limit: int | None
    """What one request of the default model takes (None: not documented)."""
    speed: tuple[float, float] | None = None
    """The default model's speed range, or None when it has none."""
    models: tuple[str, ...] = ()
    """The models a call may name, default first (empty: only the default)."""
    speed_models: tuple[str, ...] = ()
    """Of ``models``, those with a speed setting."""
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    """What one call takes in all (``max_text_chars``): longer text is spoken in parts."""


def _format_arg(o: SpeechOptions) -> ArgSpec | None:
    """``format``, when the model takes one (the same words on every speaking tool)."""
    if not o.formats:
        return None
    default = o.default_format or "the model default"
    extra = " Not every model gives every format; a refusal names the ones it can." * (
        len(o.models) > 1
    )
    return ArgSpec(
        "format",
        f"Audio file format: {' or '.join(o.formats)}. Leave it out for {default}.{extra}",
        choices=o.formats,
    )


def _model_arg(o: SpeechOptions, what: str) -> ArgSpec | None:
    """``model``, when several are offered."""
    if len(o.models) <= 1:
        return None
    return ArgSpec(
        "model",
        f"Which model speaks {what}: {', '.join(o.models)}. Leave it out for {o.voices.model}.",
        choices=o.models,
        strict=True,
    )


def text_to_speech_spec(options: SpeechOptions) -> ToolSpec:
    """``text_to_speech`` for a model's (or several models') voices, formats and limits."""
    o = options
    model = o.voices.model
    several = len(o.models) > 1
    text_help = f"The exact words to speak, 1 to {o.max_text_chars:,} characters."
    if o.text_limit is not None and o.text_limit < o.max_text_chars:
        whose = f"{model} takes" + " (other models have their own limits)" * several
        text_help += (
            f" Text longer than one request of {whose}, {o.text_limit:,} characters, is "
            "split where sentences end and comes back as one audio file."
        )
    args: list[ArgSpec | None] = [
        ArgSpec(
            "text",
            f"{text_help} Write numbers, abbreviations and symbols the way they should be said.",
            required=True,
        ),
        ArgSpec("voice", voice_help(o.voices, several_models=several)),
        _format_arg(o),
    ]
    if several and o.speed_models:
        args.append(
            ArgSpec(
                "speed",
                "Speaking rate as a multiple of normal (1.0). Only "
                f"{', '.join(o.speed_models)} take one, each with its own range; the others "
                "refuse it. Leave it out for normal speed.",
                kind=float,
            )
        )
    elif o.speed is not None:
        low, high = o.speed
        args.append(
            ArgSpec(
                "speed",
                f"Speaking rate as a multiple of normal (1.0), {low:g} to {high:g}. Leave it out "
                "for normal speed.",
                kind=float,
                minimum=low,
                maximum=high,
            )
        )
    args.append(_model_arg(o, "the text"))
    return ToolSpec(
        name="text_to_speech",
        title="Text to speech",
        description=_TTS_DESCRIPTION.format(
            model=model if not several else f"{model} or another of the offered models",
            limit=o.max_text_chars,
        ),
        hints=SPEAKS,
        args=tuple(arg for arg in args if arg is not None),
    )


def text_to_dialogue_spec(options: SpeechOptions) -> ToolSpec:
    """``text_to_dialogue``: lines of ``{voice, text}`` (and ``model`` when several are
    offered), spoken in order into one file."""
    o = options
    model = o.voices.model
    several = len(o.models) > 1
    line: list[ArgSpec | None] = [
        ArgSpec(
            "voice",
            voice_help(o.voices, several_models=several, required=True),
            required=True,
        ),
        ArgSpec(
            "text",
            "The exact words this voice says, at least 1 character. Write numbers, "
            "abbreviations and symbols the way they should be said.",
            required=True,
        ),
        _model_arg(o, "this line"),
    ]
    return ToolSpec(
        name="text_to_dialogue",
        title="Text to dialogue",
        description=_DIALOGUE_DESCRIPTION.format(
            model=model if not several else f"{model} or another of the offered models",
            limit=o.max_text_chars,
        ),
        hints=SPEAKS,
        args=tuple(
            arg
            for arg in (
                ArgSpec(
                    "lines",
                    "The lines in the order they are spoken, at least one; each is "
                    '{"voice": ..., "text": ...}. All texts together: at most '
                    f"{o.max_text_chars:,} characters.",
                    kind=list,
                    required=True,
                    items=tuple(arg for arg in line if arg is not None),
                ),
                _format_arg(o),
            )
            if arg is not None
        ),
    )


def list_voices_spec(models: Sequence[str] = ()) -> ToolSpec:
    """``list_voices``: no arguments, or the model when several are offered."""
    args: tuple[ArgSpec, ...] = ()
    if len(models) > 1:
        args = (
            ArgSpec(
                "model",
                f"Whose voices: {', '.join(models)}. Leave it out for {models[0]}.",
                choices=tuple(models),
                strict=True,
            ),
        )
    return ToolSpec(
        name="list_voices",
        title="List voices",
        description=_VOICES_DESCRIPTION,
        hints=READS_LOCAL_STATE,
        args=args,
    )


def usage_spec() -> ToolSpec:
    """``usage``: spend from the ledger since a moment, grouped one way."""
    return ToolSpec(
        name="usage",
        title="Usage",
        description=_USAGE_DESCRIPTION,
        hints=READS_LOCAL_STATE,
        args=(
            ArgSpec("since", "How far back: a number and a unit, e.g. 24h, 7d, 30m. Default 7d."),
            ArgSpec(
                "by",
                "How to group the figures: day, model, voice, engine, job (a long text or "
                "dialogue counted as one call, whatever its parts) or key (client key). "
                "Default day.",
                choices=("day", "model", "voice", "engine", "job", "key"),
            ),
        ),
    )


def instructions(options: SpeechOptions) -> str:
    """What a server tells the model about its tools, once per session."""
    o = options
    voices = o.voices
    default = f"the voice is {voices.default}" if voices.default else "the model picks one"
    lines = [
        f"octave-tools speaks text aloud: text_to_speech turns text into audio with "
        f"{voices.model} and returns a URL of the audio file.",
        "- Call text_to_speech with the exact words to speak. Answer the user with the URL it "
        "returns, unchanged. You cannot hear the audio, so do not describe how it sounds.",
        "- Leave voice out unless the user asks for a particular voice or style; then pick a "
        f"name from list_voices. Without one, {default}.",
    ]
    if len(o.models) > 1:
        lines.append(
            f"- model may be one of {', '.join(o.models)} (default {o.models[0]}); each has its "
            "own voices, so call list_voices with that model before naming a voice."
        )
    if o.formats:
        fmt_default = o.default_format or "the model default"
        lines.append(f"- format is {' or '.join(o.formats)} (default {fmt_default}).")
    lines += [
        f"- Long text (up to {o.max_text_chars:,} characters) goes in one call and comes back as "
        "one audio file: do not split it yourself.",
        "- For several voices (a conversation, an interview, characters), call text_to_dialogue "
        "once with every line in order, each with its voice and words.",
        "- Each call makes new audio and may cost credits: do not call it twice for the same text.",
        "- If a call fails, the message says what to change (a misspelt voice comes back with "
        "'Did you mean ...'; a missing key with how to set it).",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class ToolSet:
    """The tools one client offers, as every face shows them."""

    text_to_speech: ToolSpec
    text_to_dialogue: ToolSpec
    list_voices: ToolSpec
    usage: ToolSpec
    options: SpeechOptions
    instructions: str

    @property
    def voices(self) -> VoiceList:
        return self.options.voices


def speech_options(client: OctaveClient | AsyncOctaveClient) -> SpeechOptions:
    """What ``client`` offers under its settings and engine (no key, no I/O)."""
    settings = client.settings
    voices = client.voices()
    most = settings.max_text_chars
    if client.active_engine() == "local":
        return SpeechOptions(
            voices,
            FORMATS,
            settings.format or DEFAULT_FORMAT,
            MAX_TEXT_CHARS,
            max_text_chars=most,
        )
    spec = MODELS.get(settings.model)
    models = client.allowed_models() if settings.models else ()
    speed_models = tuple(m for m in models if (s := MODELS.get(m)) is not None and s.speed)
    if spec is None:
        return SpeechOptions(
            voices, (), settings.format, None, None, models, speed_models, max_text_chars=most
        )
    speed = (spec.speed.minimum, spec.speed.maximum) if spec.speed else None
    formats = tuple(spec.formats)
    if len(models) > 1:
        # Every format some offered model gives, the default model's first.
        more = (f for m in models if (s := MODELS.get(m)) is not None for f in s.formats)
        formats = tuple(dict.fromkeys((*formats, *more)))
    default_format = settings.format or spec.default_format
    return SpeechOptions(
        voices,
        formats,
        default_format,
        spec.text_limit,
        speed,
        models,
        speed_models,
        max_text_chars=most,
    )


def tools_for(client: OctaveClient | AsyncOctaveClient) -> ToolSet:
    """The specs for ``client``'s engine, model(s), voices and defaults (no key, no I/O)."""
    options = speech_options(client)
    return ToolSet(
        text_to_speech=text_to_speech_spec(options),
        text_to_dialogue=text_to_dialogue_spec(options),
        list_voices=list_voices_spec(options.models),
        usage=usage_spec(),
        options=options,
        instructions=instructions(options),
    )
