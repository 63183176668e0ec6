"""The ``stackshift`` command: its group, exit codes and error handling."""

from __future__ import annotations

import os
import traceback
from typing import Any

import click

from .bench import bench
from .dev import dev
from .events import events
from .failures import CliFailure, debugging, guard_output, translate
from .migrate import migrate
from .options import DATABASE_ENV, list_by_default, not_empty, settings_for_commands
from .queues import queues
from .runs import runs
from .schedules import schedules
from .server_commands import COMMANDS as SERVER_COMMANDS
from .start import start
from .state import state
from .worker import worker


class _Commands(click.Group):
    """Turns SDK errors into a message on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliFailure as exc:
            if debugging() and exc.__cause__ is not None:  # an SDK error, reworded
                traceback.print_exception(exc.__cause__)
            raise
        except (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError):
            raise  # click reports these itself (a closed pipe ends quietly)
        except KeyboardInterrupt:
            # Ctrl-C on a wait or a follow: 130 (128 + SIGINT), as a shell reports
            # it, not 1, which says the run failed.
            raise click.exceptions.Exit(130) from None
        except Exception as exc:
            if debugging():
                traceback.print_exc()
            raise translate(exc) from exc


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stackshift")
@click.option("--db", "--database-url", "database_url", metavar="URL", callback=not_empty,
              help="Database for every command (sets STACKSHIFT_DATABASE_URL).")
@click.option("--setting", "assignments", multiple=True, metavar="NAME=VALUE",
              help="A setting of the commands on a database (repeatable), e.g."
                   " max_state_value_bytes=1048576: the limits the app gives Settings().")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, assignments: tuple[str, ...]) -> None:
    """StackShift: durable jobs with steps, retries, idempotency, events and state.

    Exit codes: 0 ok, 1 operation failed, 2 usage or bad input (nothing
    written), 3 not found, 4 idempotency conflict, 130 interrupted (Ctrl-C).
    """
    if database_url:
        # Each command reads the variable as its --database-url default.
        os.environ[DATABASE_ENV] = database_url
    if assignments:
        settings_for_commands(ctx, assignments)


for command in (worker, dev, start, runs, events, state, migrate, queues, schedules, bench,
                *SERVER_COMMANDS):
    cli.add_command(command)
    if isinstance(command, click.Group) and "list" in command.commands:
        list_by_default(command)  # `stackshift runs` lists runs


def main() -> None:
    guard_output()
    cli()


if __name__ == "__main__":
    main()
