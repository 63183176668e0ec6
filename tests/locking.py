"""What lock tests ask of a lock from outside its owner's block."""

from __future__ import annotations

from stackshift import LockNotAcquiredError, StackShift


def taken_by_another(app: StackShift, key: str) -> bool:
    """Whether another owner gets ``key`` now (taken and released at once)."""
    try:
        with app.state.lock(key, wait=0):
            return True
    except LockNotAcquiredError:
        return False
