"""Seconds per ingest stage of one task, logged on one line: where a worker's time goes (bench/ingest.py reads it)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("rag.ingestion.timing")

STAGES = ("parse", "chunk", "embed", "store")


class StageClock:
    """Accumulates the seconds a task spends in each stage; ``report`` logs them with the task's total."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def report(self, document_id: int, pages: int | None, chunks: int, part: str = "") -> None:
        total = time.perf_counter() - self.started
        log.info(
            "ingest stages document=%s part=%s pages=%s chunks=%d total=%.3f %s", document_id, part or "-",
            pages if pages is not None else "-", chunks, total,
            " ".join(f"{name}={secs:.3f}" for name, secs in self.seconds.items()),
        )


def parse_report(line: str) -> dict[str, float] | None:
    """The figures of one ``report`` line (total and each stage's seconds, pages, chunks); None for other lines."""
    marker = "ingest stages "
    at = line.find(marker)
    if at < 0:
        return None
    out: dict[str, float] = {}
    for field in line[at + len(marker):].split():
        key, _, value = field.partition("=")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out
