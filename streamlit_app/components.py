"""Shared widgets: knowledge-base picker, status badges, progress rows, citation cards, the sidebar."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import streamlit as st

from db.repositories import knowledge_bases as kb_repo
from infra.database import session_scope
from infra.discovery import ServiceUnavailable, service_urls
from infra.settings import get_settings
from rag.citations import citation_label
from usecases.knowledge_bases import create_kb

STATUS_BADGES = {
    "queued": ("gray", ":material/schedule:"),
    "parsing": ("blue", ":material/description:"),
    "ocr": ("blue", ":material/document_scanner:"),
    "chunking": ("blue", ":material/segment:"),
    "embedding": ("violet", ":material/memory:"),
    "storing": ("violet", ":material/database:"),
    "ready": ("green", ":material/check_circle:"),
    "failed": ("red", ":material/error:"),
    "duplicate": ("orange", ":material/content_copy:"),
    "rejected": ("red", ":material/block:"),
    # task states (the status and monitoring pages)
    "started": ("blue", ":material/play_circle:"),
    "retry": ("orange", ":material/replay:"),
    "succeeded": ("green", ":material/check_circle:"),
}


def require_services() -> None:
    """Stop the page with a plain message when the services are not there."""
    try:
        service_urls()
    except ServiceUnavailable as exc:
        st.error(str(exc), icon=":material/cloud_off:")
        st.stop()


NEW_KB_LABEL = "➕ New knowledge base…"


def kb_picker(*, key: str, allow_create: bool) -> tuple[int, str] | None:
    """Choose a knowledge base (shared across pages); optionally create one in place."""
    with session_scope() as session:
        bases = [(kb.id, kb.name) for kb in kb_repo.list_knowledge_bases(session=session)]
    names = [name for _, name in bases]
    options = names + ([NEW_KB_LABEL] if allow_create else [])
    if not options:
        st.info("No knowledge base yet. Create one on the **Upload** page.", icon=":material/info:")
        return None
    current = st.session_state.get("kb_name")
    index = options.index(current) if current in options else 0
    choice = st.selectbox("Knowledge base", options, index=index, key=key)
    if choice == NEW_KB_LABEL:
        # A form: typing the name and pressing Enter (or clicking Create) is one action, not two reruns.
        with st.form(f"{key}_form", border=False):
            st.text_input("Name of the new knowledge base", key=f"{key}_new", placeholder="e.g. Aviation reports",
                          max_chars=200)
            st.form_submit_button("Create", key=f"{key}_create", type="primary", on_click=_create_kb, args=(key,))
        if error := st.session_state.pop(f"{key}_error", None):
            st.error(error, icon=":material/error:")
        return None
    st.session_state["kb_name"] = choice
    return next((kb_id, name) for kb_id, name in bases if name == choice)


def _create_kb(key: str) -> None:
    """Create the base named in the picker's form and select it (a callback: it may set the picker's value)."""
    try:
        _, name = create_kb(name=st.session_state.get(f"{key}_new", ""))
    except ValueError as exc:
        st.session_state[f"{key}_error"] = str(exc)
        return
    st.session_state["kb_name"] = name
    st.session_state[key] = name
    st.session_state[f"{key}_new"] = ""


def status_badge(status: str) -> None:
    color, icon = STATUS_BADGES.get(status, ("gray", ":material/help:"))
    st.badge(status, color=color, icon=icon)


def elapsed(start: datetime | None, end: datetime | None = None) -> str:
    if start is None:
        return ""
    seconds = int(((end or datetime.now(UTC)) - start).total_seconds())
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def safe_markdown(text: str) -> str:
    """Document text as inert Markdown: no raw HTML (Streamlit escapes it) and no remote images or links."""
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"[image: \1]", text)
    text = re.sub(r"\[([^\]]+)\]\((?:https?|ftp|data):[^)]*\)", r"\1", text)
    # Reference definitions ("[1]: https://…") would turn citation markers and ![x][1] into remote links.
    text = re.sub(r"(?m)^( {0,3})\[([^\]]+)\]:", r"\1\\[\2]:", text)
    return text.replace("<", "&lt;")


def citation_cards(citations: list[dict]) -> None:
    """One expandable card per cited passage: document, page, score and the passage itself."""
    if not citations:
        return
    uncited = all(c.get("cited") is False for c in citations)
    st.caption("Passages given to the model; the answer cites none" if uncited else "Sources")
    for citation in citations:
        with st.expander(f"[{citation['n']}] {citation_label(citation)} · score {citation['score']:.2f}"):
            st.markdown(safe_markdown(citation["text"]))


def sidebar() -> None:
    settings = get_settings()
    with st.sidebar:
        st.caption(f"Task backend: **{settings.task_backend}** · embeddings: **{settings.embedding_model or 'all-MiniLM-L6-v2'}**")
