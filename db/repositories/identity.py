"""Queries on accounts, groups, grants and web sessions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select, delete, func, or_, select, union_all, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.models import LEVELS, ApiKey, Grant, Group, GroupMember, KnowledgeBase, User, WebSession

# --- users -------------------------------------------------------------------------------------------------


def get_user(*, session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


def user_by_name(*, session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(func.lower(User.username) == username.strip().lower()))


def user_by_subject(*, session: Session, subject: str) -> User | None:
    return session.scalar(select(User).where(User.external_subject == subject))


def list_users(*, session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(func.lower(User.username))))


def count_admins(*, session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User).where(User.role == "admin", ~User.disabled)) or 0


def create_user(
    *, session: Session, username: str, role: str, password_hash: str | None, display_name: str = "",
    external_subject: str | None = None,
) -> User:
    user = User(username=username, role=role, password_hash=password_hash, display_name=display_name or username,
                disabled=False, external_subject=external_subject)
    session.add(user)
    session.flush()
    return user


def groups_of(*, session: Session, user_id: int) -> list[str]:
    return list(session.scalars(
        select(Group.name).join(GroupMember, GroupMember.group_id == Group.id)
        .where(GroupMember.user_id == user_id).order_by(Group.name)
    ))


# --- groups ------------------------------------------------------------------------------------------------


def group_by_name(*, session: Session, name: str) -> Group | None:
    return session.scalar(select(Group).where(func.lower(Group.name) == name.strip().lower()))


def create_group(*, session: Session, name: str) -> Group:
    group = Group(name=name)
    session.add(group)
    session.flush()
    return group


def list_groups(*, session: Session) -> list[tuple[Group, list[str]]]:
    groups = list(session.scalars(select(Group).order_by(func.lower(Group.name))))
    members: dict[int, list[str]] = {g.id: [] for g in groups}
    for group_id, username in session.execute(
        select(GroupMember.group_id, User.username).join(User, User.id == GroupMember.user_id).order_by(User.username)
    ):
        members.setdefault(group_id, []).append(username)
    return [(g, members[g.id]) for g in groups]


def add_member(*, session: Session, group_id: int, user_id: int) -> bool:
    """Whether the user was added (False: already a member)."""
    result = session.execute(insert(GroupMember).values(group_id=group_id, user_id=user_id).on_conflict_do_nothing())
    return bool(result.rowcount)


def remove_member(*, session: Session, group_id: int, user_id: int) -> bool:
    result = session.execute(delete(GroupMember).where(GroupMember.group_id == group_id,
                                                       GroupMember.user_id == user_id))
    return bool(result.rowcount)


def delete_group(*, session: Session, group_id: int) -> None:
    session.execute(delete(Group).where(Group.id == group_id))


# --- grants ------------------------------------------------------------------------------------------------


def _grants_of(user_id: int) -> Select:
    """(kb_id, level) of every grant that reaches the user: their own and their groups'."""
    own = select(Grant.kb_id, Grant.level).where(Grant.user_id == user_id)
    via_groups = (
        select(Grant.kb_id, Grant.level)
        .join(GroupMember, GroupMember.group_id == Grant.group_id)
        .where(GroupMember.user_id == user_id)
    )
    return union_all(own, via_groups).subquery()


def granted_kb_ids(user_id: int, scope: frozenset[int] | None = None, level: str | None = None) -> Select:
    """The ids of the bases a user holds a grant on (own or a group's; at ``level`` when given; within ``scope``
    when given), as a subquery for ``IN``."""
    grants = _grants_of(user_id)
    query = select(grants.c.kb_id).distinct()
    if level is not None:
        query = query.where(grants.c.level == level)
    return query.where(grants.c.kb_id.in_(list(scope))) if scope is not None else query


def kb_ids_in(ids: frozenset[int]) -> Select:
    return select(KnowledgeBase.id).where(KnowledgeBase.id.in_(list(ids)))


def level_on(*, session: Session, user_id: int, kb_id: int) -> str | None:
    """The highest level the user holds on the base (own or through a group), or None."""
    grants = _grants_of(user_id)
    levels = set(session.scalars(select(grants.c.level).where(grants.c.kb_id == kb_id)))
    return max(levels, key=LEVELS.index) if levels else None


def base_and_level(*, session: Session, kb_id: int, user_id: int) -> tuple[KnowledgeBase | None, str | None]:
    """The base (None when missing) and the highest level the user holds on it (None when none), in one query."""
    grants = _grants_of(user_id)
    levels = select(func.array_agg(grants.c.level)).where(grants.c.kb_id == kb_id).scalar_subquery()
    row = session.execute(select(KnowledgeBase, levels).where(KnowledgeBase.id == kb_id)).first()
    if row is None:
        return None, None
    return row[0], max(row[1], key=LEVELS.index) if row[1] else None


def levels_on_all(*, session: Session, user_id: int) -> dict[int, str]:
    grants = _grants_of(user_id)
    best: dict[int, str] = {}
    for kb_id, level in session.execute(select(grants.c.kb_id, grants.c.level)):
        if kb_id not in best or LEVELS.index(level) > LEVELS.index(best[kb_id]):
            best[kb_id] = level
    return best


