"""Plain text and Markdown: bytes decoded (UTF-8, or the legacy code page it most likely is), Markdown split
under its headings."""

from __future__ import annotations

import re
import unicodedata

from charset_normalizer import from_bytes

from rag.parsing.document import ParsedDocument, Section

MARKDOWN_HINTS = re.compile(r"^(#{1,6}\s+\S|[-*+]\s+\S|\d+\.\s+\S|```|>\s)", re.MULTILINE)
_MARKDOWN_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def decode(data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = _decode_legacy(data)
    return text.replace("\x00", "")


# What Windows-1252 / Latin-1 text decodes to outside ASCII: Western European letters and typography.
# Icelandic ð/þ are left out: they are what Turkish ş/ğ (cp1254) become when read as cp1252.
_WESTERN = frozenset(
    "ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜÝßàáâãäåæçèéêëìíîïñòóôõöøùúûüýÿŒœŠšŽžŸ"
    "“”‘’‚„–—…•€«»°§©®™£¥¢¡¿·×÷\xa0"
)


def _decode_legacy(data: bytes) -> str:
    """Not UTF-8: charset-normalizer's guess, or Windows-1252 where that reads as Western European text and the
    guess does not read better. Alone, charset-normalizer misreads short or lightly accented French, Italian,
    Portuguese or German (café → cafﻠ, déjà → déjŕ, schön → schˆn): the most common legacy files."""
    results = from_bytes(data)
    best = results.best()
    guess = str(best) if best is not None else None
    try:
        western = data.decode("cp1252")
    except UnicodeDecodeError:
        western = None
    sample = 256 * 1024  # enough to judge by; the checks are pure Python
    if western is not None and _looks_western(western[:sample]):
        also_found = any(match.encoding in ("cp1252", "latin_1", "iso8859_15") for match in results)
        if guess is None or also_found or _oddities(guess[:sample]) > _oddities(western[:sample]):
            return western
    return guess if guess is not None else data.decode("utf-8", errors="replace")


def _looks_western(text: str) -> bool:
    """Every non-ASCII character a Western European letter or typographic mark, and accents a minority."""
    letters = [ch for ch in text if ch.isalpha()]
    accented = sum(1 for ch in letters if ord(ch) > 127)
    return all(ord(ch) < 128 or ch in _WESTERN for ch in text) and accented <= 0.4 * max(1, len(letters))


def _oddities(text: str) -> int:
    """Signs of a wrong code page inside words: a symbol between two letters (schˆn), two scripts (cafﻠ)."""
    odd = sum(
        1
        for before, ch, after in zip(text, text[1:], text[2:], strict=False)
        if ord(ch) > 127 and not ch.isalnum() and before.isalpha() and after.isalpha()
    )
    odd += sum(
        1
        for ch, after in zip(text, text[1:], strict=False)
        if ch.isalpha() and after.isalpha() and max(ord(ch), ord(after)) > 127 and _script(ch) != _script(after)
    )
    return odd


def _script(ch: str) -> str:
    return unicodedata.name(ch, "?").split()[0]  # LATIN, CYRILLIC, ARABIC, …


def parse_text(text: str, *, markdown: bool) -> ParsedDocument:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not markdown:
        return ParsedDocument(kind="text", mime="text/plain", sections=[Section(text=text, first_line=1)], pages=1)

    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    buffer: list[str] = []
    start = 1
    title = None

    def flush() -> None:
        if any(line.strip() for line in buffer):
            heading = " > ".join(name for _, name in path) or None
            sections.append(Section(text="\n".join(buffer), first_line=start, heading=heading))

    in_code = False
    for number, line in enumerate(text.split("\n"), start=1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        match = None if in_code else _MARKDOWN_HEADING.match(line)
        if match:
            flush()
            level, name = len(match.group(1)), match.group(2).strip()
            title = title or name
            path = [(lvl, n) for lvl, n in path if lvl < level] + [(level, name)]
            buffer, start = [name], number
        else:
            buffer.append(line)
    flush()
    return ParsedDocument(kind="markdown", mime="text/markdown", sections=sections, pages=1, title=title)
