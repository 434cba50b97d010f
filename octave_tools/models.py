"""The result of a synthesis call, the same on every face."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Engine", "Speech"]

Engine = Literal["aimlapi", "local"]


class Speech(BaseModel):
    """Where the generated audio is, and what the call was and cost."""

    model_config = ConfigDict(frozen=True)

    audio_url: str = Field(description="URL of the generated audio (https, or file:// for local).")
    format: str = Field(description="Audio format: wav or mp3.")
    voice: str | None = Field(description="The voice used (None when the API chose).")
    model: str = Field(description="The TTS model id.")
    characters: int = Field(description="Characters of text synthesised.")
    credits_used: int | float | None = Field(
        default=None, description="Credits the call cost (None when the API did not say)."
    )
    usd_spent: float | None = Field(default=None, description="USD the call cost, when known.")
    request_id: str | None = Field(
        default=None, description="The provider's id for the call, to match its usage log."
    )
    engine: Engine = Field(default="aimlapi", description="Which engine produced the audio.")
    cached: bool = Field(default=False, description="True when served from the local cache.")

    def summary(self) -> str:
        """One short sentence with the URL, for an LLM or a person to read."""
        details = [f"voice {self.voice!r}" if self.voice else "default voice", self.format]
        if self.credits_used is not None:
            details.append(f"{self.credits_used:,} credits")
        if self.cached:
            details.append("from cache, no charge")
        where = (
            "offline with the local engine (not Octave)" if self.engine == "local" else self.model
        )
        return f"Speech generated {where}: {self.audio_url} ({', '.join(details)})."
