"""Sections → chunks: a sentence-aware sliding window measured in the embedding model's tokens, with overlap.

Chunks never cross a page (so a citation names one page), never split a word, and understand CJK sentence ends
(。！？) without assuming whitespace. The document title and heading path travel with each chunk.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rag.parsing import Section

TokenCounter = Callable[[Sequence[str]], list[int]]

# A sentence ends at . ! ? (followed by space) or at a CJK full stop, or at a blank line.
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=\S)|(?<=[。！？])|\n\s*\n")
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
# CJK text and its punctuation (。！？，「」, full-width forms): two such characters are joined without a space.
_CJK_TEXT = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef]")
# Where a long sentence may be cut: before any Chinese or Japanese character (its punctuation stays with it),
# or before a run of other non-space characters (a Latin word inside Chinese text stays whole). Each unit
# keeps its leading space, so joining the units gives back the sentence.
_CUT_UNIT = re.compile(
    r"\s*(?:[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff][\u3000-\u303f\uff00-\uffef]*"
    r"|[^\s\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]+)"
)


@dataclass(frozen=True)
class ChunkDraft:
    ordinal: int
    text: str
    page: int | None
    locator: str | None
    heading: str | None
    token_count: int


@dataclass(frozen=True)
class _Piece:
    text: str
    tokens: int
    line: int | None


def whitespace_token_counter(texts: Sequence[str]) -> list[int]:
    """A crude counter (words, CJK characters) for tests and tools that do not load the model."""
    return [len(t.split()) + len(CJK.findall(t)) for t in texts]


def split_sections(
    sections: Sequence[Section],
    *,
    count_tokens: TokenCounter,
    max_tokens: int,
    overlap_tokens: int,
    title: str | None = None,
) -> list[ChunkDraft]:
    """Chunk every section with a sliding window; ordinals run across the whole document."""
    if overlap_tokens >= max_tokens:
        raise ValueError("chunk overlap must be smaller than the chunk size")
    drafts: list[ChunkDraft] = []
    for section in sections:
        pieces = _pieces(section, count_tokens, max_tokens)
        for window in _windows(pieces, max_tokens, overlap_tokens):
            text = _join(p.text for p in window)
            if not text.strip():
                continue
            heading = _heading_path(title, section.heading)
            drafts.append(
                ChunkDraft(
                    ordinal=len(drafts),
                    text=text,
                    page=section.page,
                    locator=_locator(section, window),
                    heading=heading,
                    token_count=sum(p.tokens for p in window),
                )
            )
    return drafts


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, whitespace-normalised inside each; CJK sentences split without spaces."""
    parts = _SENTENCE_END.split(text)
    return [" ".join(p.split()) if not CJK.search(p) else p.strip() for p in parts if p and p.strip()]


def _pieces(section: Section, count_tokens: TokenCounter, max_tokens: int) -> list[_Piece]:
    sentences: list[tuple[str, int | None]] = []
    if section.first_line is None:
        sentences = [(s, None) for s in split_sentences(section.text)]
    else:
        # Keep the line each sentence starts on, for "lines a-b" locators in files without pages.
        offset = 0
        for raw in _SENTENCE_END.split(section.text):
            if raw is None:
                continue
            position = section.text.find(raw, offset)
            offset = position + len(raw) if position >= 0 else offset
            line = section.first_line + section.text.count("\n", 0, max(position, 0))
            for sentence in split_sentences(raw):
                sentences.append((sentence, line))
    if not sentences:
        return []
    counts = count_tokens([s for s, _ in sentences])
    pieces: list[_Piece] = []
    for (sentence, line), tokens in zip(sentences, counts, strict=True):
        if tokens <= max_tokens:
            pieces.append(_Piece(sentence, tokens, line))
        else:
            pieces.extend(_split_long(sentence, line, count_tokens, max_tokens))
    return pieces


def _split_long(sentence: str, line: int | None, count_tokens: TokenCounter, max_tokens: int) -> list[_Piece]:
    """A sentence longer than a chunk: cut between words (or between CJK characters), never inside a word."""
    units = _CUT_UNIT.findall(sentence) if CJK.search(sentence) else sentence.split()
    glue = "" if CJK.search(sentence) else " "
    counts = count_tokens(units)
    pieces: list[_Piece] = []
    current: list[str] = []
    current_tokens = 0
    for unit, tokens in zip(units, counts, strict=True):
        if current and current_tokens + tokens > max_tokens:
            pieces.append(_Piece(glue.join(current).strip(), current_tokens, line))
            current, current_tokens = [], 0
        current.append(unit)
        current_tokens += tokens
    if current:
        pieces.append(_Piece(glue.join(current).strip(), current_tokens, line))
    return pieces


def _windows(pieces: list[_Piece], max_tokens: int, overlap_tokens: int) -> list[list[_Piece]]:
    windows: list[list[_Piece]] = []
    start = 0
    while start < len(pieces):
        end, tokens = start, 0
        while end < len(pieces) and (end == start or tokens + pieces[end].tokens <= max_tokens):
            tokens += pieces[end].tokens
            end += 1
        windows.append(pieces[start:end])
        if end >= len(pieces):
            break
        # Step back over whole sentences worth at most overlap_tokens, but always move forward.
        back, carried = end, 0
        while back - 1 > start and carried + pieces[back - 1].tokens <= overlap_tokens:
            back -= 1
            carried += pieces[back].tokens
        start = back
    return windows


def _heading_path(title: str | None, heading: str | None) -> str | None:
    """'Title > Section > Subsection', without repeating a title that is also the first heading."""
    if title and heading and heading.split(" > ")[0] == title:
        return heading
    return " > ".join(part for part in (title, heading) if part) or None


def _join(texts) -> str:
    out = ""
    for text in texts:
        if out and not (_CJK_TEXT.match(out[-1]) and _CJK_TEXT.match(text[:1])):
            out += " "
        out += text
    return out


def _locator(section: Section, window: list[_Piece]) -> str | None:
    if section.page is not None:
        return f"p. {section.page}"
    lines = [p.line for p in window if p.line is not None]
    if not lines:
        return None
    first, last = min(lines), max(lines)
    plural = section.unit
    singular = plural[:-1] if plural.endswith("s") else plural
    return f"{singular} {first}" if first == last else f"{plural} {first}-{last}"
