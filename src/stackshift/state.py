"""The state store API: ``ctx.state`` and ``stackshift.state``.

State calls are not steps: a value set in a handler is set again on a retry.
Keep code that must not repeat inside ``ctx.step.run``.

Inside a handler, a call whose arguments the engine's own checks refuse (a bad
duration, key, value or limit, arguments the method's signature does not take,
a lock's ``extend()`` outside its block) fails the run at once unless the
handler catches the error, as a refused ``ctx.step`` call does
(:meth:`~stackshift.worker.invocation.Invocation.refuse`): every attempt would
make the same call. What depends on what is stored (a key that
does not hold an integer) or on other owners (:class:`LockNotAcquiredError`) is
retried as usual; outside a handler (``app.state``) nothing of runs applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .awaits import noted
from .durations import parse_duration
from .errors import LockNotAcquiredError, ValidationError
from .keywords import public_calls
from .models import LockLoss
from .runlogs import CURRENT

if TYPE_CHECKING:
    from .remote import RemoteService
    from .service import Service

log = logging.getLogger("stackshift.state")

#: The warning of an owner that had lost its lock by the end of its block, by how
#: it lost it (:data:`~stackshift.models.LockLoss`); given the key and the TTL.
_LOST: dict[LockLoss, str] = {
    "expired": "lock %r ran past its ttl of %ss before its block ended; no other owner "
               "took it meanwhile, but one could have (give the lock a longer ttl, or "
               "extend it sooner)",
    "broken": "lock %r was broken (released by someone else: state.break_lock, "
              "`stackshift state unlock` or the dashboard) while its block held it, "
              "before its ttl of %ss ran out: another owner may have held it meanwhile",
    "expired_or_broken": "lock %r ran past its ttl of %ss before its block ended, or was "
                         "broken (released by someone else: state.break_lock, `stackshift "
                         "state unlock` or the dashboard) while its block held it: which "
                         "of the two cannot be told, as the lock was taken by another "
                         "owner since (who may have held it meanwhile) or cleaned up (if "
                         "it ran past its ttl, give the lock a longer ttl, or extend it "
                         "sooner)",
}


def lock_holder() -> str:
    """Who takes a lock, in words, for listings and refusals: the run and attempt
    of the handler taking it, else this host and process."""
    invocation = CURRENT.get()
    if invocation is not None:
        return f"run {invocation.run.id} (attempt {invocation.lease.attempt})"
    return f"{socket.gethostname()[:150]} (pid {os.getpid()})"


#: How a refusal names the calls of this module inside a handler.
_API = "ctx.state"


def _checking() -> AbstractContextManager[None]:
    """Around the checks of a state call's arguments: inside a handler, what they
    raise is a refused ``ctx.state`` call; outside one, the error is only raised."""
    invocation = CURRENT.get()
    return contextlib.nullcontext() if invocation is None else invocation.refusing(_API)


def _refused(_: object, exc: Exception) -> None:
    """Inside a handler, arguments that a state or lock method's signature does not
    take (an unknown keyword, a missing or an extra positional argument) and a
    lock's ``extend()`` outside its block are a refused call."""
    invocation = CURRENT.get()
    if invocation is not None:
        invocation.refuse(exc, _API)


def lock_ttl(ttl: Any) -> float:
    """A lock's TTL in seconds: a duration of more than 0."""
    seconds = parse_duration(ttl, name="ttl")
    if seconds <= 0:
        raise ValidationError("lock ttl must be more than 0")
    return seconds


