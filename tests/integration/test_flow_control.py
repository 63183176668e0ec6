"""Flow control on both stores: queue and key concurrency, rate limits, priority and
its starvation bound, pause and resume, queue settings and statistics, dead
letters, ``on_failure`` and bulk retry (SDK, CLI and HTTP API).

The limits are shown three ways: from inside handlers in several worker
processes (what a user sees), by many claimers racing in one process (the
claim transaction itself), and step by step on the fake clock.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from flow_app import HERE, most_at_once, read_spans, worker_processes

from processes import stop_processes
from stackshift import QueueNotFoundError, StackShift, ValidationError
from stackshift.cli.main import cli
from stackshift.testing import FakeClock, run_until_idle

# -- several worker processes --------------------------------------------------------------


def wait_all(app: StackShift, run_ids: list[str], timeout: float) -> None:
    for run_id in run_ids:
        assert app.runs.wait(run_id, timeout=timeout).status == "completed"


def test_queue_concurrency_caps_running_runs_across_worker_processes(
        db_url: str, tmp_path: Path) -> None:
    """Concurrency 3, four processes of one slot each: only the four of them together
    could pass the cap, and never more than 3 run at once. (With four slots each,
    one process could take the whole cap and every run.)"""
    app = StackShift(db_url)
    record = tmp_path / "spans.txt"
    try:
        app.queue("capped", concurrency=3)
        with worker_processes(db_url, record, 4, tmp_path, concurrency=1):
            ids = [app.queue("capped").enqueue("held", {"seconds": 0.2}).id for _ in range(18)]
            wait_all(app, ids, timeout=60)
        spans = read_spans(record)
        assert sorted(s.run_id for s in spans) == sorted(ids)
        assert most_at_once(spans) <= 3
        assert most_at_once(spans) >= 2, "the queue ran one run at a time"
        assert len({s.pid for s in spans}) >= 2, "one process did all the work"
    finally:
        app.close()


def test_same_key_never_overlaps_and_different_keys_run_in_parallel(
        db_url: str, tmp_path: Path) -> None:
    app = StackShift(db_url)
    record = tmp_path / "spans.txt"
    try:
        with worker_processes(db_url, record, 3, tmp_path, concurrency=4):
            ids = [app.start("keyed", {"seconds": 0.15, "key": key}, concurrency_key=key).id
                   for _ in range(4) for key in ("customer-1", "customer-2", "customer-3")]
            wait_all(app, ids, timeout=60)
        spans = read_spans(record)
        assert len(spans) == 12
        for key in ("customer-1", "customer-2", "customer-3"):
            assert most_at_once([s for s in spans if s.key == key]) == 1, key
        assert most_at_once(spans) >= 2, "different keys did not run in parallel"
    finally:
        app.close()


def test_rate_limit_caps_attempts_started_in_any_window(db_url: str, tmp_path: Path) -> None:
    """10/s for over 5 seconds: no 1-second window holds more than 10 attempt starts."""
    app = StackShift(db_url)
    record = tmp_path / "spans.txt"
    try:
        app.queue("metered", rate_limit="10/s")
        with worker_processes(db_url, record, 3, tmp_path, concurrency=8):
            began = time.time()
            ids = [app.queue("metered").enqueue("quick").id for _ in range(55)]
            wait_all(app, ids, timeout=60)
            took = time.time() - began
        # Attempt starts as the claims recorded them: exact.
        started = {i: app.runs.attempts(i)[0].started_at.timestamp() for i in ids}
        assert max_in_window(sorted(started.values()), 1.0) <= 10
        assert took >= 4.0, f"55 starts at 10/s took only {took:.1f}s"
        # Inside the handlers: a handler begins after its claim by the worker's
        # dispatch delay (the documented tolerance), so windows shorter by the
        # longest delay seen hold at most 10 handler starts.
        spans = read_spans(record)
        assert sorted(s.run_id for s in spans) == sorted(ids)
        delay = max(s.begin - started[s.run_id] for s in spans)
        assert 0 <= delay < 1.0
        assert max_in_window(sorted(s.begin for s in spans), 1.0 - delay) <= 10
    finally:
        app.close()


def test_resuming_or_raising_a_limit_starts_runs_in_other_processes_at_once(
        db_url: str, tmp_path: Path) -> None:
    """A worker process polling only every 5 s starts a run within a second of its
    queue being resumed, or its concurrency raised, by another process."""
    app = StackShift(db_url)
    record = tmp_path / "spans.txt"
    lane = app.queue("lane")
    lane.pause()
    with open(tmp_path / "worker.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(HERE), db_url, str(record),
                                 "--concurrency", "4", "--poll", "5s"],
                                stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready")

        def started_within(run_id: str, seconds: float) -> float:
            began = time.time()
            while app.runs.get(run_id).status == "queued":
                assert time.time() - began < seconds, (
                    f"not started {seconds}s after: " + (tmp_path / "worker.log").read_text())
                time.sleep(0.01)
            return time.time() - began

        held = lane.enqueue("held", {"seconds": 3})
        time.sleep(1.0)  # the worker has looked, found the queue paused, and idles
        assert app.runs.get(held.id).status == "queued"
        lane.resume()
        started_within(held.id, 1.0)
        lane.configure(concurrency=1)
        second = lane.enqueue("held", {"seconds": 0})
        time.sleep(1.0)
        assert app.runs.get(second.id).status == "queued"  # the one slot is taken
        lane.configure(concurrency=2)
        started_within(second.id, 1.0)
        wait_all(app, [held.id, second.id], timeout=30)
    finally:
        stop_processes([proc], grace=20)
        app.close()


def max_in_window(times: list[float], width: float) -> int:
    """The most of ``times`` (sorted) inside any window ``[t, t + width)``."""
    most = 0
    j = 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j < len(times) and times[j] < start + width:
            j += 1
        most = max(most, j - i)
    return most


# -- many claimers racing in one process -------------------------------------------------


def race_claims(db_url: str, job: str, claimers: int, **rules: Any) -> int:
    """``claimers`` stores claim at the same instant; nothing finishes. Returns claimed."""
    from stackshift.store import open_store
    from stackshift.store.flow import ClaimRules

    stores = [open_store(db_url) for _ in range(claimers)]
    barrier = threading.Barrier(claimers)
    counts: list[int] = []
    errors: list[BaseException] = []

    def claim(store: Any, n: int) -> None:
        try:
            barrier.wait()
            got = store.claim_runs(f"w{n}", [job], 3, 60, time.time(),
                                   rules=ClaimRules(rules.get("key_limits", {}), {}))
            counts.append(len(got))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(s, n)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert errors == []
    return sum(counts)


def test_racing_claimers_never_exceed_the_queue_concurrency(app: StackShift) -> None:
    app.queue("race", concurrency=3)
    for _ in range(20):
        app.queue("race").enqueue("slow")
    assert race_claims(app.database_url or "", "slow", 8) == 3
    assert app.queues.get("race").running == 3


def test_racing_claimers_never_exceed_the_key_concurrency(app: StackShift) -> None:
    for n in range(12):
        app.start("prov", {"n": n}, concurrency_key="customer-7" if n < 9 else "customer-8")
    claimed = race_claims(app.database_url or "", "prov", 8, key_limits={"prov": 1})
    running = app.runs.list(status="running", job="prov").items
    assert claimed == len(running) == 2
    assert sorted(r.concurrency_key for r in running) == ["customer-7", "customer-8"]


def test_racing_claimers_never_exceed_the_rate_limit(app: StackShift) -> None:
    app.queue("slowly", rate_limit="5/h")
    for _ in range(20):
        app.queue("slowly").enqueue("any")
    assert race_claims(app.database_url or "", "any", 8) == 5


# -- step by step on the fake clock ------------------------------------------------------


@pytest.fixture
def order(fake_app: StackShift) -> list[Any]:
    seen: list[Any] = []

    @fake_app.job("note")
    def note(ctx: Any) -> None:
        seen.append(ctx.payload)

    return seen


def test_higher_priority_runs_first_within_a_queue(fake_app: StackShift,
                                                   order: list[Any]) -> None:
    for name, priority in (("a", 0), ("b", 5), ("c", -3), ("d", 10), ("e", 5)):
        fake_app.queue("lane").enqueue("note", name, priority=priority)
    run_until_idle(fake_app, concurrency=1)
    assert order == ["d", "b", "e", "a", "c"]


def test_old_work_goes_first_once_it_has_waited_past_the_starvation_limit(
        fake_app: StackShift, clock: FakeClock, order: list[Any]) -> None:
    """A stream of high-priority work delays a low-priority run by 5 minutes at most."""
    assert fake_app._service.settings.starvation_limit == 300
    fake_app.start("note", "low", priority=0)
    for n in range(3):
        fake_app.start("note", f"high-{n}", priority=10)
    worker = fake_app.worker(concurrency=1)
    store = fake_app._service.store

    def claim_one() -> Any:
        worker.maintain()
        claimed = store.claim_runs(worker.id, worker.jobs, 1, 3600, clock.now(),
                                   rules=fake_app._service.claim_rules())
        return claimed[0].run.payload

    assert claim_one() == "high-0"
    clock.advance("4m")
    fake_app.start("note", "high-3", priority=10)
    assert claim_one() == "high-1"  # four minutes: priority still rules
    clock.advance("61s")
    fake_app.start("note", "high-4", priority=10)
    # Past the limit: the runs ready since the start go first, oldest first,
    # ahead of any priority; then priority order again.
    assert [claim_one() for _ in range(4)] == ["low", "high-2", "high-3", "high-4"]


def test_a_worker_that_starts_takes_the_runs_past_the_starvation_limit_first(
        fake_app: StackShift, clock: FakeClock, order: list[Any]) -> None:
    """A run left ready past the limit while no worker ran goes before newer runs
    of any priority from the first claim of the worker that starts, not from its
    first maintenance round after that."""
    fake_app.start("note", "low", priority=-5)
    clock.advance("6m")
    for n in range(4):
        fake_app.start("note", f"high-{n}", priority=100)
    with fake_app.worker(concurrency=1, poll_interval="0.05s"):
        deadline = time.monotonic() + 20
        while len(order) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert order == ["low", "high-0", "high-1", "high-2", "high-3"]


def test_a_paused_queue_starts_nothing_until_resumed(fake_app: StackShift, clock: FakeClock,
                                                     order: list[Any]) -> None:
    @fake_app.job("napper")
    def napper(ctx: Any) -> str:
        ctx.step.sleep("nap", "1m")
        order.append("woke")
        return "ok"

    lane = fake_app.queue("held")
    nap = lane.enqueue("napper")
    run_until_idle(fake_app)
    assert fake_app.runs.get(nap.id).status == "waiting"
    info = lane.pause()
    assert info.paused
    first = lane.enqueue("note", "first")
    fake_app.queue("other").enqueue("note", "elsewhere")
    clock.advance("2m")
    run_until_idle(fake_app)
    assert order == ["elsewhere"]  # other queues carry on
    assert fake_app.runs.get(first.id).status == "queued"
    assert fake_app.runs.get(nap.id).status == "queued"  # woken, but not resumed
    # Another client (another process) sees the pause too.
    other = StackShift(fake_app.database_url, clock=clock)
    try:
        assert other.queues.get("held").paused
        assert run_until_idle(other) == 0
        other.queue("held").resume()
    finally:
        other.close()
    run_until_idle(fake_app)
    assert sorted(order) == ["elsewhere", "first", "woke"]
    assert not lane.info().paused


def test_waiting_and_sleeping_runs_hold_no_concurrency(fake_app: StackShift, clock: FakeClock,
                                                       order: list[Any]) -> None:
    @fake_app.job("sleeper")
    def sleeper(ctx: Any) -> str:
        ctx.step.sleep("nap", "1h")
        return "rested"

    single = fake_app.queue("single", concurrency=1)
    sleeping = single.enqueue("sleeper")
    single.enqueue("note", "while-it-sleeps")
    run_until_idle(fake_app)
    assert fake_app.runs.get(sleeping.id).status == "waiting"
    assert order == ["while-it-sleeps"]


@pytest.mark.parametrize("limit", ["queue", "key"])
def test_a_run_that_stops_running_in_any_way_lets_the_next_start_at_once(
        app: StackShift, limit: str) -> None:
    """A run that completes, fails, waits to be retried, sleeps or waits for an event
    frees its place in a queue of concurrency 1 (or under a key of key_concurrency
    1), and the next run starts then, not at the worker's next poll (30 s here)."""
    options: dict[str, Any] = ({"queue": "single"} if limit == "queue"
                               else {"key_concurrency": 1})

    @app.job("ends", max_attempts=2, backoff={"base": "1h"}, **options)
    def ends(ctx: Any) -> str:
        how = ctx.payload
        if how == "fails" or (how == "retries" and ctx.run.attempt == 1):
            raise ValueError(how)
        if how == "sleeps":
            ctx.step.sleep("nap", "1h")
        if how == "waits":
            ctx.step.wait_for_event("go", timeout="1h")
        return how

    if limit == "queue":
        app.queue("single", concurrency=1)
    ways = ["completes", "fails", "retries", "sleeps", "waits", "completes"]
    runs = [app.start("ends", way, max_attempts=1 if way == "fails" else None,
                      concurrency_key="k") for way in ways]
    with app.worker(concurrency=4, poll_interval="30s", maintenance_interval="30s"):
        assert app.runs.wait(runs[-1].id, timeout=10).status == "completed"
    assert [app.runs.get(run.id).status for run in runs] == [
        "completed", "failed", "retrying", "waiting", "waiting", "completed"]


