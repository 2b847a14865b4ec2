"""What askers said of the answers: the helpful rate over time and the worst-rated answers with what was
retrieved for them (owners of a base see theirs; admins everyone's)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from rag.access import Actor
from streamlit_app import components
from usecases.feedback import daily_rate, list_feedback


def feedback_panel(actor: Actor, *, kb_id: int | None = None, key: str = "fb") -> None:
    rows = list_feedback(actor, kb_id=kb_id, limit=500)
    if not rows:
        st.caption("No answer rated yet: askers rate answers with the thumbs under each one.")
        return
    helpful = sum(r["rating"] > 0 for r in rows)
    left, middle = st.columns(2)
    left.metric("Ratings", len(rows))
    middle.metric("Helpful", f"{helpful / len(rows):.0%}")
    days = pd.DataFrame(daily_rate(actor, kb_id=kb_id))
    if len(days) > 1:
        st.line_chart(days.set_index("day")[["helpful"]], height=180)
    st.markdown("**Rated not helpful, newest first**")
    worst = [r for r in rows if r["rating"] < 0][:20]
    if not worst:
        st.caption("None: every rated answer was rated helpful.")
    for row in worst:
        with st.expander(f"👎 {row['at'][:16].replace('T', ' ')} · {row['kb']} · {row['user']} · "
                         f"{row['question'][:80]}"):
            if row["comment"]:
                st.markdown(f"**Comment:** {components.plain(row['comment'])}")
            st.markdown(f"**Answer** ({row['mode'] or '?'}{', ' + row['model'] if row['model'] else ''})")
            components.show_untrusted(row["answer"])
            st.markdown("**Retrieved**")
            st.dataframe(pd.DataFrame(row["retrieved"]), hide_index=True, width="stretch")
    st.download_button("Export all as JSON", data=pd.DataFrame(rows).to_json(orient="records", force_ascii=False),
                       file_name="kbchat-feedback.json", mime="application/json", key=f"{key}_export")
