"""JSON encoding of payloads, results and state values.

Everything the engine stores is JSON. Payloads may also be pydantic models or
dataclasses; they are converted once, at the edge, and stored as plain JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import sys
from collections.abc import Callable
from typing import Any

from pydantic_core import PydanticSerializationError, to_jsonable_python

from .errors import PayloadTooLargeError, ValidationError

MiB = 1024 * 1024


#: Arrays and objects nested deeper than this are refused: a value that deep (or
#: one that contains itself) is a mistake, and would exhaust the stack of any
#: reader that walks it.
MAX_DEPTH = 100


def to_jsonable(value: Any, *, what: str = "payload", _depth: int = 0) -> Any:
    """Return ``value`` as plain JSON data, or raise ``TypeError`` naming what is wrong."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{what}: {value!r} is not JSON (NaN and infinity are refused;"
                            " a number beyond ±1.8e308 reads as infinity)")
        return value
    if _depth >= MAX_DEPTH:
        raise TypeError(f"{what}: arrays and objects nested more than {MAX_DEPTH} levels deep"
                        " (or a value that contains itself)")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{what}: object keys must be strings, got {key!r}")
            out[key] = to_jsonable(item, what=what, _depth=_depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [to_jsonable(item, what=what, _depth=_depth + 1) for item in value]
    # A pydantic model or a dataclass becomes what pydantic makes of it in JSON
    # mode (datetimes and UUIDs as strings, as in a model's JSON), which is then
    # checked as any other value: a float field may still hold NaN.
    is_model = callable(getattr(value, "model_dump", None)) and hasattr(type(value),
                                                                        "model_fields")
    is_dataclass = dataclasses.is_dataclass(value) and not isinstance(value, type)
    if is_model or is_dataclass:
        try:
            data = to_jsonable_python(value)
        except (PydanticSerializationError, ValueError) as exc:
            kind = "a pydantic model" if is_model else "a dataclass"
            raise TypeError(f"{what}: {type(value).__name__} ({kind}) is not"
                            f" JSON-serialisable: {exc}") from None
        return to_jsonable(data, what=what, _depth=_depth)
    raise TypeError(
        f"{what}: {type(value).__name__} is not JSON-serialisable "
        "(use dict, list, str, int, float, bool, None, a pydantic model or a dataclass)"
    )


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> str:
    """Canonical JSON text: sorted keys, no spaces. Equal data gives equal text."""
    return _CANONICAL.encode(value)


def encode(
    value: Any,
    *,
    what: str,
    limit: int | None,
    too_large: type[PayloadTooLargeError] = PayloadTooLargeError,
    setting: str | None = None,
    raised_by: Callable[[str], str] | None = None,
) -> str:
    """Convert, encode and size-check ``value``; raise before anything is written.
    ``setting``, ``raised_by``: see :func:`limit_advice`."""
    jsonable = to_jsonable(value, what=what)
    try:
        text = dumps(jsonable)
    except ValueError:  # the one thing to_jsonable lets through that json cannot write
        raise TypeError(f"{what}: an integer of more than {sys.get_int_max_str_digits():,}"
                        " digits cannot be written as JSON") from None
    if limit is not None:
        size = utf8_size(text, what)
        if size > limit:
            raise too_large(f"{what} is {size} bytes as JSON, over the limit of {limit} bytes"
                            + limit_advice(setting, raised_by))
    return text


def limit_advice(setting: str | None, raised_by: Callable[[str], str] | None) -> str:
    """The end of an over-limit error: how the limit ``setting`` is raised where
    it is held (``raised_by(setting)``), worded only when it is said."""
    return f"; raise the limit with {raised_by(setting)}" if setting and raised_by else ""


_SURROGATE = re.compile("[\ud800-\udfff]")


def utf8(text: str) -> str:
    """``text`` with each lone surrogate (of a file name decoded with
    ``surrogateescape``, say) made U+FFFD, for text the engine stores as it is
    (a log record, an error): no store can hold one, and such text must never
    fail the step or the attempt that gave it."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def utf8_size(text: str, what: str) -> int:
    """Bytes of ``text`` in UTF-8; a ``ValidationError`` naming ``what`` for a lone
    surrogate, which no UTF-8 text holds."""
    try:
        return len(text.encode())
    except UnicodeEncodeError as exc:
        # The first one only: two in a row (a UTF-16 pair left as two code
        # points) are each a surrogate alone in Python's text.
        raise ValidationError(
            f"{what}: {exc.object[exc.start]!r} is a lone surrogate, which "
            "UTF-8 text cannot hold"
        ) from None


class DuplicateKeyError(ValueError):
    """JSON text that names one key twice in an object."""

    def __init__(self, key: str) -> None:
        shown = key if len(key) <= 200 else key[:200] + "..."
        super().__init__(f"duplicate key {shown!r}")
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for :func:`json.loads` that refuses an object naming a
    key twice (``{"a": 1, "a": 2}``), which readers take as either value: the
    parser would keep the last one, another the first. Raises
    :class:`DuplicateKeyError` naming the key."""
    found = dict(pairs)
    if len(found) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return found


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def digest(text: str) -> str:
    """A short, stable fingerprint of canonical JSON text (for idempotency checks)."""
    return hashlib.sha256(text.encode()).hexdigest()


def same_numbers(text: str) -> str | None:
    """``text`` with every whole-number float written as an integer (``1.0`` as
    ``1``, ``-0.0`` as ``0``), or ``None`` when it has none.

    JSON has one kind of number, so ``{"n": 1}`` and ``{"n": 1.0}`` are the same
    value (as RFC 8785's canonical form writes them, and as Python compares
    them); idempotency compares payloads in this form.
    """
    changed = False

    def number(literal: str) -> Any:
        nonlocal changed
        value = float(literal)
        if value.is_integer():
            changed = True
            return int(value)
        return value

    value = json.loads(text, parse_float=number)
    return dumps(value) if changed else None