def test_claims_respect_each_limit_one_claim_at_a_time(fake_app: StackShift,
                                                       clock: FakeClock) -> None:
    """What a single claim may take: queue concurrency, key limit, rate window."""
    @fake_app.job("prov", key_concurrency=2)
    def prov(ctx: Any) -> None:
        return None

    store = fake_app._service.store
    rules = fake_app._service.claim_rules()

    def claim(limit: int) -> list[Any]:
        return [c.run for c in store.claim_runs("w", ["prov", "note"], limit, 60, clock.now(),
                                                rules=rules)]

    for n in range(5):
        fake_app.start("prov", n, concurrency_key="k1")
    fake_app.start("prov", "other-key", concurrency_key="k2")
    fake_app.start("prov", "no-key")
    got = claim(10)
    assert sorted(str(r.payload) for r in got) == ["0", "1", "no-key", "other-key"]
    assert claim(10) == []  # k1 is full; the rest has run out
    # A rate-limited queue: 3 per minute, a sliding window.
    paced = fake_app.queue("paced", rate_limit="3/m")
    for n in range(7):
        paced.enqueue("note", n)
    assert len(claim(10)) == 3
    clock.advance("30s")
    assert claim(10) == []
    clock.advance("31s")
    assert [r.payload for r in claim(10)] == [3, 4, 5]
    # Raising the limit takes effect at the next claim.
    paced.configure(rate_limit=None)
    assert [r.payload for r in claim(10)] == [6]


