"""The state store (SPEC 7): values, TTLs, atomic counters and locks.

Counters and locks are exercised across threads and real processes; a lock
owner is killed with SIGKILL to show that its lock's TTL frees it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from locking import taken_by_another
from stackshift import AsyncStackShift, LockNotAcquiredError, StackShift, ValidationError
from stackshift.durations import to_datetime
from stackshift.testing import FakeClock, run_until_idle


def _state_rows(app: StackShift, table: str = "state") -> int:
    """Rows physically present in ``table`` (expired or not)."""
    with app._service.store.db.read() as tx:
        return int(tx.raw(f"SELECT COUNT(*) AS n FROM {table}", {})[0]["n"])


# -- processUpload: counters across a retry ------------------------------------------


def test_process_upload_counts_every_row_once_across_a_retry(
    fake_app: StackShift, clock: FakeClock
) -> None:
    """Rows are imported in steps; the counter goes up inside each step.

    The third batch fails on the first attempt. On the retry the first two
    batches are replayed from their stored results (not imported or counted
    again), so the counter ends exactly at the number of rows. A counter kept
    outside any step goes up on every invocation: state calls are not steps.
    """
    imported: list[list[int]] = []
    broken = {"batch": 2}

    def download_file(file_id: str) -> dict[str, Any]:
        return {"id": file_id, "rows": list(range(10))}

    def parse_file(file: dict[str, Any]) -> dict[str, Any]:
        rows = file["rows"]
        return {"batches": [rows[i:i + 3] for i in range(0, len(rows), 3)],
                "total": len(rows)}

    @fake_app.job("processUpload", max_attempts=3)
    def process_upload(ctx: Any) -> dict[str, Any]:
        file_id = ctx.payload["fileId"]
        ctx.state.increment(f"files:{file_id}:invocations")
        file = ctx.step.run("download-file", download_file, file_id)
        parsed = ctx.step.run("parse-file", parse_file, file)

        def import_batch(index: int, batch: list[int]) -> int:
            if broken["batch"] == index:
                broken["batch"] = -1
                raise ConnectionError("database went away")
            imported.append(batch)
            return int(ctx.state.increment(f"files:{file_id}:rows", len(batch)))

        for index, batch in enumerate(parsed["batches"]):
            ctx.step.run("import-batch", import_batch, index, batch)
        ctx.step.run("mark-complete", lambda: True)
        return {"rows": parsed["total"]}

    run = fake_app.start("processUpload", {"fileId": "f1"})
    run_until_idle(fake_app)
    retrying = fake_app.runs.get(run.id)
    assert retrying.status == "retrying"
    assert fake_app.state.get("files:f1:rows") == 6  # durable despite the failure

    clock.advance("1m")
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert done.status == "completed" and done.result == {"rows": 10}
    assert done.attempt == 2
    assert fake_app.state.get("files:f1:rows") == 10
    assert imported == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert fake_app.state.get("files:f1:invocations") == 2


# -- values ------------------------------------------------------------------------------


def test_get_set_and_delete(fake_app: StackShift) -> None:
    state = fake_app.state
    assert state.get("imports:42:progress") is None
    assert state.get("imports:42:progress", {"processed": 0}) == {"processed": 0}
    state.set("imports:42:progress", {"processed": 100, "total": 500})
    assert state.get("imports:42:progress") == {"processed": 100, "total": 500}
    state.set("imports:42:progress", {"processed": 500, "total": 500})
    assert state.get("imports:42:progress") == {"processed": 500, "total": 500}

    assert state.delete("imports:42:progress") is True
    assert state.get("imports:42:progress") is None
    assert state.delete("imports:42:progress") is False
    assert _state_rows(fake_app) == 0


def test_a_value_past_its_ttl_reads_as_missing_and_is_cleaned_up(
    fake_app: StackShift, clock: FakeClock
) -> None:
    state = fake_app.state
    state.set("webhooks:stripe:evt_1", {"processed": True}, ttl="10m")
    state.set("keep", 1)
    clock.advance("9m59s")
    assert state.get("webhooks:stripe:evt_1") == {"processed": True}

    clock.advance("1s")
    assert state.get("webhooks:stripe:evt_1") is None
    assert state.get("webhooks:stripe:evt_1", "gone") == "gone"
    live = state.keys()
    assert [k["key"] for k in live] == ["keep"]
    assert state.delete("webhooks:stripe:evt_1") is False  # nothing live to delete

    state.set("counter", 40, ttl="1h")
    clock.advance("1h")
    assert state.increment("counter") == 1  # an expired counter starts again at 0
    clock.advance("1d")
    assert state.get("counter") == 1  # and no longer expires

    state.set("marker", "x", ttl="1s")
    clock.advance("2s")
    run_until_idle(fake_app)  # a worker's maintenance purges expired keys
    assert _state_rows(fake_app) == 2  # keep, counter


def test_expires_at_as_a_datetime_or_an_iso_string(
    fake_app: StackShift, clock: FakeClock
) -> None:
    state = fake_app.state
    deadline = to_datetime(clock.now()) + timedelta(days=7)
    state.set("dedupe:a", True, expires_at=deadline)
    clock.advance(timedelta(days=7) - timedelta(seconds=1))
    assert state.get("dedupe:a") is True
    clock.advance("1s")
    assert state.get("dedupe:a") is None
    listed = fake_app.state.keys()
    assert listed == []


@pytest.mark.parametrize("when", [
    "2026-01-05T10:00:00+01:00",  # 09:00Z: now
    "2026-01-05T08:59:59Z",
    "2020-01-01T00:00:00Z",
])
def test_an_expires_at_not_in_the_future_is_refused_and_changes_nothing(
    fake_app: StackShift, when: str
) -> None:
    """As ttl=0 is: a value gone as it is written is a mistake (a wrong clock or
    time zone); the key keeps the value and expiry it had."""
    state = fake_app.state
    state.set("dedupe:b", "kept", ttl="1h")
    before = state.keys("dedupe:b")
    with pytest.raises(ValidationError, match="expires_at must be in the future, got 20"):
        state.set("dedupe:b", "new", expires_at=when)
    with pytest.raises(ValidationError, match="expires_at must be in the future"):
        state.set("dedupe:c", "new", expires_at=when)
    assert state.keys("dedupe:") == before
    assert state.get("dedupe:c", "missing") == "missing"


# -- atomic increment -------------------------------------------------------------------


def test_increment_is_exact_under_eight_threads(app: StackShift) -> None:
    per_thread = 100
    seen: list[int] = []
    guard = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            got = [app.state.increment("hits") for _ in range(per_thread)]
        except BaseException as exc:
            errors.append(exc)
            return
        with guard:
            seen.extend(got)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert app.state.get("hits") == 8 * per_thread
    assert sorted(seen) == list(range(1, 8 * per_thread + 1))  # every value handed out once


@pytest.mark.parametrize(("value", "by", "message"), [
    ("five", 1, "state key 'counter' does not hold an integer"),
    ("5", 1, "state key 'counter' does not hold an integer"),
    (True, 1, "state key 'counter' does not hold an integer"),
    (2.5, 1, "state key 'counter' does not hold an integer"),
    ({"n": 1}, 1, "state key 'counter' does not hold an integer"),
    (None, 1, "state key 'counter' does not hold an integer"),
    (2**63 - 1, 1, "adding 1 to state key 'counter' leaves the 64-bit integer range"),
    (-(2**63), -1, "adding -1 to state key 'counter' leaves the 64-bit integer range"),
    (2**70, -1, "adding -1 to state key 'counter' leaves the 64-bit integer range"),
])
def test_increment_refuses_with_the_same_message_on_every_store(
        app: StackShift, value: Any, by: int, message: str) -> None:
    """Whichever store, the error names the key and says what is wrong, in the
    same words; the value is left as it was."""
    app.state.set("counter", value)
    with pytest.raises(ValidationError) as refused:
        app.state.increment("counter", by)
    assert str(refused.value) == message
    got = app.state.get("counter")
    assert got == value and type(got) is type(value)
    assert app.state.increment("other", by) == by  # the store still works


@pytest.mark.parametrize("old", ["five", True, 2**70, 2.5, {"n": 1}, 7])
def test_increment_of_an_expired_key_starts_at_zero_whatever_it_held(
        fake_app: StackShift, clock: FakeClock, old: Any) -> None:
    """An expired value is missing, even one increment would refuse; the new
    counter does not expire. A live counter keeps its expiry."""
    state = fake_app.state
    state.set("quota:acme", old, ttl="1m")
    clock.advance("1m")
    assert state.increment("quota:acme", 5) == 5
    clock.advance("365d")
    assert state.keys("quota:acme")[0]["value"] == 5
    assert state.keys("quota:acme")[0]["expires_at"] is None

    state.set("quota:acme", 1, ttl="1m")
    expires = state.keys("quota:acme")[0]["expires_at"]
    assert state.increment("quota:acme") == 2
    assert state.keys("quota:acme")[0]["expires_at"] == expires
    clock.advance("1m")
    assert state.get("quota:acme") is None


INCREMENT_SCRIPT = """
import json, sys, time
from stackshift import StackShift

