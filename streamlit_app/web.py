"""kbchat's web app as one ASGI app (Streamlit's ``st.App``, served by uvicorn): the pages, plus sign-in.

- ``/login`` (a plain form served here) and ``/logout``; a session is a random token in the HttpOnly, SameSite=Lax
  cookie ``kbchat_session``, of which PostgreSQL keeps only the SHA-256 (so any web instance accepts it).
- ``SessionGate`` refuses every other endpoint without a valid session: a page request goes to the sign-in form,
  the ``/_stcore/stream`` websocket upgrade gets 403, anything else 401. The pages check the session again on each
  run (``streamlit_app.auth``), so a session ended meanwhile (logout, disabled user, new password) stops there.
- ``SecurityHeaders`` sends a Content-Security-Policy that forbids remote images, scripts, frames and
  connections, and ``nosniff``, ``no-referrer`` and frame denial, on every response.
- ``/healthz`` (this process answers) and ``/readyz`` (PostgreSQL and Redis answer; 503 with the reason).
- ``/api/v1``: the HTTP API (``api.app``), which checks its own bearer keys. ``PagesAndApi`` hands its requests
  to it before Streamlit's own middleware (path checks, the signed-cookie session, gzip at level 9), which the API
  does not use: the web process's CPU per API call fell from 2.7–3.5 to about 1.2 ms (``bench/api.py``).

Run: ``uvicorn streamlit_app.web:app`` (``kbchat web`` and ``kbchat run`` do).
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import re
import secrets as secrets_module
import time
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import quote, urlsplit

import streamlit as st
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from streamlit.web import bootstrap

from api.app import app as api_app
from infra import oidc
from infra.database import get_engine
from infra.redis_client import get_redis
from infra.secrets import token_digest
from infra.settings import get_settings
from rag.access import Actor
from usecases import accounts

ROOT = Path(__file__).resolve().parent.parent
COOKIE = "kbchat_session"
# Reachable without a session: sign-in itself, health checks, the tab icon.
PUBLIC_PATHS = frozenset({"/login", "/logout", "/healthz", "/readyz", "/_stcore/health", "/favicon.png",
                          "/login/sso", "/login/sso/callback"})
SSO_COOKIE = "kbchat_sso"  # signed, ten minutes: the state, nonce and PKCE verifier of a sign-on under way
API_PREFIX = "/api/v1"  # the API (api.app), which checks its own bearer keys; PagesAndApi routes it
CACHE_SECONDS = 5.0  # a session looked up in PostgreSQL is believed this long by this process's HTTP gate
log = logging.getLogger(__name__)


# --- security headers ----------------------------------------------------------------------------------------


def _inline_script_hashes() -> list[str]:
    """Streamlit's index.html carries one inline script; the policy allows exactly it (by hash), nothing else."""
    index = Path(st.__file__).parent / "static" / "index.html"
    try:
        page = index.read_text()
    except OSError:
        return []
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in re.findall(r"<script>(.*?)</script>", page, re.S)
    ]


def content_security_policy() -> str:
    scripts = " ".join(["'self'", *_inline_script_hashes()])
    return "; ".join([
        "default-src 'self'",
        f"script-src {scripts}",
        "style-src 'self' 'unsafe-inline'",  # Streamlit's components set inline styles
        "img-src 'self' data: blob:",  # no remote images: a document cannot make a reader's browser call out
        "font-src 'self' data:",
        "media-src 'self' data: blob:",
        "connect-src 'self'",  # fetches and the websocket go to this origin only
        "worker-src 'self' blob:",
        "frame-src 'self' blob: data:",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
    ])