def test_queue_settings_are_stored_for_every_client(fake_app: StackShift,
                                                    clock: FakeClock) -> None:
    q = fake_app.queue("billing", concurrency=4, rate_limit="100/m", max_attempts=6)
    other = StackShift(fake_app.database_url, clock=clock)
    try:
        info = other.queues.get("billing")
        assert (info.concurrency, info.rate_limit, info.max_attempts, info.paused) == (
            4, "100/m", 6, False)
        other.queue("billing", concurrency=2)  # only what is given changes
        info = q.info()
        assert (info.concurrency, info.rate_limit, info.max_attempts) == (2, "100/m", 6)
        q.configure(rate_limit=None)
        assert q.info().rate_limit is None and q.info().concurrency == 2
        assert "billing" in [x.name for x in other.queues.list()]
    finally:
        other.close()
    assert fake_app.queue("timed", rate_limit="1000/h").info().rate_limit == "1000/h"
    assert fake_app.queue("timed", rate_limit="20/30s").info().rate_limit == "20/30s"
    for bad in ({"concurrency": 0}, {"concurrency": "3"}, {"rate_limit": "fast"},
                {"rate_limit": "0/s"}, {"rate_limit": "10/fortnight"}, {"max_attempts": 0}):
        with pytest.raises(ValidationError):
            fake_app.queue("billing", **bad)
    assert q.info().concurrency == 2  # refused settings changed nothing


def test_a_queue_without_runs_or_settings_is_not_listed(fake_app: StackShift) -> None:
    """Resuming a name that is no queue (a typo), or removing a queue's last
    setting, leaves no empty queue behind in the lists (SDK, CLI, dashboard data)."""
    import json

    fake_app.queue("emials").resume()  # meant "emails": nothing was paused
    fake_app.queue("brief").pause()
    fake_app.queue("brief").resume()
    fake_app.queue("legacy", concurrency=3, rate_limit="10/s").configure(
        concurrency=None, rate_limit=None)
    fake_app.queue("busy", concurrency=2).enqueue("note", "kept")
    fake_app.queue("busy").configure(concurrency=None)
    fake_app.queue("defaults", max_attempts=7)
    fake_app.queue("held").pause()
    expected = ["busy", "defaults", "held"]
    assert [q.name for q in fake_app.queues.list()] == expected
    listed = json.loads(invoke(fake_app.database_url or "", "queues", "--json"))
    assert [q["name"] for q in listed] == expected
    service = fake_app._service
    assert sorted(service.queue_settings()) == ["defaults", "held"]
    # Such a name is no queue to a lookup either, and can be configured again.
    with pytest.raises(QueueNotFoundError, match="no queue named 'emials'"):
        fake_app.queue("emials").info()
    # A name close to a queue's is told which queue it may have meant.
    for lookup in (lambda: fake_app.queue("hold").info(),
                   lambda: fake_app.queue("hold").dead_letters(),
                   lambda: fake_app.queue("hold").retry_dead_letters()):
        with pytest.raises(QueueNotFoundError) as refused:
            lookup()
        assert str(refused.value) == ("no queue named 'hold': it holds no runs and has no"
                                      " settings (did you mean 'held'?)")
    assert fake_app.queue("legacy", concurrency=1).info().concurrency == 1
    assert "legacy" in [q.name for q in fake_app.queues.list()]


