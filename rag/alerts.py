"""Alerts: recorded in PostgreSQL (the Monitoring page lists them) and POSTed as JSON to a configured webhook.

The same alert (kind and knowledge base) goes out at most once per ``alert_period_seconds``. Delivery retries
refused connections, timeouts, 429 and 5xx with exponential backoff and jitter (tenacity); a 4xx other than 429
is a configuration problem and is not retried. The webhook URL's secrets (user, password, path, query) never
appear in logs or stored errors: only ``scheme://host:port`` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import requests
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from db.repositories import alerts as alert_repo
from infra.database import session_scope
from infra.settings import get_settings
from infra.urls import scrub, shown_url
from telemetry import retrievals

log = logging.getLogger(__name__)

EMPTY_RETRIEVALS = "empty_retrievals"
RETRIEVAL_DROP = "retrieval_drop"


@dataclass
class Delivery:
    status: str  # sent | failed | not_configured
    attempts: int = 0
    error: str | None = None


class _Retryable(Exception):
    """A webhook answer worth retrying (429 or 5xx)."""


def post_webhook(url: str, payload: dict) -> Delivery:
    """POST ``payload`` to ``url`` with retries; never raises."""
    settings = get_settings()
    attempts = 0

    def attempt() -> None:
        nonlocal attempts
        attempts += 1
        response = requests.post(url, json=payload, timeout=settings.alert_webhook_timeout_seconds,
                                 headers={"User-Agent": "kbchat-alerts"})
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise ValueError(f"HTTP {response.status_code}: {response.text[:200]}")

    retrying = Retrying(
        stop=stop_after_attempt(1 + max(0, settings.alert_webhook_retries)),
        wait=wait_exponential_jitter(initial=settings.alert_webhook_backoff_seconds, max=60,
                                     jitter=settings.alert_webhook_backoff_seconds),
        retry=retry_if_exception(lambda e: isinstance(e, _Retryable | requests.ConnectionError | requests.Timeout)),
        before_sleep=lambda state: log.warning(
            "alert webhook %s: attempt %d failed (%s); retrying", shown_url(url), state.attempt_number,
            scrub(str(state.outcome.exception()), url) if state.outcome else "?",
        ),
        reraise=False,
    )
    try:
        retrying(attempt)
    except RetryError as exc:
        cause = exc.last_attempt.exception()
        error = scrub(f"{type(cause).__name__}: {cause}", url)[:500]
        log.error("alert webhook %s: gave up after %d attempts: %s", shown_url(url), attempts, error)
        return Delivery("failed", attempts, error)
    except Exception as exc:  # not retryable: a 4xx, a malformed URL
        error = scrub(f"{type(exc).__name__}: {exc}", url)[:500]
        log.error("alert webhook %s refused the alert: %s", shown_url(url), error)
        return Delivery("failed", attempts, error)
    log.info("alert webhook %s took the alert (%d attempt(s))", shown_url(url), attempts)
    return Delivery("sent", attempts)


def raise_alert(*, kind: str, message: str, details: dict, kb_id: int | None = None,
                kb_name: str | None = None) -> dict | None:
    """Record and send an alert, unless the same one went out within the period; returns it, or None if held."""
    settings = get_settings()
    now = datetime.now(UTC)
    payload = {
        "source": "kbchat",
        "kind": kind,
        "severity": "warning",
        "text": f"kbchat: {message}",  # what Slack, Mattermost and Teams-style incoming webhooks display
        "message": message,
        "knowledge_base": {"id": kb_id, "name": kb_name} if kb_id is not None else None,
        "created_at": now.isoformat(),
        "details": details,
    }
    url = settings.alert_webhook_url.get_secret_value() if settings.alert_webhook_url else ""
    with session_scope() as session:
        alert_repo.lock_kind(session=session, kind=kind, kb_id=kb_id)  # held until commit: no two senders
        since = now - timedelta(seconds=settings.alert_period_seconds)
        if alert_repo.last_sent(session=session, kind=kind, kb_id=kb_id, since=since) is not None:
            log.info("alert %s (kb %s) already raised within %d s: not sent again", kind, kb_id,
                     settings.alert_period_seconds)
            return None
        # Recorded as "sending" (which holds back other senders) and committed before the POST: no database
        # lock or transaction is held while the webhook is slow or retried.
        alert_id = alert_repo.add(
            session=session, kind=kind, kb_id=kb_id, message=message, payload=payload,
            delivery="sending" if url else "not_configured", attempts=0, delivery_error=None,
        ).id
    delivery = Delivery("not_configured")
    if url:
        delivery = post_webhook(url, payload)
        with session_scope() as session:
            alert_repo.set_delivery(session=session, alert_id=alert_id, delivery=delivery.status,
                                    attempts=delivery.attempts, error=delivery.error)
    return {"id": alert_id, "kind": kind, "message": message, "delivery": delivery.status,
            "attempts": delivery.attempts, "error": delivery.error}


def check_empty_retrievals() -> dict:
    """The empty-retrieval rule: too large a share of recent questions found no relevant passage → alert."""
    settings = get_settings()
    window = settings.empty_retrieval_window_seconds
    stats = retrievals.empty_retrievals(window)
    rate = stats["rate"]
    outcome = {"rule": EMPTY_RETRIEVALS, "empty": stats["empty"], "questions": stats["answers"], "rate": rate,
               "threshold": settings.empty_retrieval_alert_rate, "alert": None}
    if rate is None or stats["answers"] < settings.empty_retrieval_alert_min_questions:
        return outcome
    if rate <= settings.empty_retrieval_alert_rate:
        return outcome
    since = int((datetime.now(UTC) - timedelta(seconds=window)).timestamp() * 1000)
    recent = [e for e in retrievals.recent_empty_retrievals(500) if int(float(e.get("ts", 0)) * 1000) >= since]
    by_kb: dict[str, int] = {}
    for entry in recent:
        by_kb[entry.get("kb_id", "?")] = by_kb.get(entry.get("kb_id", "?"), 0) + 1
    minutes = window // 60
    message = (f"{stats['empty']} of {stats['answers']} questions in the last {minutes} min ({rate:.0%}) found no "
               f"relevant passage (alert above {settings.empty_retrieval_alert_rate:.0%}): the knowledge bases "
               f"may be missing documents people look for.")
    outcome["alert"] = raise_alert(
        kind=EMPTY_RETRIEVALS, message=message,
        details={"window_seconds": window, "empty": stats["empty"], "questions": stats["answers"],
                 "rate": round(rate, 4), "by_knowledge_base": by_kb,
                 "examples": [e.get("question", "")[:200] for e in recent[:5]]},
    )
    return outcome
