"""Unknown keyword arguments to the public API: a ``TypeError`` that names the
call as the program wrote it (``runs.list()``, not an internal function), the
keyword, and the accepted one it was probably meant to be.

:func:`public_calls` wraps every public method of a class. The wrapper adds
nothing to a call that binds: it explains a ``TypeError`` only once Python has
raised one, and only when a keyword the method does not take is why. Methods
that pass ``**options`` on to another function check the names against that
function's with :func:`refuse_unknown_keywords` before they do anything; the
wrapper leaves such methods as they are, having no keyword to explain.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)

#: Told of an explained error before it is raised: the instance (or class) the
#: method was called on, and the error.
Refused = Callable[[Any, TypeError], None]

_BY_NAME = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class _NotGiven:
    def __repr__(self) -> str:
        return "<not given>"


#: The default of a required positional parameter of a method that also takes
#: ``*args`` and ``**kwargs`` (which :func:`public_calls` leaves as it is): the
#: method itself raises the ``TypeError`` of :func:`missing` when it is left out.
NOT_GIVEN: Any = _NotGiven()


def missing(call: str, names: list[str]) -> TypeError:
    """The error of a call that left out required positional arguments, worded as
    Python words it."""
    quoted = [repr(name) for name in names]
    listed = (" and ".join(quoted) if len(quoted) <= 2
              else f"{', '.join(quoted[:-1])}, and {quoted[-1]}")
    plural = "" if len(names) == 1 else "s"
    return TypeError(f"{call} missing {len(names)} required positional argument{plural}: "
                     f"{listed}")


def accepted_keywords(fn: Callable[..., Any], *, skip: int = 0) -> list[str] | None:
    """The parameters of ``fn`` a caller may name, after the first ``skip``;
    ``None`` when ``fn`` takes any keyword (``**kwargs``)."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in _BY_NAME]


def unknown_keyword(call: str, given: Iterable[str], accepted: list[str]) -> TypeError | None:
    """The error for the first of ``given`` not in ``accepted``, or ``None``."""
    unknown = [name for name in given if name not in accepted]
    if not unknown:
        return None
    name = unknown[0]
    close = difflib.get_close_matches(name, accepted, n=1) or [
        # ttl_seconds=, timeout_s=: an accepted name as one word of the given one
        word for word in accepted if word in name.split("_")][:1]
    hint = (f"; did you mean {close[0]!r}?" if close
            else f"; it takes {', '.join(accepted)}" if accepted else "; it takes none")
    return TypeError(f"{call} got an unexpected keyword argument {name!r}{hint}")


def refuse_unknown_keywords(call: str, options: dict[str, Any], target: Callable[..., Any],
                            *, skip: int = 0) -> None:
    """Raise the ``TypeError`` of :func:`unknown_keyword` if ``options`` holds a
    keyword that ``target`` (after its first ``skip`` parameters) does not take."""
    accepted = accepted_keywords(target, skip=skip)
    if accepted is not None:
        error = unknown_keyword(call, options, accepted)
        if error is not None:
            raise error


def _explained(call: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> TypeError | None:
    accepted = accepted_keywords(fn, skip=1)  # self
    return None if accepted is None else unknown_keyword(call, kwargs, accepted)


def _explain(call: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             error: TypeError, refused: Refused | None) -> TypeError | None:
    """The explained error of a call of ``fn`` that raised ``error``; ``None`` when
    no unknown keyword is why. ``refused`` is told of the error that will be raised
    when the arguments do not bind (nothing of ``fn`` ran): the explained one, or
    ``error`` as Python raised it (a missing or extra positional argument)."""
    explained = _explained(call, fn, kwargs) if kwargs else None
    if refused is not None and args:
        if explained is not None:
            refused(args[0], explained)
        elif not _binds(fn, args, kwargs):
            refused(args[0], error)
    return explained


def _binds(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether ``fn``'s signature takes these arguments (asked only once a call
    raised a ``TypeError``: if they do not bind, Python raised it at the call)."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def _wrap(fn: Callable[..., Any], call: str, refused: Refused | None = None
          ) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapper_async(*args: Any, **kwargs: Any) -> Any:
            try:
                coroutine = fn(*args, **kwargs)
            except TypeError as error:  # binding failed: nothing ran
                explained = _explain(call, fn, args, kwargs, error, refused)
                if explained is None:
                    raise
                raise explained from None
            return await coroutine

        return wrapper_async

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TypeError as error:
            # A method that binds raised it itself (a payload that is not JSON):
            # only an unknown keyword, which stops the call before its first
            # line, is explained.
            explained = _explain(call, fn, args, kwargs, error, refused)
            if explained is None:
                raise
            raise explained from None

    return wrapper


def public_calls(path: str | None, *, refused: Refused | None = None) -> Callable[[T], T]:
    """Class decorator: explain unknown keywords to the class's public methods.

    ``path`` is how programs reach an instance from the client (``"runs"``,
    ``"queue(name)"``), or ``None`` for the client class itself, whose
    constructor is then named after the class (``StackShift()``). ``refused``,
    if given, is told before it is raised of each error of a call whose
    arguments the method's signature does not take (an unknown keyword, a
    missing or an extra positional argument). A method that takes any keyword
    (``**kwargs``) is left as it is.
    """
    def decorate(cls: T) -> T:
        for name, member in list(vars(cls).items()):
            on_class = isinstance(member, classmethod)
            fn = member.__func__ if on_class else member
            if (not inspect.isfunction(fn) or (name.startswith("_") and name != "__init__")
                    or accepted_keywords(fn) is None):
                continue
            if name == "__init__":
                call = f"{cls.__name__}()"
            elif on_class:  # reached through the class: AsyncStackShift.connect()
                call = f"{cls.__name__}.{name}()"
            else:
                call = f"{path}.{name}()" if path else f"{name}()"
            wrapped = _wrap(fn, call, refused)
            setattr(cls, name, classmethod(wrapped) if on_class else wrapped)
        return cls

    return decorate
