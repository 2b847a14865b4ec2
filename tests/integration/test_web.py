"""The web app over HTTP, as uvicorn serves it (``kbchat web``): sign-in, the session gate, the headers.

Real PostgreSQL and Redis; the web process is a child of the test, stopped and waited for.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import OPERATOR, ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def web(services, tmp_path_factory) -> Iterator[str]:
    from infra.settings import get_settings
    from kbchat.runner import web_argv

    port = _free_port()
    log_path = tmp_path_factory.mktemp("web") / "web.log"
    # Sign-in throttling counts failures per username; the per-address limit is high so tests don't share it.
    env = {**os.environ, "KBCHAT_LOGIN_MAX_FAILURES_PER_ADDRESS": "1000"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(web_argv("127.0.0.1", port, get_settings()), env=env, cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        text = log_path.read_text(errors="replace")
        assert "pw-" not in text and "Secret-" not in text, "a password reached the web log"


def _user(role: str = "analyst") -> tuple[str, str]:
    from usecases import accounts

    name, password = f"web-{uuid.uuid4().hex[:8]}", f"Secret-{uuid.uuid4().hex}"
    accounts.add_user(OPERATOR, username=name, role=role, password=password)
    return name, password


def _sign_in(url: str, name: str, password: str) -> requests.Response:
    return requests.post(f"{url}/login", data={"username": name, "password": password, "next": "/upload"},
                         allow_redirects=False, timeout=30)


def test_anonymous_page_goes_to_the_sign_in_form(web):
    page = requests.get(f"{web}/knowledge-bases", headers={"accept": "text/html"}, allow_redirects=False, timeout=10)
    assert page.status_code == 303 and page.headers["location"].startswith("/login?next=%2Fknowledge-bases")
    form = requests.get(f"{web}/login", timeout=10)
    assert form.status_code == 200 and 'name="username"' in form.text and 'name="password"' in form.text
    for path in ("/_stcore/upload_file/x/y", "/static/js/index.js", "/_stcore/host-config", "/media/x.png",
                 "/api/v2/knowledge-bases", "/api/"):  # only /api/v1 is the API, which checks its own keys
        assert requests.get(f"{web}{path}", allow_redirects=False, timeout=10).status_code == 401, path


def test_websocket_upgrade_without_a_session_is_refused(web):
    with pytest.raises(InvalidStatus) as refused:
        connect(web.replace("http", "ws") + "/_stcore/stream", open_timeout=10).close()
    assert refused.value.response.status_code in (401, 403)


def test_sign_in_sets_a_hardened_cookie_and_opens_the_app(web):
    name, password = _user()
    signed_in = _sign_in(web, name, password)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/upload"
    cookie = signed_in.headers["set-cookie"]
    assert cookie.startswith("kbchat_session=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain HTTP here; Secure when served over HTTPS
    token = signed_in.cookies["kbchat_session"]
    page = requests.get(f"{web}/upload", cookies={"kbchat_session": token}, timeout=10)
    assert page.status_code == 200 and "<script" in page.text  # Streamlit's page
    with connect(web.replace("http", "ws") + "/_stcore/stream", open_timeout=10,
                 additional_headers={"Cookie": f"kbchat_session={token}"}):
        pass
    from db.repositories import identity as identity_repo
    from infra.database import session_scope
    from infra.secrets import token_digest

    with session_scope() as session:  # only the digest is stored
        assert identity_repo.session_with_user(session=session, token_hash=token_digest(token)) is not None
        assert identity_repo.session_with_user(session=session, token_hash=token) is None


def test_secure_cookie_behind_https(web):
    name, password = _user()
    signed_in = requests.post(f"{web}/login", data={"username": name, "password": password},
                              headers={"x-forwarded-proto": "https"}, allow_redirects=False, timeout=30)
    assert signed_in.status_code == 303 and "Secure" in signed_in.headers["set-cookie"]


def test_wrong_password_says_nothing_about_which_and_is_throttled(web):
    name, password = _user()
    unknown = _sign_in(web, f"nobody-{uuid.uuid4().hex[:6]}", password)
    wrong = _sign_in(web, name, "not the password")
    assert unknown.status_code == wrong.status_code == 401
    assert "Wrong username or password." in unknown.text and "Wrong username or password." in wrong.text
    for _ in range(4):
        assert _sign_in(web, name, "still not it").status_code == 401
    throttled = _sign_in(web, name, password)  # even the right password, now
    assert throttled.status_code == 429 and "Try again in" in throttled.text and "minute" in throttled.text
    assert "kbchat_session" not in throttled.headers.get("set-cookie", "")


def test_idle_session_ends(web):
    from sqlalchemy import text

    from infra.database import session_scope
    from infra.secrets import token_digest

    name, password = _user()
    token = _sign_in(web, name, password).cookies["kbchat_session"]
    with session_scope() as session:
        session.execute(text("update web_sessions set last_seen_at = :t where token_hash = :h"),
                        {"t": datetime.now(UTC) - timedelta(hours=9), "h": token_digest(token)})
    page = requests.get(f"{web}/", cookies={"kbchat_session": token}, headers={"accept": "text/html"},
                        allow_redirects=False, timeout=10)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")


def test_logout_and_disabling_end_the_session(web):
    from usecases import accounts

    name, password = _user()
    token = _sign_in(web, name, password).cookies["kbchat_session"]
    out = requests.post(f"{web}/logout", cookies={"kbchat_session": token}, allow_redirects=False, timeout=10)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert accounts.actor_for_session(token) is None
    token = _sign_in(web, name, password).cookies["kbchat_session"]
    assert accounts.actor_for_session(token) is not None
    accounts.set_disabled(OPERATOR, username=name)
    assert accounts.actor_for_session(token) is None
    time.sleep(5.5)  # the web process believes a looked-up session for 5 s
    assert requests.get(f"{web}/_stcore/host-config", cookies={"kbchat_session": token}, timeout=10).status_code == 401
    assert _sign_in(web, name, password).status_code == 401  # a disabled account cannot sign in


def test_a_new_password_ends_sessions(web):
    from usecases import accounts

    name, password = _user()
    token = _sign_in(web, name, password).cookies["kbchat_session"]
    accounts.set_password(OPERATOR, username=name, password=f"Another-{uuid.uuid4().hex}")
    assert accounts.actor_for_session(token) is None


def test_security_headers_on_every_response(web):
    for response in (requests.get(f"{web}/login", timeout=10),
                     requests.get(f"{web}/", allow_redirects=False, timeout=10),
                     requests.get(f"{web}/api/v1/knowledge-bases", timeout=10)):  # the API is routed apart
        csp = response.headers["content-security-policy"]
        for rule in ("img-src 'self' data: blob:", "connect-src 'self'", "frame-ancestors 'none'",
                     "object-src 'none'", "default-src 'self'"):
            assert rule in csp, (rule, csp)
        assert "http" not in csp.split("script-src", 1)[1].split(";", 1)[0]  # no remote script source
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"


def test_sign_in_goes_back_only_to_this_site(web):
    name, password = _user()
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        response = requests.post(f"{web}/login", data={"username": name, "password": password, "next": target},
                                 allow_redirects=False, timeout=30)
        assert response.status_code == 303 and response.headers["location"] == "/", target
    cross_site = requests.post(f"{web}/login", data={"username": name, "password": password},
                               headers={"origin": "https://evil.example"}, allow_redirects=False, timeout=30)
    assert cross_site.status_code == 403


def test_health_and_readiness(web):
    assert requests.get(f"{web}/healthz", timeout=10).text == "ok"
    ready = requests.get(f"{web}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_readiness_says_why_when_the_database_is_gone(services, tmp_path):
    """A web process whose database does not answer: /healthz still answers, /readyz is 503 with the reason."""
    from infra.settings import get_settings
    from kbchat.runner import web_argv

    port = _free_port()
    env = {**os.environ,
           "KBCHAT_DATABASE_URL": f"postgresql://kbchat@127.0.0.1:{_free_port()}/nothing"}
    with open(tmp_path / "web.log", "wb") as log:
        process = subprocess.Popen(web_argv("127.0.0.1", port, get_settings()), env=env, cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                assert requests.get(f"{url}/healthz", timeout=2).status_code == 200
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "web.log").read_text()
                time.sleep(0.2)
        ready = requests.get(f"{url}/readyz", timeout=20)
        assert ready.status_code == 503 and "PostgreSQL" in ready.json()["reason"]
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def sso_web(services, tmp_path_factory):
    from tests.conftest import start_web, stop_web
    from tests.oidc_provider import Provider

    with Provider() as provider:
        web = start_web(tmp_path_factory.mktemp("sso-web") / "web.log", {
            "KBCHAT_OIDC_ISSUER": provider.url, "KBCHAT_OIDC_CLIENT_ID": provider.client_id,
            "KBCHAT_OIDC_CLIENT_SECRET": provider.client_secret})
        try:
            yield web.url, provider
        finally:
            stop_web(web)
            assert provider.client_secret not in web.log()


def _sso(url: str, next_path: str = "/upload") -> tuple[requests.Session, requests.Response]:
    """The browser's trip: kbchat → provider → kbchat's callback (redirects followed one by one)."""
    browser = requests.Session()
    response = browser.get(f"{url}/login/sso", params={"next": next_path}, allow_redirects=False, timeout=30)
    for _ in range(3):
        if response.status_code not in (302, 303) or response.headers["location"] == next_path:
            break
        response = browser.get(response.headers["location"], allow_redirects=False, timeout=30)
    return browser, response


def test_single_sign_on_creates_the_account_with_role_and_groups(sso_web):
    from usecases import accounts

    url, provider = sso_web
    assert "Sign in with single sign-on" in requests.get(f"{url}/login", timeout=10).text
    tag = uuid.uuid4().hex[:6]
    provider.claims = {"sub": f"sub-{tag}", "preferred_username": f"sso-{tag}", "name": "Sam Sign-On",
                       "groups": ["kbchat-admins", f"desk-{tag}"]}
    browser, done = _sso(url)
    assert done.status_code == 303 and done.headers["location"] == "/upload", done.text
    token = browser.cookies["kbchat_session"]
    actor = accounts.actor_for_session(token)
    assert actor.username == f"sso-{tag}" and actor.role == "admin"
    users = {u["username"]: u for u in accounts.list_users(OPERATOR)}
    assert users[f"sso-{tag}"]["groups"] == [f"desk-{tag}", "kbchat-admins"] and users[f"sso-{tag}"]["sso"]
    assert browser.get(f"{url}/upload", timeout=10).status_code == 200

    provider.claims = {**provider.claims, "groups": [f"other-{tag}"]}  # the provider changed them
    browser, done = _sso(url)
    users = {u["username"]: u for u in accounts.list_users(OPERATOR)}
    assert users[f"sso-{tag}"]["role"] == "analyst" and users[f"sso-{tag}"]["groups"] == [f"other-{tag}"]
    with pytest.raises(accounts.LoginRefused):  # a sign-on account has no password to sign in with
        accounts.login(f"sso-{tag}", "")


def test_single_sign_on_refuses_bad_tokens_state_and_disabled_users(sso_web):
    from usecases import accounts

    url, provider = sso_web
    tag = uuid.uuid4().hex[:6]
    provider.claims = {"sub": f"bad-{tag}", "preferred_username": f"bad-{tag}"}
    for tamper in ({"aud": "someone-else"}, {"nonce": "replayed"}, {"iss": "https://evil.example"}):
        provider.tamper = tamper
        _, done = _sso(url)
        assert done.status_code == 401 and "ID token is not valid" in done.text, (tamper, done.text)
    provider.tamper = {}
    browser = requests.Session()  # a callback nobody started (or whose state was swapped) is refused
    forged = browser.get(f"{url}/login/sso/callback", params={"code": "x", "state": "y"}, allow_redirects=False,
                         timeout=30)
    assert forged.status_code == 400 and "kbchat_session" not in forged.headers.get("set-cookie", "")
    _sso(url)
    accounts.set_disabled(OPERATOR, username=f"bad-{tag}")
    _, done = _sso(url)
    assert done.status_code == 401 and "kbchat_session" not in done.headers.get("set-cookie", "")
