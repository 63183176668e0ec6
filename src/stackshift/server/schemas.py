"""The HTTP API's JSON shapes: camelCase on the wire, the SDK's values in Python.

Each output schema converts from the model the service returns (``of``) and
back (``to_model``), so the server and the remote client share one definition
of the wire format and a remote client returns exactly what an embedded one
does. Request schemas refuse unknown fields, so a misspelt option is an error
rather than silently ignored.

This module needs pydantic only (no web framework): the remote client imports it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr
from pydantic.alias_generators import to_camel, to_snake
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from .. import models as m
from ..checks import check_key
from ..durations import MAX_DURATION
from ..engine.limits import MAX_CONCURRENCY, check_concurrency
from ..settings import LONGEST_KEY, Settings

# The constraints below repeat the service's own checks, so that the OpenAPI
# document states what is accepted; the service still checks everything.

#: Job, queue and event names.
NAME_PATTERN = r"^[A-Za-z0-9._:-]{1,200}$"


def _ends_at_its_end(name: str) -> str:
    """Python's ``$`` also matches before a last newline, which the pattern's
    (ECMA-262, as the document gives it) does not: such a name is refused as one
    that does not match."""
    if name.endswith("\n"):
        raise PydanticCustomError("string_pattern_mismatch",
                                  "String should match pattern '{pattern}'",
                                  {"pattern": NAME_PATTERN})
    return name


Name = Annotated[StrictStr, Field(pattern=NAME_PATTERN, examples=["sendReceipt"]),
                 AfterValidator(_ends_at_its_end)]
#: Idempotency, correlation and concurrency keys.
Key = Annotated[StrictStr, Field(min_length=1, max_length=LONGEST_KEY)]


def check_state_key(key: str) -> str:
    """The service's check of a state key (up to the longest a server takes; its own
    limit is checked by the service), so that a key no store can hold is refused
    naming the field: ``key: state key must not contain the NUL character``."""
    return check_key(key, "state key", LONGEST_KEY)


StateKey = Annotated[StrictStr, Field(min_length=1, max_length=LONGEST_KEY),
                     AfterValidator(check_state_key)]
Owner = Annotated[StrictStr, Field(min_length=1, max_length=200)]
#: A lock's owner: the service's check, naming the field (``owner: lock owner ...``).
LockOwner = Annotated[Owner, AfterValidator(lambda owner: check_key(owner, "lock owner", 200))]
#: A point in time: ISO-8601 with an offset or ``Z``.
Time = Annotated[StrictStr, Field(json_schema_extra={"format": "date-time"},
                                  examples=["2026-05-06T09:00:00Z"])]
DURATION_PATTERN = r"^\s*([0-9]+(\.[0-9]+)?([mM][sS]|[sSmMhHdDwW]))+\s*$"
#: A duration: seconds, or a string such as ``"30s"``, ``"15m"``, ``"1h30m"``, ``"30d"``.
Duration = (
    Annotated[StrictStr, Field(pattern=DURATION_PATTERN, examples=["30s", "1h30m", "30d"])]
    | Annotated[float, Field(ge=0, le=MAX_DURATION, allow_inf_nan=False)]
)
#: A duration that must be more than zero (TTLs): some digit is not a zero.
POSITIVE_DURATION_PATTERN = r"^(?=[^1-9]*[1-9])" + DURATION_PATTERN[1:]
PositiveDuration = (
    Annotated[StrictStr, Field(pattern=POSITIVE_DURATION_PATTERN, examples=["30s", "24h"])]
    | Annotated[float, Field(gt=0, le=MAX_DURATION, allow_inf_nan=False)]
)
#: A duration in a query string, where every value is text: a number of seconds
#: (``60``, ``1.5``) or a duration string.
QUERY_DURATION_PATTERN = (r"^\s*([0-9]+(\.[0-9]+)?|"
                          + DURATION_PATTERN.removeprefix(r"^\s*").removesuffix(r"\s*$")
                          + r")\s*$")
Int32 = Annotated[StrictInt, Field(ge=-(2**31), lt=2**31)]
Int64 = Annotated[StrictInt, Field(ge=-(2**63), lt=2**63)]
Attempts = Annotated[StrictInt, Field(ge=1, le=1000)]
_CONCURRENCY_RANGE = Field(json_schema_extra={"minimum": 1, "maximum": MAX_CONCURRENCY})
#: A queue's ``concurrency``: the service's check, so the same range and message.
Concurrency = Annotated[StrictInt, AfterValidator(check_concurrency), _CONCURRENCY_RANGE]
#: A job's ``key_concurrency`` (in ``keyLimits`` of the worker and push APIs): the
#: SDK's check, so the same range and message as ``@job(key_concurrency=...)``.
KeyConcurrency = Annotated[
    StrictInt, AfterValidator(lambda value: check_concurrency(value, "key_concurrency")),
    _CONCURRENCY_RANGE]


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


class Wire(BaseModel):
    """Output shapes: built in Python by field name, serialised by alias."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
    )


