"""What an operator does in the dashboard, in a real browser, against a real worker."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from dashboard_harness import Dashboard, pixel, screenshot, serve
from dashboard_jobs import HOSTILE, register_jobs
from playwright.sync_api import Locator, Page, expect

from stackshift import StackShift
from stackshift.dashboard.formatting import day_time
from stackshift.testing import FakeClock, run_until_idle


def _no_reload_marker(page: Page) -> None:
    """Tag the loaded document: a reload or navigation would drop the tag."""
    page.evaluate("window.__sameDocument = true")


def _still_same_document(page: Page) -> bool:
    return bool(page.evaluate("window.__sameDocument === true"))


def test_runs_list_filters_searches_and_pages(stack: Dashboard, page: Page) -> None:
    app = stack.app
    done = [app.start("resize-image", {"image": i}) for i in range(55)]
    waiting = app.start("send-email", {"user": "ada"}, idempotency_key="welcome:ada")
    failed = app.start("sync-invoice", {"invoice": "in_1"})
    stack.wait_status(waiting.id, "waiting")
    stack.wait_status(failed.id, "failed")
    stack.wait_for(lambda: all(app.runs.get(r.id).status == "completed" for r in done))

    page.goto(stack.url)
    expect(page.locator(".tab[data-status=completed] .count")).to_have_text("55")
    expect(page.locator(".tab[data-status=failed] .count")).to_have_text("1")
    expect(page.locator(".tab[data-status=waiting] .count")).to_have_text("1")
    expect(page.locator("tbody tr[data-run-id]")).to_have_count(50)

    # Cursor pagination: the older page holds the rest.
    page.get_by_role("link", name="Older →").click()
    expect(page.locator("tbody tr[data-run-id]")).to_have_count(7)
    page.get_by_role("link", name="← Newest").click()
    expect(page.locator("tbody tr[data-run-id]")).to_have_count(50)

    # Filter by status (tab), then by job and queue (selects).
    page.locator(".tab[data-status=failed]").click()
    expect(page.locator("tbody tr[data-run-id]")).to_have_count(1)
    expect(page.locator(f"tr[data-run-id='{failed.id}']")).to_contain_text("TimeoutError")
    page.goto(stack.url)
    page.select_option("select[name=job]", "send-email")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("tbody tr[data-run-id]")).to_have_count(1)
    expect(page.locator(f"tr[data-run-id='{waiting.id}']")).to_contain_text("email.verified")
    # The tabs count the runs of the job chosen, and lead to those of each status.
    expect(page.locator("#runs-sub")).to_have_text("1 run matches the job, queue and time filters")
    expect(page.locator(".tab[data-status=waiting] .count")).to_have_text("1")
    expect(page.locator(".tab[data-status=completed] .count")).to_have_text("0")
    expect(page.locator(".tab:not([data-status]) .count")).to_have_text("1")
    page.goto(stack.at("/runs?queue=media&to=2000-01-01T00:00"))
    expect(page.locator(".tab[data-status=completed] .count")).to_have_text("0")
    # A custom range the wrong way round matches nothing, and says why.
    page.goto(stack.at("/runs?created=custom&from=2030-01-07T00:00&to=2030-01-01T00:00"))
    expect(page.locator(".flash-error")).to_have_text(
        "The custom range is empty: From is not before To, so no run was created in it.")
    expect(page.locator("td.empty")).to_have_text("No runs match these filters.")
    # So does a job name no run can have: no rows, and no counts of other runs.
    page.goto(stack.at("/runs?job=bad%20name"))
    expect(page.locator(".flash-error")).to_contain_text("job")
    expect(page.locator("td.empty")).to_have_text("No runs match these filters.")
    expect(page.locator("#runs-sub")).to_have_text("0 runs match the job, queue and time filters")
    expect(page.locator(".tab:not([data-status]) .count")).to_have_text("0")
    page.goto(stack.url)
    expect(page.locator("#runs-sub")).to_have_text("57 runs stored")
    page.select_option("select[name=queue]", "media")
    page.select_option("select[name=created]", "1h")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("tbody tr[data-run-id]")).to_have_count(50)
    page.goto(stack.at("/runs?queue=media&to=2000-01-01T00:00"))
    expect(page.locator("td.empty")).to_have_text("No runs match these filters.")

    # One search box: run id, idempotency key, correlation key.
    for term, expected in ((failed.id, failed.id), ("welcome:ada", waiting.id),
                           ("user:ada", waiting.id)):
        page.goto(stack.url)
        page.fill("input[name=q]", term)
        page.keyboard.press("Enter")
        expect(page.locator("tbody tr[data-run-id]")).to_have_count(1)
        expect(page.locator("tbody tr[data-run-id]")).to_have_attribute("data-run-id", expected)
    page.fill("input[name=q]", "no-such-thing")
    page.keyboard.press("Enter")
    expect(page.locator("td.empty")).to_be_visible()

    # A box cleared (sent empty, or blank) is no filter: every run, and no error.
    page.fill("input[name=q]", "")
    page.keyboard.press("Enter")
    expect(page.locator("tbody tr[data-run-id]")).to_have_count(50)
    page.goto(stack.at("/runs?status=&job=&queue=&q=%20&created=&from=&to="))
    expect(page.locator("tbody tr[data-run-id]")).to_have_count(50)
    expect(page.locator(".flash-error")).to_have_count(0)


def test_the_current_page_and_filter_are_named_and_keyboard_focus_shows(
        stack: Dashboard, page: Page) -> None:
    """A screen reader hears which page and which status filter are current, and a
    field reached with Tab shows a focus outline (the border alone is too faint)."""
    page.goto(f"{stack.url}/?status=failed")
    expect(page.locator("a.nav-item[aria-current=page]")).to_have_count(1)
    expect(page.locator("a.nav-item[aria-current=page]")).to_contain_text("Runs")
    expect(page.locator(".tab[aria-current=true]")).to_have_count(1)
    expect(page.locator(".tab[aria-current=true]")).to_have_attribute("data-status", "failed")
    page.goto(f"{stack.url}/queues")
    expect(page.locator("a.nav-item[aria-current=page]")).to_contain_text("Queues")
    page.goto(stack.url)
    search = page.locator("input[type=search]").first
    for _ in range(40):  # Tab through the page until the search field has focus
        page.keyboard.press("Tab")
        if search.evaluate("e => e === document.activeElement"):
            break
    else:
        raise AssertionError("Tab never reached the search field")
    style = search.evaluate("e => getComputedStyle(e).outlineStyle + ' ' + getComputedStyle(e)"
                            ".outlineColor")
    assert style == "solid rgb(21, 112, 239)", style


def test_keys_with_surrounding_spaces_are_searched_as_typed(stack: Dashboard,
                                                            page: Page) -> None:
    """A correlation key may begin or end with spaces: the runs search and the
    events filter look for it as typed, not for the key without them (another
    run's, another event's). A run id pasted with a space is still found."""
    app = stack.app
    spaced = app.start("send-email", {"user": "ada "})  # waits with key "user:ada "
    plain = app.start("send-email", {"user": "ada"})
    stack.wait_status(spaced.id, "waiting")
    stack.wait_status(plain.id, "waiting")

    rows = page.locator("tbody tr[data-run-id]")
    # Listed, the two keys read apart: the one with a space at its end in quotes.
    page.goto(stack.url)
    expect(page.locator(f"tr[data-run-id='{spaced.id}']")).to_contain_text(
        'waits for email.verified · "user:ada "')
    expect(page.locator(f"tr[data-run-id='{plain.id}']")).to_contain_text(
        "waits for email.verified · user:ada")
    page.goto(stack.at(f"/runs/{spaced.id}"))
    expect(page.locator("main h2", has_text="Waiting for the event")).to_have_text(
        'Waiting for the event email.verified with key "user:ada "')
    for term, expected in (("user:ada ", spaced.id), ("user:ada", plain.id),
                           (f" {plain.id} ", plain.id)):
        page.goto(stack.url)
        page.fill("input[name=q]", term)
        page.keyboard.press("Enter")
        expect(rows).to_have_count(1)
        expect(rows).to_have_attribute("data-run-id", expected)

    first = app.events.send("email.verified", {"n": 1}, correlation_key="user:bo ")
    app.events.send("email.verified", {"n": 2}, correlation_key="user:bo")
    page.goto(stack.at("/events"))
    page.fill("input[name=key]", "user:bo ")
    page.keyboard.press("Enter")
    events = page.locator("#events-table tr[data-event-id]")
    expect(events).to_have_count(1)
    expect(events).to_have_attribute("data-event-id", first.id)
    expect(events.locator("a.chip")).to_have_text('"user:bo "')
    # The key's chip leads to the events of that very key.
    page.goto(stack.at("/events"))
    page.locator(f"tr[data-event-id='{first.id}'] a.chip").click()
    expect(page).to_have_url(re.compile(r"key=user%3Abo(\+|%20)$"))
    expect(events).to_have_count(1)
    expect(events).to_have_attribute("data-event-id", first.id)


def test_failed_run_shows_error_attempts_logs_waterfall_and_retries_live(
    stack: Dashboard, page: Page
) -> None:
    run = stack.app.start("import-feed", {"feed": "prices.csv"})
    stack.wait_status(run.id, "failed")

    page.goto(stack.at("/runs?status=failed"))
    page.locator(f"a.run-link:text-is('{run.id}')").click()
    expect(page).to_have_url(re.compile(f"/runs/{run.id}$"))
    head = page.locator("#run-head")
    expect(head.locator(".badge").first).to_have_text("failed")

    error = page.locator("#run-error")
    expect(error.locator(".error-type")).to_have_text("ValueError")
    expect(error.locator(".error-message")).to_have_text(
        "row 17: unexpected column 'price' in prices.csv")
    expect(error.locator("pre.traceback")).to_contain_text("Traceback (most recent call last)")
    expect(error.locator("pre.traceback")).to_contain_text("in parse")
    # The handler's line, then the step function's: no frame of StackShift's own.
    expect(error.locator("pre.traceback")).to_contain_text("in import_feed")
    expect(error.locator("pre.traceback")).not_to_contain_text("executor.py")

    attempts = page.locator("#attempts tbody tr")
    expect(attempts).to_have_count(2)
    for row in (attempts.nth(0), attempts.nth(1)):
        expect(row.locator(".badge")).to_have_text("failed")
        expect(row.locator("td.num")).to_have_text(re.compile(r"\d+ ms|<1 ms|[\d.]+ s"))
        expect(row).to_contain_text("ValueError")

    groups = page.locator("#logs .log-group")
    expect(groups).to_have_count(2)
    expect(groups.nth(0)).to_contain_text("Attempt 1")
    # A record's fields (extra=) follow its message.
    fields = ' feed=prices.csv columns=["sku","cost"]'
    expect(groups.nth(0).locator(".log-msg")).to_have_text(
        "parsing feed prices.csv, attempt 1" + fields)
    expect(groups.nth(1).locator(".log-msg")).to_have_text(
        "parsing feed prices.csv, attempt 2" + fields)
    expect(groups.nth(1).locator(".log-field")).to_have_text(
        ["feed=prices.csv", 'columns=["sku","cost"]'])
    # No line was logged inside a step: no empty step column between level and message.
    expect(page.locator("#logs .log-step")).to_have_count(0)
    line = groups.nth(0).locator(".log-line")
    level = line.locator(".log-level").bounding_box()
    message = line.locator(".log-msg").bounding_box()
    assert level and message and message["x"] - (level["x"] + level["width"]) < 80

    chart = page.locator("#waterfall")
    expect(chart.locator(".wf-attempt")).to_have_count(2)
    expect(chart.locator(".wf-step[data-step=parse] .bar-step-failed")).to_have_count(2)
    expect(chart.locator(".wf-step[data-step=download]")).to_have_count(1)
    expect(chart.locator(".bar-backoff")).to_have_count(1)
    screenshot(page, "run-failed", stack.store_kind)

    expect(page.locator("#run-attempt")).to_have_text("2 of 2")
    page.locator("#retry-run").click()
    expect(page.locator(".flash-ok")).to_have_text("Run queued for a new attempt.")
    _no_reload_marker(page)
    # Attempt 3 takes over a second: the page shows it running, then completed,
    # with no reload in between. While it runs, it is the first attempt of the
    # fresh budget, and the error of attempt 2 is no longer shown as the run's.
    expect(head.locator(".badge").first).to_have_text(re.compile("queued|running"))
    while_running = page.wait_for_function(
        """() => document.querySelector('#run-head .badge').textContent.trim() === 'running'
                 && {attempt: document.querySelector('#run-attempt').textContent.trim(),
                     error: document.querySelector('#run-error') !== null}""",
        timeout=15_000).json_value()
    assert while_running == {"attempt": "1 of 2 after a manual retry (3 in all)",
                             "error": False}
    expect(head.locator(".badge").first).to_have_text("completed", timeout=15_000)
    assert _still_same_document(page)
    expect(page.locator("#run-attempt")).to_have_text("1 of 2 after a manual retry (3 in all)")
    expect(page.locator("#result pre")).to_contain_text('"rows": 120')
    expect(page.locator("#attempts tbody tr")).to_have_count(3)
    expect(page.locator("#attempts tbody tr").nth(1)).to_contain_text("ValueError")
    expect(page.locator("#run-error")).to_have_count(0)
    expect(page.locator("#retry-run")).to_have_count(0)
    page.goto(stack.at(f"/runs?q={run.id}"))
    expect(page.locator(f"tr[data-run-id='{run.id}'] td.num").first).to_have_text("1/2 (3)")


def test_a_running_step_shows_on_the_run_page_until_it_is_recorded(
    stack: Dashboard, page: Page
) -> None:
    """Steps are recorded when they end: while one runs, the waterfall and the
    steps table show a row for it, open-ended, which gives way to the recorded
    step once it ends, with no reload."""
    run = stack.app.start("crunch-numbers", {"seconds": 4})
    stack.wait_status(run.id, "running")
    page.goto(stack.at(f"/runs/{run.id}"))
    _no_reload_marker(page)
    chart = page.locator("#waterfall")
    expect(chart.locator(".wf-step[data-step=load] .bar-step-completed")).to_have_count(1)
    running = chart.locator(".wf-step.wf-status-running")
    expect(running.locator(".bar-step-running.bar-open")).to_have_count(1)
    expect(running.locator(".wf-detail")).to_have_text(re.compile(r"so far$"))
    in_progress = page.locator("#steps tr.in-progress")
    expect(in_progress).to_have_count(1)
    expect(in_progress.locator(".badge")).to_have_text("running")
    expect(in_progress).to_contain_text("recorded when it ends")
    screenshot(page, "run-step-in-progress", stack.store_kind)

    expect(page.locator("#run-head .badge").first).to_have_text("completed", timeout=15_000)
    expect(chart.locator(".wf-step[data-step=crunch] .bar-step-completed")).to_have_count(1)
    expect(chart.locator(".bar-step-running")).to_have_count(0)
    expect(in_progress).to_have_count(0)
    expect(page.locator("#steps tbody tr")).to_have_count(2)
    assert _still_same_document(page)


def test_a_run_that_logged_more_than_the_page_shows_its_latest_lines_and_the_count(
    stack: Dashboard, page: Page
) -> None:
    """The page shows a run's last 2,000 lines, says how many came before them
    and where to read them all, and counts every line."""
    run = stack.app.start("chatter", {"lines": 2_030})
    stack.wait_status(run.id, "completed")
    page.goto(stack.at(f"/runs/{run.id}"))
    _shows_the_latest(page.locator("#logs"), ".log-line .log-msg", "2,030",
                      f"The first 30 lines are not shown here; stackshift runs logs {run.id}"
                      " prints them all.", 2_000, ("line 30", "line 2029"))


def _shows_the_latest(section: Locator, row: str, total: str, note: str, shown: int,
                      ends: tuple[str, str] | None = None) -> None:
    """``section`` counts ``total`` rows in its heading, says ``note`` of those not
    shown, and shows ``shown`` rows (matching ``row``) from the first to the last of
    ``ends``."""
    expect(section.locator("h2 .count")).to_have_text(total)
    expect(section.locator(".log-note")).to_have_text(note)
    rows = section.locator(row)
    expect(rows).to_have_count(shown)
    if ends is not None:
        expect(rows.first).to_have_text(ends[0])
        expect(rows.last).to_have_text(ends[1])


def test_a_run_of_many_steps_shows_its_latest_steps_and_timeline_entries_and_the_counts(
    stack: Dashboard, page: Page
) -> None:
    """The steps table and the list of timeline entries show their latest 500
    rows, say how many came before them and where to read them all, and count
    every one."""
    run = stack.app.start("many-items", {"items": 520})
    stack.wait_status(run.id, "completed", timeout=60)
    entries = len(stack.app.runs.timeline(run.id))
    page.goto(stack.at(f"/runs/{run.id}"))
    _shows_the_latest(page.locator("#steps"), "tbody tr td:first-child", "520",
                      f"The first 20 steps are not shown here; stackshift runs show {run.id}"
                      " lists them all.", 500, ("item-20", "item-519"))
    expect(page.locator(".wf-more")).to_contain_text(
        "The first 270 steps are not drawn; see the steps table below (its latest 500;")
    drawn = page.locator("#waterfall .wf-step .wf-name")
    expect(drawn.first).to_have_text("item-270")
    expect(drawn.last).to_have_text("item-519")
    # The time before item-270 is folded into the first tenth of the axis, a gap
    # labelled with its length; the steps drawn spread over the rest.
    row = page.locator("#waterfall .wf-step").first
    track, first = row.locator(".wf-track").bounding_box(), row.locator(".bar").bounding_box()
    assert track is not None and first is not None
    assert abs((first["x"] - track["x"]) / track["width"] - 0.1) < 0.01
    expect(page.locator("#waterfall .wf-gap-label").first).to_contain_text("⋯")
    _shows_the_latest(page.locator("#raw-timeline"), "tbody tr", f"{entries:,}",
                      f"The first {entries - 500} entries are not shown here; stackshift runs"
                      f" timeline {run.id} prints them all.", 500)


def test_run_with_three_attempts_eight_steps_and_a_wait_resumes_from_its_page(
    stack: Dashboard, page: Page
) -> None:
    run = stack.app.start("checkout", {"order": 1042, "items": 3}, idempotency_key="order:1042")
    stack.wait_status(run.id, "waiting")

    page.goto(stack.at(f"/runs/{run.id}"))
    chart = page.locator("#waterfall")
    expect(chart.locator(".wf-attempt")).to_have_count(3)
    expect(chart.locator(".wf-wait")).to_have_count(1)
    expect(chart.locator(".wf-wait .bar-open")).to_have_count(1)
    callout = page.locator("#waiting-for")
    expect(callout).to_contain_text("payment.settled")
    form = page.locator("#send-event-form")
    expect(form.locator("input[name=name]")).to_have_value("payment.settled")
    expect(form.locator("input[name=correlation_key]")).to_have_value("order:1042")
    screenshot(page, "run-waiting", stack.store_kind)

    form.locator("textarea[name=payload]").fill('{"amount": 4200, "psp": "acme"}')
    form.locator("#send-event").click()
    expect(page.locator(".flash-ok")).to_have_text("Event sent: the run resumed.")
    _no_reload_marker(page)
    expect(page.locator("#run-head .badge").first).to_have_text("completed")
    assert _still_same_document(page)
    final = stack.app.runs.get(run.id)
    assert final.status == "completed" and final.result == {"order": 1042, "status": "closed"}

    # Eight steps across three attempts, one wait resolved by the event.
    steps = chart.locator(".wf-step")
    names = {s.get_attribute("data-step") for s in steps.all()}
    assert names == {"load-cart", "reserve-stock", "price-order", "apply-coupon", "charge-card",
                     "send-receipt", "notify-warehouse", "close-order"}
    expect(chart.locator(".wf-step[data-step=charge-card] .bar-step-failed")).to_have_count(2)
    expect(chart.locator(".wf-wait .mark-event")).to_have_count(1)
    expect(chart.locator(".wf-wait .bar-open")).to_have_count(0)
    expect(chart.locator(".mark-retry")).to_have_count(2)
    expect(page.locator("#logs .log-group")).to_have_count(3)
    page.select_option("[data-log-filter]", "charge-card")
    expect(page.locator("#logs .log-line:visible")).to_have_count(5)
    # The level filter narrows what the step filter shows, and the other way round.
    page.select_option("[data-log-level]", "30")
    lines = page.locator("#logs .log-line:visible")
    expect(lines).to_have_count(2)
    expect(lines.locator(".log-level")).to_have_text(["WARNING", "WARNING"])
    page.select_option("[data-log-filter]", "")
    expect(lines).to_have_count(2)
    page.select_option("[data-log-level]", "40")
    expect(lines).to_have_count(0)
    expect(page.locator("#logs .log-group:visible")).to_have_count(0)
    page.select_option("[data-log-level]", "")
    expect(lines).to_have_count(8)
    screenshot(page, "run", stack.store_kind)


def test_a_refused_event_keeps_the_form_as_it_was_filled_in(
    stack: Dashboard, page: Page
) -> None:
    run = stack.app.start("checkout", {"order": 1043})
    stack.wait_status(run.id, "waiting")
    page.goto(stack.at(f"/runs/{run.id}"))
    form = page.locator("#send-event-form")
    typed = '{"amount": 4200,\n "psp": acme}'
    form.locator("textarea[name=payload]").fill(typed)
    form.locator("input[name=correlation_key]").fill("order:1043")
    form.locator("input[name=idempotency_key]").fill("settle:1043")
    form.locator("#send-event").click()

    expect(page.locator(".flash-error")).to_contain_text("The payload is not JSON")
    expect(form.locator("textarea[name=payload]")).to_have_value(typed)
    expect(form.locator("input[name=name]")).to_have_value("payment.settled")
    expect(form.locator("input[name=correlation_key]")).to_have_value("order:1043")
    expect(form.locator("input[name=idempotency_key]")).to_have_value("settle:1043")
    # The address is the run's page again, and nothing was sent.
    expect(page).to_have_url(re.compile(f"/runs/{run.id}$"))
    assert stack.app.runs.get(run.id).status == "waiting"
    assert stack.app.events.list(name="payment.settled").items == []

    # Live updates refresh the page around the form and leave the form alone.
    page.evaluate("document.querySelector('#waterfall .wf').__before = true")
    stack.app.start("resize-image", {"image": "elsewhere"})
    stack.wait_for(lambda: page.evaluate("!document.querySelector('#waterfall .wf').__before"))
    expect(form.locator("textarea[name=payload]")).to_have_value(typed)

    # An object naming a key twice is refused too, as the HTTP API refuses it.
    twice = '{"amount": 4200, "psp": "acme", "psp": "other"}'
    form.locator("textarea[name=payload]").fill(twice)
    form.locator("#send-event").click()
    expect(page.locator(".flash-error")).to_have_text(
        "The payload is refused: duplicate key 'psp' in one object.")
    expect(form.locator("textarea[name=payload]")).to_have_value(twice)
    assert stack.app.events.list(name="payment.settled").items == []

    # Mended, it goes through.
    form.locator("textarea[name=payload]").fill('{"amount": 4200, "psp": "acme"}')
    form.locator("#send-event").click()
    expect(page.locator(".flash-ok")).to_have_text("Event sent: the run resumed.")
    assert stack.wait_status(run.id, "completed").result == {"order": 1043, "status": "closed"}


def test_a_form_sent_after_its_run_stopped_waiting_sends_nothing(
    stack: Dashboard, page: Page
) -> None:
    """Live updates leave a form being filled in alone, so it can outlive the wait it
    was for: sent once the run no longer waits (resumed meanwhile by an event sent
    elsewhere), it sends nothing and says what became of the run, rather than store
    an event that no run is waiting for."""
    run = stack.app.start("send-email", {"user": "lin"})
    stack.wait_status(run.id, "waiting")
    page.goto(stack.at(f"/runs/{run.id}"))
    form = page.locator("#send-event-form")
    form.locator("textarea[name=payload]").fill('{"by": "dashboard"}')

    stack.app.events.send("email.verified", {"by": "sdk"}, correlation_key="user:lin")
    stack.wait_status(run.id, "completed")
    expect(page.locator("#run-head .badge").first).to_have_text("completed")
    expect(form.locator("textarea[name=payload]")).to_have_value('{"by": "dashboard"}')
    form.locator("#send-event").click()

    expect(page.locator(".flash-error")).to_have_text(
        "This run no longer waits for an event (it is completed), so nothing was sent.")
    expect(page.locator("#send-event-form")).to_have_count(0)
    assert [e.payload for e in stack.app.events.list(name="email.verified").items] == [
        {"by": "sdk"}]


def test_a_repeated_event_send_says_what_its_first_send_resumed(
    stack: Dashboard, page: Page
) -> None:
    """An event sent before the run began is not the run's to take; sending it again
    from the run's page with the same idempotency key resumes nothing, and the page
    says what the first send did and how to reach this run."""
    def send(run_id: str, idempotency_key: str) -> None:
        page.goto(stack.at(f"/runs/{run_id}"))
        form = page.locator("#send-event-form")
        form.locator("textarea[name=payload]").fill('{"amount": 1}')
        form.locator("input[name=idempotency_key]").fill(idempotency_key)
        form.locator("#send-event").click()

    repeated = ("An event with this idempotency key was already sent, so nothing was resumed"
                " now. Its first send resumed {}. Send it with another idempotency key to"
                " resume this run.")
    stack.app.events.send("payment.settled", {"amount": 1}, correlation_key="order:1046",
                          idempotency_key="settle:1046")
    run = stack.app.start("checkout", {"order": 1046})
    stack.wait_status(run.id, "waiting")
    send(run.id, "settle:1046")
    expect(page.locator(".flash-info")).to_have_text(repeated.format("no run"))
    assert stack.app.runs.get(run.id).status == "waiting"
    assert len(stack.app.events.list(name="payment.settled").items) == 1

    send(run.id, "settle:1046:again")
    expect(page.locator(".flash-ok")).to_have_text("Event sent: the run resumed.")
    stack.wait_status(run.id, "completed")

    # Sent again with that key from another run's page: it resumed the first run.
    other = stack.app.start("checkout", {"order": 1046})
    stack.wait_status(other.id, "waiting")
    send(other.id, "settle:1046:again")
    expect(page.locator(".flash-info")).to_have_text(repeated.format("1 run, not this one"))
    assert stack.app.runs.get(other.id).status == "waiting"


def test_the_event_form_sends_keys_as_given_like_the_sdk(stack: Dashboard, page: Page) -> None:
    """A correlation key with a space at its end is a key of its own in the SDK: the
    form (filled in with the run's key) sends it as it is, and resumes the run."""
    run = stack.app.start("send-email", {"user": "ada "})
    stack.wait_status(run.id, "waiting")
    page.goto(stack.at(f"/runs/{run.id}"))
    form = page.locator("#send-event-form")
    expect(form.locator("input[name=correlation_key]")).to_have_value("user:ada ")
    form.locator("input[name=idempotency_key]").fill(" verify:ada")
    form.locator("#send-event").click()
    expect(page.locator(".flash-ok")).to_have_text("Event sent: the run resumed.")
    assert stack.wait_status(run.id, "completed").result == {"verified": {}}
    [sent] = stack.app.events.list(name="email.verified").items
    assert (sent.correlation_key, sent.idempotency_key) == ("user:ada ", " verify:ada")


def test_waterfall_step_rows_filter_the_logs_from_the_keyboard(
    stack: Dashboard, page: Page
) -> None:
    run = stack.app.start("checkout", {"order": 1044})
    stack.wait_status(run.id, "waiting")
    page.goto(stack.at(f"/runs/{run.id}"))
    lines = page.locator("#logs .log-line:visible")
    expect(lines).to_have_count(6)
    select = page.locator("[data-log-filter]")

    def focused() -> str:
        return str(page.evaluate(
            "(e => `${e.getAttribute('data-step')}@${e.getAttribute('data-attempt')}`)"
            "(document.activeElement)"))

    # The step that logged (charge-card, in each of the three attempts) is a toggle
    # button; Tab reaches its rows in order, after the form above the chart.
    toggles = page.get_by_role("button", name="Show only the logs of step charge-card")
    expect(toggles).to_have_count(3)
    expect(page.locator("#waterfall .wf-row[data-step=load-cart]")).not_to_have_attribute(
        "tabindex", "0")
    page.focus("#send-event")
    page.keyboard.press("Tab")
    assert focused() == "charge-card@1"
    # A visible focus ring.
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    assert page.evaluate("parseFloat(getComputedStyle(document.activeElement).outlineWidth)") >= 2

    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Show only the logs of step charge-card",
                            pressed=True)).to_have_count(3)
    expect(lines).to_have_count(5)
    expect(select).to_have_value("charge-card")
    assert focused() == "charge-card@1"
    page.keyboard.press("Space")
    expect(page.get_by_role("button", name="Show only the logs of step charge-card",
                            pressed=False)).to_have_count(3)
    expect(lines).to_have_count(6)
    expect(select).to_have_value("")

    page.keyboard.press("Tab")
    assert focused() == "charge-card@2"
    page.keyboard.press("Space")
    expect(toggles.nth(1)).to_have_attribute("aria-pressed", "true")
    expect(lines).to_have_count(5)
    page.keyboard.press("Tab")
    assert focused() == "charge-card@3"
    page.keyboard.press("Tab")
    expect(select).to_be_focused()

    # The pressed state follows the filter through live updates and the select.
    page.evaluate("document.activeElement.blur()")
    page.evaluate("document.querySelector('#waterfall .wf').__before = true")
    stack.app.start("resize-image", {"image": "elsewhere"})
    stack.wait_for(lambda: page.evaluate("!document.querySelector('#waterfall .wf').__before"))
    expect(toggles.nth(0)).to_have_attribute("aria-pressed", "true")
    select.select_option("")
    expect(toggles.nth(0)).to_have_attribute("aria-pressed", "false")
    # And the mouse toggles too.
    toggles.nth(2).click()
    expect(lines).to_have_count(5)
    toggles.nth(2).click()
    expect(lines).to_have_count(6)

    # Both filters are kept by live updates: the run, resumed from elsewhere,
    # logs more lines, which arrive filtered.
    select.select_option("charge-card")
    page.select_option("[data-log-level]", "30")
    expect(lines).to_have_count(2)
    stack.app.events.send("payment.settled", {"amount": 4200}, correlation_key="order:1044")
    expect(page.locator("#run-head .badge").first).to_have_text("completed")
    expect(page.locator("#logs h2 .count")).to_have_text("8")
    expect(select).to_have_value("charge-card")
    expect(page.locator("[data-log-level]")).to_have_value("30")
    expect(lines).to_have_count(2)


