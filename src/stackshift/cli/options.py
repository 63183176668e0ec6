"""Options every command shares, JSON arguments, and opening the client."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

import click
from click.core import ParameterSource
from rich.console import Console

from ..checks import check_filter
from ..client import (
    DEFAULT_DATABASE_URL,
    URL_ENV,
    StackShift,
    database_url_from_env,
    server_from_env,
)
from ..durations import parse_typed_duration, parse_typed_whole
from ..errors import ValidationError
from ..serialization import DuplicateKeyError, to_jsonable, unique_keys
from ..service import Service
from ..settings import Settings, command_line_setting, parse_setting
from ..store.sqlite import missing_folder, parse_sqlite_url
from ..wording import shell_word
from .failures import bad_input, in_option_terms

F = TypeVar("F", bound=Callable[..., Any])


class Whole(click.IntRange):
    """A whole-number option in ASCII digits, as the API takes them (``int``
    would also read ``1_0``, ``٣`` and `` 5``), within the range if one is given."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            try:
                value = parse_typed_whole(value)
            except ValueError:
                self.fail(f"{value!r} is not a whole number in digits", param, ctx)
        return super().convert(value, param, ctx)

    def _describe_range(self) -> str:
        # Without bounds, help shows none (click would write "x<=None").
        if self.min is None and self.max is None:
            return ""
        return super()._describe_range()


DATABASE_ENV = "STACKSHIFT_DATABASE_URL"


def database_only(database_url: str | None) -> str:
    """The database of a command that works on the database only (``migrate``,
    ``keys``, ``endpoints``): ``database_url``, else the default file, unless
    ``STACKSHIFT_URL`` names a server (exit 2: that server does not read the file)."""
    if database_url is not None:
        return database_url
    if os.environ.get(URL_ENV):
        raise bad_input(
            f"this command works on the database, and {URL_ENV} names a server "
            f"({os.environ[URL_ENV]}): give --database-url or STACKSHIFT_DATABASE_URL"
        )
    return DEFAULT_DATABASE_URL


def not_empty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An option given with an empty value is refused, not taken as left out."""
    if value is not None and not value.strip():
        raise click.BadParameter("is empty")
    return value


def _database_option(default: str) -> Callable[[F], F]:
    """``--db``/``--database-url``, left out: ``STACKSHIFT_DATABASE_URL``, else
    ``default`` (the words its help gives)."""
    return click.option(
        "--db",
        "--database-url",
        "database_url",
        envvar=DATABASE_ENV,
        show_envvar=True,
        default=None,
        callback=not_empty,
        help=f"sqlite:///path/to/file.db or postgresql://...  [default: {default}]",
    )


#: ``--database-url``; without it the SDK decides, as ``StackShift()`` does: that is
#: ``STACKSHIFT_DATABASE_URL``, else a server at ``STACKSHIFT_URL`` (with
#: ``STACKSHIFT_API_KEY``), else ``sqlite:///stackshift.db``.
database_url_option = _database_option(
    f"{DEFAULT_DATABASE_URL}, or the server at STACKSHIFT_URL when that is set")

#: ``--database-url`` of a command that works on the database only: see
#: :func:`database_only`.
database_only_option = _database_option(DEFAULT_DATABASE_URL)


def list_filter(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The callback of a list's filter option (``--job``, ``--queue``, ``--name``,
    ``--idempotency-key``, ``--correlation-key``): the SDK's check of the filter its
    parameter name names (:func:`stackshift.checks.check_filter`), made before
    anything is opened, so that a value no run or event can have (``--job ''``) is
    refused with exit 2 and the SDK's message in option terms."""
    with refusals_in_option_terms():
        check_filter(value, param.name or "")
    return value


def _typed(ctx: click.Context, name: str) -> bool:
    """Whether option ``name`` of the running command was given on the command line:
    to the command, or to its group when ``stackshift GROUP [OPTIONS]`` lists
    (:func:`list_by_default`, whose ``list`` then gets the group's values)."""
    source = ctx.get_parameter_source(name)
    if source is None and ctx.parent is not None:
        source = ctx.parent.get_parameter_source(name)
    return source is ParameterSource.COMMANDLINE


