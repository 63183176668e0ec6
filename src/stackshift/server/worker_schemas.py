"""The JSON shapes of ``/v1/worker/...``: what a remote worker and the server exchange.

A remote worker (``stackshift worker APP --url URL --api-key KEY``) executes
handlers on its own machine and makes every claim, checkpoint and ending
durable through these endpoints; the server applies them to the store with the
same conditional writes an embedded worker uses. Like :mod:`.schemas`, this
module needs pydantic only: the remote worker imports it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StrictInt, StrictStr, model_validator
from pydantic_core import PydanticCustomError

from ..flowcontrol import check_failure_handler
from ..runlogs import MAX_FIELDS
from ..serialization import DuplicateKeyError, encode, unique_keys, utf8_size
from ..settings import LONGEST_KEY
from ..store.base import Lease, LogWrite, Outcome, StepWrite
from . import schemas as s
from .schemas import Body, Wire

#: Longest single long-poll of ``POST /v1/worker/claim``; the worker asks again.
MAX_CLAIM_WAIT_SECONDS = 30.0


def _storable(text: str) -> str:
    if "\x00" in text:
        raise PydanticCustomError("nul_character",
                                  "must not contain the NUL character (U+0000)")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise PydanticCustomError(
                "lone_surrogate", f"{exc.object[exc.start:exc.end]!r} is a lone surrogate, "
                "which UTF-8 text cannot hold") from None
    return text


#: Text stored as it is in a column (ids, names, keys): no NUL, which PostgreSQL's
#: text cannot hold, refused alike on every store, and no lone surrogate, which no
#: store can. Error messages, tracebacks and results are stored inside JSON and
#: keep NUL; log lines have it replaced (see ``store.execution``).
Column = Annotated[StrictStr, AfterValidator(_storable)]

WorkerId = Annotated[Column, Field(min_length=1, max_length=200)]
Seconds = Annotated[float, Field(ge=0, le=1e10, allow_inf_nan=False)]
LeaseSeconds = Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]
Instant = Annotated[float, Field(ge=0, le=1e11, allow_inf_nan=False,
                                 description="Seconds since the Unix epoch.")]
#: Bounded by the request body limit (413), like every list here.
Text = StrictStr


def _json_text(text: str) -> str:
    """JSON text of a value the engine would store: no NaN or infinity (``1e400``
    included), nesting within ``MAX_DEPTH``, no lone surrogate, no key repeated in
    an object (as in a request body)."""
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(text, parse_constant=refuse, object_pairs_hook=unique_keys)
        utf8_size(encode(value, what="result", limit=None), "result")
    except DuplicateKeyError as exc:
        raise ValueError(f"must be JSON text without a repeated key ({exc})") from None
    except (ValueError, TypeError, RecursionError):
        raise ValueError("must be JSON text (a result as the worker encodes it)") from None
    return text


#: A result as JSON text: stored as it is and read back by everyone who shows the run.
JsonText = Annotated[StrictStr, AfterValidator(_json_text)]


def _fields_text(text: str) -> str:
    if len(text) > MAX_FIELDS or not isinstance(json.loads(text), dict):
        raise ValueError(f"must be the JSON text of an object, at most {MAX_FIELDS} characters")
    return text


#: A log record's fields as JSON text (see runlogs.record_fields).
FieldsText = Annotated[JsonText, AfterValidator(_fields_text)]
#: A job's failure handler as JSON text: {"job", "queue", "max_attempts",
#: "default_max_attempts"} (see flowcontrol.check_failure_handler).
FailureHandler = Annotated[StrictStr, Field(max_length=10_000),
                           AfterValidator(check_failure_handler)]
Short = Annotated[Column, Field(min_length=1, max_length=1000)]


class LeaseBody(Body):
    """Proof that a worker holds a run for one attempt (from a claim)."""

    run_id: Short
    worker_id: WorkerId
    attempt: Annotated[StrictInt, Field(ge=1, lt=2**31)]

    def to_lease(self) -> Lease:
        return Lease(self.run_id, self.worker_id, self.attempt)

    @classmethod
    def of(cls, lease: Lease) -> dict[str, Any]:
        return {"runId": lease.run_id, "workerId": lease.worker_id, "attempt": lease.attempt}


class StepError(Body):
    type: Short
    message: Text
    traceback: Text | None = None


class StepBody(Body):
    """A step as the worker records it; ``result`` is canonical JSON text."""

    key: Short
    name: Short
    kind: Literal["run", "sleep", "wait"]
    function: Short | None = None
    status: Literal["completed", "failed", "waiting"]
    result: JsonText | None = None
    error: StepError | None = None
    started_at: Instant
    finished_at: Instant | None = None

    @model_validator(mode="after")
    def _finished_after_it_started(self) -> StepBody:
        # The timeline and the step's duration are read from these two.
        if self.finished_at is not None and self.finished_at < self.started_at:
            raise ValueError("finishedAt must not be before startedAt")
        return self

    def to_write(self) -> StepWrite:
        error = None if self.error is None else self.error.model_dump()
        return StepWrite(self.key, self.name, self.kind, self.function, self.status,
                         self.result, error, self.started_at, self.finished_at)

    @classmethod
    def of(cls, step: StepWrite) -> dict[str, Any]:
        return {
            "key": step.key, "name": step.name, "kind": step.kind, "function": step.function,
            "status": step.status, "result": step.result,
            "error": None if step.error is None else {
                "type": str(step.error.get("type")), "message": str(step.error.get("message")),
                "traceback": step.error.get("traceback"),
            },
            "startedAt": step.started_at, "finishedAt": step.finished_at,
        }


class LogBody(Body):
    at: Instant
    level: Annotated[Column, Field(max_length=50)]
    logger: Annotated[StrictStr, Field(max_length=1000)]
    message: Text
    step: Short | None = None
    attempt: Annotated[StrictInt, Field(ge=1, lt=2**31)] | None = None
    fields: FieldsText | None = Field(None, description=(
        "What the record was logged with besides its message, as the JSON text of an"
        " object. Sent only to a server whose `POST /v1/worker/register` answered"
        " `logsTakeFields`."))

    def to_write(self) -> LogWrite:
        return LogWrite(self.at, self.level, self.logger, self.message, self.step, self.attempt,
                        self.fields)

    @classmethod
    def of(cls, log: LogWrite) -> dict[str, Any]:
        body = {"at": log.at, "level": log.level, "logger": log.logger, "message": log.message,
                "step": log.step, "attempt": log.attempt}
        if log.fields is not None:
            body["fields"] = log.fields
        return body


Logs = list[LogBody]


# -- requests -----------------------------------------------------------------------------


ProcessSpace = Annotated[Column, Field(min_length=1, max_length=1000)]


class ProcessBody(Body):
    """A worker's process, as :mod:`stackshift.processes` identifies it."""

    space: ProcessSpace = Field(description="Boot, pid namespace and user: pids compare "
                                            "only within one space.")
    started: Annotated[StrictInt, Field(ge=0, lt=2**63)] = Field(
        description="Clock ticks after boot at which the process started.")


