"""OCR for PDF pages without a text layer (scans): each page rendered by pdfium, read by RapidOCR on onnxruntime.

RapidOCR's wheel ships its ONNX models (PP-OCRv6 detection and recognition, the PP-OCRv4 orientation classifier);
they are passed to it by path, so a missing file is an error here and nothing is ever downloaded at run time.
One engine per process, loaded on the first scanned page; one page at a time, on the same CPU threads per task
as the embedder (``KBCHAT_EMBEDDING_THREADS``, which an ingest worker sets from its concurrency).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from infra.settings import get_settings

log = logging.getLogger(__name__)

MIN_TEXT_CHARS = 8  # a page whose text layer holds fewer non-space characters (a stray page number) is a scan
MAX_SIDE_PX = 3000  # the rendered page's longest side at most, whatever its size in inches
# Of the ingest task's time limit, what OCR may use: the rest is for chunking, embedding and storing.
TIME_LIMIT_SHARE = 0.6

_lock = threading.Lock()


class OcrUnavailable(RuntimeError):
    """The OCR engine cannot be loaded (its package or a model file is missing)."""


def needs_ocr(text: str) -> bool:
    """Whether a page's text layer is too thin to be its text."""
    return len("".join(text.split())) < MIN_TEXT_CHARS


def _model_files() -> dict[str, Path]:
    import rapidocr

    models = Path(rapidocr.__file__).resolve().parent / "models"
    files = {
        "Det.model_path": models / "PP-OCRv6_det_small.onnx",
        "Rec.model_path": models / "PP-OCRv6_rec_small.onnx",
        "Cls.model_path": models / "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
    }
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise OcrUnavailable(f"OCR model files missing from the rapidocr package: {', '.join(missing)}")
    return files


@lru_cache(maxsize=1)
def engine():
    """The process's RapidOCR engine, on the models its package installed."""
    try:
        from rapidocr import RapidOCR
    except ImportError as exc:
        raise OcrUnavailable(f"the rapidocr package is not installed ({exc})") from exc
    params = {key: str(path) for key, path in _model_files().items()}
    threads = get_settings().embedding_threads
    return RapidOCR(
        params={
            **params,
            "Global.log_level": "warning",
            **({"EngineConfig.onnxruntime.intra_op_num_threads": threads} if threads else {}),
        }
    )


def recognise(image: np.ndarray) -> str:
    """The text of one page image (height × width × 3, BGR), line by line in reading order."""
    with _lock:
        result = engine()(image)
    return "\n".join(line for line in (result.txts or ()) if line.strip())


def render_scale(width_pt: float, height_pt: float, dpi: int) -> float:
    """pdfium's render scale for ``dpi``, lowered so the longest side stays within ``MAX_SIDE_PX``."""
    scale = dpi / 72
    longest = max(width_pt, height_pt, 1.0) * scale
    return scale if longest <= MAX_SIDE_PX else MAX_SIDE_PX / max(width_pt, height_pt)


@dataclass
class OcrReport:
    """What OCR did to a document: pages read, and what a person should know (pages it could not read)."""

    pages: dict[int, str] = field(default_factory=dict)  # page index (0-based) → recognised text
    notes: list[str] = field(default_factory=list)


def ocr_pages(
    indexes: list[int],
    render: Callable[[int, float], np.ndarray],
    page_size: Callable[[int], tuple[float, float]],
    progress: Callable[[int, int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> OcrReport:
    """Recognise the pages ``indexes`` (0-based) one by one; ``render(index, scale)`` gives a page's image and
    ``page_size(index)`` its size in points. Stops when its share of the ingest time limit is spent; a page that
    cannot be read is named in the report's notes and skipped."""
    report = OcrReport()
    if not indexes:
        return report
    settings = get_settings()
    deadline = clock() + settings.ingest_time_limit_seconds * TIME_LIMIT_SHARE
    unreadable: list[int] = []
    if progress:
        progress(0, len(indexes))
    for done, index in enumerate(indexes):
        if clock() > deadline:
            left = [i + 1 for i in indexes[done:]]
            report.notes.append(
                f"OCR stopped after {done} of {len(indexes)} scanned pages: the ingest time limit "
                f"({settings.ingest_time_limit_seconds} s) was near; pages {_ranges(left)} are not searchable."
            )
            break
        try:
            width, height = page_size(index)
            text = recognise(render(index, render_scale(width, height, settings.ocr_dpi)))
        except OcrUnavailable:
            raise
        except Exception as exc:  # one unreadable page must not cost the others
            if "TimeLimit" in type(exc).__name__:  # the task's own time limit, not the page
                raise
            log.warning("OCR cannot read page %d (%s: %s)", index + 1, type(exc).__name__, exc)
            unreadable.append(index + 1)
            text = ""
        else:
            if not text.strip():
                unreadable.append(index + 1)
        report.pages[index] = text
        if progress:
            progress(done + 1, len(indexes))
    if unreadable:
        report.notes.insert(
            0,
            f"OCR found no readable text on page{'s' if len(unreadable) > 1 else ''} {_ranges(unreadable)} "
            "(blank, a picture, or too faint): "
            + ("they are" if len(unreadable) > 1 else "it is")
            + " not searchable.",
        )
    return report


def _ranges(pages: list[int]) -> str:
    """[1, 2, 3, 7] → '1–3, 7'."""
    out: list[str] = []
    start = prev = pages[0]
    for page in pages[1:] + [None]:  # type: ignore[list-item]
        if page is not None and page == prev + 1:
            prev = page
            continue
        out.append(f"{start}–{prev}" if prev > start else str(start))
        if page is not None:
            start = prev = page
    return ", ".join(out)
