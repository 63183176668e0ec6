"""SQLite: one file, WAL journal; reads on a connection per thread, writes on one shared one.

Writers take the database's single write lock up front (``BEGIN IMMEDIATE``)
so that a transaction never fails half-way on a lock upgrade, retrying while
another process holds it.

Checkpoints (copying the WAL back into the database file) run on a thread of
their own instead of inside the commit that crosses SQLite's threshold, where
they would hold up every write of the process for the copy and its flushes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from .. import forks
from ..errors import ValidationError
from .database import LEAD_SILENCE, Row, split_statements
from .queries import load_migrations, load_queries

log = logging.getLogger("stackshift.store")

_SYNC_MODES = {"full": "FULL", "normal": "NORMAL", "off": "OFF", "extra": "EXTRA"}


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    """``sqlite:///rel.db`` and ``sqlite:////abs.db`` to a path and options."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ValidationError(f"not an SQLite URL: {url!r}")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if parts.netloc:
        path = parts.netloc + "/" + path
    if not path or path == ":memory:":
        raise ValidationError(
            "SQLite needs a file (workers and clients share it); use sqlite:///path/to/file.db"
        )
    options = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - _URL_OPTIONS)
    if unknown:
        raise ValidationError(
            f"unknown SQLite URL option(s) {', '.join(map(repr, unknown))}: an SQLite URL takes"
            f" {' and '.join(sorted(_URL_OPTIONS))} (e.g. sqlite:///app.db?synchronous=normal)")
    return path, options


#: What an SQLite URL's query may set.
_URL_OPTIONS = frozenset({"synchronous", "busy_timeout"})


