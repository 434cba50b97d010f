"""The offline local engine (placeholder until the `local` extra lands)."""

from __future__ import annotations

from ._settings import Settings
from .errors import ConfigurationError
from .models import Speech
from .voices import VoiceCatalogue


def is_available() -> bool:
    """Whether the local engine can run here."""
    return False


def catalogue() -> VoiceCatalogue:
    """The local engine's voices."""
    return VoiceCatalogue("espeak-ng", ("en-us",), "en-us")


def announce_auto_choice() -> None:
    """Say once that `auto` picked the local engine."""


def synthesize(text: str, *, voice: str | None, format: str | None, settings: Settings) -> Speech:
    raise ConfigurationError(
        "The local engine is not installed. Install it with pip install 'octave-tools[local]'."
    )


async def asynthesize(
    text: str, *, voice: str | None, format: str | None, settings: Settings
) -> Speech:
    return synthesize(text, voice=voice, format=format, settings=settings)
