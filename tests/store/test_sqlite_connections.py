"""An SQLite store's connections: one a thread, closed when the thread ends, and
never closed under a statement another thread is running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from stackshift import StackShift

CLOSE_WHILE_READING = """
import json, sys, threading, time
from stackshift import StackShift

app = StackShift(sys.argv[1])
run = app.start("some.job", {})
outcomes = []

def reader():
    for _ in range(300):
        try:
            app.runs.get(run.id)
            app.start("some.job", {})
        except RuntimeError as exc:
            outcomes.append(str(exc))
            return
    outcomes.append("done")

threads = [threading.Thread(target=reader) for _ in range(8)]
for thread in threads:
    thread.start()
time.sleep(0.02)
app.close()
for thread in threads:
    thread.join()
print(json.dumps(sorted(set(outcomes))))
"""


def test_closing_a_client_while_other_threads_read_and_write_ends_them_cleanly(
        tmp_path: Path) -> None:
    """Closing a connection under a running statement can crash the process (a
    segmentation fault): the close waits for the statements under way, and the
    calls made after it are refused with the store's own error."""
    for attempt in range(6):
        url = f"sqlite:///{tmp_path / f'closing-{attempt}.db'}"
        done = subprocess.run([sys.executable, "-c", CLOSE_WHILE_READING, url],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
        said = json.loads(done.stdout)
        assert set(said) <= {"done", "the store is closed"}, said


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_thread_that_ends_takes_its_connection_with_it(tmp_path: Path) -> None:
    """A call from a thread opens that thread's connection; hundreds of short-lived
    threads (one a call, or an event loop's each time) leave no file open."""
    app = StackShift(f"sqlite:///{tmp_path / 'threads.db'}")
    try:
        run = app.start("some.job", {})
        app.runs.get(run.id)
        before = _open_files()
        for _ in range(200):
            thread = threading.Thread(target=app.runs.get, args=(run.id,))
            thread.start()
            thread.join()
        assert _open_files() - before < 10
        assert app.runs.get(run.id).id == run.id
    finally:
        app.close()
