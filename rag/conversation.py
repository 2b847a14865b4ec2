"""Conversation memory: earlier turns for the prompt (trimmed by tokens; older ones summarised by
``chat.summarize``), and follow-up questions rewritten into standalone ones before retrieval."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from db.repositories import conversations as conversation_repo
from infra.database import session_scope
from infra.settings import get_settings
from rag import llm, llm_client, prompts
from rag.citations import strip_markers

# Words that make a question lean on the conversation ("what caused it?", "and the pilot?").
_REFERENCES = re.compile(
    r"\b(it|its|they|them|their|this|that|these|those|he|she|him|her|his|hers|there|then|same|former|latter|"
    r"above|previous|earlier|also|else|more|other)\b",
    re.IGNORECASE,
)
_FOLLOW_UP_START = re.compile(r"^\s*(and|but|so|also|what about|how about|why|how come|or)\b", re.IGNORECASE)


@dataclass
class History:
    turns: list[dict[str, str]] = field(default_factory=list)  # role/content, oldest first, within budget
    summary: str | None = None
    over_budget: bool = False  # turns since the summary exceed the budget: time to summarise


def load_history(*, session: Session, conversation_id: int, question: str) -> History:
    """The conversation before ``question``: the newest summary and the newest turns after it that fit."""
    summary = conversation_repo.latest_summary(session=session, conversation_id=conversation_id)
    messages = conversation_repo.messages_after(
        session=session, conversation_id=conversation_id, after_id=summary.up_to_message_id if summary else 0
    )
    # The page stores the question before it enqueues the answer: that message is the question, not history.
    if messages and messages[-1].role == "user" and messages[-1].content.strip() == question.strip():
        messages = messages[:-1]
    turns = [
        {"role": m.role, "content": m.content}
        for m in messages
        if m.role in ("user", "assistant") and m.content
    ]
    kept = trim(turns, get_settings().history_token_budget)
    return History(kept, summary.content if summary else None, over_budget=len(kept) < len(turns))


def trim(turns: list[dict[str, str]], budget: int) -> list[dict[str, str]]:
    """The newest turns whose estimated tokens fit ``budget``, oldest first."""
    kept: list[dict[str, str]] = []
    total = 0
    for turn in reversed(turns):
        total += prompts.estimate_tokens(turn["content"])
        if total > budget:
            break
        kept.insert(0, turn)
    return kept


@dataclass
class Rewrite:
    question: str  # what retrieval and the answer cache use
    how: str  # "as-is" | "llm" | "fallback"
    error: llm.LLMError | None = None  # why the model could not rewrite it, if it could not


def needs_rewrite(turns: list[dict[str, str]]) -> bool:
    """Whether ``standalone_question`` has work to do: the conversation has an earlier question."""
    return any(turn["role"] == "user" for turn in turns)


def standalone_question(
    question: str,
    turns: list[dict[str, str]],
    *,
    on_retry: llm.OnRetry | None = None,
    should_stop: llm.ShouldStop | None = None,
) -> Rewrite:
    """The question made self-contained: by the model when there is one, else by ``fallback_standalone``."""
    if not needs_rewrite(turns):
        return Rewrite(question, "as-is")
    error: llm.LLMError | None = None
    if llm_client.configured():
        try:
            text = "".join(
                llm.stream_chat(
                    prompts.rewrite_messages(question, turns[-6:]),
                    max_tokens=96,
                    temperature=0.0,
                    on_retry=on_retry,
                    should_stop=should_stop,
                )
            )
            text = _clean_rewrite(text)
            if text and len(text) <= 3 * len(question) + 300:
                return Rewrite(text, "llm")
        except llm.GenerationStopped:
            raise
        except llm.LLMError as exc:
            error = exc  # the simple rewrite below still gives retrieval the context
    return Rewrite(fallback_standalone(question, turns), "fallback", error)


def fallback_standalone(question: str, turns: list[dict[str, str]]) -> str:
    """Without a model: a question that leans on the conversation gets the previous question prepended."""
    previous = next((t["content"] for t in reversed(turns) if t["role"] == "user"), "")
    if not previous or not looks_like_follow_up(question):
        return question
    return f"{previous.strip()} {question.strip()}"


def looks_like_follow_up(question: str) -> bool:
    words = re.findall(r"\w+", question)
    return len(words) <= 4 or bool(_REFERENCES.search(question)) or bool(_FOLLOW_UP_START.match(question))


def _clean_rewrite(text: str) -> str:
    text = text.strip().strip('"').strip()
    text = re.sub(r"^(standalone question|question)\s*:\s*", "", text, flags=re.IGNORECASE)
    return " ".join(text.split())


def summarize_conversation(conversation_id: int) -> dict:
    """Condense the turns older than the newest half-budget into a summary row (``chat.summarize``)."""
    budget = get_settings().history_token_budget
    with session_scope() as session:
        previous = conversation_repo.latest_summary(session=session, conversation_id=conversation_id)
        messages = [
            (m.id, m.role, m.content)
            for m in conversation_repo.messages_after(
                session=session,
                conversation_id=conversation_id,
                after_id=previous.up_to_message_id if previous else 0,
            )
            if m.role in ("user", "assistant") and m.content
        ]
        previous_text = previous.content if previous else None
    turns = [{"role": role, "content": content} for _, role, content in messages]
    keep = len(trim(turns, budget // 2))
    older = messages[: len(messages) - keep]
    if not older:
        return {"conversation_id": conversation_id, "summarized": 0}
    older_turns = turns[: len(older)]
    mode = "llm"
    try:
        if not llm_client.configured():
            raise llm.ModelUnavailable("no model")
        text = llm.complete(prompts.summary_messages(previous_text, older_turns), max_tokens=320).strip()
        if not text:
            raise llm.ModelUnavailable("empty summary")
    except llm.LLMError:
        mode, text = "extractive", fallback_summary(previous_text, older_turns, budget // 2)
    with session_scope() as session:
        if conversation_repo.get(session=session, conversation_id=conversation_id) is None:  # deleted meanwhile
            return {"conversation_id": conversation_id, "summarized": 0}
        conversation_repo.add_summary(
            session=session,
            conversation_id=conversation_id,
            up_to_message_id=older[-1][0],
            content=text,
            token_count=prompts.estimate_tokens(text),
            mode=mode,
        )
    return {
        "conversation_id": conversation_id,
        "summarized": len(older),
        "mode": mode,
        "up_to_message_id": older[-1][0],
    }


def fallback_summary(previous: str | None, turns: list[dict[str, str]], budget: int) -> str:
    """Without a model: each question, and the first sentence of each answer, newest kept within ``budget``."""
    lines = previous.splitlines() if previous else []
    for turn in turns:
        text = " ".join(strip_markers(turn["content"]).split())
        if turn["role"] == "user":
            lines.append(f"Asked: {text[:300]}")
        else:
            first = re.split(r"(?<=[.!?。！？])\s", text.lstrip("*_> "), maxsplit=1)[0]
            lines.append(f"Answered: {first[:300]}")
    while len(lines) > 1 and prompts.estimate_tokens("\n".join(lines)) > budget:
        lines.pop(0)
    return "\n".join(lines)