def test_async_client_configures_queues_without_blocking_its_event_loop(db_url: str) -> None:
    """In a running loop, settings go through ``await queue.configure``; settings
    passed to ``queue()`` there are refused (storing them would block the loop)
    and change nothing. Outside a loop, ``queue(name, ...)`` stores them as the
    sync client does."""
    from stackshift import AsyncStackShift

    app = AsyncStackShift(db_url)
    app.queue("setup", concurrency=5, rate_limit="10/s")  # module-level set-up: no loop

    async def main() -> tuple[Any, Any]:
        lane = app.queue("billing")
        info = await lane.configure(concurrency=4, max_attempts=6)
        with pytest.raises(TypeError, match=r"await app.queue\('billing'\)"
                                            r".configure\(concurrency=2\)"):
            app.queue("billing", concurrency=2)
        with pytest.raises(ValidationError, match="queue name"):
            app.queue("no spaces", concurrency=2)
        with pytest.raises(ValidationError, match="concurrency"):
            await lane.configure(concurrency=0)
        run = await app.queue("billing").enqueue("syncInvoice", {"invoiceId": "in_1"})
        return info, run

    try:
        info, run = asyncio.run(main())
    finally:
        asyncio.run(app.close())
    assert (info.concurrency, info.max_attempts) == (4, 6)
    assert (run.queue, run.max_attempts) == ("billing", 6)
    with StackShift(db_url) as reader:
        assert reader.queues.get("billing").concurrency == 4  # the refused calls changed nothing
        setup = reader.queues.get("setup")
        assert (setup.concurrency, setup.rate_limit) == (5, "10/s")


def test_max_attempts_come_from_start_then_job_then_queue_then_three(
        fake_app: StackShift) -> None:
    @fake_app.job("withOwn", max_attempts=5)
    def with_own(ctx: Any) -> None:
        return None

    fake_app.queue("generous", max_attempts=9)
    assert fake_app.start("withOwn", queue_name="generous", max_attempts=2).max_attempts == 2
    assert fake_app.start("withOwn", queue_name="generous").max_attempts == 5
    assert fake_app.start("unknownJob", queue_name="generous").max_attempts == 9
    assert fake_app.start("unknownJob", queue_name="plain").max_attempts == 3


def test_a_run_finished_late_in_a_second_counts_in_that_seconds_bucket(
        fake_app: StackShift, clock: FakeClock) -> None:
    """PostgreSQL's cast rounds: a run finished in the last half second of the
    newest bucket fell past the chart, and one in another bucket counted in the
    next; SQLite's truncates."""
    fake_app.job("tick", lambda ctx: "ok")

    def finish_at(when: str) -> list[tuple[str, int]]:
        """A run finished at ``when``; the minutes of the last hour with runs."""
        clock.set(when)
        fake_app.queue("ticks").enqueue("tick", {})
        run_until_idle(fake_app)
        series = fake_app._service.queue_throughput(  # type: ignore[union-attr]
            "1h", buckets=60, queue="ticks")["ticks"]
        return [(bucket.start.strftime("%H:%M"), bucket.completed) for bucket in series
                if bucket.completed]

    assert finish_at("2026-12-07T10:00:59.600000Z") == [("10:00", 1)]
    assert finish_at("2026-12-07T10:01:00.100000Z") == [("10:00", 1), ("10:01", 1)]
    assert finish_at("2026-12-07T10:02:59.500000Z") == [
        ("10:00", 1), ("10:01", 1), ("10:02", 1)]


def test_queue_statistics(fake_app: StackShift, clock: FakeClock) -> None:
    from stackshift import NonRetriableError

    @fake_app.job("mixed")
    def mixed(ctx: Any) -> str:
        if ctx.payload["fail"]:
            raise NonRetriableError("no")
        return "ok"

    stats = fake_app.queue("stats")
    for n in range(4):
        stats.enqueue("mixed", {"fail": n == 0})
    run_until_idle(fake_app)
    clock.advance("90s")
    stats.enqueue("mixed", {"fail": False})
    clock.advance("30s")
    info = stats.info(window="15m")
    assert info.counts == {"completed": 3, "failed": 1, "queued": 1}
    assert (info.completed_in_window, info.failed_in_window) == (3, 1)
    assert info.failure_rate == pytest.approx(0.25)
    assert info.throughput == pytest.approx(4 / 15)  # per minute over 15 minutes
    assert info.oldest_queued_age == pytest.approx(30)
    assert info.dead_letters == 1
    clock.advance("20m")
    later = stats.info(window="15m")
    assert later.throughput == 0 and later.failure_rate is None
    assert later.oldest_queued_age == pytest.approx(20 * 60 + 30)


# -- dead letters, on_failure, bulk retry ---------------------------------------------------


@pytest.fixture
def failing(fake_app: StackShift) -> dict[str, Any]:
    handled: list[Any] = []

    @fake_app.job("alertOps", queue="ops")
    def alert_ops(ctx: Any) -> None:
        handled.append(ctx.payload)

    @fake_app.job("charge", queue="billing", max_attempts=2, on_failure="alertOps",
                  backoff={"base": "1s", "jitter": False})
    def charge(ctx: Any) -> str:
        if ctx.payload.get("ok") or fake_app.state.get("fixed"):
            return "charged"
        raise RuntimeError(f"card declined for {ctx.payload['order']}")

    @fake_app.job("awaitPayment", queue="billing", on_failure="alertOps")
    def await_payment(ctx: Any) -> None:
        ctx.step.wait_for_event("paid", timeout="1h")

    return {"handled": handled}


