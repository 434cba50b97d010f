"""Splitting long text into parts one request takes: pure, no I/O.

``split_text`` returns character spans into the text, never rewritten copies, so the
parts joined with the whitespace between them give back the text exactly. It cuts at
the coarsest boundary that leaves a part as large as fits: a paragraph (if that keeps
the part at least half full), else a sentence, a clause, a space, and, for Chinese and
Japanese written without spaces, between two ideographs or kana. Never inside a word or
a number ("1,000.5", "3.14", "10:30" have no space after their punctuation).

Sentence ends are found by a small, language-agnostic rule set (see docs/longform.md
for why not a segmenter package): ``.!?…`` followed by a space and not by a lowercase
letter, unless the word before a single dot is an abbreviation, an initial or dotted
("Dr.", "J.", "e.g.", "z.B."); ``。！？`` with or without a space; ``؟``, ``।``;
closing quotes and brackets stay with their sentence, French ``»`` after a space too.
"""

from __future__ import annotations

import re
from bisect import bisect_right

from .errors import InvalidInputError

__all__ = ["sentence_ends", "split_text"]

# Words that end in a dot without ending the sentence, lowercase and without the dot,
# for the languages the models speak. Dotted forms ("e.g.", "z.B.", "p.ej.", "a.m.")
# and single letters (initials, "M.") are caught by rule, not listed. Words that as
# often end a sentence ("etc.", "usw.", "Inc.") are left out: before a lowercase word
# the sentence goes on anyway.
_ABBREVIATION_WORDS = (
    # English
    "mr mrs ms mx dr prof sr jr st mt vs approx dept fig figs gen gov sen rep capt col lt "
    "sgt rev hon messrs jan feb mar apr jun jul aug sep sept oct nov dec "
    # Spanish, Portuguese
    "sra srta dra lic ing dña av avda pág núm tel exmo exma profa eng "
    # French
    "mme mlle mm pr ste bd "
    # German
    "hr hrn fr bzw ca nr str vgl evtl ggf sog inkl zzgl bspw "
    # Italian
    "sig sigg dott dottssa avv geom arch pag "
    # Hindi (Dr.)
    "डॉ"
)
_ABBREVIATIONS = frozenset(_ABBREVIATION_WORDS.split())

_CLOSERS = "\"'”’»›)]}」』）】〉》"
_OPENERS = "\"'“‘„«‹¿¡([{—–-「『（【〈《"
# A sentence terminator run, then any closers. "।" and "॥" are Devanagari, "؟" Arabic.
_TERMINATOR = re.compile(rf"[.!?…‼⁇؟।॥۔]+[{re.escape(_CLOSERS)}]*")
# Full-width terminators end a sentence whether or not a space follows.
_CJK_TERMINATOR = re.compile(rf"[。！？｡]+[{re.escape(_CLOSERS)}]*")
# A clause mark followed by a space; full-width ones and a dash between words need none.
_CLAUSE = re.compile(r"[,;:،؛—–](?=\s)|(?<=[^\s\d])—(?=[^\s\d])|[、，；：]")
_SPACE_RUN = re.compile(r"\s+")
_FRENCH_CLOSE = re.compile(r"[ \u00a0\u202f]+[»›](?=\s|$)")
_CJK_RANGES = (
    (0x3000, 0x303F),  # CJK punctuation
    (0x3040, 0x30FF),  # hiragana, katakana
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0xFF00, 0xFFEF),  # full-width forms
)