def test_cancel_a_waiting_run(stack: Dashboard, page: Page) -> None:
    run = stack.app.start("send-email", {"user": "grace"})
    stack.wait_status(run.id, "waiting")
    page.goto(stack.at(f"/runs/{run.id}"))
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#cancel-run").click()
    expect(page.locator(".flash-ok")).to_have_text("Run cancelled.")
    expect(page.locator("#run-head .badge").first).to_have_text("cancelled")
    expect(page.locator("#send-event-form")).to_have_count(0)
    expect(page.locator("#retry-run")).to_be_visible()
    assert stack.app.runs.get(run.id).status == "cancelled"


def test_start_again_starts_a_new_run_with_the_runs_payload(
    stack: Dashboard, page: Page
) -> None:
    run = stack.app.start("send-email", {"user": "ada"}, priority=3, max_attempts=5,
                          idempotency_key="welcome:ada")
    stack.wait_status(run.id, "waiting")
    page.goto(stack.at(f"/runs/{run.id}"))
    # Dismissed, the confirm starts nothing.
    asked: list[str] = []

    def dismiss(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.locator("#start-again").click()
    assert asked == ["Start a new run of send-email with this run's payload?"]
    assert [r.id for r in stack.app.runs.list(job="send-email").items] == [run.id]

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#start-again").click()
    expect(page.locator(".flash-ok")).to_have_text(f"Started with the payload of run {run.id}.")
    new_id = page.locator("#run-id").inner_text().strip()
    assert new_id != run.id
    again = stack.app.runs.get(new_id)
    assert (again.job, again.payload, again.queue, again.priority, again.max_attempts) == (
        "send-email", {"user": "ada"}, "emails", 3, 5)
    # Not the key: it names the first run, and would have given it back.
    assert again.idempotency_key is None
    stack.wait_status(new_id, "waiting")
    expect(page.locator("#run-head .badge").first).to_have_text("waiting")
    assert stack.app.runs.get(run.id).status == "waiting"
    # Each run's page names the other, and links to it; so do their timelines.
    page.locator("#raw-timeline summary").click()
    origin = page.locator("#raw-timeline tr", has_text="run.queued").first
    expect(origin).to_contain_text(f'{{"again_of": "{run.id}"}}')
    expect(origin.get_by_role("link", name=run.id)).to_have_count(1)
    expect(page.locator("#run-started-again")).to_have_count(0)
    page.locator("#run-again-of").get_by_role("link", name=run.id).click()
    expect(page.locator("#run-id")).to_have_text(run.id)
    expect(page.locator("#run-started-again")).to_have_text(new_id)
    expect(page.locator("#run-again-of")).to_have_count(0)
    page.locator("#raw-timeline summary").click()
    noted = page.locator("#raw-timeline tr", has_text="run.started_again")
    expect(noted).to_contain_text(f'{{"new_run_id": "{new_id}"}}')
    noted.get_by_role("link", name=new_id).click()
    expect(page.locator("#run-id")).to_have_text(new_id)
    # The latest three of the runs started again from a run, and how many more.
    for _ in range(3):
        stack.app.runs.start_again(run.id)
    page.goto(stack.at(f"/runs/{run.id}"))
    latest = [e.data["new_run_id"] for e in stack.app.runs.timeline(run.id)
              if e.kind == "run.started_again"][::-1]
    expect(page.locator("#run-started-again")).to_have_text(
        ", ".join(latest[:3]) + " and 1 earlier")


def test_edit_and_start_fills_the_start_form_with_a_runs_work(
    stack: Dashboard, page: Page
) -> None:
    run = stack.app.start("resize-image", {"image": "cat.png", "sizes": [64, 128]},
                          queue_name="billing", priority=4, idempotency_key="resize:cat")
    page.goto(stack.at(f"/runs/{run.id}"))
    page.locator("#edit-and-start").click()
    form = page.locator("#start-run-form")
    expect(page.locator("#filled-from")).to_contain_text(f"Filled in from run {run.id}")
    values = {name: form.locator(f"[name={name}]").input_value()
              for name in ("job", "payload", "idempotency_key", "queue", "delay", "priority")}
    assert values == {"job": "resize-image",
                      "payload": '{\n  "image": "cat.png",\n  "sizes": [\n    64,\n    128\n  ]\n}',
                      "idempotency_key": "", "queue": "billing", "delay": "", "priority": "4"}
    # Edited, it starts a new run; the first is left as it was.
    form.locator("[name=payload]").fill('{"image": "dog.png"}')
    form.locator("#start-run-submit").click()
    expect(page.locator(".flash-ok")).to_have_text("Run started.")
    new = stack.app.runs.get(page.locator("#run-id").inner_text().strip())
    assert (new.job, new.payload, new.queue, new.priority, new.idempotency_key) == (
        "resize-image", {"image": "dog.png"}, "billing", 4, None)
    assert new.id != run.id and stack.app.runs.get(run.id).payload["image"] == "cat.png"
    # A run that is not there fills in nothing, and says so.
    page.goto(stack.at("/jobs?from_run=run_00000000000000000000000000"))
    expect(page.locator("#fill-error")).to_have_text(
        "Nothing to fill the form in with: no run with id 'run_00000000000000000000000000'.")
    expect(form.locator("[name=job]")).to_have_value("")


def test_the_jobs_page_starts_a_run_and_keeps_a_refused_form_as_it_was_sent(
    stack: Dashboard, page: Page
) -> None:
    page.goto(stack.at("/jobs"))
    form = page.locator("#start-run-form")
    expect(page.locator("#job-names option[value='send-email']")).to_have_count(1)

    def submit(job: str, payload: str, key: str = "", **options: str) -> None:
        form.locator("[name=job]").fill(job)
        form.locator("[name=payload]").fill(payload)
        form.locator("[name=idempotency_key]").fill(key)
        for name in ("queue", "delay", "priority"):
            form.locator(f"[name={name}]").fill(options.get(name, ""))
        form.locator("#start-run-submit").click()

    refusals: list[tuple[str, str, dict[str, str], str]] = [
        ("send-email", '{"user": "lin", "user": "max"}', {},
         "The payload is refused: duplicate key 'user' in one object."),
        ("send-email", '{"user": ', {}, "The payload is not JSON: Expecting value"),
        ("send email", '{"user": "lin"}', {}, "job name 'send email' is invalid"),
        ("send-email", '[1, NaN]', {}, "NaN"),
        ("send-email", '{"user": "lin"}', {"queue": "a b", "delay": "1h", "priority": "2"},
         "queue name 'a b' is invalid"),
        ("send-email", '{"user": "lin"}', {"queue": "emails", "delay": "soon"},
         "delay: 'soon' is not a duration (use e.g. '30s', '15m', '1h30m', '7d')"),
        ("send-email", '{"user": "lin"}', {"delay": "-5"},
         "delay: '-5' must be a finite, non-negative duration"),
        ("send-email", '{"user": "lin"}', {"priority": "high"},
         "priority must be a 32-bit integer, got 'high'"),
        ("send-email", '{"user": "lin"}', {"priority": "9999999999"},
         "priority must be a 32-bit integer, got 9999999999"),
        # Digits are ASCII, as the API and the command line take them.
        ("send-email", '{"user": "lin"}', {"priority": "\u0663"},
         "priority must be a 32-bit integer, got '\u0663'"),
        ("send-email", '{"user": "lin"}', {"delay": "1e3"},
         "delay: seconds are written in digits (e.g. '60', '1.5'), got '1e3'"),
    ]
    for job, payload, options, message in refusals:
        submit(job, payload, **options)
        expect(page.locator(".flash-error")).to_contain_text(message)
        # Back as it was sent, on the Jobs page.
        expect(form.locator("[name=job]")).to_have_value(job)
        expect(form.locator("[name=payload]")).to_have_value(payload)
        for name in ("queue", "delay", "priority"):
            expect(form.locator(f"[name={name}]")).to_have_value(options.get(name, ""))
        expect(page.locator("#jobs-table")).to_be_visible()
    assert stack.app.runs.list().items == []
    # The queues the jobs' workers take are suggested.
    expect(page.locator("#queue-names option[value='emails']")).to_have_count(1)

    submit("send-email", '{"user": "lin"}', "welcome:lin")
    expect(page.locator(".flash-ok")).to_have_text("Run started.")
    run_id = page.locator("#run-id").inner_text().strip()
    run = stack.app.runs.get(run_id)
    # On the job's own queue, as a start without one puts it.
    assert (run.job, run.payload, run.queue, run.idempotency_key) == (
        "send-email", {"user": "lin"}, "emails", "welcome:lin")
    expect(page.locator("#run-head .badge").first).to_have_text("waiting")

    # The same key again: that run, and nothing new.
    page.goto(stack.at("/jobs"))
    submit("send-email", '{"user": "lin"}', "welcome:lin")
    expect(page.locator(".flash-info")).to_have_text(
        "A run already exists for idempotency key 'welcome:lin': nothing new was started.")
    expect(page.locator("#run-id")).to_have_text(run_id)
    # A key bound to another payload: refused, the form kept.
    page.goto(stack.at("/jobs"))
    submit("send-email", '{"user": "max"}', "welcome:lin")
    expect(page.locator(".flash-error")).to_contain_text(
        f"idempotency key 'welcome:lin' belongs to run {run_id}")
    expect(form.locator("[name=idempotency_key]")).to_have_value("welcome:lin")
    assert len(stack.app.runs.list().items) == 1
    # No payload is a null payload.
    submit("send-email", "")
    expect(page.locator(".flash-ok")).to_have_text("Run started.")
    other = stack.app.runs.get(page.locator("#run-id").inner_text().strip())
    assert other.payload is None and other.id != run_id
    # On another queue, an hour from now, at a priority: as the SDK starts it.
    page.goto(stack.at("/jobs"))
    submit("send-email", '{"user": "max"}', queue="billing", delay="1h", priority="-3")
    expect(page.locator(".flash-ok")).to_have_text("Run started.")
    later = stack.app.runs.get(page.locator("#run-id").inner_text().strip())
    assert (later.queue, later.status, later.priority) == ("billing", "scheduled", -3)
    assert later.scheduled_at is not None
    assert 3590 < (later.scheduled_at - later.created_at).total_seconds() <= 3600
    expect(page.locator("#run-head .badge").first).to_have_text("scheduled")
    # A bare number is seconds, as `stackshift start --delay 90` reads it.
    page.goto(stack.at("/jobs"))
    submit("send-email", '{"user": "kim"}', delay="90")
    expect(page.locator(".flash-ok")).to_have_text("Run started.")
    soon = stack.app.runs.get(page.locator("#run-id").inner_text().strip())
    assert soon.scheduled_at is not None
    assert 80 < (soon.scheduled_at - soon.created_at).total_seconds() <= 90


def test_bulk_retry_dead_letters_of_a_queue(stack: Dashboard, page: Page) -> None:
    runs = [stack.app.start("sync-invoice", {"invoice": f"in_{i}"}) for i in range(4)]
    stack.app.start("resize-image", {"image": "x"}, queue_name="billing")
    for run in runs:
        stack.wait_status(run.id, "failed")

    page.goto(stack.at("/queues"))
    billing = page.locator("tr", has=page.locator("a.queue-link:text-is('billing')"))
    expect(billing).to_contain_text("4 failed")
    billing.locator("a.queue-link").click()
    dead = page.locator("#dead-letters tbody tr[data-run-id]")
    expect(dead).to_have_count(4)
    expect(page.locator(".stat-failed .stat-value")).to_have_text("4")

    # Retry one selected run, then all the rest.
    dead.first.locator("input[type=checkbox]").check()
    page.locator("#retry-selected").click()
    expect(page.locator(".flash-ok")).to_have_text("1 run queued for a new attempt.")
    expect(dead).to_have_count(3)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#retry-all").click()
    expect(page.locator(".flash-ok")).to_have_text("3 runs queued for a new attempt.")
    _no_reload_marker(page)
    expect(page.locator(".stat-completed .stat-value")).to_have_text("5")
    expect(dead).to_have_count(0)
    assert _still_same_document(page)
    for run in runs:
        assert stack.wait_status(run.id, "completed").result == {"synced": run.payload["invoice"]}


def test_retrying_selected_dead_letters_leaves_a_run_cancelled_meanwhile_alone(
        stack: Dashboard, page: Page) -> None:
    """Runs selected on a dead-letter page that another operator has since retried
    and cancelled stay cancelled: only runs still failed are retried."""
    app = stack.app
    runs = [app.start("sync-invoice", {"invoice": f"in_{i}"}) for i in range(2)]
    for run in runs:
        stack.wait_status(run.id, "failed")
    page.goto(stack.at("/queues/billing"))
    dead = page.locator("#dead-letters tbody tr[data-run-id]")
    expect(dead).to_have_count(2)
    for n in range(2):
        dead.nth(n).locator("input[type=checkbox]").check()

    # Meanwhile, elsewhere: the queue is paused, one run retried, then cancelled.
    app.queue("billing").pause()
    cancelled, other = runs
    app.runs.retry(cancelled.id)
    app.runs.cancel(cancelled.id, reason="not to be sent again")

    page.locator("#retry-selected").click()
    expect(page.locator(".flash-ok")).to_have_text(
        "1 of 2 selected runs queued for a new attempt; 1 was no longer failed.")
    assert app.runs.get(cancelled.id).status == "cancelled"
    assert app.runs.get(other.id).status == "queued"


def test_characters_that_reorder_text_show_as_their_escapes(
        stack: Dashboard, page: Page) -> None:
    """An error, a log line or a key holding a right-to-left override would read
    reversed (``rows: 5 \u202edeleted`` shows ``rows: 5 deteled``): the page writes
    such characters as their escapes, as the command line does; a form sends the
    key back as it is."""
    title = "rows: 5 \u202edeleted\u202c"
    run = stack.app.start("render-report", {"title": title})
    stack.wait_status(run.id, "failed")
    page.goto(stack.at(f"/runs/{run.id}"))
    expect(page.locator("#run-error .error-message")).to_have_text(
        "cannot render rows: 5 \\u202edeleted\\u202c")
    expect(page.locator("#logs .log-msg")).to_contain_text("title was rows: 5 \\u202edeleted")
    assert "\u202e" not in page.locator("main").inner_text()
    # A search box keeps the key as typed: searched again, it finds the same runs.
    page.goto(stack.at("/runs?" + urlencode({"q": "key\u202eyek"})))
    assert page.locator("input[name=q]").input_value() == "key\u202eyek"


def test_user_content_is_rendered_as_text(stack: Dashboard, page: Page) -> None:
    run = stack.app.start("render-report", {"title": HOSTILE})
    stack.wait_status(run.id, "failed")
    stack.app.events.send("report.ready", {"title": HOSTILE}, correlation_key=HOSTILE)
    stack.app.state.set("reports:last-title", HOSTILE)
    held = stack.app.state.lock(f"reports:{HOSTILE}", ttl="1m")
    held.__enter__()  # listed under Locks on the State page
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    page.goto(stack.at(f"/runs/{run.id}"))
    expect(page.locator("#payload pre")).to_contain_text(json.dumps(HOSTILE))
    expect(page.locator("#logs .log-msg")).to_have_text(
        f"title was {HOSTILE} title={json.dumps(HOSTILE, ensure_ascii=False)}")
    expect(page.locator("#run-error .error-message")).to_have_text(f"cannot render {HOSTILE}")
    assert page.locator("#payload script, #logs script, #run-error script, main img").count() == 0
    for path in ("/runs", f"/runs?q={run.id}", "/events", "/state", "/queues/reports"):
        page.goto(stack.at(path))
        expect(page.locator("main")).to_contain_text("<script>window.__pwned")
        assert page.locator("main script, main img").count() == 0
    assert page.evaluate("window.__pwned === undefined")
    assert dialogs == []
    page.goto(stack.at("/state"))
    expect(page.locator("#locks-table td.key-cell")).to_have_text(f"reports:{HOSTILE}")
    held.__exit__(None, None, None)


def test_overview_pages_events_jobs_workers_and_state(stack: Dashboard, page: Page) -> None:
    app = stack.app
    first = app.start("send-email", {"user": "lin"})
    second = app.start("send-email", {"user": "lin"})
    stack.wait_status(first.id, "waiting")
    stack.wait_status(second.id, "waiting")
    sent = app.events.send("email.verified", {"by": "link"}, correlation_key="user:lin")
    assert set(sent.resumed_run_ids) == {first.id, second.id}
    app.events.send("invoice.paid", {"invoice": "in_7"}, correlation_key="invoice:in_7")
    app.start("nightly-report", {"day": "2026-01-05"})  # no worker knows this job
    for i in range(3):
        app.start("resize-image", {"image": i})
    app.start("resize-image", {"image": "later"}, delay="1h")
    busy = [app.start("checkout", {"order": 7}), app.start("import-feed", {"feed": "a.csv"}),
            app.start("sync-invoice", {"invoice": "in_9"}), app.start("send-email", {"user": "bo"})]
    app.state.set("imports:42:progress", {"done": 120, "total": 400}, ttl="2h")
    app.state.set("feature:new-checkout", True)
    stack.wait_for(lambda: app.state.get("images:resized") == 3)
    for run in busy:
        stack.wait_status(run.id, "waiting", "failed")

    page.goto(stack.url)
    expect(page.locator(".tab[data-status=scheduled] .count")).to_have_text("1")
    expect(page.locator(".tab[data-status=queued] .count")).to_have_text("1")
    screenshot(page, "runs", stack.store_kind, full_page=False)
    page.goto(stack.at("/queues"))
    expect(page.locator("a.queue-link")).to_have_count(6)

    page.goto(stack.at("/events"))
    row = page.locator(f"tr[data-event-id='{sent.id}']")
    expect(row).to_contain_text("email.verified")
    expect(row.locator("a.run-ref")).to_have_count(2)
    expect(page.locator("thead th").last).to_have_text("Taken by")
    page.fill("input[name=key]", "invoice:in_7")
    page.keyboard.press("Enter")
    expect(page.locator("tr[data-event-id]")).to_have_count(1)
    expect(page.locator("tr[data-event-id]")).to_contain_text("invoice.paid")
    page.goto(stack.at("/events"))
    screenshot(page, "events", stack.store_kind)

    page.goto(stack.at("/jobs"))
    expect(page.locator("tr[data-job=resize-image]")).to_contain_text("1 live")
    # A registered job names its queue (a run alone does not make it known).
    expect(page.locator("tr[data-job=resize-image] .job-queue")).to_have_text("queue media")
    expect(page.locator("tr[data-job=nightly-report] .job-queue")).to_have_count(0)
    expect(page.locator("tr[data-job=nightly-report]")).to_contain_text(
        "No live worker · 1 due")
    # A run that no worker ever executed was created, not "started".
    expect(page.locator("#jobs-table th").nth(3)).to_have_text("Newest run")
    # A job a worker knows but never ran: dashes, not an empty cell beside "0 runs".
    expect(page.locator("tr[data-job=render-report] td").nth(1)).to_have_text("—")
    expect(page.locator("tr[data-worker-id]")).to_have_count(1)
    expect(page.locator("tr[data-worker-id]")).to_contain_text("live")
    screenshot(page, "jobs", stack.store_kind)

    importing = app.state.lock("imports:42", ttl="5m")
    importing.__enter__()  # shown under Locks
    page.goto(stack.at("/state"))
    expect(page.locator("#locks-table tr[data-lock-key='imports:42']")).to_contain_text(
        importing.holder)
    progress = page.locator("tr", has=page.locator("td.key-cell:text-is('imports:42:progress')"))
    expect(progress).to_contain_text('"done": 120')
    expect(progress).to_contain_text(re.compile(r"in 1h 59m|in 2h"))
    expect(page.locator("tr", has=page.locator("td.key-cell:text-is('images:resized')"))
           ).to_contain_text("never")
    screenshot(page, "state", stack.store_kind)
    importing.__exit__(None, None, None)
    page.fill("input[name=prefix]", "imports:")
    page.keyboard.press("Enter")
    expect(page.locator("#state-table td.key-cell")).to_have_count(1)


def test_queue_pages_chart_an_hour_of_work(db_url: str, store_kind: str, page: Page) -> None:
    """An hour of work on a test clock: per-minute throughput, failure rate, dead letters."""
    # Whole minutes from a minute boundary, so that each minute's work falls in one bucket.
    clock = FakeClock((int(time.time()) // 60) * 60 - 59 * 60 + 30)
    app = StackShift(db_url, clock=clock)
    register_jobs(app)
    done_per_minute = []
    try:
        for minute in range(59):
            wave = 2 + (minute * 7) % 5 + (4 if 20 <= minute < 30 else 0)
            for i in range(wave):
                app.start("sync-invoice", {"invoice": f"in_{minute}_{i}",
                                           "reachable": (minute + i) % 9 != 0})
            for i in range(1 + minute % 3):
                app.start("resize-image", {"image": f"{minute}-{i}"}, queue_name="media")
            if minute % 20 == 5:
                app.start("send-email", {"user": f"u{minute}"})
            if minute == 15:
                app.start("nightly-report", {"day": "2026-01-05"})  # no worker knows it
            run_until_idle(app)
            done_per_minute.append(wave)
            if minute < 58:
                clock.advance("1m")
        app.start("sync-invoice", {"invoice": "in_late", "reachable": True})
        failed = app.runs.list(status="failed", queue="billing", limit=1000).items
        total = sum(done_per_minute)
        with serve(app, auth="open") as url:
            page.goto(url + "/queues")
            row = page.locator("tr", has=page.locator("a.queue-link:text-is('billing')"))
            expect(row.locator("td.num").nth(0)).to_have_text(f"{total:,}")
            rate = 100 * len(failed) / total
            assert 10 < rate < 20  # shown as a whole percentage
            expect(row.locator("td.num").nth(1)).to_have_text(f"{rate:.0f}%")
            expect(row.locator("td.num").nth(2)).to_have_text(re.compile(r"just now|\ds"))
            stranded = page.locator("tr", has=page.locator("a.queue-link:text-is('default')"))
            expect(stranded.locator("td.num").nth(2)).to_have_text("43m")
            screenshot(page, "queues", store_kind)

            row.locator("a.queue-link").click()
            bars = page.locator("svg.chart:not(.spark) g")
            expect(bars).to_have_count(60)
            titles = page.locator("svg.chart:not(.spark) g title").evaluate_all(
                "titles => titles.map(t => t.textContent)")
            counts = [re.search(r"UTC: (\d+) completed, (\d+) failed", t) for t in titles]
            heights = [int(m.group(1)) + int(m.group(2)) for m in counts if m]
            assert len(heights) == 60
            assert sum(heights) == total
            assert max(heights) == max(done_per_minute)
            # A screen reader, which skips the bars' titles, hears the totals.
            label = page.locator("svg.chart:not(.spark)").get_attribute("aria-label") or ""
            assert re.fullmatch(
                rf"Runs finished since \S+ \S+ UTC: {total - len(failed)} completed and"
                rf" {len(failed)} failed, at most {max(done_per_minute)} in one of 60 bars",
                label), label
            expect(page.locator(".stat-failed .stat-value")).to_have_text(str(len(failed)))
            expect(page.locator("#dead-letters tbody tr[data-run-id]")).to_have_count(
                min(50, len(failed)))
            screenshot(page, "queue", store_kind)
    finally:
        app.close()


def test_oldest_queued_is_the_oldest_due_run_not_yet_started_as_the_sdk_counts_it(
        db_url: str) -> None:
    """A queue whose only waiting runs are a retry and a delayed start, both due for
    a while and not yet moved to ``queued`` (nothing maintains here), shows on its
    page and in the list the age ``Queue.info()`` (and so the CLI and the API)
    gives, not "nothing waiting to start"."""
    import httpx

    clock = FakeClock((int(time.time()) // 60) * 60 - 20 * 60)
    app = StackShift(db_url, clock=clock)
    try:
        @app.job("bumpy", max_attempts=3, backoff={"base": "5m", "jitter": False})
        def bumpy(ctx: Any) -> None:
            raise RuntimeError("not yet")

        later = app.queue("later")
        later.enqueue("bumpy")
        run_until_idle(app)  # its first attempt fails: retrying in 5 minutes
        later.enqueue("bumpy", delay="10m")
        clock.advance("20m")
        info = later.info()
        assert sorted(info.counts) == ["retrying", "scheduled"]
        assert info.oldest_queued_age == 15 * 60
        with serve(app, auth="open") as url, httpx.Client(base_url=url) as browser:
            page = browser.get("/queues/later").text
            stat = re.search(r'Oldest queued</span><span class="stat-value"><time[^>]*'
                             r' data-age>([^<]*)<.*?stat-foot muted">([^<]*)<', page,
                             re.DOTALL)
            assert stat and stat.group(1) == "15m", stat
            assert stat.group(2).startswith("waiting since")
            listed = browser.get("/queues").text
            row = re.search(r"queue-link[^>]*>later</a>.*?</tr>", listed, re.DOTALL)
            assert row and " data-age>15m</time></td>" in row.group(0), row
    finally:
        app.close()


def test_narrow_screen_shows_titles_and_keeps_the_page_within_the_screen(
    stack: Dashboard, page: Page
) -> None:
    run = stack.app.start("checkout", {"order": 77})
    stack.wait_status(run.id, "waiting")
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ("/runs", "/queues", "/queues/orders", "/jobs", "/events", "/state",
                 f"/runs/{run.id}"):
        page.goto(stack.at(path))
        title = page.locator("main h1").first
        box = title.bounding_box()
        assert box is not None
        # Beside the title is the page's light background, not the sidebar's dark one.
        assert min(pixel(page, box["x"] - 6, box["y"] + box["height"] / 2)) > 200, path
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width}px wide on a 390px screen"
    # Log lines keep room for their message.
    message = page.locator("#logs .log-msg").first
    expect(message).to_have_text("charging card for order 77 (attempt 1)")
    box = message.bounding_box()
    assert box is not None and box["width"] > 250


def test_run_page_errors_and_attempts_fit_a_laptop_screen(stack: Dashboard, page: Page) -> None:
    checkout = stack.app.start("checkout", {"order": 5})
    report = stack.app.start("render-report", {"title": "x" * 400})
    stack.wait_status(checkout.id, "waiting")
    stack.wait_status(report.id, "failed")
    page.set_viewport_size({"width": 1280, "height": 900})

    page.goto(stack.at(f"/runs/{checkout.id}"))
    card = page.locator("#attempts").bounding_box()
    error = page.locator("#attempts tr[data-attempt='1'] td.note")
    expect(error).to_have_text("ConnectionError: card processor unavailable (502 Bad Gateway)")
    box = error.bounding_box()
    assert card is not None and box is not None
    assert box["x"] + box["width"] <= card["x"] + card["width"], "the error column is cut off"
    worker = page.locator("#attempts tr[data-attempt='1'] td").nth(5)
    expect(worker).to_have_attribute("title", re.compile(r"^wkr_"))

    # An error message without a single space wraps instead of widening the page.
    page.goto(stack.at(f"/runs/{report.id}"))
    expect(page.locator("#run-error .error-message")).to_have_text("cannot render " + "x" * 400)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280


def test_a_long_job_name_does_not_push_the_runs_columns_out_of_sight(
    stack: Dashboard, page: Page
) -> None:
    long_name = "reconcile-" + "ledger-entries-for-every-merchant-" * 5 + "x"
    run = stack.app.start(long_name, {"merchant": 1}, queue_name="q-" + "settlements-" * 8)
    failed = stack.app.start("sync-invoice", {"invoice": "in_3"})
    stack.wait_status(failed.id, "failed")

    for path in ("/runs", "/queues/billing"):
        page.goto(stack.at(path))
        card = page.locator("table.trunc-table").locator("xpath=..").bounding_box()
        assert card is not None
        for header in page.locator("table.trunc-table th").all():
            box = header.bounding_box()
            assert box is not None
            assert box["x"] + box["width"] <= card["x"] + card["width"] + 1, \
                f"{header.text_content()} is cut off on {path}"
    page.goto(stack.url)
    cell = page.locator(f"tr[data-run-id='{run.id}'] td.job-cell span")
    expect(cell).to_have_attribute("title", long_name)
    expect(page.locator(f"tr[data-run-id='{failed.id}'] td.note")).to_contain_text(
        "TimeoutError")


def test_a_queue_configured_before_its_first_run_is_listed(
    stack: Dashboard, page: Page
) -> None:
    """A queue paused or limited before any run lands on it is on the Queues page
    (as in ``stackshift queues`` and ``/metrics``), and its own page shows it."""
    stack.app.queue("payouts", concurrency=2).pause()

    page.goto(stack.at("/queues"))
    payouts = page.locator("tr", has=page.locator("a.queue-link:text-is('payouts')"))
    expect(payouts.locator(".queue-paused")).to_have_text("paused")
    expect(payouts).to_contain_text("0 runs")

    payouts.locator("a.queue-link").click()
    expect(page.locator("#queue-paused")).to_contain_text("This queue is paused")
    expect(page.locator(".page-head .sub")).to_contain_text("at most 2 running")


def test_a_paused_queue_says_so_until_it_is_resumed(stack: Dashboard, page: Page) -> None:
    app = stack.app
    app.queue("media", concurrency=4, rate_limit="100/m").pause()
    run = app.start("resize-image", {"image": "held"})
    app.start("sync-invoice", {"invoice": "in_5", "reachable": True})

    page.goto(stack.at("/queues"))
    media = page.locator("tr", has=page.locator("a.queue-link:text-is('media')"))
    expect(media.locator(".queue-paused")).to_have_text("paused")
    billing = page.locator("tr", has=page.locator("a.queue-link:text-is('billing')"))
    expect(billing.locator(".queue-paused")).to_have_count(0)

    media.locator("a.queue-link").click()
    expect(page.locator("#queue-paused")).to_contain_text("This queue is paused")
    expect(page.locator(".page-head .sub")).to_contain_text("at most 4 running · rate limit 100/m")
    expect(page.locator(".stat-queued .stat-value")).to_have_text("1")
    assert app.runs.get(run.id).status == "queued"

    app.queue("media").resume()
    stack.wait_status(run.id, "completed")
    expect(page.locator("#queue-paused")).to_have_count(0)
    expect(page.locator(".stat-completed .stat-value")).to_have_text("1")


def test_a_queue_no_live_worker_takes_says_so_until_one_does(db_url: str, page: Page) -> None:
    """A worker started with ``queues`` leaves the others' due runs waiting: the
    Queues page and the queue's own page say that no live worker takes them."""
    app = StackShift(db_url)
    register_jobs(app)
    workers = [app.worker(queues=["emails"], poll_interval=0.05)]
    workers[0].start()
    try:
        held = app.start("resize-image", {"image": "held"})  # the media queue
        later = app.start("send-email", {"user": "u_later"}, queue_name="digest", delay="1h")
        with serve(app, auth="open") as url:
            page.goto(url + "/queues")
            media = page.locator("tr", has=page.locator("a.queue-link:text-is('media')"))
            expect(media.locator(".queue-unserved")).to_have_text("no live worker")
            # Nothing due there yet: nothing waits for a worker.
            digest = page.locator("tr", has=page.locator("a.queue-link:text-is('digest')"))
            expect(digest).to_contain_text("1 run")
            expect(digest.locator(".queue-unserved")).to_have_count(0)

            media.locator("a.queue-link").click()
            expect(page.locator("#queue-unserved")).to_contain_text(
                "No live worker takes this queue: its due runs wait until one does.")
            assert app.runs.get(held.id).status == "queued"

            workers.append(app.worker(poll_interval=0.05))  # every queue
            workers[-1].start()
            assert app.runs.wait(held.id, timeout="15s").status == "completed"
            expect(page.locator("#queue-unserved")).to_have_count(0)
            expect(page.locator(".stat-completed .stat-value")).to_have_text("1")
        assert app.runs.get(later.id).status == "scheduled"
    finally:
        for worker in workers:
            worker.stop(grace=2)
        app.close()


def test_queue_page_counts_scheduled_and_cancelled_runs(stack: Dashboard, page: Page) -> None:
    app = stack.app
    later = [app.start("resize-image", {"image": f"later-{i}"}, delay="1h") for i in range(2)]
    dropped = app.start("resize-image", {"image": "dropped"}, delay="1h")
    app.runs.cancel(dropped.id)
    done = app.start("resize-image", {"image": "now"})
    stack.wait_status(done.id, "completed")

    page.goto(stack.at("/queues"))
    media = page.locator("tr", has=page.locator("a.queue-link:text-is('media')"))
    expect(media.locator(".pill-scheduled")).to_have_text("2 scheduled")
    expect(media.locator(".pill-cancelled")).to_have_text("1 cancelled")
    media.locator("a.queue-link").click()

    tiles = page.locator("#queue-stats .stats-status .stat")
    # Every status has its tile, in the order the runs list's tabs use.
    expect(tiles.locator(".stat-label")).to_have_text(
        ["Failed", "Running", "Waiting", "Retrying", "Queued", "Scheduled", "Completed",
         "Cancelled"])
    expect(page.locator(".stat-scheduled .stat-value")).to_have_text("2")
    expect(page.locator(".stat-cancelled .stat-value")).to_have_text("1")
    expect(page.locator(".stat-completed .stat-value")).to_have_text("1")
    # On a wide screen the eight tiles share one row.
    tops = {round(box["y"]) for box in (t.bounding_box() for t in tiles.all()) if box}
    assert len(tops) == 1, tops

    page.locator(".stat-scheduled").click()
    expect(page).to_have_url(re.compile(r"/runs\?queue=media&status=scheduled$"))
    expect(page.locator("tbody tr[data-run-id]")).to_have_count(2)
    assert {r.get_attribute("data-run-id") for r in page.locator("tbody tr[data-run-id]").all()} \
        == {r.id for r in later}
    page.go_back()
    page.locator(".stat-cancelled").click()
    expect(page.locator("tbody tr[data-run-id]")).to_have_attribute("data-run-id", dropped.id)


def test_run_facts_name_the_start_time_of_runs_that_never_ran(
    stack: Dashboard, page: Page
) -> None:
    later = stack.app.start("resize-image", {"image": "later"}, delay="2h")
    stranded = stack.app.start("nightly-report", {"day": "2026-01-05"})  # no worker knows it
    page.goto(stack.at(f"/runs/{later.id}"))
    facts = page.locator("dl.facts > div")
    expect(facts.filter(has_text="Starts").locator("dd")).to_have_text(
        re.compile(r"in (1h 59m|2h)"))
    expect(facts.filter(has_text="Next attempt")).to_have_count(0)
    page.goto(stack.at(f"/runs/{stranded.id}"))
    expect(facts.filter(has_text="Due").locator("dd")).to_have_text(re.compile(r"just now|ago"))
    expect(facts.filter(has_text="Next attempt")).to_have_count(0)


def test_waterfall_ticks_after_a_long_sleep_are_distinct(
    db_url: str, store_kind: str, page: Page
) -> None:
    """Ticks a fraction of a second apart, a minute and a half in, keep their decimals
    (they read ``+1m 31s`` and ``+1m 32s`` for 91 s and 91.5 s)."""
    clock = FakeClock(time.time() - 600)
    app = StackShift(db_url, clock=clock)

    @app.job("nap-between-chunks")
    def nap(ctx: Any) -> str:
        for name in ("chunk-1", "chunk-2"):
            ctx.step.run(name, lambda: clock.advance(0.4))
        ctx.step.sleep("nap", "90s")
        ctx.step.run("chunk-3", lambda: clock.advance(1.2))
        return "done"

    try:
        run = app.start("nap-between-chunks")
        run_until_idle(app)
        clock.advance("90s")
        run_until_idle(app)
        assert app.runs.get(run.id).status == "completed"
        with serve(app, auth="open") as url:
            page.goto(f"{url}/runs/{run.id}")
            expect(page.locator("#waterfall .wf-gap-label")).to_have_count(1)
            labels = page.locator("#waterfall .wf-tick").all_text_contents()
            # 0.8 s of work, 90 s asleep (a shortened gap), then ticks every 0.5 s.
            assert labels == ["0", "+500ms", "+1m 31s", "+1m 31.5s"], labels
    finally:
        app.close()


def test_jobs_page_lists_schedules_with_next_and_last_run_and_last_error(
    stack: Dashboard, page: Page
) -> None:
    app = stack.app
    ticking = app.schedules.create("sync-invoice", cron="@every 1s", payload={"invoice": "tick"})
    nightly = app.schedules.create("import-feed", cron="30 2 * * 1", timezone="Europe/Berlin",
                                   payload={"feed": "weekly.csv"})
    app.schedules.pause(nightly.id)
    # Its run waits for an event: the ticks after the first are skipped.
    one_at_a_time = app.schedules.create("send-email", cron="@every 1s",
                                         payload={"user": "sched"}, overlap="skip")
    failed = stack.wait_for(lambda: (s := app.schedules.get(ticking.id)).last_run_status
                            == "failed" and s)
    app.schedules.pause(ticking.id)
    skipping = stack.wait_for(lambda: (s := app.schedules.get(one_at_a_time.id)).skipped_ticks
                              >= 2 and s)
    app.schedules.pause(one_at_a_time.id)
    skipped = app.schedules.get(one_at_a_time.id).skipped_ticks
    mistyped = app.schedules.create("sync-invoce", cron="@daily")

    page.goto(stack.at("/jobs"))
    expect(page.locator("tr[data-schedule-id]")).to_have_count(4)
    # Only the schedule of a job no worker has registered says so.
    expect(page.locator("tr[data-schedule-id] .unregistered")).to_have_count(1)
    expect(page.locator(f"tr[data-schedule-id='{mistyped.id}'] .unregistered")).to_have_text(
        "no worker has registered this job")
    waiting = page.locator(f"tr[data-schedule-id='{one_at_a_time.id}']")
    expect(waiting).to_contain_text("skips overlaps")
    expect(waiting).to_contain_text(f"{skipped} skipped ticks")
    expect(waiting.locator(".badge")).to_have_text("waiting")
    expect(waiting.locator("a.run-ref")).to_have_attribute("href",
                                                           f"/runs/{skipping.last_run_id}")
    row = page.locator(f"tr[data-schedule-id='{ticking.id}']")
    expect(row).to_contain_text("@every 1s")
    expect(row).to_contain_text('{"invoice": "tick"}')
    expect(row.locator(".badge")).to_have_text("failed")
    expect(row.locator("a.run-ref")).to_have_attribute("href", f"/runs/{failed.last_run_id}")
    expect(row.locator("td.note")).to_contain_text("TimeoutError: ledger API timed out")
    other = page.locator(f"tr[data-schedule-id='{nightly.id}']")
    expect(other).to_contain_text("Europe/Berlin")
    expect(other).to_contain_text("paused")
    expect(other).to_contain_text("never ran")
    # On a laptop screen the three tables' first columns still line up.
    page.set_viewport_size({"width": 1280, "height": 900})
    page.reload()
    lefts = {table: page.locator(f"#{table} tbody tr td").first.evaluate(
        "e => e.getBoundingClientRect().x + parseFloat(getComputedStyle(e).paddingLeft)")
        for table in ("jobs-table", "schedules-table", "workers-table")}
    assert len(set(lefts.values())) == 1, lefts


def test_a_time_due_that_passed_unmet_reads_due(db_url: str, page: Page) -> None:
    """A schedule's next run, a delayed run's start or a wait's timeout that has
    passed with no worker up reads ``due 2m 30s ago``, not ``2m 30s ago`` (as if
    it had happened), as the server writes it and as the page's script keeps
    it; in the runs list, ``start due since`` its time."""
    clock = FakeClock(time.time() - 600)
    app = StackShift(db_url, clock=clock)
    try:
        late = app.schedules.create("sync-invoice", cron="@every 1m")
        ahead = app.schedules.create("sync-invoice", cron="@yearly")
        delayed = app.start("sync-invoice", {"invoice": "later"}, delay="1m")
        app.job("await-payment", lambda ctx: ctx.step.wait_for_event(
            "payment.settled", correlation_key="order:7", timeout="1m"))
        waiting = app.start("await-payment")
        run_until_idle(app)  # it waits, for a minute at most
        clock.advance("3m")  # no worker: the ticks of `late` pass unfired
        with serve(app, auth="open") as url:
            page.goto(f"{url}/jobs")
            expect(page.locator(f"tr[data-schedule-id='{late.id}'] time")).to_have_text(
                re.compile(r"^due [23]m( \d+s)? ago$"))
            expect(page.locator(f"tr[data-schedule-id='{ahead.id}'] time")).to_have_text(
                re.compile(r"^in \d+[dhms]( \d+[hms])?$"))  # New Year: some days off
            page.goto(f"{url}/runs/{delayed.id}")
            starts = page.locator("dl.facts > div").filter(has_text="Starts").locator("dd")
            expect(starts).to_have_text(re.compile(r"^due 2m( \d+s)? ago$"))
            page.goto(f"{url}/runs/{waiting.id}")
            expect(page.locator("#waiting-for p")).to_have_text(re.compile(
                r"^Step payment\.settled · timeout due 2m( \d+s)? ago\. The run holds"))
            page.goto(f"{url}/runs")
            note = page.locator(f"tr[data-run-id='{delayed.id}'] td.note .truncate")
            expect(note).to_have_text(re.compile(
                r"^start due since (\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d UTC$"))
            assert [app.runs.get(r.id).status for r in (delayed, waiting)] == [
                "scheduled", "waiting"]
    finally:
        app.close()


def test_a_long_correlation_key_wraps_inside_the_waiting_callout(
    stack: Dashboard, page: Page
) -> None:
    user = "merchant-" + "0123456789abcdef" * 12
    run = stack.app.start("send-email", {"user": user})
    stack.wait_status(run.id, "waiting")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(stack.at(f"/runs/{run.id}"))
    key = page.locator("#waiting-for h2 code").nth(1)
    expect(key).to_have_text(f"user:{user}")
    callout = page.locator("#waiting-for .callout-text").bounding_box()
    box = key.bounding_box()
    assert callout is not None and box is not None
    assert box["x"] + box["width"] <= callout["x"] + callout["width"] + 1, \
        "the correlation key runs out of the callout"
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280


def test_a_waiting_runs_duration_and_the_oldest_queued_age_keep_pace_between_updates(
    stack: Dashboard, page: Page
) -> None:
    """With nothing changing in the database (no live update), a run's duration so far
    and the age of a queue's oldest queued run move on as the times beside them do."""
    app = stack.app
    waiting = app.start("send-email", {"user": "pace"})
    stack.wait_status(waiting.id, "waiting")
    app.queue("held").pause()
    app.queue("held").enqueue("send-email", {"user": "held"})
    page.clock.install()
    page.goto(stack.at(f"/runs/{waiting.id}"))
    so_far = page.locator("dd time[data-elapsed]")
    expect(so_far).to_have_text(re.compile(r" m?s$"))  # since it started, a moment ago
    page.clock.fast_forward("05:00")
    expect(so_far).to_have_text(re.compile(r"^5m( \d+s)?$"))
    page.goto(stack.at("/runs?status=waiting"))
    row = page.locator(f"tr[data-run-id='{waiting.id}'] time[data-elapsed]")
    page.clock.fast_forward("10:00")
    expect(row).to_have_text(re.compile(r"^1[05]m( \d+s)?$"))
    for path in ("/queues/held", "/queues"):
        page.goto(stack.at(path))
        age = page.locator("time[data-age]")
        page.clock.fast_forward("20:00")
        expect(age).to_have_text(re.compile(r"^(2\d|3\d|4\d)m$"))


def test_the_oldest_queued_run_of_days_ago_reads_with_its_date(
    db_url: str, store_kind: str, page: Page
) -> None:
    """``waiting since 09:12:00 UTC`` would read as today for a run queued 3 days ago."""
    clock = FakeClock(datetime(2026, 3, 2, 9, 12, tzinfo=UTC).timestamp())
    app = StackShift(db_url, clock=clock)
    try:
        app.start("nightly-report", {"day": "2026-03-01"})  # no worker knows it
        clock.advance("3d")
        with serve(app, auth="open") as url:
            page.goto(f"{url}/queues/default")
            oldest = page.locator(".stat", has_text="Oldest queued")
            expect(oldest.locator(".stat-value")).to_have_text("3d")
            expect(oldest.locator(".stat-foot")).to_have_text(
                "waiting since 2026-03-02 09:12:00 UTC")
            clock.set(datetime(2026, 3, 2, 9, 13, tzinfo=UTC).timestamp())
            page.reload()
            expect(oldest.locator(".stat-foot")).to_have_text("waiting since 09:12:00 UTC")
    finally:
        app.close()


def test_a_huge_error_stays_a_few_lines_in_the_attempts_table(
    stack: Dashboard, page: Page
) -> None:
    """The error box above shows it in full; its attempt row stays a row."""
    report = stack.app.start("render-report", {"title": "row " * 800})
    stack.wait_status(report.id, "failed")
    page.goto(stack.at(f"/runs/{report.id}"))
    cell = page.locator("#attempts tr[data-attempt='1'] td.note")
    expect(cell).to_contain_text("NonRetriableError")
    expect(cell.locator(".text-failed")).to_have_attribute(
        "title", re.compile(r"^NonRetriableError: cannot render (row ){799}row ?$"))
    box = cell.bounding_box()
    assert box is not None and box["height"] < 100, f"the attempt row is {box} tall"


def test_an_empty_runs_list_says_there_are_no_runs_yet(stack: Dashboard, page: Page) -> None:
    """No run at all is not the same as no run matching the filters."""
    page.goto(stack.url)
    expect(page.locator("td.empty")).to_contain_text("No runs yet.")
    expect(page.locator("td.empty code")).to_have_text(["stackshift start JOB", "app.start()"])
    page.goto(stack.at("/runs?status=failed"))
    expect(page.locator("td.empty")).to_have_text("No runs match these filters.")


def test_a_refused_filter_shows_no_runs_or_events_outside_the_filters(
    stack: Dashboard, page: Page
) -> None:
    """A stale cursor is reported; the page does not fall back to everything."""
    app = stack.app
    resized = app.start("resize-image", {"image": 1})
    failed = app.start("sync-invoice", {"invoice": "in_9"})
    stack.wait_status(resized.id, "completed")
    stack.wait_status(failed.id, "failed")
    app.events.send("email.verified", {"ok": True}, correlation_key="user:ada")
    app.events.send("payment.settled", {"ok": True}, correlation_key="order:1")

    page.goto(stack.at("/runs?job=sync-invoice&cursor=run_stale"))
    expect(page.locator(".flash-error")).to_contain_text("cursor 'run_stale'")
    expect(page.locator(f"tr[data-run-id='{resized.id}']")).to_have_count(0)
    page.goto(stack.at("/events?name=payment.settled&cursor=evt_stale"))
    expect(page.locator(".flash-error")).to_contain_text("cursor 'evt_stale'")
    expect(page.locator("#events-table")).not_to_contain_text("email.verified")
    # A job that is not a name is refused, as the SDK refuses it; an empty one is no filter.
    page.goto(stack.at("/runs?job=sync%20invoice"))
    expect(page.locator(".flash-error")).to_contain_text("job name 'sync invoice' is invalid")
    expect(page.locator("tr[data-run-id]")).to_have_count(0)
    page.goto(stack.at("/events?name=&key="))
    expect(page.locator(".flash-error")).to_have_count(0)
    expect(page.locator("#events-table")).to_contain_text("email.verified")
    expect(page.locator("#events-table")).to_contain_text("payment.settled")


def test_a_cut_off_error_in_the_runs_and_dead_letter_lists_reads_in_full_on_hover(
    stack: Dashboard, page: Page
) -> None:
    report = stack.app.start("render-report", {"title": "quarterly-" * 40})
    stack.wait_status(report.id, "failed")
    full = "NonRetriableError: cannot render " + "quarterly-" * 40
    for path in ("/runs", "/queues/reports"):
        page.goto(stack.at(path))
        note = page.locator(f"tr[data-run-id='{report.id}'] td.note .truncate")
        expect(note).to_have_text(full)
        assert note.evaluate("e => e.scrollWidth > e.clientWidth"), f"not cut off on {path}"
        expect(note).to_have_attribute("title", full)


def test_logs_and_timeline_entries_after_a_long_sleep_read_with_their_date(
    db_url: str, store_kind: str, page: Page
) -> None:
    """Two log lines three days apart must not read as five seconds apart."""
    clock = FakeClock(datetime(2026, 3, 2, 9, 12, tzinfo=UTC).timestamp())
    app = StackShift(db_url, clock=clock)

    @app.job("slow-batch")
    def batch(ctx: Any) -> None:
        ctx.log.info("before the nap")
        ctx.step.sleep("nap", "3d")
        ctx.log.info("after the nap")

    try:
        run = app.start("slow-batch")
        run_until_idle(app)
        clock.advance(3 * 86400 + 5)
        run_until_idle(app)
        assert app.runs.get(run.id).status == "completed"
        with serve(app, auth="open") as url:
            page.goto(f"{url}/runs/{run.id}")
            times = page.locator("#logs .log-time").all_text_contents()
            assert times == ["09:12:00.000"] + ["2026-03-05 09:12:05.000"] * 2, times
            line = page.locator("#logs .log-line").last
            stamp, level = line.locator(".log-time").bounding_box(), \
                line.locator(".log-level").bounding_box()
            assert stamp is not None and level is not None
            assert stamp["x"] + stamp["width"] <= level["x"], "the date runs into the level"
            entries = page.locator("#raw-timeline tr td:first-child").all_text_contents()
            assert entries[0] == "09:12:00.000", entries
            assert entries[-1] == "2026-03-05 09:12:05.000", entries
    finally:
        app.close()


def test_timeline_entries_give_their_times_and_durations_as_times_and_durations(
    db_url: str, store_kind: str, page: Page
) -> None:
    """A retry's next attempt, a sleep's end and a step's duration read as the rest of
    the page reads them, not as epoch seconds (1772619180.0) or bare seconds."""
    clock = FakeClock(datetime(2026, 3, 2, 9, 12, tzinfo=UTC).timestamp())
    app = StackShift(db_url, clock=clock)

    @app.job("nightly-report", max_attempts=2, backoff={"base": "30s", "jitter": False})
    def report(ctx: Any) -> None:
        ctx.step.run("load", lambda: 1)
        if ctx.run.attempt == 1:
            raise ConnectionError("warehouse timed out")
        ctx.step.sleep("cool-down", "3d")

    try:
        run = app.start("nightly-report")
        run_until_idle(app)
        clock.advance(30)
        run_until_idle(app)
        assert app.runs.get(run.id).status == "waiting"
        with serve(app, auth="open") as url:
            page.goto(f"{url}/runs/{run.id}")
            rows = page.locator("#raw-timeline tr")
            details = {row.locator("td").nth(1).text_content():
                       row.locator("td").last.text_content() for row in rows.all()}
            assert details["run.retrying"] == \
                '{"from": "running", "next_attempt_at": "09:12:30.000"}', details
            assert '"until": "2026-03-05 09:12:30.000"' in details["run.waiting"], details
            assert '"duration": "<1 ms"' in details["step.completed"], details
    finally:
        app.close()


def test_a_long_job_name_in_the_breadcrumbs_wraps_across_a_narrow_screen(
    stack: Dashboard, page: Page
) -> None:
    """Not a one-word-wide column beside the run id."""
    long_name = "reconcile-" + "ledger-entries-for-every-merchant-" * 5 + "x"
    run = stack.app.start(long_name, {"merchant": 1})
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(stack.at(f"/runs/{run.id}"))
    link = page.locator("nav.crumbs a").nth(1)
    expect(link).to_have_text(long_name)
    box = link.bounding_box()
    assert box is not None and box["height"] < 80, f"the job's crumb is {box}"


def test_retrying_selected_dead_letters_another_operator_retried_says_so(
    stack: Dashboard, page: Page
) -> None:
    first, second = (stack.app.start("sync-invoice", {"invoice": f"in_{i}"}) for i in (1, 2))
    for run in (first, second):
        stack.wait_status(run.id, "failed")
    page.goto(stack.at("/queues/billing"))
    dead = page.locator("#dead-letters tbody tr[data-run-id]")
    expect(dead).to_have_count(2)
    dead.locator("input[type=checkbox]").nth(0).check()
    dead.locator("input[type=checkbox]").nth(1).check()
    stack.app.runs.retry(first.id)  # meanwhile, from the CLI or another tab
    page.locator("#retry-selected").click()
    expect(page.locator(".flash-ok")).to_have_text(
        "1 of 2 selected runs queued for a new attempt; 1 was no longer failed.")


def test_a_stale_dead_letter_cursor_keeps_the_queue_page(stack: Dashboard, page: Page) -> None:
    failed = stack.app.start("sync-invoice", {"invoice": "in_4"})
    stack.wait_status(failed.id, "failed")
    response = page.goto(stack.at("/queues/billing?cursor=run_stale"))
    assert response is not None and response.status == 200
    expect(page.locator(".stat-failed .stat-value")).to_have_text("1")
    expect(page.locator("#dead-letters .flash-error")).to_contain_text("cursor 'run_stale'")
    expect(page.locator("#dead-letters tbody tr[data-run-id]")).to_have_count(0)
    expect(page.locator("#dead-letters td.empty")).not_to_contain_text("no run of this queue")
    page.get_by_role("link", name="← Newest").click()
    expect(page.locator(f"#dead-letters tr[data-run-id='{failed.id}']")).to_have_count(1)


def test_a_refused_state_prefix_is_shown_beside_its_search_box(
    stack: Dashboard, page: Page
) -> None:
    """Like the runs and events filters: the error above the results, the box to fix it."""
    stack.app.state.set("imports:1", 1)
    response = page.goto(stack.at("/state?prefix=imports%00"))
    assert response is not None and response.status == 200
    expect(page.locator(".flash-error")).to_contain_text("NUL character")
    expect(page.locator("input[name=prefix]")).to_be_visible()
    expect(page.locator("td.key-cell")).to_have_count(0)


def test_state_pages_through_every_key_of_a_prefix_once_in_key_order(
    stack: Dashboard, page: Page
) -> None:
    """Pages of 50: the next-page link starts after the page's last key, whatever it holds."""
    app = stack.app
    # It ends the first page, so the first next-page link carries it as the cursor:
    # spaces (one at the end), '&', '#', '+', '%' and characters beyond ASCII.
    odd = "batch:048 naïve & co #1 + 50% ✓ "
    keys = [f"batch:{i:03d}" for i in range(120)] + [odd]
    for key in keys:
        app.state.set(key, {"len": len(key)})
    for other in ("batch", "batch;000", "batcg:9", "Batch:1", "other:1"):
        app.state.set(other, 0)

    page.goto(stack.at("/state"))
    page.fill("input[name=prefix]", "batch:")
    page.keyboard.press("Enter")
    cells = page.locator("td.key-cell")
    expect(cells).to_have_count(50)
    expect(page.get_by_role("link", name="← First")).to_have_count(0)
    def keys_shown() -> list[str]:  # a key with a blank at an end is shown in quotes
        return [text[1:-1] if text.startswith('"') else text
                for text in cells.all_text_contents()]

    shown = keys_shown()
    assert cells.last.text_content() == f'"{odd}"' and shown[-1] == odd
    for count in (50, 21):
        before = page.url
        page.get_by_role("link", name="Next →").click()
        page.wait_for_url(lambda url, before=before: url != before)
        expect(cells).to_have_count(count)
        assert parse_qs(urlsplit(page.url).query) == {"prefix": ["batch:"],
                                                      "cursor": [shown[-1]]}
        expect(page.locator("input[name=prefix]")).to_have_value("batch:")
        expect(page.locator("footer.pager")).to_contain_text(f"{count} shown · in key order")
        shown += keys_shown()
    expect(page.get_by_role("link", name="Next →")).to_have_count(0)
    assert shown == sorted(keys)

    # The last page keeps within a phone's screen; "← First" leads back with the prefix.
    page.set_viewport_size({"width": 390, "height": 844})
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the last page of keys is {width}px wide on a 390px screen"
    page.get_by_role("link", name="← First").click()
    expect(cells.first).to_have_text("batch:000")
    expect(cells).to_have_count(50)
    expect(page.locator("input[name=prefix]")).to_have_value("batch:")


def test_a_state_prefix_keeps_its_spaces_in_the_list_and_the_next_page_link(
    stack: Dashboard, page: Page
) -> None:
    """The prefix "my key " lists "my key 1" and not "my keyring", on every page."""
    app = stack.app
    keys = [f"my key {i}" for i in range(1, 56)]
    for key in [*keys, "my keyring", "my keys"]:
        app.state.set(key, 1)

    page.goto(stack.at("/state"))
    page.fill("input[name=prefix]", "my key ")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"prefix=my\+key\+"))
    cells = page.locator("td.key-cell")
    expect(cells).to_have_count(50)
    expect(page.locator("input[name=prefix]")).to_have_value("my key ")
    shown = cells.all_text_contents()
    link = page.get_by_role("link", name="Next →")
    assert parse_qs(urlsplit(link.get_attribute("href") or "").query)["prefix"] == ["my key "]
    link.click()
    page.wait_for_url(re.compile(r"cursor="))
    expect(cells).to_have_count(5)
    expect(page.locator("input[name=prefix]")).to_have_value("my key ")
    shown += cells.all_text_contents()
    assert shown == sorted(keys)
    # Typed without the space, the prefix lists the other keys too.
    page.goto(stack.at("/state?prefix=my%20key"))
    expect(cells).to_have_count(50)
    page.goto(stack.at("/state?prefix=my%20key&cursor=my%20key%209"))
    expect(cells).to_have_text(["my keyring", "my keys"])


def test_a_refused_state_cursor_shows_no_keys_and_leads_back_to_the_first_page(
    stack: Dashboard, page: Page
) -> None:
    """As a refused runs cursor: the error above the results, no key outside the page."""
    for key in ("imports:1", "imports:2", "other:1"):
        stack.app.state.set(key, 1)
    response = page.goto(stack.at("/state?prefix=imports%3A&cursor=imports%3A1%00"))
    assert response is not None and response.status == 200
    expect(page.locator(".flash-error")).to_have_text(
        "cursor must not contain the NUL character (U+0000)")
    expect(page.locator("td.key-cell")).to_have_count(0)
    expect(page.locator("#state-table td.empty")).to_have_text(
        "No more live keys on this page: go back to the first.")
    expect(page.locator("input[name=prefix]")).to_have_value("imports:")
    page.get_by_role("link", name="← First").click()
    expect(page.locator("td.key-cell")).to_have_text(["imports:1", "imports:2"])
    # A cursor that is not (or no longer) a key still pages on from where it sorts.
    page.goto(stack.at("/state?prefix=imports%3A&cursor=imports%3A1%20deleted"))
    expect(page.locator(".flash-error")).to_have_count(0)
    expect(page.locator("td.key-cell")).to_have_text(["imports:2"])


def test_the_state_page_lists_live_locks_and_breaks_one_after_a_confirm(
    stack: Dashboard, page: Page
) -> None:
    app = stack.app
    app.state.set("imports:7", {"done": 1})
    page.goto(stack.at("/state"))
    expect(page.locator("#locks-table td.empty")).to_have_text(
        "No lock is held. Handlers take one with with ctx.state.lock(key):.")
    # A refused locks cursor: the error above the results, the keys still listed.
    page.goto(stack.at("/state?locks_cursor=a%00"))
    expect(page.locator(".flash-error")).to_have_text(
        "locks_cursor must not contain the NUL character (U+0000)")
    expect(page.locator("#locks-table td.empty")).to_have_text(
        "No more live locks on this page: go back to the first.")
    expect(page.locator("#state-table td.key-cell")).to_have_text(["imports:7"])
    with contextlib.ExitStack() as locks:
        stuck = locks.enter_context(app.state.lock("imports:7", ttl="1h"))
        for i in range(54):
            locks.enter_context(app.state.lock(f"batch:{i:03d}", ttl="1m"))
        ran_out = locks.enter_context(app.state.lock("imports:8", ttl=0.2))
        time.sleep(0.3)  # its TTL ran out: not listed
        page.goto(stack.at("/state"))
        rows = page.locator("#locks-table tr[data-lock-key]")
        expect(rows).to_have_count(50)
        expect(rows.first.locator("td.key-cell")).to_have_text("batch:000")
        page.locator("#locks-table").get_by_role("link", name="Next →").click()
        page.wait_for_url(re.compile(r"locks_cursor=batch%3A049"))
        expect(rows.locator("td.key-cell")).to_have_text(
            ["batch:050", "batch:051", "batch:052", "batch:053", "imports:7"])
        expect(page.locator("#state-table td.key-cell")).to_have_text(["imports:7"])
        # A lock broken on the second page: back on that page, not the first.
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#locks-table tr[data-lock-key='batch:053']").get_by_role(
            "button", name="Break").click()
        expect(page.locator(".flash-ok")).to_contain_text("Broke the lock on 'batch:053'")
        assert parse_qs(urlsplit(page.url).query) == {"locks_cursor": ["batch:049"]}
        expect(rows.locator("td.key-cell")).to_have_text(
            ["batch:050", "batch:051", "batch:052", "imports:7"])
        page.locator("#locks-table").get_by_role("link", name="← First").click()
        expect(rows).to_have_count(50)

        # The prefix filters the locks as it does the keys.
        page.fill("input[name=prefix]", "imports:")
        page.keyboard.press("Enter")
        row = page.locator("#locks-table tr[data-lock-key='imports:7']")
        expect(rows).to_have_count(1)
        expect(row).to_contain_text(stuck.holder)
        expect(row).to_contain_text(re.compile(r"in (59m|1h)"))
        # A lock taken in a handler links to its run; one whose owner did not say,
        # says so.
        run = app.start("resize-image", {"image": "holder"})
        app._service.lock_acquire("imports:9", "a-token", "1h", f"run {run.id} (attempt 2)")
        app._service.lock_acquire("imports:99", "b-token", "1h")
        page.goto(stack.at("/state?prefix=imports:9"))
        held = page.locator("#locks-table tr[data-lock-key='imports:9'] td").nth(1)
        expect(held).to_have_text(f"run {run.id} (attempt 2)")
        expect(held.get_by_role("link", name=run.id)).to_have_attribute(
            "href", re.compile(f"/runs/{run.id}$"))
        expect(page.locator("#locks-table tr[data-lock-key='imports:99'] td").nth(1)
               ).to_have_text("not said")
        app.state.break_lock("imports:9")
        app.state.break_lock("imports:99")
        page.goto(stack.at("/state?prefix=imports:"))

        # A break needs the page's CSRF token; a key no store can hold is refused.
        for form in ({"key": "imports:7"}, {"key": "imports:7", "csrf": "forged"}):
            assert page.request.post(stack.at("/state/locks/break"), form=form).status == 403
        csrf = page.locator("#locks-table input[name=csrf]").first.input_value()
        refused = page.request.post(stack.at("/state/locks/break"), max_redirects=0, form={
            "csrf": csrf, "key": json.dumps("imports:7\x00"), "prefix": "imports:"})
        assert refused.status == 303
        page.reload()
        expect(page.locator(".flash-error")).to_have_text(
            "state key must not contain the NUL character (U+0000)")
        # The form gives the key as a JSON string; one that is not is refused.
        assert page.request.post(stack.at("/state/locks/break"), max_redirects=0, form={
            "csrf": csrf, "key": "imports:7", "prefix": "imports:"}).status == 303
        page.reload()
        expect(page.locator(".flash-error")).to_have_text(
            "The form's lock key is not a JSON string: reload the page and try again.")
        expect(rows).to_have_count(1)
        assert stuck.extend() is True

        # Dismissed, the confirm breaks nothing.
        messages: list[str] = []
        page.once("dialog", lambda dialog: (messages.append(dialog.message), dialog.dismiss()))
        row.get_by_role("button", name="Break").click()
        expect(rows).to_have_count(1)
        assert messages == ["Break the lock on imports:7? Its owner may still be running: "
                            "another may take the lock at once."]
        page.once("dialog", lambda dialog: dialog.accept())
        row.get_by_role("button", name="Break").click()
        expect(page.locator(".flash-ok")).to_have_text(
            "Broke the lock on 'imports:7': its owner's extend() now returns False, and "
            "its block ends with the lock lost.")
        assert parse_qs(urlsplit(page.url).query) == {"prefix": ["imports:"]}
        expect(page.locator("#locks-table td.empty")).to_have_text(
            "No lock is held on a key starting with imports:.")
        expect(page.locator("#state-table td.key-cell")).to_have_text(["imports:7"])
        assert stuck.extend() is False  # its owner finds out
        assert [e["key"] for e in app.state.locks("batch:", 1)] == ["batch:000"]
        assert len(app.state.locks("batch:")) == 53
    assert stuck.lost is True and ran_out.lost is True
    assert app.state.locks() == []


def test_the_state_page_breaks_a_lock_whose_key_holds_line_breaks(
    stack: Dashboard, page: Page
) -> None:
    """A browser sends a line break in a form field as CR LF: the Break button still
    breaks the lock on the key as it is, and no other."""
    app = stack.app
    keys = ["report:\nmonthly", "report:\rweekly", "report:\r\ndaily"]
    locks = [app.state.lock(key, ttl="1h") for key in keys]
    for lock in locks:
        lock.__enter__()
    page.on("dialog", lambda dialog: dialog.accept())
    for key, lock in zip(keys, locks, strict=True):
        page.goto(stack.at("/state?prefix=report:"))
        rows = page.locator("#locks-table tr[data-lock-key]")
        expect(rows).to_have_count(len(app.state.locks("report:")))
        rows.filter(has_text=key.split()[-1]).get_by_role("button", name="Break").click()
        expect(page.locator(".flash-ok")).to_have_text(
            f"Broke the lock on {key!r}: its owner's extend() now returns False, and its "
            "block ends with the lock lost.")
        assert key not in [e["key"] for e in app.state.locks("report:")]
        assert lock.extend() is False  # its owner finds out
    assert app.state.locks() == []


def _box(page: Page, selector: str) -> dict[str, float]:
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not drawn"
    return box


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])


