"""The monitoring page's parts that act: recent failures with a retry button each, retry-all for failed ingests,
stalled documents to re-enqueue (through ``usecases.fixes``), and the note that says what an action did."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from streamlit_app import auth
from streamlit_app.monitoring_view import ago, plain, status_link
from tasks import monitoring
from tasks.backend import get_backend
from usecases import fixes


def note(message: str, icon: str = ":material/check_circle:") -> None:
    st.session_state["mon_note"] = (message, icon)


def show_note() -> None:
    """The outcome of the last action, once."""
    shown = st.session_state.pop("mon_note", None)
    if shown:
        st.success(shown[0], icon=shown[1])


def _retry(task_id: str, name: str) -> None:
    try:
        new_id = fixes.retry_task(get_backend(), auth.actor(), task_id)
    except (LookupError, ValueError) as exc:
        note(str(exc), ":material/error:")
    else:
        note(f"{name} queued again as task {new_id}.")


def _retry_ingests() -> None:
    ids = fixes.retry_failed_ingests(get_backend(), auth.actor())
    note(f"{len(ids)} failed document(s) queued again.")


def _requeue(ids: list[int]) -> None:
    ids = st.session_state.get("mon_stalled_pick") or ids
    try:
        fixes.requeue_documents(get_backend(), auth.actor(), ids)
        note(f"{len(ids)} document(s) queued again.")
    except LookupError as exc:
        note(str(exc), ":material/error:")


def failures(failed_documents: int) -> None:
    """Recent failed tasks with error and traceback, one retry button each, and retry-all for failed ingests."""
    st.button(f"Retry all failed ingests ({failed_documents})", icon=":material/replay:",
              disabled=not failed_documents, key="mon_retry_ingests", on_click=_retry_ingests)
    rows = monitoring.recent_failures(limit=20)
    if not rows:
        st.success("No task failed recently.", icon=":material/task_alt:")
        return
    for row in rows:
        label = f"{row['name']} · {plain(row['error'], 90)} · {ago(row['failed_at'])}"
        with st.expander(label, icon=":material/error:"):
            st.markdown(f"Task [`{row['task_id']}`]({status_link(row['task_id'])}) on queue **{row['queue'] or '—'}**"
                        f" · worker `{row['worker'] or '—'}` · retries {row['retries']}")
            if row["args"]:
                st.caption(f"Arguments: `{plain(row['args'], 300)}`")
            st.code(row["error"] or "(no error recorded)", language="text", wrap_lines=True)
            if row["traceback"]:
                st.code(row["traceback"], language="python")
            if row["retried_as"]:
                st.markdown(f"Retried as [`{row['retried_as']}`]({status_link(row['retried_as'])}).")
            st.button("Retry", key=f"mon_retry_{row['task_id']}", icon=":material/replay:",
                      disabled=not row["retryable"], on_click=_retry, args=(row["task_id"], row["name"]),
                      help=None if row["retryable"] else "The task's record expired or has no arguments.")


# --- stalled documents -----------------------------------------------------------------------------------------


def stalled_documents(minutes: int) -> None:
    rows = monitoring.stalled_documents(minutes * 60)
    if not rows:
        st.success(f"No document has been stuck in a non-final state for more than {minutes} min, and no "
                   "document's worker is lost.", icon=":material/task_alt:")
        return
    lost = sum(bool(r["worker_state"]) for r in rows)
    if lost:
        st.info(f"{lost} document(s) lost their worker: the reconciler starts each again within a minute or two "
                "(or fails it once its attempts are used up). Re-enqueue starts them at once.",
                icon=":material/heart_broken:")
    frame = pd.DataFrame([
        {"id": r["id"], "knowledge base": r["kb"], "file": r["filename"], "status": r["status"],
         "progress": r["progress"], "attempts": r["attempts"], "worker": r["worker_state"] or "—",
         "unchanged for": ago(r["updated_at"].timestamp()),
         "uploaded": ago(r["created_at"].timestamp()), "task": r["task_state"],
         "task link": status_link(r["task_id"]) if r["task_id"] else None}
        for r in rows
    ])
    st.dataframe(frame, hide_index=True, width="stretch", column_config={
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
        "task link": st.column_config.LinkColumn("task link", display_text="status"),
    })
    names = {r["id"]: f"{r['filename']} ({r['kb']})" for r in rows}
    st.multiselect("Documents to re-enqueue", list(names), format_func=names.get, key="mon_stalled_pick",
                   placeholder="All shown")
    st.button("Re-enqueue", icon=":material/replay:", key="mon_requeue", on_click=_requeue, args=(list(names),))
