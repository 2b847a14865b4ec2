"""docker-compose.yml and the Dockerfile, checked without a Docker engine: parsed with PyYAML and held
against what the stack needs (services, health-gated start order, volumes, profiles, --scale) and against
the real `kbchat` CLI, so no service runs a subcommand or option that does not exist."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

REQUIRED_SERVICES = {
    "postgres",
    "redis",
    "tgi",
    "migrate",
    "web",
    "worker-ingest",
    "worker-chat",
    "scheduler",
    "flower",
}
APP_SERVICES = ["web", "worker-ingest", "worker-chat", "scheduler"]  # long-running, built from this repo


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def cli_parser() -> argparse.ArgumentParser:
    from kbchat.cli import build_parser

    return build_parser()


@pytest.fixture(scope="module")
def subcommands(cli_parser: argparse.ArgumentParser) -> set[str]:
    actions = [a for a in cli_parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert actions, "kbchat.cli.build_parser() has no subcommands"
    return set(actions[0].choices)


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR-default} / ${VAR}, with every variable unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _kbchat_invocations(services: dict) -> list[tuple[str, list[str]]]:
    """(where, argv) for every `kbchat ...` run by a service command or a health check."""
    found = []
    for name, svc in services.items():
        if "command" in svc:
            argv = _argv(svc["command"])
            if argv and argv[0] == "kbchat":
                found.append((f"{name}.command", argv))
        test = (svc.get("healthcheck") or {}).get("test")
        if test:
            argv = _argv(test)
            if argv[0] == "CMD":
                argv = argv[1:]
            elif argv[0] == "CMD-SHELL":
                argv = shlex.split(" ".join(argv[1:]))
            if argv and argv[0] == "kbchat":
                found.append((f"{name}.healthcheck", argv))
    return found


def _named_volume_mounts(svc: dict) -> list[tuple[str, str]]:
    """(volume name, container path) for each named-volume mount of a service (bind mounts left out)."""
    mounts = []
    for entry in svc.get("volumes", []):
        if isinstance(entry, dict):
            if entry.get("type", "volume") == "volume" and entry.get("source"):
                mounts.append((entry["source"], entry["target"]))
            continue
        source, _, rest = entry.partition(":")
        if rest and not source.startswith((".", "/", "~", "$")):
            mounts.append((source, rest.split(":")[0]))
    return mounts


def test_compose_spec_shape(compose: dict) -> None:
    assert "version" not in compose, "the Compose spec has no top-level version"
    assert REQUIRED_SERVICES <= set(compose["services"]), REQUIRED_SERVICES - set(compose["services"])


def test_postgres_is_pgvector_with_healthcheck(services: dict) -> None:
    pg = services["postgres"]
    assert pg["image"].startswith("pgvector/pgvector:"), pg["image"]
    assert "pg_isready" in " ".join(_argv(pg["healthcheck"]["test"]))
    for var in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert var in pg["environment"], var


def test_redis_persists_and_never_evicts(services: dict) -> None:
    redis = services["redis"]
    argv = _argv(redis["command"])
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-cli" in _argv(redis["healthcheck"]["test"])


@pytest.mark.parametrize("name", sorted(REQUIRED_SERVICES))
def test_depends_on_waits_for_health_or_completion(services: dict, name: str) -> None:
    deps = services[name].get("depends_on", {})
    assert isinstance(deps, dict), f"{name}: depends_on must use the long form with a condition"
    for dep, spec in deps.items():
        assert dep in services, f"{name} depends on unknown service {dep}"
        target = services[dep]
        if str(target.get("restart", "")) == "no":
            expected = "service_completed_successfully"
        elif "healthcheck" in target:
            expected = "service_healthy"
        else:
            pytest.fail(f"{name} depends on {dep}, which has neither a health check nor runs once")
        assert spec.get("condition") == expected, f"{name} -> {dep}: {spec.get('condition')} != {expected}"
        assert not target.get("profiles") or spec.get("required") is False, (
            f"{name} hard-depends on {dep}, which only runs under a profile"
        )


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_start_after_migrations(services: dict, name: str) -> None:
    deps = services[name]["depends_on"]
    assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert deps["postgres"]["condition"] == "service_healthy"
    assert deps["redis"]["condition"] == "service_healthy"


def test_migrate_runs_once(services: dict) -> None:
    migrate = services["migrate"]
    assert str(migrate["restart"]) == "no"
    assert _argv(migrate["command"]) == ["kbchat", "migrate"]


@pytest.mark.parametrize("name", ["postgres", "redis", "tgi", "web", "worker-ingest", "worker-chat"])
def test_long_running_services_have_healthchecks(services: dict, name: str) -> None:
    assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_app_services_share_image_and_settings(services: dict) -> None:
    pg_env = {k: _interpolate(str(v)) for k, v in services["postgres"]["environment"].items()}
    expected_db = (
        "postgresql+psycopg://{POSTGRES_USER}:{POSTGRES_PASSWORD}@postgres:5432/{POSTGRES_DB}".format(
            **pg_env
        )
    )
    for name in [*APP_SERVICES, "migrate"]:
        svc = services[name]
        assert svc.get("build") and svc.get("image"), f"{name} must build the app image"
        env = {k: _interpolate(str(v)) for k, v in svc["environment"].items()}
        assert env["KBCHAT_DATABASE_URL"] == expected_db, name
        assert env["KBCHAT_REDIS_URL"].startswith("redis://redis:6379"), name
        assert env["KBCHAT_ENVIRONMENT"] == "production", name
        assert env["KBCHAT_TASK_BACKEND"] in {"celery", "dramatiq"}, name
    assert len({services[n]["image"] for n in [*APP_SERVICES, "migrate"]}) == 1


def test_named_volumes_declared_and_used(compose: dict, services: dict) -> None:
    declared = set(compose.get("volumes") or {})
    used = {vol for svc in services.values() for vol, _ in _named_volume_mounts(svc)}
    assert {"pgdata", "redisdata", "tgidata"} <= declared
    assert used <= declared, f"undeclared volumes: {used - declared}"
    assert declared <= used, f"declared but unused volumes: {declared - used}"
    assert ("pgdata", "/var/lib/postgresql/data") in _named_volume_mounts(services["postgres"])
    assert ("redisdata", "/data") in _named_volume_mounts(services["redis"])
    assert ("tgidata", "/data") in _named_volume_mounts(services["tgi"])


def test_tgi_is_gpu_only(services: dict) -> None:
    tgi = services["tgi"]
    assert "gpu" in tgi["profiles"]
    assert tgi["image"].startswith("ghcr.io/huggingface/text-generation-inference:")
    devices = tgi["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert "/health" in " ".join(_argv(tgi["healthcheck"]["test"]))
    assert "--model-id" in _argv(tgi["command"])


def test_flower_is_optional_monitoring(services: dict) -> None:
    assert "monitoring" in services["flower"]["profiles"]
    for name in ["postgres", "redis", "migrate", *APP_SERVICES]:
        assert not services[name].get("profiles"), f"{name} must run without a profile"


@pytest.mark.parametrize("name", ["worker-ingest", "worker-chat"])
def test_workers_can_scale(services: dict, name: str) -> None:
    svc = services[name]
    assert "container_name" not in svc, f"{name}: a container_name blocks --scale"
    assert not svc.get("ports"), f"{name}: host ports block --scale"


def test_web_publishes_its_port_and_is_checked_for_readiness(services: dict) -> None:
    web = services["web"]
    assert any(_interpolate(str(p)).endswith(":8501") for p in web["ports"])
    assert "/readyz" in " ".join(_argv(web["healthcheck"]["test"]))  # PostgreSQL and Redis answer


def test_every_kbchat_command_is_a_real_subcommand(
    services: dict, subcommands: set[str], cli_parser: argparse.ArgumentParser
) -> None:
    invocations = _kbchat_invocations(services)
    # migrate, web, two workers, scheduler, and the workers' health checks at least.
    assert len(invocations) >= 7, invocations
    for where, argv in invocations:
        assert len(argv) > 1 and argv[1] in subcommands, (
            f"{where}: {argv} (subcommands: {sorted(subcommands)})"
        )
        try:
            cli_parser.parse_args(argv[1:])
        except SystemExit as exc:  # argparse exits on an unknown option or a bad value
            pytest.fail(f"{where}: `{shlex.join(argv)}` is rejected by the CLI parser ({exc})")


def test_dockerfile_default_command_is_a_real_subcommand(subcommands: set[str]) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"^USER (?!root\b)\S+", text, re.M), "the image must not run as root"
    assert re.search(r"^EXPOSE 8501\b", text, re.M)
    cmd = re.findall(r"^CMD (\[.*\])\s*$", text, re.M)
    assert cmd, "no exec-form CMD"
    argv = yaml.safe_load(cmd[-1])
    assert argv[0] == "kbchat" and argv[1] in subcommands, argv