with StackShift(sys.argv[1]) as app:
    app.state.get("shared")  # connected
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    got = []
    for _ in range(int(sys.argv[2])):
        got.append(app.state.increment("shared", 2))
        time.sleep(0.0005)  # a breath between writes, as real work has
print(json.dumps(got))
"""


def test_increment_is_exact_across_four_processes(db_url: str, tmp_path: Path) -> None:
    """Four processes add 2 to one counter 1,000 times each: every value is handed
    out exactly once and the total is exact."""
    script = tmp_path / "increment.py"
    script.write_text(textwrap.dedent(INCREMENT_SCRIPT))
    StackShift(db_url).close()  # create the schema once, before the race
    count, processes = 1000, 4
    procs = [
        subprocess.Popen([sys.executable, str(script), db_url, str(count)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    outputs = []
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        outputs.append(json.loads(out))
    with StackShift(db_url) as app:
        assert app.state.get("shared") == 2 * processes * count
    values = sorted(v for output in outputs for v in output)
    assert values == list(range(2, 2 * processes * count + 1, 2))
    # The processes really raced: each one's values interleave with the others'.
    for mine in outputs:
        others = [v for output in outputs if output is not mine for v in output]
        assert min(mine) < max(others) and min(others) < max(mine)


# -- locks ----------------------------------------------------------------------------------

HOLDER_SCRIPT = """
import sys, time
from stackshift import StackShift

