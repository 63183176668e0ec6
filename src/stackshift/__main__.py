"""``python -m stackshift``: the same as the ``stackshift`` command."""

from .cli.main import main

main()
