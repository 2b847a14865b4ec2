"""HTML: scripts and styles dropped, headings kept as Markdown headings, then read as Markdown."""

from __future__ import annotations

import re

from bs4 import BeautifulSoup

from rag.parsing.document import ParsedDocument
from rag.parsing.text import parse_text


def parse_html(html: str) -> ParsedDocument:
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "iframe", "svg", "head"]):
        if tag.name == "head":
            continue
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    if soup.head:
        soup.head.decompose()
    for heading in soup.find_all(re.compile(r"^h[1-6]$")):
        heading.replace_with(f"\n{'#' * int(heading.name[1])} {heading.get_text(' ', strip=True)}\n")
    text = soup.get_text("\n")
    text = re.sub(r"\n\s*\n+", "\n\n", text)
    parsed = parse_text(text, markdown=True)
    return ParsedDocument(kind="html", mime="text/html", sections=parsed.sections, pages=1,
                          title=title or parsed.title)