class SecurityHeaders:
    """Adds the policy headers to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", content_security_policy().encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (name, value) for name, value in self.headers if name not in names
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- the session gate ----------------------------------------------------------------------------------------


def session_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            cookie = SimpleCookie()
            try:
                cookie.load(value.decode("latin-1"))
            except Exception:
                continue
            if COOKIE in cookie:
                return cookie[COOKIE].value
    return None


def client_addr(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


class _SessionCache:
    """Sessions this process looked up a moment ago (the page's many asset requests need not each hit the
    database). The pages themselves re-check on every run."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Actor | None]] = {}

    def get(self, token: str) -> tuple[bool, Actor | None]:
        entry = self._entries.get(token_digest(token))
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def put(self, token: str, actor: Actor | None) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[token_digest(token)] = (time.monotonic() + CACHE_SECONDS, actor)

    def forget(self, token: str) -> None:
        self._entries.pop(token_digest(token), None)


SESSIONS = _SessionCache()


async def actor_of_request(scope: Scope) -> Actor | None:
    token = session_token(scope)
    if not token:
        return None
    known, actor = SESSIONS.get(token)
    if not known:
        actor = await run_in_threadpool(accounts.actor_for_session, token, client_addr=client_addr(scope))
        SESSIONS.put(token, actor)
    return actor


class SessionGate:
    """Nothing but sign-in and health checks without a valid session."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            actor = await actor_of_request(scope)
        except Exception as exc:  # the database is down: say so rather than let anyone in
            log.warning("session check failed: %s", type(exc).__name__)
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1011})
                return
            await PlainTextResponse("kbchat cannot check your session right now (its database does not answer). "
                                    "Try again in a minute.", status_code=503)(scope, receive, send)
            return
        if actor is not None:
            scope.setdefault("state", {})["actor"] = actor
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: the upgrade answers 403
            return
        request = Request(scope)
        wants_page = request.method == "GET" and "text/html" in request.headers.get("accept", "")
        if wants_page:
            target = scope["path"] + (f"?{scope['query_string'].decode()}" if scope.get("query_string") else "")
            response: Response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        else:
            response = PlainTextResponse("Sign in first: /login", status_code=401)
        await response(scope, receive, send)


# --- sign-in routes ------------------------------------------------------------------------------------------

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · kbchat</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; background: #f6f7f9; margin: 0; }}
main {{ max-width: 22rem; margin: 12vh auto; background: #fff; padding: 2rem; border-radius: .75rem;
        box-shadow: 0 1px 4px rgba(0,0,0,.08); }}
h1 {{ font-size: 1.4rem; margin: 0 0 1.25rem; }}
label {{ display: block; font-size: .9rem; margin: .9rem 0 .3rem; }}
input {{ width: 100%; box-sizing: border-box; padding: .55rem .6rem; font-size: 1rem; border: 1px solid #c8ccd2;
         border-radius: .4rem; }}
button {{ margin-top: 1.3rem; width: 100%; padding: .6rem; font-size: 1rem; border: 0; border-radius: .4rem;
          background: #ff4b4b; color: #fff; cursor: pointer; }}
.error {{ background: #fdecea; color: #8a1c12; padding: .6rem .7rem; border-radius: .4rem; font-size: .9rem; }}
.note {{ color: #5f6670; font-size: .85rem; margin-top: 1rem; }}
.sso {{ display: block; text-align: center; padding: .6rem; border: 1px solid #c8ccd2; border-radius: .4rem;
        color: #262730; text-decoration: none; margin-bottom: 1rem; }}
</style></head>
<body><main>
<h1>💬 kbchat</h1>
{message}
{sso}
<form method="post" action="/login" {password_form}>
<input type="hidden" name="next" value="{next}">
<label for="username">Username</label>
<input id="username" name="username" autocomplete="username" required autofocus value="{username}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>
<p class="note">Forgot your password? An administrator can set a new one.</p>
</main></body></html>
"""


