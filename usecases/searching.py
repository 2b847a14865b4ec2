"""Searching a base: the passages closest to a question, for someone who may read it (``viewer``).

Apart from ``usecases.asking`` so that ``kbchat search`` loads only retrieval, access and audit: asking pulls in the
generation client, the answer cache and the task telemetry, a fifth of a second of imports a search never uses.
"""

from __future__ import annotations

from infra.database import relaxed_commit, session_scope
from rag.access import Actor
from rag.retrieval import hit_to_dict, search
from usecases.access import require_kb
from usecases.audit import record


def search_passages(actor: Actor, *, kb_id: int, question: str, k: int = 10, mode: str | None = None,
                    audit: bool = True) -> list[dict]:
    """The ``k`` passages closest to a question, as JSON-ready dicts (``mode``: see ``rag.retrieval.search``)."""
    return search_base(actor, kb_id=kb_id, question=question, k=k, mode=mode, audit=audit)[1]


def search_base(actor: Actor, *, kb_id: int, question: str, k: int = 10, mode: str | None = None,
                audit: bool = True) -> tuple[str, list[dict]]:
    """``search_passages`` with the base's name, from the same transaction (the API's response names it)."""
    with session_scope() as session:
        kb = require_kb(session, actor, kb_id)
        kb_id, name = kb.id, kb.name
        hits = [hit_to_dict(h) for h in search(session=session, kb_id=kb_id, question=question, k=k, mode=mode)]
        if audit:  # the question in the audit log is all this transaction writes
            relaxed_commit(session)
            record(session, actor, "question", kb_id=kb_id, target=question[:300], search=True,
                   chunk_ids=[h["chunk_id"] for h in hits])
        return name, hits
