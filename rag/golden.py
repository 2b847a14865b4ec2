"""Golden-question evaluation: a user's own questions, each with the document (and optionally the page) that
answers it, asked of a knowledge base; document hit@k, page hit@k and MRR, and what was retrieved instead.

A question set is a CSV file (a header row naming ``question`` and ``document``, optionally ``page``) or a JSONL
file (one object per line with the same keys; ``page`` may be a number or a list). A page column may hold several
pages ("12; 13"). A document is named by its file name, with or without the extension, in any case. A run is
recorded like the nightly evaluation (``question_mode`` "golden", its ``seed`` a fingerprint of the question set),
so runs of one set trend together and a drop alerts like the nightly run's.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import PurePath

from db.repositories import documents as document_repo
from db.repositories import evaluations as eval_repo
from db.repositories import knowledge_bases as kb_repo
from db.repositories.chunks import Hit
from infra.database import session_scope

log = logging.getLogger(__name__)

K = 10
GOLDEN = eval_repo.GOLDEN  # the question_mode of golden runs
MAX_QUESTIONS = 5000
_PAGE_SPAN = re.compile(r"pp\. (\d+)–(\d+)")


class QuestionFileError(ValueError):
    """A question file kbchat cannot use, with a message that names the line to fix."""


@dataclass(frozen=True)
class GoldenQuestion:
    line: int
    question: str
    document: str  # as the file names it
    pages: tuple[int, ...] = ()
    document_id: int | None = None  # resolved against the base


@dataclass
class GoldenResult:
    questions: list[dict] = field(default_factory=list)
    metrics: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def read_questions(data: bytes, filename: str = "") -> list[GoldenQuestion]:
    """The questions of a CSV or JSONL file (told apart by the name, else by the first character)."""
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise QuestionFileError(f"The file is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV or JSONL.") from exc
    if not content.strip():
        raise QuestionFileError("The file is empty: give one question per line (CSV with a header row, or JSONL).")
    suffix = PurePath(filename).suffix.lower()
    is_jsonl = suffix in (".jsonl", ".json", ".ndjson") or (suffix != ".csv" and content.lstrip().startswith("{"))
    questions = _read_jsonl(content) if is_jsonl else _read_csv(content)
    if not questions:
        raise QuestionFileError("The file holds no questions.")
    if len(questions) > MAX_QUESTIONS:
        raise QuestionFileError(f"The file holds {len(questions):,} questions; at most {MAX_QUESTIONS:,} per run.")
    return questions


def _read_jsonl(content: str) -> list[GoldenQuestion]:
    questions = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QuestionFileError(f"Line {number}: not a JSON object ({exc.msg}).") from exc
        if not isinstance(row, dict):
            raise QuestionFileError(f"Line {number}: expected a JSON object with \"question\" and \"document\".")
        questions.append(_question(number, row))
    return questions


def _read_csv(content: str) -> list[GoldenQuestion]:
    reader = csv.DictReader(io.StringIO(content))
    columns = {(name or "").strip().lower() for name in reader.fieldnames or []}
    if not {"question", "document"} <= columns:
        raise QuestionFileError(
            "Line 1: the header row must name the columns question and document (page is optional); found "
            + (", ".join(sorted(c for c in columns if c)) or "none") + "."
        )
    questions = []
    for row in reader:
        number = reader.line_num
        cleaned = {(k or "").strip().lower(): v for k, v in row.items()}
        if not any((v or "").strip() for v in cleaned.values() if isinstance(v, str)):
            continue
        questions.append(_question(number, cleaned))
    return questions


def _question(number: int, row: dict) -> GoldenQuestion:
    question = " ".join(str(row.get("question") or "").split())
    document = str(row.get("document") or "").strip()
    if not question:
        raise QuestionFileError(f"Line {number}: the question is missing.")
    if not document:
        raise QuestionFileError(f"Line {number}: the document that answers the question is missing.")
    return GoldenQuestion(number, question, document, _pages(number, row.get("page", row.get("pages"))))


def _pages(number: int, value) -> tuple[int, ...]:
    if value is None or value == "":
        return ()
    items = value if isinstance(value, list) else re.split(r"[;,\s]+", str(value).strip())
    pages = []
    for item in items:
        if item == "":
            continue
        try:
            page = int(item)
        except (TypeError, ValueError):
            raise QuestionFileError(f"Line {number}: the page must be a number (or several, like 12; 13), "
                                    f"not {item!r}.") from None
        if page < 1:
            raise QuestionFileError(f"Line {number}: pages are counted from 1, not {page}.")
        pages.append(page)
    return tuple(sorted(set(pages)))


def resolve(questions: Sequence[GoldenQuestion], documents: dict[int, str]) -> list[GoldenQuestion]:
    """Each question's document id among the base's ``documents`` (id → file name), by file name, with or without
    its extension, in any case; a name that matches none (or several) is an error naming its line."""
    exact = {name: i for i, name in documents.items()}
    folded: dict[str, list[int]] = {}
    for i, name in documents.items():
        for key in {name.casefold(), PurePath(name).stem.casefold()}:
            folded.setdefault(key, []).append(i)
    resolved = []
    for q in questions:
        ids = [exact[q.document]] if q.document in exact else sorted(set(folded.get(q.document.casefold(), [])))
        if not ids:
            raise QuestionFileError(f"Line {q.line}: the knowledge base has no document called '{q.document}'. "
                                    "Name it as its file is named (the extension may be left out).")
        if len(ids) > 1:
            raise QuestionFileError(f"Line {q.line}: '{q.document}' names {len(ids)} documents; give the full file name.")
        resolved.append(GoldenQuestion(q.line, q.question, q.document, q.pages, ids[0]))
    return resolved


def fingerprint(questions: Sequence[GoldenQuestion]) -> int:
    """A stable id of a question set (its questions, documents and pages), as a positive 63-bit number."""
    digest = hashlib.sha256(
        json.dumps([[q.question, q.document, list(q.pages)] for q in questions]).encode()
    ).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def passage_pages(hit: Hit) -> set[int]:
    """The pages a retrieved passage covers (a merged passage of neighbouring chunks may span several)."""
    pages = {hit.page} if hit.page is not None else set()
    span = _PAGE_SPAN.match(hit.locator or "")
    if span:
        pages |= set(range(int(span.group(1)), int(span.group(2)) + 1))
    return pages


def score_question(q: GoldenQuestion, hits: Sequence[Hit]) -> dict:
    """Where the question's document (and page) ranks among ``hits``, and what ranked above it."""
    doc_rank = next((r for r, h in enumerate(hits, 1) if h.document_id == q.document_id), None)
    page_rank = None
    if q.pages:
        page_rank = next((r for r, h in enumerate(hits, 1)
                          if h.document_id == q.document_id and passage_pages(h) & set(q.pages)), None)
    return {
        "line": q.line, "question": q.question, "document": q.document, "document_id": q.document_id,
        "page": q.pages[0] if q.pages else None, "pages": list(q.pages), "rank": doc_rank, "page_rank": page_rank,
        "top": [{"chunk_id": h.chunk_id, "document": h.document, "page": h.page, "score": round(h.score, 4)}
                for h in hits[:3]],
    }


