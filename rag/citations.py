"""Citation markers in generated text: [n] points at the n-th passage of the prompt; markers that point at
no passage are removed while the answer streams, and the passages actually cited become the citations."""

from __future__ import annotations

import re
from typing import Any

_MARKER = re.compile(r"\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]")
_MARKER_AND_SPACE = re.compile(r"\s?" + _MARKER.pattern)
_PARTIAL = re.compile(r"\[[\d,\s]*$")  # an opening bracket that may still become a marker
_LONGEST_MARKER = 24


def citation_label(citation: Any) -> str:
    """'file.pdf, p. 3' or 'notes.md, lines 4-9', for a citation dict or a search hit."""
    fields = citation if isinstance(citation, dict) else vars(citation)
    where = fields.get("locator") or (f"p. {fields['page']}" if fields.get("page") else None)
    return f"{fields['document']}, {where}" if where else str(fields["document"])


def strip_markers(text: str) -> str:
    """Text without [n] markers (earlier answers' markers point at passages a new prompt does not have)."""
    return _MARKER_AND_SPACE.sub("", text)


def clean_markers(text: str, valid: set[int]) -> str:
    """``text`` with each marker reduced to its valid numbers; a marker with none is removed."""

    def replace(match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.findall(r"\d+", match.group(1))]
        kept = [n for n in dict.fromkeys(numbers) if n in valid]
        return "".join(f"[{n}]" for n in kept)

    return _MARKER.sub(replace, text)


def cited_numbers(text: str) -> list[int]:
    """The passage numbers ``text`` cites, in order of first mention."""
    numbers = [int(n) for group in _MARKER.findall(text) for n in re.findall(r"\d+", group)]
    return list(dict.fromkeys(numbers))


class MarkerFilter:
    """Cleans markers in a stream of text pieces: text after a ``[`` is held back until it is clearly a
    marker (then cleaned) or clearly not (then released unchanged)."""

    def __init__(self, valid: set[int]) -> None:
        self.valid = valid
        self._held = ""

    def feed(self, piece: str) -> str:
        text = self._held + piece
        match = _PARTIAL.search(text)
        if match and len(text) - match.start() <= _LONGEST_MARKER:
            self._held = text[match.start() :]
            text = text[: match.start()]
        else:
            self._held = ""
        return clean_markers(text, self.valid)

    def flush(self) -> str:
        text, self._held = self._held, ""
        return clean_markers(text, self.valid)


def citation_json(citation: dict) -> dict:
    """The citation fields the CLI and the API promise (README: ``kbchat ask --json``)."""
    keys = ("n", "document", "document_id", "page", "locator", "chunk_id", "score", "text")
    # cited: False when the answer cites no passage and these are the passages the model was given.
    return {**{key: citation.get(key) for key in keys}, "cited": citation.get("cited", True)}
