"""``kbchat users``, ``groups``, ``grant``, ``revoke`` and ``audit``: accounts and access from a shell on the server.

Whoever has a shell on the server is the operator and acts as admin (README, "Accounts and access"). Unknown
names exit 1 with a plain message. Like the other commands, each imports what it uses when it runs.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta

from kbchat.kb_commands import check_services, operator


def add_parsers(sub) -> None:
    p = sub.add_parser("users", help="accounts: add, list, disable, enable, passwd, role")
    users = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = users.add_parser("add", help="create an account (a random password is printed once without --password-stdin)")
    q.add_argument("name")
    q.add_argument("--role", choices=("admin", "analyst"), default="analyst")
    q.add_argument("--display-name", default="")
    q.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    q.add_argument("--json", action="store_true")
    q = users.add_parser("list", help="every account with role, groups, disabled flag and last sign-in")
    q.add_argument("--json", action="store_true")
    for action, text in (("disable", "disable an account (its sessions end at once)"), ("enable", "enable again")):
        users.add_parser(action, help=text).add_argument("name")
    q = users.add_parser("passwd", help="set a new password (its sessions end)")
    q.add_argument("name")
    q.add_argument("--password-stdin", action="store_true", help="read it from standard input (else prompted)")
    q = users.add_parser("role", help="make an account admin or analyst")
    q.add_argument("name")
    q.add_argument("role", choices=("admin", "analyst"))

    p = sub.add_parser("groups", help="groups of users: add, member, remove-member, list, delete")
    groups = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    groups.add_parser("add", help="create a group").add_argument("name")
    groups.add_parser("delete", help="delete a group (its grants go with it)").add_argument("name")
    for action, text in (("member", "add a user to a group"), ("remove-member", "take a user out of a group")):
        q = groups.add_parser(action, help=text)
        q.add_argument("group")
        q.add_argument("user")
    groups.add_parser("list", help="groups and their members").add_argument("--json", action="store_true")

    p = sub.add_parser("grant", help="share a knowledge base with a user or an @group")
    p.add_argument("kb", help="knowledge base name")
    p.add_argument("grantee", metavar="USER_OR_@GROUP")
    p.add_argument("--level", choices=("viewer", "editor", "owner"), required=True)
    p = sub.add_parser("revoke", help="take back a user's or @group's access to a knowledge base")
    p.add_argument("kb")
    p.add_argument("grantee", metavar="USER_OR_@GROUP")
    p = sub.add_parser("grants", help="who may use a knowledge base, at which level")
    p.add_argument("kb")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("apikey", help="keys for the HTTP API: create, list, revoke")
    keys = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = keys.add_parser("create", help="a new key acting as a user (printed once)")
    q.add_argument("--user", required=True)
    q.add_argument("--kb", action="append", default=[], metavar="KB", help="limit it to this base (repeatable)")
    q.add_argument("--expires-days", type=int)
    q.add_argument("--json", action="store_true")
    keys.add_parser("list", help="prefix, owner, scope, created, last used").add_argument("--json", action="store_true")
    keys.add_parser("revoke", help="revoke a key at once").add_argument("prefix")

    p = sub.add_parser("feedback", help="answers rated by their askers (thumbs, comments, what was retrieved)")
    p.add_argument("--kb", help="only this knowledge base")
    p.add_argument("--since", default="30d", help="ISO date/time (UTC), or a span like 2h, 3d (default 30d)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("audit", help="the audit log: sign-ins, changes, questions")
    p.add_argument("--since", help="ISO date/time (UTC), or a span like 2h, 3d (default 7d)", default="7d")
    p.add_argument("--user", help="only this user")
    p.add_argument("--action", help="only actions starting with this (login, grant, question, …)")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--json", action="store_true")


def _fail(message: str) -> int:
    print(f"kbchat: {message}", file=sys.stderr)
    return 1


def _read_password(stdin: bool, confirm: bool = True) -> str:
    import getpass

    if stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("New password: ")
    if confirm and getpass.getpass("Again: ") != password:
        raise ValueError("The two passwords differ.")
    return password


def users_command(args) -> int:
    from rag.access import Forbidden, NotFound
    from usecases import accounts

    check_services()
    actor = operator()
    try:
        if args.action == "add":
            password = _read_password(True) if args.password_stdin else None
            user, generated = accounts.add_user(actor, username=args.name, role=args.role, password=password,
                                                display_name=args.display_name)
            if args.json:
                print(json.dumps({**user, **({"password": generated} if generated else {})}, indent=2))
            else:
                print(f"kbchat: created {user['role']} {user['username']!r}")
                if generated:
                    print(f"password (shown once; change it with `kbchat users passwd {user['username']}`): "
                          f"{generated}")
        elif args.action == "list":
            users = accounts.list_users(actor)
            if args.json:
                print(json.dumps(users, indent=2))
            else:
                print(f"{'username':<24} {'role':<8} {'state':<9} {'last sign-in':<20} groups")
                for u in users:
                    last = (u["last_login_at"] or "never")[:19].replace("T", " ")
                    state = "disabled" if u["disabled"] else "active"
                    print(f"{u['username']:<24} {u['role']:<8} {state:<9} {last:<20} {', '.join(u['groups'])}")
        elif args.action in ("disable", "enable"):
            accounts.set_disabled(actor, username=args.name, disabled=args.action == "disable")
            print(f"kbchat: {args.name} {args.action}d" + (" (their sessions ended)" if args.action == "disable"
                                                            else ""))
        elif args.action == "passwd":
            accounts.set_password(actor, username=args.name, password=_read_password(args.password_stdin))
            print(f"kbchat: new password set for {args.name}; their sessions ended")
        elif args.action == "role":
            accounts.set_role(actor, username=args.name, role=args.role)
            print(f"kbchat: {args.name} is now {args.role}")
    except (NotFound, Forbidden, ValueError) as exc:
        return _fail(str(exc).strip("'\""))
    return 0


def groups_command(args) -> int:
    from rag.access import Forbidden, NotFound
    from usecases import accounts

    check_services()
    actor = operator()
    try:
        if args.action == "add":
            group = accounts.add_group(actor, name=args.name)
            print(f"kbchat: created group @{group['name']}")
        elif args.action == "delete":
            accounts.delete_group(actor, name=args.name)
            print(f"kbchat: deleted group @{args.name.removeprefix('@')}")
        elif args.action in ("member", "remove-member"):
            changed = accounts.set_membership(actor, group=args.group, username=args.user,
                                              member=args.action == "member")
            verb = "added to" if args.action == "member" else "removed from"
            print(f"kbchat: {args.user} {verb} @{args.group.removeprefix('@')}" + ("" if changed else
                                                                                  " (nothing to change)"))
        elif args.action == "list":
            groups = accounts.list_groups(actor)
            if args.json:
                print(json.dumps(groups, indent=2))
            else:
                for g in groups:
                    print(f"@{g['name']}: {', '.join(g['members']) or '(no members)'}")
    except (NotFound, Forbidden, ValueError) as exc:
        return _fail(str(exc).strip("'\""))
    return 0


def _kb(actor, name: str) -> int:
    from usecases.knowledge_bases import find_kb

    return find_kb(actor, name=name)


def grant_command(args) -> int:
    from rag.access import Forbidden, NotFound
    from usecases import accounts

    check_services()
    actor = operator()
    try:
        label = accounts.grant(actor, kb_id=_kb(actor, args.kb), grantee=args.grantee, level=args.level)
    except (NotFound, Forbidden, ValueError) as exc:
        return _fail(str(exc).strip("'\""))
    print(f"kbchat: {label} is now {args.level} of {args.kb!r}")
    return 0


def revoke_command(args) -> int:
    from rag.access import Forbidden, NotFound
    from usecases import accounts

    check_services()
    actor = operator()
    try:
        removed = accounts.revoke(actor, kb_id=_kb(actor, args.kb), grantee=args.grantee)
    except (NotFound, Forbidden, ValueError) as exc:
        return _fail(str(exc).strip("'\""))
    print(f"kbchat: {args.grantee} " + ("no longer has access to" if removed else "had no grant on")
          + f" {args.kb!r}")
    return 0


def grants_command(args) -> int:
    from rag.access import Forbidden, NotFound
    from usecases import accounts

    check_services()
    actor = operator()
    try:
        grants = accounts.list_grants(actor, kb_id=_kb(actor, args.kb))
    except (NotFound, Forbidden) as exc:
        return _fail(str(exc).strip("'\""))
    if args.json:
        print(json.dumps(grants, indent=2))
    else:
        for g in grants:
            print(f"{g['grantee']:<30} {g['level']}")
    return 0


def apikey_command(args) -> int:
    from rag.access import Forbidden, NotFound
    from usecases import api_keys
    from usecases.knowledge_bases import find_kb

    check_services()
    actor = operator()
    try:
        if args.action == "create":
            kb_ids = [find_kb(actor, name=name) for name in args.kb] or None
            made = api_keys.create_key(actor, username=args.user, kb_ids=kb_ids, expires_days=args.expires_days)
            if args.json:
                print(json.dumps(made, indent=2))
            else:
                scope = made["scope"] if isinstance(made["scope"], str) else ", ".join(made["scope"])
                print(f"kbchat: API key for {made['user']} ({scope}"
                      + (f", expires {made['expires_at'][:10]}" if made["expires_at"] else "") + "), shown once:")
                print(made["key"])
        elif args.action == "list":
            keys = api_keys.list_keys(actor)
            if args.json:
                print(json.dumps(keys, indent=2))
            else:
                for k in keys:
                    scope = k["scope"] if isinstance(k["scope"], str) else ", ".join(k["scope"])
                    state = "revoked" if k["revoked"] else "active"
                    print(f"{k['prefix']}  {k['user']:<18} {state:<8} created {k['created_at'][:16]}  last used "
                          f"{(k['last_used_at'] or 'never')[:16]}  {scope}")
        elif args.action == "revoke":
            api_keys.revoke_key(actor, prefix=args.prefix)
            print(f"kbchat: key {args.prefix} revoked")
    except (NotFound, Forbidden, ValueError) as exc:
        return _fail(str(exc).strip("'\""))
    return 0


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """'2h', '3d', '30m' before now, or an ISO date/time (UTC when it names no zone)."""
    now = now or datetime.now(UTC)
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    text = text.strip()
    if text[:-1].isdigit() and text[-1:] in units:
        return now - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since takes a span like 2h or 3d, or a date like 2026-12-01; got {text!r}.") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def feedback_command(args) -> int:
    from rag.access import NotFound
    from usecases.feedback import list_feedback
    from usecases.knowledge_bases import find_kb

    check_services()
    actor = operator()
    try:
        since = parse_since(args.since)
        kb_id = find_kb(actor, name=args.kb) if args.kb else None
    except (ValueError, NotFound) as exc:
        return _fail(str(exc).strip("'\""))
    rows = list_feedback(actor, kb_id=kb_id, since=since)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    helpful = sum(r["rating"] > 0 for r in rows)
    print(f"{len(rows)} rating(s) since {since:%Y-%m-%d %H:%M} UTC" + (f", {helpful / len(rows):.0%} helpful" if rows
                                                                       else ""))
    for r in rows:
        mark = "+" if r["rating"] > 0 else "-"
        print(f"{mark} {r['at'][:16].replace('T', ' ')}  {r['kb'][:24]:<24} {r['user']:<16} {r['question'][:70]}"
              + (f"\n    “{r['comment'][:200]}”" if r["comment"] else ""))
    return 0


def audit_command(args) -> int:
    from usecases.audit import list_events

    check_services()
    try:
        since = parse_since(args.since)
    except ValueError as exc:
        return _fail(str(exc))
    events = list_events(operator(), since=since, username=args.user, action=args.action, limit=args.limit)
    if args.json:
        print(json.dumps(events, indent=2, ensure_ascii=False, default=str))
        return 0
    for e in events:
        detail = ", ".join(f"{k}={v}" for k, v in e["details"].items() if k != "chunk_ids")
        print(f"{e['at'][:19].replace('T', ' ')}  {e['user']:<18} {e['action']:<16} {e['target'][:60]}"
              + (f"  ({detail})" if detail else ""))
    if not events:
        print("kbchat: nothing in the audit log for that filter")
    return 0


COMMANDS = {
    "users": users_command,
    "groups": groups_command,
    "grant": grant_command,
    "revoke": revoke_command,
    "grants": grants_command,
    "audit": audit_command,
    "apikey": apikey_command,
    "feedback": feedback_command,
}