def test_a_run_that_fails_its_last_attempt_is_a_dead_letter_and_starts_on_failure(
        fake_app: StackShift, clock: FakeClock, failing: dict[str, Any]) -> None:
    run = fake_app.start("charge", {"order": 7})
    fake_app.start("charge", {"order": 8, "ok": True})
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).status == "retrying"
    assert failing["handled"] == []
    clock.advance("2s")
    run_until_idle(fake_app)
    failed = fake_app.runs.get(run.id)
    assert failed.status == "failed"
    letters = fake_app.queue("billing").dead_letters()
    assert [r.id for r in letters.items] == [run.id]
    assert fake_app.queue("billing").info().dead_letters == 1
    [payload] = failing["handled"]
    assert payload["run_id"] == run.id
    assert payload["job"] == "charge"
    assert payload["queue"] == "billing"
    assert payload["payload"] == {"order": 7}
    assert payload["error"]["type"] == "RuntimeError"
    assert payload["error"]["message"] == "card declined for 7"
    [handler] = fake_app.runs.list(job="alertOps").items
    assert handler.queue == "ops"  # the handler job's own queue
    assert handler.idempotency_key == f"on_failure:{run.id}:2"
    kinds = [e.kind for e in fake_app.runs.timeline(run.id)]
    assert kinds[-2:] == ["run.failed", "run.failure_handler"]
    # Nothing runs twice: more rounds of work start no second handler.
    clock.advance("1h")
    run_until_idle(fake_app)
    assert len(failing["handled"]) == 1


def test_on_failure_also_follows_wait_timeouts_and_lost_workers(
        fake_app: StackShift, clock: FakeClock, failing: dict[str, Any]) -> None:
    waiting = fake_app.start("awaitPayment", {"order": 9})
    run_until_idle(fake_app)
    clock.advance("2h")
    run_until_idle(fake_app)
    assert fake_app.runs.get(waiting.id).status == "failed"
    assert [p["error"]["type"] for p in failing["handled"]] == ["WaitTimeoutError"]
    # A worker that claims the last attempt and vanishes: the rescuer fails the run.
    lost = fake_app.start("charge", {"order": 10}, max_attempts=1)
    store = fake_app._service.store
    claimed = store.claim_runs("ghost", ["charge"], 1, 5, clock.now(),
                               rules=fake_app._service.claim_rules())
    assert [c.run.id for c in claimed] == [lost.id]
    clock.advance("10s")
    run_until_idle(fake_app)
    assert fake_app.runs.get(lost.id).status == "failed"
    assert [p["error"]["type"] for p in failing["handled"]] == ["WaitTimeoutError", "WorkerLost"]


def test_a_failing_failure_handler_starts_no_handler_of_its_own(
        fake_app: StackShift) -> None:
    @fake_app.job("ping", max_attempts=1, on_failure="pong")
    def ping(ctx: Any) -> None:
        raise RuntimeError("ping failed")

    @fake_app.job("pong", max_attempts=1, on_failure="ping")
    def pong(ctx: Any) -> None:
        raise RuntimeError("pong failed")

    fake_app.start("ping")
    run_until_idle(fake_app)
    runs = fake_app.runs.list().items
    assert sorted((r.job, r.status) for r in runs) == [("ping", "failed"), ("pong", "failed")]


def test_a_worker_warns_of_an_on_failure_job_it_does_not_know(
        app: StackShift, caplog: pytest.LogCaptureFixture) -> None:
    @app.job("typo", max_attempts=1, on_failure="alertOpps")
    def typo(ctx: Any) -> None:
        raise RuntimeError("declined")

    @app.job("fine", max_attempts=1, on_failure="typo")
    def fine(ctx: Any) -> None:
        raise RuntimeError("declined")

    worker = app.worker(concurrency=1)
    with caplog.at_level("WARNING", logger="stackshift"):
        worker.start()
        try:
            run = app.start("typo")
            assert app.runs.wait(run.id, timeout=30).status == "failed"
        finally:
            worker.stop()
    warnings = [r.getMessage() for r in caplog.records if "on_failure" in r.getMessage()]
    assert warnings == [
        "job 'typo' has on_failure='alertOpps', a job this worker does not know: its failure"
        " handler runs are started in queue 'default' and wait there until a worker that"
        " knows 'alertOpps' takes them"]
    [handler] = app.runs.list(job="alertOpps").items
    assert (handler.status, handler.queue) == ("queued", "default")


def test_bulk_retry_by_filter(fake_app: StackShift, clock: FakeClock,
                              failing: dict[str, Any]) -> None:
    @fake_app.job("other", queue="billing", max_attempts=1)
    def other(ctx: Any) -> None:
        raise RuntimeError("nope")

    charges = [fake_app.start("charge", {"order": n}, max_attempts=1).id for n in range(3)]
    others = [fake_app.start("other", n).id for n in range(2)]
    elsewhere = fake_app.start("charge", {"order": 99}, max_attempts=1, queue_name="eu").id
    cancelled = fake_app.start("charge", {"order": 100}, delay="1h")
    fake_app.runs.cancel(cancelled.id)
    run_until_idle(fake_app)
    assert len(failing["handled"]) == 4
    fake_app.state.set("fixed", True)
    retried = fake_app.runs.retry_many(queue="billing", job="charge", status="failed")
    assert sorted(retried) == sorted(charges)
    run_until_idle(fake_app)
    assert [fake_app.runs.get(i).status for i in charges] == ["completed"] * 3
    assert [fake_app.runs.get(i).status for i in others] == ["failed"] * 2
    assert fake_app.runs.get(elsewhere).status == "failed"
    assert fake_app.runs.get(cancelled.id).status == "cancelled"
    # Completed steps and attempts are kept; a retry gets a fresh budget.
    assert len(fake_app.runs.attempts(charges[0])) == 2
    assert sorted(fake_app.queue("billing").retry_dead_letters()) == sorted(others)
    assert [fake_app.runs.get(i).status for i in others] == ["queued"] * 2
    assert fake_app.runs.retry_many(status="cancelled") == [cancelled.id]
    with pytest.raises(ValidationError):
        fake_app.runs.retry_many(status="completed")


