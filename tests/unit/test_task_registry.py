"""The task table both backends register from, failure classification, and worker command lines."""

from __future__ import annotations

import re

import pytest
import sqlalchemy.exc
from redis import exceptions as redis_exceptions

from tasks import registry
from tasks.queues import QUEUES, is_transient
from tasks.registry import give_up_message, schedule, spec, task_specs
from tasks.worker import embedding_threads, worker_argv, worker_niceness


def test_every_task_is_on_a_known_queue():
    specs = task_specs()
    assert specs and all(s.queue in QUEUES for s in specs)
    assert {s.queue for s in specs} == set(QUEUES)  # and every queue has work


def test_task_names_are_the_dotted_names():
    names = [s.name for s in task_specs()]
    assert {"ingest.document", "chat.answer", "maintenance.reconcile"} <= set(names)
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z]+\.[a-z_]+", n) and n.split(".")[0] == spec(n).queue for n in names)


def test_time_limits_and_retries_come_from_settings(settings_env):
    settings_env(ingest_time_limit_seconds=123, chat_time_limit_seconds=45, max_retries=7)
    assert spec("ingest.document").time_limit == 123 and spec("ingest.document").max_retries == 7
    assert spec("chat.answer").time_limit == 45
    assert spec("ingest.document").on_give_up is not None


def test_unknown_task_name_raises():
    with pytest.raises(KeyError):
        spec("ingest.nothing")


def test_periodic_jobs_run_on_the_configured_intervals_and_the_evaluation_nightly(settings_env):
    settings_env(reconcile_interval_seconds=90, consistency_interval_seconds=600, alert_check_interval_seconds=120,
                 cleanup_interval_seconds=1800, eval_at="3:05")
    jobs = {job.name: job for job in schedule()}
    assert {name: job.every for name, job in jobs.items() if job.every} == {
        "maintenance.reconcile": 90.0, "maintenance.consistency": 600.0, "maintenance.alerts": 120.0,
        "maintenance.cleanup": 1800.0,
    }
    assert jobs["maintenance.evaluate"].at == "03:05" and jobs["maintenance.evaluate"].hour_minute == (3, 5)
    assert all(spec(name).queue == "maintenance" for name in jobs)


@pytest.mark.parametrize("value", ["25:00", "3pm", "12:60", ""])
def test_a_nightly_time_that_is_not_hh_mm_is_refused_with_the_expected_form(settings_env, value):
    from pydantic import ValidationError

    from infra.settings import get_settings

    settings_env(eval_at=value)
    with pytest.raises(ValidationError, match="HH:MM") if value else _no_error():
        get_settings()


def _no_error():
    import contextlib

    return contextlib.nullcontext()  # an empty variable means "not set": the default stands


def test_celery_beat_gets_intervals_and_a_daily_crontab_in_utc(settings_env):
    settings_env(redis_url="redis://127.0.0.1:1/0", database_url="postgresql://x@127.0.0.1:1/x", eval_at="04:45",
                 cleanup_interval_seconds=77)
    from tasks.celery_app import create_app

    app = create_app("redis://127.0.0.1:1/0")  # built from these settings
    beat = app.conf.beat_schedule
    assert set(beat) == {job.name for job in schedule()}
    assert beat["maintenance.cleanup"]["schedule"] == 77.0
    nightly = beat["maintenance.evaluate"]["schedule"]
    assert nightly.hour == {4} and nightly.minute == {45}
    assert all(entry["options"]["queue"] == "maintenance" for entry in beat.values())
    assert app.conf.timezone == "UTC"