# Levels of a cut, coarsest first.
_PARAGRAPH, _SENTENCE, _CLAUSE_LEVEL, _WORD, _LAST_RESORT = range(5)


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def _next_visible(text: str, pos: int) -> str:
    """The first letter or digit from ``pos`` on, skipping spaces and opening marks."""
    n = len(text)
    while pos < n and (text[pos].isspace() or text[pos] in _OPENERS):
        pos += 1
    return text[pos] if pos < n else ""


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the single dot at ``dot`` closes an abbreviation, initial or dotted word."""
    start = dot
    while start > 0 and not text[start - 1].isspace() and text[start - 1] not in _OPENERS:
        start -= 1
    word = text[start:dot]
    if not word:
        return False
    if len(word) == 1 and word.isalpha():
        return True  # an initial: "J. R. R. Tolkien", "M. Dupont"
    if "." in word and any(c.isalpha() for c in word):
        return True  # dotted: "e.g", "z.B", "p.ej", "U.S", "a.m"
    return word.lower().replace(".", "") in _ABBREVIATIONS


def sentence_ends(text: str) -> list[int]:
    """Positions just after each sentence end in ``text`` (before any following space)."""
    ends: set[int] = set()
    for match in _TERMINATOR.finditer(text):
        end = match.end()
        french = _FRENCH_CLOSE.match(text, end)
        if french:
            end = french.end()
        if end < len(text) and not text[end].isspace():
            if text[match.start()] in "।॥":
                ends.add(end)  # Devanagari danda: a sentence end with or without a space
            continue  # "3.14", "e.g.the", "Hi!x": not a boundary
        following = _next_visible(text, end)
        if following.islower():
            continue  # "etc. and", "Wait... what", "\"Sure?\" she asked"
        run = match.group().rstrip(_CLOSERS)
        if run == "." and _is_abbreviation(text, match.start()):
            continue
        ends.add(end)
    for match in _CJK_TERMINATOR.finditer(text):
        end = match.end()
        if end < len(text) and match.group()[-1] in _CLOSERS and "\u3040" <= text[end] <= "\u309f":
            continue  # 「こんにちは。」と言った: a particle after the quote goes on
        ends.add(end)
    return sorted(e for e in ends if 0 < e < len(text.rstrip()))


def _cuts(text: str) -> list[list[int]]:
    """Cut positions (the end of the part before the cut) per level, sorted."""
    paragraphs: list[int] = []
    lines: list[int] = []
    words: list[int] = []
    between_digits: list[int] = []
    for match in _SPACE_RUN.finditer(text):
        start = match.start()
        if start == 0 or match.end() == len(text):
            continue
        newlines = match.group().count("\n")
        if newlines >= 2:
            paragraphs.append(start)
        elif newlines == 1:
            lines.append(start)  # a line break (a heading, a list item) ends a sentence
        elif text[start - 1].isdigit() and text[match.end()].isdigit():
            between_digits.append(start)  # "1 000 000": a number, cut only as a last resort
        else:
            words.append(start)
    sentences = sorted(set(lines).union(sentence_ends(text)))
    clauses = [m.end() for m in _CLAUSE.finditer(text) if m.end() < len(text)]
    return [paragraphs, sentences, clauses, words, between_digits]


def _latest(cuts: list[int], start: int, end: int) -> int | None:
    """The latest cut in ``(start, end]``, or None."""
    i = bisect_right(cuts, end)
    if i and cuts[i - 1] > start:
        return cuts[i - 1]
    return None


def _cjk_cut(text: str, start: int, end: int) -> int | None:
    """The latest position in ``(start, end]`` between two CJK characters."""
    for pos in range(end, start, -1):
        if pos < len(text) and _is_cjk(text[pos - 1]) and _is_cjk(text[pos]):
            return pos
    return None


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def split_text(text: str, limit: int) -> list[tuple[int, int]]:
    """Spans ``[start, end)`` of ``text``, each stripped, non-empty and at most ``limit`` long.

    In order; what lies between two spans is whitespace only. Whitespace-only text
    gives no span. Raises InvalidInputError (field "text") naming the position when a
    word alone is longer than ``limit``.
    """
    if limit < 1:
        raise InvalidInputError(
            f"The part size must be at least 1 character, not {limit}.", field="chunk_chars"
        )
    stop = len(text.rstrip())
    start = _skip_space(text, 0)
    if start >= stop:
        return []
    if stop - start <= limit:
        return [(start, stop)]
    levels = _cuts(text)
    spans: list[tuple[int, int]] = []
    while stop - start > limit:
        window = start + limit
        cut = _latest(levels[_PARAGRAPH], start, window)
        if cut is None or cut - start < limit // 2:
            cut = None
            for level in (_SENTENCE, _CLAUSE_LEVEL, _WORD, _LAST_RESORT):
                candidates = [_latest(levels[lv], start, window) for lv in range(level + 1)]
                if level == _LAST_RESORT:
                    candidates.append(_cjk_cut(text, start, window))
                found = [c for c in candidates if c is not None]
                if found:
                    cut = max(found)
                    break
        if cut is None:
            raise _word_too_long(text, start, limit)
        spans.append((start, cut))
        start = _skip_space(text, cut)
    spans.append((start, stop))
    return spans


def _word_too_long(text: str, start: int, limit: int) -> InvalidInputError:
    end = start
    while end < len(text) and not text[end].isspace():
        end += 1
    excerpt = text[start : min(end, start + 20)] + ("…" if end - start > 20 else "")
    return InvalidInputError(
        f"The text cannot be split into parts of at most {limit:,} characters: the word at "
        f"character {start:,} ({excerpt!r}) is {end - start:,} characters long with no "
        f"space, sentence or clause break inside. Use shorter words (add spaces) or a "
        f"larger chunk_chars.",
        field="text",
    )
