"""The ``kbchat`` command line: every documented subcommand parses, and required options are required."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kbchat.cli import COMMANDS, build_parser

MINIMAL_ARGS = {
    "run": [],
    "web": [],
    "migrate": [],
    "worker": [],
    "scheduler": [],
    "ingest": ["report.pdf", "--kb", "Safety"],
    "search": ["engine failure", "--kb", "Safety"],
    "ask": ["Why did the engine fail?", "--kb", "Safety"],
    "healthcheck": [],
}


@pytest.mark.parametrize("command", sorted(MINIMAL_ARGS))
def test_documented_subcommand_exists(command: str):
    args = build_parser().parse_args([command, *MINIMAL_ARGS[command]])
    assert args.command == command
    assert command in COMMANDS


def test_every_subcommand_has_a_handler_and_every_handler_a_subcommand():
    parser = build_parser()
    (subcommands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(subcommands.choices) == set(COMMANDS)
    assert set(MINIMAL_ARGS) <= set(COMMANDS)


@pytest.mark.parametrize("command", ["ingest", "search", "ask"])
def test_kb_is_required(command: str, capsys):
    without_kb = [a for a in MINIMAL_ARGS[command] if a not in ("--kb", "Safety")]
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([command, *without_kb])
    assert exited.value.code == 2
    assert "--kb" in capsys.readouterr().err


def test_ingest_takes_several_paths_and_options():
    args = build_parser().parse_args(
        ["ingest", "a.pdf", "docs/", "--kb", "Safety", "--wait", "--timeout", "30", "--json"]
    )
    assert args.paths == [Path("a.pdf"), Path("docs/")]
    assert (args.kb, args.wait, args.timeout, args.json) == ("Safety", True, 30.0, True)


def test_ingest_needs_a_path():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", "--kb", "Safety"])


def test_worker_defaults_to_every_queue():
    args = build_parser().parse_args(["worker"])
    assert args.queues.split(",") == ["ingest", "chat", "maintenance"]
    assert build_parser().parse_args(["worker", "--queues", "chat", "--concurrency", "4"]).concurrency == 4


def test_a_command_is_required_and_unknown_ones_refused():
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve"])
