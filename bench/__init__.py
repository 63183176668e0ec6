"""The benchmark suite: ``python -m bench`` (or ``stackshift bench``).

Runs workloads W1-W6 and a memory check for StackShift and, side by side in
the same run, for DBOS and the plain queues Huey and Procrastinate (installed
into ``bench/.peers-venv``, never into the project). See ``bench/cli.py`` for
the options and ``docs/benchmarks/results.md`` for the latest results.

This package is imported by both interpreters (the project's and the peers'
virtual environment), so modules at this level import nothing from the
project or from a peer.
"""
