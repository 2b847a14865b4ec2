"""The chat page's parts: the conversations sidebar, past messages, and an answer streaming in from a worker.

An answer is rendered from the whole text so far on every update (never token by token), so Markdown that
only becomes an image or a link once its last token arrives is neutralised like everything else.
"""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from infra.settings import get_settings
from streamlit_app import auth, components, export
from telemetry.answer_streams import read_answer, request_stop
from usecases.asking import (
    check_answer_stream,
    conversation_messages,
    delete_conversation,
    list_conversations,
    rename_conversation,
)
from usecases.feedback import my_ratings, rate

MODE_CAPTIONS = {
    "extractive": "Extractive answer: sentences quoted from the passages below, no language model.",
    "cache": "From the answer cache: this question was answered before and the knowledge base has not changed.",
}
RENDER_EVERY_SECONDS = 0.05


def conversation_sidebar(kb_id: int, conversation_key: str) -> set[int]:
    """New conversation, and the base's conversations to reopen, rename or delete; returns the ids listed."""
    if st.button("New conversation", icon=":material/add_comment:", width="stretch", key="chat_new"):
        st.session_state.pop(conversation_key, None)
        st.rerun()
    conversations = [(c["id"], c["title"], c["updated_at"]) for c in list_conversations(auth.actor(), kb_id=kb_id)]
    if not conversations:
        return set()
    st.caption("Conversations")
    current = st.session_state.get(conversation_key)
    for conversation_id, title, updated_at in conversations:
        open_col, menu_col = st.columns([5, 1], vertical_alignment="center")
        label = title if len(title) <= 40 else title[:39] + "…"
        if open_col.button(label, key=f"chat_open_{conversation_id}", width="stretch",
                           help=f"{title} · {updated_at:%Y-%m-%d %H:%M}",
                           type="primary" if conversation_id == current else "tertiary"):
            st.session_state[conversation_key] = conversation_id
            st.rerun()
        with menu_col.popover("", icon=":material/more_vert:"):
            new_title = st.text_input("Title", value=title, key=f"chat_title_{conversation_id}", max_chars=200)
            if st.button("Rename", key=f"chat_rename_{conversation_id}", disabled=not new_title.strip()):
                rename_conversation(auth.actor(), conversation_id=conversation_id, title=new_title)
                st.rerun()
            if st.button("Delete", key=f"chat_delete_{conversation_id}", icon=":material/delete:"):
                delete_conversation(auth.actor(), conversation_id=conversation_id)
                if current == conversation_id:
                    st.session_state.pop(conversation_key, None)
                st.rerun()
    return {conversation_id for conversation_id, _, _ in conversations}


def render_history(conversation_id: int | None) -> set[str]:
    """The conversation's messages; returns the task ids whose answers are already saved."""
    if conversation_id is None:
        return set()
    try:
        history = [(m.role, m.content, m.citations, m.mode, m.task_id, m.id)
                   for m in conversation_messages(auth.actor(), conversation_id=conversation_id)]
    except LookupError:  # deleted, or not this user's
        return set()
    ratings = my_ratings(auth.actor(), task_ids=[t for r, *_, t, _ in history if r == "assistant" and t])
    for role, content, citations, mode, task_id, message_id in history:
        with st.chat_message(role):
            if role == "assistant":
                components.show_untrusted(content)
                if mode in MODE_CAPTIONS:
                    st.caption(MODE_CAPTIONS[mode])
                components.citation_cards(citations, key=f"cite_{task_id}")
                export.copy_answer(content, key=f"chat_copy_{message_id}")
                if task_id:
                    feedback_row(task_id, ratings.get(task_id))
            else:
                components.show_untrusted(content)
    return {task_id for role, *_, task_id, _ in history if role == "assistant" and task_id}


def feedback_row(task_id: str, given: dict | None) -> None:
    """Thumbs up or down on an answer, with an optional comment; stored with what the answer was built from."""
    key = f"chat_rate_{task_id}"
    if given is not None and key not in st.session_state:
        st.session_state[key] = 1 if given["rating"] > 0 else 0
    left, right = st.columns([1, 5], vertical_alignment="center")
    with left:
        choice = st.feedback("thumbs", key=key)
    if choice is None:
        return
    rating = 1 if choice == 1 else -1
    comment_key = f"chat_comment_{task_id}"
    with right.popover("Add a comment" if not (given and given["comment"]) else "Your comment",
                       icon=":material/chat:"):
        comment = st.text_area("What was right or wrong?", key=comment_key, value=(given or {}).get("comment", ""),
                               max_chars=2000)
        save = st.button("Save comment", key=f"chat_comment_save_{task_id}")
    if given is None or given["rating"] != rating or save:
        rate(auth.actor(), task_id=task_id, rating=rating, comment=comment if save else (given or {}).get(
            "comment", ""))
        if save:
            st.toast("Thanks: your comment is saved with the answer.")


def stream_answer(task_id: str) -> dict[str, Any]:
    """Follow the answer's stream (from its start, so a rerun picks it up again) and render it as it arrives.

    Returns what happened: {"state": "done" | "error" | "timeout", "code", "message"}.
    """
    settings = get_settings()
    check_answer_stream(auth.actor(), task_id=task_id)  # someone else's answer reads as an unknown task
    status = st.empty()
    body = st.empty()
    stop = st.empty()
    stop.button("Stop", key=f"chat_stop_{task_id}", icon=":material/stop_circle:", on_click=request_stop,
                args=(task_id,), help="Stop generating this answer")
    rendered_at = 0.0

    def render(piece: str, text: str) -> None:
        nonlocal rendered_at
        if time.monotonic() - rendered_at >= RENDER_EVERY_SECONDS:
            components.show_untrusted(text + " ▌", body)
            rendered_at = time.monotonic()

    try:
        # The worker itself gives up at the first-token limit; silence beyond that means no worker.
        read = read_answer(task_id, timeout=settings.llm_first_token_timeout_seconds + 30,
                           on_status=lambda message: status.info(message, icon=":material/hourglass_top:"),
                           on_meta=lambda meta: status.empty(), on_token=render)
    except TimeoutError:
        status.empty()
        stop.empty()
        return {"state": "timeout", "code": "no_worker", "message": ""}
    status.empty()
    stop.empty()
    components.show_untrusted(read.text, body)
    if read.error is not None:
        return {"state": "error", **read.error}
    for notice in read.notices:
        st.warning(notice, icon=":material/info:")
    if read.mode in MODE_CAPTIONS and not read.done.get("no_answer"):
        st.caption(MODE_CAPTIONS[read.mode])
    components.citation_cards(read.citations, key=f"cite_{task_id}")
    if read.text.strip():
        export.copy_answer(read.text, key=f"chat_copy_{task_id}")
    if read.text and not read.done.get("no_answer"):
        feedback_row(task_id, None)
    return {"state": "done"}