class RegisterWorker(Body):
    worker_id: WorkerId
    hostname: Annotated[Column, Field(max_length=1000)]
    pid: Annotated[StrictInt, Field(ge=0, lt=2**31)]
    jobs: list[s.Name]
    queues: list[s.Name] | None = None
    concurrency: s.Concurrency = Field(
        description="Runs the worker runs at once: from 1 to 100000, as `Worker(concurrency=...)`.")
    process: ProcessBody | None = Field(
        None, description="The worker's process: lets workers on its machine take its runs "
                          "over as soon as it ends, without waiting for the lease.")


class WorkerRef(Body):
    worker_id: WorkerId


class Peers(Body):
    """Ask for the other workers whose process is in ``space``."""

    worker_id: WorkerId
    space: ProcessSpace


class Claim(Body):
    worker_id: WorkerId
    jobs: list[s.Name]
    limit: Annotated[StrictInt, Field(ge=0, le=1000)]
    lease_seconds: LeaseSeconds
    queues: list[s.Name] | None = None
    key_limits: dict[s.Name, s.KeyConcurrency] = Field(
        default_factory=dict, description="Job name to its `key_concurrency`.")
    on_failure: dict[s.Name, FailureHandler] = Field(
        default_factory=dict, description="Job name to its failure handler (JSON text).")
    wait_seconds: Annotated[float, Field(ge=0, le=MAX_CLAIM_WAIT_SECONDS,
                                         allow_inf_nan=False)] = Field(
        0.0, description="Hold the request open this long while nothing is due.")


class SaveStep(Body):
    lease: LeaseBody
    step: StepBody
    logs: Logs = Field(default_factory=list)
    lease_seconds: LeaseSeconds


class OutcomeBody(Body):
    status: Literal["completed", "failed", "retrying", "cancelled"]
    result: JsonText | None = None
    error: StepError | None = None
    retry_at: Instant | None = None

    @model_validator(mode="after")
    def _retry_has_a_time(self) -> OutcomeBody:
        if self.status == "retrying" and self.retry_at is None:
            raise ValueError("retryAt is required when status is retrying")
        if self.status in ("failed", "retrying") and self.error is None:
            # A run that failed says why: the error the run, its attempt and the
            # dashboard show.
            raise ValueError(f"error is required when status is {self.status}")
        return self

    def to_outcome(self) -> Outcome:
        error = None if self.error is None else self.error.model_dump()
        return Outcome(self.status, self.result, error, self.retry_at)

    @classmethod
    def of(cls, outcome: Outcome) -> dict[str, Any]:
        error = outcome.error
        return {
            "status": outcome.status, "result": outcome.result,
            "error": None if error is None else {
                "type": str(error.get("type")), "message": str(error.get("message")),
                "traceback": error.get("traceback"),
            },
            "retryAt": outcome.retry_at,
        }