app = StackShift(sys.argv[1])
with app.state.lock(sys.argv[2], ttl=sys.argv[3]):
    print(time.time(), flush=True)
    sys.stdin.readline()  # hold until told (or killed)
print("released", flush=True)
app.close()
"""


def _holder(db_url: str, tmp_path: Path, key: str, ttl: str) -> tuple[subprocess.Popen[str], float]:
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent(HOLDER_SCRIPT))
    proc = subprocess.Popen([sys.executable, str(script), db_url, key, ttl],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acquired_at = float(proc.stdout.readline())
    return proc, acquired_at


def _close(proc: subprocess.Popen[str]) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()
    proc.wait(timeout=20)


def test_a_lock_held_by_one_process_is_refused_to_another_until_released(
    app: StackShift, db_url: str, tmp_path: Path
) -> None:
    proc, _ = _holder(db_url, tmp_path, "search-index:rebuild", "30s")
    try:
        with pytest.raises(LockNotAcquiredError, match="search-index:rebuild"), \
                app.state.lock("search-index:rebuild"):
            pytest.fail("two owners at once")
        # A non-owner's release does nothing.
        app.state.lock("search-index:rebuild").__exit__(None, None, None)
        with pytest.raises(LockNotAcquiredError), app.state.lock("search-index:rebuild"):
            pass

        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("done\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "released"
        with app.state.lock("search-index:rebuild"):
            pass
    finally:
        _close(proc)


def test_the_ttl_frees_the_lock_of_a_killed_owner(
    app: StackShift, db_url: str, tmp_path: Path
) -> None:
    ttl = 2.0
    proc, acquired_at = _holder(db_url, tmp_path, "provision:acme", f"{ttl}s")
    try:
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert time.time() < acquired_at + ttl - 0.5
        with pytest.raises(LockNotAcquiredError), app.state.lock("provision:acme"):
            pass  # the dead owner's lock lives until its TTL
        with app.state.lock("provision:acme", wait="10s"):
            got_it = time.time()
        assert got_it >= acquired_at + ttl - 0.05  # not before the TTL ran out
        assert got_it < acquired_at + ttl + 2  # and promptly after it
    finally:
        _close(proc)


def test_a_late_exit_of_an_expired_owner_does_not_release_the_next_owner(
    fake_app: StackShift, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    state = fake_app.state
    second = state.lock("billing:close-month", ttl="1m")
    with state.lock("billing:close-month", ttl="10s") as first:
        clock.advance("11s")  # the first owner overran its TTL
        second.__enter__()
    # The first owner's exit came after the second took over: still held.
    with pytest.raises(LockNotAcquiredError), state.lock("billing:close-month"):
        pass
    # The first owner learns it lost the lock, from the lock and from the log.
    assert first.lost is True
    assert ("lock 'billing:close-month' ran past its ttl of 10s before its block ended"
            in caplog.text)
    second.__exit__(None, None, None)
    assert second.lost is False
    with state.lock("billing:close-month") as third:
        pass
    assert third.lost is False


def test_an_owner_that_overran_its_ttl_learns_it_even_when_nobody_took_the_lock(
    fake_app: StackShift, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Its lock could have been taken and released meanwhile: past the TTL the
    block was not exclusive, whoever holds the lock at its end."""
    state = fake_app.state
    with state.lock("reports:slow", ttl="10s") as sync_lock:
        clock.advance("10s")
    assert sync_lock.lost is True

    async def async_owner() -> bool | None:
        async with fake_app.state.lock("reports:slow", ttl="10s") as held:
            clock.advance("9s")
        assert held.lost is False
        async with fake_app.state.lock("reports:slow", ttl="10s") as held:
            clock.advance("1m")
        return held.lost

    assert asyncio.run(async_owner()) is True
    assert caplog.text.count("lock 'reports:slow' ran past its ttl of 10s") == 2
    with state.lock("reports:slow", wait=0):
        pass  # every overrun lock was released on exit


