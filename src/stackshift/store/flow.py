"""Flow control in the claim: paused queues, queue concurrency, rate limits, key limits.

Every limit is checked inside the claim's write transaction, against what is in
the database, so it holds across all workers on all machines:

* **SQLite**: the claim runs under ``BEGIN IMMEDIATE``, the database's single
  write lock, so counting and claiming can never interleave with another claim.
* **PostgreSQL** (READ COMMITTED, many claimers at once): a claim that takes
  runs from a limited queue first locks that queue's ``queues`` row
  ``FOR UPDATE``, then counts its running runs and its recent starts, then
  claims. Claimers of the same queue therefore take turns, and each one's counts
  include every claim committed before it got the lock (each statement at READ
  COMMITTED sees what was committed when it began). Queue locks are taken in
  name order, and every other lock a claim takes is non-blocking
  (``SKIP LOCKED`` rows, ``pg_try_advisory_xact_lock`` for keys), so claimers
  cannot deadlock. A concurrency key is guarded by a transaction-scoped
  advisory lock on ``(job, key)``: a claimer that finds it held skips the key
  for this claim, as ``SKIP LOCKED`` skips a row.

Counting running runs (instead of keeping counters) cannot drift: whatever path
moves a run out of ``running`` (finished, waiting, released, rescued) lowers the
count by itself. The counts read small partial indexes (running runs only).

When nothing is paused or limited and no job of the worker has a
``key_concurrency``, a claim is the one plain claim query it would be without
flow control: that query also reports (from the tiny ``queues`` table, read
once) whether any queue is paused or limited, and only then does the claim
take the flow-control path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .database import Row, Tx

#: Separates job and key in the "saturated keys" lists the claim queries take.
KEY_SEPARATOR = "\x1f"
#: A claim re-queries at most this many times after skipping runs of full keys.
MAX_ROUNDS = 4
#: Seconds rate-limit starts are kept past their window (see ``_lock_and_count``).
PRUNE_MARGIN = 60.0


@dataclass(frozen=True)
class ClaimRules:
    """What a worker's registry says about claiming: per-job key limits and handlers."""

    #: job name -> key_concurrency
    key_limits: Mapping[str, int]
    #: job name -> JSON describing its on_failure job (stored on the claimed run)
    on_failure: Mapping[str, str]

    @property
    def empty(self) -> bool:
        return not self.key_limits and not self.on_failure


NO_RULES = ClaimRules({}, {})


def _list(tx: Tx, values: Sequence[str] | set[str] | None) -> Any:
    """A list parameter: JSON text on SQLite, an array on PostgreSQL; None when empty."""
    if not values:
        return None
    items = sorted(values)
    return json.dumps(items) if tx.dialect == "sqlite" else items


def _order(row: Row) -> tuple[float, float, str]:
    return (-float(row["claim_priority"]), float(row["available_at"]), str(row["id"]))


@dataclass
class _QueueSlot:
    name: str
    row: Row
    allowance: int | None = None  # None: not yet locked and counted


def choose_runs(
    tx: Tx,
    jobs: Sequence[str],
    queues: Sequence[str] | None,
    limit: int,
    now: float,
    key_limits: Mapping[str, int],
    claim: Callable[[Row], None],
) -> int:
    """Pick up to ``limit`` due runs that every limit allows, calling ``claim`` on each.

    ``claim`` must move the run to ``running`` in ``tx`` before it returns, so
    that later reads of this transaction count it. Returns how many were claimed.
    """
    job_list = _list(tx, jobs)
    queue_list = _list(tx, queues) if queues is not None else None
    key_jobs = {job: n for job, n in key_limits.items() if job in set(jobs)}
    if not key_jobs:
        general = list(tx.all("claim_candidates", now=now, jobs=job_list, queues=queue_list,
                              limit=limit))
        if not general or not general[0]["controlled"]:
            # The common case: nothing is paused or limited, so the plain claim
            # query is the whole claim (and no rows means nothing is due).
            for row in general:
                claim(row)
            return len(general)
    keys = _Keys(key_jobs, {}, set(), set())
    if key_jobs:
        # Unlocked counts, to leave full keys out of the queries; a key is
        # counted again under its lock before a run of it is claimed.
        for r in tx.all("running_keys", jobs=_list(tx, list(key_jobs))):
            if int(r["n"]) >= key_jobs[r["job"]]:
                keys.saturated.add(r["job"] + KEY_SEPARATOR + r["concurrency_key"])
    controlled = tx.all("controlled_queues")
    if queues is not None:
        wanted = set(queues)
        controlled = [q for q in controlled if q["name"] in wanted]
    blocked = {q["name"] for q in controlled}

    def open_candidates(want: int) -> list[Row]:
        """Due runs outside paused and limited queues and full keys, in claim order."""
        return list(tx.all("claim_candidates_open", now=now, jobs=job_list, queues=queue_list,
                           blocked=_list(tx, blocked), saturated=_list(tx, keys.saturated),
                           limit=want))

    slots = [
        _QueueSlot(q["name"], q)
        for q in sorted(controlled, key=lambda q: q["name"])
        if not q["paused"] and (q["concurrency"] is not None or q["rate_count"] is not None)
    ]
    _precheck(tx, slots, now)
    claimed = 0
    for _ in range(MAX_ROUNDS):
        want = limit - claimed
        if want <= 0:
            break
        candidates = open_candidates(want)
        by_queue: dict[str, _QueueSlot] = {}
        for slot in slots:
            if slot.allowance is None:
                _lock_and_count(tx, slot, now)
            if slot.allowance:
                by_queue[slot.name] = slot
                candidates += tx.all("claim_candidates_in_queue", queue=slot.name, now=now,
                                     jobs=job_list, saturated=_list(tx, keys.saturated),
                                     limit=min(slot.allowance, want))
        if not candidates:
            break
        candidates.sort(key=_order)
        skipped_key = False
        seen: set[str] = set()
        for row in candidates:
            if claimed >= limit:
                break
            if row["id"] in seen:
                continue
            seen.add(row["id"])
            open_slot = by_queue.get(row["queue"])
            if open_slot is not None and not open_slot.allowance:
                continue
            if not keys.admit(tx, row):
                skipped_key = True
                continue
            claim(row)
            claimed += 1
            if open_slot is not None:
                assert open_slot.allowance is not None
                open_slot.allowance -= 1
                if open_slot.row["rate_count"] is not None:
                    tx.run("insert_queue_start", queue=open_slot.name, at=now)
        if not skipped_key:
            break  # nothing held back that a new query could replace
    return claimed


