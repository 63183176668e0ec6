"""Every command's help reads as written: ranges and defaults name values, never
Python's ``None``."""

from __future__ import annotations

import re

import click
from click.testing import CliRunner

from stackshift.cli.main import cli


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
        elif command is not None:
            found.append((*path, name))
    return found


def test_no_help_shows_none_for_a_range_or_a_default() -> None:
    runner = CliRunner()
    commands = _commands(cli)
    assert ("runs", "list") in commands and ("start",) in commands
    shown = {}
    for path in commands:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        shown[" ".join(path)] = result.output
    wrong = {name: re.findall(r"\[[^\]]*None[^\]]*\]", text) for name, text in shown.items()}
    assert {name: found for name, found in wrong.items() if found} == {}
    # An option with bounds still shows them.
    assert "1<=x<=1000" in shown["state list"]
