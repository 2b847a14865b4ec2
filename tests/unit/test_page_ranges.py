"""How a large PDF is cut into page ranges, and reading one range of it."""

from __future__ import annotations

import pytest

from rag.page_ranges import plan
from rag.parsing import ParseError, parse, parse_pdf_pages, pdf_page_count
from tests.conftest import make_pdf


@pytest.mark.parametrize(
    "total,size,expected",
    [
        (23, 5, [(1, 5), (6, 10), (11, 15), (16, 20), (21, 23)]),
        (201, 200, [(1, 101), (102, 201)]),  # even halves, not 200 + 1
        (400, 200, [(1, 200), (201, 400)]),
        (7, 200, [(1, 7)]),
    ],
)
def test_plan_covers_every_page_once_in_ranges_no_longer_than_the_setting(total, size, expected):
    ranges = plan(total, size)
    assert ranges == expected
    pages = [p for first, last in ranges for p in range(first, last + 1)]
    assert pages == list(range(1, total + 1))
    assert all(last - first + 1 <= size for first, last in ranges)


def test_a_page_range_reads_as_those_pages_of_the_whole_document():
    data = make_pdf([f"Page {n} tells of the {word} by the river." for n, word in enumerate("abcdefg", start=1)])
    assert pdf_page_count(data) == 7
    whole = parse(data, "seven.pdf")
    part = parse_pdf_pages(data, 3, 5)
    assert part.pages == 7  # the whole document's count, for progress and the stored row
    assert [s.page for s in part.sections] == [3, 4, 5]
    assert part.sections == whole.sections[2:5]


def test_page_count_is_none_for_other_files_and_a_parse_error_for_a_damagedmake_pdf():
    assert pdf_page_count(b"Just a line of text.\n") is None
    with pytest.raises(ParseError, match="damaged"):
        pdf_page_count(b"%PDF-1.4 garbage")
