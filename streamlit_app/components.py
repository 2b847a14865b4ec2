"""Shared widgets: knowledge-base picker, status badges, progress rows, citation cards, the sidebar."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from urllib.parse import urlsplit

import streamlit as st
from markdown_it import MarkdownIt

from infra.discovery import ServiceUnavailable, service_urls
from infra.settings import get_settings
from rag.access import Actor
from rag.citations import citation_label
from rag.library import safe_filename
from streamlit_app import auth
from usecases.documents import document_original, page_view
from usecases.knowledge_bases import create_kb, list_kbs

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


def kb_picker(*, key: str, allow_create: bool, min_level: str = "viewer") -> tuple[int, str] | None:
    """Choose one of the bases the signed-in user may use at ``min_level`` (shared across pages); optionally
    create one in place."""
    levels = ("viewer", "editor", "owner")
    bases = [(kb["id"], kb["name"]) for kb in list_kbs(auth.actor())
             if levels.index(kb["level"]) >= levels.index(min_level)]
    names = [name for _, name in bases]
    options = names + ([NEW_KB_LABEL] if allow_create else [])
    if not options:
        st.info("No knowledge base is shared with you yet. Create one on the **Upload** page, or ask a colleague to "
                "share theirs.", icon=":material/info:")
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
        _, name = create_kb(auth.actor(), name=st.session_state.get(f"{key}_new", ""))
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


_renderer = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
_renderer.disable("image")  # ![x](url) stays text: no image of a document is fetched by a reader's browser


def _link_as_text(renderer, tokens, idx, options, env) -> str:
    """A link in untrusted text is shown, not followed: its label, then where it points, as plain text."""
    href = tokens[idx].attrGet("href") or ""
    target = urlsplit(href).netloc or href
    env.setdefault("links", []).append(target)
    return ""


def _link_close(renderer, tokens, idx, options, env) -> str:
    target = env["links"].pop() if env.get("links") else ""
    return f' <span class="kbchat-link">({html.escape(target)})</span>' if target else ""


_renderer.add_render_rule("link_open", _link_as_text)
_renderer.add_render_rule("link_close", _link_close)


def safe_markdown(text: str) -> str:
    """Untrusted text (a document's passage, a model's answer, a file name) as inert HTML: rendered by a real
    Markdown parser with raw HTML and images off, links shown as text; show it with ``show_untrusted``."""
    return _renderer.render(text or "", {}).strip()


def show_untrusted(text: str, container=st) -> None:
    """Render untrusted text inertly (see ``safe_markdown``) in ``container`` (``st`` or a placeholder)."""
    container.markdown(safe_markdown(text), unsafe_allow_html=True)


def plain(text: str) -> str:
    """Untrusted text to put inside a Markdown string of the page's own: every character Markdown (and GFM's
    autolinks) would act on is escaped, so it shows literally (no links, images, emphasis, HTML or maths)."""
    text = (text or "").replace("\n", " ")
    escaped = "".join("\\" + ch if ch in _ACTIVE else ch for ch in text)
    return re.sub(r"(?i)(:)(?=//)|(?<=www)(\.)", lambda m: "\\" + m.group(0), escaped)


_ACTIVE = set("\\`*_[]()<>!|~$&#{}")


def citation_cards(citations: list[dict], key: str = "cite") -> None:
    """One expandable card per cited passage: document, page, score, the passage, and a button that opens the page
    it cites (``key`` keeps the buttons of several answers apart)."""
    if not citations:
        return
    uncited = all(c.get("cited") is False for c in citations)
    st.caption("Passages given to the model; the answer cites none" if uncited else "Sources")
    for citation in citations:
        with st.expander(f"[{citation['n']}] {citation_label(citation)} · score {citation['score']:.2f}"):
            show_untrusted(citation["text"])
            open_page_button(citation, key=f"{key}_{citation.get('n')}_{citation.get('chunk_id')}")


def open_page_button(hit: dict, *, key: str) -> None:
    """"Open page" for a citation or search hit: the cited page (or passage in context) in a dialog."""
    if hit.get("document_id") is None:
        return
    label = f"Open p. {hit['page']}" if hit.get("page") else "Open in context"
    if st.button(label, key=f"open_{key}", icon=":material/open_in_full:"):
        cited_page(hit)


@st.dialog("Cited page", width="large")
def cited_page(hit: dict) -> None:
    """The page a citation cites, the passage highlighted; and the original file (only for readers of its base)."""
    try:
        view = page_view(auth.actor(), document_id=int(hit["document_id"]), page=hit.get("page"),
                         chunk_id=hit.get("chunk_id"))
    except (LookupError, ValueError) as exc:
        st.error(str(exc))
        return
    st.markdown(f"**{plain(view['filename'])}**" + (f" · page {view['page']} of {view['pages']}" if view.get("page")
                                                   and view.get("pages") else ""))
    if view["kind"] == "image":
        if not view["highlighted"]:
            st.caption("The passage could not be located on the page: the whole page is shown.")
        st.image(view["png"], width="stretch")
    else:
        st.caption(view.get("locator") or "")
        if view["before"]:
            show_untrusted(view["before"])
        st.markdown(f'<div class="kbchat-cited" style="background:#fff6cc;border-left:4px solid #e6a000;'
                    f'padding:.4rem .7rem">{safe_markdown(view["passage"])}</div>', unsafe_allow_html=True)
        if view["after"]:
            show_untrusted(view["after"])
    try:
        filename, mime, data = document_original(auth.actor(), document_id=int(hit["document_id"]))
    except LookupError as exc:
        st.caption(str(exc))
        return
    st.download_button("Download original", data=data, file_name=safe_filename(filename), mime=mime,
                       icon=":material/download:", key=f"download_{hit['document_id']}")


def sidebar(actor: Actor | None = None) -> None:
    settings = get_settings()
    with st.sidebar:
        if actor is not None:
            st.caption(f"Signed in as **{plain(actor.username)}** ({actor.role})")
            st.link_button("Sign out", "/logout", icon=":material/logout:")
        st.caption(f"Task backend: **{settings.task_backend}** · embeddings: **{settings.embedding_model or 'all-MiniLM-L6-v2'}**")
