"""Every text-to-speech model on the AIML API ``/v1/tts`` endpoint, as data.

One frozen :class:`ModelSpec` per model says where its text, voice, format and
speed go in the request body, which values it documents and its limits. The
request builder (``_protocol.prepare``) reads only these specs, so adding a model
is adding a spec here. Written by hand from the provider's OpenAPI fragments
(``octave_tools/_data/tts-models.json`` keeps the schemas, and a test checks
every spec against them); nothing here reads a file at runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["ALL_FORMATS", "MODELS", "BodyPath", "ModelSpec", "SpeedOption", "models_table"]

BodyPath = tuple[str | int, ...]
"""Where a value goes in the JSON body: keys, and list indexes for arrays."""


@dataclass(frozen=True)
class SpeedOption:
    """A model's speaking-rate field: where it goes and the range the user may ask.

    The user always speaks in multipliers (1.0 = normal). ``percent`` fields take
    an integer where 0 is normal and 100 doubles the rate (ByteDance Seed's
    ``speech_rate``: 100 = 2.0x, -50 = 0.5x), so speed ``s`` is sent as
    ``round((s - 1) * 100)``.
    """

    path: BodyPath
    minimum: float
    maximum: float
    percent: bool = False

    def to_body(self, speed: float) -> float | int:
        """The body value for ``speed`` (already range-checked)."""
        if self.percent:
            return round((speed - 1.0) * 100)
        return speed


# The text limit of a model whose docs give none (issue 22): the smallest limit these
# providers publish for their own APIs (Deepgram's text-to-speech takes 2,000 characters a
# request; ElevenLabs' lowest per-model limit is higher). Below it, no call is admitted
# and charged only to be refused upstream; above it, text is split like any long text.
UNDOCUMENTED_TEXT_LIMIT = 2_000


@dataclass(frozen=True)
class ModelSpec:
    """One model's request shape, vocabulary and limits, as its docs give them."""

    id: str
    provider: str
    text_field: str
    """``"text"``, or ``"script"`` (Microsoft VibeVoice)."""
    max_text_chars: int | None
    """The documented maximum; None where the docs give none (the API enforces one)."""
    voice_path: BodyPath
    voices: tuple[str, ...]
    """Named voices, in the docs' order (empty when the model lists none)."""
    default_voice: str | None
    """Sent when the caller names no voice; None sends no voice field."""
    voices_closed: bool = True
    """False when the model also takes ids outside ``voices`` (custom or cloned voices)."""
    custom_voice_max_chars: int | None = None
    """For an open list, the documented maximum length of such an id (None: no limit given)."""
    format_path: BodyPath | None = None
    formats: Mapping[str, str] = field(default_factory=dict)
    """User format (``wav``, ``mp3``, ``opus``, ...) to the value sent at ``format_path``."""
    default_format: str | None = None
    """User format sent when none is asked; None sends no format field."""
    native_format: str = "wav"
    """What the answer is in when no format field is sent (documented or inferred)."""
    speed: SpeedOption | None = None
    stream_false: bool = False
    """Send ``stream: false``: the schema defaults to streaming raw audio, and false asks
    for the JSON answer with a URL."""
    credits_per_char: float | None = None
    """The documented price, where the docs give one."""
    raw_audio_when_streaming: bool = False
    """The model's page shows a raw audio body when ``stream`` is true or absent."""

    def __post_init__(self) -> None:
        # A frozen spec must not share a mutable dict with whoever built it.
        object.__setattr__(self, "formats", MappingProxyType(dict(self.formats)))

    @property
    def text_limit(self) -> int:
        """The limit enforced: the documented one, else UNDOCUMENTED_TEXT_LIMIT."""
        return self.max_text_chars or UNDOCUMENTED_TEXT_LIMIT

    @property
    def produced_format(self) -> str:
        """The user format a call with no format asked gives."""
        return self.default_format or self.native_format

    def format_value(self, fmt: str) -> str:
        """The body value for user format ``fmt`` (one of ``formats``)."""
        return self.formats[fmt]

    def describe(self) -> dict[str, Any]:
        """The facts a user picks a model by, as plain JSON-ready values."""
        return {
            "id": self.id,
            "provider": self.provider,
            "voices": list(self.voices),
            "default_voice": self.default_voice,
            "custom_voices": not self.voices_closed,
            "formats": list(self.formats),
            "default_format": self.produced_format,
            "text_limit": self.text_limit,
            "text_limit_documented": self.max_text_chars is not None,
            "speed": [self.speed.minimum, self.speed.maximum] if self.speed else None,
        }

    def format_from_body(self, value: object) -> str | None:
        """The user format a body value stands for (None if not one of ours)."""
        for user, sent in self.formats.items():
            if sent == value:
                return user
        return None


