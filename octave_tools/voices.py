"""The voice catalogue per model, and voice / format resolution with suggestions."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal, get_args

from ._redact import shown
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
    "resolve_format",
    "resolve_voice",
]

AudioFormat = Literal["wav", "mp3"]
FORMATS: tuple[AudioFormat, ...] = get_args(AudioFormat)
DEFAULT_FORMAT: AudioFormat = "wav"
DEFAULT_MODEL = "hume/octave-2"
MAX_TEXT_CHARS = 500_000

# The provider's docs, in their order (straight apostrophe in "Children's").
VOICES: tuple[str, ...] = (
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
DEFAULT_VOICE = "Vince Douglas"


def _fold(name: str) -> str:
    # Case, spacing and curly apostrophes are the usual ways a model misspells a name.
    return " ".join(name.replace("\u2019", "'").split()).casefold()


@dataclass(frozen=True)
class VoiceCatalogue:
    """The named voices one model accepts."""

    model: str
    voices: tuple[str, ...]
    default: str
    _by_fold: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_fold", {_fold(v): v for v in self.voices})

    def resolve(self, voice: str) -> str:
        """Return the canonical spelling of ``voice`` or raise with the closest names."""
        by_fold = self._by_fold
        found = by_fold.get(_fold(voice))
        if found is not None:
            return found
        close = difflib.get_close_matches(_fold(voice), list(by_fold), n=3, cutoff=0.5)
        if close:
            hint = "Did you mean " + " or ".join(repr(by_fold[c]) for c in close) + "?"
        else:
            hint = f"Valid voices: {', '.join(self.voices)}."
        raise InvalidInputError(
            f"Unknown voice {shown(voice)} for model {shown(self.model)}. {hint} "
            "Call list_voices (or run `octave-tools voices`) for the full list.",
            field="voice",
        )


_CATALOGUES: dict[str, VoiceCatalogue] = {
    DEFAULT_MODEL: VoiceCatalogue(DEFAULT_MODEL, VOICES, DEFAULT_VOICE),
}


def catalogue_for(model: str) -> VoiceCatalogue | None:
    """The catalogue of ``model``, or None when this package does not know it."""
    return _CATALOGUES.get(model)


def register_catalogue(catalogue: VoiceCatalogue) -> None:
    """Make ``catalogue`` the one used to validate voices for its model."""
    _CATALOGUES[catalogue.model] = catalogue


def resolve_voice(voice: str | None, model: str) -> str | None:
    """Canonical voice for ``model``; the default when ``voice`` is None.

    For a model whose catalogue is unknown the voice passes through unchanged
    (None stays None, letting the API pick its default).
    """
    catalogue = catalogue_for(model)
    if voice is not None:
        if not voice.strip():
            raise InvalidInputError(
                "voice is empty. Leave it out to use the default voice, "
                "or pass one of the names from list_voices.",
                field="voice",
            )
        return catalogue.resolve(voice) if catalogue else voice
    return catalogue.default if catalogue else None


def resolve_format(fmt: str | None) -> AudioFormat:
    """Normalise ``fmt`` to one of FORMATS; None gives the default."""
    if fmt is None:
        return DEFAULT_FORMAT
    folded = fmt.strip().lower().lstrip(".")
    for known in FORMATS:
        if folded == known:
            return known
    raise InvalidInputError(
        f"Unknown format {shown(fmt)}. Use one of: {', '.join(FORMATS)}.", field="format"
    )