def test_a_short_backoffs_label_never_covers_the_next_attempts_bar(
    db_url: str, store_kind: str, page: Page
) -> None:
    """A retry 291 ms after a 2 s attempt: its dashed line is too short for "retry in
    291 ms", so the label goes where there is room (before the line), is shortened,
    or is left out for the line's tooltip, at every width; it never covers attempt 2."""
    clock = FakeClock(datetime(2026, 3, 2, 9, 12, tzinfo=UTC).timestamp())
    app = StackShift(db_url, clock=clock)

    @app.job("sync-ledger", max_attempts=3,
             backoff={"base": 0.291, "factor": 2, "jitter": False})
    def sync(ctx: Any) -> None:
        clock.advance(2.0 if ctx.run.attempt == 1 else 0.5)
        if ctx.run.attempt == 1:
            raise ConnectionError("ledger reset the connection")

    try:
        run = app.start("sync-ledger")
        run_until_idle(app)
        clock.advance(0.291)
        run_until_idle(app)
        assert app.runs.get(run.id).status == "completed"
        with serve(app, auth="open") as url:
            page.goto(f"{url}/runs/{run.id}")
            label = page.locator("#waterfall .bar-backoff .bar-label")
            expect(page.locator("#waterfall .bar-backoff")).to_have_attribute(
                "title", "backoff before attempt 2: 291 ms")
            nxt = "#waterfall .wf-attempt[data-attempt='2'] .bar-attempt-completed"
            for width in (1440, 1100, 900, 390):
                page.set_viewport_size({"width": width, "height": 900})
                page.wait_for_timeout(100)  # the resize handler places the label again
                if width >= 1100:  # room before the line: the whole label shows there
                    expect(label).to_have_text("retry in 291 ms")
                    expect(label).to_be_visible()
                if not label.is_visible():
                    continue
                drawn = _box(page, "#waterfall .bar-backoff .bar-label")
                assert not _overlap(drawn, _box(page, nxt)), (width, drawn, _box(page, nxt))
                track = _box(page, "#waterfall .wf-attempt[data-attempt='2'] .wf-track")
                assert track["x"] <= drawn["x"], (width, drawn, track)
                assert drawn["x"] + drawn["width"] <= track["x"] + track["width"], (width, drawn)
    finally:
        app.close()