def list_by_default(group: click.Group) -> None:
    """Make ``stackshift GROUP [OPTIONS]`` the same as ``stackshift GROUP list [OPTIONS]``.

    The group takes the options of its ``list`` subcommand; given before another
    subcommand, they are refused (:func:`refuse_group_options`).
    """
    listing = group.commands["list"]
    group.invoke_without_command = True
    group.no_args_is_help = False
    group.params = list(listing.params)
    group.help = (f"{group.help}\n\nWithout a subcommand: the same as "
                  f"`stackshift {group.name} list` (and takes its options).")

    def list_or_refuse(**options: Any) -> None:
        ctx = click.get_current_context()
        if ctx.invoked_subcommand is None:
            ctx.invoke(listing, **options)
        else:
            refuse_group_options(ctx)

    group.callback = list_or_refuse


def hidden_alias(group: click.Group, command: click.Command, name: str) -> None:
    """``command`` under a second ``name`` too, left out of the group's help."""
    alias = copy.copy(command)
    alias.hidden = True
    group.add_command(alias, name)


def refuse_group_options(ctx: click.Context) -> None:
    """A usage error (exit 2) for options given to a group before another subcommand.

    ``stackshift queues --json`` lists; in ``stackshift queues --json show q`` the
    option would be ignored, so it is refused: options go after the subcommand.
    """
    given = [param for param in ctx.command.params
             if ctx.get_parameter_source(param.name or "") is ParameterSource.COMMANDLINE]
    if not given:
        return
    group, name = ctx.info_name, ctx.invoked_subcommand
    assert isinstance(ctx.command, click.Group) and name is not None
    theirs = {param.name for param in ctx.command.commands[name].params}
    listing_only = [param.opts[0] for param in given if param.name not in theirs]
    if listing_only:
        raise click.UsageError(
            f"{', '.join(listing_only)} {_is_are(listing_only)} of `stackshift {group} list`,"
            f" not of `stackshift {group} {name}`", ctx)
    options = [param.opts[0] for param in given]
    raise click.UsageError(
        f"{', '.join(options)} {'goes' if len(options) == 1 else 'go'} after the subcommand,"
        f" e.g. stackshift {group} {name} ... {' '.join(options)}", ctx)


def _is_are(options: list[str]) -> str:
    return "is an option" if len(options) == 1 else "are options"


def json_option(fn: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of text."
    )(fn)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


class _TooManyDigits(ValueError):
    """An integer longer than Python converts (``sys.get_int_max_str_digits``)."""


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _TooManyDigits(text) from None


def parse_json_argument(text: str | None, what: str) -> Any:
    """``text`` as JSON (``-`` reads stdin); ``None`` stays ``None``.

    Raises a bad-input failure (exit 2) naming ``what`` for anything that is not JSON,
    and for an object naming a key twice, as the HTTP API refuses it.
    """
    if text is None:
        return None
    if text != "-":
        return parse_json_text(text, what)
    data = sys.stdin.buffer.read()
    try:
        read = data.decode("utf-8-sig")  # JSON is UTF-8 (a byte order mark is dropped)
    except UnicodeDecodeError as exc:
        raise bad_input(f"{what} read from stdin is not UTF-8 text (byte {exc.start + 1}"
                        f" is {data[exc.start]:#04x})") from None
    if not read.strip():
        raise bad_input(f"{what} read from stdin is empty: pipe JSON into the command"
                        " (e.g. echo '{...}' | stackshift ...)")
    return parse_json_text(read, what, typed=False)


