"""The monitoring page's parts: headline figures, queues, workers, tasks, services (failures and stalled
documents, which have buttons, are in ``fixes_view``).

Everything here reads through ``tasks.monitoring`` and ``tasks.system_status`` (the same reads the Prometheus
exporter makes); the figures that cost a key scan or a database query are cached for a few seconds.
"""

from __future__ import annotations

import re
import time
from datetime import datetime

import altair as alt
import pandas as pd
import streamlit as st

from infra.settings import get_settings
from rag import llm_breaker
from tasks import monitoring, system_status
from tasks.queues import QUEUES, QueueDepth
from tasks.registry import celery_redelivery_seconds
from telemetry import events, queue_history, retrievals

WINDOWS = {"1 h": 3600, "6 h": 6 * 3600, "24 h": 24 * 3600}
STATUS_COLOURS = {"online": "#2e9d5b", "offline": "#d64545", "stopped": "#8a8f98"}
STATE_COLOURS = {"succeeded": "#2e9d5b", "failed": "#d64545", "retry": "#e8a33d"}
# SQLAlchemy's wrapping around a database error, which pushes the actual message out of a one-line summary.
_ERROR_NOISE = re.compile(r"\(raised as a result of Query-invoked autoflush[^)]*\)\s*|\(Background on this error[^)]*\)")


# --- formatting ------------------------------------------------------------------------------------------------


