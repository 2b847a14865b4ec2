"""Helpers the monitoring tests share: real failed tasks to look at and retry, and scrapes of the exporter."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

from tests.conftest import ROOT, upload, wait_for_documents, wait_until


def ingest_ready(kb_id: int, filename: str, text: str):
    """Upload a text file through the real worker and wait until it is ready."""
    outcome = upload(kb_id, filename, text.encode())
    assert outcome.status == "queued", outcome
    document = wait_for_documents([outcome.document_id])[outcome.document_id]
    assert document.status == "ready", document.error
    return document


class RefusedMessages:
    """A trigger that makes PostgreSQL refuse answers saved into one conversation: a real, non-transient database
    error inside the worker's task (no automatic retry). ``remove()`` fixes the cause."""

    def __init__(self, conversation_id: int) -> None:
        self.conversation_id = conversation_id
        self.name = f"kbchat_test_refuse_{conversation_id}"

    def install(self) -> RefusedMessages:
        from sqlalchemy import text

        from infra.database import session_scope

        with session_scope() as session:
            session.execute(text(
                f"CREATE FUNCTION {self.name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.conversation_id = {int(self.conversation_id)} THEN "
                "RAISE EXCEPTION 'answers to conversation % are refused (test fault)', NEW.conversation_id; "
                "END IF; RETURN NEW; END $$"
            ))
            session.execute(text(f"CREATE TRIGGER {self.name} BEFORE INSERT ON messages FOR EACH ROW "
                                 f"EXECUTE FUNCTION {self.name}()"))
        return self

    def remove(self) -> None:
        from sqlalchemy import text

        from infra.database import session_scope

        with session_scope() as session:
            session.execute(text(f"DROP TRIGGER IF EXISTS {self.name} ON messages"))
            session.execute(text(f"DROP FUNCTION IF EXISTS {self.name}()"))


def failed_chat_answer(kb_id: int, question: str) -> tuple[str, int, RefusedMessages]:
    """A chat answer that fails in the worker because its conversation refuses the answer (see RefusedMessages).
    Returns (task id, conversation id, the refusal to remove)."""
    from db.repositories import conversations as conversation_repo
    from infra.database import session_scope
    from tests.conftest import enqueue

    with session_scope() as session:
        conversation_id = conversation_repo.create(session=session, kb_id=kb_id, title=question[:80]).id
    refusal = RefusedMessages(conversation_id).install()
    try:
        task_id = enqueue("chat.answer", kb_id, question, conversation_id)
        wait_for_state(task_id, "failed")
    except BaseException:
        refusal.remove()
        raise
    return task_id, conversation_id, refusal


def wait_for_state(task_id: str, state: str, timeout: float = 60) -> dict:
    from telemetry import events

    return wait_until(lambda: (r := events.get_task(task_id)) and r.get("state") == state and r, timeout,
                      f"task {task_id} to be {state}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_exporter(port: int, log_path) -> subprocess.Popen:
    """``kbchat metrics`` as a real process; waits until it answers."""
    log = open(log_path, "ab")
    process = subprocess.Popen([sys.executable, "-m", "kbchat.cli", "metrics", "--host", "127.0.0.1",
                                "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            scrape(port)
            return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"kbchat metrics exited:\n{open(log_path).read()[-3000:]}") from None
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("kbchat metrics did not answer within 60 s")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()
