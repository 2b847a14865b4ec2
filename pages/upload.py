"""Upload: choose or create a knowledge base, drop files, watch each one reach ready or failed."""

from __future__ import annotations

import streamlit as st

from db.models import ACTIVE_STATES
from rag.parsing import supported_formats
from streamlit_app import auth, components
from tasks import monitoring
from tasks.backend import get_backend
from usecases.documents import list_documents, upload_files

st.title("Upload documents")
components.require_services()

picked = components.kb_picker(key="upload_kb", allow_create=True, min_level="editor")
if picked is None:
    st.stop()
kb_id, kb_name = picked

uploader_key = f"upload_files_{st.session_state.get('upload_round', 0)}"
files = st.file_uploader(
    f"{supported_formats()} — drop several at once",
    accept_multiple_files=True,
    key=uploader_key,
)
if st.button("Add to knowledge base", type="primary", disabled=not files, key="upload_add"):
    outcomes = upload_files(get_backend(), auth.actor(), kb_id=kb_id, files=[(file.name, file.getvalue()) for file in files])
    st.session_state["upload_last"] = [o.to_dict() for o in outcomes]
    st.session_state["upload_round"] = st.session_state.get("upload_round", 0) + 1
    st.rerun()

for outcome in st.session_state.get("upload_last", []):
    if outcome["status"] == "duplicate":
        st.warning(f"**{components.plain(outcome['filename'])}** — duplicate: {outcome['error']}", icon=":material/content_copy:")
    elif outcome["status"] == "rejected":
        st.error(f"**{components.plain(outcome['filename'])}** — not added: {outcome['error']}", icon=":material/block:")


@st.fragment(run_every=1.0)
def document_rows() -> None:
    """Live rows: one per document, read from PostgreSQL every second."""
    documents = list_documents(auth.actor(), kb_id=kb_id, limit=200)
    active = sum(d.status in ACTIVE_STATES for d in documents)
    st.subheader(f"Documents in “{components.plain(kb_name)}”")
    if not documents:
        st.caption("No documents yet.")
        return
    count = f"{len(documents)} document" + ("s" if len(documents) != 1 else "")
    st.caption(count + (f" · {active} in progress" if active else ""))
    lost = monitoring.lost_documents(documents) if active else set()
    for document in documents:
        name, state, progress, detail = st.columns([4, 2, 3, 3], vertical_alignment="center")
        name.markdown(f"**{components.plain(document.filename)}**")
        with state:
            components.status_badge(document.status)
        if document.id in lost:  # not a frozen bar: the reconciler starts it again
            progress.warning(monitoring.lost_label(document.attempts), icon=":material/heart_broken:")
        elif document.status in ACTIVE_STATES:
            total = document.progress_total
            label = f"{document.status} {document.progress_done}/{total}" if total else document.status
            if document.attempts > 1:
                label += f" · attempt {document.attempts}"
            progress.progress(min(1.0, document.progress or 0.0), text=label)
        elif document.status == "ready":
            progress.caption(f"{document.pages or 0} pages · {document.chunk_count} chunks")
        if document.status in ACTIVE_STATES:
            timing = f"{components.elapsed(document.started_at)} so far" if document.started_at else ""
        else:
            timing = f"took {components.elapsed(document.started_at, document.finished_at)}" if document.started_at else ""
        link = f"[task details](/status?task={document.task_id})" if document.task_id else ""
        detail.caption(" · ".join(part for part in (timing, link) if part))
        if document.status == "failed" and document.error:
            st.error(document.error, icon=":material/error:")
        elif document.status == "ready" and document.error:  # ready, with a note (pages OCR could not read)
            st.warning(document.error, icon=":material/warning:")


document_rows()
