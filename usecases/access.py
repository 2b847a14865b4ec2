"""The one access check every use case calls first: may this actor do this to this base, document or
conversation? The knowledge-base ids a query is limited to come from here, never from the caller.

Another user's base, document, conversation or task answers exactly like one that does not exist (``NotFound``);
a base the actor may read but not change answers ``Forbidden`` with the level it takes.
"""

from __future__ import annotations

from sqlalchemy import Select
from sqlalchemy.orm import Session

from db.models import Conversation, Document, KnowledgeBase
from db.repositories import documents as document_repo
from db.repositories import identity as identity_repo
from db.repositories import knowledge_bases as kb_repo
from rag.access import OWNER, VIEWER, Actor, Forbidden, NotFound, at_least, kb_not_found


def level_of(session: Session, actor: Actor, kb_id: int) -> str | None:
    if actor.scope is not None and int(kb_id) not in actor.scope:
        return None
    if actor.is_admin:
        return "owner"
    if actor.user_id is None:
        return None
    return identity_repo.level_on(session=session, user_id=actor.user_id, kb_id=kb_id)


def require_kb(session: Session, actor: Actor, kb_id: int, level: str = VIEWER) -> KnowledgeBase:
    """The base, when the actor holds ``level`` on it; NotFound when it is missing or not theirs to see. One query:
    the base with the actor's level on it."""
    kb_id = int(kb_id)
    if (actor.scope is not None and kb_id not in actor.scope) or (not actor.is_admin and actor.user_id is None):
        raise kb_not_found(kb_id)
    if actor.is_admin:
        kb, have = kb_repo.get(session=session, kb_id=kb_id), "owner"
    else:
        kb, have = identity_repo.base_and_level(session=session, kb_id=kb_id, user_id=actor.user_id)
    if kb is None or have is None:
        raise kb_not_found(kb_id)
    if not at_least(have, level):
        raise Forbidden(f"You have {have} access to “{kb.name}”; this needs {level} access. Ask an owner of the "
                        "base to share it with you at that level.")
    return kb


def require_document(session: Session, actor: Actor, document_id: int, level: str = VIEWER) -> Document:
    document = document_repo.get(session=session, document_id=int(document_id))
    if document is None or level_of(session, actor, document.kb_id) is None:
        raise NotFound(f"Document {document_id} not found.")
    require_kb(session, actor, document.kb_id, level)
    return document


def require_conversation(session: Session, actor: Actor, conversation_id: int) -> Conversation:
    """A conversation is its starter's (admins read all); and its base must still be readable."""
    conversation = session.get(Conversation, int(conversation_id))
    if (conversation is None or (not actor.is_admin and conversation.user_id != actor.user_id)
            or level_of(session, actor, conversation.kb_id) is None):
        raise NotFound(f"Conversation {conversation_id} not found.")
    return conversation


def require_admin(actor: Actor, what: str = "This") -> None:
    if not actor.is_admin:
        raise Forbidden(f"{what} is for administrators.")


def _granted_kb_ids(actor: Actor, level: str | None) -> Select | None:
    if actor.is_admin:
        return None if actor.scope is None else identity_repo.kb_ids_in(actor.scope)
    if actor.user_id is None:
        raise Forbidden("No user is signed in.")
    return identity_repo.granted_kb_ids(actor.user_id, scope=actor.scope, level=level)


def readable_kb_ids(actor: Actor) -> Select | None:
    """A subquery of the base ids the actor may read, for ``WHERE kb_id IN (...)``; None means every base."""
    return _granted_kb_ids(actor, None)


def owned_kb_ids(actor: Actor) -> Select | None:
    """A subquery of the base ids the actor owns (what an owner oversees: feedback); None means every base."""
    return _granted_kb_ids(actor, OWNER)
