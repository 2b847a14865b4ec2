"""How long a cited PDF page takes to appear: rendered by pdfium with the passage highlighted (first view), and
from the page cache (every later view). Target: ≤ 1 s p95 after the first render. Prints p50/p95 per case.

    .venv/bin/python bench/page_view.py [--width 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pypdfium2 as pdfium  # noqa: E402

from rag.page_view import cached_render, render_pdf_page  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1000)
    args = parser.parse_args()
    files = sorted((ROOT / "demo").glob("*.pdf"))
    cache = Path(tempfile.mkdtemp(prefix="kbchat-page-cache-"))
    first, cached = [], []
    for path in files:
        data = path.read_bytes()
        pdf = pdfium.PdfDocument(data)
        pages = [(n + 1, " ".join(pdf[n].get_textpage().get_text_range().split())[200:700]) for n in range(len(pdf))]
        pdf.close()
        for number, passage in pages:
            key = f"{path.name}|{number}|{args.width}|{passage}"
            for bucket in (first, cached, cached, cached):
                started = time.perf_counter()
                cached_render(cache, key, lambda d=data, n=number, p=passage: render_pdf_page(d, n, width=args.width,
                                                                                              passage=p))
                bucket.append((time.perf_counter() - started) * 1000)
    print(f"{len(first)} pages of {len(files)} demo PDFs at {args.width} px, the passage highlighted")
    for name, values in (("first view (pdfium render + highlight + PNG)", first), ("later views (cache)", cached)):
        print(f"  {name:<46} p50 {statistics.median(values):7.1f} ms   p95 {percentile(values, 95):7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
