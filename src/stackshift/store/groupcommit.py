"""Group commit: concurrent writes of one process share a transaction and its flush.

A worker's threads finish runs and save steps at the same moments; each write
would otherwise be a transaction of its own, and with ``synchronous=FULL`` (or
``synchronous_commit=on``) each transaction waits for a flush to disk. Here the
first caller commits everything queued while it waits, in one transaction, and
the others return when that commit is done: every caller still returns only
once its own writes are durable, and gets its own result or exception.

A write that raises rolls the shared transaction back; the batch is then
replayed one write per transaction, so one failure never touches another's
result (the writes are plain database work, safe to run again after a rollback).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from .. import forks
from ..runlogs import engine_call
from .database import Database, Tx

T = TypeVar("T")


#: Runs several writes of one kind in a shared transaction at once: gets their
#: arguments, returns their results in the same order.
Combiner = Callable[[Tx, list[Any]], list[Any]]


class _Item(Generic[T]):
    __slots__ = ("arg", "combine", "done", "error", "first", "fn", "lead", "one_statement",
                 "result", "woken")

    def __init__(self, fn: Callable[[Tx], T], first: bool, combine: Combiner | None = None,
                 arg: Any = None, one_statement: bool = False) -> None:
        self.fn = fn
        self.first = first
        self.combine = combine
        self.arg = arg
        self.one_statement = one_statement
        self.done = False
        #: handed a lane by the leader before it: commit the next batch
        self.lead = False
        #: set when done or handed a lane (each caller waits on its own)
        self.woken = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class _Replay(Exception):
    """A write in the shared transaction raised: replay the batch one by one."""


class GroupCommit:
    #: Writes in one shared transaction at most.
    MAX_BATCH = 64

    def __init__(self, db: Database, lanes: int | None = None) -> None:
        self._db = db
        #: Shared transactions under way at once. One: SQLite has one writer at a
        #: time anyway, and on PostgreSQL more lanes (smaller batches) measured
        #: no faster.
        self.lanes = lanes or 1
        self._start_over()
        forks.register(self)

    def _start_over(self) -> None:
        """Nothing queued, no transaction under way."""
        self._cond = threading.Condition()
        self._queue: list[_Item[Any]] = []
        self._busy = 0
        # Writes announced by expect() and not yet queued, and until when to wait.
        self._expected = 0
        self._expected_until = 0.0
        # Threads inside preparing() that have not queued their write yet.
        self._preparing = 0
        self._local = threading.local()

    def _after_fork(self) -> None:
        """In a forked child: the writes queued by the parent's threads are theirs."""
        self._start_over()

    def expect(self, count: int, within: float) -> None:
        """``count`` writes are about to come, within ``within`` seconds: the next
        shared transaction waits for them to be queued, so that they share it.
        A negative ``count`` takes back writes announced that will not come.

        Threads that finish about together reach :meth:`run` one after another;
        without this the first would commit alone and the rest in the next
        transaction.
        """
        with self._cond:
            self._expected = max(0, self._expected + count)
            if count > 0:
                self._expected_until = max(self._expected_until,
                                           time.monotonic() + within)
            if not self._expected:
                self._cond.notify()  # the leader waiting for announced writes

    #: Seconds a transaction waits at most for writes being prepared (preparing()).
    PREPARE_WAIT = 0.001

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """This thread is getting a write ready (checking and encoding it): a shared
        transaction about to start waits for it, ``PREPARE_WAIT`` at most, so that
        writes from many threads share fewer transactions.

        The write counts as arrived once queued by :meth:`run`; leaving the block
        without writing (an error, a duplicate) takes it back.
        """
        if getattr(self._local, "preparing", False):
            yield  # nested: the outer block counts
            return
        with self._cond:
            self._preparing += 1
        self._local.preparing = True
        try:
            yield
        finally:
            if self._local.preparing:
                with self._cond:
                    self._prepared()

    def _prepared(self) -> None:
        """This thread's write is queued, or will not come (under ``_cond``)."""
        self._local.preparing = False
        self._preparing -= 1
        if not self._preparing:
            self._cond.notify()  # the leader waiting for writes being prepared

    def run(self, fn: Callable[[Tx], T], *, first: bool = False) -> T:
        """Run ``fn`` in a write transaction (maybe shared); return once it is committed.

        ``first`` writes go before the others of their shared transaction, so
        they do not see what those others write.
        """
        return self._run(_Item(fn, first))

    def run_combined(self, combine: Combiner, arg: Any, *, one_statement: bool = False) -> Any:
        """Like :meth:`run` for ``combine(tx, [arg])[0]``; in a shared transaction the
        writes with the same ``combine`` go as one call (e.g. one batch of statements).

        ``one_statement``: ``combine`` sends exactly one statement for this write
        and any others so marked, and nothing after it can fail. A shared
        transaction of such writes alone goes as :meth:`Database.write_one`.
        """
        return self._run(_Item(lambda tx: combine(tx, [arg])[0], False, combine, arg,
                               one_statement))

    def _run(self, item: _Item[T]) -> T:
        with self._cond:
            self._queue.append(item)
            if self._expected:
                self._expected -= 1
                if not self._expected:
                    self._cond.notify()  # the leader waiting for announced writes
            if getattr(self._local, "preparing", False):
                self._prepared()
            lead = self._busy < self.lanes
            if lead:
                self._busy += 1
        if not lead:
            # Woken once: done (by the leader that committed it), or handed the
            # lane (the leader before found it first in the queue).
            item.woken.wait()
            lead = item.lead
        if lead:
            with self._cond:
                prepared_by = time.monotonic() + self.PREPARE_WAIT
                while len(self._queue) < self.MAX_BATCH:
                    now = time.monotonic()
                    if self._expected and self._expected_until <= now:
                        self._expected = 0
                    waits = [until for until, waiting in ((self._expected_until, self._expected),
                                                          (prepared_by, self._preparing))
                             if waiting and until > now]
                    if not waits:
                        break
                    self._cond.wait(max(waits) - now)
                # This caller's write and the oldest others (with several lanes,
                # more may be queued than one batch takes).
                self._queue.remove(item)
                batch = [item, *self._queue[: self.MAX_BATCH - 1]]
                del self._queue[: self.MAX_BATCH - 1]
            successor = None
            try:
                # Whatever is logged meanwhile is about writes of several runs:
                # not a record of the run whose thread leads the batch.
                with engine_call():
                    self._commit(batch)
            finally:
                with self._cond:
                    for other in batch:
                        other.done = True
                    if self._queue:  # the lane passes on, without a herd of wake-ups
                        successor = self._queue[0]
                        successor.lead = True
                    else:
                        self._busy -= 1
                for other in batch:
                    if other is not item:
                        other.woken.set()
                if successor is not None:
                    successor.woken.set()
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[no-any-return]

    def _commit(self, batch: list[_Item[Any]]) -> None:
        """Commit ``batch`` (extended in place by writes queued while the
        transaction began); set each write's result or error."""
        one = batch[0].combine is not None and all(
            item.one_statement and item.combine is batch[0].combine for item in batch)
        try:
            with self._db.write_one() if one else self._db.write() as tx:
                if not one:
                    # BEGIN may have waited (SQLite: for another process's write
                    # lock; PostgreSQL: a round trip): writes queued meanwhile join.
                    self._gather(batch)
                batch.sort(key=lambda item: not item.first)  # stable: arrival order
                if len(batch) == 1:
                    results = {id(batch[0]): batch[0].fn(tx)}
                else:
                    results = self._apply(tx, batch, one)
        except _Replay:
            pass
        except BaseException as exc:  # the commit failed, or its outcome is unknown
            for item in batch:
                item.error = exc
            return
        else:
            for item in batch:
                item.result = results[id(item)]
            return
        for item in batch:
            try:
                with self._db.write() as tx:
                    item.result = item.fn(tx)
            except BaseException as exc:
                item.error = exc

    def _gather(self, batch: list[_Item[Any]]) -> None:
        """Move writes queued since ``batch`` was taken into it."""
        with self._cond:
            more = self._queue[: self.MAX_BATCH - len(batch)]
            del self._queue[: len(more)]
        batch.extend(more)

    @staticmethod
    def _apply(tx: Tx, batch: list[_Item[Any]], one: bool) -> dict[int, Any]:
        """Run the writes of ``batch`` in ``tx``; a write that raises raises
        :class:`_Replay` (unless the link broke under a one-statement batch)."""
        results: dict[int, Any] = {}
        combined: set[Combiner] = set()
        for item in batch:
            try:
                if item.combine is None:
                    results[id(item)] = item.fn(tx)
                elif item.combine not in combined:
                    combined.add(item.combine)
                    group = [i for i in batch if i.combine == item.combine]
                    found = item.combine(tx, [i.arg for i in group])
                    for member, result in zip(group, found, strict=True):
                        results[id(member)] = result
            except BaseException as exc:
                if one and tx.link_lost(exc):
                    raise  # applied or not: the same as a failed COMMIT
                raise _Replay from exc
        return results


def group_commit_of(store: Any) -> GroupCommit:
    """The one :class:`GroupCommit` of a store object (made on first use)."""
    group = store.__dict__.get("_group_commit")
    if group is None:
        group = store.__dict__.setdefault("_group_commit", GroupCommit(store.db))
    return group  # type: ignore[no-any-return]
