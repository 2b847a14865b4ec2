"""Audit log (admins): sign-ins, account, group and grant changes, base and document changes, questions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from streamlit_app import auth, components
from usecases.audit import ACTIONS, list_events

st.title("Audit log")
components.require_services()
actor = auth.actor()
auth.require_admin(actor)

spans = {"1 hour": timedelta(hours=1), "24 hours": timedelta(days=1), "7 days": timedelta(days=7),
         "30 days": timedelta(days=30), "1 year": timedelta(days=365)}
left, middle, right = st.columns(3)
span = left.selectbox("Since", list(spans), index=2, key="audit_span")
user = middle.text_input("User", key="audit_user", placeholder="any user")
kinds = sorted({a.split(".")[0] for a in ACTIONS})
action = right.selectbox("Action", ["any", *kinds], key="audit_action")
events = list_events(actor, since=datetime.now(UTC) - spans[span], username=user.strip() or None,
                     action=None if action == "any" else action, limit=1000)
st.caption(f"{len(events)} entr{'y' if len(events) == 1 else 'ies'}, newest first (at most 1,000 shown; "
           "`kbchat audit --json` exports them).")
if events:
    st.dataframe(
        pd.DataFrame([{**e, "details": ", ".join(f"{k}={v}" for k, v in e["details"].items())} for e in events])[
            ["at", "user", "action", "target", "kb_id", "client_addr", "details"]],
        hide_index=True, width="stretch",
        column_config={"at": "When (UTC)", "kb_id": "Base", "client_addr": "Address"},
    )