def _busy_seconds(text: str) -> float:
    """``busy_timeout``: seconds (digits) a connection waits for another's write lock."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", text) or not 0 <= seconds <= 3600:
        raise ValidationError(f"busy_timeout must be seconds from 0 to 3600 in digits,"
                              f" got {text!r}")
    return seconds


class AnotherAppsDatabase(sqlite3.DatabaseError):
    """The file holds another application's tables (see
    :meth:`SqliteDatabase._refuse_another_apps`)."""


def _cannot_open(exc: sqlite3.OperationalError, path: str) -> str:
    """The error naming the file, its missing folder, and the URL a slash short of one."""
    message = f"{exc}: {path}"
    if os.path.isdir(os.path.dirname(os.path.abspath(path))):
        return message
    return f"{message} ({missing_folder(path)})"


def _is_read_only(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_READONLY


def _read_only(path: str, named: str) -> str:
    """The error of a database SQLite may not write: which file (``named`` as its
    URL gives it), and what this user lacks. In WAL mode even a read writes (the
    ``-shm`` file beside it)."""
    folder = os.path.dirname(path)
    name = os.path.basename(path)
    if not os.access(path, os.W_OK):
        why = "this user may not write to the file"
    elif not os.access(folder, os.W_OK):
        why = (f"this user may not create files in its folder {folder}, where SQLite"
               f" keeps {name}-wal and {name}-shm beside it")
    else:
        why = "the file or its filesystem is read-only"
    return (f"cannot write to the database file {named}: {why}; StackShift writes to its"
            " database even to read from it")


def _cut_off(reason: str) -> str:
    """The error of a write or a connection refused because the store's file is
    no longer the database at its path (see :meth:`SqliteDatabase.detached`)."""
    return (f"this process's {reason.removeprefix('its ')}: nothing more is written to it"
            " (it would be lost); start this process again on the database in use")


def missing_folder(path: str) -> str:
    """What to say of ``path`` (a database file) whose folder does not exist: the
    folder, and the URL to write when a slash short of an absolute path."""
    said = f"there is no folder {os.path.dirname(os.path.abspath(path))}"
    if not os.path.isabs(path) and os.path.isdir(os.path.dirname("/" + path)):
        said += f"; for /{path} write sqlite:////{path}, with four slashes"
    return said


class _SqliteTx:
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, queries: Mapping[str, str]) -> None:
        self._conn = conn
        self._queries = queries

    def one(self, query: str, **params: Any) -> Row | None:
        row: Row | None = self._conn.execute(self._queries[query], params).fetchone()
        return row

    def all(self, query: str, **params: Any) -> list[Row]:
        return self._conn.execute(self._queries[query], params).fetchall()

    def all_limited(self, query: str, limit: int, **params: Any) -> list[Row]:
        return self.all(query, limit=limit, **params)

    def run(self, query: str, **params: Any) -> int:
        return self._conn.execute(self._queries[query], params).rowcount

    def many(self, query: str, params: Sequence[Mapping[str, Any]]) -> None:
        self._conn.executemany(self._queries[query], params)

    def many_returning(self, query: str, params: Sequence[Mapping[str, Any]]
                       ) -> list[Row | None]:
        # No round trips to save: one statement at a time (executemany returns no rows).
        return [self.one(query, **p) for p in params]

    def raw(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        return self._conn.execute(sql, params).fetchall()

    def lock(self, key: str) -> None:
        """Nothing to do: a write transaction already holds SQLite's only write lock."""

    def is_data_error(self, exc: BaseException) -> bool:
        return False

    def link_lost(self, exc: BaseException) -> bool:
        return False  # in-process: no link to lose


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, url: str) -> None:
        self.url = url
        path, options = parse_sqlite_url(url)
        #: the file as the URL names it, for what the store says of it
        self.named_path = path
        #: the file this store opens for good: a relative URL names it in the
        #: folder the process is in now, not in the one it moves to later
        self.path = os.path.abspath(path)
        sync = options.get("synchronous", "full").lower()
        if sync not in _SYNC_MODES:
            raise ValidationError(f"synchronous must be one of {sorted(_SYNC_MODES)}")
        self._synchronous = _SYNC_MODES[sync]
        self._busy_ms = int(_busy_seconds(options.get("busy_timeout", "30")) * 1000)
        self._queries = load_queries("sqlite")
        self._closed = False
        #: (device, inode) of the file the first connection opened (see detached)
        self._file: tuple[int, int] | None = None
        #: during a fork: the checkpointer held and whether the write lock was taken
        self._forking: tuple[_Checkpointer | None, bool] | None = None
        self._start_over()
        forks.register(self)

    def _start_over(self) -> None:
        """No connections yet, no lock held."""
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        #: the thread-local connections in use (read() and the like): how many
        #: uses each, nested ones included
        self._reading: dict[sqlite3.Connection, int] = {}
        # Reentrant: a thread's connection is closed (_forget) when the thread ends,
        # which may come about while that thread holds the lock.
        self._lock = threading.RLock()
        self._released = threading.Condition(self._lock)
        self._write_lock = threading.Lock()
        self._data_version: int | None = None
        self._writer: sqlite3.Connection | None = None
        self._checkpointer: _Checkpointer | None = None
        #: a fork waits for the reads under way: new ones wait for the fork
        self._holding_off = False
        #: the process these connections are this store's own in (see _forget)
        self._pid = os.getpid()

    #: Seconds a fork waits for a checkpoint, or for reads, under way to end.
    FORK_WAIT = 5.0

    def _before_fork(self) -> None:
        """Before ``os.fork()`` (see :mod:`stackshift.forks`): wait for the
        checkpoint, the write and the reads of this process under way to end, and
        hold off new ones until the fork is done. SQLite keeps the locks of a
        process's connections in the process's memory, which the child inherits:
        a connection copied in the middle of a write would hold the write lock in
        the child for good, and every write of the child would be refused as
        "database is locked". A use that does not end in time is not waited for
        further (the child then keeps its connection; see _after_fork).
        """
        checkpointer = self._checkpointer
        if checkpointer is not None:
            checkpointer.hold(self.FORK_WAIT)
        self._forking = (checkpointer, self._write_lock.acquire(
            timeout=self._busy_ms / 1000 + self.FORK_WAIT))
        self._lock.acquire()
        self._holding_off = True
        self._released.wait_for(lambda: not self._reading, self.FORK_WAIT)

    def _after_fork_in_parent(self) -> None:
        assert self._forking is not None
        (checkpointer, writing), self._forking = self._forking, None
        self._holding_off = False
        self._released.notify_all()
        self._lock.release()
        if writing:
            self._write_lock.release()
        if checkpointer is not None:
            checkpointer.let_go()

    def _after_fork(self) -> None:
        """In a forked child (see :mod:`stackshift.forks`): close the parent's
        connections, which SQLite would otherwise count as this process's own
        and spare the file locks of the child's new ones, and start over.

        A connection another thread was using at the fork is only kept: its
        close would wait on that thread's hold on it.
        """
        forking, self._forking = self._forking, None
        busy = set(self._reading)
        # The write lock _before_fork took is no write under way.
        if (self._write_lock.locked() and self._writer is not None
                and not (forking is not None and forking[1])):
            busy.add(self._writer)
        if self._checkpointer is not None and self._checkpointer.copying:
            busy.add(self._checkpointer.conn)
        for conn in self._all:
            if conn in busy or conn.in_transaction:
                forks.keep(conn)
            else:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._start_over()

    # -- connections -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # Once the store has opened its file, a connection opens that file or
        # none: where it was deleted, SQLite would make a new, empty one.
        target, uri = ((self.path, False) if self._file is None
                       else (f"file:{quote(self.path)}?mode=rw", True))
        try:
            conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False,
                                   timeout=self._busy_ms / 1000, uri=uri)
        except sqlite3.OperationalError as exc:  # e.g. a missing folder: say which file
            reason = None if self._file is None else self.detached()
            raise sqlite3.OperationalError(
                _cannot_open(exc, self.named_path) if reason is None else _cut_off(reason)) from exc
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            if self._file is None:
                self._refuse_another_apps(conn)
            # WAL lets readers and the one writer proceed together.
            for _ in range(50):
                try:
                    conn.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError:  # another process is creating the file
                    time.sleep(0.05)
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            conn.close()
            if isinstance(exc, sqlite3.OperationalError) and _is_read_only(exc):
                raise sqlite3.OperationalError(_read_only(self.path, self.named_path)) from exc
            if isinstance(exc, sqlite3.OperationalError | AnotherAppsDatabase):
                raise
            # Some other file (a typo in the URL), or one damaged: say which.
            raise sqlite3.DatabaseError(f"{exc}: {self.named_path}") from exc
        return conn

    def _refuse_another_apps(self, conn: sqlite3.Connection) -> None:
        """Refuse, before anything is written to it, a database file that holds
        tables but not StackShift's (another application's): its tables would be
        left beside StackShift's, or clash with them (``runs``)."""
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")]
        if tables and "schema_migrations" not in tables:
            shown = ", ".join(tables[:5]) + (f" and {len(tables) - 5} more" if len(tables) > 5
                                             else "")
            raise AnotherAppsDatabase(
                f"not a StackShift database: {self.named_path} holds the tables of another"
                f" application ({shown}); give StackShift a file of its own")

    def _open(self) -> sqlite3.Connection:
        """A new connection, closed with the store."""
        if self._closed:
            raise RuntimeError("the store is closed")
        conn = self._connect()
        if self._file is None:
            with contextlib.suppress(OSError):
                opened = os.stat(self.path)
                self._file = (opened.st_dev, opened.st_ino)
        with self._lock:
            self._all.append(conn)
        return conn

    def detached(self) -> str | None:
        """Whether the file this process opened is still the one at its path: one
        deleted, or replaced (a new file made at the path), is no longer the
        database other processes use, and what is written to it is lost."""
        if self._file is None:
            return None
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return f"its database file {self.named_path} was deleted"
        except OSError:
            return None  # unreadable for now: not known to be another file
        if (now.st_dev, now.st_ino) != self._file:
            return f"its database file {self.named_path} was replaced by another file"
        return None

    def _conn(self) -> sqlite3.Connection:
        held: _ThreadConn | None = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = _ThreadConn(self._open())
            # When the thread ends, its connection is closed (one thread a call,
            # or an event loop's threads, would otherwise leave a file open each);
            # not at the interpreter's exit, where another thread may be using it.
            weakref.finalize(held, self._forget, held.conn).atexit = False
        return held.conn

    def _forget(self, conn: sqlite3.Connection) -> None:
        """A thread ended: close its connection, unless the store closed it already
        (or kept it at a fork: no longer listed either).

        In a forked child, before :meth:`_after_fork`: the threads the child does
        not have end as it starts, their connections copies of the parent's that
        one of them may have been using (whose close would wait for good), and
        the lock copied as the fork held it. ``_after_fork`` sorts them out."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            if not any(listed is conn for listed in self._all):
                return
            self._all = [listed for listed in self._all if listed is not conn]
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    @contextmanager
    def _using(self, conn: sqlite3.Connection) -> Iterator[None]:
        """Around a use of this thread's connection: refused once the store is
        closed; :meth:`close` waits for the uses under way."""
        with self._lock:
            if self._holding_off and conn not in self._reading:  # a fork waits for reads
                self._released.wait_for(lambda: not self._holding_off)
            if self._closed:
                raise RuntimeError("the store is closed")
            self._reading[conn] = self._reading.get(conn, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._reading.pop(conn, 0) - 1  # none after a fork: started over
                if left > 0:
                    self._reading[conn] = left
                if not self._reading:
                    self._released.notify_all()

    def _writer_conn(self) -> sqlite3.Connection:
        """The connection every write of this process goes through, one at a time.

        A connection drops its page cache whenever another connection has written
        since its last transaction; writes from the thread-local connections of
        many threads would each start with a cold cache.
        """
        if self._writer is None:
            conn = self._open()
            # Lock waits are retried by _begin_immediate; checkpoints are the
            # checkpointer's.
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._checkpointer = _Checkpointer(self._open(), self._write_lock)
            # The commit that starts the WAL over cuts its file back to this size.
            conn.execute(f"PRAGMA journal_size_limit = {self._checkpointer.limit}")
            self._writer = conn
        return self._writer

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[_SqliteTx]:
        # Writers of this process queue on a lock that wakes the next one at once;
        # left to SQLite, they would poll the file lock with sleeps of up to 100 ms.
        if (checkpointer := self._checkpointer) is not None:
            checkpointer.hold_back()
        with self._write_lock:
            if self._closed:
                raise RuntimeError("the store is closed")
            conn = self._writer_conn()
            if (reason := self.detached()) is not None:
                raise sqlite3.OperationalError(_cut_off(reason))
            relaxed = not durable and self._synchronous in ("FULL", "EXTRA")
            if relaxed:  # the safety level cannot change inside a transaction
                conn.execute("PRAGMA synchronous = NORMAL")
            try:
                self._begin_immediate(conn)
                try:
                    yield _SqliteTx(conn, self._queries)
                    conn.execute("COMMIT")
                    if self._checkpointer is not None:
                        self._checkpointer.commits += 1
                except BaseException:
                    # Also when the COMMIT failed (a deferred constraint, a full
                    # disk): SQLite may keep the transaction open, and every later
                    # write of this process goes through this connection.
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
            finally:
                if relaxed:
                    conn.execute(f"PRAGMA synchronous = {self._synchronous}")

    def write_one(self) -> AbstractContextManager[_SqliteTx]:
        # BEGIN and COMMIT cost no round trips here, and BEGIN IMMEDIATE is
        # what queues this process's writers behind other processes'.
        return self.write()

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, retried (see _retry_busy) while another process writes.

        SQLite's own busy handler sleeps 1, 2, 5, 10 ... up to 100 ms between
        tries, so a process that writes back to back (a busy producer) can
        starve the others for seconds; short retries find the gaps. (The writer
        connection's own busy timeout is 0.)
        """
        def attempt() -> bool:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                    raise
                return False
            return True

        if not _retry_busy(attempt, self._busy_ms / 1000):
            conn.execute("BEGIN IMMEDIATE")  # raises "database is locked", or succeeds

    @contextmanager
    def read(self) -> Iterator[_SqliteTx]:
        conn = self._conn()
        with self._using(conn):
            conn.execute("BEGIN")
            try:
                yield _SqliteTx(conn, self._queries)
            finally:
                conn.execute("COMMIT")

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, for statements outside :meth:`read`."""
        conn = self._conn()
        with self._using(conn):
            yield conn

    # -- schema ------------------------------------------------------------------

    def migrate(self) -> int:
        with self._reader() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            for version, name, script in load_migrations("sqlite"):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    done = conn.execute(
                        "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
                    ).fetchone()
                    if not done:
                        for statement in split_statements(script):
                            conn.execute(statement)
                        conn.execute(
                            "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                            (version, name, time.time()),
                        )
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        return self.schema_version()

    def schema_version(self) -> int:
        with self._reader() as conn:
            try:
                row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
            except sqlite3.OperationalError:
                return 0
        return int(row[0] or 0)

    # -- change detection ----------------------------------------------------------

    def changed(self) -> bool:
        # data_version changes whenever another connection commits; reading it
        # touches only the WAL index in shared memory.
        with self._reader() as conn:
            version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        changed = version != self._data_version
        self._data_version = version
        return changed

    # -- maintenance election ---------------------------------------------------------

    def try_lead(self, owner: str, silence: float = LEAD_SILENCE) -> bool:
        """Always yes: every maintenance write is conditional and SQLite serialises
        writers, so workers sharing the file can all maintain without harm."""
        return True

    def resign(self, owner: str) -> None:
        """Nothing is held."""

    #: Seconds :meth:`close` waits for the statements under way in other threads.
    CLOSE_WAIT = 10.0

    def close(self) -> None:
        """Close every connection once the uses under way have ended (new ones are
        refused): closing a connection while another thread runs a statement on it
        can crash the process. One still in use after ``CLOSE_WAIT`` is left open."""
        with self._lock:
            self._closed = True
        if self._checkpointer is not None:
            self._checkpointer.stop()
        deadline = time.monotonic() + self.CLOSE_WAIT
        writing = not self._write_lock.acquire(timeout=self.CLOSE_WAIT)
        try:
            with self._lock:
                while self._reading and (left := deadline - time.monotonic()) > 0:
                    self._released.wait(left)
                busy = set(self._reading)
                if writing and self._writer is not None:
                    busy.add(self._writer)
                for conn in self._all:
                    if conn not in busy:
                        with contextlib.suppress(sqlite3.ProgrammingError):
                            conn.close()
                self._all.clear()
        finally:
            if not writing:
                self._write_lock.release()
        self._local = threading.local()
        self._writer = None
        self._checkpointer = None


#: Pauses between tries of _retry_busy: 50 µs, then 100 µs until ``_FINE_FOR``
#: seconds have passed, then doubling up to 1 ms.
_FINE_PAUSE = 0.0001
_FINE_FOR = 0.02
_COARSE_PAUSE = 0.001


def _retry_busy(attempt: Callable[[], bool], seconds: float) -> bool:
    """Call ``attempt`` until it returns true (done) or ``seconds`` have passed;
    its last answer.

    Another process that writes back to back (a producer starting runs) frees
    the lock only for the moment between its commit and its next BEGIN; a
    waiter that tries every millisecond seldom lands in that moment, and the
    other process keeps the database to itself. So the first tries come
    close together (``_FINE_PAUSE``), and only a wait longer than
    ``_FINE_FOR`` (a long write, a checkpoint) backs off, to spare the CPU.
    """
    if attempt():
        return True
    start = time.monotonic()
    deadline = start + seconds
    pause = _FINE_PAUSE / 2
    while (now := time.monotonic()) < deadline:
        time.sleep(pause)
        if attempt():
            return True
        ceiling = _FINE_PAUSE if now - start < _FINE_FOR else _COARSE_PAUSE
        pause = min(pause * 2, ceiling)
    return False


#: Bytes of a WAL file's header and of each frame's header, before its page.
_WAL_HEADER = 32
_WAL_FRAME_HEADER = 24


class _ThreadConn:
    """A thread's connection, held by the thread alone (:meth:`SqliteDatabase._conn`):
    when the thread ends, this goes, and a finalizer closes the connection."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