@public_calls("state", refused=_refused)
class State:
    """Every call goes through the service, embedded or remote alike.

    The service checks a call's arguments before it writes or reads anything, and
    what it raises then (``ValidationError``, ``TypeError``) is a refusal inside
    a handler (:func:`_checking`); an increment checks its arguments first, as its
    store may refuse the stored value, which can change before the next attempt.
    """

    def __init__(self, service: Service | RemoteService) -> None:
        self._service = service

    def get(self, key: str, default: Any = None) -> Any:
        """The value, or ``default`` when the key is missing or expired."""
        with _checking():
            found, value = self._service.state_get(key)
        return value if found else default

    def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: Any = None,
        expires_at: datetime | str | None = None,
    ) -> None:
        """Store a JSON value (256 KiB by default), optionally expiring."""
        with _checking():
            self._service.state_set(key, value, ttl=ttl, expires_at=expires_at)

    def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it held a live value."""
        with _checking():
            return self._service.state_delete(key)

    def increment(self, key: str, by: int = 1) -> int:
        """Add ``by`` atomically (across processes and machines); a new key starts at 0."""
        with _checking():
            self._service.check_increment(key, by)
        # Not a refusal: a stored value that is not an integer may be replaced.
        return self._service.state_increment(key, by)

    def keys(self, prefix: str | None = None, limit: int = 100, *,
             after: str | None = None) -> list[dict[str, Any]]:
        """Live keys in key order with their values, expiry and last update (epoch
        seconds), at most ``limit``. For the next page pass the last key as ``after``."""
        with _checking():
            return self._service.state_keys(prefix, limit, after)

    def locks(self, prefix: str | None = None, limit: int = 100, *,
              after: str | None = None) -> list[dict[str, Any]]:
        """Live (unexpired) locks in key order with who holds each (``holder``) and
        their expiry (epoch seconds), at most ``limit``. For the next page pass the
        last key as ``after``."""
        with _checking():
            return self._service.lock_list(prefix, limit, after)

    def break_lock(self, key: str) -> bool:
        """Free ``key``'s lock whatever its owner (one that is stuck); return whether a
        live lock was there. Its owner finds out: its ``extend()`` returns False, and on
        exit its ``lost`` is True and a warning says the lock was broken."""
        with _checking():
            return self._service.lock_break(key)

    def _lock_args(self, key: str, ttl: Any, wait: Any) -> tuple[str, float, float]:
        # The key as every state call checks it (its length, a NUL character), here
        # rather than on entering the block: inside a handler a refused call.
        self._service.check_state_key(key)
        return key, lock_ttl(ttl), 0.0 if wait is None else parse_duration(wait, name="wait")

    def _try_lock(self, key: str, owner: str, ttl: float, holder: str) -> bool:
        return self._service.lock_acquire(key, owner, ttl, holder)

    def _holding(self, key: str) -> tuple[str | None, float] | None:
        """Who holds ``key``'s live lock and for how many seconds more; ``None``
        when no lock on it is live."""
        found = self._service.lock_list(key, 1)
        if not found or found[0]["key"] != key:
            return None
        return found[0]["holder"], found[0]["expires_at"] - self._service.clock.now()

    def _extend(self, key: str, owner: str, ttl: float) -> bool:
        return self._service.lock_extend(key, owner, ttl)

    def _release(self, key: str, owner: str) -> LockLoss | None:
        return self._service.lock_release(key, owner)

    def lock(self, key: str, *, ttl: Any = "30s", wait: Any = None) -> Lock:
        """Hold ``key`` exclusively: ``with state.lock(k):`` or ``async with``.

        Raises :class:`LockNotAcquiredError` when another owner holds it for
        longer than ``wait`` (``None`` or 0: try once). The TTL frees the lock if
        its owner dies; on exit only this owner's lock is released. A long block
        keeps the lock with ``extend()`` (``await extend_async()``). A block that
        outlasts the TTL is not stopped: on exit the lock's ``lost`` is True and a
        warning is logged (``stackshift.state``), which says whether the TTL ran
        out or the lock was broken (``break_lock``), or both possibilities when
        another owner has taken the lock since. Not reentrant: a second lock on
        the same key, even in the same block, is another owner.
        """
        with _checking():
            key, seconds, patience = self._lock_args(key, ttl, wait)
        return Lock(self, key, seconds, patience)


@public_calls("state.lock(key)", refused=_refused)
class Lock:
    """One attempt to own a lock; usable once, as a sync or async context manager.

    ``lost`` is set on exit: True when the TTL ran out before the block ended (or
    an operator broke the lock, ``state.break_lock``), so another owner may have
    held the lock meanwhile.
    """

    def __init__(self, state: State, key: str, ttl: float, wait: float) -> None:
        self._state = state
        self.key = key
        self.ttl = ttl
        self.wait = wait
        self.owner = os.urandom(12).hex()  # a secret: it alone extends and releases
        self.holder = lock_holder()
        self.lost: bool | None = None
        # An async attempt cancelled while its thread runs (see _attempt).
        self._guard = threading.Lock()
        self._abandoned = False
        self._taken = False
        self._held = False  # from a successful enter to the exit
        self._last_ttl = ttl  # of the last acquire or extend: what ran out, if the lock is lost

    def extend(self, ttl: Any = None) -> bool:
        """Make the lock expire ``ttl`` from now (by default the lock's own ``ttl``),
        inside its block. True when this owner still held it; False when its TTL had
        already run out or the lock was broken (another owner may hold it): the lock
        is not taken back, and ``lost`` is True on exit."""
        with _checking():
            seconds = self.ttl if ttl is None else lock_ttl(ttl)
        if not self._held:  # the handler's own flow: every attempt would get here
            error = RuntimeError(f"lock {self.key!r} is not held: extend() works only inside "
                                 "its with or async with block")
            _refused(self, error)
            raise error
        extended = self._state._extend(self.key, self.owner, seconds)
        if extended:
            self._last_ttl = seconds
        return extended

    async def extend_async(self, ttl: Any = None) -> bool:
        """:meth:`extend` for an ``async with`` block: the call runs in a thread."""
        return await asyncio.to_thread(self.extend, ttl)

    def _released(self, lost: LockLoss | None) -> None:
        self.lost = lost is not None
        if lost is not None:
            log.warning(_LOST[lost], self.key, f"{self._last_ttl:g}")

    def _refused(self) -> LockNotAcquiredError:
        """The refusal, saying who holds the lock and for how long (one more read)."""
        refused = f"lock {self.key!r} is held by another owner"
        try:
            holding = self._state._holding(self.key)
        except Exception:  # the refusal stands; only its words are lost
            log.debug("could not read who holds lock %r", self.key, exc_info=True)
            holding = None
        if holding is not None:
            holder, left = holding
            refused += (f": {holder}" if holder else " (who did not say who it is)") + (
                f", for {max(0.0, left):.1f}s more unless it is released or extended")
        return LockNotAcquiredError(refused)

    def _not_held(self) -> None:
        """Refuse entering a lock whose block is still running: the inner block's
        exit would release the lock the outer one still relies on."""
        if self._held:
            error = RuntimeError(
                f"lock {self.key!r} is held by this Lock's block already: locks are not"
                " reentrant, and its exit would release the lock the outer block holds")
            _refused(self, error)
            raise error

    def __enter__(self) -> Lock:
        self._not_held()
        deadline = time.monotonic() + self.wait
        pause = 0.005
        while not self._try():
            if time.monotonic() >= deadline:
                raise self._refused()
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.25)
        self._held = True
        return self

    def _try(self) -> bool:
        """One try. One cut short (Ctrl-C, a lost connection) may have taken the
        lock before it could say so: the lock is given back (a release deletes only
        this owner's lock), rather than left held by nobody for its whole TTL."""
        try:
            return self._state._try_lock(self.key, self.owner, self.ttl, self.holder)
        except BaseException:
            # Should this fail too, the TTL frees the lock; the first error is told.
            with contextlib.suppress(Exception):
                self._state._release(self.key, self.owner)
            raise

    def __exit__(self, *exc: object) -> None:
        self._held = False
        self._released(self._state._release(self.key, self.owner))

    def _attempt(self) -> bool:
        """One try, in a thread of its own. A waiter cancelled meanwhile (a timeout,
        a cancelled task) no longer takes the lock: taking it then would leave it
        held, by nobody, for its whole TTL. So it is given back at once."""
        taken = self._state._try_lock(self.key, self.owner, self.ttl, self.holder)
        with self._guard:
            if not self._abandoned:
                self._taken = taken
                return taken
        if taken:
            self._state._release(self.key, self.owner)
        return False

    async def _attempt_async(self) -> bool:
        try:
            return await asyncio.to_thread(self._attempt)
        except asyncio.CancelledError:
            with self._guard:
                self._abandoned = True
                taken, self._taken = self._taken, False
            if taken:  # the try took the lock just as the waiter was cancelled
                threading.Thread(target=self._state._release, args=(self.key, self.owner),
                                 name="stackshift-lock-release").start()
            raise

    async def __aenter__(self) -> Lock:
        self._not_held()
        with self._guard:
            self._abandoned = False  # a Lock entered again after a cancelled wait
        deadline = time.monotonic() + self.wait
        pause = 0.005
        while not await self._attempt_async():
            if time.monotonic() >= deadline:
                raise await asyncio.to_thread(self._refused)
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.25)
        self._held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._held = False
        self._released(await asyncio.to_thread(self._state._release, self.key, self.owner))


@public_calls("state", refused=_refused)
class AsyncState:
    """The same state API for ``async`` code; calls run in a thread."""

    def __init__(self, state: State) -> None:
        self._state = state

    async def get(self, key: str, default: Any = None) -> Any:
        return await asyncio.to_thread(self._state.get, key, default)

    async def set(self, key: str, value: Any, *, ttl: Any = None,
                  expires_at: datetime | str | None = None) -> None:
        await asyncio.to_thread(self._state.set, key, value, ttl=ttl, expires_at=expires_at)

    async def delete(self, key: str) -> bool:
        return await asyncio.to_thread(self._state.delete, key)

    async def increment(self, key: str, by: int = 1) -> int:
        return await asyncio.to_thread(self._state.increment, key, by)

    async def keys(self, prefix: str | None = None, limit: int = 100, *,
                   after: str | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._state.keys, prefix, limit, after=after)

    async def locks(self, prefix: str | None = None, limit: int = 100, *,
                    after: str | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._state.locks, prefix, limit, after=after)

    async def break_lock(self, key: str) -> bool:
        return await asyncio.to_thread(self._state.break_lock, key)

    def lock(self, key: str, *, ttl: Any = "30s", wait: Any = None) -> Lock:
        """Use as ``async with ctx.state.lock(key):``."""
        return self._state.lock(key, ttl=ttl, wait=wait)


@noted("ctx.state")
class HandlerAsyncState(AsyncState):
    """``ctx.state`` of an ``async def`` handler: the calls of :class:`AsyncState`,
    each noted with the invocation, so that one never awaited fails the run
    (:mod:`stackshift.awaits`). ``app.state_async`` is left as it is."""

    def __init__(self, state: AsyncState) -> None:
        super().__init__(state._state)