class Body(BaseModel):
    """Request bodies: camelCase names only, unknown fields refused, no type coercion."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=False,
        validate_by_alias=True,
        extra="forbid",
        strict=True,
        regex_engine="python-re",  # the patterns use look-ahead
    )


# -- errors ---------------------------------------------------------------------------


class ErrorDetail(Wire):
    code: str = Field(description="A stable, machine-readable error code.")
    message: str = Field(description="What went wrong, for people.")
    existing_run_id: str | None = Field(
        None, description="With `idempotency_conflict` on a start: the run that owns the key."
    )
    existing_event_id: str | None = Field(
        None, description="With `idempotency_conflict` on an event: the event that owns the key."
    )


class ErrorResponse(Wire):
    error: ErrorDetail


# -- runs -----------------------------------------------------------------------------


class RunError(Wire):
    type: str
    message: str
    traceback: str | None = None

    @classmethod
    def of(cls, error: m.RunError | None) -> RunError | None:
        if error is None:
            return None
        return cls(type=error.type, message=error.message, traceback=error.traceback)

    def to_model(self) -> m.RunError:
        return m.RunError(self.type, self.message, self.traceback)


def _error_model(error: RunError | None) -> m.RunError | None:
    return None if error is None else error.to_model()


class WaitingFor(Wire):
    kind: str = Field(description="`event` or `sleep`.")
    step: str
    until: datetime | None
    event_name: str | None = None
    correlation_key: str | None = None

    @classmethod
    def of(cls, w: m.WaitingFor | None) -> WaitingFor | None:
        if w is None:
            return None
        return cls(kind=w.kind, step=w.step, until=w.until, event_name=w.event_name,
                   correlation_key=w.correlation_key)

    def to_model(self) -> m.WaitingFor:
        return m.WaitingFor(self.kind, self.step, _utc(self.until), self.event_name,
                          self.correlation_key)


class Run(Wire):
    id: str
    job: str
    queue_name: str
    status: str
    payload: Any
    result: Any
    error: RunError | None
    attempt: int
    max_attempts: int
    idempotency_key: str | None
    priority: int
    concurrency_key: str | None
    created_at: datetime
    scheduled_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None
    waiting_for: WaitingFor | None
    created: bool = Field(
        True, description="False when an idempotency key mapped the start to this existing run."
    )
    retry_base: int = Field(
        0, description="Attempts made before the last manual retry (0 if never retried by"
        " hand): the run's current budget of `maxAttempts` counts from the attempt after"
        " them, so the current attempt is number `attempt - retryBase` of that budget."
    )
    cancel_requested: bool = Field(
        False, description="True while the run is `running` and a cancel was requested: its"
        " handler stops at its next step boundary and the run ends `cancelled` (or"
        " `completed`, when the handler returns first)."
    )

    @classmethod
    def of(cls, run: m.Run) -> Run:
        return cls(
            id=run.id, job=run.job, queue_name=run.queue, status=run.status,
            payload=run.payload, result=run.result, error=RunError.of(run.error),
            attempt=run.attempt, max_attempts=run.max_attempts,
            idempotency_key=run.idempotency_key, priority=run.priority,
            concurrency_key=run.concurrency_key, created_at=run.created_at,
            scheduled_at=run.scheduled_at, started_at=run.started_at,
            finished_at=run.finished_at, next_attempt_at=run.next_attempt_at,
            waiting_for=WaitingFor.of(run.waiting_for), created=run.created,
            retry_base=run.retry_base, cancel_requested=run.cancel_requested,
        )

    def to_model(self) -> m.Run:
        return m.Run(
            id=self.id, job=self.job, queue=self.queue_name, status=self.status,
            payload=self.payload, result=self.result, error=_error_model(self.error),
            attempt=self.attempt, max_attempts=self.max_attempts,
            idempotency_key=self.idempotency_key, priority=self.priority,
            concurrency_key=self.concurrency_key,
            created_at=_utc(self.created_at),  # type: ignore[arg-type]
            scheduled_at=_utc(self.scheduled_at), started_at=_utc(self.started_at),
            finished_at=_utc(self.finished_at), next_attempt_at=_utc(self.next_attempt_at),
            waiting_for=None if self.waiting_for is None else self.waiting_for.to_model(),
            created=self.created, retry_base=self.retry_base,
            cancel_requested=self.cancel_requested,
        )


class RunPage(Wire):
    items: list[Run]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class Step(Wire):
    run_id: str
    key: str = Field(description="The step name, or `name#N` for its N-th occurrence.")
    name: str
    kind: str
    function: str | None
    status: str
    result: Any
    error: RunError | None
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, s: m.Step) -> Step:
        return cls(run_id=s.run_id, key=s.key, name=s.name, kind=s.kind, function=s.function,
                   status=s.status, result=s.result, error=RunError.of(s.error),
                   attempt=s.attempt, started_at=s.started_at, finished_at=s.finished_at)

    def to_model(self) -> m.Step:
        return m.Step(self.run_id, self.key, self.name, self.kind, self.function, self.status,
                    self.result, _error_model(self.error), self.attempt,
                    _utc(self.started_at), _utc(self.finished_at))


class Attempt(Wire):
    run_id: str
    number: int
    status: str
    worker_id: str | None
    started_at: datetime
    finished_at: datetime | None
    error: RunError | None
    duration: float | None = Field(description="Seconds, once the attempt has finished.")

    @classmethod
    def of(cls, a: m.Attempt) -> Attempt:
        return cls(run_id=a.run_id, number=a.number, status=a.status, worker_id=a.worker_id,
                   started_at=a.started_at, finished_at=a.finished_at,
                   error=RunError.of(a.error), duration=a.duration)

    def to_model(self) -> m.Attempt:
        return m.Attempt(self.run_id, self.number, self.status, self.worker_id,
                       _utc(self.started_at),  # type: ignore[arg-type]
                       _utc(self.finished_at), _error_model(self.error))


class TimelineEntry(Wire):
    id: int
    run_id: str
    at: datetime
    kind: str
    attempt: int | None
    step: str | None
    data: dict[str, Any] = Field(description=(
        "The entry's details, by kind (docs/state-machine.md): camelCase names, and "
        "times (`scheduledAt`, `until`, `nextAttemptAt`) as ISO-8601."))

    @classmethod
    def of(cls, t: m.TimelineEntry) -> TimelineEntry:
        # The details' names are the engine's (snake_case) and their times epoch
        # seconds; on the wire they are camelCase and ISO-8601 like every other
        # field (``nextAttemptAt``, ``releasedBy``).
        data = m.details_with_datetimes(t.data)
        return cls(id=t.id, run_id=t.run_id, at=t.at, kind=t.kind, attempt=t.attempt,
                   step=t.step, data={to_camel(k): v for k, v in data.items()})

    def to_model(self) -> m.TimelineEntry:
        data = {to_snake(k): v for k, v in self.data.items()}
        data = {k: datetime.fromisoformat(v).timestamp()
                if m.is_time_detail(k) and isinstance(v, str) else v
                for k, v in data.items()}
        return m.TimelineEntry(self.id, self.run_id, _utc(self.at),  # type: ignore[arg-type]
                             self.kind, self.attempt, self.step, data)


class LogEntry(Wire):
    id: int
    run_id: str
    attempt: int | None
    step: str | None
    at: datetime
    level: str
    logger: str
    message: str
    fields: dict[str, Any] = Field(default_factory=dict, description=(
        "What the record was logged with besides its message (`extra=` in Python's"
        " `logging`), in the order given; values that are not JSON as text."))

    @classmethod
    def of(cls, e: m.LogEntry) -> LogEntry:
        return cls(id=e.id, run_id=e.run_id, attempt=e.attempt, step=e.step, at=e.at,
                   level=e.level, logger=e.logger, message=e.message, fields=e.fields)

    def to_model(self) -> m.LogEntry:
        return m.LogEntry(self.id, self.run_id, self.attempt, self.step,
                        _utc(self.at),  # type: ignore[arg-type]
                        self.level, self.logger, self.message, self.fields)


class TimelineList(Wire):
    items: list[TimelineEntry]


class LogList(Wire):
    items: list[LogEntry]


class AttemptList(Wire):
    items: list[Attempt]


class StepList(Wire):
    items: list[Step]


_SET: JsonDict = {"not": {"type": "null"}}


def _not_both(a: str, b: str) -> JsonDict:
    """JSON Schema for "``a`` and ``b`` are not both given" (``null`` counts as not given)."""
    return {"not": {"required": [a, b], "properties": {a: _SET, b: _SET}}}


def _ttl_needs(keys: str) -> JsonDict:
    """JSON Schema for "``idempotencyTtl`` needs ``keys``"."""
    return {"if": {"required": ["idempotencyTtl"], "properties": {"idempotencyTtl": _SET}},
            "then": {"required": [keys], "properties": {keys: _SET}}}


#: Rules across fields, stated in the schema too.
_ONE_TIME: JsonDict = {"allOf": [_not_both("delay", "scheduledAt"),
                                 _ttl_needs("idempotencyKey")]}
_MANY_TIMES: JsonDict = {"allOf": [_not_both("delay", "scheduledAt"),
                                   _ttl_needs("idempotencyKeys")]}


class StartRun(Body):
    model_config = ConfigDict(json_schema_extra=_ONE_TIME)

    job: Name = Field(description="The job's name.")
    payload: Any = None
    queue_name: Name | None = None
    idempotency_key: Key | None = None
    idempotency_ttl: PositiveDuration | None = Field(
        None, description="Default `24h`, more than 0 and at most `365d` (the server's "
        "settings: `GET /v1/limits`); needs `idempotencyKey`."
    )
    max_attempts: Attempts | None = None
    scheduled_at: Time | None = Field(None, description="Not with `delay`.")
    delay: Duration | None = Field(None, description="Not with `scheduledAt`.")
    priority: Int32 | None = Field(None, description="Higher runs first within a queue.")
    concurrency_key: Key | None = None

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``Service.start`` (payload and job excluded)."""
        return {
            name: getattr(self, name)
            for name in ("queue_name", "idempotency_key", "idempotency_ttl", "max_attempts",
                         "scheduled_at", "delay", "priority", "concurrency_key")
        }


