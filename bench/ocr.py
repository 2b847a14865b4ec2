"""OCR benchmark: PDF pages rendered to images (a scan without a text layer), read back by kbchat's OCR.

    .venv/bin/python bench/ocr.py [PDF_OR_FOLDER ...] [--files 5] [--dpi 150]

Default input: the demo reports (``demo/``, five NTSB reports). Each file is rendered to an image-only PDF first
(not timed), then parsed by ``rag.parsing.parse`` as an ingest worker would (pdfium finds no text, OCR reads every
page). Prints pages/s of OCR and, per file, the share of the text layer's words that OCR found (word recall
against the original PDF's pdfium text). Prints figures only; never part of the tests.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.settings import get_settings  # noqa: E402
from rag.parsing import parse  # noqa: E402
from rag.parsing.ocr import engine  # noqa: E402
from tests.scans import image_only_pdf  # noqa: E402  (the OCR tests' scans)


def words(text: str) -> Counter:
    return Counter(w.lower() for w in re.findall(r"\w+", text))


def recall(reference: str, found: str) -> float:
    ref, got = words(reference), words(found)
    total = sum(ref.values())
    return sum(min(n, got[w]) for w, n in ref.items()) / total if total else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, default=[ROOT / "demo"])
    parser.add_argument("--files", type=int, default=5, help="at most this many PDFs")
    parser.add_argument("--dpi", type=int, default=None, help="render resolution (default: KBCHAT_OCR_DPI)")
    args = parser.parse_args()
    if args.dpi:
        os.environ["KBCHAT_OCR_DPI"] = str(args.dpi)
    get_settings.cache_clear()
    files = sorted(p for path in args.paths for p in ([path] if path.is_file() else path.glob("*.pdf")))[: args.files]
    if not files:
        sys.exit("no PDF found")

    started = time.perf_counter()
    engine()
    print(f"OCR engine loaded in {time.perf_counter() - started:.2f} s; dpi {get_settings().ocr_dpi}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    pages = 0
    seconds = 0.0
    recalls = []
    for path in files:
        original = path.read_bytes()
        reference = "\n".join(s.text for s in parse(original, path.name).sections)
        scan = image_only_pdf(original, dpi=200)  # what a scanner at 200 dpi would give
        started = time.perf_counter()
        parsed = parse(scan, path.name)
        elapsed = time.perf_counter() - started
        found = "\n".join(s.text for s in parsed.sections)
        pages += parsed.pages
        seconds += elapsed
        recalls.append(recall(reference, found))
        print(f"{path.name}: {parsed.pages} pages in {elapsed:.2f} s ({parsed.pages / elapsed:.2f} pages/s), "
              f"word recall {recalls[-1]:.3f}" + (f"; notes: {' '.join(parsed.notes)}" if parsed.notes else ""))
    print(f"OCR: {pages} pages in {seconds:.1f} s = {pages / seconds:.2f} pages/s; "
          f"mean word recall against the text layer {sum(recalls) / len(recalls):.3f}")


if __name__ == "__main__":
    main()
