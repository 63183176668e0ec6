"""``python -m stackshift.cli``: the same as the ``stackshift`` command."""

from .main import main

main()