def test_a_wait_or_sleep_label_stays_within_its_bar_and_clear_of_the_event(
    db_url: str, page: Page
) -> None:
    """A wait of 15.8 s between steps of a few ms is drawn shortened: its label
    ("waited 15.8 s") is shortened to its duration, or left out for the bar's
    tooltip, at every width; it never runs past its bar nor under the event that
    ended the wait. So is a sleep's."""
    clock = FakeClock(datetime(2026, 3, 2, 9, 12, tzinfo=UTC).timestamp())
    app = StackShift(db_url, clock=clock)

    @app.job("ship")
    def ship(ctx: Any) -> None:
        ctx.step.run("prep", lambda: clock.advance(0.003))
        ctx.step.wait_for_event("order.shipped", correlation_key="o1", timeout="1h")
        ctx.step.run("finish", lambda: clock.advance(0.004))
        ctx.step.sleep("cool-down", "9m")
        ctx.step.run("close", lambda: clock.advance(0.002))

    try:
        run = app.start("ship")
        run_until_idle(app)
        clock.advance(15.8)
        app.events.send("order.shipped", correlation_key="o1")
        run_until_idle(app)
        clock.advance("9m")
        run_until_idle(app)
        assert app.runs.get(run.id).status == "completed"
        with serve(app, auth="open") as url:
            page.goto(f"{url}/runs/{run.id}")
            for width in (1440, 1100, 900, 390):
                page.set_viewport_size({"width": width, "height": 900})
                page.wait_for_timeout(100)  # the resize handler fits the labels again
                for kind, whole, short in (("wait", "waited 15.8 s", "15.8 s"),
                                           ("sleep", "slept 9m", "9m")):
                    bar = f"#waterfall .bar-{kind}"
                    label = page.locator(f"{bar} .bar-label")
                    if width == 1440:  # room for it, shortened or whole
                        expect(label).to_be_visible()
                        if os.environ.get("SHOT"):
                            page.locator("#waterfall").screenshot(path=os.environ["SHOT"])
                    if not label.is_visible():
                        continue
                    assert label.text_content() in (whole, short), (width, kind)
                    drawn = _box(page, f"{bar} .bar-label")
                    assert label.evaluate("e => e.scrollWidth <= e.clientWidth"), (width, kind)
                    box = _box(page, bar)
                    assert drawn["x"] + drawn["width"] <= box["x"] + box["width"], (
                        width, kind, drawn, box)
                    if kind == "wait":
                        event = _box(page, "#waterfall .wf-wait .mark-event")
                        assert not _overlap(drawn, event), (width, drawn, event)
    finally:
        app.close()


