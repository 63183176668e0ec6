"""Flow control through a ``stackshift server``: queues, schedules and bulk retry.

A mixin of :class:`stackshift.remote.RemoteService` with the same methods,
results and errors as :class:`stackshift.flowcontrol.FlowControl` embedded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from .checks import check_limit
from .durations import parse_instant
from .engine.cron import check_overlap, parse_cron
from .engine.limits import check_concurrency, parse_rate_limit
from .errors import ScheduleNotFoundError, StackShiftError
from .flowcontrol import (
    RETRY_PAGE,
    check_own_schedule_id,
    check_retry_many,
    check_schedule_id,
    check_stats_window,
    retry_in_pages,
)
from .ids import check_failure_cursor
from .jobs import check_max_attempts, check_name
from .models import JobInfo, Page, QueueInfo, Run, Schedule
from .serialization import dumps, encode, to_jsonable
from .server import flow_schemas as f
from .server import schemas as wire
from .settings import Settings, server_setting
from .store.queues import KEEP
from .wording import quoted

JSON_HEADERS = {"Content-Type": "application/json"}


class SizedBody:
    """A request body carrying a value with a size limit (a payload, a state value),
    encoded once. A body over the limit has its value checked against it, so that
    an oversize value is refused before any request, in the embedded service's
    words (not as an oversize request)."""

    def __init__(self, body: dict[str, Any], field: str, what: str, limit: int,
                 setting: str) -> None:
        def check() -> None:
            encode(body[field], what=what, limit=limit, setting=setting, raised_by=server_setting)

        try:
            text = dumps(body)
        except ValueError:  # an integer too long to write: encode says so
            check()
            raise
        try:
            self.content = text.encode()
        except UnicodeEncodeError:  # a lone surrogate: encode says where
            check()
            raise
        if len(self.content) > limit:  # only then can the value be over its limit
            check()


def _queue_path(name: object) -> str:
    """``/v1/queues/<name>``, the name checked as the embedded service checks it.

    Dots are percent-encoded too, so that the valid queue names ``.`` and ``..``
    are not read as path steps."""
    checked = check_name(name, "queue name")
    return "/v1/queues/" + quote(checked, safe="").replace(".", "%2E")


def _schedule_path(schedule_id: object) -> str:
    schedule_id = check_schedule_id(schedule_id)  # the embedded service's error for a non-id
    if schedule_id in (".", "..") or "/" in schedule_id:
        raise ScheduleNotFoundError(f"no schedule with id {quoted(schedule_id)}")
    return "/v1/schedules/" + quote(schedule_id, safe="")


def _when(value: datetime | str | None, name: str) -> str | None:
    """A time for the wire, checked here first (the embedded service's errors)."""
    if value is None:
        return None
    parse_instant(value, name=name)
    return value.isoformat() if isinstance(value, datetime) else value


class RemoteFlowControl:
    settings: Settings

    def limits(self) -> Settings:
        raise NotImplementedError  # provided by RemoteService

    def _call(self, method: str, path: str, *, json: Any = None,
              params: dict[str, Any] | None = None, timeout: float | None = None,
              ok: tuple[int, ...] = (200, 201, 204)) -> httpx.Response:
        raise NotImplementedError  # provided by RemoteService

    # -- queues ---------------------------------------------------------------------------

    def _queue(self, response: httpx.Response) -> QueueInfo:
        return f.Queue.model_validate(response.json()).to_model()

    def configure_queue(self, name: str, *, concurrency: Any = KEEP, rate_limit: Any = KEEP,
                        max_attempts: Any = KEEP) -> QueueInfo:
        # The embedded service's checks, so that bad settings raise the same errors.
        path = _queue_path(name)
        for value, check in ((concurrency, check_concurrency), (rate_limit, parse_rate_limit),
                             (max_attempts, check_max_attempts)):
            if value is not KEEP and value is not None:
                check(value)
        body = {key: value for key, value in (("concurrency", concurrency),
                                              ("rateLimit", rate_limit),
                                              ("maxAttempts", max_attempts))
                if value is not KEEP}
        return self._queue(self._call("PATCH", path, json=body))

    def pause_queue(self, name: str) -> QueueInfo:
        return self._queue(self._call("POST", _queue_path(name) + "/pause"))

    def resume_queue(self, name: str) -> QueueInfo:
        return self._queue(self._call("POST", _queue_path(name) + "/resume"))

    def queue_info(self, name: str, window: Any = "15m") -> QueueInfo:
        return self._queue(self._call("GET", _queue_path(name),
                                      params={"window": _window(window)}))

    def list_queues(self, window: Any = "15m") -> list[QueueInfo]:
        found = self._call("GET", "/v1/queues", params={"window": _window(window)})
        return [q.to_model() for q in f.QueueList.model_validate(found.json()).items]

    def dead_letters(self, queue: str, *, job: str | None = None, limit: int = 50,
                     cursor: str | None = None) -> Page[Run]:
        check_name(queue, "queue name")
        if job is not None:
            check_name(job, "job name")
        check_limit(limit)
        check_failure_cursor(cursor)
        found = self._call("GET", _queue_path(queue) + "/dead-letters",
                           params={"job": job, "limit": limit, "cursor": cursor})
        page = wire.RunPage.model_validate(found.json())
        return Page([r.to_model() for r in page.items], page.next_cursor)

    def retry_many(self, *, queue: str | None = None, job: str | None = None,
                   status: str = "failed", created_after: datetime | str | None = None,
                   created_before: datetime | str | None = None, limit: int | None = None,
                   page_size: int = RETRY_PAGE,
                   progress: Callable[[int], None] | None = None) -> list[str]:
        check_retry_many(status, queue, job, limit, page_size)  # the embedded service's errors
        after = _when(created_after, "created_after")
        before = _when(created_before, "created_before")
        older = False  # the server is from before pages

        def retry_page(room: int | None, cursor: str | None) -> Page[str]:
            nonlocal older
            body = {"queueName": queue, "job": job, "status": status, "createdAfter": after,
                    "createdBefore": before, "limit": room, "cursor": cursor}
            found = self._call("POST", "/v1/runs/retry-many",
                               json={k: v for k, v in body.items() if v is not None})
            answer = found.json()
            page = f.Retried.model_validate({"nextCursor": None, **answer})
            retried = list(page.retried)
            if "nextCursor" in answer or older or (room is not None and len(retried) < room):
                return Page(retried, page.next_cursor)
            # A server from before pages leaves nextCursor out and takes no cursor:
            # after a full first page, the rest goes as one request, as it did then.
            older = True
            rest = None if limit is None else limit - len(retried)
            return Page(retried + (retry_page(rest, None).items if rest != 0 else []), None)

        return retry_in_pages(retry_page, limit, page_size, progress)

    # -- jobs -----------------------------------------------------------------------------

    def list_jobs(self) -> list[JobInfo]:
        found = self._call("GET", "/v1/jobs")
        return [j.to_model() for j in f.JobList.model_validate(found.json()).items]

    # -- schedules ------------------------------------------------------------------------

    def _schedule(self, response: httpx.Response) -> Schedule:
        return f.Schedule.model_validate(response.json()).to_model()

    def _on_schedule(self, method: str, path: str) -> httpx.Response:
        try:
            return self._call(method, path)
        except StackShiftError as exc:
            if getattr(exc, "code", None) == "schedule_not_found":
                raise ScheduleNotFoundError(str(exc)) from None
            raise

    def create_schedule(self, job: str, *, cron: str, payload: Any = None,
                        timezone: str = "UTC", queue_name: str | None = None,
                        schedule_id: str | None = None, overlap: str = "allow") -> Schedule:
        check_name(job, "job name")
        parse_cron(cron, timezone)  # the embedded service's errors for a bad cron or zone
        check_overlap(overlap)
        if queue_name is not None:
            check_name(queue_name, "queue name")
        if schedule_id is not None:
            check_own_schedule_id(schedule_id)
        body = {"job": job, "cron": cron, "payload": to_jsonable(payload),
                "timezone": timezone}
        if queue_name is not None:
            body["queueName"] = queue_name
        if schedule_id is not None:
            body["scheduleId"] = schedule_id
        if overlap != "allow":  # left out otherwise: a server without overlaps takes the rest
            body["overlap"] = overlap
        limit = self.limits().max_payload_bytes
        response = self._call("POST", "/v1/schedules",
                              json=SizedBody(body, "payload", "payload", limit,
                                             "max_payload_bytes"))
        return replace(self._schedule(response), created=response.status_code == 201)

    def get_schedule(self, schedule_id: str) -> Schedule:
        return self._schedule(self._on_schedule("GET", _schedule_path(schedule_id)))

    def list_schedules(self) -> list[Schedule]:
        found = self._call("GET", "/v1/schedules")
        return [x.to_model() for x in f.ScheduleList.model_validate(found.json()).items]

    def pause_schedule(self, schedule_id: str) -> Schedule:
        return self._schedule(self._on_schedule("POST", _schedule_path(schedule_id) + "/pause"))

    def resume_schedule(self, schedule_id: str) -> Schedule:
        return self._schedule(self._on_schedule("POST", _schedule_path(schedule_id) + "/resume"))

    def delete_schedule(self, schedule_id: str) -> bool:
        try:
            self._on_schedule("DELETE", _schedule_path(schedule_id))
        except ScheduleNotFoundError:
            return False
        return True


def _window(window: Any) -> str:
    """``window`` for the wire, checked here first (the embedded service's errors)."""
    seconds = check_stats_window(window)
    # repr: the shortest exact decimal, with no exponent from 1s to 90d (a duration
    # string cannot have one).
    return window if isinstance(window, str) else f"{seconds!r}s"