def test_an_async_wait_for_a_lock_cut_short_by_a_timeout_leaves_it_free(
    app: StackShift, db_url: str
) -> None:
    """``asyncio.timeout`` (or a cancelled task) can end the wait while a try is
    still in its thread, held up by a busy store; the try must not leave the lock
    taken by nobody for its whole TTL."""
    other = StackShift(db_url)
    busy, free = threading.Event(), threading.Event()

    def hold_the_store() -> None:
        with other._service.store.db.write() as tx:
            if tx.dialect == "postgres":
                tx.raw("LOCK TABLE locks IN EXCLUSIVE MODE", {})
            busy.set()
            free.wait(20)

    holder = threading.Thread(target=hold_the_store)
    holder.start()
    try:
        assert busy.wait(10)

        lock = app.state.lock("exports:acme", ttl="1m")

        async def impatient() -> None:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3), lock:
                    pytest.fail("took the lock past a busy store")
            free.set()  # the try goes on in its thread, and takes the lock

        asyncio.run(impatient())  # returns once the try's thread has ended
    finally:
        free.set()
        holder.join(20)
        other.close()
    with app.state.lock("exports:acme", wait=0):  # given back at once, not after 1m
        pass

    async def patient() -> bool | None:
        async with lock:  # the same lock, entered again, keeps what it takes
            with pytest.raises(LockNotAcquiredError), app.state.lock("exports:acme"):
                pass
        return lock.lost

    assert asyncio.run(patient()) is False


def test_a_sync_try_cut_short_after_it_took_the_lock_gives_it_back(app: StackShift) -> None:
    """A Ctrl-C can land after the store took the lock and before the try returned
    (here it is raised at that instant): the lock must not stay taken by nobody for
    its whole TTL."""
    service = app._service
    take = service.lock_acquire

    def interrupted(*args: Any) -> bool:
        take(*args)
        raise KeyboardInterrupt

    service.lock_acquire = interrupted  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt), app.state.lock("exports:acme", ttl="1m"):
            pytest.fail("entered the block")
    finally:
        del service.lock_acquire
    assert taken_by_another(app, "exports:acme")


def test_a_handler_whose_lock_outlasts_its_ttl_finds_the_warning_in_its_logs(
    fake_app: StackShift, clock: FakeClock
) -> None:
    @fake_app.job("closeMonth")
    def close_month(ctx: Any) -> bool | None:
        with ctx.state.lock("billing:close-month", ttl="10s") as held:
            clock.advance("11s")  # slower than the TTL
        return held.lost

    run = fake_app.start("closeMonth")
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert (done.status, done.result) == ("completed", True)
    [entry] = [e for e in fake_app.runs.logs(run.id) if e.logger == "stackshift.state"]
    assert entry.level == "WARNING"
    assert entry.message.startswith(
        "lock 'billing:close-month' ran past its ttl of 10s before its block ended")