def test_the_queue_charts_axis_gives_the_year_when_it_reaches_into_last_year(
    db_url: str, page: Page
) -> None:
    """On 2 January the last 7 days start in December of the year before: its labels
    carry the year; the last hour and the last 24 hours keep short labels."""
    clock = FakeClock(datetime(2027, 1, 2, 10, 0, tzinfo=UTC).timestamp())
    app = StackShift(db_url, clock=clock)
    try:
        app.start("close-books", queue_name="ledger")
        with serve(app, auth="open") as url:
            labels = page.locator(".chart-axis span")
            page.goto(f"{url}/queues/ledger?window=7d")
            expect(labels).to_have_count(3)
            first, middle, last = labels.all_text_contents()
            assert re.fullmatch(r"2026-12-2\d \d\d:\d\d", first), first
            assert re.fullmatch(r"20(26-12|27-01)-\d\d \d\d:\d\d", middle), middle
            assert last == "now"
            for window in ("1h", "24h"):
                page.goto(f"{url}/queues/ledger?window={window}")
                shown = labels.all_text_contents()
                assert all(re.fullmatch(r"01-0[12] \d\d:\d\d", text) for text in shown[:2]), (
                    window, shown)
    finally:
        app.close()


def test_jobs_page_flags_a_missing_worker_only_for_runs_that_are_due(
    db_url: str, store_kind: str, page: Page
) -> None:
    """Runs due in days need no worker yet: the page says when the next is due, and
    flags the job once a run is due with no live worker to take it."""
    clock = FakeClock(datetime(2026, 3, 2, 9, 12, tzinfo=UTC).timestamp())
    app = StackShift(db_url, clock=clock)

    @app.job("nightly-export", max_attempts=3, backoff={"base": "2d", "cap": "30d",
                                                         "jitter": False})
    def export(ctx: Any) -> None:
        raise ConnectionError("warehouse API refused the connection")

    try:
        retried = app.start("nightly-export")
        run_until_idle(app)  # attempt 1 fails: the next one is in 2 days
        assert app.runs.get(retried.id).status == "retrying"
        app.start("archive-orders", delay="3d")  # no worker knows this job
        app.start("send-digest")  # due now, and no worker knows it either
        with serve(app, auth="open") as url:
            page.goto(f"{url}/jobs")
            export_row = page.locator("tr[data-job=nightly-export]")
            archive_row = page.locator("tr[data-job=archive-orders]")
            digest_row = page.locator("tr[data-job=send-digest]")
            expect(digest_row.locator(".pill-failed")).to_have_text("No live worker · 1 due")
            for row, due_in in ((export_row, "in 2d"), (archive_row, "in 3d")):
                expect(row.locator(".pill-failed")).to_have_count(0)
                expect(row.locator(".next-due")).to_have_text(f"next run due {due_in}")
                expect(row.locator(".next-due time")).to_have_attribute(
                    "title", re.compile(r"^2026-03-0[45] 09:12:00\.000 UTC$"))

            # A backoff of days: the list gives the next attempt's date, not only a time.
            page.goto(f"{url}/runs")
            note = page.locator(f"tr[data-run-id='{retried.id}'] td.note .truncate")
            expect(note).to_have_text("next attempt at 2026-03-04 09:12:00 UTC · "
                                      "ConnectionError: warehouse API refused the connection")
            expect(note).to_have_attribute("title", re.compile(r"^next attempt at 2026-03-04 "))

            clock.advance("2d")
            page.reload()
            expect(note).to_contain_text("next attempt at 09:12:00 UTC · ConnectionError")
            page.goto(f"{url}/jobs")
            expect(export_row.locator(".pill-failed")).to_have_text("No live worker · 1 due")
            expect(export_row.locator(".next-due")).to_have_count(0)
            expect(archive_row.locator(".pill-failed")).to_have_count(0)
            expect(archive_row.locator(".next-due")).to_have_text("next run due in 1d")

            # On a phone the flag comes right after the runs, within the screen; the
            # newest run's time moves under the job's name.
            page.set_viewport_size({"width": 390, "height": 844})
            page.reload()
            flag = export_row.locator(".pill-failed").bounding_box()
            assert flag is not None and flag["x"] + flag["width"] <= 390, f"the flag is at {flag}"
            expect(page.locator("#jobs-table th", has_text="Newest run")).to_be_hidden()
            expect(export_row.locator(".newest-inline")).to_contain_text("newest ")
    finally:
        app.close()


