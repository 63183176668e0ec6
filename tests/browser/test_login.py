"""The dashboard behind a login (``stackshift server``): an API key once, then a session."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import httpx
import pytest
from dashboard_harness import Dashboard, screenshot, serve, serve_asgi
from dashboard_jobs import register_jobs
from playwright.sync_api import Page, expect

from stackshift import StackShift
from stackshift.dashboard import beside_api, create_dashboard
from stackshift.server.app import create_app


@pytest.fixture
def guarded(db_url: str, store_kind: str) -> Iterator[tuple[Dashboard, str]]:
    app = StackShift(db_url)
    register_jobs(app)
    _, key = app._service.create_api_key("ops on call")
    worker = app.worker(concurrency=4, poll_interval=0.05, maintenance_interval=0.05)
    worker.start()
    try:
        with serve(app, auth="api_key") as url:
            yield Dashboard(app, url, store_kind), key
    finally:
        worker.stop(grace=2)
        app.close()


def _log_in(page: Page, key: str) -> None:
    page.fill("input[name=api_key]", key)
    page.get_by_role("button", name="Log in").click()


def test_every_page_asks_for_a_key_first(guarded: tuple[Dashboard, str], page: Page) -> None:
    stack, key = guarded
    run = stack.app.start("send-email", {"user": "kim"})
    stack.wait_status(run.id, "waiting")
    paths = ["/", "/runs?status=waiting", f"/runs/{run.id}", "/events", "/queues",
             "/queues/emails", "/jobs", "/state"]
    for path in paths:
        page.goto(stack.at(path))
        expect(page).to_have_url(stack.at("/login?next=" + quote(path, safe="")))
        expect(page.locator("input[name=api_key]")).to_be_visible()
        expect(page.locator("main")).to_have_count(0)
    assert page.request.get(stack.at("/api/live")).status == 401
    screenshot(page, "login", stack.store_kind)

    # A wrong key is refused, a revoked one too; the right one opens the page asked for.
    _log_in(page, "ssk_not-a-real-key")
    expect(page.locator(".flash-error")).to_have_text(
        "That API key is not valid (unknown or revoked).")
    _log_in(page, key)
    expect(page).to_have_url(stack.at("/state"))
    expect(page.locator("h1")).to_have_text("State")
    cookie = next(c for c in page.context.cookies() if c["name"] == "stackshift_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert key not in cookie["value"]
    for path in paths:
        response = page.goto(stack.at(path))
        assert response is not None and response.status == 200
        expect(page).to_have_url(stack.at(path))
    expect(page.locator(".sidebar-foot")).to_contain_text("ops on call")

    # Actions need the page's CSRF token, not just the cookie.
    for form in ({}, {"csrf": "forged"}):
        answer = page.request.post(stack.at(f"/runs/{run.id}/cancel"), form=form)
        assert answer.status == 403
    assert stack.app.runs.get(run.id).status == "waiting"
    page.goto(stack.at(f"/runs/{run.id}"))
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#cancel-run").click()
    expect(page.locator("#run-head .badge").first).to_have_text("cancelled")

    # Logging out ends the session.
    page.get_by_role("button", name="Log out").click()
    expect(page.locator(".flash-info")).to_have_text("You are logged out.")
    page.goto(stack.at("/jobs"))
    expect(page).to_have_url(stack.at("/login?next=%2Fjobs"))


def test_revoking_the_key_ends_its_sessions(guarded: tuple[Dashboard, str], page: Page) -> None:
    stack, key = guarded
    page.goto(stack.at("/queues"))
    _log_in(page, key)
    expect(page.locator("h1")).to_have_text("Queues")
    listed = stack.app._service.list_api_keys()[0]
    stack.app._service.revoke_api_key(listed.id)
    # Ask with the page's cookies but without navigating: the open page's live
    # updates may themselves move it to the login page at any moment.
    deadline = time.monotonic() + 10
    while True:
        answer = page.request.get(stack.at("/queues"), max_redirects=0)
        if answer.status in (302, 303, 307) and "/login" in answer.headers.get("location", ""):
            break
        assert answer.status == 200, answer.status
        assert time.monotonic() < deadline, "a revoked key still opens the dashboard"
        time.sleep(0.25)
    # A new tab with the same cookies: the open page may be moving to the login
    # page on its own, and a navigation of ours would race with it.
    fresh = page.context.new_page()
    fresh.goto(stack.at("/queues"))
    expect(fresh).to_have_url(stack.at("/login?next=%2Fqueues"))
    _log_in(fresh, key)
    expect(fresh.locator(".flash-error")).to_contain_text("not valid")
    fresh.close()
    # The open page's live updates found the session gone and took it to the login
    # page; nothing is left moving when the test ends and its tabs close.
    expect(page).to_have_url(stack.at("/login?next=%2Fqueues"))


def test_open_mode_has_no_login_but_still_checks_csrf(stack: Dashboard, page: Page) -> None:
    run = stack.app.start("send-email", {"user": "ode"})
    stack.wait_status(run.id, "waiting")
    page.goto(stack.at("/login"))
    expect(page).to_have_url(stack.at("/"))
    expect(page.locator("h1")).to_have_text("Runs")
    answer = page.request.post(stack.at(f"/runs/{run.id}/cancel"), form={"csrf": "forged"})
    assert answer.status == 403
    cross_site = page.request.post(
        stack.at(f"/runs/{run.id}/cancel"),
        form={"csrf": page.locator("input[name=csrf]").first.input_value()
              if page.locator("input[name=csrf]").count() else "x"},
        headers={"Origin": "http://evil.example"})
    assert cross_site.status == 403
    assert stack.app.runs.get(run.id).status == "waiting"
    # The forms that start runs, with the page's own token but from another site,
    # or with a forged token: refused, nothing started.
    page.goto(stack.at(f"/runs/{run.id}"))
    token = page.locator("input[name=csrf]").first.input_value()
    starts = [(f"/runs/{run.id}/again", {}),
              ("/jobs/start", {"job": "send-email", "payload": '{"user": "eve"}'})]
    for path, fields in starts:
        forged = page.request.post(stack.at(path), form={**fields, "csrf": "forged"})
        other_site = page.request.post(stack.at(path), form={**fields, "csrf": token},
                                       headers={"Origin": "http://evil.example"})
        assert (forged.status, other_site.status) == (403, 403), path
    assert [r.id for r in stack.app.runs.list().items] == [run.id]


def test_open_mode_answers_only_loopback_host_names(stack: Dashboard) -> None:
    """A page on another site whose name it points at 127.0.0.1 (DNS rebinding) is the
    dashboard's own origin to the browser, Host and Origin headers included: an open
    dashboard refuses that name, so the page gets no page, session or CSRF token, and
    a form sent with a token taken elsewhere acts on nothing."""
    run = stack.app.start("send-email", {"user": "rey"})
    stack.wait_status(run.id, "waiting")
    port = urlsplit(stack.url).port
    with httpx.Client(base_url=stack.url) as browser:
        for name in ("127.0.0.1", "localhost", "dev.localhost"):
            shown = browser.get(f"/runs/{run.id}", headers={"Host": f"{name}:{port}"})
            assert shown.status_code == 200, name
        token = re.search(r'name="csrf" value="([^"]+)"', shown.text)
        assert token is not None
        other = {"Host": f"attacker.example:{port}", "Origin": f"http://attacker.example:{port}"}
        refused = browser.get(f"/runs/{run.id}", headers=other)
        assert (refused.status_code, refused.text) == (400, "Invalid host header")
        assert "set-cookie" not in refused.headers
        cancel = browser.post(f"/runs/{run.id}/cancel", data={"csrf": token[1]}, headers=other)
        assert cancel.status_code == 400
        # The same form from the dashboard's own name goes through.
        assert browser.post(f"/runs/{run.id}/cancel", data={"csrf": token[1]}).status_code == 303
    assert stack.app.runs.get(run.id).status == "cancelled"


def test_the_server_app_serves_the_api_and_the_dashboard_side_by_side(
    guarded: tuple[Dashboard, str], page: Page
) -> None:
    stack, key = guarded
    service = stack.app._service
    run = stack.app.start("resize-image", {"image": 1})
    stack.wait_status(run.id, "completed")
    combined = beside_api(create_app(service), create_dashboard(service, auth="api_key"))
    with serve_asgi(combined) as url:
        health = page.request.get(url + "/healthz")
        assert health.status == 200 and health.json()["status"] == "ok"
        refused = page.request.get(url + "/v1/runs")
        assert refused.status == 401 and refused.json()["error"]["code"] == "unauthorized"
        listed = page.request.get(url + f"/v1/runs/{run.id}",
                                  headers={"Authorization": f"Bearer {key}"})
        assert listed.status == 200 and listed.json()["id"] == run.id
        page.goto(url + "/")
        expect(page).to_have_url(url + "/login?next=%2F")
        _log_in(page, key)
        expect(page.locator("h1")).to_have_text("Runs")
        expect(page.locator(f"tr[data-run-id='{run.id}']")).to_contain_text("completed")
        # The dashboard session is no API key: the API still wants its bearer header.
        assert page.request.get(url + "/v1/runs").status == 401


def test_login_fits_a_phone_and_a_long_key_name_stays_in_the_sidebar(
    db_url: str, store_kind: str, page: Page
) -> None:
    app = StackShift(db_url)
    name = "on-call rotation for the payments platform team, " + "x" * 120
    _, key = app._service.create_api_key(name)
    try:
        with serve(app, auth="api_key") as url:
            page.set_viewport_size({"width": 390, "height": 800})
            page.goto(url + "/runs")
            card = page.locator("form.login").bounding_box()
            assert card is not None and card["x"] >= 0 and card["x"] + card["width"] <= 390
            _log_in(page, key)
            expect(page.locator("main h1")).to_have_text("Runs")

            page.set_viewport_size({"width": 1280, "height": 800})
            who = page.locator(".sidebar-foot .mode .who")
            expect(who).to_have_attribute("title", name)
            sidebar = page.locator(".sidebar").bounding_box()
            box = who.bounding_box()
            assert sidebar is not None and box is not None
            assert box["x"] + box["width"] <= sidebar["x"] + sidebar["width"]
    finally:
        app.close()