def test_extend_keeps_another_owner_out_past_the_original_ttl(
    fake_app: StackShift, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    state = fake_app.state
    with state.lock("search-index:rebuild", ttl="10s") as held:
        for _ in range(3):  # 24s in all, each step within the TTL
            clock.advance("8s")
            assert held.extend() is True  # another 10s from now
            assert taken_by_another(fake_app, "search-index:rebuild") is False
        assert held.extend("1m") is True  # a ttl of its own, this once
        clock.advance("59s")
        assert taken_by_another(fake_app, "search-index:rebuild") is False
        assert held.extend("2s") is True  # sooner than before: now + ttl, not added to it
        clock.advance("2s")
        assert taken_by_another(fake_app, "search-index:rebuild") is True
        assert held.extend() is False
    assert held.lost is True
    # The warning names the TTL that ran out: the last one given.
    assert ("lock 'search-index:rebuild' ran past its ttl of 2s before its block ended"
            in caplog.text)

    with state.lock("search-index:rebuild", ttl="10s") as kept:
        clock.advance("9s")
        assert kept.extend() is True
        clock.advance("9s")
    assert kept.lost is False  # extended in time: the block was exclusive throughout
    assert taken_by_another(fake_app, "search-index:rebuild") is True  # released on exit

    async def async_owner() -> list[bool]:
        seen = []
        async with fake_app.state.lock("search-index:rebuild", ttl="10s") as held:
            clock.advance("9s")
            seen.append(await held.extend_async("30s"))
            clock.advance("29s")
            seen.append(taken_by_another(fake_app, "search-index:rebuild"))
        seen.append(bool(held.lost))
        return seen

    assert asyncio.run(async_owner()) == [True, False, False]


def test_extend_after_the_ttl_ran_out_does_not_take_the_lock_back(
    fake_app: StackShift, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    state = fake_app.state
    second = state.lock("billing:close-month", ttl="1m")
    with state.lock("billing:close-month", ttl="10s") as first:
        clock.advance("11s")
        second.__enter__()  # the next owner took the expired lock
        assert first.extend() is False
        assert first.extend("1h") is False
        assert taken_by_another(fake_app, "billing:close-month") is False  # still second's
        clock.advance("59s")
        assert taken_by_another(fake_app, "billing:close-month") is False  # for its own 1m
        clock.advance("1s")
    assert first.lost is True
    assert ("lock 'billing:close-month' ran past its ttl of 10s before its block ended"
            in caplog.text)
    second.__exit__(None, None, None)
    assert second.lost is True  # it did not extend: its 1m ran out too

    # Expired and taken by nobody: extend() does not take it back either.
    with state.lock("billing:close-month", ttl="10s") as late:
        clock.advance("10s")
        assert late.extend() is False
        assert taken_by_another(fake_app, "billing:close-month") is True
    assert late.lost is True


@pytest.mark.parametrize("ttl", [0, -5, "0s", "soon", float("nan"), float("inf"), 10**12])
def test_extend_with_a_bad_ttl_is_refused_and_changes_nothing(
    fake_app: StackShift, clock: FakeClock, ttl: Any
) -> None:
    with fake_app.state.lock("exports:acme", ttl="10s") as held:
        clock.advance("5s")
        with pytest.raises(ValidationError, match="ttl"):
            held.extend(ttl)
        clock.advance("4s")
        assert taken_by_another(fake_app, "exports:acme") is False  # not cut short
        clock.advance("1s")
        assert taken_by_another(fake_app, "exports:acme") is True  # nor moved on
    assert held.lost is True


def test_extend_outside_its_block_is_an_error(
    fake_app: StackShift, clock: FakeClock
) -> None:
    lock = fake_app.state.lock("reports:nightly", ttl="10s")
    with pytest.raises(RuntimeError, match="lock 'reports:nightly' is not held: extend"):
        lock.extend()
    with lock:
        pass
    with pytest.raises(RuntimeError, match="is not held"):
        lock.extend()
    with pytest.raises(RuntimeError, match="is not held"):
        asyncio.run(lock.extend_async())
    refused = fake_app.state.lock("reports:nightly")
    with lock, pytest.raises(LockNotAcquiredError), refused:
        pass
    with pytest.raises(RuntimeError, match="is not held"):
        refused.extend()  # its enter was refused: it holds nothing
    with pytest.raises(TypeError, match=r"state.lock\(key\).extend\(\) got an unexpected "
                       r"keyword argument 'ttl_seconds'; did you mean 'ttl'\?"):
        lock.extend(ttl_seconds=5)  # type: ignore[call-arg]


def test_a_handler_extends_its_lock_with_ctx_state(
    fake_app: StackShift, clock: FakeClock
) -> None:
    @fake_app.job("rebuildIndex")
    def rebuild_index(ctx: Any) -> list[bool]:
        seen = []
        with ctx.state.lock("index:acme", ttl="1m") as held:
            for _ in range(3):
                clock.advance("50s")  # one batch
                seen.append(held.extend())
            seen.append(taken_by_another(fake_app, "index:acme"))
        return [*seen, held.lost]

    @fake_app.job("rebuildIndexAsync")
    async def rebuild_index_async(ctx: Any) -> list[bool]:
        seen = []
        async with ctx.state.lock("index:acme", ttl="1m") as held:
            for _ in range(3):
                clock.advance("50s")
                seen.append(await held.extend_async())
            seen.append(taken_by_another(fake_app, "index:acme"))
        return [*seen, held.lost]

    for job in ("rebuildIndex", "rebuildIndexAsync"):
        run = fake_app.start(job)
        run_until_idle(fake_app)
        done = fake_app.runs.get(run.id)
        assert (done.status, done.result) == ("completed", [True, True, True, False, False])


def test_a_lock_says_who_holds_it_in_listings_and_refusals(
    fake_app: StackShift, clock: FakeClock
) -> None:
    """Taken in a handler, a lock names the run and attempt; elsewhere, the host and
    process. Another owner refused is told who holds it and for how long."""
    seen: dict[str, Any] = {}

    @fake_app.job("exportOrders")
    def export_orders(ctx: Any) -> None:
        with ctx.state.lock("exports:acme", ttl="1m"):
            clock.advance("20s")
            seen["listed"] = fake_app.state.locks("exports:")
            with pytest.raises(LockNotAcquiredError) as refused, \
                    fake_app.state.lock("exports:acme"):
                pass
            seen["refused"] = str(refused.value)

    @fake_app.job("exportOrdersAsync")
    async def export_orders_async(ctx: Any) -> None:
        async with ctx.state.lock("exports:acme", ttl="1m"):
            seen["listed"] = await ctx.state.locks("exports:")

    run = fake_app.start("exportOrders")
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).status == "completed"
    holder = f"run {run.id} (attempt 1)"
    assert [(e["key"], e["holder"]) for e in seen["listed"]] == [("exports:acme", holder)]
    assert seen["refused"] == (f"lock 'exports:acme' is held by another owner: {holder}, "
                               "for 40.0s more unless it is released or extended")

    run = fake_app.start("exportOrdersAsync")
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).status == "completed"
    assert [e["holder"] for e in seen["listed"]] == [f"run {run.id} (attempt 1)"]

    # An owner over HTTP need not say who it is.
    assert fake_app._service.lock_acquire("exports:beta", "a-token", "1m") is True
    assert fake_app.state.locks("exports:beta") == [
        {"key": "exports:beta", "holder": None, "expires_at": clock.now() + 60}]
    with pytest.raises(LockNotAcquiredError) as refused, fake_app.state.lock("exports:beta"):
        pass
    assert str(refused.value) == (
        "lock 'exports:beta' is held by another owner (who did not say who it is), for 60.0s "
        "more unless it is released or extended")


