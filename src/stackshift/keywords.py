"""Arguments the public API does not take: a ``TypeError`` that names the call
as the program wrote it (``runs.list()``, not an internal function) and, for an
unknown keyword, the accepted one it was probably meant to be.

:func:`public_calls` wraps every public method of a class. The wrapper adds
nothing to a call that binds: it explains a ``TypeError`` only once Python has
raised one, and only when arguments the method does not take are why. Methods
that pass ``**options`` on to another function check the names against that
function's with :func:`refuse_unknown_keywords` before they do anything; the
wrapper leaves such methods as they are, having no keyword to explain.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
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
    the arguments bind (the method raised it itself). An unknown keyword is
    explained with a suggestion; other arguments the signature does not take (a
    missing or an extra positional argument) get Python's words about the call as
    written (:func:`_reworded`). ``refused`` is told of the explained error."""
    explained = _explained(call, fn, kwargs) if kwargs else None
    if explained is None and not binds(fn, args, kwargs):
        explained = _reworded(call, fn, args, error)
    if refused is not None and args and explained is not None:
        refused(args[0], explained)
    return explained


def binds(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether ``fn``'s signature takes these arguments (asked only once a call
    raised a ``TypeError``: if they do not bind, Python raised it at the call).
    ``ValueError`` when ``fn`` has no signature to read (some builtins)."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def _reworded(call: str, fn: Callable[..., Any], args: tuple[Any, ...],
              error: TypeError) -> TypeError:
    """Python's error for arguments that a method's signature does not take, about
    the call as the program wrote it: ``ctx.step.sleep() takes 2 positional
    arguments but 3 were given``, where Python names the internal method and
    counts ``self`` (``Steps.sleep() takes 3 positional arguments but 4 were
    given``)."""
    message = str(error)
    internal = f"{fn.__code__.co_qualname}() "
    if not message.startswith(internal):
        return error
    rest = message[len(internal):]
    if rest.startswith("takes "):
        positional = [p for p in list(inspect.signature(fn).parameters.values())[1:]
                      if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                    inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        most = len(positional)
        least = sum(1 for p in positional if p.default is inspect.Parameter.empty)
        given = len(args) - 1
        takes = str(most) if least == most else f"from {least} to {most}"
        # "but 3 were given", or "but 3 positional arguments (and 1 keyword-only
        # argument) were given" when keywords came too: the count is all that changes.
        words = re.sub(r"^\d+", str(given), rest.split(" but ", 1)[1])
        if given == 1:
            words = words.replace("1 positional arguments", "1 positional argument")
            if "(" not in words:
                words = words.replace(" were given", " was given")
        plural = "" if takes == "1" else "s"  # as Python words it: "from 0 to 1 ...s"
        rest = f"takes {takes} positional argument{plural} but {words}"
    return TypeError(f"{call} {rest}")


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
