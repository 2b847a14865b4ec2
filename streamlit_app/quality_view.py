"""The monitoring page's Quality tab: retrieval evaluation trends per knowledge base, the worst questions of the
latest run, recent alerts, and buttons that run the scheduled quality jobs now."""

from __future__ import annotations

from collections.abc import Callable

import altair as alt
import pandas as pd
import streamlit as st

from db.repositories import alerts as alert_repo
from db.repositories import evaluations as eval_repo
from db.repositories import knowledge_bases as kb_repo
from infra.database import session_scope
from infra.settings import get_settings
from infra.urls import shown_url
from rag.citations import citation_label
from streamlit_app import auth, feedback_view
from streamlit_app.fixes_view import note
from streamlit_app.golden_view import golden_questions
from streamlit_app.monitoring_view import plain, status_link, time_axis, time_tooltip
from tasks.backend import get_backend
from usecases import upkeep

METRICS = {"hit_at_1": "hit@1", "hit_at_5": "hit@5", "hit_at_10": "hit@10", "mrr": "MRR"}


def _enqueue(request: Callable[..., str], what: str, **kwargs) -> None:
    task_id = request(get_backend(), auth.actor(), **kwargs)
    note(f"{what} queued as task [{task_id}]({status_link(task_id)}).", ":material/schedule:")


def _run_rows(runs) -> list[dict]:
    return [
        {"run": r.id, "started": r.started_at, "trigger": r.trigger, "status": r.status, "seed": r.seed,
         "questions": r.questions, "questions by": r.question_mode or "—",
         **{label: getattr(r, key) for key, label in METRICS.items()}, "error": plain(r.error or "", 160)}
        for r in runs
    ]


def evaluation(kb_names: dict[int, str]) -> None:
    """Trend, latest figures against the previous comparable run, worst questions and recent runs of one base."""
    settings = get_settings()
    if not kb_names:
        st.info("No knowledge base yet: there is nothing to evaluate.", icon=":material/info:")
        return
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    kb_id = left.selectbox("Knowledge base", list(kb_names), format_func=kb_names.get, key="mon_eval_kb")
    right.button("Evaluate now", icon=":material/fact_check:", key="mon_eval_now",
                 on_click=_enqueue, args=(upkeep.request_evaluation, f"Evaluation of {kb_names[kb_id]}"),
                 kwargs={"kb_id": kb_id},
                 help=f"Samples {settings.eval_sample_size} chunks (seed {settings.eval_seed}), writes a question "
                      "for each and checks where retrieval ranks the chunk it came from.")
    with session_scope() as session:
        history = eval_repo.history(session=session, kb_id=kb_id)
        recent_runs = eval_repo.recent(session=session, kb_id=kb_id, limit=10)
        latest = recent_runs[0] if recent_runs else None  # newest run of any status
        previous = eval_repo.previous_comparable(session=session, run=history[-1]) if history else None
        trend = pd.DataFrame(_run_rows(history))
        recent = _run_rows(recent_runs)
        details = list(history[-1].details or []) if history else []
        last = history[-1] if history else None
        last_figures = {key: getattr(last, key) for key in METRICS} if last else {}
        before_figures = {key: getattr(previous, key) for key in METRICS} if previous else {}
        last_caption = (f"Run {last.id}, {last.started_at:%Y-%m-%d %H:%M} UTC, {last.trigger}, {last.questions} "
                        f"questions ({last.question_mode}), seed {last.seed}") if last else ""
        running = latest is not None and latest.status == "running"
        failed = latest if latest is not None and latest.status == "failed" else None
    st.caption(f"Nightly at {settings.eval_at} UTC over every knowledge base; an alert goes out when hit@5 or MRR "
               f"falls more than {settings.eval_drop_alert:.2f} below the previous run with the same seed and size.")
    if running:
        st.info("An evaluation of this base is running now.", icon=":material/pending:")
    if failed is not None:
        st.error(f"The latest evaluation failed: {plain(failed.error or '', 300)}", icon=":material/error:")
    if not last_figures:
        st.info("No evaluation of this base yet. Press **Evaluate now**, or wait for the nightly run.",
                icon=":material/info:")
        return
    columns = st.columns(len(METRICS))
    for column, (key, label) in zip(columns, METRICS.items(), strict=True):
        delta = None if not before_figures else last_figures[key] - before_figures[key]
        column.metric(label, f"{last_figures[key]:.2f}" if key != "mrr" else f"{last_figures[key]:.3f}",
                      delta=None if delta is None else f"{delta:+.2f}")
    st.caption(last_caption + (" · change against the previous comparable run" if before_figures else ""))
    if len(trend) > 1:
        long = trend.melt(id_vars=["started"], value_vars=list(METRICS.values()), var_name="metric",
                          value_name="value")
        chart = (alt.Chart(long).mark_line(point=True)
                 .encode(x=time_axis("started", title=None, label_format="%d %b %H:%M"),
                         y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1]), title=None),
                         color=alt.Color("metric:N", title=None),
                         tooltip=[time_tooltip("started", "started (UTC)"), "metric:N",
                                  alt.Tooltip("value:Q", format=".3f")])
                 .properties(height=220))
        st.altair_chart(chart, width="stretch")
    st.markdown("**Worst questions of the latest run**")
    worst = sorted(details, key=lambda d: (d["rank"] is not None, -(d["rank"] or 0)))
    worst = [d for d in worst if d["rank"] is None or d["rank"] > 1][:10]
    if not worst:
        st.success("Every sampled chunk was the first hit for its question.", icon=":material/task_alt:")
    else:
        st.dataframe(pd.DataFrame([{
            "rank": "missed" if d["rank"] is None else str(d["rank"]), "question": d["question"],
            "from": citation_label(d),
            "top hit": citation_label(d["top"][0]) if d.get("top") else "nothing",
            "by": d.get("how", ""),
        } for d in worst]), hide_index=True, width="stretch")
    with st.expander("Recent runs"):
        st.dataframe(pd.DataFrame(recent), hide_index=True, width="stretch")