# -- CLI and HTTP API ---------------------------------------------------------------------


def invoke(db_url: str, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args), env={"STACKSHIFT_DATABASE_URL": db_url})
    assert result.exit_code == code, (result.exit_code, result.output)
    return result.output


@pytest.mark.parametrize("args", [
    ("queues", "set", "billing", "--concurrency", "\u0663"),
    ("queues", "set", "billing", "--max-attempts", "1_0"),
    ("queues", "set", "billing", "--rate-limit", "\u0665/m"),
    ("queues", "set", "billing", "--rate-limit", "100/\uff13\uff10s"),
    ("queues", "show", "billing", "--window", "1e3"),
    ("queues", "show", "billing", "--window", "\u0661\u0660\u0660\u0660"),
    ("queues", "dead-letters", "billing", "--limit", " 5"),
    ("runs", "list", "--limit", "1_0"),
    ("start", "charge", "--max-attempts", "\uff13"),
    ("start", "charge", "--priority", "1_0"),
])
def test_numbers_typed_to_the_cli_are_ascii_digits_as_the_api_takes_them(
        db_url: str, args: tuple[str, ...]) -> None:
    """``int()`` and ``float()`` would read ``1_0``, ``1e3``, `` 5`` and the
    digits of other scripts; the API and the SDK's strings refuse them, and so
    does the CLI (exit 2), changing nothing."""
    app = StackShift(db_url)
    try:
        app.queue("billing", concurrency=2)
        output = invoke(db_url, *args, code=2)
        assert "digits" in output or "invalid" in output or "must be a number" in output, output
        info = app.queue("billing").info()
        assert (info.concurrency, info.max_attempts, info.rate_limit) == (2, None, None)
        assert app.runs.list().items == []
    finally:
        app.close()


def test_queues_command(db_url: str) -> None:
    import json

    app = StackShift(db_url)
    try:
        @app.job("flaky", max_attempts=1)
        def flaky(ctx: Any) -> None:
            if not app.state.get("fixed"):
                raise RuntimeError("flaky")

        for _ in range(2):
            app.queue("mail").enqueue("flaky")
        run_until_idle(app)
    finally:
        app.close()
    out = json.loads(invoke(db_url, "queues", "set", "mail", "--concurrency", "3",
                            "--rate-limit", "100/m", "--max-attempts", "4", "--json"))
    assert (out["concurrency"], out["rate_limit"], out["max_attempts"]) == (3, "100/m", 4)
    listed = invoke(db_url, "queues")
    assert "mail" in listed and "3 at once, 100/m" in listed
    assert json.loads(invoke(db_url, "queues", "pause", "mail", "--json"))["paused"] is True
    assert "paused" in invoke(db_url, "queues", "show", "mail")
    assert json.loads(invoke(db_url, "queues", "resume", "mail", "--json"))["paused"] is False
    out = json.loads(invoke(db_url, "queues", "set", "mail", "--rate-limit", "none", "--json"))
    assert out["rate_limit"] is None and out["concurrency"] == 3
    invoke(db_url, "queues", "set", "mail", "--rate-limit", "lots", code=2)
    invoke(db_url, "queues", "set", "mail", code=2)
    letters = json.loads(invoke(db_url, "queues", "dead-letters", "mail", "--json"))
    assert len(letters["items"]) == 2
    retried = json.loads(invoke(db_url, "queues", "retry", "mail", "--json"))
    assert retried["count"] == 2
    assert json.loads(invoke(db_url, "queues", "show", "mail", "--json"))["counts"] == {
        "queued": 2}
    # QUEUED counts the runs due now, not those whose start is to come (`show` has them).
    with StackShift(db_url) as later:
        later.queue("later").enqueue("flaky")
        later.queue("later").enqueue("flaky", delay="1h")
    [row] = [line for line in invoke(db_url, "queues").splitlines()
             if line.startswith("later ")]
    assert row.split()[:5] == ["later", "active", "0", "-", "1"], row
    assert "scheduled" in invoke(db_url, "queues", "show", "later")

    # A queue nothing has used yet (a mistyped name?) is set all the same, with a warning.
    env = {"STACKSHIFT_DATABASE_URL": db_url}
    typo = CliRunner().invoke(cli, ["queues", "set", "maill", "--concurrency", "2", "--json"],
                              env=env)
    assert typo.exit_code == 0, typo.output
    assert typo.stderr == ("warning: no run, setting or registered job has used queue 'maill' "
                           "yet (did you mean 'mail'?); its settings are saved for runs to "
                           "come\n")
    assert json.loads(typo.stdout)["concurrency"] == 2
    again = CliRunner().invoke(cli, ["queues", "set", "maill", "--concurrency", "none"], env=env)
    assert again.exit_code == 0 and again.stderr == "", again.output  # it has a setting now
    paused = CliRunner().invoke(cli, ["queues", "pause", "nightly"], env=env)
    assert paused.exit_code == 0 and "'nightly' yet; its settings are saved" in paused.stderr
    assert json.loads(invoke(db_url, "queues", "show", "nightly", "--json"))["paused"] is True


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real ``stackshift server`` process on the test's database: (url, api key)."""
    import socket
    import subprocess
    import sys

    from stackshift.clock import SystemClock
    from stackshift.jobs import JobRegistry
    from stackshift.service import Service
    from stackshift.settings import Settings
    from stackshift.store import open_store

    store = open_store(db_url)
    store.migrate()
    service = Service(store, SystemClock(), Settings(), JobRegistry())
    _, key = service.create_api_key("flow-tests")
    service.close()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "stackshift.server", "--database-url",
                             db_url, "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (
            (tmp_path / "server.log").read_text())
        time.sleep(0.05)
    try:
        yield url, key
    finally:
        proc.terminate()
        proc.wait(10)


