"""Ask: questions about one knowledge base; answers stream in from a chat worker, with cited pages."""

from __future__ import annotations

import streamlit as st

from streamlit_app import auth, chat_view, components, export
from tasks.backend import get_backend
from usecases.asking import ask
from usecases.documents import list_documents

st.title("Ask your documents")
components.require_services()

picked = components.kb_picker(key="chat_kb", allow_create=False)
if picked is None:
    st.stop()
kb_id, kb_name = picked

conversation_key = f"chat_conversation_{kb_id}"
pending_key = f"chat_pending_{kb_id}"  # the answer streaming now: {task_id, question, conversation_id}
kept_key = f"chat_kept_{kb_id}"  # a question no answer started for, offered again
with st.sidebar:
    listed = chat_view.conversation_sidebar(kb_id, conversation_key)
    export.export_button(kb_id, kb_name, st.session_state.get(conversation_key))

ready = [(d.id, d.filename) for d in list_documents(auth.actor(), kb_id=kb_id, ready_only=True)]
chosen: list[int] = []
if not ready:
    st.info("No document in this knowledge base is ready yet: add some on the **Upload** page, or wait for them "
            "to finish.", icon=":material/info:")
elif len(ready) > 1:
    with st.expander("Limit to some documents", icon=":material/filter_list:"):
        names = dict(ready)
        chosen = st.multiselect("Documents", options=list(names), format_func=names.get, key=f"chat_docs_{kb_id}",
                                placeholder="All documents")

conversation_id = st.session_state.get(conversation_key)
saved_answers = chat_view.render_history(conversation_id)

question = st.chat_input(f"Ask about “{kb_name}”")
asked_again = False
kept = st.session_state.get(kept_key)
if kept and not question:
    st.warning(f"No answer started for “{kept}”: {st.session_state.get(kept_key + '_why', '')}",
               icon=":material/schedule:")
    if st.button("Ask again", icon=":material/refresh:", key="chat_ask_again"):
        question, asked_again = kept, True
if question:
    st.session_state.pop(kept_key, None)
    # Asking again: the question is already the conversation's last message.
    asked = ask(get_backend(), auth.actor(), kb_id=kb_id, question=question, conversation_id=conversation_id,
                document_ids=chosen or None, save_question=not asked_again)
    conversation_id = asked.conversation_id
    if not asked_again:
        st.session_state[conversation_key] = conversation_id
        with st.chat_message("user"):
            components.show_untrusted(question)
    st.session_state[pending_key] = {"task_id": asked.task_id, "question": question,
                                     "conversation_id": conversation_id}

pending = st.session_state.get(pending_key)
if pending and (pending["task_id"] in saved_answers or pending["conversation_id"] != conversation_id):
    pending = None  # finished in an earlier run, or it belongs to another conversation (its worker saves it)
    st.session_state.pop(pending_key, None)
if pending:
    with st.chat_message("assistant"):
        outcome = chat_view.stream_answer(pending["task_id"])
    st.session_state.pop(pending_key, None)
    if outcome["state"] == "timeout" or outcome.get("code") == "first_token_timeout":
        st.session_state[kept_key] = pending["question"]
        st.session_state[kept_key + "_why"] = outcome["message"] or (
            "the chat workers may be down or busy. "
            f"[Task status](/status?task={pending['task_id']})"
        )
        st.rerun()
    elif outcome["state"] == "error":
        st.error(f"The answer failed: {outcome['message']}", icon=":material/error:")
    elif pending["conversation_id"] not in listed:
        st.rerun()  # a new conversation: list it in the sidebar (the answer is saved, so it shows again as is)
