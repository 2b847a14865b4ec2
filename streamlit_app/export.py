"""Export a conversation as Markdown (each question, its answer, the answer's numbered sources with document and
page), and copy one answer.

The exported file is opened elsewhere (an editor, a wiki, a Markdown viewer that may fetch remote images), so
document and model text in it is made inert for that: images become their alt text, raw HTML is escaped, and
links keep only their text. It is a file, not something this app renders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import streamlit as st

from rag.access import Actor
from rag.citations import citation_label
from streamlit_app import auth
from usecases.asking import conversation_messages, list_conversations

MODE_NOTES = {
    "extractive": "extractive answer: sentences quoted from the passages, no language model",
    "cache": "from the answer cache",
}


@dataclass
class Turn:
    question: str
    answer: str = ""
    mode: str | None = None
    citations: list[dict] = field(default_factory=list)


def _inert(text: str) -> str:
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"[image: \1]", text)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"(?m)^( {0,3})\[([^\]]+)\]:", r"\1\\[\2]:", text)  # reference definitions
    return text.replace("<", "&lt;")


def turns(messages: list[tuple[str, str, str | None, list[dict]]]) -> list[Turn]:
    """(role, content, mode, citations) messages, oldest first, paired into question → answer turns."""
    out: list[Turn] = []
    for role, content, mode, citations in messages:
        if role == "user" or not out:
            out.append(Turn(question=content if role == "user" else ""))
        if role == "assistant":
            turn = out[-1]
            turn.answer = f"{turn.answer}\n\n{content}".strip() if turn.answer else content
            turn.mode, turn.citations = mode, list(citations or [])
    return out


def conversation_markdown(title: str, kb_name: str, conversation: list[Turn], exported_at: datetime) -> str:
    """The conversation as one Markdown document."""
    lines = [
        f"# {_inert(title)}",
        "",
        f"*Knowledge base “{_inert(kb_name)}” · exported from kbchat {exported_at:%Y-%m-%d %H:%M} UTC*",
    ]
    for number, turn in enumerate(conversation, start=1):
        lines += ["", f"## {number}. {_inert(' '.join(turn.question.split())) or '(no question)'}", ""]
        lines.append(_inert(turn.answer.strip()) if turn.answer.strip() else "*(no answer)*")
        if turn.mode in MODE_NOTES:
            lines += ["", f"*({MODE_NOTES[turn.mode]})*"]
        if turn.citations:
            uncited = all(c.get("cited") is False for c in turn.citations)
            lines += ["", "**Passages given to the model (the answer cites none)**" if uncited else "**Sources**", ""]
            lines += [f"- [{c.get('n', i)}] {_inert(citation_label(c))}" for i, c in enumerate(turn.citations, 1)]
    return "\n".join(lines) + "\n"


def load(actor: Actor, kb_id: int, conversation_id: int) -> tuple[str, list[Turn]] | None:
    """The conversation's title and turns, as ``actor`` may read them; None when it is gone (or not theirs)."""
    try:
        messages = [(m.role, m.content, m.mode, m.citations)
                    for m in conversation_messages(actor, conversation_id=conversation_id)]
    except LookupError:
        return None
    title = next((c["title"] for c in list_conversations(actor, kb_id=kb_id, limit=500)
                  if c["id"] == conversation_id), "Conversation")
    return title, turns(messages)


def file_name(title: str, exported_at: datetime) -> str:
    slug = re.sub(r"[^\w-]+", "-", title.lower(), flags=re.ASCII).strip("-")[:60] or "conversation"
    return f"kbchat-{slug}-{exported_at:%Y%m%d-%H%M}.md"


def export_button(kb_id: int, kb_name: str, conversation_id: int | None) -> None:
    """Download the open conversation as Markdown (made when clicked, so it holds the newest answer)."""
    if conversation_id is None:
        return
    actor = auth.actor()
    loaded = load(actor, kb_id, conversation_id)
    if loaded is None or not loaded[1]:
        return
    title, _ = loaded
    now = datetime.now(UTC)

    def make() -> str:
        fresh = load(actor, kb_id, conversation_id) or loaded
        return conversation_markdown(fresh[0], kb_name, fresh[1], datetime.now(UTC))

    st.download_button(
        "Export conversation",
        data=make,
        file_name=file_name(title, now),
        mime="text/markdown",
        icon=":material/download:",
        key=f"chat_export_{conversation_id}",
        on_click="ignore",
        width="stretch",
        help="Download this conversation as Markdown: questions, answers and their sources",
    )


def copy_answer(text: str, key: str) -> None:
    """A small button that opens the answer's plain text with a copy button (Streamlit's code block)."""
    with st.popover("", icon=":material/content_copy:", help="Copy this answer", key=key):
        st.code(text, language=None, wrap_lines=True)
