"""Accounts, groups, grants and sign-in: who may use kbchat, and who may use which knowledge base.

Users and groups are managed by admins (the CLI acts as one); a base's grants by its owners. Sign-in checks the
password against its Argon2id hash, throttles repeated failures per username and per client address, and hands
out a random session token of which only the SHA-256 is stored. Nothing here logs a password or a token.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from math import ceil
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from db.models import ADMIN, LEVELS, OWNER, ROLES, User
from db.repositories import audit as audit_repo
from db.repositories import identity as identity_repo
from infra import secrets
from infra.database import session_scope
from infra.redis_client import RedisError, get_redis
from infra.settings import get_settings
from rag.access import Actor, Forbidden, NotFound
from usecases.access import require_admin, require_kb
from usecases.audit import record

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
INITIAL_PASSWORD_FILE = "initial-admin-password"  # holds the first admin's password until it is changed
INITIAL_ADMIN = "admin"
log = logging.getLogger(__name__)
TOUCH_EVERY = timedelta(seconds=60)  # a session's last-seen time is written at most this often
IDENTITY_REVISION = "kbchat:identity:revision"  # bumped after every change of who someone is or may be


def identity_changed() -> None:
    """Tell every process that an account or a key changed (disabled, role, revoked): what they hold in memory
    about it is out of date. Called after the change commits. Without Redis the API answers nothing anyway (its rate
    limit lives there), and what a process holds expires within a minute."""
    try:  # expiring a day on (a process trusts what it remembers for a minute at most, so a counter that starts
        # again from nothing can never look unchanged to it): like every key kbchat writes, it does not stay forever
        pipe = get_redis().pipeline()
        pipe.incr(IDENTITY_REVISION)
        pipe.expire(IDENTITY_REVISION, 86400)
        pipe.execute()
    except RedisError as exc:
        log.warning("Could not announce an account change through Redis (%s); API processes see it within a minute.",
                    type(exc).__name__)


class LoginRefused(Exception):
    """Sign-in refused; the message is safe to show (it never says whether the name or the password was wrong)."""


@dataclass(frozen=True)
class SignedIn:
    token: str  # the cookie's value: shown to the browser once, never stored or logged
    actor: Actor
    expires_at: datetime


def _check_name(name: str, what: str) -> str:
    name = name.strip()
    if not NAME_PATTERN.match(name):
        raise ValueError(f"A {what} name is 1–64 letters, digits, '.', '_', '-' or '@', starting with a letter or "
                         f"digit; got {name!r}.")
    return name


def _user_dict(user: User, groups: list[str] | None = None) -> dict:
    return {
        "id": user.id, "username": user.username, "display_name": user.display_name, "role": user.role,
        "disabled": user.disabled, "sso": user.external_subject is not None,
        "created_at": user.created_at.isoformat() if user.created_at else None,
        "last_login_at": user.last_login_at.isoformat() if user.last_login_at else None,
        "groups": groups or [],
    }


def actor_of(user: User, client_addr: str = "") -> Actor:
    return Actor(user_id=user.id, username=user.username, role=user.role, client_addr=client_addr)


def actor_for_user_id(user_id: int) -> Actor | None:
    """The user as an actor (a task checks again with this when it runs); None when gone or disabled."""
    with session_scope() as session:
        user = identity_repo.get_user(session=session, user_id=int(user_id))
        return actor_of(user) if user is not None and not user.disabled else None


def _find_user(session, username: str) -> User:
    user = identity_repo.user_by_name(session=session, username=username)
    if user is None:
        raise NotFound(f"No user called {username!r}. `kbchat users list` shows who there is.")
    return user


def _adopt_ownerless_bases(session, admin: User) -> list[int]:
    """The first admin owns every base nobody owns (bases from before accounts, or whose owners were removed)."""
    adopted = identity_repo.bases_without_owner(session=session)
    for kb_id in adopted:
        identity_repo.set_grant(session=session, kb_id=kb_id, level=OWNER, user_id=admin.id)
    return adopted


# --- users -------------------------------------------------------------------------------------------------


def add_user(actor: Actor, *, username: str, role: str, password: str | None = None,
             display_name: str = "") -> tuple[dict, str | None]:
    """Create an account; returns it and, when no password was given, the random one made (shown once)."""
    require_admin(actor, "Managing users")
    username = _check_name(username, "user")
    if role not in ROLES:
        raise ValueError(f"The role is one of {', '.join(ROLES)}; got {role!r}.")
    generated = None
    if password is None:
        password = generated = secrets.random_password()
    elif problem := secrets.password_problem(password):
        raise ValueError(problem)
    with session_scope() as session:
        if identity_repo.user_by_name(session=session, username=username) is not None:
            raise ValueError(f"A user called {username!r} exists already.")
        first_admin = role == ADMIN and identity_repo.count_admins(session=session) == 0
        user = identity_repo.create_user(session=session, username=username, role=role,
                                         password_hash=secrets.hash_password(password), display_name=display_name)
        if first_admin:
            _adopt_ownerless_bases(session, user)
        record(session, actor, "user.create", target=username, role=role)
        return _user_dict(user), generated


def list_users(actor: Actor) -> list[dict]:
    require_admin(actor, "The list of users")
    with session_scope() as session:
        return [_user_dict(u, identity_repo.groups_of(session=session, user_id=u.id))
                for u in identity_repo.list_users(session=session)]


def set_disabled(actor: Actor, *, username: str, disabled: bool = True) -> None:
    """Disable (every session of theirs ends at once) or enable an account."""
    require_admin(actor, "Managing users")
    with session_scope() as session:
        user = _find_user(session, username)
        if disabled and user.role == ADMIN and not user.disabled and identity_repo.count_admins(session=session) <= 1:
            raise ValueError("This is the last active admin; make another admin first.")
        user.disabled = disabled
        if disabled:
            identity_repo.delete_sessions_of(session=session, user_id=user.id)
        record(session, actor, "user.disable" if disabled else "user.enable", target=user.username)
    identity_changed()


def set_role(actor: Actor, *, username: str, role: str) -> None:
    require_admin(actor, "Managing users")
    if role not in ROLES:
        raise ValueError(f"The role is one of {', '.join(ROLES)}; got {role!r}.")
    with session_scope() as session:
        user = _find_user(session, username)
        if user.role == ADMIN and role != ADMIN and identity_repo.count_admins(session=session) <= 1:
            raise ValueError("This is the last active admin; make another admin first.")
        user.role = role
        identity_repo.delete_sessions_of(session=session, user_id=user.id)  # the menu and checks change: sign in again
        record(session, actor, "user.role", target=user.username, role=role)
    identity_changed()


def set_password(actor: Actor, *, username: str, password: str, current_password: str | None = None) -> None:
    """A new password (admins for anyone; a user for themselves, with their current one); every session of the
    user ends. Once an admin picked their own, the initial-admin-password file is removed."""
    with session_scope() as session:
        user = _find_user(session, username) if actor.is_admin else None
        if user is None:
            user = identity_repo.get_user(session=session, user_id=actor.user_id or -1)
            if user is None or user.username.lower() != username.strip().lower():
                raise Forbidden("You can change only your own password.")
            if not secrets.verify_password(user.password_hash, current_password or ""):
                raise ValueError("The current password is not right.")
        if problem := secrets.password_problem(password):
            raise ValueError(problem)
        user.password_hash = secrets.hash_password(password)
        user.password_changed_at = datetime.now(UTC)
        identity_repo.delete_sessions_of(session=session, user_id=user.id)
        record(session, actor, "user.password", target=user.username)
        username = user.username
    if username.lower() == INITIAL_ADMIN:
        (get_settings().data_dir / INITIAL_PASSWORD_FILE).unlink(missing_ok=True)


def reset_password(actor: Actor, *, username: str) -> str:
    """A new random password for someone (admins); returns it, to be shown once."""
    require_admin(actor, "Resetting passwords")
    password = secrets.random_password()
    set_password(actor, username=username, password=password)
    return password


# --- groups ------------------------------------------------------------------------------------------------


def add_group(actor: Actor, *, name: str) -> dict:
    require_admin(actor, "Managing groups")
    name = _check_name(name.removeprefix("@"), "group")
    with session_scope() as session:
        if identity_repo.group_by_name(session=session, name=name) is not None:
            raise ValueError(f"A group called {name!r} exists already.")
        group = identity_repo.create_group(session=session, name=name)
        record(session, actor, "group.create", target=name)
        return {"id": group.id, "name": group.name}


def delete_group(actor: Actor, *, name: str) -> None:
    require_admin(actor, "Managing groups")
    with session_scope() as session:
        group = identity_repo.group_by_name(session=session, name=name.removeprefix("@"))
        if group is None:
            raise NotFound(f"No group called {name!r}.")
        identity_repo.delete_group(session=session, group_id=group.id)
        record(session, actor, "group.delete", target=group.name)


def set_membership(actor: Actor, *, group: str, username: str, member: bool = True) -> bool:
    """Add (or remove) a user to a group; whether anything changed."""
    require_admin(actor, "Managing groups")
    with session_scope() as session:
        found = identity_repo.group_by_name(session=session, name=group.removeprefix("@"))
        if found is None:
            raise NotFound(f"No group called {group!r}. `kbchat groups add {group.removeprefix('@')}` makes it.")
        user = _find_user(session, username)
        change = identity_repo.add_member if member else identity_repo.remove_member
        changed = change(session=session, group_id=found.id, user_id=user.id)
        if changed:
            record(session, actor, "group.member.add" if member else "group.member.remove", target=found.name,
                   user=user.username)
        return changed


def list_groups(actor: Actor) -> list[dict]:
    require_admin(actor, "The list of groups")
    with session_scope() as session:
        return [{"id": g.id, "name": g.name, "members": members}
                for g, members in identity_repo.list_groups(session=session)]


# --- grants ------------------------------------------------------------------------------------------------


def _grantee(session, grantee: str) -> tuple[dict, str]:
    grantee = grantee.strip()
    if grantee.startswith("@"):
        group = identity_repo.group_by_name(session=session, name=grantee[1:])
        if group is None:
            raise NotFound(f"No group called {grantee[1:]!r}.")
        return {"group_id": group.id}, f"@{group.name}"
    user = _find_user(session, grantee)
    return {"user_id": user.id}, user.username


def grant(actor: Actor, *, kb_id: int, grantee: str, level: str) -> str:
    """Share a base with a user or an @group at ``level`` (owners of the base and admins); returns the grantee."""
    if level not in LEVELS:
        raise ValueError(f"The level is one of {', '.join(LEVELS)}; got {level!r}.")
    with session_scope() as session:
        kb = require_kb(session, actor, kb_id, OWNER)
        who, label = _grantee(session, grantee)
        before = {g["grantee"]: g["level"] for g in identity_repo.list_grants(session=session, kb_id=kb.id)}
        if before.get(label) == OWNER and level != OWNER and identity_repo.owner_count(session=session,
                                                                                        kb_id=kb.id) <= 1:
            raise ValueError(f"{label} is the only owner of “{kb.name}”; make someone else owner first.")
        identity_repo.set_grant(session=session, kb_id=kb.id, level=level, **who)
        record(session, actor, "grant.set", kb_id=kb.id, target=label, level=level, kb=kb.name)
        return label


def revoke(actor: Actor, *, kb_id: int, grantee: str) -> bool:
    """Remove a user's or an @group's grant on a base; whether there was one."""
    with session_scope() as session:
        kb = require_kb(session, actor, kb_id, OWNER)
        who, label = _grantee(session, grantee)
        before = {g["grantee"]: g["level"] for g in identity_repo.list_grants(session=session, kb_id=kb.id)}
        if before.get(label) == OWNER and identity_repo.owner_count(session=session, kb_id=kb.id) <= 1:
            raise ValueError(f"{label} is the only owner of “{kb.name}”; make someone else owner first.")
        removed = identity_repo.remove_grant(session=session, kb_id=kb.id, **who)
        if removed:
            record(session, actor, "grant.remove", kb_id=kb.id, target=label, kb=kb.name)
        return removed


def list_grants(actor: Actor, *, kb_id: int) -> list[dict]:
    with session_scope() as session:
        kb = require_kb(session, actor, kb_id, OWNER)
        return identity_repo.list_grants(session=session, kb_id=kb.id)


def grantee_names(actor: Actor) -> list[str]:
    """Users and @groups an owner may share with (names only)."""
    if actor.user_id is None and not actor.is_admin:
        raise Forbidden("No user is signed in.")
    with session_scope() as session:
        users = [u.username for u in identity_repo.list_users(session=session) if not u.disabled]
        groups = [f"@{g.name}" for g, _ in identity_repo.list_groups(session=session)]
        return users + groups


# --- sign-in -----------------------------------------------------------------------------------------------


def _throttled(session, username: str, client_addr: str, now: datetime) -> int | None:
    """Minutes until sign-in may be tried again, when too many recent failures name this user or address."""
    settings = get_settings()
    window = timedelta(minutes=settings.login_window_minutes)
    since = now - window
    waits = []
    for limit, kwargs in ((settings.login_max_failures, {"username": username}),
                          (settings.login_max_failures_per_address, {"client_addr": client_addr})):
        if kwargs.get("client_addr") == "":
            continue
        count, oldest = audit_repo.count_since(session=session, action="login.failure", since=since, **kwargs)
        if count >= limit and oldest is not None:
            waits.append(max(1, ceil(((oldest + window) - now).total_seconds() / 60)))
    return max(waits) if waits else None


def login(username: str, password: str, *, client_addr: str = "", user_agent: str = "") -> SignedIn:
    """Check the credentials and open a session; LoginRefused (with a message for the person) otherwise."""
    settings = get_settings()
    if not settings.password_login:
        raise LoginRefused("Sign-in with a password is turned off here; use single sign-on.")
    now = datetime.now(UTC)
    username = username.strip()[:64]
    anonymous = Actor(user_id=None, username=username, role="analyst", client_addr=client_addr)
    refusal = None
    with session_scope() as session:  # a refusal is audited (committed) before it is raised
        wait = _throttled(session, username, client_addr, now)
        user = identity_repo.user_by_name(session=session, username=username) if username and wait is None else None
        if wait is not None:
            record(session, anonymous, "login.throttled", target=username)
            refusal = f"Too many failed sign-ins. Try again in {wait} minute{'s' if wait != 1 else ''}."
        elif not (ok := secrets.verify_password(user.password_hash if user else None, password)) or user is None \
                or user.disabled:
            record(session, anonymous, "login.failure", target=username,
                   reason="disabled" if (ok and user is not None) else "credentials")
            refusal = "Wrong username or password."
        else:
            if user.password_hash and secrets.needs_rehash(user.password_hash):
                user.password_hash = secrets.hash_password(password)
            signed_in = _open_session(session, user, now, client_addr, user_agent)
            record(session, signed_in.actor, "login.success", target=user.username)
    if refusal is not None:
        raise LoginRefused(refusal)
    return signed_in


@dataclass(frozen=True)
class SignOnIdentity:
    subject: str  # issuer + subject: stable across renames at the provider
    username: str
    display_name: str
    role: str
    groups: tuple[str, ...]


def _values(claim: object) -> list[str]:
    if claim is None:
        return []
    if isinstance(claim, str):
        return [v for v in (p.strip() for p in claim.replace(",", " ").split()) if v]
    if isinstance(claim, list | tuple | set):
        return [str(v).strip() for v in claim if str(v).strip()]
    return [str(claim)]


def map_claims(claims: dict, *, issuer: str, username_claim: str, role_claim: str, admin_values: str,
               groups_claim: str) -> SignOnIdentity:
    """An ID token's claims as a kbchat account: its name (the username claim, then email, then sub, made a valid
    name), role (admin when the role claim holds one of ``admin_values``) and groups (the groups claim's values,
    made valid names)."""
    sub = str(claims.get("sub") or "")
    if not sub:
        raise ValueError("The ID token names no subject.")
    raw = str(claims.get(username_claim) or claims.get("email") or sub)
    username = re.sub(r"[^A-Za-z0-9._@-]", "-", raw.strip()).strip("-.@_")[:64] or f"user-{sub[:20]}"
    if not username[0].isalnum():
        username = "u" + username[:63]
    admins = {v.strip().lower() for v in admin_values.split(",") if v.strip()}
    role = ADMIN if any(v.lower() in admins for v in _values(claims.get(role_claim))) else "analyst"
    groups = []
    for value in _values(claims.get(groups_claim)):
        name = re.sub(r"[^A-Za-z0-9._@-]", "-", value.strip("/").split("/")[-1]).strip("-.@_")[:64]
        if name and name[0].isalnum() and name.lower() not in {g.lower() for g in groups}:
            groups.append(name)
    display = str(claims.get("name") or claims.get("email") or username)[:200]
    return SignOnIdentity(f"{issuer}|{sub}", username, display, role, tuple(groups))


def sso_sign_in(identity: SignOnIdentity, *, client_addr: str = "", user_agent: str = "") -> SignedIn:
    """Sign in (creating or updating the account) someone the sign-on provider vouched for: role and group
    memberships follow the provider on every sign-in. LoginRefused for a disabled account."""
    now = datetime.now(UTC)
    refusal = None
    role_changed = False
    with session_scope() as session:
        user = identity_repo.user_by_subject(session=session, subject=identity.subject)
        if user is None:
            taken = identity_repo.user_by_name(session=session, username=identity.username)
            name = identity.username if taken is None else f"{identity.username[:55]}-{secrets.random_password()[:6]}"
            user = identity_repo.create_user(session=session, username=name, role=identity.role, password_hash=None,
                                             display_name=identity.display_name,
                                             external_subject=identity.subject)
            record(session, Actor.operator("single sign-on"), "user.create", target=user.username,
                   role=identity.role, sso=True)
        if user.disabled:
            record(session, Actor(None, user.username, "analyst", client_addr), "login.failure",
                   target=user.username, reason="disabled", sso=True)
            refusal = "Wrong username or password."
        else:
            if user.role != identity.role:
                record(session, Actor.operator("single sign-on"), "user.role", target=user.username,
                       role=identity.role)
                user.role = identity.role
                role_changed = True
            user.display_name = identity.display_name
            current = set(identity_repo.groups_of(session=session, user_id=user.id))
            for name in identity.groups:
                group = identity_repo.group_by_name(session=session, name=name) or identity_repo.create_group(
                    session=session, name=name)
                if group.name not in current:
                    identity_repo.add_member(session=session, group_id=group.id, user_id=user.id)
            wanted = {g.lower() for g in identity.groups}
            for name in current:
                if name.lower() not in wanted:
                    group = identity_repo.group_by_name(session=session, name=name)
                    identity_repo.remove_member(session=session, group_id=group.id, user_id=user.id)
            signed_in = _open_session(session, user, now, client_addr, user_agent)
            record(session, signed_in.actor, "login.success", target=user.username, sso=True)
    if role_changed:
        identity_changed()
    if refusal is not None:
        raise LoginRefused(refusal)
    return signed_in


def _open_session(session, user: User, now: datetime, client_addr: str, user_agent: str) -> SignedIn:
    settings = get_settings()
    token = secrets.new_token()
    expires_at = now + timedelta(days=settings.session_lifetime_days)
    identity_repo.create_session(session=session, token_hash=secrets.token_digest(token), user_id=user.id,
                                 expires_at=expires_at, client_addr=client_addr, user_agent=user_agent)
    user.last_login_at = now
    return SignedIn(token=token, actor=actor_of(user, client_addr), expires_at=expires_at)


def logout(token: str, *, client_addr: str = "") -> bool:
    """End the session the token opened; whether there was one."""
    if not token:
        return False
    with session_scope() as session:
        found = identity_repo.session_with_user(session=session, token_hash=secrets.token_digest(token))
        if found is None:
            return False
        identity_repo.delete_session(session=session, token_hash=found[0].token_hash)
        record(session, actor_of(found[1], client_addr), "logout", target=found[1].username)
        return True


def actor_for_session(token: str | None, *, client_addr: str = "") -> Actor | None:
    """The signed-in user of a session token, or None when it is unknown, idle too long, past its lifetime, or its
    user is disabled (such a session is removed)."""
    if not token:
        return None
    settings = get_settings()
    now = datetime.now(UTC)
    with session_scope() as session:
        found = identity_repo.session_with_user(session=session, token_hash=secrets.token_digest(token))
        if found is None:
            return None
        row, user = found
        idle = timedelta(hours=settings.session_idle_hours)
        if user.disabled or row.expires_at <= now or row.last_seen_at + idle <= now:
            identity_repo.delete_session(session=session, token_hash=row.token_hash)
            return None
        if now - row.last_seen_at >= TOUCH_EVERY:
            identity_repo.touch_session(session=session, session_id=row.id, at=now)
        return actor_of(user, client_addr)


def end_expired_sessions() -> int:
    settings = get_settings()
    now = datetime.now(UTC)
    with session_scope() as session:
        return identity_repo.delete_expired_sessions(
            session=session, now=now, idle_before=now - timedelta(hours=settings.session_idle_hours))


# --- first start -------------------------------------------------------------------------------------------


def ensure_initial_admin(data_dir: Path | None = None, username: str = INITIAL_ADMIN) -> str | None:
    """On a database without users: create ``admin`` with a random password, write it to
    ``<data dir>/initial-admin-password`` (mode 600) and return it (to be shown once); else None."""
    with session_scope() as session:
        if identity_repo.list_users(session=session):
            return None
        password = secrets.random_password()
        try:
            with session.begin_nested():
                user = identity_repo.create_user(session=session, username=username, role=ADMIN,
                                                 password_hash=secrets.hash_password(password),
                                                 display_name="Administrator")
        except IntegrityError:  # another process made it a moment ago
            return None
        _adopt_ownerless_bases(session, user)
        record(session, Actor.operator("first start"), "user.create", target=username, role=ADMIN)
    path = (data_dir or get_settings().data_dir) / INITIAL_PASSWORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(password + "\n")
    os.chmod(path, 0o600)
    return password