def test_the_dramatiq_scheduler_runs_a_daily_job_at_its_next_hh_mm_utc():
    from datetime import UTC, datetime

    from tasks.registry import Periodic
    from tasks.scheduler import next_daily

    job = Periodic("maintenance.evaluate", at="02:30")
    before = datetime(2026, 11, 23, 1, 0, tzinfo=UTC).timestamp()
    after = datetime(2026, 11, 23, 2, 30, tzinfo=UTC).timestamp()  # exactly at the time: the next day
    assert datetime.fromtimestamp(next_daily(job, before), UTC) == datetime(2026, 11, 23, 2, 30, tzinfo=UTC)
    assert datetime.fromtimestamp(next_daily(job, after), UTC) == datetime(2026, 11, 24, 2, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "exc,transient",
    [
        (sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")), True),
        (sqlalchemy.exc.InterfaceError("SELECT 1", {}, Exception("connection already closed")), True),
        (redis_exceptions.ConnectionError("Connection refused"), True),
        (redis_exceptions.TimeoutError("Timeout reading from socket"), True),
        (ConnectionResetError("reset by peer"), True),
        (ValueError("document 3 does not exist"), False),
        (sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")), False),
        (KeyError("x"), False),
    ],
)
def test_is_transient(exc: BaseException, transient: bool):
    assert is_transient(exc) is transient


def test_give_up_message_explains_a_time_limit():
    class SoftTimeLimitExceeded(Exception):  # Celery's name; the class itself is not needed
        pass

    ingest = spec("ingest.document")
    message = give_up_message(ingest, SoftTimeLimitExceeded())
    assert f"{ingest.time_limit} s limit" in message


def test_a_time_limit_that_struck_inside_an_import_is_still_named():
    class SoftTimeLimitExceeded(Exception):
        pass

    ingest = spec("ingest.document")
    try:
        try:
            raise SoftTimeLimitExceeded()
        except SoftTimeLimitExceeded:
            raise ImportError("initialization failed")  # noqa: B904  (as an extension module's init reports it)
    except ImportError as chained:
        assert f"{ingest.time_limit} s limit" in give_up_message(ingest, chained)
    unchained = ImportError("initialization failed")
    assert f"{ingest.time_limit} s limit" in give_up_message(ingest, unchained, runtime=ingest.time_limit + 0.2)
    assert "Internal error" in give_up_message(ingest, unchained, runtime=ingest.time_limit - 0.5)
    # the worker's clock starts just after the limit's timer: a few milliseconds under the limit is the limit
    assert f"{ingest.time_limit} s limit" in give_up_message(ingest, unchained, runtime=ingest.time_limit - 0.01)
    assert "Internal error" in give_up_message(ingest, unchained)


def test_give_up_message_for_transient_and_other_errors():
    ingest = spec("ingest.document")
    transient = give_up_message(ingest, redis_exceptions.ConnectionError("refused"))
    assert f"after {ingest.max_retries} retries" in transient and "ConnectionError" in transient
    other = give_up_message(ingest, RuntimeError("x" * 5000))
    assert "Internal error" in other and "RuntimeError" in other and len(other) <= 1000


# --- tasks.worker -------------------------------------------------------------------------------------------


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_unknown_queue_is_refused(settings_env):
    settings_env(task_backend="celery")
    with pytest.raises(ValueError, match="unknown queue.*email"):
        worker_argv(["chat", "email"], 2)


def test_celery_chat_only_worker_uses_threads(settings_env):
    settings_env(task_backend="celery")
    argv = worker_argv(["chat"], 8)
    assert argv[1:4] == ["-m", "celery", "-A"]
    assert _option(argv, "--pool") == "threads"
    assert _option(argv, "--queues") == "chat" and _option(argv, "--concurrency") == "8"


@pytest.mark.parametrize("queues", [["ingest"], ["ingest", "chat", "maintenance"], ["chat", "maintenance"]])
def test_celery_worker_with_other_queues_uses_processes(settings_env, queues: list[str]):
    settings_env(task_backend="celery")
    argv = worker_argv(queues, 2)
    assert _option(argv, "--pool") == "prefork"
    assert _option(argv, "--queues") == ",".join(queues)


def test_dramatiq_worker_listens_on_the_queues(settings_env):
    settings_env(task_backend="dramatiq")
    argv = worker_argv(["ingest", "maintenance"], 3)
    assert argv[1:4] == ["-m", "dramatiq", "tasks.dramatiq_worker"]
    queues_at = argv.index("--queues")
    assert argv[queues_at + 1 :] == ["ingest", "maintenance"]
    assert _option(argv, "--threads") == "3" and _option(argv, "--processes") == "1"
    assert "celery" not in argv


def test_registry_reads_settings_lazily(settings_env):
    settings_env(max_retries=2)
    first = spec("ingest.document").max_retries
    settings_env(max_retries=9)
    assert (first, spec("ingest.document").max_retries) == (2, 9)
    assert registry.get_settings().max_retries == 9


@pytest.mark.parametrize(
    ("queues", "expected"),
    [(["ingest"], 10), (["ingest", "maintenance"], 10), (["chat"], 0), (["ingest", "chat", "maintenance"], 0)],
)
def test_workers_without_chat_queues_give_way_to_chat(settings_env, queues: list[str], expected: int):
    settings_env(background_worker_nice=10)
    assert worker_niceness(queues) == expected


def test_background_worker_niceness_can_be_switched_off(settings_env):
    settings_env(background_worker_nice=0)
    assert worker_niceness(["ingest"]) == 0


def test_ingest_workers_share_the_cores_between_their_tasks_for_embedding(settings_env, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    settings_env(embedding_threads=0)
    assert embedding_threads(["ingest", "maintenance"], 2) == 2
    assert embedding_threads(["ingest"], 8) == 1
    assert embedding_threads(["ingest"], 1) == 4
    assert embedding_threads(["chat"], 10) == 0  # chat: every question may use all cores
    settings_env(embedding_threads=3)
    assert embedding_threads(["ingest"], 2) == 3  # an explicit setting wins


def test_retry_delays_grow_from_a_floor_and_stop_at_the_maximum():
    """Each retry waits at least the exponential step (never 0 s: a restarting database has time to come back),
    at most twice that, and never more than the maximum."""
    from tasks.queues import retry_delay_seconds

    lowest, highest = (lambda a, b: a), (lambda a, b: b)
    assert [retry_delay_seconds(n, 120, lowest) for n in range(5)] == [2, 4, 8, 16, 32]
    assert [retry_delay_seconds(n, 120, highest) for n in range(5)] == [4, 8, 16, 32, 64]
    assert retry_delay_seconds(10, 120, lowest) == 120 and retry_delay_seconds(10, 120, highest) == 120
    assert sum(retry_delay_seconds(n, 120, lowest) for n in range(2)) >= 6  # chat.answer's two retries