class StartRuns(Body):
    model_config = ConfigDict(json_schema_extra=_MANY_TIMES)

    job: Name = Field(description="The job's name.")
    payloads: list[Any] = Field(max_length=1000, description=(
        "One payload per run to start, at most 1,000."))
    queue_name: Name | None = None
    idempotency_keys: list[Key | None] | None = Field(None, description=(
        "An idempotency key per payload (`null` for a run without one), as many as"
        " `payloads`. A key given twice names one run, created by the first."))
    idempotency_ttl: PositiveDuration | None = Field(
        None, description="As for one start; needs `idempotencyKeys`.")
    max_attempts: Attempts | None = None
    scheduled_at: Time | None = Field(None, description="Not with `delay`.")
    delay: Duration | None = Field(None, description="Not with `scheduledAt`.")
    priority: Int32 | None = Field(None, description="Higher runs first within a queue.")
    concurrency_keys: list[Key | None] | None = Field(None, description=(
        "A concurrency key per payload (`null` for a run without one), as many as"
        " `payloads`."))

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``Service.start_many`` (job and payloads excluded)."""
        return {
            name: getattr(self, name)
            for name in ("queue_name", "idempotency_keys", "idempotency_ttl", "max_attempts",
                         "scheduled_at", "delay", "priority", "concurrency_keys")
        }


class RunList(Wire):
    items: list[Run]


class EnqueueRun(Body):
    """``StartRun`` without ``queueName``: the queue comes from the path."""

    model_config = ConfigDict(json_schema_extra=_ONE_TIME)

    job: Name
    payload: Any = None
    idempotency_key: Key | None = None
    idempotency_ttl: PositiveDuration | None = None
    max_attempts: Attempts | None = None
    scheduled_at: Time | None = None
    delay: Duration | None = None
    priority: Int32 | None = None
    concurrency_key: Key | None = None


class CancelRun(Body):
    reason: StrictStr | None = None


# -- events ---------------------------------------------------------------------------


class SendEvent(Body):
    name: Name
    payload: Any = None
    correlation_key: Key | None = None
    idempotency_key: Key | None = None


class SentEvent(Wire):
    id: str
    duplicate: bool = Field(description="True when the idempotency key matched an earlier event.")
    resumed_run_ids: list[str] = Field(
        description="The runs this send resumed, in id order; on a duplicate, the runs the "
                    "first send resumed (empty once that event is past its retention).")

    @classmethod
    def of(cls, s: m.SentEvent) -> SentEvent:
        return cls(id=s.id, duplicate=s.duplicate, resumed_run_ids=s.resumed_run_ids)

    def to_model(self) -> m.SentEvent:
        return m.SentEvent(self.id, self.duplicate, list(self.resumed_run_ids))


class Event(Wire):
    id: str
    name: str
    payload: Any
    correlation_key: str | None
    received_at: datetime
    idempotency_key: str | None = None

    @classmethod
    def of(cls, e: m.Event) -> Event:
        return cls(id=e.id, name=e.name, payload=e.payload, correlation_key=e.correlation_key,
                   received_at=e.received_at, idempotency_key=e.idempotency_key)

    def to_model(self) -> m.Event:
        return m.Event(self.id, self.name, self.payload, self.correlation_key,
                     _utc(self.received_at),  # type: ignore[arg-type]
                     self.idempotency_key)


class EventPage(Wire):
    items: list[Event]
    next_cursor: str | None


# -- state ----------------------------------------------------------------------------


class StateValue(Wire):
    key: str
    value: Any


class SetState(Body):
    model_config = ConfigDict(json_schema_extra=_not_both("ttl", "expiresAt"))

    value: Any
    ttl: PositiveDuration | None = Field(None, description="Not with `expiresAt`.")
    expires_at: Time | None = None


class StateDeleted(Wire):
    key: str
    deleted: bool = Field(description="Whether the key held a live value.")


class IncrementState(Body):
    key: StateKey
    by: Int64 = 1


class StateEntry(Wire):
    key: str
    value: Any
    expires_at: datetime | None
    updated_at: datetime


#: The next page of a listing of keys (state keys or locks). Left out by servers from
#: before it: a remote client reads their pages without it.
NextKey = Annotated[str | None, Field(
    description="The last key of the page when a live key follows it: pass it as "
    "`after` for the next page; null on the last page.")]


class KeyPage(Wire):
    """A page of keys: its ``nextCursor`` is always sent (required in the schema)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class StateList(KeyPage):
    items: list[StateEntry]
    next_cursor: NextKey = None


