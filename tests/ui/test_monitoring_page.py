"""The monitoring and task status pages in AppTest, through the entrypoint, over data made by real tasks (the
``worker`` fixture's real worker, on Celery and on Dramatiq): what they show, and the actions they offer —
retry a failed task, retry every failed ingest, re-enqueue a stalled document."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.conftest import (
    ROOT,
    _reset_caches,
    app_test,
    backdate_document,
    upload,
    wait_for_documents,
    wait_until,
)
from tests.monitoring_support import RefusedMessages, failed_chat_answer, ingest_ready, wait_for_state

pytestmark = pytest.mark.ui

ENTRYPOINT = ROOT / "streamlit_app" / "app.py"
MONITORING, STATUS = "../pages/monitoring.py", "../pages/status.py"


@dataclass
class Activity:
    """What real tasks left behind: a ready document, a failed ingest and a failed chat answer."""

    kb_id: int
    kb_name: str
    ready_task: str
    ready_name: str
    failed_document: int
    failed_answer: str
    conversation_id: int
    refusal: RefusedMessages


@pytest.fixture(scope="module")
def activity(worker) -> Iterator[Activity]:
    from infra.database import session_scope
    from rag.library import get_or_create_kb

    with session_scope() as session:
        kb = get_or_create_kb(session=session, name=f"monitoring-{worker.backend}-{uuid.uuid4().hex[:8]}")
        kb_id, kb_name = kb.id, kb.name
    ready = ingest_ready(kb_id, "lighthouse.txt", "The lighthouse keeper logged a northerly gale in November.\n")
    broken = upload(kb_id, "broken.pdf", b"%PDF-1.4 this is not really a PDF " + uuid.uuid4().bytes)
    assert wait_for_documents([broken.document_id])[broken.document_id].status == "failed"
    question = f"What did the keeper log? {uuid.uuid4().hex[:6]}"
    task_id, conversation_id, refusal = failed_chat_answer(kb_id, question)
    try:
        yield Activity(kb_id, kb_name, ready.task_id, ready.filename, broken.document_id, task_id, conversation_id,
                       refusal)
    finally:
        refusal.remove()


def open_page(page: str, **query: str) -> AppTest:
    """The entrypoint (so navigation is registered), then ``page``."""
    st.cache_data.clear()  # the page caches slow figures for 30 s; each test wants today's
    at = app_test(ENTRYPOINT)
    at.run()
    for key, value in query.items():
        at.query_params[key] = value
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def frames(at: AppTest) -> list[pd.DataFrame]:
    return [element.value for element in at.dataframe]


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    return next(f for f in frames(at) if column in f.columns)


def _click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    assert not at.exception, at.exception
    return at


# --- monitoring ------------------------------------------------------------------------------------------------


def test_monitoring_page_shows_queues_workers_tasks_and_services(activity, worker):
    at = open_page(MONITORING)
    assert texts(at.title) == ["Monitoring"]
    assert [t.label for t in at.tabs] == ["Queues", "Workers", "Tasks", "Failures", "Stuck documents", "Quality",
                                         "Services"]
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Workers online"]) >= 1
    assert int(metrics["Failed last hour"]) >= 1

    queues = frame_with(at, "queue")
    assert list(queues["queue"]) == ["ingest", "chat", "maintenance"]
    assert ("delayed (retry backoff)" in queues.columns) == (worker.backend == "dramatiq")

    workers = frame_with(at, "worker")
    mine = workers[workers["backend"] == worker.backend]
    assert (mine["status"] == "online").any()
    assert set(mine.columns) >= {"host", "pid", "queues", "concurrency", "current task", "processed", "failed",
                                 "last heartbeat"}

    counts = frame_with(at, "succeeded")
    by_task = counts.set_index("task")
    assert by_task.loc["ingest.document", "succeeded"] >= 1 and by_task.loc["chat.answer", "failed"] >= 1
    assert any("chat.answer" in e.label for e in at.expander)  # the failure, with its traceback inside
    assert any("refused (test fault)" in c for c in texts(at.code))
    runtimes = frame_with(at, "p95")
    assert "ingest.document" in set(runtimes["task"])

    assert int(metrics["Documents"]) >= 2 and int(metrics["Bases"]) >= 1
    assert any("Not configured — answers are extractive" in i for i in texts(at.info))
    tables = frame_with(at, "table")
    assert {"chunks", "documents"} <= set(tables["table"])

    # Times on a 24-hour clock (Vega's default labels minutes on a 12-hour one without AM/PM: 19:08 as "07:08").
    specs = [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]
    time_axes = [spec["encoding"]["x"] for spec in specs if spec["encoding"]["x"].get("type") == "temporal"]
    assert time_axes and all(x["axis"]["format"] == "%H:%M" for x in time_axes), time_axes


def test_pause_switch_stops_the_refresh(services):
    at = open_page(MONITORING)
    assert not at.selectbox(key="mon_every").disabled
    at.toggle(key="mon_paused").set_value(True).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="mon_every").disabled
    assert texts(at.title) == ["Monitoring"]


def test_retry_on_the_monitoring_page_reruns_a_failed_task(activity):
    from db.repositories import conversations as conversation_repo
    from infra.database import session_scope
    from telemetry import events

    activity.refusal.remove()  # the cause is fixed
    at = _click(open_page(MONITORING), f"mon_retry_{activity.failed_answer}")
    new_id = events.get_task(activity.failed_answer)["retried_as"]
    assert any(f"chat.answer queued again as task {new_id}" in s for s in texts(at.success))
    record = wait_for_state(new_id, "succeeded")
    assert record["retry_of"] == activity.failed_answer
    with session_scope() as session:
        assert conversation_repo.find_by_task(session=session, task_id=new_id).conversation_id == \
            activity.conversation_id
    at.run()  # the next refresh shows where the retry went
    assert any(new_id in m for m in texts(at.markdown))


def test_retry_all_failed_ingests_from_the_monitoring_page(activity):
    from db.repositories import documents as document_repo
    from infra.database import session_scope

    with session_scope() as session:
        before = document_repo.get(session=session, document_id=activity.failed_document).task_id
    at = _click(open_page(MONITORING), "mon_retry_ingests")
    assert any("failed document(s) queued again" in s for s in texts(at.success))
    with session_scope() as session:
        after = document_repo.get(session=session, document_id=activity.failed_document).task_id
    assert after != before
    wait_for_state(after, "succeeded")  # the ingest ran again (and reported the damaged file again)
    assert wait_for_documents([activity.failed_document])[activity.failed_document].status == "failed"


def test_a_stalled_document_is_listed_and_requeued_from_the_page(activity):
    from infra.database import session_scope
    from rag.library import store_upload

    with session_scope() as session:  # stored, never enqueued: as if its queue message was lost
        outcome = store_upload(session=session, kb_id=activity.kb_id, filename="stalled.txt",
                               data=b"The tram depot closed for repairs in spring.\n")
    backdate_document(outcome.document_id, 3600)
    at = open_page(MONITORING)
    stalled = frame_with(at, "unchanged for")
    row = stalled[stalled["id"] == outcome.document_id].iloc[0]
    assert row["file"] == "stalled.txt" and row["status"] == "queued" and row["knowledge base"] == activity.kb_name
    at.multiselect(key="mon_stalled_pick").select(outcome.document_id).run()
    at = _click(at, "mon_requeue")
    assert any("1 document(s) queued again" in s for s in texts(at.success))
    assert wait_for_documents([outcome.document_id])[outcome.document_id].status == "ready"


def test_monitoring_page_reports_a_configured_generation_server(services, monkeypatch):
    from tests.tgi_server import MODEL_ID, TGIServer

    with TGIServer() as server:
        monkeypatch.setenv("KBCHAT_TGI_URL", server.url)
        _reset_caches()
        try:
            at = open_page(MONITORING)
        finally:
            monkeypatch.delenv("KBCHAT_TGI_URL")
            _reset_caches()
    healthy = [s for s in texts(at.success) if s.startswith("Healthy")]
    assert healthy and "HTTP 200" in healthy[0]
    assert any(MODEL_ID in c for c in texts(at.caption))
    limits = frame_with(at, "limit")
    assert "max_total_tokens" in set(limits["limit"])


# --- task status ---------------------------------------------------------------------------------------------


def test_status_page_names_the_document_and_opens_its_knowledge_base(activity):
    at = open_page(STATUS, task=activity.ready_task)
    assert texts(at.subheader) == ["ingest.document"]
    assert any(f"**Document** {activity.ready_name} in **{activity.kb_name}** · ready" in m for m in texts(at.markdown))
    assert any("Arguments:" in c for c in texts(at.caption))
    at = _click(at, "status_open_subject")
    assert texts(at.title) == ["Knowledge bases"]
    assert at.session_state["kb_name"] == activity.kb_name


def test_status_page_shows_a_failure_and_retries_it(worker, kb):
    from telemetry import events

    kb_id, kb_name = kb
    ingest_ready(kb_id, "canal.txt", "The canal locks close at dusk every day in winter.\n")
    question = "When do the canal locks close?"
    task_id, _, refusal = failed_chat_answer(kb_id, question)
    try:
        at = open_page(STATUS, task=task_id)
        assert {m.label: m.value for m in at.metric}["State"] == "failed"
        assert any("refused (test fault)" in e for e in texts(at.error))
        assert any("Traceback (most recent call last)" in c for c in texts(at.code))
        assert any(f"**Conversation** {question} in **{kb_name}**" in m for m in texts(at.markdown))
        at = _click(at, "status_retry")
        new_id = wait_until(lambda: events.get_task(task_id).get("retried_as"), 5, "the retry to be recorded")
        assert any(f"Retried as [`{new_id}`]" in m for m in texts(at.markdown))
        assert "status_retry" not in {b.key for b in at.button}  # retried once: no second button
        wait_for_state(new_id, "failed")  # the cause is still there: it fails again, as a new task
    finally:
        refusal.remove()


def test_lost_workers_are_one_collapsed_line_that_says_what_comes_back(services):
    """A worker whose heartbeat lapsed while it ran an ingest: one collapsed summary line, not a warning per worker;
    inside, what it held and when that comes back. A clean stop leaves no line at all."""
    import json
    import time

    from telemetry import events

    ghost = f"kbchat-ingest-{uuid.uuid4().hex[:6]}@gone"
    task_id = str(uuid.uuid4())
    now = time.time()
    redis = events.get_redis()
    redis.zadd(events.WORKERS_SEEN_KEY, {ghost: now - 90})
    redis.hset(events.WORKERS_INFO_KEY, ghost, json.dumps({
        "backend": "celery", "queues": "ingest", "host": "gone", "pid": 4242, "concurrency": 2,
        "last_heartbeat": now - 90, f"task:{task_id}": json.dumps({"name": "ingest.document", "started_at": now - 100}),
    }))
    events.record(task_id, events.STARTED, name="ingest.document", worker=ghost)
    try:
        at = open_page(MONITORING)
        lost = [e for e in at.expander if "lost in the last hour" in e.label]
        assert len(lost) == 1, [e.label for e in at.expander]
        (line,) = [m for m in texts(lost[0].markdown) if ghost in m]
        assert "stopped sending heartbeats" in line and "It was running 1 task(s)" in line
        assert "reconciler" in line and "visibility timeout" in line, line
        assert not any(ghost in w for w in texts(at.warning)), "no warning of its own above the tabs"
    finally:
        events.forget_workers([ghost])
    at = open_page(MONITORING)
    assert not any(ghost in m for e in at.expander for m in texts(e.markdown))
