"""Users and groups (admins): accounts with their role, groups and last sign-in; add, disable, reset, group."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from rag.access import Forbidden, NotFound
from streamlit_app import auth, components
from usecases import accounts

st.title("Users and groups")
components.require_services()
actor = auth.actor()
auth.require_admin(actor)

users = accounts.list_users(actor)
groups = accounts.list_groups(actor)
usernames = [u["username"] for u in users]

users_tab, groups_tab = st.tabs([f"Users ({len(users)})", f"Groups ({len(groups)})"])

with users_tab:
    st.dataframe(
        pd.DataFrame(users)[["username", "display_name", "role", "disabled", "groups", "last_login_at", "created_at"]],
        hide_index=True, width="stretch",
        column_config={"display_name": "Name", "last_login_at": "Last sign-in", "created_at": "Created"},
    )
    with st.form("users_add", clear_on_submit=True):
        st.markdown("**Add a user**")
        left, middle, right = st.columns([2, 2, 1])
        name = left.text_input("Username", key="users_new_name")
        display = middle.text_input("Display name", key="users_new_display")
        role = right.selectbox("Role", ("analyst", "admin"), key="users_new_role")
        if st.form_submit_button("Add", type="primary"):
            try:
                created, password = accounts.add_user(actor, username=name, role=role, display_name=display)
            except (ValueError, Forbidden) as exc:
                st.error(str(exc))
            else:
                st.success(f"Created {created['username']}. Their password, shown this once — pass it on safely:")
                st.code(password, language=None)
    with st.form("users_change"):
        st.markdown("**Change a user**")
        who = st.selectbox("User", usernames, key="users_change_who")
        action = st.radio("Action", ("Disable", "Enable", "Make admin", "Make analyst", "Set a new random password"),
                          horizontal=True, key="users_change_action")
        if st.form_submit_button("Apply"):
            try:
                if action in ("Disable", "Enable"):
                    accounts.set_disabled(actor, username=who, disabled=action == "Disable")
                    st.success(f"{who}: {action.lower()}d" + (" — their sessions ended." if action == "Disable" else "."))
                elif action.startswith("Make"):
                    accounts.set_role(actor, username=who, role=action.split()[-1])
                    st.success(f"{who} is now {action.split()[-1]}.")
                else:
                    password = accounts.reset_password(actor, username=who)
                    st.success(f"New password for {who} (shown once; their sessions ended):")
                    st.code(password, language=None)
            except (ValueError, NotFound, Forbidden) as exc:
                st.error(str(exc))

with groups_tab:
    for group in groups:
        st.markdown(f"**@{components.plain(group['name'])}** — {components.plain(', '.join(group['members'])) or 'no members'}")
    with st.form("groups_add", clear_on_submit=True):
        new_group = st.text_input("New group", key="groups_new")
        if st.form_submit_button("Create group"):
            try:
                accounts.add_group(actor, name=new_group)
                st.rerun()
            except (ValueError, Forbidden) as exc:
                st.error(str(exc))
    if groups:
        with st.form("groups_member"):
            left, right, act = st.columns([2, 2, 1], vertical_alignment="bottom")
            group = left.selectbox("Group", [g["name"] for g in groups], key="groups_member_group")
            member = right.selectbox("User", usernames, key="groups_member_user")
            add = act.radio("", ("Add", "Remove"), key="groups_member_action", label_visibility="collapsed")
            if st.form_submit_button("Apply"):
                try:
                    accounts.set_membership(actor, group=group, username=member, member=add == "Add")
                    st.rerun()
                except (ValueError, NotFound, Forbidden) as exc:
                    st.error(str(exc))