class _Checkpointer:
    """Copies the WAL back into the database file from a thread of its own.

    SQLite checkpoints inside the commit that takes the WAL past 1,000 pages:
    that commit then takes tens of milliseconds (a run's start writes about
    twelve pages, so about one in eighty), and every write of the process waits
    for it. Here a checkpoint runs every ``TICK`` seconds after writes, beside
    them (``PASSIVE``); pages that many commits rewrote are copied once.

    The WAL starts over from its beginning only when a write finds every page
    in it copied, which writes arriving during each checkpoint prevent. Once it
    holds more than ``RESTART_PAGES``, a checkpoint therefore holds writers off
    until it has copied everything (``RESTART``): this process's through its
    write lock, other processes' by taking SQLite's, retried as writers retry
    it, for at most ``RESTART_WAIT`` seconds (a later tick tries again).

    A checkpoint finds how long the WAL is only when no other process's
    checkpoint runs. When one does, the length is read off the WAL file: the
    commit that starts the WAL over cuts the file back to ``limit`` bytes
    (room for twice ``RESTART_PAGES`` pages), so a longer file means a WAL
    that has outgrown it. Two processes writing back to back would otherwise
    keep each other's checkpoints from learning it, and the WAL would hold
    every page written until they stopped.

    A checkpoint cannot outrun a disk slower than the writers: while it waits
    on the disk, commits (which, on ``synchronous=NORMAL``, wait for nothing)
    go on appending. Once the WAL file is twice ``limit`` long, a write
    therefore waits for a checkpoint under way, and the restart it leads to,
    to end (``hold_back``), for at most ``HOLD_WAIT`` seconds. It does not wait
    between checkpoints: a WAL kept from starting over by a reader's snapshot
    slows writes no more than before.
    """

    TICK = 0.05
    RESTART_PAGES = 4000
    RESTART_WAIT = 0.1
    HOLD_WAIT = 1.0

    def __init__(self, conn: sqlite3.Connection, write_lock: threading.Lock) -> None:
        self.commits = 0  # counted by the writer, under the write lock
        self.conn = conn
        self._write_lock = write_lock
        self._stopping = threading.Event()
        conn.execute("PRAGMA busy_timeout = 0")  # _retry_busy waits instead
        self._wal = conn.execute("PRAGMA database_list").fetchone()["file"] + "-wal"
        # A WAL file is a header and, per page, a frame header and the page.
        frame = int(conn.execute("PRAGMA page_size").fetchone()[0]) + _WAL_FRAME_HEADER
        self.limit = _WAL_HEADER + 2 * self.RESTART_PAGES * frame
        self.copying = False  # a checkpoint runs; under _copied
        self._copied = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="stackshift-checkpoint",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        seen = 0
        while not self._stopping.wait(self.TICK):
            if self.commits == seen:
                continue
            seen = self.commits
            with self._copied:
                self.copying = True
            try:
                busy, pages = self._checkpoint("PASSIVE")
                # (busy: another process's checkpoint runs, and it cannot tell)
                if self._file_outgrown(self.limit) if busy else pages > self.RESTART_PAGES:
                    with self._write_lock:
                        _retry_busy(lambda: not self._checkpoint("RESTART")[0],
                                    self.RESTART_WAIT)
            except sqlite3.Error:
                log.warning("SQLite checkpoint failed; retrying", exc_info=True)
            finally:
                with self._copied:
                    self.copying = False
                    self._copied.notify_all()

    def hold(self, timeout: float) -> None:
        """Wait for the checkpoint under way, if one is, to end (at most
        ``timeout`` seconds), and start no other until :meth:`let_go`."""
        self._copied.acquire()
        self._copied.wait_for(lambda: not self.copying, timeout)

    def let_go(self) -> None:
        self._copied.release()

    def hold_back(self) -> None:
        """Called by a writer before it writes: if the WAL file is more than
        twice ``limit`` long, wait for the checkpoint under way, if one is, to
        end, at most ``HOLD_WAIT`` seconds."""
        if not self.copying or not self._file_outgrown(2 * self.limit):
            return
        with self._copied:
            self._copied.wait_for(lambda: not self.copying, self.HOLD_WAIT)

    def _checkpoint(self, mode: str) -> tuple[bool, int]:
        """A checkpoint: whether it was kept from finishing (by another
        checkpoint, or in RESTART mode by a writer or reader), and the pages
        in the WAL."""
        busy, pages, _copied = self.conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return bool(busy), int(pages)

    def _file_outgrown(self, size: int) -> bool:
        """Whether the WAL file is longer than ``size`` (at least ``limit``):
        the WAL has outgrown it (or has just started over, until the next
        commit cuts the file)."""
        try:
            return os.stat(self._wal).st_size > size
        except FileNotFoundError:
            return False

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