def _safe_next(target: str | None) -> str:
    """Only a path on this site (never another host) is a place to go after signing in."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or parts.path in ("/login", "/logout"):
        return "/"
    return target


def login_page(*, message: str = "", next_path: str = "/", username: str = "", status_code: int = 200) -> Response:
    notice = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    target = html.escape(quote(_safe_next(next_path), safe=""), quote=True)
    sso = (f'<a class="sso" href="/login/sso?next={target}">Sign in with single sign-on</a>'
           if oidc.configured() else "")
    body = LOGIN_PAGE.format(message=notice, next=html.escape(_safe_next(next_path), quote=True),
                             username=html.escape(username, quote=True), sso=sso,
                             password_form="" if get_settings().password_login else "hidden")
    return HTMLResponse(body, status_code=status_code, headers={"cache-control": "no-store"})


def _same_origin(request: Request) -> bool:
    """A form posted from another site (login CSRF) is refused. Browsers say where a request comes from in
    Sec-Fetch-Site (and Origin, which is "null" under this site's no-referrer policy); scripts send neither."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _secure(request: Request) -> bool:
    mode = get_settings().cookie_secure
    return mode == "always" or (mode == "auto" and request.url.scheme == "https")


async def login_get(request: Request) -> Response:
    if await actor_of_request(request.scope) is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
    return login_page(next_path=request.query_params.get("next", "/"))


async def login_post(request: Request) -> Response:
    if not _same_origin(request):
        return PlainTextResponse("Sign-in must come from kbchat's own page.", status_code=403)
    form = await request.form()
    username = str(form.get("username", ""))[:200]
    password = str(form.get("password", ""))
    next_path = _safe_next(str(form.get("next", "/")))
    try:
        signed_in = await run_in_threadpool(
            accounts.login, username, password, client_addr=client_addr(request.scope),
            user_agent=request.headers.get("user-agent", ""),
        )
    except accounts.LoginRefused as exc:
        status = 429 if "Try again" in str(exc) else 401
        return login_page(message=str(exc), next_path=next_path, username=username, status_code=status)
    response = RedirectResponse(next_path, status_code=303)
    settings = get_settings()
    response.set_cookie(COOKIE, signed_in.token, max_age=int(settings.session_lifetime_days * 86400), path="/",
                        httponly=True, samesite="lax", secure=_secure(request))
    return response


def _sso_serializer() -> URLSafeTimedSerializer:
    settings = get_settings()
    secret = (settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret
              else token_digest(f"{settings.oidc_client_id}|{settings.database_url or settings.data_dir}"))
    return URLSafeTimedSerializer(secret, salt="kbchat-sso")


def _redirect_uri(request: Request) -> str:
    return get_settings().oidc_redirect_uri or str(request.url_for("sso_callback"))


async def sso_start(request: Request) -> Response:
    if not oidc.configured():
        return login_page(message="Single sign-on is not set up here.", status_code=404)
    try:
        url, pending = await run_in_threadpool(oidc.start, _redirect_uri(request),
                                               _safe_next(request.query_params.get("next")))
    except oidc.SignOnFailed as exc:
        return login_page(message=str(exc), status_code=502)
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(SSO_COOKIE, _sso_serializer().dumps(pending.__dict__), max_age=600, path="/login/sso",
                        httponly=True, samesite="lax", secure=_secure(request))
    return response


async def sso_callback(request: Request) -> Response:
    if not oidc.configured():
        return login_page(message="Single sign-on is not set up here.", status_code=404)
    try:
        saved = _sso_serializer().loads(request.cookies.get(SSO_COOKIE, ""), max_age=600)
        pending = oidc.Pending(**saved)
    except (BadSignature, TypeError):
        return login_page(message="The sign-on took too long or came from elsewhere. Try again.", status_code=400)
    if request.query_params.get("error"):
        return login_page(message="The sign-on provider did not sign you in.", status_code=401)
    if not secrets_module.compare_digest(request.query_params.get("state", ""), pending.state):
        return login_page(message="The sign-on came back with the wrong state. Try again.", status_code=400)
    settings = get_settings()
    try:
        claims = await run_in_threadpool(oidc.finish, request.query_params.get("code", ""), _redirect_uri(request),
                                         pending)
        identity = accounts.map_claims(
            claims, issuer=settings.oidc_issuer, username_claim=settings.oidc_username_claim,
            role_claim=settings.oidc_role_claim, admin_values=settings.oidc_admin_values,
            groups_claim=settings.oidc_groups_claim)
        signed_in = await run_in_threadpool(accounts.sso_sign_in, identity, client_addr=client_addr(request.scope),
                                            user_agent=request.headers.get("user-agent", ""))
    except (oidc.SignOnFailed, ValueError) as exc:
        return login_page(message=str(exc), status_code=401)
    except accounts.LoginRefused as exc:
        return login_page(message=str(exc), status_code=401)
    response = RedirectResponse(pending.next_path, status_code=303)
    response.set_cookie(COOKIE, signed_in.token, max_age=int(settings.session_lifetime_days * 86400), path="/",
                        httponly=True, samesite="lax", secure=_secure(request))
    response.delete_cookie(SSO_COOKIE, path="/login/sso")
    return response


async def logout(request: Request) -> Response:
    token = session_token(request.scope)
    if token:
        SESSIONS.forget(token)
        await run_in_threadpool(accounts.logout, token, client_addr=client_addr(request.scope))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=_secure(request))
    return response


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def _readiness() -> str | None:
    """Why this instance cannot serve, or None."""
    try:
        with get_engine().connect() as connection:
            connection.execute(text("select 1"))
    except Exception as exc:
        return f"PostgreSQL does not answer ({type(exc).__name__})"
    try:
        get_redis().ping()
    except Exception as exc:
        return f"Redis does not answer ({type(exc).__name__})"
    return None