def test_locks_are_not_reentrant_and_apart_from_state_keys(fake_app: StackShift) -> None:
    """A second lock on a key, in the same block, is another owner: refused at
    once (wait=None and wait=0 try once), never a deadlock. A lock's key names no
    state value: a value under the same key is neither read nor changed."""
    state = fake_app.state
    state.set("sync:acme", {"cursor": 7})
    with state.lock("sync:acme"):
        for wait in (None, 0, "0s"):
            with pytest.raises(LockNotAcquiredError), state.lock("sync:acme", wait=wait):
                pass
        assert state.get("sync:acme") == {"cursor": 7}
        state.set("sync:acme", {"cursor": 8})
        assert state.delete("sync:acme") is True
        with pytest.raises(LockNotAcquiredError), state.lock("sync:acme"):
            pass  # deleting the value left the lock alone
    assert state.get("sync:acme") is None
    assert state.keys() == []
    # The same Lock entered in its own block: refused, and the outer block keeps it.
    for lock in (state.lock("sync:acme"), fake_app.state_async.lock("sync:acme")):
        with lock:
            with pytest.raises(RuntimeError, match="not reentrant"), lock:
                pass
            with pytest.raises(RuntimeError, match="not reentrant"):
                asyncio.run(lock.__aenter__())
            assert [held["key"] for held in state.locks()] == ["sync:acme"]
        assert lock.lost is False and state.locks() == []


def test_wait_waits_for_a_lock_to_be_freed(app: StackShift) -> None:
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with app.state.lock("reports:nightly", ttl="30s"):
            holding.set()
            release.wait(10)
            time.sleep(0.3)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(10)
        began = time.monotonic()
        with pytest.raises(LockNotAcquiredError), app.state.lock("reports:nightly", wait="0.1s"):
            pass
        assert 0.1 <= time.monotonic() - began < 2

        release.set()
        began = time.monotonic()
        with app.state.lock("reports:nightly", wait="5s"):
            waited = time.monotonic() - began
        assert 0.2 <= waited < 3
    finally:
        release.set()
        thread.join(10)