def alerts_panel(kb_names: dict[int, str]) -> None:
    """Recent alerts and where they go; buttons for the alert rules and the consistency check."""
    settings = get_settings()
    url = settings.alert_webhook_url.get_secret_value() if settings.alert_webhook_url else ""
    a, b, c = st.columns([2, 1, 1], vertical_alignment="bottom")
    a.caption((f"Alerts are POSTed to {shown_url(url)}" if url else
               "No webhook configured (`KBCHAT_ALERT_WEBHOOK_URL`): alerts are listed here only.")
              + f" · the same alert at most once per {settings.alert_period_seconds // 60} min · empty-retrieval "
                f"rule: more than {settings.empty_retrieval_alert_rate:.0%} of at least "
                f"{settings.empty_retrieval_alert_min_questions} questions in "
                f"{settings.empty_retrieval_window_seconds // 60} min")
    b.button("Check alert rules now", icon=":material/notifications:", key="mon_alerts_now",
             on_click=_enqueue, args=(upkeep.request_alert_check, "Alert check"))
    c.button("Check consistency now", icon=":material/rule:", key="mon_consistency_now",
             on_click=_enqueue, args=(upkeep.request_consistency_fix, "Consistency check (with fixes)"),
             help="Documents vs chunks vs stored files; mismatches are re-indexed, orphans removed, stuck "
                  "documents re-enqueued. `kbchat check` shows the same without fixing.")
    with session_scope() as session:
        rows = [{"when": x.created_at, "kind": x.kind.replace("_", " "),
                 "knowledge base": kb_names.get(x.kb_id, "—") if x.kb_id else "all",
                 "message": x.message, "delivery": x.delivery + (f" ({x.attempts} tries)" if x.attempts > 1 else ""),
                 "delivery error": x.delivery_error or ""}
                for x in alert_repo.recent(session=session, limit=30)]
    if not rows:
        st.success("No alert raised.", icon=":material/notifications_off:")
    else:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def quality() -> None:
    with session_scope() as session:
        kb_names = {kb.id: kb.name for kb in kb_repo.list_knowledge_bases(session=session)}
    st.markdown("**Retrieval evaluation**")
    evaluation(kb_names)
    kb_id = st.session_state.get("mon_eval_kb")
    if kb_id in kb_names:
        st.markdown("**Golden questions**")
        golden_questions(kb_id, kb_names[kb_id])
    st.markdown("**Answer feedback** (every base)")
    feedback_view.feedback_panel(auth.actor(), key="mon_fb")
    st.markdown("**Alerts**")
    alerts_panel(kb_names)
