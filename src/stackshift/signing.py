"""Signed requests of push mode: HMAC-SHA256 over a timestamp and the body.

The server signs every request it sends to an application's handler route;
the route runs nothing unless the signature is right and recent. Headers:

* ``StackShift-Timestamp``: the signing time, whole seconds since the epoch;
* ``StackShift-Signature``: ``v1=`` and the hex HMAC-SHA256, keyed by the
  endpoint's secret, of ``timestamp + "." + body``.

The timestamp bounds how long a captured request stays valid (five minutes);
within that window, each delivery is accepted once by the server, so a replay
executes nothing either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TIMESTAMP_HEADER = "stackshift-timestamp"
SIGNATURE_HEADER = "stackshift-signature"
#: Requests signed longer ago (or further ahead) than this are refused.
TOLERANCE_SECONDS = 300
SECRET_PREFIX = "whsec_"
_SCHEME = "v1="


class SignatureError(Exception):
    """A request the route refuses: ``code`` says why (for the 401 body)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return _SCHEME + mac.hexdigest()


def sign(secret: str, body: bytes, now: float) -> dict[str, str]:
    """The headers that sign ``body`` at ``now``."""
    timestamp = int(now)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature(secret, timestamp, body)}


def verify(secret: str, headers: dict[str, str], body: bytes, now: float) -> None:
    """Raise :class:`SignatureError` unless ``body`` was signed with ``secret`` recently.

    ``headers`` has lower-case names. The signature is checked before the
    timestamp's age, so a forged request never learns whether its time was right.
    """
    sent_at = headers.get(TIMESTAMP_HEADER)
    sent_signature = headers.get(SIGNATURE_HEADER)
    if not sent_at or not sent_signature:
        raise SignatureError("unsigned", "the request is not signed")
    try:
        timestamp = int(sent_at)
    except ValueError:
        raise SignatureError("bad_signature", "the signature timestamp is not a number") from None
    expected = signature(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), sent_signature.strip().encode()):
        raise SignatureError("bad_signature", "the signature does not match the request")
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        raise SignatureError(
            "stale_signature",
            f"the request was signed {abs(now - timestamp):.0f}s"
            f" {'ago' if timestamp < now else 'ahead of the receiving clock'};"
            f" at most {TOLERANCE_SECONDS}s either way are accepted")
