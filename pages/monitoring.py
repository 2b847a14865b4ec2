"""Monitoring (admins): what is queued, who is working, what failed and why — with retry — on either backend."""

from __future__ import annotations

import streamlit as st

from db.repositories import monitoring as monitoring_repo
from infra.database import session_scope
from infra.settings import get_settings
from streamlit_app import auth, components, fixes_view, quality_view
from streamlit_app import monitoring_view as view
from tasks import monitoring
from telemetry import events

st.title("Monitoring")
components.require_services()
auth.require_admin(auth.actor())
backend = get_settings().task_backend

controls = st.columns([1, 1, 2, 3], vertical_alignment="bottom")
paused = controls[0].toggle("Pause", key="mon_paused", help="Stop refreshing (to read a traceback in peace).")
every = controls[1].selectbox("Refresh", [2, 5, 10, 30], index=1, key="mon_every",
                              format_func=lambda s: f"every {s} s", disabled=paused)
window_label = controls[2].segmented_control("Charts over", list(view.WINDOWS), default="1 h", key="mon_window",
                                             required=True)
controls[3].caption(f"Task backend **{backend}** · queue depth, workers and task events read live from Redis")
window = view.WINDOWS[window_label]


@st.fragment(run_every=None if paused else every)
def live() -> None:
    """Everything on the page that changes: re-read every few seconds unless paused."""
    monitoring.maybe_sample_queues()  # history keeps filling while someone watches, even with no worker up
    depths = monitoring.queue_depths(backend)
    workers = monitoring.workers()
    hour, day = events.task_counts(3600), events.task_counts(24 * 3600)
    fixes_view.show_note()
    view.headline(depths, workers, hour, window)

    queues_tab, workers_tab, tasks_tab, failures_tab, documents_tab, quality_tab, services_tab = st.tabs(
        ["Queues", "Workers", "Tasks", "Failures", "Stuck documents", "Quality", "Services"], key="mon_tab"
    )
    with queues_tab:
        view.queues(depths, backend, window)
    with workers_tab:
        view.workers_table(workers, show_stopped=False)
        st.caption(f"A worker is offline when its heartbeat (every {get_settings().heartbeat_interval_seconds} s) "
                   f"has not been renewed for {get_settings().heartbeat_ttl_seconds} s; a worker shut down cleanly "
                   f"leaves the list. An offline worker is listed for {monitoring.LOST_SHOWN_SECONDS // 3600} h, "
                   "and after that while work it held is unsettled.")
    with tasks_tab:
        view.task_tables(hour, day, window, window_label)
    with failures_tab:
        with session_scope() as session:
            failed_documents = len(monitoring_repo.failed_document_ids(session=session))
        fixes_view.failures(failed_documents)
    with documents_tab:
        minutes = st.number_input("Not moved for more than (minutes)", min_value=1, max_value=24 * 60, value=5,
                                  key="mon_stalled_minutes", width=260)
        fixes_view.stalled_documents(int(minutes))
    with quality_tab:
        quality_view.quality()
    with services_tab:
        view.services(window, window_label)


live()