def _precheck(tx: Tx, slots: list[_QueueSlot], now: float) -> None:
    """Drop (allowance 0) limited queues that are full by an unlocked count.

    A full queue stays full until one of its runs stops running, and the worker
    that stops it claims again; so only queues that look open are locked.
    """
    if not slots:
        return
    names = [s.name for s in slots]
    running = {r["queue"]: int(r["n"]) for r in tx.all("running_by_queue", queues=_list(tx, names))}
    rated = [s.name for s in slots if s.row["rate_count"] is not None]
    starts = {}
    if rated:
        starts = {r["queue"]: int(r["n"])
                  for r in tx.all("starts_by_queue", queues=_list(tx, rated), now=now)}
    for slot in slots:
        if _room(slot.row, running.get(slot.name, 0), starts.get(slot.name, 0)) <= 0:
            slot.allowance = 0


def _room(config: Row, running: int, starts: int) -> int:
    room = 1 << 30
    if config["concurrency"] is not None:
        room = min(room, int(config["concurrency"]) - running)
    if config["rate_count"] is not None:
        room = min(room, int(config["rate_count"]) - starts)
    return room


def _lock_and_count(tx: Tx, slot: _QueueSlot, now: float) -> None:
    """Lock the queue's row, re-read its limits, count exactly: the allowance."""
    row = tx.one("lock_queue", name=slot.name)
    if row is None or row["paused"]:
        slot.allowance = 0
        return
    slot.row = row
    running = tx.one("running_in_queue", queue=slot.name)
    starts = 0
    if row["rate_count"] is not None:
        since = now - float(row["rate_period"])
        # Pruned with a margin: a claim whose clock read is a little behind
        # another's must still see every start of its own window.
        tx.run("prune_queue_starts", queue=slot.name, before=since - PRUNE_MARGIN)
        counted = tx.one("starts_in_window", queue=slot.name, since=since)
        starts = int(counted["n"]) if counted else 0
    slot.allowance = max(0, _room(row, int(running["n"]) if running else 0, starts))


@dataclass
class _Keys:
    """Running runs per ``job<US>key`` as this transaction knows them."""

    limits: Mapping[str, int]
    counts: dict[str, int]
    #: keys whose advisory lock this transaction holds (their counts are exact)
    locked: set[str]
    #: keys at their limit, or being decided by another claimer: not claimed now
    saturated: set[str]

    def admit(self, tx: Tx, row: Row) -> bool:
        """Whether one more run of ``row``'s job and key may run; counts it if so."""
        limit = self.limits.get(row["job"]) if row["concurrency_key"] is not None else None
        if limit is None:
            return True
        key = row["job"] + KEY_SEPARATOR + row["concurrency_key"]
        if key in self.saturated:
            return False
        if key not in self.locked:
            lock = tx.one("try_lock_key", key=key)
            if lock is None or not lock["ok"]:
                self.saturated.add(key)  # another claimer is deciding this key now
                return False
            self.locked.add(key)
            found = tx.one("running_for_key", job=row["job"], key=row["concurrency_key"])
            self.counts[key] = int(found["n"]) if found else 0
        if self.counts[key] >= limit:
            self.saturated.add(key)
            return False
        self.counts[key] += 1
        if self.counts[key] >= limit:
            self.saturated.add(key)
        return True
