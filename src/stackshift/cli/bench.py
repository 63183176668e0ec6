"""``stackshift bench``: the benchmark suite, side by side with other engines.

Runs ``python -m bench`` from the source checkout this package was installed
from (the suite and its peers' virtual environment live there, not in the
installed package); every argument is passed on. ``stackshift bench --help``
lists them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click


def checkout() -> Path | None:
    """The repository holding ``bench/``, if this is an editable (source) install."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "bench" / "__main__.py").is_file() else None


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Run the benchmark suite (python -m bench ARGS; --help for its options)."""
    root = checkout()
    if root is None:
        raise click.ClickException(
            "stackshift bench runs from a source checkout (bench/ is not installed with"
            " the package): clone the repository and install it with pip install -e ."
        )
    code = subprocess.call([sys.executable, "-m", "bench", *args], cwd=root)
    if code:
        sys.exit(code)
