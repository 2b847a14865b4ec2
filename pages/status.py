"""Task status: a task id (typed, or from ?task=<id>) → its state, worker, times, result or error.

Analysts see the tasks they started; admins every task (and can run a failed one again)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import streamlit as st

from rag.access import NotFound
from streamlit_app import auth, components
from tasks.backend import get_backend
from telemetry import events
from usecases import asking, fixes

st.title("Task status")
components.require_services()
actor = auth.actor()

task_id = st.text_input("Task id", value=st.query_params.get("task", ""), placeholder="paste a task id").strip()
if not task_id:
    st.caption("Every upload and answer runs as a task. " + ("Everyone's newest tasks:" if actor.is_admin
                                                             else "Your newest tasks:"))
    recent = asking.recent_tasks(actor, limit=50)
    if not recent:
        st.info("No task yet: uploads and questions show up here.", icon=":material/info:")
    for row in recent:
        when = datetime.fromtimestamp(float(row["queued_at"])).strftime("%Y-%m-%d %H:%M:%S") if row["queued_at"] \
            else ""
        link, state, stamp = st.columns([4, 2, 2], vertical_alignment="center")
        link.markdown(f"[`{row['name']}` {row['id'][:8]}…](/status?task={row['id']})")
        with state:
            components.status_badge(row["state"])
        stamp.caption(when)
    st.stop()
st.query_params["task"] = task_id

try:
    record = asking.get_task(actor, task_id=task_id)
except NotFound:
    record = None
if record is None:
    st.warning(
        "No record of this task. Either the id is mistyped, or the task finished long enough ago that its record "
        "expired (records are kept for a day).",
        icon=":material/help:",
    )
    st.stop()


def _when(key: str) -> str:
    value = record.get(key)
    return datetime.fromtimestamp(float(value)).strftime("%Y-%m-%d %H:%M:%S") if value else "—"


state = record.get("state", "unknown")
st.subheader(record.get("name", "task"))
components.status_badge(state)
left, middle, right = st.columns(3)
left.metric("State", state)
middle.metric("Retries", record.get("retries", "0"))
right.metric("Run time", f"{float(record['runtime']):.2f} s" if record.get("runtime") else "—")
st.markdown(
    f"**Queue** {record.get('queue', '—')} · **worker** {record.get('worker', '—')}  \n"
    f"**Queued** {_when('queued_at')} · **started** {_when('started_at')} · **finished** {_when('finished_at')}"
)
if record.get("args"):
    st.caption(f"Arguments: `{fixes.short_args(record['args'])}`")
subject = fixes.task_subject(record)
if subject is not None:
    what = {"document": "Document", "conversation": "Conversation", "knowledge_base": "Knowledge base"}
    where = "" if subject["kind"] == "knowledge_base" else f" in **{components.plain(subject['kb'])}**"
    status = f" · {subject['status']}" if subject.get("status") else ""
    text_col, open_col = st.columns([4, 1], vertical_alignment="center")
    text_col.markdown(f"**{what[subject['kind']]}** {components.plain(subject['label'])}{where}{status}")
    if open_col.button("Open", icon=":material/open_in_new:", key="status_open_subject"):
        st.session_state["kb_name"] = subject["kb"]  # the knowledge base pickers open on it
        if subject["kind"] == "conversation":
            st.session_state[f"chat_conversation_{subject['kb_id']}"] = subject["id"]
        target = "chat.py" if subject["kind"] == "conversation" else "knowledge_bases.py"
        st.switch_page(Path(__file__).parent / target)
for key, label in (("retry_of", "This is a retry of"), ("retried_as", "Retried as")):
    if record.get(key):
        st.markdown(f"{label} [`{record[key]}`](/status?task={record[key]}).")
if record.get("error"):
    st.error(record["error"])
    if record.get("traceback"):
        with st.expander("Traceback"):
            st.code(record["traceback"], language="text")
if state == "failed" and not record.get("retried_as") and actor.is_admin:
    if st.button("Retry", icon=":material/replay:", key="status_retry",
                 disabled=events.decode_args(record.get("args")) is None):
        try:
            fixes.retry_task(get_backend(), actor, task_id)
        except (LookupError, ValueError) as exc:
            st.error(str(exc))
        else:
            st.rerun()  # the record now links to the new task
if "result" in record:
    st.markdown("**Result**")
    result = record["result"]
    st.json(result if isinstance(result, dict | list) else json.dumps(result))