def test_async_locks_in_a_handler_and_on_the_client(
    fake_app: StackShift, db_url: str, clock: FakeClock
) -> None:
    @fake_app.job("rebuildIndex")
    async def rebuild_index(ctx: Any) -> dict[str, Any]:
        key = f"index:{ctx.payload['customer']}"
        async with ctx.state.lock(key, ttl="1m"):
            await ctx.state.set(f"{key}:owner", ctx.run.id)
            try:
                async with ctx.state.lock(key):
                    return {"exclusive": False}
            except LockNotAcquiredError:
                pass
            held = fake_app.state.lock(key)
            try:
                with held:
                    return {"exclusive": False}
            except LockNotAcquiredError:
                pass
        async with ctx.state.lock(key):
            pass  # free again after the block
        return {"exclusive": True, "count": await ctx.state.increment(f"{key}:builds")}

    run = fake_app.start("rebuildIndex", {"customer": "acme"})
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert done.status == "completed", done.error
    assert done.result == {"exclusive": True, "count": 1}
    assert fake_app.state.get("index:acme:owner") == run.id

    async def client_side() -> list[str]:
        seen = []
        async with fake_app.state.lock("index:acme", ttl="1m"):
            seen.append("sync client")
            try:
                async with fake_app.state.lock("index:acme"):
                    seen.append("twice")
            except LockNotAcquiredError:
                seen.append("refused")
        async with AsyncStackShift(db_url, clock=clock) as client:
            async with client.state.lock("index:acme"):
                seen.append("async client")
                await client.state.set("index:acme:note", "rebuilt")
            assert await client.state.get("index:acme:note") == "rebuilt"
        return seen

    assert asyncio.run(client_side()) == ["sync client", "refused", "async client"]
    assert Counter(k["key"] for k in fake_app.state.keys(prefix="index:acme")) == Counter(
        ["index:acme:builds", "index:acme:note", "index:acme:owner"])


# -- seeing and breaking locks -----------------------------------------------------------


def _lock_keys(app: StackShift, prefix: str | None = None, limit: int = 100,
               after: str | None = None) -> list[str]:
    return [entry["key"] for entry in app.state.locks(prefix, limit, after=after)]


def test_locks_lists_live_locks_in_key_order_with_holder_and_expiry(
    fake_app: StackShift, clock: FakeClock
) -> None:
    state = fake_app.state
    state.set("imports:1", "a value, not a lock")
    assert state.locks() == []
    with state.lock("imports:2", ttl="1m") as second, state.lock("imports:10", ttl="10s"), \
            state.lock("imports:%", ttl="1h"), state.lock("billing", ttl="1m"):
        listed = state.locks()
        assert [e["key"] for e in listed] == ["billing", "imports:%", "imports:10", "imports:2"]
        # Who holds it, in words; never the owner's token, which alone releases it.
        here = f"{socket.gethostname()} (pid {os.getpid()})"
        assert listed[3] == {"key": "imports:2", "holder": here,
                             "expires_at": clock.now() + 60}
        assert second.owner not in str(listed)
        # The prefix is literal ('%' is itself) and paging follows key order.
        assert _lock_keys(fake_app, "imports:%") == ["imports:%"]
        assert _lock_keys(fake_app, "imports:", 2) == ["imports:%", "imports:10"]
        assert _lock_keys(fake_app, "imports:", 2, after="imports:10") == ["imports:2"]
        assert _lock_keys(fake_app, after="imports:2") == []
        clock.advance("10s")  # imports:10 ran out: no longer listed, though not released
        assert _lock_keys(fake_app) == ["billing", "imports:%", "imports:2"]
        assert _state_rows(fake_app, "locks") == 4
        assert second.extend("2m") is True
        assert state.locks("imports:2")[0]["expires_at"] == clock.now() + 120
    assert state.locks() == []  # released on exit
    assert [e["key"] for e in state.keys(None)] == ["imports:1"]  # locks are not state keys


@pytest.mark.parametrize(("call", "message"), [
    (lambda state: state.locks(limit=0), "limit must be an integer from 1 to 1000"),
    (lambda state: state.locks(limit=1001), "limit must be an integer from 1 to 1000"),
    (lambda state: state.locks(after="a\x00"), "after must not contain the NUL"),
    (lambda state: state.locks(prefix=5), "prefix must be a string"),
    (lambda state: state.break_lock(""), "state key must be a non-empty string"),
    (lambda state: state.break_lock("a\x00"), "state key must not contain the NUL"),
])
def test_bad_input_to_locks_and_break_lock_is_refused_and_changes_nothing(
    fake_app: StackShift, call: Any, message: str
) -> None:
    with fake_app.state.lock("a", ttl="1m") as held:
        with pytest.raises(ValidationError, match=message):
            call(fake_app.state)
        assert _lock_keys(fake_app) == ["a"]
        assert held.extend() is True
    assert held.lost is False


BROKEN = ("lock 'billing:close-month' was broken (released by someone else: state.break_lock,"
          " `stackshift state unlock` or the dashboard) while its block held it, before its"
          " ttl of 3600s ran out: another owner may have held it meanwhile")
EXPIRED_OR_BROKEN = ("lock 'billing:close-month' ran past its ttl of 3600s before its block"
                     " ended, or was broken (released by someone else: state.break_lock,"
                     " `stackshift state unlock` or the dashboard) while its block held it:"
                     " which of the two cannot be told")


