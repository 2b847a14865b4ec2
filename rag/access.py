"""Who is acting, and the rules of access: roles, grant levels, and the errors a refused action raises.

Admins may do everything. An analyst may act on a knowledge base only through a grant (their own or a group's):
``viewer`` asks, searches and reads; ``editor`` also uploads, deletes and re-indexes documents; ``owner`` also
changes settings, renames or deletes the base and manages its grants. Levels add up; there is no deny.
"""

from __future__ import annotations

from dataclasses import dataclass

from db.models import ADMIN, EDITOR, LEVELS, OWNER, VIEWER

__all__ = ["ADMIN", "EDITOR", "OWNER", "VIEWER", "Actor", "Forbidden", "NotFound", "at_least"]


@dataclass(frozen=True)
class Actor:
    """The person (or the operator, or a scheduled job) on whose behalf a use case runs."""

    user_id: int | None  # None: the operator at a shell on the server, or a scheduled job (both act as admin)
    username: str
    role: str
    client_addr: str = ""
    scope: frozenset[int] | None = None  # an API key limited to these bases: nothing else exists for it

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    @classmethod
    def operator(cls, name: str = "operator") -> Actor:
        """A shell on the server (``kbchat`` commands) or kbchat's own jobs: they act as admin."""
        return cls(user_id=None, username=name, role=ADMIN)


class NotFound(LookupError):
    """Missing, or not the actor's to see: both answer the same, so nothing tells them apart."""


class Forbidden(PermissionError):
    """The actor may see it but not do this (an analyst with too low a level, or an admin-only action)."""


def at_least(have: str | None, need: str) -> bool:
    return have is not None and LEVELS.index(have) >= LEVELS.index(need)


def kb_not_found(kb_id: int | str) -> NotFound:
    return NotFound(f"Knowledge base {kb_id} not found.")
