"""The result of a synthesis call, the same on every face."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ClientKey",
    "DialogueLine",
    "Engine",
    "FallbackStep",
    "Speech",
    "SpeechPart",
    "UsageGroup",
    "UsageReport",
    "VoiceList",
]

Engine = Literal["aimlapi", "local"]


def _unset(value: object) -> bool:
    """Fields that only some calls have are left out of the record when unset, so a plain
    call's record (and every face's result) is what it always was."""
    return value is None


class FallbackStep(BaseModel):
    """A model that did not speak for a call, and why another one did."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    model: str = Field(description="The model that was tried or skipped.")
    reason: str = Field(description="Why it did not speak (e.g. '503 from the API').")


@dataclass(frozen=True)
class DialogueLine:
    """One line of a dialogue: who speaks it (``voice``) and the words.

    ``model`` picks another offered model for this line (default: the call's);
    ``speaker`` is a label kept in the result's parts (default: the voice).
    """

    voice: str
    text: str
    model: str | None = None
    speaker: str | None = None


class SpeechPart(BaseModel):
    """One request of a long-form or dialogue call: which text it spoke and what it cost."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    index: int = Field(description="Position of the part in the joined audio, from 0.")
    start: int = Field(
        description="Start of the part's text: a character offset into the text (for "
        "dialogue, into its line's text)."
    )
    end: int = Field(description="End of the part's text (exclusive), as ``start``.")
    characters: int = Field(description="Characters of text this part synthesised.")
    audio_url: str = Field(description="The part's own audio URL, as the provider gave it.")
    credits_used: int | float | None = Field(
        default=None, description="Credits this part cost (0 when reused, None if unknown)."
    )
    request_id: str | None = Field(default=None, description="The provider's id for the part.")
    voice: str | None = Field(default=None, description="The voice of the part.")
    cached: bool = Field(
        default=False, description="True when an earlier, paid result was reused at no charge."
    )
    speaker: str | None = Field(
        default=None, description="Dialogue only: the line's speaker (else None)."
    )
    line: int | None = Field(
        default=None, description="Dialogue only: the index of the line, from 0 (else None)."
    )


class Speech(BaseModel):
    """Where the generated audio is, and what the call was and cost."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    audio_url: str = Field(description="URL of the generated audio (https, or file:// for local).")
    format: str = Field(
        description="Audio format: wav, mp3, opus, aac, flac or pcm (what the model gave)."
    )
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
    parts: tuple[SpeechPart, ...] | None = Field(
        default=None,
        exclude_if=_unset,
        description="Long text and dialogue: the requests joined into this file, in order "
        "(None when one request did it all).",
    )
    job_id: str | None = Field(
        default=None,
        exclude_if=_unset,
        description="Long text and dialogue: the id shared by the parts' ledger rows and "
        "request ids (None for one request).",
    )
    fallback_from: tuple[FallbackStep, ...] | None = Field(
        default=None,
        exclude_if=_unset,
        description="Models tried before the one that spoke, and why each did not "
        "(None when the first choice spoke).",
    )

    def summary(self) -> str:
        """One short sentence with the URL, for an LLM or a person to read."""
        details = [f"voice {self.voice!r}" if self.voice else "default voice", self.format]
        if self.credits_used is not None:
            details.append(f"{self.credits_used:,} credits")
        if self.cached:
            details.append("from cache, no charge")
        if self.parts is not None:
            reused = sum(1 for p in self.parts if p.cached)
            joined = f"{len(self.parts)} parts joined into one file"
            details.append(joined + (f", {reused} reused at no charge" if reused else ""))
        if self.fallback_from:
            tried = "; ".join(f"{step.model}: {step.reason}" for step in self.fallback_from)
            details.append(f"fallback after {tried}")
        where = (
            "offline with the local engine (not Octave)" if self.engine == "local" else self.model
        )
        return f"Speech generated {where}: {self.audio_url} ({', '.join(details)})."


class UsageGroup(BaseModel):
    """Spend for one day, model, voice, engine, job or client key."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    key: str = Field(
        description="The day (YYYY-MM-DD, UTC), model, voice or engine; a long-form or "
        "dialogue call's job id (by job); or a client key's name (by key; operator: the "
        "server token)."
    )
    calls: int = Field(
        description="Calls recorded, cached ones included (by job: a job is one call)."
    )
    cached_calls: int = Field(description="Calls served from the cache at no charge.")
    characters: int = Field(description="Characters synthesised.")
    credits: float = Field(description="Credits counted against the budget: billed plus estimated.")
    usd: float = Field(description="USD spent, where the API reported it.")
    billed_credits: float = Field(default=0.0, description="Credits the API said it billed.")
    estimated_credits: float = Field(
        default=0.0,
        description="Credits charged at our estimate: the API did not report a believable cost.",
    )


class UsageReport(BaseModel):
    """What the ledger says was spent since a moment, grouped one way."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    since: str = Field(description="Start of the period, ISO 8601 UTC.")
    by: str = Field(description="How the groups are formed: day, model, voice, engine, job or key.")
    groups: list[UsageGroup] = Field(description="One entry per group, largest spend first.")
    total_calls: int
    total_credits: float = Field(description="Billed plus estimated credits.")
    total_usd: float
    total_billed_credits: float = 0.0
    total_estimated_credits: float = 0.0
    ledger: str = Field(description="Where the ledger is, or why it is not in use.")

    def table(self) -> str:
        """The report as a small plain-text table."""
        lines = [
            f"Usage since {self.since} by {self.by} ({self.ledger})",
            f"{self.by:<34} {'calls':>7} {'cached':>7} {'chars':>9} {'credits':>12} "
            f"{'estimated':>12} {'usd':>9}",
        ]
        for g in self.groups:
            lines.append(
                f"{g.key[:34]:<34} {g.calls:>7} {g.cached_calls:>7} {g.characters:>9} "
                f"{g.billed_credits:>12,.0f} {g.estimated_credits:>12,.0f} {g.usd:>9.4f}"
            )
        lines.append(
            f"{'total':<34} {self.total_calls:>7} {'':>7} {'':>9} "
            f"{self.total_billed_credits:>12,.0f} {self.total_estimated_credits:>12,.0f} "
            f"{self.total_usd:>9.4f}"
        )
        if self.total_estimated_credits:
            lines.append(
                "credits: billed by the API; estimated: charged at our estimate because the "
                "API reported no believable cost."
            )
        return "\n".join(lines)


class VoiceList(BaseModel):
    """The voices ``text_to_speech`` accepts under the current settings."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    model: str = Field(description="The model (or local engine) the voices belong to.")
    default: str | None = Field(
        description="The voice used when none is given (None when the model's list is unknown)."
    )
    voices: list[str] = Field(description="Every named voice, in the provider's order.")
    custom_voices: bool = Field(
        default=False, description="True when the model also takes voice ids outside the list."
    )
    custom_voice_max_chars: int | None = Field(
        default=None, description="The longest such id the model documents (None: no limit)."
    )

    def summary(self) -> str:
        """One line for a model to read, with the default marked."""
        if not self.voices:
            return (
                f"octave-tools has no voice list for model {self.model!r}: pass a voice name that "
                "model accepts, or leave voice out for its default."
            )
        names = ", ".join(f"{v} (default)" if v == self.default else v for v in self.voices)
        return f"{len(self.voices)} voices for {self.model}: {names}.{self.custom_note()}"

    def custom_note(self) -> str:
        """What else the model takes as a voice (empty for a closed list)."""
        if not self.custom_voices:
            return ""
        limit = self.custom_voice_max_chars
        return " A custom or cloned voice id also works" + (
            f" (1 to {limit} characters)." if limit else "."
        )

    def lines(self, engine: str) -> list[str]:
        """The listing for a person: a heading, then one voice a line, * on the default."""
        return [f"Voices for {self.model} (engine: {engine}); * marks the default:"] + [
            f"{'*' if name == self.default else ' '} {name}" for name in self.voices
        ]


@dataclass(frozen=True)
class ClientKey:
    """A client key's record: never the key, never its hash."""

    name: str
    key_id: str
    created: float
    expires: float | None = None
    revoked: float | None = None
    max_credits_per_day: float | None = None
    rpm: int | None = None
    models: tuple[str, ...] = ()
    last_used: float | None = None

    @property
    def prefix(self) -> str:
        """What ``keys list`` shows: enough to tell keys apart, useless to an attacker."""
        return f"otk_{self.key_id}"

    def usable(self, now: float) -> bool:
        return self.revoked is None and (self.expires is None or self.expires > now)