class FinishAttempt(Body):
    lease: LeaseBody
    outcome: OutcomeBody
    logs: Logs = Field(default_factory=list)


class Suspend(Body):
    lease: LeaseBody
    step: StepBody
    until: Instant
    logs: Logs = Field(default_factory=list)


class WaitForEvent(Body):
    lease: LeaseBody
    step: StepBody
    name: s.Name
    correlation_key: Annotated[Column, Field(max_length=LONGEST_KEY)] = ""
    timeout_at: Instant
    on_timeout: Literal["fail", "continue", "cancel"]
    since: Instant | None = Field(
        None, description="Ignored (sent by earlier workers): early events are those received"
        " at or after the run's creation as stored.")
    logs: Logs = Field(default_factory=list)
    lease_seconds: LeaseSeconds


class Release(Body):
    lease: LeaseBody
    logs: Logs = Field(
        default_factory=list,
        description="The attempt's log records not sent yet, written with the release when the"
        " lease still holds (a worker that stops hands back a run with them).")


class RenewLeases(Body):
    leases: list[LeaseBody]
    lease_seconds: LeaseSeconds
    logs: dict[Short, Logs] = Field(
        default_factory=dict,
        description="Run id to log records to write with the renewal, ahead of the run's next"
        " checkpoint (dropped for a lease that no longer holds). Each run id must be among"
        " `leases`. Sent only to a server whose `POST /v1/worker/register` answered"
        " `renewTakesLogs`.")

    @model_validator(mode="after")
    def _logs_of_renewed_runs(self) -> RenewLeases:
        renewed = {lease.run_id for lease in self.leases}
        if unknown := sorted(set(self.logs) - renewed):
            raise ValueError(f"logs for runs whose lease is not renewed here: {unknown}")
        return self


class CodeSchedule(Body):
    job: s.Name
    cron: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    timezone: Annotated[StrictStr, Field(min_length=1, max_length=200)] = "UTC"
    queue: s.Name | None = None
    overlap: Literal["allow", "skip"] = "allow"


class JobDefaults(Body):
    job: s.Name
    queue: s.Name | None = None
    max_attempts: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None


class PublishJobs(Body):
    """The queue and ``max_attempts`` of each of the worker's jobs, for runs started
    without the job's code (the CLI, ``POST /v1/runs``)."""

    jobs: Annotated[list[JobDefaults], Field(max_length=10_000)]


class SyncSchedules(Body):
    """The ``@job(cron=...)`` schedules of the worker's jobs; ``without``: jobs with none."""

    schedules: list[CodeSchedule]
    without: list[s.Name]


# -- responses ----------------------------------------------------------------------------


class ClaimedRun(Wire):
    run: s.Run
    attempt: int
    retry_base: int
    new_attempt: bool
    steps: list[s.Step] = Field(description="Completed steps, for replay.")


class ClaimedRuns(Wire):
    items: list[ClaimedRun]


class StepSaved(Wire):
    cancel_requested: bool


class Recorded(Wire):
    recorded: bool = Field(description="False when the worker no longer held the lease.")


class Finished(Recorded):
    status: str | None = Field(
        None, description="The run's status after it: the outcome's, or cancelled (a cancel"
        " was requested while the failing attempt ran); null when the worker no longer held"
        " the lease.")


class Released(Recorded):
    status: str | None = Field(
        None, description="The run's status after it: queued (handed back), or cancelled (a"
        " cancel was requested); null when the worker no longer held the lease.")


class EventTaken(Wire):
    event: s.Event | None = Field(description="The event taken, or null: the run now waits.")


class Renewed(Wire):
    cancel_requested: list[str]
    lost: list[str]


class Peer(Wire):
    worker_id: str
    pid: int
    started: int


class PeersFound(Wire):
    workers: list[Peer]


class HeldLease(Wire):
    run_id: str
    worker_id: str
    attempt: int
    job: str
    attempts_used: int = Field(description="Attempts used in the run's current budget.")
    max_attempts: int


class HeldLeases(Wire):
    leases: list[HeldLease]


class Done(Wire):
    ok: Literal[True] = True


class Registered(Done):
    renew_takes_logs: Annotated[bool, Field(
        description="`POST /v1/worker/renew` takes log records (its `logs`). Absent from the"
        " answer of a server from an earlier version, which refuses that field.")] = True
    logs_take_fields: Annotated[bool, Field(
        description="Log records may carry `fields`. Absent from the answer of a server from"
        " an earlier version, which refuses them: a worker then puts a record's fields at"
        " the end of its message.")] = True
