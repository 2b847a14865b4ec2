"""Knowledge bases: create, rename, delete; documents with delete, re-index, retry; chunk and retrieval preview."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from rag.citations import citation_label
from streamlit_app import auth, components, feedback_view
from tasks.backend import get_backend
from usecases import asking, knowledge_bases
from usecases.documents import delete_documents, document_chunks, list_documents, reindex_documents

st.title("Knowledge bases")
components.require_services()
actor = auth.actor()
overview = knowledge_bases.overview(actor)

if overview:
    st.dataframe(
        pd.DataFrame(overview)[["name", "level", "documents", "ready", "failed", "chunks", "bytes", "embedding_model", "created_at"]],
        hide_index=True,
        width="stretch",
        column_config={
            "name": "Knowledge base",
            "level": "Your access",
            "bytes": st.column_config.NumberColumn("Size (bytes)", format="%d"),
            "embedding_model": "Embedding model",
            "created_at": st.column_config.DatetimeColumn("Created", format="YYYY-MM-DD HH:mm"),
        },
    )

with st.expander("Create a knowledge base", icon=":material/add:", expanded=not overview):
    with st.form("kbs_create", clear_on_submit=True, border=False):
        new_name = st.text_input("Name", placeholder="e.g. Clinical protocols", key="kbs_new_name")
        if st.form_submit_button("Create", type="primary", key="kbs_create"):
            try:
                _, created = knowledge_bases.create_kb(actor, name=new_name)
                # Select the new base below (the picker comes after this form, so its value may still be set).
                st.session_state["kb_name"] = st.session_state["kbs_kb"] = created
                st.rerun()
            except ValueError as exc:
                st.error(str(exc))

picked = components.kb_picker(key="kbs_kb", allow_create=False)
if picked is None:
    st.stop()
kb_id, kb_name = picked
info = next(item for item in overview if item["id"] == kb_id)
is_owner = info["level"] == "owner"
is_editor = info["level"] in ("editor", "owner")


settings_tab, documents_tab, chunks_tab, search_tab, feedback_tab = st.tabs(
    ["Settings", f"Documents ({info['documents']})", "Chunk preview", "Search preview", "Feedback"]
)

with settings_tab:
    if not is_owner:
        st.info(f"You have **{info['level']}** access to this base: its owners change its settings.",
                icon=":material/lock:")
    with st.form("kbs_rename", border=False):
        renamed = st.text_input("Name", value=kb_name)
        if st.form_submit_button("Rename", disabled=not is_owner):
            try:
                st.session_state["kb_name"] = knowledge_bases.rename_kb(actor, kb_id=kb_id, name=renamed)
                st.rerun()
            except ValueError as exc:
                st.error(str(exc))
    st.caption(f"Embedding model: **{info['embedding_model']}**")
    with st.form("kbs_chunking", border=False):
        left, right = st.columns(2)
        tokens = left.number_input("Chunk size (model tokens)", 32, 512, value=info["chunk_tokens"], step=8)
        overlap = right.number_input("Overlap (tokens)", 0, 256, value=info["chunk_overlap_tokens"], step=8)
        if st.form_submit_button("Save and re-index the whole base", disabled=not is_owner):
            try:
                ids = knowledge_bases.change_chunking(get_backend(), actor, kb_id=kb_id, chunk_tokens=int(tokens),
                                                      chunk_overlap_tokens=int(overlap))
            except ValueError as exc:
                st.error(str(exc))
            else:
                st.success(f"Re-indexing {len(ids)} documents with {tokens}/{overlap}-token chunks.")
    st.divider()
    with st.popover("Delete this knowledge base", icon=":material/delete:", disabled=not is_owner):
        st.warning(f"This deletes **{components.plain(kb_name)}** with its {info['documents']} documents, their chunks and "
                   "its conversations. Other knowledge bases are not touched.")
        typed = st.text_input("Type the name to confirm", key="kbs_delete_confirm")
        if st.button("Delete for good", type="primary", disabled=typed.strip() != kb_name):
            knowledge_bases.delete_kb(actor, kb_id=kb_id)
            st.session_state.pop("kb_name", None)
            st.toast(f"Deleted {kb_name}")
            st.rerun()

with documents_tab:
    documents = list_documents(actor, kb_id=kb_id, limit=1000)
    if not documents:
        st.caption("No documents yet: add some on the Upload page.")
    else:
        table = pd.DataFrame(
            [
                {
                    "id": d.id,
                    "file": d.filename,
                    "status": d.status,
                    "pages": d.pages,
                    "chunks": d.chunk_count,
                    "size (KB)": round(d.size_bytes / 1024, 1),
                    "uploaded": d.created_at,
                    "error": d.error or "",
                }
                for d in documents
            ]
        )
        selection = st.dataframe(
            table,
            hide_index=True,
            width="stretch",
            on_select="rerun",
            selection_mode="multi-row",
            key="kbs_documents",
            column_config={"uploaded": st.column_config.DatetimeColumn("Uploaded", format="YYYY-MM-DD HH:mm")},
        )
        chosen = [int(table.iloc[i]["id"]) for i in selection.selection.rows]
        st.caption(f"{len(chosen)} selected" if chosen else "Select rows to delete or re-index them.")
        one, two, three, four = st.columns(4)
        if one.button("Delete selected", icon=":material/delete:", disabled=not chosen or not is_editor):
            delete_documents(actor, kb_id=kb_id, document_ids=chosen)
            st.toast(f"Deleted {len(chosen)} documents with their chunks")
            st.rerun()
        if two.button("Re-index selected", icon=":material/refresh:", disabled=not chosen or not is_editor):
            ids = reindex_documents(get_backend(), actor, kb_id=kb_id, document_ids=chosen)
            st.toast(f"Re-indexing {len(ids)} documents")
        if three.button("Retry failed", icon=":material/replay:", disabled=not info["failed"] or not is_editor):
            ids = reindex_documents(get_backend(), actor, kb_id=kb_id, only_failed=True)
            st.toast(f"Retrying {len(ids)} failed documents")
        if four.button("Re-index all", icon=":material/sync:", disabled=not is_editor):
            ids = reindex_documents(get_backend(), actor, kb_id=kb_id)
            st.toast(f"Re-indexing {len(ids)} documents")

with chunks_tab:
    ready = [(d.id, d.filename, d.chunk_count) for d in list_documents(actor, kb_id=kb_id, ready_only=True)]
    if not ready:
        st.caption("No ready documents yet.")
    else:
        label = st.selectbox("Document", ready, format_func=lambda d: f"{d[1]} ({d[2]} chunks)", key="kbs_chunk_doc")
        page_size = 20
        pages = max(1, -(-label[2] // page_size))
        page = st.number_input("Page of chunks", 1, pages, 1, key="kbs_chunk_page") if pages > 1 else 1
        chunks = [
            (c.ordinal, c.page, c.locator, c.heading, c.token_count, c.text)
            for c in document_chunks(actor, document_id=label[0], limit=page_size, offset=(page - 1) * page_size)
        ]
        for ordinal, _page, locator, heading, token_count, text in chunks:
            with st.container(border=True):
                st.caption(f"#{ordinal} · {locator or ''} · {token_count} tokens"
                           + (f" · {components.plain(heading)}" if heading else ""))
                components.show_untrusted(text)

with search_tab:
    query = st.text_input("Try a question", key="kbs_search", placeholder="What would a user ask?")
    if query.strip():
        with st.spinner("Searching…"):
            try:
                hits = asking.preview_search(get_backend(), actor, kb_id=kb_id, question=query, k=10, timeout=30)
            except (TimeoutError, RuntimeError) as exc:
                st.error(str(exc))
                hits = None
        if hits is not None:
            if not hits:
                st.caption("No passages: is the base empty?")
            for hit in hits:
                with st.container(border=True):
                    st.markdown(f"**{components.plain(citation_label(hit))}** · score `{hit['score']:.3f}`")
                    components.show_untrusted(hit["text"])
                    components.open_page_button(hit, key=f"search_{hit['chunk_id']}")

with feedback_tab:
    if is_owner:
        feedback_view.feedback_panel(actor, kb_id=kb_id, key="kbs_fb")
    else:
        st.caption("The owners of this base read what askers said of its answers.")
