"""The dialogue script of ``octave-tools say --script``: plain text in, dialogue lines out.

No I/O and no voice checks (the core checks every line's voice before it sends)::

    ---
    Host: Ava Song
    Guest: Vince Douglas
    ---
    # A line starting with # is a comment.
    Host: Welcome to the show.
    Guest: Thanks for having me. A long turn
      goes on in an indented line, or after a blank line.

- ``Speaker: words`` at the start of a line begins a line of dialogue. The speaker is
  the text before the first colon that is followed by a space or the end of the line
  (so ``10:30`` and ``https://`` are words, not speakers), at most 40 characters.
- An indented line, or any other line that is not ``Speaker: words``, continues the
  line above (joined by a space; a blank line in between keeps a paragraph break).
- The optional front matter, between two ``---`` lines at the very top, casts each
  speaker as a voice (``Speaker: voice name``). ``--cast "Host=Ava Song,Guest=Vince
  Douglas"`` does the same on the command line and wins over the front matter.
  Speakers match whatever their case.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .errors import InvalidInputError

__all__ = ["Script", "ScriptLine", "parse_cast", "parse_script"]

_FENCE = "---"
_SPEAKER_CHARS = 40
# A speaker: no leading space, no '#', a colon followed by a space or the end of the line.
_SPEAKER = re.compile(r"(?P<name>[^\s#:][^:]*?)\s*:(?:\s+(?P<words>.*)|)$")


@dataclass(frozen=True)
class ScriptLine:
    """One line of dialogue: who says it, the words, and where it starts in the file."""

    speaker: str
    text: str
    line: int


@dataclass(frozen=True)
class Script:
    """A parsed script: its lines in order and the cast its front matter gives."""

    lines: tuple[ScriptLine, ...]
    cast: Mapping[str, str] = field(default_factory=dict)
    source: str = "script"

    def speakers(self) -> list[str]:
        """Each speaker once, as first written, in order of first appearance."""
        seen: dict[str, str] = {}
        for line in self.lines:
            seen.setdefault(line.speaker.casefold(), line.speaker)
        return list(seen.values())

    def dialogue(self, cast: Mapping[str, str] | None = None) -> list[dict[str, str]]:
        """The lines as the core takes them (``voice``, ``text``, ``speaker``).

        ``cast`` (from ``--cast``) wins over the front matter. Raises InvalidInputError
        naming every speaker without a voice and how to give one.
        """
        voices = {name.casefold(): voice for name, voice in self.cast.items()}
        voices.update({name.casefold(): voice for name, voice in (cast or {}).items()})
        missing = [s for s in self.speakers() if s.casefold() not in voices]
        if missing:
            first = {line.speaker.casefold(): line.line for line in reversed(self.lines)}
            named = ", ".join(f"{s!r} (line {first[s.casefold()]})" for s in missing)
            noun = "speaker" if len(missing) == 1 else "speakers"
            example = ",".join(f"{s}=VOICE" for s in missing)
            raise InvalidInputError(
                f"{self.source}: {noun} {named} {'has' if len(missing) == 1 else 'have'} no "
                f'voice. Cast {"it" if len(missing) == 1 else "them"} with --cast "{example}" '
                f"or in front matter at the top of the file ('---', then '{missing[0]}: "
                "VOICE', then '---'); `octave-tools voices` lists the names. If such a line "
                "continues the one above, indent it.",
                field="script",
            )
        return [
            {"voice": voices[line.speaker.casefold()], "text": line.text, "speaker": line.speaker}
            for line in self.lines
        ]


def parse_cast(specs: Iterable[str], *, source: str = "--cast") -> dict[str, str]:
    """``"Host=Ava Song,Guest=Vince Douglas"`` (one or several such) as a speaker→voice map."""
    cast: dict[str, str] = {}
    for spec in specs:
        for item in spec.split(","):
            if not item.strip():
                continue
            name, sep, voice = item.partition("=")
            name, voice = name.strip(), voice.strip()
            if not sep or not name or not voice:
                raise InvalidInputError(
                    f"{source} {item.strip()!r} is not SPEAKER=VOICE; write it as "
                    '--cast "Host=Ava Song,Guest=Vince Douglas".',
                    field="cast",
                )
            cast[name] = voice
    return cast


def parse_script(text: str, *, source: str = "script") -> Script:
    """The lines and front-matter cast of ``text``; raises InvalidInputError naming the
    line (as ``source line N``) and the fix."""
    rows = text.splitlines()
    start, cast = _front_matter(rows, source)
    lines: list[ScriptLine] = []
    speaker: str | None = None
    words: list[str] = []
    begun = 0
    gap = False

    def close() -> None:
        if speaker is None:
            return
        spoken = "".join(words).strip()
        if not spoken:
            raise InvalidInputError(
                f"{source} line {begun}: {speaker} says nothing; write the words after "
                f"'{speaker}:' or remove the line.",
                field="script",
            )
        lines.append(ScriptLine(speaker, spoken, begun))

    for number, row in enumerate(rows[start:], start + 1):
        stripped = row.strip()
        if not stripped:
            gap = True
            continue
        if stripped.startswith("#"):
            continue
        found = None if row[0].isspace() else _SPEAKER.match(row.rstrip())
        if found is not None and len(found["name"]) <= _SPEAKER_CHARS:
            close()
            speaker, begun, gap = found["name"], number, False
            words = [found["words"] or ""]
            continue
        if speaker is None:
            raise InvalidInputError(
                f"{source} line {number}: words before the first speaker; begin each line "
                "of dialogue with 'Speaker: words' (e.g. 'Host: Welcome to the show.').",
                field="script",
            )
        words.append(("\n\n" if gap else " ") + stripped)
        gap = False
    close()
    if not lines:
        raise InvalidInputError(
            f"{source} has no lines to speak; write each as 'Speaker: words' "
            "(e.g. 'Host: Welcome to the show.').",
            field="script",
        )
    return Script(tuple(lines), cast, source)


def _front_matter(rows: list[str], source: str) -> tuple[int, dict[str, str]]:
    """Where the dialogue starts, and the cast between ``---`` lines at the top (if any)."""
    first = next((i for i, row in enumerate(rows) if row.strip()), None)
    if first is None or rows[first].strip() != _FENCE:
        return 0, {}
    end = next((i for i in range(first + 1, len(rows)) if rows[i].strip() == _FENCE), None)
    if end is None:
        raise InvalidInputError(
            f"{source} line {first + 1}: the front matter is never closed; end it with a line "
            "holding only '---'.",
            field="script",
        )
    cast: dict[str, str] = {}
    for i in range(first + 1, end):
        stripped = rows[i].strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, voice = stripped.partition(":")
        name, voice = name.strip(), voice.strip()
        if not sep or not name or not voice:
            raise InvalidInputError(
                f"{source} line {i + 1}: front matter casts a speaker as 'Speaker: voice' "
                f"(e.g. 'Host: Ava Song'), not {stripped!r}.",
                field="script",
            )
        if name.casefold() in (known.casefold() for known in cast):
            raise InvalidInputError(
                f"{source} line {i + 1}: {name} is cast twice in the front matter; keep one.",
                field="script",
            )
        cast[name] = voice
    return end + 1, cast