def test_a_long_idempotency_key_reads_in_full_on_hover_and_wraps_on_a_phone(
    stack: Dashboard, page: Page
) -> None:
    key = "nightly-export:2026-11-29:" + "warehouse-eu-central-1-" * 12
    run = stack.app.start("resize-image", {"image": "big"}, idempotency_key=key)
    stack.wait_status(run.id, "completed")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(stack.at(f"/runs/{run.id}"))
    shown = page.locator("#run-idempotency-key")
    expect(shown).to_have_attribute("title", key)
    assert shown.evaluate("e => e.scrollWidth > e.clientWidth"), "the key is not cut off"
    facts = page.locator("dl.facts").bounding_box()
    box = shown.bounding_box()
    assert facts is not None and box is not None
    assert box["x"] + box["width"] <= facts["x"] + facts["width"]

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    expect(shown).to_have_text(key)
    assert shown.evaluate("e => e.scrollWidth <= e.clientWidth"), "the key is cut off"
    facts = page.locator("dl.facts").bounding_box()
    box = shown.bounding_box()
    assert facts is not None and box is not None
    assert box["x"] + box["width"] <= facts["x"] + facts["width"], "the key leaves its card"
    assert box["height"] > 40, "the key does not wrap"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_runs_list_on_a_laptop_screen_folds_run_ids_and_keeps_the_details_readable(
    stack: Dashboard, page: Page
) -> None:
    """At 1280 px the full ids left the details column a word wide: the ids keep
    their distinct end (and read whole on hover and when copied)."""
    run = stack.app.start("send-email", {"user": "ada"})
    stack.wait_status(run.id, "waiting")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(stack.url)
    row = page.locator(f"tr[data-run-id='{run.id}']")
    note = row.locator("td.note .truncate")
    expect(note).to_have_text("waits for email.verified · user:ada")
    assert note.evaluate("e => e.scrollWidth <= e.clientWidth"), "the details are cut off"
    link = row.locator("a.run-link")
    expect(link).to_have_attribute("title", run.id)
    expect(link).to_have_text(run.id)  # the whole id is there to copy
    box = link.bounding_box()
    assert box is not None and box["width"] < 140, f"the run id takes {box}"
    assert link.evaluate("e => e.scrollWidth > e.clientWidth"), "the id is not folded"
    # What shows is the end of the id: it begins where the link's box ends, minus it.
    end = page.evaluate(
        """id => { const a = document.querySelector(`a.run-link[title='${id}']`);
                   const r = document.createRange(); const t = a.firstChild;
                   r.setStart(t, t.length - 1); r.setEnd(t, t.length);
                   const last = r.getBoundingClientRect(), box = a.getBoundingClientRect();
                   return box.right - last.right; }""", run.id)
    assert abs(end) < 2, f"the id's last character is {end}px from the link's right edge"
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280


