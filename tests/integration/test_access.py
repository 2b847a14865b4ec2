"""Access control through the use-case layer: role and grant level × action, on real PostgreSQL (and real
workers, both backends, for what a task checks again when it runs).

Allowed actions work; refused ones raise NotFound (someone else's base reads as a missing one) or Forbidden, and
leave nothing changed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from tests.conftest import OPERATOR, RecordingQueue, make_pdf, wait_for_documents

ROLES = ("admin", "owner", "editor", "viewer", "group_viewer", "outsider")


@dataclass
class People:
    actors: dict  # role -> Actor
    kb_id: int  # a base with one ready document, owned by "owner"
    document_id: int
    conversation_id: int  # the viewer's conversation
    viewer_task: str  # a task record queued for the viewer
    answer_task: str  # the task of a saved answer in the viewer's conversation


def _person(role: str, tag: str):
    from usecases import accounts

    user, _ = accounts.add_user(OPERATOR, username=f"{role}-{tag}", role="admin" if role == "admin" else "analyst")
    return accounts.actor_for_user_id(user["id"])


def _shared_base(people: dict, tag: str, name: str) -> int:
    from usecases import accounts
    from usecases.knowledge_bases import create_kb

    kb_id, _ = create_kb(people["owner"], name=name)
    accounts.grant(OPERATOR, kb_id=kb_id, grantee=people["editor"].username, level="editor")
    accounts.grant(OPERATOR, kb_id=kb_id, grantee=people["viewer"].username, level="viewer")
    accounts.grant(OPERATOR, kb_id=kb_id, grantee=f"@team-{tag}", level="viewer")
    return kb_id


@pytest.fixture(scope="module")
def people(services) -> People:
    from db.repositories import documents as document_repo
    from infra.database import session_scope
    from rag import ingestion
    from telemetry import events
    from usecases import accounts
    from usecases.asking import ask

    tag = uuid.uuid4().hex[:6]
    actors = {role: _person(role, tag) for role in ROLES}
    accounts.add_group(OPERATOR, name=f"team-{tag}")
    accounts.set_membership(OPERATOR, group=f"team-{tag}", username=actors["group_viewer"].username)
    kb_id = _shared_base(actors, tag, f"access-{tag}")
    queue = RecordingQueue()
    from usecases.documents import upload_files

    (outcome,) = upload_files(queue, actors["editor"], kb_id=kb_id, files=[(
        "lighthouse.pdf", make_pdf(["The lighthouse keeper logged a northerly gale and a broken lamp on page one."]))])
    with session_scope() as session:
        task_id = document_repo.get(session=session, document_id=outcome.document_id).task_id
    ingestion.ingest_document(outcome.document_id, task_id=task_id)  # in this process: no worker needed here
    asked = ask(queue, actors["viewer"], kb_id=kb_id, question="What did the keeper log?", save_question=True)
    viewer_task = f"viewer-task-{tag}"
    events.record(viewer_task, events.QUEUED, name="chat.answer",
                  args=events.encode_args([kb_id, "q", None, None, actors["viewer"].user_id]))
    from db.repositories import conversations as conversation_repo

    answer_task = f"answer-{tag}"
    with session_scope() as session:
        conversation_repo.add_message(session=session, conversation_id=asked.conversation_id, role="assistant",
                                      content="The keeper logged a gale [1].", mode="extractive", task_id=answer_task,
                                      citations=[{"n": 1, "chunk_id": 1, "document": "lighthouse.pdf", "page": 1,
                                                  "score": 0.8}])
    return People(actors, kb_id, outcome.document_id, asked.conversation_id, viewer_task, answer_task)


def _state(kb_id: int) -> dict:
    """What a refused action must leave as it was."""
    from db.repositories import documents as document_repo
    from db.repositories import identity as identity_repo
    from db.repositories import knowledge_bases as kb_repo
    from infra.database import session_scope

    with session_scope() as session:
        kb = kb_repo.get(session=session, kb_id=kb_id)
        return {
            "name": kb.name if kb else None,
            "documents": sorted((d.id, d.status, d.task_id) for d in document_repo.list_for_kb(session=session,
                                                                                                 kb_id=kb_id)),
            "grants": identity_repo.list_grants(session=session, kb_id=kb_id),
        }


# Who may do what: True = allowed.
MATRIX = {
    "search":            dict(admin=1, owner=1, editor=1, viewer=1, group_viewer=1, outsider=0),
    "ask":               dict(admin=1, owner=1, editor=1, viewer=1, group_viewer=1, outsider=0),
    "read_conversation": dict(admin=1, owner=0, editor=0, viewer=1, group_viewer=0, outsider=0),
    "list_documents":    dict(admin=1, owner=1, editor=1, viewer=1, group_viewer=1, outsider=0),
    "open_page":         dict(admin=1, owner=1, editor=1, viewer=1, group_viewer=1, outsider=0),
    "download_original": dict(admin=1, owner=1, editor=1, viewer=1, group_viewer=1, outsider=0),
    "read_feedback":     dict(admin=1, owner=1, editor=0, viewer=0, group_viewer=0, outsider=0),
    "rate_answer":       dict(admin=1, owner=0, editor=0, viewer=1, group_viewer=0, outsider=0),
    "upload":            dict(admin=1, owner=1, editor=1, viewer=0, group_viewer=0, outsider=0),
    "delete":            dict(admin=1, owner=1, editor=1, viewer=0, group_viewer=0, outsider=0),
    "reindex":           dict(admin=1, owner=1, editor=1, viewer=0, group_viewer=0, outsider=0),
    "rename":            dict(admin=1, owner=1, editor=0, viewer=0, group_viewer=0, outsider=0),
    "delete_base":       dict(admin=1, owner=1, editor=0, viewer=0, group_viewer=0, outsider=0),
    "manage_grants":     dict(admin=1, owner=1, editor=0, viewer=0, group_viewer=0, outsider=0),
    "monitoring":        dict(admin=1, owner=0, editor=0, viewer=0, group_viewer=0, outsider=0),
    "task_status":       dict(admin=1, owner=0, editor=0, viewer=1, group_viewer=0, outsider=0),
    "audit":             dict(admin=1, owner=0, editor=0, viewer=0, group_viewer=0, outsider=0),
}
MUTATING = ("upload", "delete", "reindex", "rename", "delete_base", "manage_grants")


def _do(action: str, actor, people: People, kb_id: int, document_id: int):
    from usecases import accounts, asking, audit, documents, feedback, fixes, knowledge_bases

    queue = RecordingQueue()
    match action:
        case "search":
            return asking.search_passages(actor, kb_id=kb_id, question="What did the lighthouse keeper log?", k=3)
        case "ask":
            return asking.ask(queue, actor, kb_id=kb_id, question="What broke?")
        case "read_conversation":
            return asking.conversation_messages(actor, conversation_id=people.conversation_id)
        case "list_documents":
            return documents.list_documents(actor, kb_id=kb_id)
        case "open_page":
            view = documents.page_view(actor, document_id=people.document_id, page=1)
            assert view["kind"] == "image" and view["png"].startswith(b"\x89PNG")
            return view
        case "download_original":
            return documents.document_original(actor, document_id=people.document_id)
        case "read_feedback":
            return feedback.list_feedback(actor, kb_id=kb_id)
        case "rate_answer":
            return feedback.rate(actor, task_id=people.answer_task, rating=-1, comment="wrong page")
        case "upload":
            return documents.upload_files(queue, actor, kb_id=kb_id, files=[("new.txt", b"A new note, " * 5)])
        case "delete":
            return documents.delete_documents(actor, kb_id=kb_id, document_ids=[document_id])
        case "reindex":
            return documents.reindex_documents(queue, actor, kb_id=kb_id, document_ids=[document_id])
        case "rename":
            return knowledge_bases.rename_kb(actor, kb_id=kb_id, name=f"renamed-{uuid.uuid4().hex[:6]}")
        case "delete_base":
            return knowledge_bases.delete_kb(actor, kb_id=kb_id)
        case "manage_grants":
            return accounts.grant(actor, kb_id=kb_id, grantee=people.actors["outsider"].username, level="viewer")
        case "monitoring":
            return fixes.retry_failed_ingests(queue, actor)
        case "task_status":
            return asking.get_task(actor, task_id=people.viewer_task)
        case "audit":
            return audit.list_events(actor, limit=5)
    raise AssertionError(action)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", list(MATRIX))
def test_role_and_level_by_action(people, action, role):
    from rag.access import Forbidden, NotFound
    from usecases.documents import upload_files

    actor = people.actors[role]
    kb_id, document_id = people.kb_id, people.document_id
    if action in MUTATING:  # a base of its own, shared the same way, so the shared one stays intact
        kb_id = _shared_base(people.actors, people.actors["owner"].username.split("-")[-1],
                             f"access-{action}-{role}-{uuid.uuid4().hex[:6]}")
        (stored,) = upload_files(RecordingQueue(), OPERATOR, kb_id=kb_id, files=[("a.txt", b"Some text " * 20)])
        document_id = stored.document_id
    before = _state(kb_id)
    if MATRIX[action][role]:
        _do(action, actor, people, kb_id, document_id)
        if action == "search":
            hits = _do(action, actor, people, kb_id, document_id)
            assert hits and hits[0]["document"] == "lighthouse.pdf"
        return
    with pytest.raises((NotFound, Forbidden)) as refused:
        _do(action, actor, people, kb_id, document_id)
    assert _state(kb_id) == before, "a refused action changed something"
    if role == "outsider" and action not in ("monitoring", "audit"):
        assert isinstance(refused.value, NotFound), "another user's base must look like a missing one"


def test_an_outsider_cannot_reach_chunks_documents_or_conversations_by_id(people):
    from rag.access import NotFound
    from usecases import asking, documents
    from usecases.knowledge_bases import list_kbs

    outsider = people.actors["outsider"]
    assert people.kb_id not in [kb["id"] for kb in list_kbs(outsider)]
    assert people.kb_id in [kb["id"] for kb in list_kbs(people.actors["group_viewer"])]
    missing_kb = 10**12
    for call in (
        lambda: documents.document_chunks(outsider, document_id=people.document_id),
        lambda: asking.conversation_messages(outsider, conversation_id=people.conversation_id),
        lambda: asking.rename_conversation(outsider, conversation_id=people.conversation_id, title="mine now"),
        lambda: asking.check_answer_stream(outsider, task_id=people.viewer_task),
        lambda: asking.list_conversations(outsider, kb_id=people.kb_id),
    ):
        with pytest.raises(NotFound):
            call()
    # Someone else's base and a base that does not exist give the very same answer.
    with pytest.raises(NotFound) as theirs:
        documents.list_documents(outsider, kb_id=people.kb_id)
    with pytest.raises(NotFound) as nobodys:
        documents.list_documents(outsider, kb_id=missing_kb)
    assert str(theirs.value).replace(str(people.kb_id), "N") == str(nobodys.value).replace(str(missing_kb), "N")


def test_conversations_are_their_starters(people):
    from usecases import asking

    viewer_list = asking.list_conversations(people.actors["viewer"], kb_id=people.kb_id)
    assert people.conversation_id in [c["id"] for c in viewer_list]
    assert people.conversation_id not in [c["id"] for c in asking.list_conversations(people.actors["editor"],
                                                                                       kb_id=people.kb_id)]


def test_a_revoked_grant_stops_the_answer_when_it_runs(people):
    """What the chat task does for its asker: the check runs again with the grant as it is now."""
    from usecases import accounts, asking

    tag = uuid.uuid4().hex[:6]
    late = _person("late", tag)
    accounts.grant(OPERATOR, kb_id=people.kb_id, grantee=late.username, level="viewer")
    asked = asking.ask(RecordingQueue(), late, kb_id=people.kb_id, question="What did the keeper log?")
    accounts.revoke(OPERATOR, kb_id=people.kb_id, grantee=late.username)
    emitted = []
    result = asking.answer(RecordingQueue(), late, kb_id=people.kb_id, question="What did the keeper log?",
                           conversation_id=None, document_ids=None, task_id=asked.task_id,
                           emit=lambda kind, data: emitted.append((kind, data)), should_stop=lambda: False)
    assert "error" in result and emitted[0][0] == "error" and "not found" in emitted[0][1]
    assert not any(kind == "token" for kind, _ in emitted)


def test_the_last_owner_cannot_be_removed_and_the_creator_owns(people):
    from usecases import accounts

    grants = {g["grantee"]: g["level"] for g in accounts.list_grants(OPERATOR, kb_id=people.kb_id)}
    assert grants[people.actors["owner"].username] == "owner"
    with pytest.raises(ValueError, match="only owner"):
        accounts.revoke(people.actors["owner"], kb_id=people.kb_id, grantee=people.actors["owner"].username)


def test_audit_log_records_sign_ins_changes_and_questions_without_secrets(people):
    from usecases import accounts, audit

    tag = uuid.uuid4().hex[:6]
    password = f"Secret-{tag}-horse"
    accounts.add_user(OPERATOR, username=f"audited-{tag}", role="analyst", password=password)
    with pytest.raises(accounts.LoginRefused):
        accounts.login(f"audited-{tag}", "wrong password!")
    signed_in = accounts.login(f"audited-{tag}", password)
    accounts.logout(signed_in.token)
    events = audit.list_events(OPERATOR, username=f"audited-{tag}")
    assert {"login.failure", "login.success", "logout"} <= {e["action"] for e in events}
    questions = audit.list_events(OPERATOR, action="question", kb_id=people.kb_id)
    assert any(e["user"] == people.actors["admin"].username and e["details"].get("chunk_ids") for e in questions)
    everything = str(audit.list_events(OPERATOR, limit=10_000))
    assert password not in everything and signed_in.token not in everything and "wrong password!" not in everything


@pytest.mark.parametrize("kind", ["ingest", "answer"])
def test_a_task_checks_the_asker_again_on_a_real_worker(worker, people, kind):
    """A task queued for someone who (no longer) holds a grant: the worker refuses it, on either backend."""
    from db.repositories import documents as document_repo
    from infra.database import session_scope
    from tasks.backend import get_backend
    from telemetry.answer_streams import read_answer
    from usecases.documents import upload_files

    outsider = people.actors["outsider"]
    if kind == "answer":
        task_id = get_backend().enqueue("chat.answer", people.kb_id, "What did the keeper log?", None, None,
                                        outsider.user_id)
        read = read_answer(task_id, timeout=60)
        assert read.error is not None and "not found" in read.error["message"] and not read.text
        return
    (stored,) = upload_files(RecordingQueue(), OPERATOR, kb_id=people.kb_id,
                             files=[(f"late-{uuid.uuid4().hex[:6]}.txt", b"A note about the lamp. " * 10)])
    task_id = str(uuid.uuid4())
    with session_scope() as session:
        document_repo.set_task(session=session, document_id=stored.document_id, task_id=task_id)
    get_backend().enqueue("ingest.document", stored.document_id, outsider.user_id, task_id=task_id)
    document = wait_for_documents([stored.document_id], timeout=90)[stored.document_id]
    assert document.status == "failed" and "no longer has editor access" in (document.error or "")
    assert document.chunk_count == 0


def test_feedback_is_stored_with_what_the_answer_was_built_from(people):
    from usecases import feedback

    feedback.rate(people.actors["viewer"], task_id=people.answer_task, rating=1, comment="spot on")
    feedback.rate(people.actors["viewer"], task_id=people.answer_task, rating=-1, comment="no: wrong page")
    rows = [r for r in feedback.list_feedback(people.actors["owner"], kb_id=people.kb_id)
            if r["task_id"] == people.answer_task and r["user"] == people.actors["viewer"].username]
    assert len(rows) == 1, "one rating per user and answer, changed in place"
    row = rows[0]
    assert row["rating"] == -1 and row["comment"] == "no: wrong page" and row["question"] == "What did the keeper log?"
    assert row["answer"].startswith("The keeper logged") and row["mode"] == "extractive"
    assert row["retrieved"] == [{"chunk_id": 1, "document": "lighthouse.pdf", "page": 1, "score": 0.8}]
    assert feedback.my_ratings(people.actors["viewer"], task_ids=[people.answer_task])[people.answer_task][
        "rating"] == -1
    assert not feedback.list_feedback(people.actors["editor"])  # an editor is no owner: nothing to read
    with pytest.raises(ValueError):
        feedback.rate(people.actors["viewer"], task_id=people.answer_task, rating=5)


def test_the_cited_page_is_rendered_with_the_passage_highlighted(people):
    from db.repositories import chunks as chunk_repo
    from infra.database import session_scope
    from usecases import documents

    with session_scope() as session:
        chunk = chunk_repo.list_for_document(session=session, document_id=people.document_id)[0]
    plain = documents.page_view(people.actors["viewer"], document_id=people.document_id, page=1)
    marked = documents.page_view(people.actors["viewer"], document_id=people.document_id, chunk_id=chunk.id)
    assert marked["highlighted"] and not plain["highlighted"] and marked["png"] != plain["png"]
    assert documents.page_view(people.actors["viewer"], document_id=people.document_id,
                               chunk_id=chunk.id)["png"] == marked["png"]  # from the cache
    with pytest.raises(ValueError, match="no page 9"):
        documents.page_view(people.actors["viewer"], document_id=people.document_id, page=9)