# ---------------------------------------------------------------- the voice lists

_OCTAVE_VOICES = (
    "Vince Douglas",
    "Male English Actor",
    "Ava Song",
    "Campfire Narrator",
    "TikTok Fashion Influencer",
    "Colton Rivers",
    "Literature Professor",
    "Booming American Narrator",
    "Imani Carter",
    "Terrence Bentley",
    "Nature Documentary Narrator",
    "Alice Bennett",
    "Sitcom Girl",
    "Unserious Movie Trailer Narrator",
    "Articulate ASMR British Narrator",
    "Big Dicky",
    "English Children's Book Narrator",
    "Sebastian Lockwood",
    "Donovan Sinclair",
    "Booming British Narrator",
    "Relaxing ASMR Woman",
    "Lady Elizabeth",
    "Male Protagonist",
    "Tough Guy",
    "French Chef",
    "Spanish Instructor",
    "Charming Cowgirl",
)
_INWORLD_VOICES = (
    "Alex", "Ashley", "Craig", "Deborah", "Dennis", "Dominus", "Edward", "Elizabeth",
    "Hades", "Heitor", "Julia", "Mait\u00ea", "Mark", "Olivia", "Pixie", "Priya", "Ronald",
    "Sarah", "Shaun", "Theodore", "Timothy", "Wendy",
)  # fmt: skip
_OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer",
    "verse",
)  # fmt: skip
_AURA_VOICES = (
    "asteria", "hera", "luna", "stella", "athena", "zeus", "orion", "arcas", "perseus",
    "angus", "orpheus", "helios",
)  # fmt: skip
_AURA_2_VOICES = (
    "amalthea", "andromeda", "apollo", "arcas", "aries", "asteria", "athena", "atlas",
    "aurora", "callista", "cora", "cordelia", "delia", "draco", "electra", "harmonia",
    "helena", "hera", "hermes", "hyperion", "iris", "janus", "juno", "jupiter", "luna",
    "mars", "minerva", "neptune", "odysseus", "ophelia", "orion", "orpheus", "pandora",
    "phoebe", "pluto", "saturn", "selene", "thalia", "theia", "vesta", "zeus", "celeste",
    "estrella", "nestor",
)  # fmt: skip
_ELEVENLABS_VOICES = (
    "Rachel", "Drew", "Clyde", "Paul", "Aria", "Domi", "Dave", "Roger", "Fin", "Sarah",
    "Antoni", "Laura", "Thomas", "Charlie", "George", "Emily", "Elli", "Callum", "Patrick",
    "River", "Harry", "Liam", "Dorothy", "Josh", "Arnold", "Charlotte", "Alice", "Matilda",
    "James", "Joseph", "Will", "Jeremy", "Jessica", "Eric", "Michael", "Ethan", "Chris",
    "Gigi", "Freya", "Santa Claus", "Brian", "Grace", "Daniel", "Lily", "Serena", "Adam",
    "Nicole", "Bill", "Jessie", "Sam", "Glinda", "Giovanni", "Mimi",
)  # fmt: skip
_QWEN_VOICES = (
    "Cherry", "Ethan", "Nofish", "Jennifer", "Ryan", "Katerina", "Elias", "Jada", "Dylan",
    "Sunny", "Li", "Marcus", "Roy", "Peter", "Rocky", "Kiki", "Eric",
)  # fmt: skip
_MAI_VOICES = (
    "en-US-AvaNeural", "en-US-AndrewNeural", "en-US-EmmaNeural", "en-US-BrianNeural",
    "en-US-JennyNeural", "en-US-GuyNeural", "en-US-AriaNeural", "en-US-DavisNeural",
    "en-US-JaneNeural", "en-US-NancyNeural", "en-US-TonyNeural", "en-US-SaraNeural",
    "en-US-Ava:DragonHDLatestNeural", "en-US-Andrew:DragonHDLatestNeural",
    "en-US-Emma:DragonHDLatestNeural", "en-US-Brian:DragonHDLatestNeural",
    "en-GB-SoniaNeural", "en-GB-RyanNeural", "fr-FR-DeniseNeural", "de-DE-KatjaNeural",
    "es-ES-ElviraNeural",
)  # fmt: skip
_VIBEVOICE_PRESETS = (
    "Alice [EN]", "Alice [EN] (Background Music)", "Carter [EN]", "Frank [EN]", "Maya [EN]",
    "Anchen [ZH] (Background Music)", "Bowen [ZH]", "Xinran [ZH]",
)  # fmt: skip
_MINIMAX_VOICES = (
    "Wise_Woman", "Friendly_Person", "Inspirational_girl", "Deep_Voice_Man", "Calm_Woman",
    "Casual_Guy", "Lively_Girl", "Patient_Man", "Young_Knight", "Determined_Man",
    "Lovely_Girl", "Decent_Boy", "Imposing_Manner", "Elegant_Man", "Abbess", "Sweet_Girl_2",
    "Exuberant_Girl",
)  # fmt: skip


