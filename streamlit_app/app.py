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
ASK = st.Page(str(PAGES / "chat.py"), title="Ask", icon=":material/forum:", url_path="chat")
navigation = st.navigation(
    {
        "Knowledge": [
            ASK,
            st.Page(str(PAGES / "upload.py"), title="Upload", icon=":material/upload_file:", url_path="upload"),
            st.Page(str(PAGES / "knowledge_bases.py"), title="Knowledge bases", icon=":material/library_books:",
                    url_path="knowledge-bases"),
        ],
        "Admin": [
            st.Page(str(PAGES / "monitoring.py"), title="Monitoring", icon=":material/monitor_heart:",
                    url_path="monitoring"),
            st.Page(str(PAGES / "status.py"), title="Task status", icon=":material/manage_search:", url_path="status"),
            # The default page is served at "/" only, whatever its url_path: "/" opens Ask at /chat instead, so
            # every page, Ask included, has one URL that a bookmark or a shared link opens.
            st.Page(lambda: st.switch_page(ASK), title="kbchat", default=True, visibility="hidden", url_path="home"),
        ],
    }
)
components.sidebar()
navigation.run()
