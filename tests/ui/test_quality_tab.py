"""The monitoring page's Quality tab in AppTest, over evaluation runs and alerts stored in the real database:
the latest figures with their change, the trend, the worst questions, the alerts, and "Evaluate now"."""

from __future__ import annotations

import json
import uuid

import pytest
import streamlit as st
from sqlalchemy import text

from tests.conftest import ROOT, app_test

pytestmark = pytest.mark.ui

ENTRYPOINT = ROOT / "streamlit_app" / "app.py"


def _details(missed_question: str) -> list[dict]:
    found = {"chunk_id": 1, "document_id": 1, "document": "engine.pdf", "page": 2, "locator": None,
             "question": "What about engine, fractured, connecting?", "how": "extractive", "rank": 1,
             "passage": "…", "top": [{"chunk_id": 1, "document": "engine.pdf", "page": 2, "score": 0.8}]}
    missed = {**found, "chunk_id": 2, "page": 5, "question": missed_question, "rank": None,
              "top": [{"chunk_id": 9, "document": "weather.pdf", "page": 1, "score": 0.3}]}
    return [found, missed]


@pytest.fixture
def evaluated_kb(services):
    from infra.database import session_scope
    from rag.library import get_or_create_kb

    name = f"quality-{uuid.uuid4().hex[:8]}"
    missed = f"What about hydraulic, pressure, {uuid.uuid4().hex[:6]}?"
    with session_scope() as session:
        kb_id = get_or_create_kb(session=session, name=name).id
        for days_ago, hit5, mrr in ((2, 1.0, 0.9), (1, 0.5, 0.45)):
            session.execute(text(
                "INSERT INTO eval_runs (kb_id, trigger, status, seed, sample_size, questions, question_mode, "
                "hit_at_1, hit_at_5, hit_at_10, mrr, details, started_at, finished_at) VALUES (:kb, 'scheduled', "
                "'succeeded', 1, 2, 2, 'extractive', :h1, :h5, :h10, :mrr, CAST(:details AS jsonb), "
                "now() - make_interval(days => :d), now() - make_interval(days => :d))"),
                {"kb": kb_id, "h1": hit5 / 2, "h5": hit5, "h10": hit5, "mrr": mrr, "d": days_ago,
                 "details": json.dumps(_details(missed))})
        message = f"Retrieval quality of '{name}' dropped: hit@5 1.00 → 0.50"
        session.execute(text("INSERT INTO alerts (kind, kb_id, message, payload, delivery, attempts) VALUES "
                             "('retrieval_drop', :kb, :m, CAST('{}' AS jsonb), 'sent', 2)"), {"kb": kb_id, "m": message})
    return kb_id, name, missed, message


def test_quality_tab_shows_the_latest_figures_trend_worst_questions_and_alerts(evaluated_kb):
    from telemetry import events

    kb_id, name, missed, message = evaluated_kb
    st.cache_data.clear()
    at = app_test(ENTRYPOINT)
    at.run()
    at.switch_page("../pages/monitoring.py").run()
    assert not at.exception, at.exception
    at.selectbox(key="mon_eval_kb").set_value(kb_id).run()
    assert not at.exception, at.exception

    metrics = {m.label: (m.value, m.delta) for m in at.metric}
    assert metrics["hit@5"] == ("0.50", "-0.50") and metrics["MRR"] == ("0.450", "-0.45")
    frames = [f.value for f in at.dataframe]
    worst = next(f for f in frames if "question" in f.columns and "rank" in f.columns)
    assert worst.iloc[0]["question"] == missed and worst.iloc[0]["rank"] == "missed"
    assert worst.iloc[0]["from"] == "engine.pdf, p. 5" and worst.iloc[0]["top hit"] == "weather.pdf, p. 1"
    alerts = next(f for f in frames if "delivery" in f.columns)
    row = alerts[alerts["message"] == message].iloc[0]
    assert row["knowledge base"] == name and row["delivery"] == "sent (2 tries)" and row["kind"] == "retrieval drop"
    assert any("Nightly at 02:30 UTC" in c.value for c in at.caption)

    at.button(key="mon_eval_now").click().run()
    assert not at.exception, at.exception
    note = next(s.value for s in at.success if "Evaluation of" in s.value)
    task_id = note.split("[", 1)[1].split("]", 1)[0]
    record = events.get_task(task_id)
    args = json.loads(record["args"])["args"]
    # ... queued for the signed-in admin, whose id it carries last (the task checks their access again)
    assert record["name"] == "maintenance.evaluate" and args[:4] == [kb_id, None, None, "page"]
    assert isinstance(args[4], int) and args[4] > 0


def test_golden_runs_show_document_and_page_figures_apart_from_the_sampled_trend(evaluated_kb):
    from infra.database import session_scope

    kb_id, name, missed, _ = evaluated_kb
    wrong = f"Which lamp did the keepers trim {uuid.uuid4().hex[:6]}?"
    details = [
        {"line": 2, "question": "Who kept the lamp?", "document": "lighthouse.pdf", "document_id": 1, "page": 2,
         "pages": [2], "rank": 1, "page_rank": 1, "top": [{"chunk_id": 1, "document": "lighthouse.pdf", "page": 2,
                                                            "score": 0.8}]},
        {"line": 3, "question": wrong, "document": "lighthouse.pdf", "document_id": 1, "page": 3, "pages": [3],
         "rank": 2, "page_rank": None, "top": [{"chunk_id": 7, "document": "glacier.pdf", "page": 1, "score": 0.5}]},
    ]
    with session_scope() as session:
        session.execute(text(
            "INSERT INTO eval_runs (kb_id, trigger, status, seed, sample_size, questions, question_mode, hit_at_1, "
            "hit_at_5, hit_at_10, mrr, page_hit_at_1, page_hit_at_5, page_hit_at_10, details, finished_at) VALUES "
            "(:kb, 'cli', 'succeeded', 987654321, 2, 2, 'golden', 0.5, 1.0, 1.0, 0.75, 0.5, 0.5, 0.5, "
            "CAST(:details AS jsonb), now())"), {"kb": kb_id, "details": json.dumps(details)})
    st.cache_data.clear()
    at = app_test(ENTRYPOINT)
    at.run()
    at.switch_page("../pages/monitoring.py").run()
    at.selectbox(key="mon_eval_kb").set_value(kb_id).run()
    assert not at.exception, at.exception

    metrics = {m.label: m.value for m in at.metric}
    assert metrics["hit@5"] == "0.50"  # the sampled runs' figures are not mixed with the golden run's
    assert metrics["document hit@1"] == "0.50" and metrics["page hit@5"] == "0.50" and metrics["document MRR"] == "0.750"
    frames = [f.value for f in at.dataframe]
    golden = next(f for f in frames if "retrieved instead" in f.columns)
    assert list(golden["question"]) == [wrong]
    row = golden.iloc[0]
    assert row["expected"] == "lighthouse.pdf, p. 3" and row["document rank"] == "2" and row["page rank"] == "missed"
    assert row["retrieved instead"] == "glacier.pdf, p. 1"