class AcquireLock(Body):
    key: StateKey
    owner: LockOwner = Field(description="A token only the owner knows: it alone can "
                             "extend and release the lock. Never listed.")
    ttl: PositiveDuration = Field(description="The lock frees itself after this long.")
    holder: Owner | None = Field(None, description="Who the owner is, in words (a run and "
                                 "its attempt, a host and a process), for listings and "
                                 "refusals.")


class ExtendLock(Body):
    key: StateKey
    owner: LockOwner = Field(description="The token the lock was acquired with.")
    ttl: PositiveDuration = Field(description="The lock frees itself this long from now.")


class ReleaseLock(Body):
    key: StateKey
    owner: LockOwner


class LockResult(Wire):
    key: str
    held: bool = Field(description="Acquire: whether the caller now holds it. "
                       "Extend: whether the caller still held it and it is extended "
                       "(false when its TTL had run out: the lock is not taken back). "
                       "Release: whether the caller still held it (false when "
                       "its TTL had run out or the lock was broken: another owner may "
                       "have held it since).")


class LockReleased(LockResult):
    lost: m.LockLoss | None = Field(
        None, description="Release: null when the caller still held the lock; else how "
        "it had lost it: `expired` (its TTL ran out; no other owner took it meanwhile), "
        "`broken` (broken while live, `DELETE /v1/locks/{key}`), or `expired_or_broken` "
        "(another owner has taken the key since, or the lock was cleaned up: which of "
        "the two happened cannot be told).")


