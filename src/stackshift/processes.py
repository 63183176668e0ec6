"""Whether a worker's process on this machine has ended, known without waiting.

A worker that dies (kill -9, out of memory, a crash) stops renewing its leases,
and other workers take its runs over once those leases run out. When the dead
process was on the same machine as a live worker, the live one can tell at once
that it is gone, and need not wait for the lease: Linux keeps a process's start
time in ``/proc/<pid>/stat``, so a process id with a different start time (or
none) is a different process (or none).

Process ids compare only within one *space*: one boot of one kernel, one pid
namespace (containers have their own) and one user (``/proc`` may hide other
users' processes). Workers record their space and start time when they
register; a worker only judges workers of its own space. Elsewhere (no
``/proc``, another machine, a restarted container) the lease decides, as before.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessId:
    #: boot id, pid namespace and user: process ids are comparable within one space
    space: str
    pid: int
    #: clock ticks after boot at which the process started
    started: int


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of process ``pid``, or None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (command) state ...": the command may hold spaces and parentheses.
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


@functools.lru_cache(maxsize=4)
def _current(pid: int) -> ProcessId | None:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
        # /proc must show this process's own namespace (it need not, after unshare).
        if int(Path("/proc/self/stat").read_text().split()[0]) != pid:
            return None
        stat = _stat(pid)
    except (OSError, ValueError, IndexError):
        return None
    if stat is None:
        return None
    return ProcessId(f"{boot}/{namespace}/uid:{os.getuid()}", pid, stat[1])


def current() -> ProcessId | None:
    """This process's id, or None where ``/proc`` cannot tell (not Linux)."""
    return _current(os.getpid())


def ended(pid: int, started: int) -> bool:
    """Whether the process ``pid`` that started at ``started`` (in this process's
    space) has ended: no such process, another one under its id, or a zombie."""
    try:
        stat = _stat(pid)
    except (OSError, ValueError, IndexError):
        return False  # cannot tell: the lease decides
    return stat is None or stat[1] != started or stat[0] in ("Z", "X")
