"""Sharing (owners of a base, admins): who may use the base, at which level; add, change or remove grants."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from db.models import LEVELS
from rag.access import Forbidden, NotFound
from streamlit_app import auth, components
from usecases import accounts

st.title("Sharing")
components.require_services()
actor = auth.actor()
st.caption("viewer: ask, search, read documents and citations · editor: also upload, delete and re-index "
           "documents · owner: also settings, rename, delete the base and share it. Levels add up; a person gets "
           "the highest of their own grant and their groups'.")

picked = components.kb_picker(key="share_kb", allow_create=False, min_level="owner")
if picked is None:
    st.stop()
kb_id, kb_name = picked

try:
    grants = accounts.list_grants(actor, kb_id=kb_id)
except (NotFound, Forbidden) as exc:
    st.error(str(exc))
    st.stop()

st.subheader(f"Who may use “{components.plain(kb_name)}”")
if grants:
    st.dataframe(pd.DataFrame(grants)[["grantee", "kind", "level"]], hide_index=True, width="stretch",
                 column_config={"grantee": "User or @group", "kind": "Kind", "level": "Level"})

with st.form("share_add", border=True):
    st.markdown("**Share with someone, or change their level**")
    names = accounts.grantee_names(actor)
    left, right = st.columns([3, 1])
    grantee = left.selectbox("User or @group", names, index=None, placeholder="Choose a user or a group",
                             key="share_grantee")
    level = right.selectbox("Level", LEVELS, index=0, key="share_level")
    if st.form_submit_button("Share", type="primary", disabled=not names):
        if not grantee:
            st.error("Choose a user or a group first.")
        else:
            try:
                label = accounts.grant(actor, kb_id=kb_id, grantee=grantee, level=level)
            except (NotFound, Forbidden, ValueError) as exc:
                st.error(str(exc))
            else:
                st.toast(f"{label} is now {level}")
                st.rerun()

if grants:
    with st.form("share_remove", border=True):
        st.markdown("**Take back access**")
        removing = st.selectbox("User or @group", [g["grantee"] for g in grants], key="share_remove_who")
        if st.form_submit_button("Remove access"):
            try:
                accounts.revoke(actor, kb_id=kb_id, grantee=removing)
            except (NotFound, Forbidden, ValueError) as exc:
                st.error(str(exc))
            else:
                st.toast(f"{removing} no longer has access")
                st.rerun()