def test_break_lock_frees_a_stuck_owner_s_lock_and_its_owner_finds_out(
    fake_app: StackShift, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    state = fake_app.state
    with state.lock("billing:close-month", ttl="1h") as stuck:
        assert taken_by_another(fake_app, "billing:close-month") is False
        assert state.break_lock("billing:close-month") is True
        assert state.locks() == []
        assert state.break_lock("billing:close-month") is False  # nothing left to break
        with state.lock("billing:close-month", ttl="1m") as next_owner:
            assert stuck.extend() is False  # it is not taken back from the next owner
            assert _lock_keys(fake_app) == ["billing:close-month"]
            assert state.locks()[0]["expires_at"] == clock.now() + 60  # next_owner's
        assert next_owner.lost is False
    assert stuck.lost is True
    # Another owner took the key since: a break and an overrun look the same.
    assert caplog.messages == [EXPIRED_OR_BROKEN + ", as the lock was taken by another owner"
                               " since (who may have held it meanwhile) or cleaned up (if it"
                               " ran past its ttl, give the lock a longer ttl, or extend it"
                               " sooner)"]
    caplog.clear()

    # Broken and taken by nobody: the owner is told it was broken.
    with state.lock("billing:close-month", ttl="1h") as alone:
        assert state.break_lock("billing:close-month") is True
        assert alone.extend() is False
        assert state.locks() == []
    assert alone.lost is True
    assert caplog.messages == [BROKEN]
    assert taken_by_another(fake_app, "billing:close-month") is True
    caplog.clear()

    # An expired lock is not live: breaking it says False and leaves it to its
    # owner, who is told that its ttl ran out.
    with state.lock("billing:close-month", ttl="10s") as late:
        clock.advance("10s")
        assert state.break_lock("billing:close-month") is False
        assert state.locks() == []
    assert late.lost is True
    assert caplog.messages == [
        "lock 'billing:close-month' ran past its ttl of 10s before its block ended; no other"
        " owner took it meanwhile, but one could have (give the lock a longer ttl, or extend"
        " it sooner)"]
    assert _state_rows(fake_app, "locks") == 0
    assert state.break_lock("never-locked") is False


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_handler_whose_lock_is_broken_is_told_so_in_its_logs(
        fake_app: StackShift, flavour: str) -> None:
    """Not that its lock "ran past its ttl": the TTL of an hour had not run out."""
    if flavour == "sync":
        @fake_app.job("closeMonth")
        def close_month(ctx):  # type: ignore[no-untyped-def]
            with ctx.state.lock("billing:close-month", ttl="1h") as held:
                fake_app.state.break_lock("billing:close-month")  # an operator, meanwhile
            return held.lost
    else:
        @fake_app.job("closeMonth")
        async def close_month_async(ctx):  # type: ignore[no-untyped-def]
            async with ctx.state.lock("billing:close-month", ttl="1h") as held:
                await asyncio.to_thread(fake_app.state.break_lock, "billing:close-month")
            return held.lost

    run = fake_app.start("closeMonth")
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).result is True
    assert [(e.level, e.message) for e in fake_app.runs.logs(run.id)] == [("WARNING", BROKEN)]


def test_the_mark_of_a_broken_lock_is_cleaned_up_a_day_later(
        fake_app: StackShift, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """Its row stays, expired, for its owner's exit to read; an owner gone for good
    leaves it to clean-up, which removes it after a day (the owner is then told
    both possibilities)."""
    state = fake_app.state
    hung = state.lock("billing:close-month", ttl="1h")
    hung.__enter__()
    assert state.break_lock("billing:close-month") is True
    clock.advance("23h")
    fake_app.worker().maintain()
    assert _state_rows(fake_app, "locks") == 1
    clock.advance("1h")
    fake_app.worker().maintain()
    assert _state_rows(fake_app, "locks") == 0
    hung.__exit__(None, None, None)
    assert hung.lost is True
    assert caplog.messages[-1].startswith(EXPIRED_OR_BROKEN)


def test_locks_and_break_lock_on_the_async_client(
    fake_app: StackShift, db_url: str, clock: FakeClock
) -> None:
    async def operator() -> list[Any]:
        seen: list[Any] = []
        async with AsyncStackShift(db_url, clock=clock) as client:
            async with client.state.lock("index:acme", ttl="1m") as held:
                seen.append([e["key"] for e in await client.state.locks("index:")])
                seen.append(await client.state.break_lock("index:acme"))
                seen.append(await held.extend_async())
                seen.append(await client.state.locks(after="index:"))
            seen.append(held.lost)
        return seen

    assert asyncio.run(operator()) == [["index:acme"], True, False, [], True]
