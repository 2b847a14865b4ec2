"""OpenID Connect, the authorization-code flow with PKCE, for single sign-on: the provider's discovery document,
the authorization URL, the code exchange and the ID token's checks (signature by the provider's keys, issuer,
audience, expiry, nonce). ``joserfc`` does the JOSE work."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import requests
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from infra.settings import get_settings

_cache: dict[str, tuple[float, Any]] = {}
CACHE_SECONDS = 3600


class SignOnFailed(Exception):
    """The provider's answer could not be used; the message is safe to show."""


@dataclass(frozen=True)
class Pending:
    """What the browser carries (signed) between leaving for the provider and coming back."""

    state: str
    nonce: str
    verifier: str
    next_path: str


def configured() -> bool:
    settings = get_settings()
    return bool(settings.oidc_issuer and settings.oidc_client_id)


def _cached(key: str, load) -> Any:
    hit = _cache.get(key)
    if hit and hit[0] > time.monotonic():
        return hit[1]
    value = load()
    _cache[key] = (time.monotonic() + CACHE_SECONDS, value)
    return value


def metadata() -> dict:
    issuer = get_settings().oidc_issuer.rstrip("/")

    def load() -> dict:
        try:
            response = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=10)
            response.raise_for_status()
            return response.json()
        except (requests.RequestException, ValueError) as exc:
            raise SignOnFailed(f"The sign-on provider at {issuer} does not answer ({type(exc).__name__}).") from None

    return _cached(f"meta:{issuer}", load)


def _keys() -> KeySet:
    uri = metadata()["jwks_uri"]

    def load() -> KeySet:
        try:
            response = requests.get(uri, timeout=10)
            response.raise_for_status()
            return KeySet.import_key_set(response.json())
        except (requests.RequestException, ValueError, JoseError) as exc:
            raise SignOnFailed(f"The sign-on provider's keys could not be read ({type(exc).__name__}).") from None

    return _cached(f"jwks:{uri}", load)


def start(redirect_uri: str, next_path: str) -> tuple[str, Pending]:
    """The provider URL to send the browser to, and what to remember until it comes back."""
    settings = get_settings()
    pending = Pending(secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48), next_path)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(pending.verifier.encode()).digest()).rstrip(b"=").decode()
    query = urlencode({
        "response_type": "code", "client_id": settings.oidc_client_id, "redirect_uri": redirect_uri,
        "scope": settings.oidc_scopes, "state": pending.state, "nonce": pending.nonce,
        "code_challenge": challenge, "code_challenge_method": "S256",
    })
    return f"{metadata()['authorization_endpoint']}?{query}", pending


def finish(code: str, redirect_uri: str, pending: Pending) -> dict:
    """Exchange the code, check the ID token; returns its claims (with the userinfo endpoint's, when there is one)."""
    settings = get_settings()
    secret = settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else None
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": pending.verifier, "client_id": settings.oidc_client_id}
    try:
        response = requests.post(metadata()["token_endpoint"], data=data, timeout=15,
                                 auth=(settings.oidc_client_id, secret) if secret else None)
        response.raise_for_status()
        tokens = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise SignOnFailed(f"The sign-on provider refused the sign-in ({type(exc).__name__}).") from None
    if "id_token" not in tokens:
        raise SignOnFailed("The sign-on provider sent no ID token.")
    try:
        token = jwt.decode(tokens["id_token"], _keys())
        jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": metadata().get("issuer", settings.oidc_issuer)},
            aud={"essential": True, "value": settings.oidc_client_id},
            exp={"essential": True}, sub={"essential": True}, nonce={"essential": True, "value": pending.nonce},
        ).validate(token.claims)
    except (JoseError, ValueError) as exc:
        raise SignOnFailed(f"The ID token is not valid ({type(exc).__name__}).") from None
    claims = dict(token.claims)
    userinfo = metadata().get("userinfo_endpoint")
    if userinfo and tokens.get("access_token"):
        try:
            extra = requests.get(userinfo, headers={"authorization": f"Bearer {tokens['access_token']}"}, timeout=10)
            if extra.ok and extra.json().get("sub") == claims["sub"]:
                claims = {**extra.json(), **claims}
        except (requests.RequestException, ValueError):
            pass
    return claims