def not_first(details: Sequence[dict]) -> list[dict]:
    """The questions whose first passage is not from their document (or page), worst first: missed, then by rank."""
    def badness(d: dict) -> tuple:
        return (d["rank"] is not None, -(d["rank"] or 0), d.get("page_rank") is not None, -(d.get("page_rank") or 0))

    return sorted((d for d in details if d["rank"] != 1 or (d["pages"] and d["page_rank"] != 1)), key=badness)


def metrics(details: Sequence[dict]) -> dict[str, float | None]:
    """Document hit@1/5/10 and MRR over every question; page hit@1/5/10 over the questions that give a page."""
    n = len(details)
    with_pages = [d for d in details if d["pages"]]
    figures: dict[str, float | None] = {}
    for k in (1, 5, 10):
        figures[f"hit_at_{k}"] = sum(1 for d in details if d["rank"] and d["rank"] <= k) / n if n else 0.0
        figures[f"page_hit_at_{k}"] = (
            sum(1 for d in with_pages if d["page_rank"] and d["page_rank"] <= k) / len(with_pages)
            if with_pages else None
        )
    figures["mrr"] = sum(1 / d["rank"] for d in details if d["rank"]) / n if n else 0.0
    return figures


def load(kb_id: int, data: bytes, filename: str = "") -> list[GoldenQuestion]:
    """The file's questions resolved against the base's documents (QuestionFileError says what to fix)."""
    questions = read_questions(data, filename)
    with session_scope() as session:
        documents = document_repo.names(session=session, kb_id=kb_id)
    return resolve(questions, documents)


def start_run(kb_id: int, questions: Sequence[GoldenQuestion], *, trigger: str) -> int:
    """Record a golden run with its questions (so a worker can run it by id); returns the run id."""
    with session_scope() as session:
        run_id = eval_repo.start(session=session, kb_id=kb_id, trigger=trigger, seed=fingerprint(questions),
                                 sample_size=len(questions), question_mode=GOLDEN,
                                 details=[asdict(q) for q in questions])
    return run_id


def run(
    run_id: int,
    *,
    search: Callable[[int, str], list[Hit]],
    check_drop: Callable[[int, str], dict | None],
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Ask every question of a recorded golden run (``search(kb_id, question)`` gives the top hits) and record
    its figures; ``check_drop`` compares it with the previous run of the same set and alerts."""
    with session_scope() as session:
        record = eval_repo.get(session=session, run_id=run_id)
        if record is None:
            return {"run_id": run_id, "status": "missing"}
        kb_id, questions = record.kb_id, [GoldenQuestion(**q) for q in record.details or []]
        kb = kb_repo.get(session=session, kb_id=kb_id)
        kb_name = kb.name if kb else str(kb_id)
        trigger, seed = record.trigger, record.seed
    try:
        details = []
        for done, q in enumerate(questions, start=1):
            details.append(score_question(q, search(kb_id, q.question)))
            if progress:
                progress(done, len(questions))
        figures = metrics(details)
        with session_scope() as session:
            eval_repo.finish(session=session, run_id=run_id, metrics=figures, details=details, question_mode=GOLDEN)
    except Exception as exc:
        with session_scope() as session:
            eval_repo.fail(session=session, run_id=run_id, error=f"{type(exc).__name__}: {exc}")
        raise
    summary = {"run_id": run_id, "kb_id": kb_id, "kb": kb_name, "status": "succeeded", "trigger": trigger,
               "seed": seed, "questions": len(details), "question_mode": GOLDEN, **figures}
    summary["alert"] = check_drop(run_id, kb_name)
    log.info("golden evaluation of %s: document hit@5 %.2f, page hit@5 %s, MRR %.3f over %d questions", kb_name,
             figures["hit_at_5"], "—" if figures["page_hit_at_5"] is None else f"{figures['page_hit_at_5']:.2f}",
             figures["mrr"], len(details))
    return summary