def test_run_page_on_a_phone_keeps_the_attempt_names_and_spaces_its_cards_evenly(
    stack: Dashboard, page: Page
) -> None:
    """The waterfall's attempt rows read "Attempt 1" and "Not started" (their detail
    gives way), and payload and result stack with the gap of every other card."""
    waiting = stack.app.start("send-email", {"user": "ada"})
    later = stack.app.start("resize-image", {"image": "later"}, delay="2h")
    stack.wait_status(waiting.id, "waiting")
    page.set_viewport_size({"width": 390, "height": 844})
    for run, name, status in ((waiting, "Attempt 1", "waiting"),
                              (later, "Not started", "scheduled")):
        page.goto(stack.at(f"/runs/{run.id}"))
        row = page.locator("#waterfall .wf-attempt").first
        label = row.locator(".wf-name")
        expect(label).to_have_text(name)
        assert label.evaluate("e => e.scrollWidth <= e.clientWidth"), f"{name} is cut off"
        expect(row.locator(".badge")).to_have_text(status)
        payload = page.locator("#payload").locator("xpath=..").bounding_box()
        result = page.locator("#result").bounding_box()
        attempts = page.locator("#attempts").bounding_box()
        assert payload is not None and result is not None and attempts is not None
        gap = result["y"] - (payload["y"] + payload["height"])
        below = attempts["y"] - (result["y"] + result["height"])
        assert gap == below, f"payload to result {gap}px, result to attempts {below}px"
    # A run that waits to start: the badge says so, the detail how long it has waited.
    expect(page.locator("#waterfall .wf-attempt .wf-detail")).to_have_text(
        re.compile(r"^(<1 ms|\d+(\.\d+)? m?s|\d+m( \d+s)?)$"))


def test_a_queue_with_nothing_finished_charts_an_empty_hour(
    stack: Dashboard, page: Page
) -> None:
    """Not a blank cell beside the other queues' charts."""
    done = stack.app.start("resize-image", {"image": 1})
    stack.wait_status(done.id, "completed")
    stack.app.start("resize-image", {"image": 2}, delay="2h", queue_name="later")
    page.goto(stack.at("/queues"))
    for name in ("media", "later"):
        row = page.locator("#queues-table tr", has=page.locator(f"a.queue-link:text-is('{name}')"))
        expect(row.locator("svg.spark g")).to_have_count(60)
    later = page.locator("#queues-table tr", has=page.locator("a.queue-link:text-is('later')"))
    expect(later.locator("svg.spark rect.none")).to_have_count(60)


def test_a_custom_time_range_fits_a_phone(stack: Dashboard, page: Page) -> None:
    """Both times of a custom range stay on the screen, whole, side by side."""
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(stack.at("/runs?created=custom&from=2026-12-01T00:00&to=2026-12-02T23:45"))
    form = page.locator("form.filters").bounding_box()
    assert form is not None
    boxes = []
    for name in ("from", "to"):
        field = page.locator(f".range input[name={name}]")
        expect(field).to_be_visible()
        box = field.bounding_box()
        assert box is not None
        assert box["x"] >= form["x"] and box["x"] + box["width"] <= form["x"] + form["width"], \
            f"the {name} time leaves the form: {box}"
        boxes.append(box)
    assert boxes[0]["y"] == boxes[1]["y"], "the two times are not on one row"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_a_short_idempotency_key_keeps_its_place_beside_the_priority_on_a_phone(
    stack: Dashboard, page: Page
) -> None:
    run = stack.app.start("resize-image", {"image": "small"}, idempotency_key="receipt:order_3011")
    stack.wait_status(run.id, "completed")
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(stack.at(f"/runs/{run.id}"))
    key = page.locator("#run-idempotency-key")
    expect(key).to_have_text("receipt:order_3011")
    assert key.evaluate("e => e.scrollWidth <= e.clientWidth"), "the key is cut off"
    priority = page.locator("dl.facts > div", has_text="Priority").bounding_box()
    box = key.bounding_box()
    assert priority is not None and box is not None
    assert priority["x"] > box["x"] + box["width"], "the priority is not beside the key"


def test_the_state_page_expands_a_large_value_only_in_part(
    stack: Dashboard, page: Page
) -> None:
    """A value may hold 256 KiB: the page shows its first 10,000 characters and
    says how many more there are, so a page of large values stays small."""
    app = stack.app
    big = {"rows": [{"id": i, "name": "x" * 20} for i in range(6000)]}
    for i in range(5):
        app.state.set(f"exports:{i}", big)
    app.state.set("exports:small", {"rows": [1, 2]})
    response = page.goto(stack.at("/state?prefix=exports:"))
    assert response is not None and response.status == 200
    assert len(response.body()) < 200_000  # 5 values of 250 KB in full: 2.7 MB
    first = page.locator("tr", has=page.locator("td.key-cell", has_text="exports:0"))
    first.locator("summary").click()
    shown = first.locator("pre.code.json").text_content() or ""
    whole = json.dumps(big, indent=2, sort_keys=True, ensure_ascii=False)
    assert shown == whole[:10_000] + "…"
    expect(first.locator(".cut-note")).to_have_text(
        f"{len(whole) - 10_000:,} more characters not shown: stackshift state get exports:0"
        " or GET /v1/state/exports%3A0 gives the whole value.")
    small = page.locator("tr", has=page.locator("td.key-cell", has_text="exports:small"))
    expect(small.locator(".cut-note")).to_have_count(0)
    expect(small.locator("code")).to_have_text('{"rows": [1, 2]}')