def ago(ts: float | None) -> str:
    """'12 s ago', '5 min ago', '3 h ago' (or '—')."""
    if not ts:
        return "—"
    seconds = max(0, time.time() - float(ts))
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def size(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def plain(text: str, limit: int = 120) -> str:
    """One line of an error, safe in a label (no Markdown)."""
    text = _ERROR_NOISE.sub("", text or "").strip()
    line = text.splitlines()[0] if text else ""
    line = re.sub(r"[*_`\[\]<>#|~]", " ", line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def status_link(task_id: str) -> str:
    return f"/status?task={task_id}"


def _utc(seconds: pd.Series) -> pd.Series:
    return pd.to_datetime(seconds, unit="s", utc=True).dt.tz_convert(None)


# Vega's default time labels are a 12-hour clock, and without AM/PM at minute steps ("07:08" for 19:08): say the
# 24-hour time, and the date too in tooltips.
CLOCK = "%H:%M"
TIMESTAMP = "%Y-%m-%d %H:%M:%S"


def time_axis(field: str, title: str | None = "time (UTC)", label_format: str = CLOCK) -> alt.X:
    """A time x-axis labelled on a 24-hour clock."""
    return alt.X(f"{field}:T", title=title, axis=alt.Axis(format=label_format))


def time_tooltip(field: str, title: str = "time (UTC)") -> alt.Tooltip:
    return alt.Tooltip(f"{field}:T", title=title, format=TIMESTAMP)


def _whole_numbers(title: str, top: float) -> alt.Y:
    """A count axis from 0 (to at least 1, so an idle queue's flat line sits at the bottom)."""
    return alt.Y("value:Q", title=title, scale=alt.Scale(domain=[0, max(1, top)]),
                 axis=alt.Axis(format="~d", tickMinStep=1))


# --- cached reads of the slower figures -------------------------------------------------------------------------


@st.cache_data(ttl=30, show_spinner=False)
def _redis_figures() -> dict:
    return system_status.redis_figures()


@st.cache_data(ttl=30, show_spinner=False)
def _postgres_figures() -> dict:
    return system_status.postgres_figures()


@st.cache_data(ttl=30, show_spinner=False)
def _tgi_status() -> dict:
    return system_status.tgi_status()


@st.cache_data(ttl=10, show_spinner=False)
def _runtime_percentiles(seconds: int) -> list[dict]:
    return monitoring.runtime_percentiles(seconds)


# --- headline --------------------------------------------------------------------------------------------------


def headline(depths: list[QueueDepth], workers: list[dict], hour: dict, window: int) -> None:
    """Five numbers an admin reads first, and warnings for what needs a person."""
    online = [w for w in workers if w["status"] == "online"]
    offline = [w for w in workers if w["status"] == "offline"]
    waiting, running = sum(d.waiting for d in depths), sum(d.reserved for d in depths)
    finished = hour["all"]["succeeded"] + hour["all"]["failed"]
    cols = st.columns(5)
    cols[0].metric("Waiting", waiting, help="Messages in the queues that no worker has taken yet.")
    cols[1].metric("Running", running, help="Taken by a worker and not acknowledged: running, prefetched or "
                                           "waiting for a retry.")
    cols[2].metric("Workers online", len(online),
                   delta=f"{len(offline)} offline" if offline else None, delta_color="inverse")
    cols[3].metric("Finished last hour", finished, help=f"{finished / 60:.1f} per minute")
    cols[4].metric("Failed last hour", hour["all"]["failed"],
                   delta=f"{hour['all']['retry']} retries" if hour["all"]["retry"] else None, delta_color="off")
    consumed = {q for w in online for q in w["queues"].split(",") if q}
    for depth in depths:
        if depth.waiting and depth.queue not in consumed:
            st.warning(f"**{depth.waiting}** task(s) wait on the **{depth.queue}** queue and no online worker "
                       f"consumes it. Start one: `kbchat worker --queues {depth.queue}`.", icon=":material/warning:")
    lost_summary(monitoring.lost_workers([dict(w, current=list(w["current"])) for w in offline]))


def lost_summary(lost: list[dict]) -> None:
    """Workers whose heartbeat lapsed, in one collapsed line; inside, what each held and what becomes of it."""
    if not lost:
        return
    recent = sum(time.time() - (w["last_heartbeat"] or 0) < monitoring.LOST_SHOWN_SECONDS for w in lost)
    label = f"{recent} worker{'s' if recent != 1 else ''} lost in the last hour"
    older = len(lost) - recent
    if older:
        label += f" · {older} earlier, still holding work"
    with st.expander(label, icon=":material/heart_broken:"):
        for worker in lost:
            st.markdown(lost_sentence(worker))


def lost_sentence(worker: dict) -> str:
    """What is true about one lost worker's work: which tasks come back, and when."""
    settings = get_settings()
    held = worker["held"]
    fates = {fate: sum(t["fate"] == fate for t in held) for fate in ("finished", "restarted", "taken over", "pending")}
    text = (f"**{worker['id']}** ({worker['queues'] or 'no queues'}) stopped sending heartbeats "
            f"{ago(worker['last_heartbeat'])}: killed, crashed or cut off. ")
    if held:
        done = ", ".join(f"{n} {fate}" for fate, n in fates.items() if n and fate != "pending")
        text += f"It was running {len(held)} task(s)" + (f" ({done})" if done else "") + ". "
    else:
        text += "It was running no task. "
    ingest = sum(t["fate"] == "pending" and t["name"].startswith("ingest.") for t in held)
    if worker["claims"] or ingest:
        text += (f"The reconciler (every {settings.reconcile_interval_seconds} s, and at every worker start) starts "
                 f"the {worker['claims'] or ingest} document(s) or part(s) it held again once its heartbeat is "
                 f"{settings.heartbeat_ttl_seconds} s old. ")
    if any(t["fate"] == "pending" and t["name"] == "chat.answer" for t in held):
        text += "Questions it was answering were told their worker stopped; ask them again. "
    if fates["pending"]:
        if worker["backend"] == "dramatiq":
            text += (f"Dramatiq puts its unacknowledged messages back in the queue once its heartbeat is "
                     f"{settings.dramatiq_heartbeat_timeout_seconds} s old; ")
        else:
            text += ("Celery puts its unacknowledged messages back in the queue after the visibility timeout "
                     f"({celery_redelivery_seconds() / 60:.0f} min); ")
        text += "a task already restarted then stands down."
    else:
        text += "Nothing it held is left: this line goes once it is an hour old."
    return text





# --- queues ----------------------------------------------------------------------------------------------------


def queues(depths: list[QueueDepth], backend: str, window: int) -> None:
    """Depth per queue now, its history as a chart, and any messages left on the other backend."""
    dramatiq = backend == "dramatiq"
    rows = []
    for depth in depths:
        row = {"queue": depth.queue, "waiting": depth.waiting, "running": depth.reserved}
        if dramatiq:
            row |= {"delayed (retry backoff)": depth.delayed, "dead-lettered": depth.dead}
        else:
            row["waiting by priority"] = " · ".join(f"p{p}: {n}" for p, n in depth.by_priority.items() if n) or "—"
        rows.append(row)
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.caption(
        "Dramatiq: *running* = taken by a worker, not acknowledged; *delayed* = retries waiting out their backoff; "
        "dead-lettered messages are kept a week." if dramatiq else
        "Celery: *waiting* counts the queue's list and its priority sub-queues; *running* = delivered to a worker "
        "and not acknowledged (running, prefetched, or waiting out a retry countdown)."
    )
    history = queue_history.queue_history(window)
    if len(history) >= 2:
        frame = pd.DataFrame(history)
        frame["time"] = _utc(frame["ts"])
        columns = {f"{q}.waiting": q for q in QUEUES if f"{q}.waiting" in frame}
        long = frame.rename(columns=columns).melt(id_vars="time", value_vars=list(columns.values()),
                                                  var_name="queue", value_name="value")
        chart = alt.Chart(long).mark_line(interpolate="step-after").encode(
            x=time_axis("time"), y=_whole_numbers("waiting", long["value"].max()),
            color=alt.Color("queue:N", sort=list(QUEUES)), tooltip=[time_tooltip("time"), "queue:N", "value:Q"])
        st.altair_chart(chart, width="stretch")
    else:
        st.caption("The depth history fills in as workers run (a sample every "
                   f"{queue_history.SAMPLE_SECONDS} s, kept a day).")
    other = "celery" if dramatiq else "dramatiq"
    leftovers = [d for d in monitoring.queue_depths(other) if d.pending or d.dead]
    if leftovers:
        detail = ", ".join(f"{d.queue}: {d.pending}" for d in leftovers)
        st.info(f"Messages sit on the **{other}** backend's queues ({detail}), but this app runs on {backend}: "
                f"they run only when {other} workers are started.", icon=":material/swap_horiz:")


# --- workers ---------------------------------------------------------------------------------------------------


def workers_table(workers: list[dict], show_stopped: bool) -> None:
    rows = []
    for worker in workers:
        if worker["status"] == "stopped" and not show_stopped:
            continue
        current = worker["current"]
        rows.append({
            "status": worker["status"],
            "last heartbeat": ago(worker["last_heartbeat"]),
            "worker": worker["id"],
            "host": worker["host"],
            "pid": worker["pid"],
            "backend": worker["backend"],
            "queues": worker["queues"],
            "concurrency": worker["concurrency"],
            # An offline worker's last tasks: what it was running when it went silent.
            "current task": ", ".join(
                f"{t['name']} ({time.time() - float(t['started_at'] or time.time()):.0f} s)" for t in current
            ),
            "open": status_link(current[0]["id"]) if current else None,
            "processed": worker["processed"],
            "failed": worker["failed"],
        })
    if not rows:
        st.info("No worker has sent a heartbeat in the last day. Start one: `kbchat worker`.",
                icon=":material/engineering:")
        return
    frame = pd.DataFrame(rows)
    styled = frame.style.map(lambda status: f"color: {STATUS_COLOURS.get(status, 'inherit')}; font-weight: 600",
                             subset=["status"])
    st.dataframe(
        styled, hide_index=True, width="stretch",
        column_config={"open": st.column_config.LinkColumn("task", display_text="status page"),
                       "pid": st.column_config.NumberColumn("pid", format="%d")},
    )


# --- tasks -----------------------------------------------------------------------------------------------------


def task_tables(hour: dict, day: dict, window: int, window_label: str) -> None:
    """Counts by state for the last hour and day, throughput per minute, run-time percentiles."""
    names = sorted((set(hour) | set(day)) - {"all"})
    counts = pd.DataFrame(
        [{"task": name, **{f"{s} (1 h)": hour.get(name, {}).get(s, 0) for s in events.STATES},
          **{f"{s} (24 h)": day.get(name, {}).get(s, 0) for s in events.STATES}}
         for name in ["all", *names]]
    )
    left, right = st.columns(2)
    with left:
        st.markdown("**Last hour**")
        st.dataframe(counts[["task", *[c for c in counts if c.endswith("(1 h)")]]].rename(
            columns=lambda c: c.replace(" (1 h)", "")), hide_index=True, width="stretch")
    with right:
        st.markdown("**Last 24 hours**")
        st.dataframe(counts[["task", *[c for c in counts if c.endswith("(24 h)")]]].rename(
            columns=lambda c: c.replace(" (24 h)", "")), hide_index=True, width="stretch")

    bucket = 60 if window <= 3600 else 300 if window <= 6 * 3600 else 1200
    points = monitoring.throughput(window, bucket)
    st.markdown(f"**Throughput** (tasks per minute, last {window_label})")
    frame = pd.DataFrame(points)
    frame["time"] = _utc(frame["minute"])
    long = frame.melt(id_vars="time", value_vars=list(STATE_COLOURS), var_name="state", value_name="value")
    chart = alt.Chart(long).mark_bar().encode(
        x=time_axis("time"),
        y=alt.Y("value:Q", title="per minute", stack=True, scale=alt.Scale(domainMin=0)),
        color=alt.Color("state:N", scale=alt.Scale(domain=list(STATE_COLOURS), range=list(STATE_COLOURS.values()))),
        tooltip=[time_tooltip("time"), "state:N", alt.Tooltip("value:Q", format=".1f")],
    )
    st.altair_chart(chart, width="stretch")

    st.markdown(f"**Run time** of succeeded tasks, last {window_label}")
    percentiles = _runtime_percentiles(window)
    if not percentiles:
        st.caption("No task finished in this window.")
        return
    seconds = st.column_config.NumberColumn(format="%.2f s")
    st.dataframe(pd.DataFrame(percentiles), hide_index=True, width="stretch",
                 column_config={k: seconds for k in ("mean", "p50", "p90", "p95", "p99", "max")})


# --- services --------------------------------------------------------------------------------------------------


def services(window: int, window_label: str) -> None:
    tgi_col, pg_col, redis_col = st.columns(3)
    with tgi_col:
        st.markdown("**Generation server**")
        tgi = _tgi_status()
        if not tgi["configured"]:
            st.info("Not configured — answers are extractive (quoted passages, no language model). "
                    "Set `KBCHAT_TGI_URL` to use one.", icon=":material/format_quote:")
        else:
            (st.success if tgi["ok"] else st.error)(
                f"{'Healthy' if tgi['ok'] else 'Not healthy'}: {tgi['detail']} in {tgi['response_ms']:.0f} ms",
                icon=":material/dns:")
            st.caption(f"{tgi['url']} · model **{tgi['model_id'] or '?'}** · version {tgi['version'] or '?'}")
            circuit = llm_breaker.circuit_state()
            if circuit["open"]:
                st.warning(f"Breaker open: questions are answered from the passages without asking the model for "
                           f"{circuit['seconds_left']:.0f} s more ({plain(circuit['reason'], 160)}).",
                           icon=":material/power_off:")
            elif circuit["failures"]:
                st.caption(f"{circuit['failures']} question(s) in a row found the model unavailable.")
            if tgi["limits"]:
                st.dataframe(pd.DataFrame([{"limit": k, "value": v} for k, v in tgi["limits"].items()]),
                             hide_index=True, width="stretch")
        empty = retrievals.empty_retrievals(window)
        st.metric(f"Empty retrievals, last {window_label}",
                  "n.a." if empty["rate"] is None else f"{empty['rate']:.0%}",
                  help=f"{empty['empty']} of {empty['answers']} questions found no relevant passage "
                       f"({empty['total']} since Redis started).")
    with pg_col:
        st.markdown("**PostgreSQL**")
        pg = _postgres_figures()
        a, b, c = st.columns(3)
        a.metric("Bases", pg["knowledge_bases"], help="Knowledge bases")
        b.metric("Documents", pg["documents"])
        c.metric("Chunks", f"{pg['chunks']:,}")
        st.caption(f"Database {size(pg['database_bytes'])} · documents by status: " + (
            ", ".join(f"{k} {v}" for k, v in sorted(pg["documents_by_status"].items())) or "none"))
    with redis_col:
        st.markdown("**Redis**")
        r = _redis_figures()
        if r["maxmemory"]:
            share = r["used_memory"] / r["maxmemory"]
            st.progress(min(1.0, share), text=f"Memory {size(r['used_memory'])} of {size(r['maxmemory'])} "
                                              f"({share:.0%}, policy {r['maxmemory_policy']})")
        else:
            st.metric("Memory used", size(r["used_memory"]), help="No maxmemory set: Redis may use all the host's.")
        a, b = st.columns(2)
        a.metric("Keys", f"{r['keys']:,}")
        b.metric("Cache hit ratio", "n.a." if r["hit_ratio"] is None else f"{r['hit_ratio']:.0%}",
                 help=f"keyspace hits {r['hits']:,} / misses {r['misses']:,} since Redis started")
        results = r["result_keys"]
        st.caption(
            f"Task-result keys: Celery {results['celery']:,} · Dramatiq {results['dramatiq']:,} · kbchat records "
            f"{results['kbchat']:,}" + ("" if r["result_keys_complete"] else " (first million keys scanned)")
            + f" · evicted keys {r['evicted_keys']:,} · clients {r['connected_clients']}"
        )
        st.caption(f"Figures cached up to 30 s · read {datetime.now():%H:%M:%S}")
    tables, indexes = st.columns([3, 2])
    with tables:
        st.markdown("**PostgreSQL tables**")
        st.dataframe(pd.DataFrame([{"table": t["name"], "rows": t["rows"], "data": size(t["data_bytes"]),
                                    "indexes": size(t["index_bytes"]), "total": size(t["total_bytes"])}
                                   for t in pg["tables"]]), hide_index=True, width="stretch")
    with indexes:
        st.markdown("**Largest indexes**")
        st.dataframe(pd.DataFrame([{**i, "bytes": size(i["bytes"])} for i in pg["indexes"]]),
                     hide_index=True, width="stretch")
