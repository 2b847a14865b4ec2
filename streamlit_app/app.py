"""kbchat's web entrypoint: who is signed in, the navigation their role allows, and the shared sidebar.

Served by ``streamlit_app.web`` (the ASGI app whose middleware already refused anyone without a session).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run streamlit_app/app.py` from a source checkout
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from streamlit_app import auth, components  # noqa: E402

st.set_page_config(page_title="kbchat", page_icon="💬", layout="wide")
components.require_services()
actor = auth.sign_in_page_run()

PAGES = ROOT / "pages"
ASK = st.Page(str(PAGES / "chat.py"), title="Ask", icon=":material/forum:", url_path="chat")
sections = {
    "Knowledge": [
        ASK,
        st.Page(str(PAGES / "upload.py"), title="Upload", icon=":material/upload_file:", url_path="upload"),
        st.Page(str(PAGES / "knowledge_bases.py"), title="Knowledge bases", icon=":material/library_books:",
                url_path="knowledge-bases"),
        st.Page(str(PAGES / "sharing.py"), title="Sharing", icon=":material/group_add:", url_path="sharing"),
        st.Page(str(PAGES / "status.py"), title="Task status", icon=":material/manage_search:", url_path="status"),
        st.Page(str(PAGES / "account.py"), title="My account", icon=":material/person:", url_path="account"),
        # The default page is served at "/" only, whatever its url_path: "/" opens Ask at /chat instead, so
        # every page, Ask included, has one URL that a bookmark or a shared link opens.
        st.Page(lambda: st.switch_page(ASK), title="kbchat", default=True, visibility="hidden", url_path="home"),
    ],
}
if actor.is_admin:  # an analyst's menu has no admin pages, and their URLs are not pages for them
    sections["Admin"] = [
        st.Page(str(PAGES / "monitoring.py"), title="Monitoring", icon=":material/monitor_heart:",
                url_path="monitoring"),
        st.Page(str(PAGES / "users.py"), title="Users and groups", icon=":material/manage_accounts:",
                url_path="users"),
        st.Page(str(PAGES / "audit.py"), title="Audit log", icon=":material/policy:", url_path="audit"),
    ]
navigation = st.navigation(sections)
components.sidebar(actor)
navigation.run()
