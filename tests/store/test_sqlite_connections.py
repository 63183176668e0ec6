"""An SQLite store's connections: one a thread, closed when the thread ends, and
never closed under a statement another thread is running."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

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


def _in_a_new_thread(call: Callable[[], object]) -> BaseException | None:
    """What ``call``, run in a thread of its own (a new connection), raised."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return raised[0] if raised else None


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_store_whose_file_is_deleted_or_replaced_writes_nothing_more(
        tmp_path: Path, how: str) -> None:
    """What would be written to a file deleted (or replaced by another at its
    path) is lost to every other process: the store refuses to write, saying
    why, and a new connection makes no new, empty file where the old one was."""
    db = tmp_path / "jobs.db"
    app = StackShift(f"sqlite:///{db}")
    try:
        kept = app.start("some.job", {})
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        if how == "replaced":
            other = StackShift(f"sqlite:///{db}")
            other.close()
        said = f"this process's database file {db} was " + (
            "deleted" if how == "deleted" else "replaced by another file")
        with pytest.raises(sqlite3.OperationalError) as refused:
            app.start("some.job", {})
        assert str(refused.value).startswith(f"{said}: nothing more is written to it")
        failed = _in_a_new_thread(lambda: app.start("some.job", {}))
        assert isinstance(failed, sqlite3.OperationalError), failed
        assert said in str(failed)
        if how == "deleted":
            # A thread's first call opens a connection: to the store's file, or none.
            failed = _in_a_new_thread(lambda: app.runs.get(kept.id))
            assert isinstance(failed, sqlite3.OperationalError), failed
            assert said in str(failed)
            assert not db.exists()
        else:
            with StackShift(f"sqlite:///{db}") as fresh:
                assert fresh.runs.list().items == []
    finally:
        app.close()


def test_a_relative_url_names_the_file_in_the_folder_the_process_was_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sqlite:///jobs.db`` is the file in the folder the client was made in: a
    handler (a build or a conversion job) that moves the process to another
    folder does not move the database, which was then taken for deleted, and the
    worker stopped."""
    home, scratch = tmp_path / "home", tmp_path / "scratch"
    home.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(home)
    with StackShift("sqlite:///jobs.db") as app:
        @app.job("build")
        def build(ctx):  # type: ignore[no-untyped-def]
            os.chdir(scratch)
            return ctx.step.run("compile", lambda: "built")

        first = app.start("build")
        with app.worker():
            assert app.runs.wait(first.id, timeout="20s").result == "built"
            assert os.getcwd() == str(scratch)
            second = app.start("build")  # from the new folder, to the same file
            assert app.runs.wait(second.id, timeout="20s").result == "built"
    assert not (scratch / "jobs.db").exists()
    with sqlite3.connect(home / "jobs.db") as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone() == (2,)


@pytest.mark.parametrize(("query", "message"), [
    ("synchronus=normal", "unknown SQLite URL option(s) 'synchronus': an SQLite URL takes"
                          " busy_timeout and synchronous"),
    ("mode=ro", "unknown SQLite URL option(s) 'mode'"),
    ("busy_timeout=abc", "busy_timeout must be seconds from 0 to 3600 in digits, got 'abc'"),
    ("busy_timeout=inf", "busy_timeout must be seconds from 0 to 3600 in digits, got 'inf'"),
    ("busy_timeout=-5", "busy_timeout must be seconds from 0 to 3600 in digits, got '-5'"),
])
def test_an_sqlite_url_option_that_is_none_or_bad_is_refused_and_makes_no_file(
        tmp_path: Path, query: str, message: str) -> None:
    # Taken, a typo left the default in force without a word, and mode=ro wrote.
    from stackshift import ValidationError

    with pytest.raises(ValidationError) as refused:
        StackShift(f"sqlite:///{tmp_path / 'jobs.db'}?{query}")
    assert str(refused.value).startswith(message), refused.value
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tables", [["customers"], ["posts", "runs"]])
def test_another_applications_database_is_refused_and_left_as_it_was(
        tmp_path: Path, tables: list[str]) -> None:
    # Taken, even a read (`stackshift runs list`) added StackShift's tables beside
    # the application's, or failed half-way on a table of the same name, and
    # switched the file to WAL for good.
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as db:
        for table in tables:
            db.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)")
    with pytest.raises(sqlite3.DatabaseError) as refused:
        StackShift(f"sqlite:///{path}")
    assert str(refused.value) == (
        f"not a StackShift database: {path} holds the tables of another application"
        f" ({', '.join(tables)}); give StackShift a file of its own")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master ORDER BY name")] == tables
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop.db"]


@pytest.mark.parametrize("locked", ["file", "folder"])
def test_a_database_this_user_may_not_write_is_named_with_what_it_lacks(locked: str) -> None:
    # Taken, every command, even `runs list`, said only "attempt to write a
    # readonly database": SQLite writes beside a WAL database even to read it.
    # Root writes whatever the modes say: the command runs as nobody then.
    as_nobody = (["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
                 if os.geteuid() == 0 else [])
    folder = Path(tempfile.mkdtemp(prefix="stackshift-ro-"))
    try:
        folder.chmod(0o755)
        path = folder / "jobs.db"
        StackShift(f"sqlite:///{path}").close()
        if os.geteuid() == 0:
            os.chown(folder, pwd.getpwnam("nobody").pw_uid, -1)
            os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
        for name in os.listdir(folder):
            (folder / name).chmod(0o444 if locked == "file" else 0o666)
        folder.chmod(0o555)
        lacks = ("this user may not write to the file" if locked == "file" else
                 f"this user may not create files in its folder {folder}, where SQLite"
                 " keeps jobs.db-wal and jobs.db-shm beside it")
        for command in (["runs", "list"], ["start", "some.job", "{}"]):
            done = subprocess.run(
                [*as_nobody, sys.executable, "-m", "stackshift", "--db", f"sqlite:///{path}",
                 *command], capture_output=True, text=True, timeout=60)
            assert done.returncode == 1, done.stderr
            assert (f"cannot write to the database file {path}: {lacks}; StackShift writes to"
                    " its database even to read from it") in done.stderr, done.stderr
        folder.chmod(0o755)
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)