# ---------------------------------------------------------------- one builder per family


def _same(*formats: str) -> dict[str, str]:
    return {f: f for f in formats}


def _octave(model_id: str) -> ModelSpec:
    return ModelSpec(
        id=model_id,
        provider="Hume",
        text_field="text",
        max_text_chars=500_000,
        voice_path=("voice",),
        voices=_OCTAVE_VOICES,
        default_voice="Vince Douglas",
        format_path=("format",),
        formats=_same("wav", "mp3"),
        default_format="wav",
        # Documented example: 12,222 credits for 98 characters.
        credits_per_char=125.0,
    )


def _inworld(model_id: str) -> ModelSpec:
    return ModelSpec(
        id=model_id,
        provider="Inworld",
        text_field="text",
        max_text_chars=500_000,
        voice_path=("voice",),
        voices=_INWORLD_VOICES,
        default_voice="Alex",
        format_path=("format",),
        formats=_same("wav", "mp3"),
        default_format="wav",
    )


def _openai(model_id: str) -> ModelSpec:
    return ModelSpec(
        id=model_id,
        provider="OpenAI",
        text_field="text",
        max_text_chars=4096,
        voice_path=("voice",),
        voices=_OPENAI_VOICES,
        default_voice="alloy",
        format_path=("response_format",),
        formats=_same("mp3", "opus", "aac", "flac", "wav", "pcm"),
        default_format="mp3",
        native_format="mp3",
        speed=SpeedOption(("speed",), 0.25, 4.0),
    )


def _deepgram(model_id: str, voices: tuple[str, ...], default_voice: str) -> ModelSpec:
    return ModelSpec(
        id=model_id,
        provider="Deepgram",
        text_field="text",
        max_text_chars=None,
        voice_path=("voice",),
        voices=voices,
        default_voice=default_voice,
        format_path=("encoding",),
        # linear16 is 16-bit PCM, which Deepgram wraps in a WAV container by default.
        formats={"wav": "linear16", "mp3": "mp3", "opus": "opus", "flac": "flac", "aac": "aac"},
        default_format="wav",
        stream_false=True,
        raw_audio_when_streaming=True,
    )


def _elevenlabs(model_id: str) -> ModelSpec:
    return ModelSpec(
        id=model_id,
        provider="ElevenLabs",
        text_field="text",
        max_text_chars=None,
        voice_path=("voice",),
        voices=_ELEVENLABS_VOICES,
        default_voice="Rachel",
        format_path=("output_format",),
        formats={"mp3": "mp3_44100_128", "opus": "opus_48000_64", "pcm": "pcm_24000"},
        # No default documented: send none. ElevenLabs' own default is mp3_44100_128.
        default_format=None,
        native_format="mp3",
        speed=SpeedOption(("voice_settings", "speed"), 0.7, 1.2),
        stream_false=True,
        raw_audio_when_streaming=True,
    )


def _qwen(model_id: str) -> ModelSpec:
    return ModelSpec(
        id=model_id,
        provider="Alibaba",
        text_field="text",
        max_text_chars=600,
        voice_path=("voice",),
        voices=_QWEN_VOICES,
        default_voice="Cherry",
        native_format="wav",  # no format field; the documented binary answer is audio/wav
    )


def _mai(model_id: str) -> ModelSpec:
    return ModelSpec(
        id=model_id,
        provider="Microsoft",
        text_field="text",
        max_text_chars=4096,
        voice_path=("voice",),
        voices=_MAI_VOICES,
        default_voice="en-US-AvaNeural",
        format_path=("response_format",),
        formats=_same("mp3", "wav", "pcm"),
        default_format="mp3",
        native_format="mp3",
    )


