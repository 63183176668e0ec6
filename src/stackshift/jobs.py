"""Jobs: named handlers and their options, kept in a per-client registry."""

from __future__ import annotations

import functools
import inspect
import re
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from .durations import parse_duration
from .engine.cron import check_overlap, check_timezone, parse_cron
from .engine.limits import check_concurrency
from .engine.retries import Backoff
from .errors import ValidationError
from .wording import quoted

NAME = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


def check_name(value: object, what: str) -> str:
    """Job, queue, event and step names: 1-200 ASCII letters, digits, ``.``, ``_``, ``:``
    or ``-``."""
    if callable(value) and not isinstance(value, str):
        called = getattr(value, "__name__", type(value).__name__)
        hint = (": jobs are named by strings: @app.job(\"name\") registers a function,"
                " app.start(\"name\", payload) starts a run of it" if what == "job name"
                else "; give the name as a string")
        raise ValidationError(f"{what} must be a string, got the function {called}{hint}")
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ValidationError(f"{what} {quoted(value)} is invalid: use 1-200 ASCII letters,"
                              " digits, '.', '_', ':' or '-'")
    return value


def check_max_attempts(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ValidationError(f"max_attempts must be an integer from 1 to 1000, got {value!r}")
    return value


@dataclass(frozen=True)
class Job:
    name: str
    handler: Callable[..., Any]
    queue: str | None
    max_attempts: int | None
    backoff: Backoff
    timeout: float | None
    is_async: bool
    #: what ``ctx.payload`` is validated into (``JobContext[Model]``), if anything
    payload_type: PayloadType | None
    #: most runs of this job with the same concurrency_key running at once
    key_concurrency: int | None = None
    #: job started with the failed run's id, job, payload and error when a run fails for good
    on_failure: str | None = None
    #: recurring schedule (see :mod:`stackshift.engine.cron`) and its time zone
    cron: str | None = None
    timezone: str = "UTC"
    #: the schedule's overlap policy: "allow", or "skip" a tick while the previous
    #: tick's run is unfinished
    overlap: str = "allow"

    @property
    def function_name(self) -> str:
        return qualified_name(self.handler)


def qualified_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a function, the same in every process: a step's
    recorded function, which a replay compares. A ``functools.partial`` is named
    by the function it calls, an object with a ``__call__`` by its class (never by
    a repr, which holds a memory address)."""
    return joined_name(*function_parts(fn))


def joined_name(module: str, name: str) -> str:
    """``module.name``, or ``name`` alone for a function of no module."""
    return f"{module}.{name}" if module else name


#: The module name ``stackshift worker path/to/file.py`` gives a file whose name
#: is no identifier (and, followed by ``_`` and its name, one whose name is taken).
FILE_MODULE = "stackshift_app"


def function_parts(fn: Callable[..., Any]) -> tuple[str, str]:
    """The module (``""`` if none) and the qualified name that make up
    :func:`qualified_name`."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if not hasattr(fn, "__qualname__") and not hasattr(fn, "__name__"):
        fn = type(fn)
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return module, name


def same_function(recorded: str, module: str, name: str) -> bool:
    """Whether a replay that reached the function ``name`` of ``module`` (see
    :func:`function_parts`) reached the step's ``recorded`` one
    (:func:`qualified_name`).

    A recorded name holding a memory address (a partial or an object with a
    ``__call__``, as steps recorded by earlier versions name them) matches
    anything: no replay could match it. Otherwise the qualified names must be
    the same, and the modules the same module loaded another way
    (:func:`_same_module`).
    """
    if recorded == joined_name(module, name) or " at 0x" in recorded:
        return True
    if not module or not recorded.endswith("." + name):
        return False
    return _same_module(recorded[:-len(name) - 1], module)


def _same_module(recorded: str, reached: str) -> bool:
    """Whether the module a step was recorded in, ``recorded``, may be the module
    ``reached`` of this replay, loaded another way.

    A file is a module of several names: ``__main__`` run as a program
    (``python app.py``, ``python -m pkg.app``), its file's name loaded by
    ``stackshift worker pkg/app.py`` (``app``, or ``stackshift_app`` for a name
    that is no identifier), and its dotted name imported (``pkg.app``, as
    ``stackshift worker pkg.app:app`` does). A recorded ``__main__`` names no
    file, and matches any module.
    """
    if recorded == "__main__":
        return True
    names = _names_of_main() if reached == "__main__" else {reached}
    if names is None:  # a program of no file (python -c): any module may be its own
        return True
    return any(recorded == one or recorded.endswith("." + one) or one.endswith("." + recorded)
               or (recorded.startswith(FILE_MODULE) and one == "__main__")
               for one in names)


def _names_of_main() -> set[str] | None:
    """The names this process's ``__main__`` goes by when imported, None if it was
    run from no file."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    path = getattr(main, "__file__", None)
    if path is None:
        return None
    names = {"__main__", Path(path).stem}
    if spec is not None and spec.name:
        names.add(spec.name)
    return names


def is_async_handler(handler: Callable[..., Any]) -> bool:
    """Whether calling ``handler`` gives a coroutine to await: an ``async def``
    (or a ``functools.partial`` of one), an ``async def`` behind a decorator that
    keeps ``__wrapped__`` (``functools.wraps``), or an object whose ``__call__``
    is an ``async def``."""
    target = inspect.unwrap(handler)
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(target):
        return True
    if inspect.isroutine(target) or isinstance(target, type):
        return False
    return inspect.iscoroutinefunction(type(target).__call__)


@dataclass(frozen=True)
class PayloadType:
    """The type a handler's payload is validated into before it runs."""

    #: as a payload that does not fit names it (``Order``, ``Order | None``)
    name: str
    #: the payload's JSON value in, the handler's ``ctx.payload`` out (raises
    #: ``pydantic.ValidationError`` for a payload that does not fit)
    validate: Callable[[Any], Any]


def _payload_type(name: str, handler: Callable[..., Any]) -> PayloadType | None:
    """The type ``T`` when the first parameter is annotated ``JobContext[T]`` or
    ``AsyncJobContext[T]`` (either, whether the handler is sync or async): a
    pydantic model, or anything pydantic validates (a dataclass, a ``TypedDict``,
    ``Model | None``, ``list[int]``...). ``Any`` (and a bare ``JobContext``)
    validates nothing."""
    annotated = _payload_annotation(name, handler)
    if annotated is None or annotated is Any or isinstance(annotated, typing.TypeVar):
        return None
    shown = annotated.__name__ if isinstance(annotated, type) else str(annotated)
    if isinstance(annotated, type) and hasattr(annotated, "model_validate"):
        return PayloadType(shown, annotated.model_validate)
    try:
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(annotated)
    except Exception as exc:  # a type pydantic cannot validate into
        raise ValidationError(
            f"handler for job {name!r}: its payload type {shown} cannot be validated"
            f" ({str(exc).splitlines()[0]}); annotate JobContext with a pydantic model,"
            " a dataclass, a TypedDict or JSON types") from None
    return PayloadType(shown, adapter.validate_python)


def _payload_annotation(name: str, handler: Callable[..., Any]) -> Any:
    """``T`` of the handler's first parameter annotated ``JobContext[T]``, if any."""
    try:
        if not inspect.isroutine(inspect.unwrap(handler)) and not isinstance(handler, type):
            # an object with a __call__: its method's annotations (without self)
            handler = type(handler).__call__.__get__(handler)
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return None
    if not params:
        return None
    try:
        hint = typing.get_type_hints(handler).get(params[0].name)
    except Exception:
        # Another of its annotations may be one only a type checker resolves (a
        # return type imported under TYPE_CHECKING): the context's alone.
        hint = None
    if hint is None:  # also a partial's, whose hints typing does not read
        hint = _context_hint(name, handler, params[0])
    if getattr(typing.get_origin(hint), "__name__", None) not in ("JobContext", "AsyncJobContext"):
        return None
    args = typing.get_args(hint)
    return args[0] if len(args) == 1 else None


def _context_hint(name: str, handler: Callable[..., Any], param: inspect.Parameter) -> Any:
    """The annotation of the handler's context parameter, resolved on its own in the
    handler's module. One naming ``JobContext`` that cannot be resolved is refused:
    taken for no annotation, the payload would reach the handler unvalidated."""
    annotation = param.annotation
    if not isinstance(annotation, str):
        return None if annotation is inspect.Parameter.empty else annotation

    target = inspect.unwrap(handler)
    space = getattr(inspect.unwrap(getattr(target, "func", target)),  # a partial's function
                    "__globals__", None)
    if space is None:
        return None  # no module to resolve it in

    def alone() -> None: ...

    alone.__annotations__ = {param.name: annotation}
    try:
        return typing.get_type_hints(alone, globalns=space)[param.name]
    except Exception as exc:
        if "JobContext" not in annotation:
            return None
        raise ValidationError(
            f"handler for job {name!r}: the annotation {annotation!r} of its context cannot"
            f" be resolved ({type(exc).__name__}: {exc}), so its payload could not be"
            " validated; define the payload type at the top level of its module (a class"
            " defined in a function is not found when annotations are strings, as with"
            " `from __future__ import annotations`)") from None


def make_job(
    name: str,
    handler: Callable[..., Any],
    *,
    queue: str | None = None,
    max_attempts: int | None = None,
    backoff: Any = None,
    timeout: Any = None,
    key_concurrency: int | None = None,
    on_failure: str | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    overlap: str | None = None,
) -> Job:
    """Validate options and build a :class:`Job`; raises ``ValueError`` on bad options.

    ``timezone`` (``"UTC"`` when left out) and ``overlap`` (``"allow"``) need ``cron``:
    given without it, even with their default values, they are refused."""
    check_name(name, "job name")
    if queue is not None:
        check_name(queue, "queue name")
    if max_attempts is not None:
        check_max_attempts(max_attempts)
    if key_concurrency is not None:
        check_concurrency(key_concurrency, "key_concurrency")
    if on_failure is not None:
        check_name(on_failure, "on_failure job name")
    if cron is not None:
        cron = parse_cron(cron, timezone or "UTC").expression
    elif timezone is not None:
        check_timezone(timezone)  # a misspelt zone is refused here, not when cron is added
    if overlap is not None:
        check_overlap(overlap)
    if cron is None:
        for option, value in (("timezone", timezone), ("overlap", overlap)):
            if value is not None:
                raise ValidationError(
                    f"{option}={value!r} needs cron: it applies to a job's schedule")
    if not callable(handler):
        raise ValidationError(f"handler for job {name!r} is not callable")
    _check_takes_ctx(name, handler)
    seconds = None if timeout is None else parse_duration(timeout, name="timeout")
    if seconds is not None and seconds <= 0:
        raise ValidationError(f"timeout must be more than 0 (None for no timeout), got {timeout!r}")
    return Job(
        name=name,
        handler=handler,
        queue=queue,
        max_attempts=max_attempts,
        backoff=Backoff.parse(backoff),
        timeout=seconds,
        is_async=is_async_handler(handler),
        payload_type=_payload_type(name, handler),
        key_concurrency=key_concurrency,
        on_failure=on_failure,
        cron=cron,
        timezone=timezone or "UTC",
        overlap=overlap or "allow",
    )


def _check_takes_ctx(name: str, handler: Callable[..., Any]) -> None:
    """Refuse a handler that cannot be called with the run's context alone (every
    attempt would fail the same way)."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # some builtins have none to read
        return
    try:
        signature.bind(None)
    except TypeError:
        raise ValidationError(
            f"handler for job {name!r} must take one argument, the run's context"
            f" (def handler(ctx): ...); {qualified_name(handler)}{signature} cannot be"
            " called with it alone") from None


class JobRegistry:
    """The jobs one client knows. Registering a name twice is an error."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}

    def add(self, job: Job) -> Job:
        existing = self._jobs.get(job.name)
        if existing is not None and existing.handler is not job.handler:
            raise ValidationError(f"job {job.name!r} is already registered")
        self._jobs[job.name] = job
        return job

    def get(self, name: str) -> Job | None:
        return self._jobs.get(name)

    def names(self) -> list[str]:
        return sorted(self._jobs)

    def unknown_failure_handlers(self) -> list[tuple[str, str]]:
        """``(job, on_failure)`` for each job whose ``on_failure`` names a job
        not registered here: its handler runs go to the default queue and wait
        there for a worker that knows that job."""
        return sorted((job.name, job.on_failure) for job in self._jobs.values()
                      if job.on_failure is not None and job.on_failure not in self._jobs)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._jobs.values())

    def __len__(self) -> int:
        return len(self._jobs)