def test_the_events_page_expands_a_large_payload_only_in_part(
    stack: Dashboard, page: Page
) -> None:
    """A payload may hold 1 MiB and the page is fetched again at every live update:
    it shows a payload's first 10,000 characters and says how many more there are."""
    app = stack.app
    big = {"rows": [{"id": i, "name": "x" * 20} for i in range(6000)]}
    sent = [app.events.send("export.ready", big, correlation_key=f"export:{i}")
            for i in range(5)]
    small = app.events.send("export.ready", {"rows": [1, 2]}, correlation_key="export:small")
    response = page.goto(stack.at("/events?name=export.ready"))
    assert response is not None and response.status == 200
    assert len(response.body()) < 200_000  # 5 payloads of 400 KB in full: 2.9 MB
    first = page.locator(f"tr[data-event-id='{sent[0].id}']")
    first.locator("summary").click()
    shown = first.locator("pre.code.json").text_content() or ""
    whole = json.dumps(big, indent=2, sort_keys=True, ensure_ascii=False)
    assert shown == whole[:10_000] + "…"
    expect(first.locator(".cut-note")).to_have_text(
        f"{len(whole) - 10_000:,} more characters not shown: stackshift events get {sent[0].id} or "
        f"GET /v1/events/{sent[0].id} gives the whole payload.")
    row = page.locator(f"tr[data-event-id='{small.id}']")
    expect(row.locator(".cut-note")).to_have_count(0)
    row.locator("summary").click()
    expect(row.locator("pre.code.json")).to_have_text(
        json.dumps({"rows": [1, 2]}, indent=2, sort_keys=True))


def test_an_expanded_payload_or_value_stays_open_when_the_page_updates_live(
    stack: Dashboard, page: Page
) -> None:
    """A payload or a value the reader expanded stays open when its table is
    replaced by a live update (another event received, another key set), and one
    the reader closed stays closed."""
    app = stack.app
    long = {"note": "y" * 120}
    first = app.events.send("export.ready", long, correlation_key="export:1")
    page.goto(stack.at("/events?name=export.ready"))
    opened = page.locator(f"tr[data-event-id='{first.id}'] details")
    opened.locator("summary").click()
    expect(opened).to_have_attribute("open", "")
    page.evaluate("document.activeElement.blur()")  # a block holding the focus is left
    later = app.events.send("export.ready", long, correlation_key="export:2")
    expect(page.locator(f"tr[data-event-id='{later.id}']")).to_have_count(1)
    expect(opened).to_have_attribute("open", "")
    expect(page.locator(f"tr[data-event-id='{later.id}'] details")).not_to_have_attribute(
        "open", "")

    app.state.set("exports:a", long)
    app.state.set("exports:b", long)
    page.goto(stack.at("/state?prefix=exports:"))
    value = page.locator("tr", has=page.locator("td.key-cell", has_text="exports:a")
                         ).locator("details")
    value.locator("summary").click()
    page.evaluate("document.activeElement.blur()")
    app.state.set("exports:c", long)
    expect(page.locator("td.key-cell", has_text="exports:c")).to_have_count(1)
    expect(value).to_have_attribute("open", "")
    value.locator("summary").click()  # closed again, it stays closed
    page.evaluate("document.activeElement.blur()")
    app.state.set("exports:d", long)
    expect(page.locator("td.key-cell", has_text="exports:d")).to_have_count(1)
    expect(value).not_to_have_attribute("open", "")


def test_state_lock_and_run_keys_that_begin_or_end_with_a_space_read_in_quotes(
    stack: Dashboard, page: Page
) -> None:
    """``"sku 2 "`` is not the key ``sku 2``: a state key, a lock's key and a run's
    idempotency and concurrency keys with a blank at an end show in quotes."""
    app = stack.app
    app.state.set("inventory:sku 2 ", 1)
    app.state.set("inventory:sku 2", 2)
    app._service.lock_acquire(" batch", "a-token", "1h")
    page.goto(stack.at("/state?prefix=inventory:"))
    expect(page.locator("td.key-cell")).to_have_text(['inventory:sku 2', '"inventory:sku 2 "'])
    page.goto(stack.at("/state"))
    expect(page.locator("#locks-table td.key-cell")).to_have_text('" batch"')
    run = app.start("sync-invoice", {"invoice": [], "reachable": True},
                    idempotency_key=" order 7 ", concurrency_key="tenant ")
    page.goto(stack.at(f"/runs/{run.id}"))
    expect(page.locator("#run-idempotency-key")).to_have_text('" order 7 "')
    expect(page.locator("dd", has_text="· key")).to_contain_text('· key "tenant "')
    app.state.break_lock(" batch")


def test_the_run_page_shows_a_large_payload_and_result_only_in_part(
    stack: Dashboard, page: Page
) -> None:
    """A run's payload and result may hold 1 MiB each, and the run page is fetched again
    whenever anything changes: each shows its first 10,000 characters and says how many
    more there are, and a small one reads whole."""
    rows = [{"id": i, "name": "x" * 20} for i in range(6000)]
    run = stack.app.start("sync-invoice", {"invoice": rows, "reachable": True})
    stack.wait_status(run.id, "completed")
    response = page.goto(stack.at(f"/runs/{run.id}"))
    assert response is not None and response.status == 200
    assert len(response.body()) < 200_000  # the payload and result in full: 1.2 MB
    for part, value in (("payload", {"invoice": rows, "reachable": True}),
                        ("result", {"synced": rows})):
        whole = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
        block = page.locator(f"#{part}")
        expect(block.locator("pre.code.json")).to_have_text(whole[:10_000] + "…")
        expect(block.locator(".cut-note")).to_have_text(
            f"{len(whole) - 10_000:,} more characters not shown: stackshift runs show "
            f"{run.id} --json or GET /v1/runs/{run.id} gives the whole {part}.")
    small = stack.app.start("sync-invoice", {"invoice": "in_1", "reachable": True})
    stack.wait_status(small.id, "completed")
    page.goto(stack.at(f"/runs/{small.id}"))
    expect(page.locator("#result pre.code.json")).to_have_text(
        json.dumps({"synced": "in_1"}, indent=2))
    expect(page.locator(".cut-note")).to_have_count(0)


def test_starting_a_run_of_a_job_no_worker_has_registered_warns_as_the_cli_does(
    stack: Dashboard, page: Page
) -> None:
    """The run is started, and waits until a worker with the job's code starts: its
    page says so in the words of ``stackshift start``, closest names included."""
    form = page.locator("#start-run-form")
    for job, delay, warning in (
        ("nosuchJob", "", "no worker has registered job 'nosuchJob'; the run waits queued "
                          "until one does"),
        ("send-emails", "1h", "no worker has registered job 'send-emails' (did you mean "
                              "'send-email'?); the run waits until one does"),
    ):
        page.goto(stack.at("/jobs"))
        form.locator("[name=job]").fill(job)
        form.locator("[name=delay]").fill(delay)
        form.locator("#start-run-submit").click()
        expect(page.locator(".flash-warning")).to_have_text(f"Run started, but {warning}.")
        run = stack.app.runs.get(page.locator("#run-id").inner_text().strip())
        assert (run.job, run.status) == (job, "scheduled" if delay else "queued")
    # The same key again: that run, still waiting for a worker, and nothing new.
    for _ in range(2):
        page.goto(stack.at("/jobs"))
        form.locator("[name=job]").fill("nosuchJob")
        form.locator("[name=idempotency_key]").fill("first")
        form.locator("#start-run-submit").click()
    expect(page.locator(".flash-warning")).to_have_text(
        "A run already exists for idempotency key 'first': nothing new was started, and no "
        "worker has registered job 'nosuchJob'; the run waits queued until one does.")
    # A job a worker has registered: no warning.
    page.goto(stack.at("/jobs"))
    form.locator("[name=job]").fill("resize-image")
    form.locator("#start-run-submit").click()
    expect(page.locator(".flash-ok")).to_have_text("Run started.")


def test_the_attempt_after_a_manual_retry_reads_whole_on_a_laptop_and_a_phone(
    stack: Dashboard, page: Page
) -> None:
    run = stack.app.start("import-feed", {"feed": "prices.csv"})
    stack.wait_status(run.id, "failed")
    stack.app.runs.retry(run.id)
    stack.wait_status(run.id, "completed")
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(stack.at(f"/runs/{run.id}"))
        attempt = page.locator("#run-attempt")
        expect(attempt).to_have_text("1 of 2 after a manual retry (3 in all)")
        assert attempt.evaluate("e => e.scrollWidth <= e.clientWidth"), \
            f"the attempt is cut off at {width}px"
        facts = page.locator("dl.facts").bounding_box()
        box = attempt.bounding_box()
        assert facts is not None and box is not None
        assert box["x"] + box["width"] <= facts["x"] + facts["width"], \
            f"the attempt leaves its card at {width}px"
        assert page.evaluate("document.documentElement.scrollWidth") <= width


def test_the_events_table_fits_its_card_on_a_laptop_screen(
    stack: Dashboard, page: Page
) -> None:
    """Every column shows, the runs that took an event whole: the payload gives way,
    cut with an ellipsis, and reads on hover."""
    app = stack.app
    user = "ada.lovelace-analytical-engine"
    run = app.start("send-email", {"user": user})
    stack.wait_status(run.id, "waiting")
    payload = {"note": "x" * 300, "user": user}
    taken = app.events.send("email.verified", payload, correlation_key=f"user:{user}")
    stack.wait_status(run.id, "completed")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(stack.at("/events"))
    card = page.locator("#events-table")
    assert card.evaluate("e => e.scrollWidth <= e.clientWidth"), "the table is wider than its card"
    box = card.bounding_box()
    assert box is not None
    for header in card.locator("th").all():
        cell = header.bounding_box()
        assert cell is not None
        assert cell["x"] + cell["width"] <= box["x"] + box["width"] + 1, \
            f"{header.text_content()} is cut off"
    row = card.locator(f"tr[data-event-id='{taken.id}']")
    link = row.get_by_role("link", name=run.id[-10:])
    expect(link).to_have_attribute("href", re.compile(f"/runs/{run.id}$"))
    link_box = link.bounding_box()
    assert link_box is not None
    assert link_box["x"] + link_box["width"] <= box["x"] + box["width"], "the run is cut off"
    summary = row.locator("summary code")
    expect(summary).to_have_attribute("title", json.dumps(payload, separators=(", ", ": ")))
    assert summary.evaluate("e => e.scrollWidth > e.clientWidth"), "the payload is not cut"


def test_a_custom_time_range_shows_its_times_whole(stack: Dashboard, page: Page) -> None:
    """Each time takes the width the browser draws it whole in, its calendar button
    beside it ("11:00 PM", not "11:00 P" under the button)."""
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(stack.at("/runs?created=custom&from=2026-12-06T23:00&to=2026-12-07T20:00"))
    for name in ("from", "to"):
        field = page.locator(f".range input[name={name}]")
        expect(field).to_be_visible()
        width, whole = field.evaluate(
            """e => { const width = e.getBoundingClientRect().width;
                      e.style.width = "auto"; e.style.flex = "none";
                      const whole = e.getBoundingClientRect().width;
                      e.style.width = e.style.flex = "";
                      return [width, whole]; }""")
        assert width >= whole, f"the {name} time is {width}px wide, {whole}px drawn whole"


def test_cancelling_from_a_stale_page_a_run_cancelled_meanwhile_says_so(
    stack: Dashboard, page: Page
) -> None:
    """The page was read before another operator (or the command line) cancelled the
    run: its Cancel button does nothing more, and says the run was already cancelled,
    not that this click cancelled it; a cancel requested already is said so too."""
    waiting = stack.app.start("send-email", {"user": "grace"})
    busy = stack.app.start("crunch-numbers", {"seconds": 3})
    stack.wait_status(waiting.id, "waiting")
    stack.wait_status(busy.id, "running")
    page.route("**/api/live", lambda route: route.abort())  # no live update: a stale page
    for run in (waiting, busy):
        page.goto(stack.at(f"/runs/{run.id}"))
        expect(page.locator("#cancel-run")).to_be_visible()
        stack.app.runs.cancel(run.id, reason="cancelled from the command line")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#cancel-run").click()
        if run is waiting:
            at = stack.app.runs.get(run.id).finished_at
            assert at is not None
            expect(page.locator(".flash-info")).to_have_text(
                f"This run was already cancelled at {at:%H:%M:%S} UTC: nothing was changed.")
            expect(page.locator("#run-head .badge").first).to_have_text("cancelled")
            expect(page.locator("#run-error .error-message")).to_have_text(
                "cancelled from the command line")
        else:
            expect(page.locator(".flash-info")).to_have_text(
                "A cancel was already requested: the run stops at its next step.")
    stack.wait_status(busy.id, "cancelled", "completed")  # its last step was under way


def test_a_refused_event_shows_its_error_at_the_top_of_the_page(
    stack: Dashboard, page: Page
) -> None:
    """As docs/dashboard.md says: a banner above the page's heading, the form below
    as it was filled in."""
    run = stack.app.start("send-email", {"user": "kim"})
    stack.wait_status(run.id, "waiting")
    page.goto(stack.at(f"/runs/{run.id}"))
    form = page.locator("#send-event-form")
    form.locator("textarea[name=payload]").fill("{oops}")
    form.locator("#send-event").click()
    banner = page.locator("main > .flash-error")
    expect(banner).to_contain_text("The payload is not JSON")
    top, crumbs, sent = (page.locator(selector).bounding_box()
                         for selector in ("main > .flash-error", "nav.crumbs",
                                          "#send-event-form"))
    assert top is not None and crumbs is not None and sent is not None
    assert top["y"] < crumbs["y"] < sent["y"]
    expect(form.locator("textarea[name=payload]")).to_have_value("{oops}")


def test_a_phone_shows_the_jobs_flags_whole_and_the_waterfall_from_its_bars(
    stack: Dashboard, page: Page
) -> None:
    """The flag of a job no live worker serves stays within its card, and the
    waterfall's labels leave the bars about half the screen."""
    stranded = stack.app.start("nosuchJob")
    run = stack.app.start("checkout", {"order": 88})
    # A long name, counts of several statuses: the widest row.
    for _ in range(12):
        stack.app.start("nightlyWarehouseExportReconciliation")
    stack.app.runs.cancel(stack.app.start("nightlyWarehouseExportReconciliation").id)
    stack.wait_status(run.id, "waiting")
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(stack.at("/jobs"))
    card = page.locator("#jobs-table").bounding_box()
    flag = page.locator(f"tr[data-job='{stranded.job}'] .pill-failed")
    expect(flag).to_have_text("No live worker · 1 due")
    box = flag.bounding_box()
    assert card is not None and box is not None
    assert box["x"] + box["width"] <= card["x"] + card["width"], f"the flag is at {box}"
    assert flag.evaluate("e => e.scrollWidth <= e.clientWidth"), "the flag is cut off"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    # The whole table fits its card: no column only reachable by scrolling sideways.
    table = page.locator("#jobs-table table")
    assert table.evaluate("e => e.scrollWidth <= e.parentElement.clientWidth"), (
        table.evaluate("e => [e.scrollWidth, e.parentElement.clientWidth]"))

    page.goto(stack.at(f"/runs/{run.id}"))
    chart = page.locator("#waterfall").bounding_box()
    label = page.locator("#waterfall .wf-attempt .wf-label").first.bounding_box()
    assert chart is not None and label is not None
    assert label["width"] <= chart["width"] * 0.56, f"the labels take {label['width']}px"
    expect(page.locator("#waterfall .wf-attempt .wf-name").first).to_have_text("Attempt 1")
    for detail in page.locator("#waterfall .wf-attempt .wf-detail").all():  # its duration
        assert detail.evaluate("e => e.scrollWidth <= e.clientWidth"), detail.text_content()
    name = page.locator("#waterfall .wf-step[data-step='load-cart'] .wf-name")
    expect(name).to_have_text("load-cart")
    assert name.evaluate("e => e.scrollWidth <= e.clientWidth"), "the step name is cut off"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_a_delayed_start_into_a_paused_queue_reads_start_due_since(
    stack: Dashboard, page: Page
) -> None:
    """Once its start time comes, the worker's maintenance moves the run to queued:
    no worker may take it from its paused queue, and the runs list says since when
    it is due."""
    stack.app.queue("media").pause()
    run = stack.app.start("resize-image", {"image": "held"}, delay="1s")
    queued = stack.wait_status(run.id, "queued")
    assert queued.next_attempt_at is not None
    # More than a second past its time: due, not about to start.
    time.sleep(max(0.0, queued.next_attempt_at.timestamp() + 1.2 - time.time()))
    page.goto(stack.url)
    note = page.locator(f"tr[data-run-id='{run.id}'] td.note .truncate")
    expect(note).to_have_text(
        f"start due since {day_time(queued.next_attempt_at, time.time())} UTC")
    plain = stack.app.start("resize-image", {"image": "plain"})
    page.reload()
    expect(page.locator(f"tr[data-run-id='{plain.id}'] td.note")).to_have_text("")
