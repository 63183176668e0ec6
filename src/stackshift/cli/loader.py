"""Finding the app (the :class:`~stackshift.StackShift` client) a worker serves.

``APP`` is ``package.module:attribute``, ``path/to/file.py`` or
``path/to/file.py:attribute``; without an attribute the module's first
StackShift client is used.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sqlite3
import sys
import traceback
from pathlib import Path
from types import ModuleType

from ..client import AsyncStackShift, StackShift
from ..jobs import FILE_MODULE
from ..store.database import is_database_unavailable
from ..store.sqlite import AnotherAppsDatabase
from .failures import CliFailure, bad_input, debugging, failed
from .options import DATABASE_ENV
from .render import shown_url


def _split(spec: str) -> tuple[str, str | None]:
    target, sep, attribute = spec.rpartition(":")
    # "C:\\app.py" or a bare "file.py": the colon (if any) is not an attribute separator.
    if not sep or not attribute or not attribute.replace(".", "_").isidentifier():
        return spec, None
    return target, attribute


def _is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise bad_input(f"no such file: {path}")
    path = path.resolve()
    name = path.stem if path.stem.isidentifier() else FILE_MODULE
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) != str(path):
        name = f"{FILE_MODULE}_{name}"
    # Siblings of the file import as they would when it runs as a script.
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise bad_input(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise _import_failed(str(path), exc) from None
    return module


def _import_failed(what: str, exc: Exception) -> CliFailure:
    """The error for an app whose import raised ``exc``, after its traceback,
    which points at the line of the app at fault. A database that cannot be
    opened (the client an app builds as it is imported opens it: a wrong URL, a
    folder that does not exist, a server down) is no fault of the app's code:
    the error names the database instead, without the traceback. Nor is a file
    that is not an SQLite database."""
    not_sqlite = isinstance(exc, AnotherAppsDatabase) or (
        isinstance(exc, sqlite3.DatabaseError) and "file is not a database" in str(exc))
    if not (is_database_unavailable(exc) or not_sqlite) or debugging():
        traceback.print_exc()
        return failed(f"importing {what} failed: {type(exc).__name__}: {exc}")
    url = os.environ.get(DATABASE_ENV)
    where = f" {shown_url(url)}" if url else ""
    return failed(f"importing {what} failed: the database{where} could not be opened:"
                  f" {type(exc).__name__}: {exc} (set STACKSHIFT_DEBUG=1 for the traceback)")


def _import_module(name: str) -> ModuleType:
    if not all(part.isidentifier() for part in name.split(".")):
        # "", ".app", "my app": not a module name; importing would fail with a traceback.
        raise bad_input(f"{name!r} is not a module name: give APP as package.module:attribute,"
                        " path/to/file.py or path/to/file.py:attribute")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise bad_input(f"cannot import module {name!r}: {exc}") from None
        traceback.print_exc()
        raise failed(f"importing {name} failed: {exc}") from None
    except Exception as exc:
        raise _import_failed(name, exc) from None


def _client(value: object) -> StackShift | None:
    if isinstance(value, StackShift):
        return value
    if isinstance(value, AsyncStackShift):
        return value.sync
    return None


def load_module(spec: str) -> tuple[ModuleType, str | None]:
    """Import the module ``spec`` names; return it and the attribute named, if any."""
    target, attribute = _split(spec)
    module = _import_file(Path(target)) if _is_file(target) else _import_module(target)
    return module, attribute


def find_app(module: ModuleType, attribute: str | None, spec: str) -> StackShift:
    """The client ``attribute`` names in ``module``, else its first client."""
    if attribute is not None:
        value: object = module
        for part in attribute.split("."):
            if not hasattr(value, part):
                raise bad_input(f"{spec}: {module.__name__} has no attribute {attribute!r}")
            value = getattr(value, part)
        app = _client(value)
        if app is None:
            kind = type(value).__name__
            article = "an" if kind[:1].lower() in "aeiou" else "a"
            raise bad_input(f"{spec}: {attribute} is {article} {kind}, not a StackShift")
        return app
    for value in vars(module).values():
        app = _client(value)
        if app is not None:
            return app
    raise bad_input(
        f"{spec}: no StackShift instance in {module.__name__}; name one as APP:attribute"
    )


def load_app(spec: str) -> tuple[StackShift, ModuleType]:
    """Import ``spec`` and return its client and module.

    Bad specs (missing file, module or attribute) exit 2; an exception raised by
    the app's own code while importing prints its traceback and exits 1.
    """
    module, attribute = load_module(spec)
    return find_app(module, attribute, spec), module
