"""Sentence boundaries: our rules against segmenter packages, on tests/test_split.py's corpus.

Each text in the corpus is sentences joined (with a space, or nothing for Chinese and
Japanese) whose ends are known; a segmenter scores a miss for each end it does not
find and a false cut for each it finds that is not one. ``split_text`` has no language
argument (callers do not know the text's language), so packages that need one are
run twice: told the right language, and told "en" for every text.

    python bench/segmenters.py        # the candidates that are installed are compared

Candidates: pysbd, sentencex, blingfire (needs numpy), syntok. None is a dependency;
install them into a scratch venv to compare.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_split import CORPUS

Segmenter = Callable[[str, str], list[int]]


def _ours() -> Segmenter:
    from octave_tools._split import sentence_ends

    return lambda lang, text: sentence_ends(text)


def _pysbd() -> Segmenter:
    import pysbd

    cache: dict[str, object] = {}

    def run(lang: str, text: str) -> list[int]:
        if lang not in cache:
            try:
                cache[lang] = pysbd.Segmenter(language=lang, clean=False, char_span=True)
            except Exception:
                cache[lang] = pysbd.Segmenter(language="en", clean=False, char_span=True)
        return [span.end for span in cache[lang].segment(text)]  # type: ignore[attr-defined]

    return run


def _sentencex() -> Segmenter:
    import sentencex

    def run(lang: str, text: str) -> list[int]:
        ends, pos = [], 0
        for sentence in sentencex.segment(lang, text):
            found = text.find(sentence.strip(), pos)
            pos = found + len(sentence.strip())
            ends.append(pos)
        return ends

    return run


def _blingfire() -> Segmenter:
    import blingfire

    return lambda lang, text: [e for _, e in blingfire.text_to_sentences_and_offsets(text)[1]]


def _syntok() -> Segmenter:
    import syntok.segmenter as segmenter

    def run(lang: str, text: str) -> list[int]:
        return [s[-1].offset + len(s[-1].value) for p in segmenter.process(text) for s in p]

    return run


CANDIDATES = {"ours": (None, _ours), "pysbd": ("pysbd", _pysbd),
              "sentencex": ("sentencex", _sentencex), "blingfire": ("blingfire", _blingfire),
              "syntok": ("syntok", _syntok)}  # fmt: skip


def score(run: Segmenter, fixed_lang: str | None) -> tuple[int, int, int, float]:
    total = missed = false = 0
    chars = 0
    started = time.perf_counter()
    for lang, joiner, sentences in CORPUS:
        text = joiner.join(sentences)
        chars += len(text)
        expected, pos = set(), 0
        for sentence in sentences:
            pos = text.index(sentence, pos) + len(sentence)
            expected.add(pos)
        found = {len(text[:end].rstrip()) for end in run(fixed_lang or lang, text)}
        found = (found - {0}) | {len(text)}
        total += len(expected)
        missed += len(expected - found)
        false += len(found - expected)
    return total, missed, false, chars / (time.perf_counter() - started)


def main() -> None:
    print("| segmenter | language | import ms | ends | missed | false cuts | kchar/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (module, make) in CANDIDATES.items():
        if module and importlib.util.find_spec(module) is None:
            print(f"| {name} | not installed | | | | | |")
            continue
        started = time.perf_counter()
        run = make()
        run("en", "Warm up. Import.")
        import_ms = (time.perf_counter() - started) * 1000
        for fixed in (None, "en") if module in ("pysbd", "sentencex") else (None,):
            total, missed, false, speed = score(run, fixed)
            told = (
                "always en"
                if fixed
                else "right one"
                if module in ("pysbd", "sentencex")
                else "none"
            )
            print(f"| {name} | {told} | {import_ms:.0f} | {total} | {missed} | {false} | "
                  f"{speed / 1000:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
