"""My account: who I am, my groups, and a new password (every session of mine ends with it)."""

from __future__ import annotations

import streamlit as st

from rag.access import Forbidden
from streamlit_app import auth, components
from usecases import accounts

st.title("My account")
components.require_services()
actor = auth.actor()
st.markdown(f"Signed in as **{components.plain(actor.username)}** · role **{actor.role}**")
if actor.user_id is None:
    st.stop()

with st.form("account_password", clear_on_submit=True):
    st.markdown("**Change my password**")
    current = st.text_input("Current password", type="password", key="account_current")
    new = st.text_input("New password (at least 10 characters)", type="password", key="account_new")
    again = st.text_input("New password again", type="password", key="account_again")
    if st.form_submit_button("Change password", type="primary"):
        if new != again:
            st.error("The two new passwords differ.")
        else:
            try:
                accounts.set_password(actor, username=actor.username, password=new, current_password=current)
            except (ValueError, Forbidden) as exc:
                st.error(str(exc))
            else:
                st.success("Password changed. Every session of yours has ended: sign in again with the new one.")
                st.link_button("Sign in", "/login")
