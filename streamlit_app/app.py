"""kbchat's web entrypoint: the navigation frame around every page and the shared sidebar."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run streamlit_app/app.py` from a source checkout
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from streamlit_app import components  # noqa: E402

st.set_page_config(page_title="kbchat", page_icon="💬", layout="wide")

PAGES = ROOT / "pages"
navigation = st.navigation(
    {
        "Knowledge": [
            st.Page(str(PAGES / "chat.py"), title="Ask", icon=":material/forum:", default=True, url_path="chat"),
            st.Page(str(PAGES / "upload.py"), title="Upload", icon=":material/upload_file:", url_path="upload"),
            st.Page(str(PAGES / "knowledge_bases.py"), title="Knowledge bases", icon=":material/library_books:",
                    url_path="knowledge-bases"),
        ],
        "Admin": [
            st.Page(str(PAGES / "monitoring.py"), title="Monitoring", icon=":material/monitor_heart:",
                    url_path="monitoring"),
            st.Page(str(PAGES / "status.py"), title="Task status", icon=":material/manage_search:", url_path="status"),
        ],
    }
)
components.sidebar()
navigation.run()
