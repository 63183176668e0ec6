"""Telling whether a process on this machine has ended (stackshift.processes)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from stackshift import processes


def state_and_start(pid: int) -> tuple[str, int]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def test_this_process_has_an_id_and_has_not_ended() -> None:
    me = processes.current()
    assert me is not None  # Linux, with /proc
    assert me.space.count("/") >= 2 and "uid:" in me.space
    assert not processes.ended(me.pid, me.started)


def test_another_start_time_under_the_same_pid_is_another_process() -> None:
    me = processes.current()
    assert me is not None
    assert processes.ended(me.pid, me.started + 1)


def test_an_exited_and_a_zombie_child_have_ended() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _, started = state_and_start(child.pid)
        assert not processes.ended(child.pid, started)
        child.kill()
        # Killed but not yet reaped: a zombie, gone all the same.
        deadline = time.monotonic() + 10
        while state_and_start(child.pid)[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert processes.ended(child.pid, started)
    finally:
        child.kill()
        child.wait()
    assert processes.ended(child.pid, started)  # reaped: no such process


def test_a_child_has_its_parents_space_but_its_own_start() -> None:
    me = processes.current()
    assert me is not None
    out = subprocess.run(
        [sys.executable, "-c",
         "from stackshift import processes; p = processes.current();"
         " print(p.space, p.pid, p.started)"],
        check=True, capture_output=True, text=True).stdout.split()
    assert out[0] == me.space
    assert int(out[1]) != me.pid
    assert not processes.ended(me.pid, me.started)
