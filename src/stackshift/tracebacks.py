"""Tracebacks as runs keep them: the user's frames, without StackShift's own.

A step's function is called by the engine, and the handler too: left in, the
engine's frames (the executor calling the handler, ``ctx.step.run`` calling the
function) would sit between the lines of the user's code in every stored error.
They are left out of each traceback of a chain (``raise ... from``, an error
raised while handling another, the errors of a group) that also holds a frame of
other code. An error raised wholly inside StackShift keeps every frame: there is
nothing else to show, and that is the traceback to report. With
``STACKSHIFT_TRACEBACKS=full`` in a worker's environment, every traceback it
stores keeps every frame (to look into StackShift itself).
"""

from __future__ import annotations

import os
import traceback

#: Frames whose file lies under this folder are StackShift's own.
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep

#: The environment variable that, set to ``full``, keeps StackShift's frames.
FULL_ENV = "STACKSHIFT_TRACEBACKS"


def _ours(frame: traceback.FrameSummary) -> bool:
    return frame.filename.startswith(_PACKAGE)


def _trim(report: traceback.TracebackException, seen: set[int]) -> None:
    if id(report) in seen:
        return
    seen.add(id(report))
    theirs = [frame for frame in report.stack if not _ours(frame)]
    if theirs and len(theirs) < len(report.stack):
        report.stack = traceback.StackSummary.from_list(theirs)
    for inner in (report.__cause__, report.__context__, *(report.exceptions or ())):
        if inner is not None:
            _trim(inner, seen)


def format_exception(exc: BaseException) -> str:
    """``exc`` and its chain as Python prints them, less StackShift's own frames
    (all of them with ``STACKSHIFT_TRACEBACKS=full``)."""
    report = traceback.TracebackException.from_exception(exc)
    if os.environ.get(FULL_ENV) != "full":
        _trim(report, set())
    return "".join(report.format())
