"""The voice catalogue per model, and voice / format resolution with suggestions."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal, get_args

from ._redact import shown
from .catalogue import ALL_FORMATS, MODELS, ModelSpec
from .errors import InvalidInputError

__all__ = [
    "DEFAULT_FORMAT",
    "DEFAULT_MODEL",
    "DEFAULT_VOICE",
    "FORMATS",
    "MAX_TEXT_CHARS",
    "VOICES",
    "AudioFormat",
    "VoiceCatalogue",
    "catalogue_for",
    "normalise_format",
    "resolve_format",
    "resolve_model_format",
    "resolve_voice",
]

AudioFormat = Literal["wav", "mp3"]
"""The formats of the default model (hume/octave-2) and the local engine."""
DEFAULT_MODEL = "hume/octave-2"
_DEFAULT_SPEC = MODELS[DEFAULT_MODEL]
FORMATS: tuple[AudioFormat, ...] = get_args(AudioFormat)
DEFAULT_FORMAT: AudioFormat = "wav"
MAX_TEXT_CHARS: int = _DEFAULT_SPEC.max_text_chars or 500_000

# The provider's docs, in their order (straight apostrophe in "Children's").
VOICES: tuple[str, ...] = _DEFAULT_SPEC.voices
DEFAULT_VOICE: str = _DEFAULT_SPEC.default_voice or VOICES[0]


def _fold(name: str) -> str:
    # Case, spacing and curly apostrophes are the usual ways a model misspells a name.
    return " ".join(name.replace("\u2019", "'").split()).casefold()


@dataclass(frozen=True)
class VoiceCatalogue:
    """The named voices one model accepts.

    ``closed`` is False for a model that also takes ids outside the list (custom or
    cloned voices), up to ``max_custom_chars`` characters when the docs give a limit.
    """

    model: str
    voices: tuple[str, ...]
    default: str
    closed: bool = True
    max_custom_chars: int | None = None
    _by_fold: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_fold", {_fold(v): v for v in self.voices})

    def resolve(self, voice: str) -> str:
        """Return the canonical spelling of ``voice`` or raise with the closest names."""
        by_fold = self._by_fold
        found = by_fold.get(_fold(voice))
        if found is not None:
            return found
        if not self.closed:
            custom = voice.strip()
            if self.max_custom_chars is None or len(custom) <= self.max_custom_chars:
                return custom
        close = difflib.get_close_matches(_fold(voice), list(by_fold), n=3, cutoff=0.5)
        if close:
            hint = "Did you mean " + " or ".join(repr(by_fold[c]) for c in close) + "?"
        else:
            hint = f"Valid voices: {', '.join(self.voices)}."
        if not self.closed:
            hint += f" A custom voice id may also be used, 1 to {self.max_custom_chars} characters."
        raise InvalidInputError(
            f"Unknown voice {shown(voice)} for model {shown(self.model)}. {hint} "
            "Call list_voices (or run `octave-tools voices`) for the full list.",
            field="voice",
        )


def _catalogue_of(spec: ModelSpec) -> VoiceCatalogue | None:
    if not spec.voices or spec.default_voice is None:
        return None  # a free voice id (ByteDance Seed): nothing to list or match
    return VoiceCatalogue(
        spec.id, spec.voices, spec.default_voice, spec.voices_closed, spec.custom_voice_max_chars
    )


_CATALOGUES: dict[str, VoiceCatalogue] = {
    spec.id: catalogue for spec in MODELS.values() if (catalogue := _catalogue_of(spec)) is not None
}


def catalogue_for(model: str) -> VoiceCatalogue | None:
    """The catalogue of ``model``, or None when it has no voice list (or is unknown)."""
    return _CATALOGUES.get(model)


def register_catalogue(catalogue: VoiceCatalogue) -> None:
    """Make ``catalogue`` the one used to validate voices for its model."""
    _CATALOGUES[catalogue.model] = catalogue


# A voice id no list can check (ByteDance Seed, an uncatalogued model) is still bounded.
MAX_PASSTHROUGH_VOICE_CHARS = 256


def resolve_voice(voice: str | None, model: str) -> str | None:
    """Canonical voice for ``model``; the default when ``voice`` is None.

    For a model with no voice list (unknown, or an open id such as ByteDance
    Seed's) the voice passes through stripped (None stays None, letting the API
    pick its default).
    """
    catalogue = catalogue_for(model)
    if voice is not None:
        if not voice.strip():
            raise InvalidInputError(
                "voice is empty. Leave it out to use the default voice, "
                "or pass one of the names from list_voices.",
                field="voice",
            )
        if catalogue is not None:
            return catalogue.resolve(voice)
        if len(voice.strip()) > MAX_PASSTHROUGH_VOICE_CHARS:
            # Passed through unchecked, but not unbounded: it is echoed in every result.
            raise InvalidInputError(
                f"voice {shown(voice)} is {len(voice.strip()):,} characters; a voice id for "
                f"{model} is at most {MAX_PASSTHROUGH_VOICE_CHARS}.",
                field="voice",
            )
        return voice.strip()
    return catalogue.default if catalogue else None


def _fold_format(fmt: str) -> str:
    return fmt.strip().lower().lstrip(".")


def resolve_format(fmt: str | None) -> AudioFormat:
    """Normalise ``fmt`` to one of FORMATS (the default model's); None gives the default."""
    if fmt is None:
        return DEFAULT_FORMAT
    folded = _fold_format(fmt)
    for known in FORMATS:
        if folded == known:
            return known
    raise InvalidInputError(
        f"Unknown format {shown(fmt)}. Use one of: {', '.join(FORMATS)}.", field="format"
    )


def normalise_format(fmt: str) -> str | None:
    """``fmt`` as one of ALL_FORMATS (``" .MP3"`` gives ``"mp3"``), or None if no model has it."""
    folded = _fold_format(fmt)
    return folded if folded in ALL_FORMATS else None


def resolve_model_format(fmt: str | None, spec: ModelSpec) -> str | None:
    """The user format ``fmt`` as ``spec``'s model can give it; None asks for its default.

    Raises InvalidInputError naming the formats the model can give.
    """
    if fmt is None:
        return None
    folded = _fold_format(fmt)
    if folded in spec.formats:
        return folded
    if not spec.formats:
        raise InvalidInputError(
            f"Model {spec.id!r} has no format choice (it answers in "
            f"{spec.native_format}); leave format out.",
            field="format",
        )
    known = "Unknown format" if folded not in ALL_FORMATS else "Unsupported format"
    raise InvalidInputError(
        f"{known} {shown(fmt)} for model {spec.id!r}. Use one of: {', '.join(spec.formats)}.",
        field="format",
    )
