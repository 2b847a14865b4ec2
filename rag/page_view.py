"""The page a citation points at: a PDF page rendered by pdfium with the cited passage highlighted (its characters'
boxes from pdfium's text page), cached per page, size and passage; for other formats, the passage in its
surrounding text."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image, ImageDraw

MAX_WIDTH = 1600  # the bound on a render: width in pixels
HIGHLIGHT = (255, 214, 0, 90)
OUTLINE = (230, 160, 0, 255)


def _normalised(text: str) -> tuple[str, list[int]]:
    """Lower-cased text with each run of whitespace as one space, and each kept character's index in ``text``."""
    chars, positions, space = [], [], False
    for index, ch in enumerate(text):
        if ch.isspace() or ch in "\ufffe\u00ad\x02":
            if not space and chars:
                chars.append(" ")
                positions.append(index)
            space = True
            continue
        space = False
        chars.append(ch.lower())
        positions.append(index)
    return "".join(chars), positions


def passage_span(page_text: str, passage: str) -> tuple[int, int] | None:
    """Where ``passage`` lies in ``page_text`` (character offsets, end exclusive), tolerant of line breaks and
    hyphenation differences: its opening and its close are looked for, each shortened until found."""
    page, where = _normalised(page_text)
    wanted, _ = _normalised(passage)
    wanted = wanted.strip()
    if not page or not wanted:
        return None
    start = None
    for size in (160, 80, 40, 20):
        head = wanted[:size]
        found = page.find(head)
        if found >= 0:
            start = found
            break
    if start is None:
        return None
    end = start + min(len(wanted), 20)
    for size in (160, 80, 40, 20):
        tail = wanted[-size:]
        found = page.find(tail, start)
        if found >= 0:
            end = found + len(tail)
            break
    end = min(end, len(where))
    return where[start], where[end - 1] + 1


def render_pdf_page(data: bytes, page_number: int, *, width: int = 1000, passage: str | None = None) -> bytes:
    """PNG of page ``page_number`` (1-based) at ``width`` pixels, with ``passage`` highlighted when it is found."""
    width = max(200, min(int(width), MAX_WIDTH))
    pdf = pdfium.PdfDocument(data)
    try:
        if not 1 <= page_number <= len(pdf):
            raise ValueError(f"The document has {len(pdf)} pages; there is no page {page_number}.")
        page = pdf[page_number - 1]
        page_width, page_height = page.get_size()
        scale = width / page_width
        image = page.render(scale=scale).to_pil().convert("RGBA")
        if passage:
            textpage = page.get_textpage()
            span = passage_span(textpage.get_text_range(), passage)
            if span is not None:
                overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
                draw = ImageDraw.Draw(overlay)
                count = textpage.count_rects(span[0], span[1] - span[0])
                for i in range(count):
                    left, bottom, right, top = textpage.get_rect(i)
                    box = (left * scale, (page_height - top) * scale, right * scale, (page_height - bottom) * scale)
                    draw.rectangle(box, fill=HIGHLIGHT, outline=OUTLINE)
                image = Image.alpha_composite(image, overlay)
        out = io.BytesIO()
        image.convert("RGB").save(out, format="PNG", optimize=True)
        return out.getvalue()
    finally:
        pdf.close()


def cached_render(cache_dir: Path, key: str, render) -> bytes:
    """``render()``'s bytes, kept under ``cache_dir`` by ``key`` (a page, size and passage): later views are a
    file read."""
    name = hashlib.sha256(key.encode()).hexdigest()[:32] + ".png"
    path = cache_dir / name
    if path.exists():
        return path.read_bytes()
    data = render()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data


def surrounding(texts: list[str], index: int, around: int = 1) -> dict:
    """A passage with the text before and after it (neighbouring chunks, overlap trimmed)."""
    passage = texts[index]
    before = " ".join(texts[max(0, index - around):index])
    after = " ".join(texts[index + 1:index + 1 + around])
    return {"before": _trim_overlap(before, passage, tail=True), "passage": passage,
            "after": _trim_overlap(after, passage, tail=False)}


def _trim_overlap(other: str, passage: str, *, tail: bool) -> str:
    """Neighbouring chunks overlap the passage: drop the repeated words."""
    words, mine = other.split(), passage.split()
    for size in range(min(len(words), len(mine), 80), 4, -1):
        if tail and words[-size:] == mine[:size]:
            return " ".join(words[:-size])
        if not tail and words[:size] == mine[-size:]:
            return " ".join(words[size:])
    return re.sub(r"\s+", " ", other).strip()