def _vibevoice(model_id: str) -> ModelSpec:
    return ModelSpec(
        id=model_id,
        provider="Microsoft",
        text_field="script",
        max_text_chars=5000,
        voice_path=("speakers", 0, "preset"),
        voices=_VIBEVOICE_PRESETS,
        default_voice="Alice [EN]",
        native_format="wav",  # no format field (inferred from the audio/wav alternative)
    )


def _seed(model_id: str) -> ModelSpec:
    return ModelSpec(
        id=model_id,
        provider="ByteDance",
        text_field="text",
        max_text_chars=3000,
        # A BytePlus voice id or a cloned voice id: no list, no default, no length given.
        voice_path=("references", 0, "speaker"),
        voices=(),
        default_voice=None,
        voices_closed=False,
        format_path=("audio_config", "format"),
        formats={"wav": "wav", "mp3": "mp3", "pcm": "pcm", "opus": "ogg_opus"},
        default_format="wav",
        speed=SpeedOption(("audio_config", "speech_rate"), 0.5, 2.0, percent=True),
    )


def _minimax(model_id: str) -> ModelSpec:
    return ModelSpec(
        id=model_id,
        provider="MiniMax",
        text_field="text",
        max_text_chars=5000,
        voice_path=("voice_setting", "voice_id"),
        voices=_MINIMAX_VOICES,
        default_voice="Wise_Woman",
        voices_closed=False,
        custom_voice_max_chars=64,
        format_path=("audio_setting", "format"),
        formats=_same("mp3", "pcm", "flac"),
        default_format="mp3",
        native_format="mp3",
        speed=SpeedOption(("voice_setting", "speed"), 0.5, 2.0),
    )


_SPECS: tuple[ModelSpec, ...] = (
    _octave("hume/octave-2"),
    _inworld("inworld/tts-1"),
    _inworld("inworld/tts-1-max"),
    _inworld("inworld/tts-1-5-mini"),
    _inworld("inworld/tts-1-5-max"),
    _openai("openai/tts-1"),
    _openai("openai/tts-1-hd"),
    _openai("openai/gpt-4o-mini-tts"),
    _deepgram("deepgram/aura", _AURA_VOICES, "asteria"),
    _deepgram("deepgram/aura-2", _AURA_2_VOICES, "thalia"),
    _elevenlabs("elevenlabs/eleven_multilingual_v2"),
    _elevenlabs("elevenlabs/eleven_turbo_v2_5"),
    _elevenlabs("elevenlabs/v3_alpha"),
    _qwen("alibaba/qwen3-tts-flash"),
    _mai("microsoft/mai-voice-2"),
    _vibevoice("microsoft/vibevoice-1.5b"),
    _vibevoice("microsoft/vibevoice-7b"),
    _seed("bytedance/seed-audio-1-0"),
    _minimax("minimax/speech-2.5-turbo-preview"),
    _minimax("minimax/speech-2.5-hd-preview"),
    _minimax("minimax/speech-2.6-turbo"),
    _minimax("minimax/speech-2.6-hd"),
    _minimax("minimax/speech-2.8-turbo"),
    _minimax("minimax/speech-2.8-hd"),
)

MODELS: Mapping[str, ModelSpec] = MappingProxyType({spec.id: spec for spec in _SPECS})
"""Every model on the endpoint, by id (read-only)."""

ALL_FORMATS: tuple[str, ...] = tuple(
    dict.fromkeys(f for spec in _SPECS for f in (*spec.formats, spec.native_format))
)
"""Every user format some model can give (the ``format`` setting accepts any of them)."""


def models_table() -> str:
    """Every model as a Markdown table (the README's, checked by a test)."""
    rows = [
        "| model | provider | voices (default) | formats (default) | text limit | speed |",
        "|---|---|---|---|---|---|",
    ]
    for spec in _SPECS:
        d = spec.describe()
        count = f"{len(spec.voices)}" + (" + custom ids" if d["custom_voices"] else "")
        if not spec.voices:
            count = "any voice id"
        voices = f"{count} ({spec.default_voice})" if spec.default_voice else count
        formats = (", ".join(d["formats"]) or "none to choose") + f" ({d['default_format']})"
        limit = f"{spec.text_limit:,}" + ("" if spec.max_text_chars else " (not documented)")
        speed = f"{d['speed'][0]:g}-{d['speed'][1]:g}" if d["speed"] else "no"
        rows.append(f"| `{spec.id}` | {spec.provider} | {voices} | {formats} | {limit} | {speed} |")
    return "\n".join(rows)
