"""What a forked child must not share with its parent.

``os.fork()`` (``multiprocessing``'s default start on Linux, gunicorn's
``--preload``, a task runner's pre-forked workers) copies the parent's memory
into the child: its open connections, the state of its locks and counters,
but none of its other threads. A client made before the fork would otherwise
go on, in both processes, over the same connections: PostgreSQL's and the
API's sockets would carry both processes' requests and hand each the other's
answers, and SQLite would take the child's writes without the file locks that
keep the parent's last close from deleting the WAL they sit in.

Objects holding such things register here; in the child, right after the
fork, each lets go of what it inherited (its ``_after_fork`` method) and opens
its own on next use. A connection that another thread of the parent was
using at the moment of the fork is neither used nor closed in the child, only
kept here: closing it could wait forever on that thread's hold on it, or end
the parent's session. An object can also hold the fork back until such uses
end (``_before_fork``, undone by ``_after_fork_in_parent`` in the parent): a
SQLite connection copied in the middle of a write would keep the child from
ever writing.

Workers are not carried over: their threads stay in the parent. Start them
in the child.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Protocol


class ForkAware(Protocol):
    def _after_fork(self) -> None: ...


_registered: weakref.WeakSet[Any] = weakref.WeakSet()
#: What the child inherited and must not close (see the module notes).
_kept: list[Any] = []


def register(obj: ForkAware) -> None:
    """Call ``obj._after_fork()`` in every child forked while ``obj`` lives."""
    _registered.add(obj)


def keep(*inherited: Any) -> None:
    """Hold on to inherited objects for the life of the child, unused and unclosed."""
    _kept.extend(thing for thing in inherited if thing is not None)


#: The objects whose ``_before_fork`` ran for the fork under way.
_holding: list[Any] = []


def _before() -> None:
    for obj in list(_registered):
        if (before := getattr(obj, "_before_fork", None)) is not None:
            before()
            _holding.append(obj)


def _in_parent() -> None:
    while _holding:
        _holding.pop()._after_fork_in_parent()


def _in_child() -> None:
    _holding.clear()  # each starts over below, with locks of its own
    for obj in list(_registered):
        obj._after_fork()


os.register_at_fork(before=_before, after_in_parent=_in_parent, after_in_child=_in_child)