async def readyz(request: Request) -> Response:
    reason = await run_in_threadpool(_readiness)
    if reason:
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ready"})


ROUTES = [
    Route("/login", login_get, methods=["GET"]),
    Route("/login", login_post, methods=["POST"]),
    Route("/logout", logout, methods=["GET", "POST"]),
    Route("/login/sso", sso_start, methods=["GET"]),
    Route("/login/sso/callback", sso_callback, methods=["GET"], name="sso_callback"),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]


def streamlit_options(settings) -> dict[str, object]:
    """Streamlit's own options for this app, given the way ``streamlit run`` takes its flags (uvicorn reads no
    ``STREAMLIT_*`` variables for them)."""
    return {
        "server_headless": True,
        "server_maxUploadSize": settings.max_upload_mb,
        "browser_gatherUsageStats": False,  # nothing leaves the organisation's machines
        "server_fileWatcherType": "none",
        "server_showEmailPrompt": False,
        "theme_base": "light",
        "client_toolbarMode": "minimal",
    }


class PagesAndApi:
    """``/api/v1/…`` straight to the API, everything else (the lifespan included) to Streamlit's app behind the
    session gate: the API as if mounted at ``/api/v1`` (the same ``root_path`` a Starlette ``Mount`` gives it),
    without the pages' stack. Other ``/api/…`` paths are pages' paths like any other, so they need a session."""

    def __init__(self, pages: ASGIApp, api: ASGIApp, prefix: str = API_PREFIX) -> None:
        self.pages, self.api, self.prefix = pages, api, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == self.prefix or path.startswith(self.prefix + "/")):
            root = scope.get("root_path", "")
            scope = dict(scope, root_path=root + self.prefix, app_root_path=scope.get("app_root_path", root))
            await self.api(scope, receive, send)
        else:
            await self.pages(scope, receive, send)


def create_app() -> ASGIApp:
    bootstrap.load_config_options(streamlit_options(get_settings()))
    pages = st.App(str(ROOT / "streamlit_app" / "app.py"), routes=ROUTES, middleware=[Middleware(SessionGate)])
    return SecurityHeaders(PagesAndApi(pages, api_app))


app = create_app()