class LockEntry(Wire):
    key: str
    holder: str | None = Field(description="Who holds the lock, as its owner said "
                               "when it took it; null when it did not say.")
    expires_at: datetime = Field(description="When the lock frees itself, unless extended.")


class LockList(KeyPage):
    items: list[LockEntry]
    next_cursor: NextKey = None


class LockBroken(Wire):
    key: str
    broken: bool = Field(description="Whether a live lock was there (there is none now). "
                         "Its owner's extend then fails, and its release says it was "
                         "broken.")


# -- API keys and health -----------------------------------------------------------------


class ApiKey(Wire):
    id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, k: m.ApiKey) -> ApiKey:
        return cls(id=k.id, name=k.name, prefix=k.prefix, created_at=k.created_at,
                   last_used_at=k.last_used_at, revoked_at=k.revoked_at)


class Health(Wire):
    status: str
    schema_version: int


class Limits(Wire):
    """The server's limits on what a client sends (its settings): a remote client
    checks values against these, so that it refuses what the server would."""

    max_payload_bytes: int
    max_step_result_bytes: int
    max_event_payload_bytes: int
    max_state_value_bytes: int
    max_state_key_length: int
    max_idempotency_key_length: int
    default_idempotency_ttl: float
    max_idempotency_ttl: float

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(**{name: getattr(settings, name) for name in cls.model_fields})