def test_queues_over_http_and_the_remote_client(db_url: str,
                                                server: tuple[str, str]) -> None:
    url, key = server
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    engine = StackShift(db_url)
    remote = StackShift(api_key=key, base_url=url)
    try:
        @engine.job("flaky", max_attempts=1)
        def flaky(ctx: Any) -> None:
            raise RuntimeError("flaky")

        body = http.patch("/v1/queues/api-q", json={"concurrency": 2, "rateLimit": "50/m"})
        assert body.status_code == 200, body.text
        assert (body.json()["concurrency"], body.json()["rateLimit"]) == (2, "50/m")
        assert http.patch("/v1/queues/api-q", json={"rateLimit": None}).json()[
            "rateLimit"] is None
        assert http.patch("/v1/queues/api-q", json={"concurrency": 0}).status_code == 422
        assert http.patch("/v1/queues/api-q", json={"rateLimit": "x"}).status_code == 422
        assert http.post("/v1/queues/api-q/pause").json()["paused"] is True
        assert engine.queues.get("api-q").paused  # stored: every process sees it
        assert http.post("/v1/queues/api-q/resume").json()["paused"] is False
        # The remote client does not know "flaky": the queue's default applies.
        assert http.patch("/v1/queues/api-q", json={"maxAttempts": 1}).status_code == 200
        for _ in range(3):
            assert remote.queue("api-q").enqueue("flaky").max_attempts == 1
        run_until_idle(engine)
        listed = http.get("/v1/queues").json()["items"]
        [mine] = [q for q in listed if q["name"] == "api-q"]
        assert mine["counts"] == {"failed": 3} and mine["failureRate"] == 1.0
        letters = http.get("/v1/queues/api-q/dead-letters", params={"limit": 2}).json()
        assert len(letters["items"]) == 2 and letters["nextCursor"]
        assert len(remote.queue("api-q").dead_letters().items) == 3
        info = remote.queue("api-q", max_attempts=4).info()
        assert (info.concurrency, info.max_attempts, info.counts) == (2, 4, {"failed": 3})
        retried = http.post("/v1/runs/retry-many", json={"queueName": "api-q", "limit": 2})
        assert retried.json()["count"] == 2
        assert len(remote.runs.retry_many(queue="api-q")) == 1
        assert http.post("/v1/runs/retry-many",
                         json={"status": "completed"}).status_code == 422
    finally:
        http.close()
        remote.close()
        engine.close()


# -- one answer from every shell: SDK, CLI, HTTP API and dashboard --------------------------


def dashboard_session(url: str, key: str) -> httpx.Client:
    """A browser's session on the server's dashboard, logged in with ``key``."""
    import re

    browser = httpx.Client(base_url=url, timeout=30)
    login = browser.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
    assert csrf, login.text
    assert browser.post("/login", data={"csrf": csrf.group(1), "api_key": key}
                        ).status_code == 303
    return browser


#: A run id for a dead-letter cursor: a page after it is still a page of a queue.
LATER_RUN = "run_01a24f5aeb015e0d2b6a0d6212"


def test_a_queue_that_holds_no_runs_and_has_no_settings_is_unknown_in_every_shell(
        db_url: str, server: tuple[str, str]) -> None:
    """The lists leave such a name out; a lookup of it (a typo) is refused alike:
    QueueNotFoundError in the SDK (embedded and remote), exit code 3 from the CLI,
    404 ``queue_not_found`` from the API and 404 from the dashboard. Configuring
    it is not refused, and makes it a queue everywhere."""
    url, key = server
    engine = StackShift(db_url)
    remote = StackShift(api_key=key, base_url=url)
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    browser = dashboard_session(url, key)

    def everywhere(name: str) -> dict[str, object]:
        found: dict[str, object] = {}
        for kind, client in (("sdk", engine), ("remote", remote)):
            for what, lookup in (("info", lambda c: c.queue(name).info()),
                                 ("get", lambda c: c.queues.get(name)),
                                 ("dead letters", lambda c: c.queue(name).dead_letters()),
                                 ("dead letters after", lambda c: c.queue(name).dead_letters(
                                     cursor=f"1796627688.5:{LATER_RUN}")),
                                 ("retry dead letters",
                                  lambda c: c.queue(name).retry_dead_letters())):
                try:
                    lookup(client)
                    found[f"{kind} {what}"] = "found"
                except QueueNotFoundError as exc:
                    found[f"{kind} {what}"] = str(exc)
        for command in ("show", "dead-letters", "retry"):
            result = CliRunner().invoke(cli, ["queues", command, name],
                                        env={"STACKSHIFT_DATABASE_URL": db_url})
            found[f"cli {command}"] = (result.exit_code, result.output.strip())
        for path in (f"/v1/queues/{name}", f"/v1/queues/{name}/dead-letters",
                     f"/v1/queues/{name}/dead-letters?cursor=1796627688.5:{LATER_RUN}"):
            answer = http.get(path)
            found[path] = (answer.status_code, answer.json().get("error", {}).get("code"))
        found["dashboard"] = browser.get(f"/queues/{name}").status_code
        return found

    try:
        message = "no queue named 'emials': it holds no runs and has no settings"
        unknown = everywhere("emials")
        assert unknown == {
            **{f"{kind} {what}": message for kind in ("sdk", "remote")
               for what in ("info", "get", "dead letters", "dead letters after",
                            "retry dead letters")},
            "cli show": (3, f"error: {message}"),
            "cli dead-letters": (3, f"error: {message}"),
            "cli retry": (3, f"error: {message}"),
            "/v1/queues/emials": (404, "queue_not_found"),
            "/v1/queues/emials/dead-letters": (404, "queue_not_found"),
            f"/v1/queues/emials/dead-letters?cursor=1796627688.5:{LATER_RUN}":
                (404, "queue_not_found"),
            "dashboard": 404,
        }
        assert "emials" not in [q.name for q in engine.queues.list()]
        # Resuming the name (nothing to resume) answers, and leaves no queue behind.
        assert http.post("/v1/queues/emials/resume").json()["counts"] == {}
        assert remote.queue("emials").resume().paused is False
        assert everywhere("emials") == unknown
        # Configured, the same name is a queue in every shell, before its first run.
        assert engine.queue("emials", concurrency=2).info().concurrency == 2
        known = everywhere("emials")
        assert {k: v for k, v in known.items() if k.startswith(("sdk", "remote"))} == {
            f"{kind} {what}": "found" for kind in ("sdk", "remote")
            for what in ("info", "get", "dead letters", "dead letters after",
                         "retry dead letters")}
        assert known["cli show"][0] == 0 and known["cli dead-letters"] == (0, "No dead letters.")
        assert known["cli retry"] == (0, "Retried 0 failed runs of queue emials.")
        assert known["/v1/queues/emials"] == known["/v1/queues/emials/dead-letters"] == (
            200, None)
        assert known["dashboard"] == 200
        # Its last setting removed, with no runs, it is no queue again.
        http.patch("/v1/queues/emials", json={"concurrency": None}).raise_for_status()
        assert everywhere("emials") == unknown
    finally:
        browser.close()
        http.close()
        remote.close()
        engine.close()


