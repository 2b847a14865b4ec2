"""Who is signed in, for the pages: the session cookie checked against PostgreSQL on every run.

The middleware in ``streamlit_app.web`` already refused anyone without a session; checking again here ends a
page's use as soon as its session ends (logout elsewhere, the user disabled, a new password), not at the next
page load.
"""

from __future__ import annotations

import streamlit as st

from rag.access import Actor
from usecases import accounts

COOKIE = "kbchat_session"
# The in-process page tests (AppTest) have no browser to hold a cookie: they put a real session token here.
TEST_TOKEN_KEY = "_kbchat_session_token"


def _token() -> str | None:
    try:
        token = st.context.cookies.get(COOKIE)
    except Exception:
        token = None
    if not isinstance(token, str) or not token:
        token = st.session_state.get(TEST_TOKEN_KEY)
    return token if isinstance(token, str) and token else None


def _address() -> str:
    try:
        address = st.context.ip_address
    except Exception:
        return ""
    return address if isinstance(address, str) else ""


def current_actor() -> Actor | None:
    return accounts.actor_for_session(_token(), client_addr=_address())


def require_actor() -> Actor:
    """The signed-in user; otherwise the page says so, links to the sign-in form, and stops."""
    actor = current_actor()
    if actor is None:
        st.warning("Your session has ended. Sign in again to go on.")
        st.link_button("Sign in", "/login")
        st.stop()
    return actor


def require_admin(actor: Actor) -> None:
    """Admin pages refuse anyone else, also when opened by URL."""
    if not actor.is_admin:
        st.error("This page is for administrators.")
        st.stop()


_ACTOR_KEY = "_kbchat_actor"


def sign_in_page_run() -> Actor:
    """Check the session for this run (the entrypoint calls it before any page) and remember the actor for the
    page's ``actor()`` calls."""
    found = require_actor()
    st.session_state[_ACTOR_KEY] = found
    return found


def actor() -> Actor:
    """The actor this run was checked for (``sign_in_page_run``), else checked now."""
    found = st.session_state.get(_ACTOR_KEY)
    return found if isinstance(found, Actor) else require_actor()
