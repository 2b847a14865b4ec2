"""``kbchat users``, ``groups``, ``grant``, ``revoke`` and ``audit`` as an operator types them (real processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from tests.conftest import ROOT, run_cli


def test_users_groups_grant_and_revoke_from_the_shell(kb):
    from usecases import accounts

    kb_id, kb_name = kb
    tag = uuid.uuid4().hex[:6]
    made = run_cli("users", "add", f"ana-{tag}", "--role", "analyst", "--json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    password = created["password"]  # random, printed once
    assert created["role"] == "analyst" and len(password) >= 16
    assert accounts.login(f"ANA-{tag}", password).actor.username == f"ana-{tag}"  # names are case-insensitive

    typed = subprocess.run([sys.executable, "-m", "kbchat.cli", "users", "add", f"bo-{tag}", "--password-stdin"],
                           input="Correct-Horse-Battery\n", text=True, capture_output=True, cwd=ROOT, timeout=120)
    assert typed.returncode == 0 and "Correct-Horse-Battery" not in typed.stdout + typed.stderr
    assert accounts.login(f"bo-{tag}", "Correct-Horse-Battery")

    assert run_cli("groups", "add", f"desk-{tag}").returncode == 0
    assert run_cli("groups", "member", f"desk-{tag}", f"bo-{tag}").returncode == 0
    assert run_cli("grant", kb_name, f"@desk-{tag}", "--level", "editor").returncode == 0
    assert run_cli("grant", kb_name, f"ana-{tag}", "--level", "viewer").returncode == 0
    grants = {g["grantee"]: g["level"] for g in json.loads(run_cli("grants", kb_name, "--json").stdout)}
    assert grants == {**grants, f"@desk-{tag}": "editor", f"ana-{tag}": "viewer"}
    listed = {u["username"]: u for u in json.loads(run_cli("users", "list", "--json").stdout)}
    assert listed[f"bo-{tag}"]["groups"] == [f"desk-{tag}"]

    assert run_cli("revoke", kb_name, f"ana-{tag}").returncode == 0
    grants = {g["grantee"] for g in json.loads(run_cli("grants", kb_name, "--json").stdout)}
    assert f"ana-{tag}" not in grants

    disabled = run_cli("users", "disable", f"ana-{tag}")
    assert disabled.returncode == 0
    listed = {u["username"]: u for u in json.loads(run_cli("users", "list", "--json").stdout)}
    assert listed[f"ana-{tag}"]["disabled"]

    audit = json.loads(run_cli("audit", "--since", "1h", "--action", "grant", "--json").stdout)
    assert {(e["action"], e["target"]) for e in audit} >= {("grant.set", f"@desk-{tag}"),
                                                            ("grant.remove", f"ana-{tag}")}
    assert all(e["user"].startswith("cli:") for e in audit if e["target"].endswith(tag))
    assert password not in json.dumps(json.loads(run_cli("audit", "--since", "1h", "--json").stdout))


def test_unknown_names_exit_1_with_a_plain_message(kb):
    _, kb_name = kb
    tag = uuid.uuid4().hex[:6]
    for args, words in (
        (("users", "disable", f"ghost-{tag}"), f"No user called 'ghost-{tag}'"),
        (("users", "passwd", f"ghost-{tag}", "--password-stdin"), f"No user called 'ghost-{tag}'"),
        (("groups", "member", f"nogroup-{tag}", "admin"), f"No group called 'nogroup-{tag}'"),
        (("grant", kb_name, f"ghost-{tag}", "--level", "viewer"), f"No user called 'ghost-{tag}'"),
        (("grant", f"no-such-base-{tag}", "admin", "--level", "viewer"), "No knowledge base called"),
        (("revoke", kb_name, f"@nogroup-{tag}"), f"No group called 'nogroup-{tag}'"),
    ):
        done = run_cli(*args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert words in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