def test_key_concurrency_has_one_limit_and_one_message_in_the_sdk_and_both_apis(
        app: StackShift, server: tuple[str, str]) -> None:
    """100,000 at most, refused in the same words by ``@job(key_concurrency=...)``,
    the worker API's claim and the push API's endpoint registration, which write
    nothing; 100,000 itself is taken by all three."""
    url, key = server
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    endpoint = "http://127.0.0.1:9/key-limits"
    try:
        def refusals(limit: Any) -> dict[str, object]:
            found: dict[str, object] = {}
            try:
                app.job("keyed", key_concurrency=limit)(lambda ctx: None)
                found["sdk"] = "taken"
            except ValidationError as exc:
                found["sdk"] = str(exc)
            for name, path, body in (
                    ("claim", "/v1/worker/claim", {
                        "workerId": "wkr_keys", "jobs": ["keyed"], "limit": 1,
                        "leaseSeconds": 60, "keyLimits": {"keyed": limit}}),
                    ("push", "/v1/endpoints", {
                        "url": endpoint, "jobs": ["keyed"], "keyLimits": {"keyed": limit}})):
                answer = http.post(path, json=body)
                found[name] = "taken" if answer.status_code in (200, 201) else (
                    answer.status_code, answer.json()["error"]["message"])
            return found

        for bad in (100_001, 2**31 - 1, 0):
            said = f"key_concurrency must be an integer from 1 to 100000, got {bad}"
            assert refusals(bad) == {"sdk": said,
                                     "claim": (422, f"keyLimits.keyed: {said}"),
                                     "push": (422, f"keyLimits.keyed: {said}")}
        assert http.get("/v1/endpoints").json()["items"] == []  # nothing registered
        assert refusals(100_000) == {"sdk": "taken", "claim": "taken", "push": "taken"}
    finally:
        http.close()


def test_dead_letters_are_listed_by_when_they_failed_in_every_shell(
        db_url: str, server: tuple[str, str]) -> None:
    """Newest failure first (then newest run), across pages: a run started early
    that failed last comes first, in the SDK (embedded and remote), the CLI, the
    API and on the dashboard's queue page."""
    import json
    import re

    from stackshift import NonRetriableError

    url, key = server
    # An hour ahead of the server's clock: its maintenance never takes a lease of
    # these runs for expired (nor a delayed start for due) while they run here.
    clock = FakeClock(time.time() + 3600)
    past = StackShift(db_url, clock=clock)
    remote = StackShift(api_key=key, base_url=url)
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    browser = dashboard_session(url, key)
    try:
        @past.job("doomed")
        def doomed(ctx: Any) -> None:
            raise NonRetriableError(f"no {ctx.payload}")

        mail = past.queue("mail")
        # Started in this order; they fail 3, then 1 and 4 together, then 2.
        runs = [mail.enqueue("doomed", n, delay=delay).id
                for n, delay in ((1, "2m"), (2, "3m"), (3, "1m"), (4, "2m"))]
        for _ in range(3):
            clock.advance("1m")
            run_until_idle(past)
        expected = [runs[1], runs[3], runs[0], runs[2]]
        assert expected != sorted(runs, reverse=True)  # not the order they were started in

        def pages(read: Any) -> list[str]:
            ids: list[str] = []
            cursor = None
            while True:
                items, cursor = read(cursor)
                ids += items
                if cursor is None:
                    return ids

        def sdk(client: StackShift) -> Any:
            def read(cursor: str | None) -> tuple[list[str], str | None]:
                page = client.queue("mail").dead_letters(limit=2, cursor=cursor)
                return [r.id for r in page.items], page.next_cursor
            return read

        def cli_page(cursor: str | None) -> tuple[list[str], str | None]:
            found = json.loads(invoke(db_url, "queues", "dead-letters", "mail", "--limit", "3",
                                      "--json", *(["--cursor", cursor] if cursor else [])))
            return [r["id"] for r in found["items"]], found["next_cursor"]

        def api_page(cursor: str | None) -> tuple[list[str], str | None]:
            found = http.get("/v1/queues/mail/dead-letters",
                             params={"limit": 1, **({"cursor": cursor} if cursor else {})})
            assert found.status_code == 200, found.text
            return [r["id"] for r in found.json()["items"]], found.json()["nextCursor"]

        assert pages(sdk(past)) == expected
        assert pages(sdk(remote)) == expected
        assert pages(cli_page) == expected
        assert pages(api_page) == expected
        shown = re.findall(r'<tr data-run-id="(run_[0-9a-f]+)"', browser.get("/queues/mail").text)
        assert shown == expected
        # A page cursor a list did not return is refused, as before.
        with pytest.raises(ValidationError, match="not one a list of dead letters returned"):
            past.queue("mail").dead_letters(cursor=runs[0])
        assert http.get("/v1/queues/mail/dead-letters",
                        params={"cursor": "soon:" + runs[0]}).status_code == 422
    finally:
        browser.close()
        http.close()
        remote.close()
        past.close()
