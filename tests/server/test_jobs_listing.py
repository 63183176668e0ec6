"""Which jobs some worker has registered, and how many live workers serve each
job and take each queue: ``list_jobs()`` and the queues' numbers of an embedded
and a remote client alike, ``GET /v1/jobs``, the dashboard's Jobs page, ``stackshift
queues``, and the warnings of ``stackshift start`` for a job no worker has
registered (a mistyped name) or no running worker takes, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from serverproc import STACKSHIFT

from stackshift import JobInfo, StackShift
from stackshift.dashboard.pages import jobs_page
from stackshift.testing import FakeClock


def _noop(ctx: Any) -> None:
    pass


def test_list_jobs_gives_the_registered_jobs_with_their_live_workers(
        client: StackShift, engine: StackShift, unique: Callable[[str], str]) -> None:
    receipt, export, typo = unique("sendReceipt"), unique("nightlyExport"), unique("sendRecipt")
    emails = unique("emails")
    engine.job(receipt, _noop, queue=emails, max_attempts=5)
    engine.job(export, _noop)

    def ours() -> dict[str, JobInfo]:
        return {j.name: j for j in client.list_jobs() if j.name in (receipt, export, typo)}

    client.start(typo)  # a run alone does not make a job known to any worker
    assert ours() == {}
    before = datetime.now(UTC)
    with engine.worker(concurrency=1):
        serving = ours()
        # The embedded and the remote client answer alike.
        assert [j for j in engine.list_jobs() if j.name in serving] == list(serving.values())
    assert sorted(serving) == [export, receipt]
    assert serving[receipt] == JobInfo(receipt, emails, 5, 1, serving[receipt].registered_at)
    # A job that names no queue is on its workers' default queue.
    assert serving[export] == JobInfo(export, "default", None, 1, serving[export].registered_at)
    for job in serving.values():
        assert before - timedelta(seconds=5) <= job.registered_at <= datetime.now(UTC)
        assert job.registered_at.tzinfo is not None
    # Once the worker has stopped, its jobs are still known, with no live worker.
    stopped = ours()
    assert {name: j.live_workers for name, j in stopped.items()} == {export: 0, receipt: 0}
    assert stopped[receipt].registered_at == serving[receipt].registered_at
    assert client.start(typo).status == "queued"  # still started, and still not listed
    assert typo not in {j.name for j in client.list_jobs()}

    # A worker serves a job when it also takes the job's queue.
    with engine.worker(concurrency=1, queues=[emails]):
        assert {name: j.live_workers for name, j in ours().items()} == {export: 0, receipt: 1}
    with engine.worker(concurrency=1, queues=[unique("elsewhere")]):
        assert {name: j.live_workers for name, j in ours().items()} == {export: 0, receipt: 0}
    with engine.worker(concurrency=1, queues=["default", emails]):
        assert {name: j.live_workers for name, j in ours().items()} == {export: 1, receipt: 1}


def test_a_queue_counts_the_live_workers_that_take_it(
        client: StackShift, engine: StackShift, unique: Callable[[str], str]) -> None:
    emails, reports = unique("emails"), unique("reports")
    engine.job(unique("sendReceipt"), _noop, queue=emails)
    client.queue(emails, concurrency=3)  # listed before its first run, as configured
    client.queue(reports, concurrency=3)

    def counted() -> dict[str, int | None]:
        listed = {q.name: q.live_workers for q in client.queues.list()
                  if q.name in (emails, reports)}
        # One queue read alone counts as the list does.
        assert listed == {name: client.queues.get(name).live_workers for name in listed}
        return listed

    assert counted() == {emails: 0, reports: 0}
    with engine.worker(concurrency=1, queues=[emails]):
        assert counted() == {emails: 1, reports: 0}
        # What a change of settings answers is counted too.
        assert client.queue(reports).pause().live_workers == 0
        assert client.queue(emails).resume().live_workers == 1
        with engine.worker(concurrency=1):  # no queues: it takes every queue
            assert counted() == {emails: 2, reports: 1}
    assert counted() == {emails: 0, reports: 0}


def test_get_v1_jobs_lists_jobs_in_camel_case(
        http: httpx.Client, engine: StackShift, unique: Callable[[str], str]) -> None:
    name, queue = unique("resizeImage"), unique("images")
    engine.job(name, _noop, queue=queue, max_attempts=2)
    with engine.worker(concurrency=1):
        served = http.get("/v1/jobs")
    assert served.status_code == 200, served.text
    items = served.json()["items"]
    assert [i["name"] for i in items] == sorted(i["name"] for i in items)
    item = next(i for i in items if i["name"] == name)
    assert set(item) == {"name", "queueName", "maxAttempts", "liveWorkers", "registeredAt"}
    assert (item["queueName"], item["maxAttempts"], item["liveWorkers"]) == (queue, 2, 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", item["registeredAt"])


def test_a_stale_worker_serves_no_job_and_a_stopped_one_leaves_its_jobs_on_the_jobs_page(
        fake_app: StackShift, clock: FakeClock) -> None:
    """A worker whose heartbeat is over 60 s old (its process was killed) counts as
    serving nothing; the Jobs page still lists the jobs of workers that have gone."""
    fake_app.job("sendReceipt", _noop)
    service = fake_app._service
    service.publish_jobs()  # what a worker does when it starts, then it registers:
    service.store.register_worker("w1", "host-a", 4242, ["sendReceipt"], None, 4, clock.now())
    assert [j.live_workers for j in fake_app.list_jobs()] == [1]
    fake_app.queue("default", concurrency=2)
    assert fake_app.queues.get("default").live_workers == 1
    clock.advance("61s")
    assert [(j.name, j.live_workers) for j in fake_app.list_jobs()] == [("sendReceipt", 0)]
    assert fake_app.queues.get("default").live_workers == 0

    service.store.unregister_worker("w1")
    page = jobs_page(service, {}, clock.now())
    assert [(j["name"], j["workers"], j["total"]) for j in page["jobs"]] == [
        ("sendReceipt", 0, 0)]
    assert page["workers"] == []

    # A live worker that knows the job but takes other queues leaves its due runs
    # stranded, as the page says; one that takes the job's queue serves them.
    fake_app.start("sendReceipt")
    service.store.register_worker("w2", "host-b", 4343, ["sendReceipt"], ["reports"], 4,
                                  clock.now())
    page = jobs_page(service, {}, clock.now())
    assert [(j["name"], j["workers"], j["stranded"]) for j in page["jobs"]] == [
        ("sendReceipt", 0, 1)]
    assert page["live_count"] == 1
    service.store.register_worker("w3", "host-c", 4444, ["sendReceipt"], ["default"], 4,
                                  clock.now())
    page = jobs_page(service, {}, clock.now())
    assert [(j["name"], j["workers"], j["stranded"]) for j in page["jobs"]] == [
        ("sendReceipt", 1, 0)]


def _start(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STACKSHIFT, "start", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_start_warns_of_a_job_no_worker_has_registered_or_runs_and_still_starts_it(
        cli_env: dict[str, str], db_url: str) -> None:
    app = StackShift(db_url)
    try:
        app.job("sendReceipt", _noop)
        app.job("nightlyExport", _noop)
        with app.worker(concurrency=1):
            pass  # registers the jobs, as any worker with their code does

        typo = _start(cli_env, "sendRecipt", '{"orderId": "o_1"}', "--json")
        assert typo.returncode == 0, typo.stderr
        assert typo.stderr == (
            "warning: no worker has registered job 'sendRecipt' (did you mean "
            "'sendReceipt'?); the run waits queued until one does\n")
        run = json.loads(typo.stdout)  # stdout is the run's JSON alone
        assert (run["job"], run["status"]) == ("sendRecipt", "queued")
        assert app.runs.get(run["id"]).payload == {"orderId": "o_1"}

        later = _start(cli_env, "archiveOrders", "--delay", "1h")
        assert later.returncode == 0, later.stderr
        assert later.stderr == ("warning: no worker has registered job 'archiveOrders'; "
                                "the run waits until one does\n")
        assert later.stdout.startswith("Started run ")

        # A job workers have registered, none of which runs now: the run waits too.
        idle = _start(cli_env, "sendReceipt", "--json")
        assert idle.returncode == 0, idle.stderr
        assert idle.stderr == ("warning: no worker serving job 'sendReceipt' on queue "
                               "'default' is running now; the run waits queued until one "
                               "starts\n")
        assert json.loads(idle.stdout)["status"] == "queued"

        # A running worker that knows the job but takes other queues serves none of it
        # on the job's queue; on a queue chosen with --queue the count says nothing.
        with app.worker(concurrency=1, queues=["elsewhere"]):
            aside = _start(cli_env, "sendReceipt", "--json")
            chosen = _start(cli_env, "nightlyExport", "--queue", "elsewhere", "--json")
        assert aside.returncode == 0, aside.stderr
        assert aside.stderr == idle.stderr
        assert chosen.returncode == 0 and chosen.stderr == ""
        # A queue chosen with --queue that no running worker takes.
        nowhere = _start(cli_env, "nightlyExport", "--queue", "nowhere", "--json")
        assert nowhere.returncode == 0, nowhere.stderr
        assert nowhere.stderr == ("warning: no worker taking queue 'nowhere' is running "
                                  "now; the run waits queued until one starts\n")
        shown = subprocess.run([*STACKSHIFT, "queues", "show", "nowhere"], capture_output=True,
                               text=True, timeout=60, env=cli_env)
        assert shown.returncode == 0, shown.stderr
        assert re.search(r"^live workers +0 \(its due runs wait until a worker that takes "
                         r"this queue starts\)$", shown.stdout, re.MULTILINE), shown.stdout
        with app.worker(concurrency=1, queues=["default"]):  # taking it
            known = _start(cli_env, "sendReceipt", "--json", "--delay", "1h")
        assert known.returncode == 0 and known.stderr == ""
        assert json.loads(known.stdout)["status"] == "scheduled"
        # A key's earlier run that finished waits for no worker: no warning.
        with app.worker(concurrency=1):
            done = app.start("sendReceipt", idempotency_key="receipt:o_9")
            assert app.runs.wait(done.id, timeout="30s").status == "completed"
        again = _start(cli_env, "sendReceipt", "--idempotency-key", "receipt:o_9")
        assert again.returncode == 0 and again.stderr == "", again.stderr
        assert "already exists" in again.stdout
        assert len(app.runs.list(limit=10).items) == 8
    finally:
        app.close()


def test_creating_a_schedule_for_a_job_no_worker_has_registered_warns_and_creates_it(
        cli_env: dict[str, str], db_url: str) -> None:
    app = StackShift(db_url)
    try:
        app.job("sendReceipt", _noop)
        with app.worker(concurrency=1):
            pass  # registers the job

        def create(job: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*STACKSHIFT, "schedules", "create", job, "--cron", "@daily",
                                   "--json"], capture_output=True, text=True, timeout=60,
                                  env=cli_env)

        typo = create("sendReciept")
        assert typo.returncode == 0, typo.stderr
        assert typo.stderr == ("warning: no worker has registered job 'sendReciept' (did you "
                               "mean 'sendReceipt'?); its runs wait until one does\n")
        known = create("sendReceipt")
        assert known.returncode == 0 and known.stderr == "", known.stderr
        assert sorted(s.job for s in app.schedules.list()) == ["sendReceipt", "sendReciept"]
        assert json.loads(typo.stdout)["job"] == "sendReciept"  # stdout is the JSON alone
    finally:
        app.close()
