"""A document's context header: what the document is, put before each chunk's text where it is embedded and
indexed, so a question that names the document ("the 2023 Q2 report of …", "protocol version 3") finds passages
whose own words never say it. The reader sees the passage alone.

The header is built from what any document carries: its title (the file's metadata, or its first heading), its
file name in words, and the first date its first pages state — preferring a date that follows "ended",
"as of", "dated" and the like, which is what tells one period's report, one protocol version, one contract
amendment from the next.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePath

# Bumped whenever what is embedded or indexed for a chunk changes (the header, the chunk window): a base built
# with an older recipe is re-indexed by the consistency check, like a base embedded with another model.
CHUNK_RECIPE = 2

_MONTHS = (
    "January|February|March|April|May|June|July|August|September|October|November|December|"
    "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
)
_DATE = re.compile(
    rf"\b(?:(?:{_MONTHS})\.?\s+\d{{1,2}},?\s+\d{{4}}"  # July 1, 2023
    rf"|\d{{1,2}}\s+(?:{_MONTHS})\.?,?\s+\d{{4}}"  # 1 July 2023
    r"|\d{4}-\d{2}-\d{2}"  # 2023-07-01
    r"|\d{1,2}/\d{1,2}/\d{4})\b",  # 07/01/2023
    re.IGNORECASE,
)
# Words after which a date says what the document covers or when it took effect.
_DATE_CUE = re.compile(r"\b(?:ended|ending|as of|dated|date[d:]?|effective|period|version|issued)\W*$", re.I)
_DATE_PAGES = 3  # only the first pages say what the document is
_TITLE_NOISE = re.compile(r"^(?:microsoft\s+\w+\s*-\s*|untitled\b|document\d*$)", re.IGNORECASE)
_MAX_TITLE = 120


def header(*, title: str | None, filename: str, first_pages: Sequence[str] = ()) -> str | None:
    """'Title · file name in words · date', parts that repeat another left out; None when nothing is known."""
    parts: list[str] = []
    for part in (clean_title(title), file_label(filename), document_date(first_pages)):
        if part and not any(_words(part) <= _words(kept) for kept in parts):
            parts.append(part)
    return " · ".join(parts) or None


def clean_title(title: str | None) -> str | None:
    """The metadata title if it names something: not an id or a number, not an editor's placeholder."""
    title = " ".join((title or "").split())
    title = _TITLE_NOISE.sub("", title).strip(" -")
    if not re.search(r"[^\W\d_]{3,}", title):  # no word of three letters: an accession number, a hash, empty
        return None
    return title[:_MAX_TITLE]


def file_label(filename: str) -> str | None:
    """The file name as words: 'ACME_2023Q2_report-final.pdf' → 'ACME 2023 Q2 report final'."""
    stem = PurePath(filename).stem
    stem = re.sub(r"[_\-.+]+", " ", stem)
    stem = re.sub(r"(?<=\d{4})(?=[^\W\d_])|(?<=[^\W\d_])(?=\d{4}\b)", " ", stem)  # a year glued to a word
    stem = " ".join(stem.split())
    return stem or None


def document_date(first_pages: Sequence[str]) -> str | None:
    """The first date the first pages give after a cue ('ended', 'as of', 'dated'…), else the first date."""
    first: str | None = None
    for page in first_pages[:_DATE_PAGES]:
        for match in _DATE.finditer(page):
            if _DATE_CUE.search(page[max(0, match.start() - 40) : match.start()]):
                return " ".join(match.group().split())
            first = first or " ".join(match.group().split())
    return first


_SMALL_WORDS = frozenset("a an and as at by for from in of on or the to with vs via per".split())
_HEADING_LINES = 8  # a page's heading is among its first lines
_RUNNING_SHARE = 0.3  # a line on this share of the pages (and on 3 at least) is a running header or footer


def page_headings(pages: Sequence[str]) -> list[str | None]:
    """The heading each page of a PDF sits under: the first heading-like lines at the top of the page (short,
    capitalised like a title, no sentence punctuation), running headers and footers left out; a page without
    one continues the heading of the page before it."""
    counts: dict[str, int] = {}
    for page in pages:
        for line in {_shape(line) for line in page.splitlines()[:_HEADING_LINES]}:
            counts[line] = counts.get(line, 0) + 1
    running = max(3, int(_RUNNING_SHARE * len(pages)) + 1)
    headings: list[str | None] = []
    current: str | None = None
    for page in pages:
        found: list[str] = []
        for line in page.splitlines()[:_HEADING_LINES]:
            line = " ".join(line.split())
            if line and counts.get(_shape(line), 0) < running and _heading_like(line):
                found.append(line)
                if len(found) == 2:
                    break
            elif found:
                break  # the heading lines stand together
        if found:
            current = " > ".join(found)
        headings.append(current)
    return headings


def _shape(line: str) -> str:
    """A line with its numbers blanked, so 'Page 3' and 'Page 4' count as one running footer."""
    return re.sub(r"\d+", "#", " ".join(line.split()).lower())


def _heading_like(line: str) -> bool:
    words = line.split()
    if not 2 <= len(words) <= 12 or len(line) > 100 or line[-1] in ".,;" or ":" in line[:-1]:
        return False  # a sentence, or a form's "Field: value" line
    if not re.search(r"[^\W\d_]{3,}", line):
        return False
    lettered = [w for w in words if re.search(r"[^\W\d_]", w) and w.lower() not in _SMALL_WORDS]
    capitalised = [w for w in lettered if w.lstrip("(“\"'")[:1].isupper()]
    return len(lettered) >= 2 and len(capitalised) >= 0.7 * len(lettered)


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))
