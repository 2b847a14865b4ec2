"""How a sign-on provider's claims become a kbchat account: name, role, groups."""

from __future__ import annotations

import pytest

from usecases.accounts import map_claims

SETTINGS = dict(issuer="https://idp.example", username_claim="preferred_username", role_claim="groups",
                admin_values="kbchat-admins, it-ops", groups_claim="groups")


def test_username_role_and_groups_from_the_claims():
    who = map_claims({"sub": "abc", "preferred_username": "Rita.Moreno", "name": "Rita Moreno",
                      "groups": ["/analysts/credit", "kbchat-admins", "credit"]}, **SETTINGS)
    assert who.username == "Rita.Moreno" and who.display_name == "Rita Moreno" and who.role == "admin"
    assert who.groups == ("credit", "kbchat-admins")  # a path's last part; once each, case-insensitively
    assert who.subject == "https://idp.example|abc"


def test_analyst_unless_an_admin_value_is_there_and_case_does_not_matter():
    assert map_claims({"sub": "1", "groups": ["analysts"]}, **SETTINGS).role == "analyst"
    assert map_claims({"sub": "1", "groups": "IT-Ops other"}, **SETTINGS).role == "admin"  # a space-separated claim
    assert map_claims({"sub": "1"}, **SETTINGS).role == "analyst"


def test_the_name_falls_back_to_email_then_subject_and_is_made_valid():
    assert map_claims({"sub": "1", "email": "ana@bank.example"}, **SETTINGS).username == "ana@bank.example"
    assert map_claims({"sub": "00u1xyz"}, **SETTINGS).username == "00u1xyz"
    assert map_claims({"sub": "1", "preferred_username": "José Ñ / ops"}, **SETTINGS).username == "Jos------ops"
    assert map_claims({"sub": "1", "preferred_username": "__x"}, **SETTINGS).username == "x"


def test_a_token_without_a_subject_is_refused():
    with pytest.raises(ValueError, match="subject"):
        map_claims({"preferred_username": "rita"}, **SETTINGS)


def test_other_claims_can_carry_role_and_groups():
    who = map_claims({"sub": "1", "roles": ["kb-admin"], "teams": ["desk-a", "desk-b"]},
                     **{**SETTINGS, "role_claim": "roles", "admin_values": "kb-admin", "groups_claim": "teams"})
    assert who.role == "admin" and who.groups == ("desk-a", "desk-b")
