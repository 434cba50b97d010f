"""Splitting long text into parts: spans cover the text, fit the limit, cut at good places."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from octave_tools._split import sentence_ends, split_text
from octave_tools.errors import InvalidInputError

# (language, joiner, sentences): the text is the sentences joined, and its sentence
# ends are exactly the ends of these sentences. Traps: abbreviations, initials,
# decimals, times, thousands, ellipses, quotes, openers, CJK without spaces.
CORPUS = [
    ("en", " ", ["Dr. Smith arrived at 10:30 a.m. on Monday.",
                 "He paid $1,000.50 for the repair, e.g. the new roof.",
                 "J. R. R. Tolkien wrote it.", "Mr. Brown, Mrs. Green etc. were there as well.",
                 "Wait... what happened next?", "Pi is about 3.14 in most schools!",
                 "\"Are you sure?\" she asked.", "The U.S. economy grew."]),
    ("en", " ", ["Prof. Adams met Sen. Lee in St. Louis.", "They left at 5 p.m. and flew home.",
                 "Is it 2.5 or 2.75?", "\"Stop!\" he shouted.", "The report (see Fig. 3) is long.",
                 "It ended in 2020.", "Nothing more…", "Then silence."]),
    ("es", " ", ["El Sr. García llegó a las 10:30.", "¿Dónde está la biblioteca?",
                 "¡Qué sorpresa tan grande!", "Compró frutas, p.ej. manzanas y peras.",
                 "La Dra. López cobra 1.500,75 euros.", "¿Vienes mañana?", "¡Claro que sí!",
                 "La Sra. Pérez vive en la Avda. Central."]),
    ("fr", " ", ["M. Dupont est arrivé à 10 h 30.", "« Vraiment ? » demanda-t-elle.",
                 "Il a payé 3,14 euros, etc. pour le pain.", "C'est fini !",
                 "Mme Durand est partie.",
                 "« C'est ça. »", "Il partit.", "Le prix est de 1 000,50 euros."]),
    ("de", " ", ["Dr. Müller kam um 10:30 Uhr.", "Er kaufte z.B. Äpfel und Birnen.",
                 "Das kostet 1.000,50 Euro.", "Wie geht es Ihnen?",
                 "Herr Prof. Schmidt lehrt hier.",
                 "Frau Dr. Weber kommt bzw. schreibt bald.", "Nr. 5 ist frei!"]),
    ("it", " ", ["Il Sig. Rossi è arrivato alle 10:30.", "Quanto costa?",
                 "Costa 3,14 euro, ecc. più le tasse.", "Il Dott. Bianchi è qui.",
                 "La Sig.ra Verdi arriva alle 9:15."]),
    ("pt", " ", ["O Sr. Silva chegou às 10:30.", "Onde fica a estação?",
                 "Ele pagou R$ 1.000,50 pelo carro.", "A Sra. Souza mora na Av. Paulista.",
                 "Sim!"]),
    ("ja", "", ["今日は晴れです。", "明日は雨が降るでしょうか？", "すごい！",
                "価格は3.14ドルです。", "田中さんは「こんにちは。」と言った。"]),
    ("zh", "", ["今天天气很好。", "你去哪里？", "太好了！", "价格是3.14元。", "他说：“我们走吧。”",
                "这是第1.5版。"]),
    ("ko", " ", ["오늘은 날씨가 좋습니다.", "어디에 가세요?", "정말 멋져요!",
                 "가격은 3.14달러입니다."]),
    ("hi", " ", ["आज मौसम अच्छा है।", "आप कहाँ जा रहे हैं?", "डॉ. शर्मा यहाँ हैं।",
                 "कीमत 2.5 रुपये है।"]),
    ("ar", " ", ["الطقس جميل اليوم.", "إلى أين أنت ذاهب؟", "السعر 3.14 دولار.", "نعم، أنا مستعد."]),
]  # fmt: skip


def _ends(joiner: str, sentences: list[str]) -> tuple[str, list[int]]:
    text = joiner.join(sentences)
    ends, pos = [], 0
    for sentence in sentences:
        pos = text.index(sentence, pos) + len(sentence)
        ends.append(pos)
    return text, ends[:-1]  # the end of the text is not a cut


@pytest.mark.parametrize(("lang", "joiner", "sentences"), CORPUS, ids=[c[0] for c in CORPUS])
def test_sentence_ends_are_right_in_every_language(
    lang: str, joiner: str, sentences: list[str]
) -> None:
    text, expected = _ends(joiner, sentences)
    assert sentence_ends(text) == expected


@pytest.mark.parametrize(("lang", "joiner", "sentences"), CORPUS, ids=[c[0] for c in CORPUS])
def test_parts_end_at_sentence_ends_when_sentences_fit(
    lang: str, joiner: str, sentences: list[str]
) -> None:
    text, ends = _ends(joiner, sentences)
    limit = max(len(s) for s in sentences) + 5
    spans = split_text(text, limit)
    assert all(end in ends for _, end in spans[:-1])
    assert _rejoin(text, spans) == text


def _rejoin(text: str, spans: list[tuple[int, int]]) -> str:
    out, pos = [], 0
    for start, end in spans:
        gap = text[pos:start]
        assert gap.strip() == ""
        out += [gap, text[start:end]]
        pos = end
    assert text[pos:].strip() == ""
    return "".join(out) + text[pos:]


def test_text_that_fits_is_one_span_stripped() -> None:
    assert split_text("  Hello there.\n", 100) == [(2, 14)]


def test_whitespace_only_text_gives_no_span() -> None:
    assert split_text(" \n\t ", 10) == []
    assert split_text("", 10) == []


def test_sentences_are_packed_greedily() -> None:
    text = "One two. Three four. Five six. Seven."
    assert [text[s:e] for s, e in split_text(text, 20)] == [
        "One two. Three four.", "Five six. Seven."]  # fmt: skip


def test_a_paragraph_break_is_preferred_when_the_part_is_at_least_half_full() -> None:
    text = "Aaaa bbbb cccc.\n\nDddd. Eeee. Ffff."
    assert [text[s:e] for s, e in split_text(text, 25)] == [
        "Aaaa bbbb cccc.", "Dddd. Eeee. Ffff."]  # fmt: skip


def test_a_short_paragraph_is_packed_with_the_next_sentences() -> None:
    text = "Title\n\nFirst sentence here. Second one here. Third."
    assert [text[s:e] for s, e in split_text(text, 45)] == [
        "Title\n\nFirst sentence here. Second one here.", "Third."]  # fmt: skip


def test_a_long_sentence_is_cut_at_a_clause_not_inside_a_number() -> None:
    text = "We sold 1,000.5 tons at 10:30, then 3.14 more; and that was all of it"
    parts = [text[s:e] for s, e in split_text(text, 32)]
    assert parts == ["We sold 1,000.5 tons at 10:30,", "then 3.14 more;", "and that was all of it"]


def test_a_clause_is_cut_at_a_space() -> None:
    text = "alpha beta gamma delta epsilon"
    assert [text[s:e] for s, e in split_text(text, 12)] == [
        "alpha beta", "gamma delta", "epsilon"]  # fmt: skip


def test_chinese_without_punctuation_is_cut_between_characters() -> None:
    text = "我们" * 10
    spans = split_text(text, 7)
    assert [e - s for s, e in spans] == [7, 7, 6]
    assert "".join(text[s:e] for s, e in spans) == text


def test_chinese_is_cut_after_full_width_commas() -> None:
    text = "今天天气很好，我们去公园散步，然后回家吃饭"
    parts = [text[s:e] for s, e in split_text(text, 15)]
    assert parts == ["今天天气很好，我们去公园散步，", "然后回家吃饭"]


def test_digit_groups_are_kept_together_when_a_word_break_exists() -> None:
    text = "costs 1 000 000 euros"
    assert [text[s:e] for s, e in split_text(text, 12)] == ["costs", "1 000 000", "euros"]


def test_a_word_over_the_limit_is_refused_naming_its_position_and_the_fix() -> None:
    text = "Short words here. " + "x" * 50 + " end."
    with pytest.raises(InvalidInputError) as info:
        split_text(text, 20)
    assert info.value.field == "text"
    assert "character 18" in str(info.value)
    assert "50 characters long" in str(info.value)
    assert "chunk_chars" in str(info.value)


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        split_text("abc", 0)


_WORDS = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Zs", "Cc", "Zl", "Zp")),
    min_size=1,
    max_size=7,  # with a mark after it, a word still fits the smallest limit
)
_SEPARATORS = st.sampled_from([" ", "  ", "\n", "\n\n", ". ", ", ", "? ", "。", "、", " — ", "\t"])


@st.composite
def _texts(draw: st.DrawFn) -> str:
    pieces = draw(st.lists(st.tuples(_WORDS, _SEPARATORS), max_size=60))
    lead = draw(st.sampled_from(["", " ", "\n "]))
    return lead + "".join(w + s for w, s in pieces)


@settings(max_examples=300, deadline=None)
@given(text=_texts(), limit=st.integers(min_value=8, max_value=80))
def test_spans_cover_the_text_fit_the_limit_and_are_never_empty(text: str, limit: int) -> None:
    spans = split_text(text, limit)
    assert _rejoin(text, spans) == text
    for start, end in spans:
        part = text[start:end]
        assert 0 < len(part) <= limit
        assert part == part.strip()
    assert spans == sorted(spans)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200), limit=st.integers(min_value=1, max_value=40))
def test_any_text_splits_or_names_a_word_over_the_limit(text: str, limit: int) -> None:
    try:
        spans = split_text(text, limit)
    except InvalidInputError as exc:
        assert exc.field == "text"
        assert "chunk_chars" in str(exc)
        return
    assert _rejoin(text, spans) == text
    assert all(0 < e - s <= limit and text[s:e] == text[s:e].strip() for s, e in spans)


def test_a_long_text_splits_fast() -> None:
    import time

    text = ("Dr. Smith paid 1,000.50 dollars, e.g. for the roof. " * 4000)[:200_000]
    started = time.perf_counter()
    spans = split_text(text, 4096)
    assert time.perf_counter() - started < 2.0
    assert len(spans) == 50  # 200,000 / 4,056 (78 sentences of 52, a space)
    assert all(text[e - 1] == "." for _, e in spans[:-1])
