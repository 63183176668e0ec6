"""The command lines and code the docs show exist as written.

Every ``stackshift ...`` command in README.md and docs/*.md (shell blocks and
inline code) is checked against the CLI's click command tree: each subcommand,
each option's spelling, and no more arguments than the command takes. Every
Python block is labelled a program, an app or a fragment, and compiles.
"""

from __future__ import annotations

import re

import click
import pytest

from docblocks import ROOT, Command, commands, python_blocks
from stackshift import Settings
from stackshift.cli.main import cli
from stackshift.server.__main__ import server as module_server
from stackshift.server.app import body_limit


def _leaves(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, click.Command]]:
    if isinstance(command, click.Group):
        return [leaf for name, sub in command.commands.items()
                for leaf in _leaves(sub, (*path, name))]
    return [(" ".join(path), command)]


def _options(command: click.Command) -> dict[str, click.Option]:
    found = {"--help": None, "-h": None}
    for param in command.params:
        if isinstance(param, click.Option):
            found.update({name: param for name in (*param.opts, *param.secondary_opts)})
    return found  # type: ignore[return-value]


def problems_with(command: Command) -> list[str]:
    """What in ``command`` the CLI does not have, as messages naming it."""
    shown = f"{command.where}: stackshift {' '.join(command.words)}"
    current: click.Command = cli
    path = ["stackshift"]
    positional = 0
    words = [w.strip("[]") for w in command.words]
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if "..." in word or not word:
            break  # "stackshift queues ...": the rest is left to the reader
        if word in ("|", "||", "&&", ";", ">", ">>"):
            break  # "stackshift runs list | grep run_": the shell's, not the CLI's
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            option = _options(current).get(name, False)
            if option is False:
                return [f"{shown}: {' '.join(path)} has no option {name}"]
            if option is not None and not option.is_flag and "=" not in word:
                i += 1  # its value
            continue
        if isinstance(current, click.Group):
            if word.isupper():
                break  # "stackshift --database-url URL COMMAND": any subcommand
            names = word.split("|")
            missing = [n for n in names if n not in current.commands]
            if missing:
                return [f"{shown}: {' '.join(path)} has no subcommand {missing[0]}"]
            current = current.commands[names[0]]
            path.append(names[0])
            continue
        positional += 1
        arguments = [p for p in current.params if isinstance(p, click.Argument)]
        if not any(a.nargs == -1 for a in arguments) and positional > len(arguments):
            return [f"{shown}: {' '.join(path)} takes {len(arguments)} argument(s), got {word!r}"]
    return []


def test_every_stackshift_command_in_the_docs_exists_as_written() -> None:
    found = commands()
    # The extraction itself must keep working: the docs show dozens of commands.
    assert len(found) >= 50
    where = {c.where.split(":")[0] for c in found}
    assert {"README.md", "docs/server.md", "docs/flow-control.md", "docs/postgres.md"} <= where
    subcommands = {c.words[0] for c in found}
    assert {"worker", "dev", "start", "runs", "events", "state", "queues", "schedules",
            "migrate", "server", "keys", "endpoints"} <= subcommands
    problems = [p for c in found for p in problems_with(c)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("words, fault", [
    (["runs", "list", "--state", "failed"], "stackshift runs list has no option --state"),
    (["queue", "show", "emails"], "stackshift has no subcommand queue"),
    (["schedules", "show|stop", "ID"], "stackshift schedules has no subcommand stop"),
    (["state", "get", "a", "b"], "takes 1 argument(s), got 'b'"),
])
def test_a_misspelt_command_is_reported(words: list[str], fault: str) -> None:
    assert [fault in p for p in problems_with(Command("doc.md:1", words))] == [True]


def test_readme_says_which_commands_take_database_url_and_json() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "Every command but `bench` takes `--database-url`" in readme
    assert "(`worker`, `dev` and `server` run until stopped and print no JSON)" in readme
    for path, command in _leaves(cli):
        options = _options(command)
        if path != "bench":
            assert "--database-url" in options, path
        if path not in {"bench", "worker", "dev", "server"}:
            assert "--json" in options, path


def test_server_options_table_matches_both_server_commands() -> None:
    doc = (ROOT / "docs" / "server.md").read_text()
    cells = re.findall(r"^\| (`--[\w-]+`(?:, `--[\w-]+`)*) \| (.+?) \|", doc, flags=re.M)
    rows = [(names.split("`")[1], default) for names, default in cells]
    assert [name for name, _ in rows] == [
        "--database-url", "--host", "--port", "--max-body-bytes", "--log-level", "--setting",
        "--session-secret"]
    server = cli.commands["server"]
    assert module_server is server  # "python -m stackshift.server takes the same options"
    options = _options(server)
    named = {name for names, _ in cells for name in re.findall(r"`(--[\w-]+)`", names)}
    assert set(options) == named | {"--help", "-h"}
    for name, default in rows:
        option = options[name]
        assert option is not None
        # --database-url's default comes from the environment; --setting has none;
        # --session-secret's is drawn at random; --max-body-bytes's follows the settings
        if name == "--max-body-bytes":
            assert option.default is None
            limit = body_limit(Settings())
            assert f"`{limit}`" in default and str(limit) in str(option.show_default)
        elif name not in {"--database-url", "--setting", "--session-secret"}:
            assert f"`{option.default}`" in default, (name, option.default, default)


def test_every_python_block_is_a_program_an_app_or_a_marked_fragment() -> None:
    found = python_blocks()
    labels = {(b.where, b.info) for b in found
              if b.info not in {"python", "python app", "python fragment"}}
    assert labels == set(), \
        "label each ```python block as a program, a `python app` or a `python fragment`"
    programs = [b.page for b in found if b.is_program]
    assert programs.count("README.md") >= 1 and programs.count("docs/guide.md") >= 2
    for block in found:
        block.compiled()  # a SyntaxError names the doc and line


def test_worker_queues_help_says_what_leaving_it_out_does() -> None:
    """Without --queues a worker serves every queue, not only its jobs' own ones:
    the README says so, and ``stackshift worker --help`` must not say otherwise."""
    assert "leave it out to serve every queue" in " ".join((ROOT / "README.md").read_text().split())
    option = _options(cli.commands["worker"])["--queues"]
    assert option is not None and option.help is not None
    assert "(default: every queue)" in option.help


def test_every_error_the_docs_name_is_exported_from_the_package() -> None:
    """``from stackshift import XError`` works for each error class of
    ``stackshift.errors`` that README.md or docs/*.md name."""
    import stackshift
    from stackshift import errors

    text = "\n".join(page.read_text() for page in [ROOT / "README.md",
                                                   *sorted((ROOT / "docs").glob("*.md"))])
    named = sorted(name for name, value in vars(errors).items()
                   if isinstance(value, type) and issubclass(value, errors.StackShiftError)
                   and re.search(rf"\b{name}\b", text))
    assert "WorkerLost" in named and "AttemptTimeoutError" in named
    missing = [name for name in named
               if getattr(stackshift, name, None) is not getattr(errors, name)
               or name not in stackshift.__all__]
    assert missing == []
