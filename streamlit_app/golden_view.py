"""The Quality tab's golden questions: upload your own questions with the document (and page) that answers each,
run them on a worker, and read document and page hit@k, MRR, the trend of runs of the same set and the questions
whose passage was not found, with what was retrieved instead."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from db.repositories import evaluations as eval_repo
from infra.database import session_scope
from rag import golden
from streamlit_app import auth
from streamlit_app.fixes_view import note
from streamlit_app.monitoring_view import plain, status_link
from tasks.backend import get_backend
from usecases import upkeep

FIGURES = {"hit_at_1": "document hit@1", "hit_at_5": "document hit@5", "hit_at_10": "document hit@10",
           "mrr": "document MRR", "page_hit_at_1": "page hit@1", "page_hit_at_5": "page hit@5", "page_hit_at_10": "page hit@10"}


def _start(kb_id: int, kb_name: str) -> None:
    upload = st.session_state.get("mon_golden_file")
    if upload is None:
        st.session_state["mon_golden_error"] = "Choose a CSV or JSONL file of questions first."
        return
    try:
        count, task_id = upkeep.request_golden_evaluation(get_backend(), auth.actor(), kb_id=kb_id, data=upload.getvalue(),
                                                          filename=upload.name)
    except golden.QuestionFileError as exc:
        st.session_state["mon_golden_error"] = f"{upload.name}: {exc}"
        return
    st.session_state.pop("mon_golden_error", None)
    note(f"{count} golden questions on {kb_name} queued as task [{task_id}]({status_link(task_id)}).",
          ":material/schedule:")


def golden_questions(kb_id: int, kb_name: str) -> None:
    """The upload form, then the latest golden run of the base."""
    with st.form("mon_golden_form", clear_on_submit=False, border=False):
        st.file_uploader(
            "Golden questions (CSV with columns question, document and optionally page; or JSONL with those keys)",
            type=["csv", "jsonl", "json", "ndjson"], key="mon_golden_file",
        )
        st.form_submit_button("Run golden questions", icon=":material/quiz:", on_click=_start,
                              args=(kb_id, kb_name))
    if st.session_state.get("mon_golden_error"):
        st.error(plain(st.session_state["mon_golden_error"], 400), icon=":material/error:")
    with session_scope() as session:
        runs = eval_repo.history(session=session, kb_id=kb_id, golden=True)
        recent = eval_repo.recent(session=session, kb_id=kb_id, limit=1, golden=True)
        running = bool(recent) and recent[0].status == "running"
        failed = recent[0] if recent and recent[0].status == "failed" else None
        last = runs[-1] if runs else None
        same_set = [r for r in runs if last is not None and r.seed == last.seed]
        trend = pd.DataFrame([{"started": r.started_at, **{FIGURES[k]: getattr(r, k) for k in FIGURES}}
                              for r in same_set])
        figures = {k: getattr(last, k) for k in FIGURES} if last else {}
        details = list(last.details or []) if last else []
        caption = (f"Run {last.id}, {last.started_at:%Y-%m-%d %H:%M} UTC, {last.trigger}, {last.questions} questions"
                   f" · {len(same_set)} run(s) of this question set") if last else ""
    if running:
        st.info("A golden-question run of this base is in progress.", icon=":material/pending:")
    if failed is not None:
        st.error(f"The latest golden run failed: {plain(failed.error or '', 300)}", icon=":material/error:")
    if last is None:
        st.caption("No golden run yet. Each question names the document that answers it (its file name) and, "
                   "optionally, the page; hit@k says how often that document or page is among the top k passages.")
        return
    shown = {k: v for k, v in figures.items() if v is not None}
    for column, (key, value) in zip(st.columns(len(shown)), shown.items(), strict=True):
        column.metric(FIGURES[key], f"{value:.3f}" if key == "mrr" else f"{value:.2f}")
    st.caption(caption)
    if len(trend) > 1:
        long = trend.melt(id_vars=["started"], var_name="metric", value_name="value").dropna()
        st.altair_chart(alt.Chart(long).mark_line(point=True).encode(
            x=alt.X("started:T", title=None), y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1]), title=None),
            color=alt.Color("metric:N", title=None)).properties(height=200), width="stretch")
    missed = golden.not_first(details)
    if not missed:
        st.success("The first passage of every question came from its document (and page, where one was given).",
                   icon=":material/task_alt:")
        return
    st.markdown(f"**{len(missed)} question(s) whose first passage came from elsewhere, worst first**")
    st.dataframe(pd.DataFrame([{
        "line": d["line"], "question": d["question"],
        "expected": d["document"] + (f", p. {', '.join(map(str, d['pages']))}" if d.get("pages") else ""),
        "document rank": str(d["rank"] or "missed"),
        "page rank": str(d.get("page_rank") or "missed") if d.get("pages") else "—",
        "retrieved instead": "; ".join(t["document"] + (f", p. {t['page']}" if t.get("page") else "")
                                       for t in d.get("top", [])) or "nothing",
    } for d in missed]), hide_index=True, width="stretch")