def parse_json_text(text: str, what: str, *, typed: bool = True) -> Any:
    """``text`` as JSON, refused as :func:`parse_json_argument` refuses it;
    ``typed`` when it was typed on the command line rather than read from a file
    (a hint to quote a bare word then quotes it for the shell too)."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_int=_whole,
                           object_pairs_hook=unique_keys)
    except _TooManyDigits:
        raise bad_input(f"{what}: an integer of more than {sys.get_int_max_str_digits():,}"
                        " digits cannot be written as JSON") from None
    except DuplicateKeyError as exc:
        # Readers disagree on which value such an object means: the last, or the first.
        raise bad_input(f"{what}: {exc} in one object (readers disagree on which value it "
                        "means)") from None
    except (ValueError, RecursionError) as exc:
        shown = text if len(text) <= 60 else text[:57] + "..."
        reason = exc if isinstance(exc, ValueError) else "nested too deeply"
        raise bad_input(f"{what} is not valid JSON ({reason}): {shown!r}"
                        f"{_string_hint(text, typed)}") from None
    try:
        # What the engine would refuse: a number too large (1e999 reads as
        # infinity) or arrays and objects nested too deeply.
        return to_jsonable(value, what=what)
    except TypeError as exc:
        raise bad_input(str(exc)) from None


def _string_hint(text: str, typed: bool) -> str:
    """For a bare word given where JSON goes (``state set greeting hello``): how to
    write it as a JSON string, quoted for the shell; otherwise nothing."""
    word = text.strip()
    if not word or len(word) > 60 or not (word[0].isalpha() or word[0] == "_"):
        return ""
    quoted = json.dumps(word)
    return f"; a string is written in double quotes, e.g. {shell_word(quoted) if typed else quoted}"


@overload
def duration(value: str, option: str) -> float | str: ...


@overload
def duration(value: str | None, option: str) -> float | str | None: ...


def duration(value: str | None, option: str) -> float | str | None:
    """A duration option, validated before anything is opened or written.

    A bare number means seconds (``--timeout 10``); otherwise the SDK's forms
    (``30s``, ``15m``, ``1h30m``) are accepted.
    """
    if value is None:
        return None
    try:
        seconds = parse_typed_duration(value, name=option)
    except ValidationError as exc:
        raise bad_input(str(exc)) from None
    return seconds if _is_number(value) else value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def split_list(value: str | None) -> list[str] | None:
    """``"a,b"`` to ``["a", "b"]`` (a name given twice, once); ``None`` or empty
    stays ``None``."""
    if not value:
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    return list(dict.fromkeys(items)) or None


def require_database(database_url: str) -> None:
    """Refuse (exit 2) an SQLite URL whose file does not exist, for a command that
    only reads or changes what is there: opening it would create an empty
    database and answer as if the installation had nothing yet, where the
    mistake is a ``--db`` mistyped or a command run in another folder."""
    if not database_url.startswith("sqlite:"):
        return
    try:
        path, _ = parse_sqlite_url(database_url)
    except ValidationError:
        return  # opening it says what is wrong with the URL
    if os.path.exists(path):
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):  # the folder too: named, and a slash missing if it is
        raise bad_input(f"no database at {os.path.abspath(path)} ({database_url}):"
                        f" {missing_folder(path)}; check --db ({DATABASE_ENV})")
    raise bad_input(
        f"no database at {os.path.abspath(path)} ({database_url}): check --db"
        f" ({DATABASE_ENV}) and the folder the command runs in; `stackshift"
        " migrate` creates a new one, as do `start` and `worker`")


@contextmanager
def removed_if_refused(database_url: str) -> Iterator[None]:
    """For a command that creates the SQLite file it makes something in: when the
    file does not exist yet and the command refuses its input (exit 2: nothing
    written), the file opened in the block (migrated, empty) is removed again, so
    a mistyped ``--db`` leaves nothing that later commands would take for an
    installation with nothing yet."""
    try:
        path = parse_sqlite_url(database_url)[0] if database_url.startswith("sqlite:") else None
    except ValidationError:
        path = None  # opening it says what is wrong with the URL
    fresh = path is not None and not os.path.exists(path)
    try:
        yield
    except (ValueError, TypeError, click.ClickException) as exc:
        if fresh and path is not None and (
                not isinstance(exc, click.ClickException) or exc.exit_code == 2):
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path + suffix)
        raise


#: Where the root command keeps the ``Settings`` its ``--setting`` options make.
_SETTINGS = "stackshift.settings"
#: The commands whose app (or, for ``server``, whose own ``--setting``) holds the settings.
_OWN_SETTINGS = ("worker", "dev", "server")


def settings_for_commands(ctx: click.Context, assignments: tuple[str, ...]) -> None:
    """``stackshift --setting NAME=VALUE ...``: the ``Settings`` of the command's
    client on a database, checked before anything is opened."""
    if ctx.invoked_subcommand in _OWN_SETTINGS:
        raise bad_input(
            f"--setting before {ctx.invoked_subcommand}: "
            + ("a server takes its settings after it (stackshift server --setting NAME=VALUE)"
               if ctx.invoked_subcommand == "server" else
               "the app's own Settings(...) hold for its workers; give them in the app"))
    try:
        ctx.meta[_SETTINGS] = Settings(**dict(parse_setting(a) for a in assignments))
    except (ValidationError, TypeError) as exc:
        raise bad_input(f"--setting: {exc}") from None


@contextmanager
def open_client(database_url: str | None, *, creates: bool = False) -> Iterator[StackShift]:
    """A client on ``database_url`` (migrated on first use, as the SDK does), or the
    SDK's own choice from the environment when it is ``None``.

    ``creates``: the command makes something (a run, an event, a setting), so
    an SQLite file that does not exist yet is created (and removed again if the
    command refuses its input: :func:`removed_if_refused`); otherwise it is
    refused (:func:`require_database`)."""
    on_database = server_from_env(database_url, None, None) is None
    settings: Settings | None = click.get_current_context().meta.get(_SETTINGS)
    if settings is not None and not on_database:
        raise bad_input("--setting applies to a database: a server holds to its own settings"
                        " (stackshift server --setting NAME=VALUE)")
    if not creates and on_database:
        require_database(database_url or database_url_from_env())
    with removed_if_refused((database_url or database_url_from_env()) if on_database else ""):
        app = StackShift(database_url, settings=settings)
        if isinstance(app._api, Service):
            app._api.limits_set_by = command_line_setting
        try:
            with refusals_in_option_terms():
                yield app
        finally:
            app.close()


@contextmanager
def refusals_in_option_terms() -> Iterator[None]:
    """Bad input the SDK refuses in the block (nothing was written) ends the command
    with exit 2 and its message naming the options the user typed."""
    try:
        yield
    except ValueError as exc:
        raise bad_input(in_option_terms(str(exc), _options_by_name())) from exc


def _options_by_name() -> dict[str, str]:
    """The running command's options by their parameter names, which are the SDK's:
    ``{"scheduled_at": "--scheduled-at", ...}``."""
    ctx = click.get_current_context()
    return {param.name: param.opts[0] for param in ctx.command.params
            if isinstance(param, click.Option) and param.name is not None}


def say_next_page(out: Console, cursor: str) -> None:
    """``More: <the command for the next page>``, as one line however narrow the
    screen (the terminal wraps it as it shows it), so that it is copied whole."""
    out.print(f"More: {next_page_command(cursor)}", style="dim", markup=False, soft_wrap=True)


def next_page_command(cursor: str) -> str:
    """The command that lists the page after this one: the running command with the
    arguments and options given on its command line (filters, ``--limit``) and
    ``--cursor``, so that the next page holds the same kind of rows. A database
    URL given on the command line (to the command or to ``stackshift`` itself) is
    kept as the command's ``--db``, unless it holds a password: then a shell
    comment after the command says to add it (the password stays off the screen
    and out of the shell's history). ``--json`` and the old cursor are left out.
    Arguments come after ``--`` when one starts with ``-`` (a queue named
    ``-x``), so that it is not read as an option."""
    ctx = click.get_current_context()
    names = []
    database = None  # given to the command or a group above it (stackshift --db URL runs list)
    at: click.Context | None = ctx
    while at is not None:
        given = at.get_parameter_source("database_url") is ParameterSource.COMMANDLINE
        if database is None and given:
            database = str(at.params["database_url"])
        if at.parent is not None:  # not "python -m stackshift"
            names.append(at.info_name or "")
        at = at.parent
    arguments: list[str] = []
    options: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if name is None or name in ("cursor", "as_json", "database_url"):
            continue
        value = ctx.params.get(name)
        if isinstance(param, click.Argument):
            arguments.append(str(value))
        elif value is not None and _typed(ctx, name):
            options += [param.opts[0], shell_word(str(value))]
    addition = ""
    if database is not None and urlsplit(database).password is None:
        options += ["--db", shell_word(database)]
    elif database is not None:
        addition = "  # and your --db (its password is not repeated here)"
    options += ["--cursor", shell_word(cursor)]
    quoted = [shell_word(argument) for argument in arguments]
    if any(argument.startswith("-") for argument in arguments):
        words = ["stackshift", *reversed(names), *options, "--", *quoted]
    else:
        words = ["stackshift", *reversed(names), *quoted, *options]
    return " ".join(words) + addition