def set_grant(*, session: Session, kb_id: int, level: str, user_id: int | None = None,
              group_id: int | None = None) -> None:
    """Grant (or change the level of) one user's or one group's access to a base."""
    where = Grant.user_id == user_id if user_id is not None else Grant.group_id == group_id
    existing = session.scalar(select(Grant).where(Grant.kb_id == kb_id, where))
    if existing is not None:
        existing.level = level
    else:
        session.add(Grant(kb_id=kb_id, user_id=user_id, group_id=group_id, level=level))
    session.flush()


def remove_grant(*, session: Session, kb_id: int, user_id: int | None = None, group_id: int | None = None) -> bool:
    where = Grant.user_id == user_id if user_id is not None else Grant.group_id == group_id
    return bool(session.execute(delete(Grant).where(Grant.kb_id == kb_id, where)).rowcount)


def list_grants(*, session: Session, kb_id: int) -> list[dict]:
    """The base's grants as {"grantee", "kind", "level", "id"}: users by username, groups as "@name"."""
    rows = session.execute(
        select(Grant, User.username, Group.name)
        .outerjoin(User, User.id == Grant.user_id)
        .outerjoin(Group, Group.id == Grant.group_id)
        .where(Grant.kb_id == kb_id)
        .order_by(Grant.group_id.is_not(None), func.lower(func.coalesce(User.username, Group.name)))
    ).all()
    return [
        {"id": g.id, "kind": "user" if g.user_id is not None else "group",
         "grantee": username if g.user_id is not None else f"@{group}", "level": g.level}
        for g, username, group in rows
    ]


def owner_count(*, session: Session, kb_id: int) -> int:
    return session.scalar(select(func.count()).select_from(Grant).where(Grant.kb_id == kb_id,
                                                                        Grant.level == "owner")) or 0


def bases_without_owner(*, session: Session) -> list[int]:
    owned = select(Grant.kb_id).where(Grant.level == "owner")
    return list(session.scalars(select(KnowledgeBase.id).where(KnowledgeBase.id.not_in(owned))))


# --- web sessions ------------------------------------------------------------------------------------------


def create_session(*, session: Session, token_hash: str, user_id: int, expires_at: datetime, client_addr: str,
                   user_agent: str) -> WebSession:
    row = WebSession(token_hash=token_hash, user_id=user_id, expires_at=expires_at, client_addr=client_addr[:64],
                     user_agent=user_agent[:300])
    session.add(row)
    session.flush()
    return row


def session_with_user(*, session: Session, token_hash: str) -> tuple[WebSession, User] | None:
    row = session.execute(
        select(WebSession, User).join(User, User.id == WebSession.user_id).where(WebSession.token_hash == token_hash)
    ).first()
    return (row[0], row[1]) if row else None


def touch_session(*, session: Session, session_id: int, at: datetime) -> None:
    session.execute(update(WebSession).where(WebSession.id == session_id).values(last_seen_at=at))


def delete_session(*, session: Session, token_hash: str) -> int | None:
    """Remove a session; returns its user's id, or None when there was none."""
    return session.scalar(delete(WebSession).where(WebSession.token_hash == token_hash).returning(WebSession.user_id))


def delete_sessions_of(*, session: Session, user_id: int) -> int:
    return session.execute(delete(WebSession).where(WebSession.user_id == user_id)).rowcount


def delete_expired_sessions(*, session: Session, now: datetime, idle_before: datetime) -> int:
    return session.execute(
        delete(WebSession).where(or_(WebSession.expires_at < now, WebSession.last_seen_at < idle_before))
    ).rowcount




# --- API keys ----------------------------------------------------------------------------------------------


def create_api_key(*, session: Session, prefix: str, key_hash: str, user_id: int, kb_ids: list[int] | None,
                   expires_at: datetime | None) -> ApiKey:
    key = ApiKey(prefix=prefix, key_hash=key_hash, user_id=user_id, kb_ids=kb_ids, expires_at=expires_at)
    session.add(key)
    session.flush()
    return key


def api_key_with_user(*, session: Session, prefix: str) -> tuple[ApiKey, User] | None:
    row = session.execute(select(ApiKey, User).join(User, User.id == ApiKey.user_id)
                          .where(ApiKey.prefix == prefix)).first()
    return (row[0], row[1]) if row else None


def list_api_keys(*, session: Session, user_id: int | None = None) -> list[tuple[ApiKey, str]]:
    query = select(ApiKey, User.username).join(User, User.id == ApiKey.user_id).order_by(ApiKey.created_at.desc())
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    return [(key, username) for key, username in session.execute(query)]


def touch_api_key(*, session: Session, key_id: int, at: datetime) -> None:
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=at))


def kb_names(*, session: Session, kb_ids: list[int]) -> dict[int, str]:
    rows = session.execute(select(KnowledgeBase.id, KnowledgeBase.name).where(KnowledgeBase.id.in_(kb_ids))).all()
    return {kb_id: name for kb_id, name in rows}
