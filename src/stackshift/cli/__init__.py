"""The ``stackshift`` command line: a thin shell over the SDK.

Each command opens a :class:`~stackshift.StackShift` client, calls one SDK
operation and renders the answer as a table (people) or JSON (``--json``,
scripts). Exit codes are listed in :mod:`stackshift.cli.failures`.
"""
