"""Dashboard sessions: a signed cookie that carries the login and the CSRF token.

The cookie holds no API key: after a key is checked once at the login page, the
browser keeps a session signed with HMAC-SHA256 under the dashboard's secret.
It is ``HttpOnly`` (scripts cannot read it) and ``SameSite=Strict`` (other sites
cannot make the browser send it). Every form that acts (POST) also carries the
session's CSRF token, compared in constant time.

Each session has a random id. The cookie is not stored on the server while it
lasts; logging out records its id as ended in the database (see
:mod:`stackshift.store.sessions`), so that a copy of the cookie is refused too.
A cookie without an id (signed before sessions had one) is no session.

Open mode (``stackshift dev``) has sessions too, without a login: the CSRF
token still keeps a page on another site from acting on a local dashboard.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

SESSION_COOKIE = "stackshift_session"
FLASH_COOKIE = "stackshift_flash"


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    authenticated: bool
    issued_at: float
    expires_at: float
    key_name: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs small JSON values; a value whose signature does not match is ignored."""

    def __init__(self, secret: bytes, purpose: str) -> None:
        self._key = hashlib.sha256(secret + b"\x00" + purpose.encode()).digest()

    def sign(self, value: dict[str, object]) -> str:
        body = _b64(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())
        mac = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return f"{body}.{_b64(mac)}"

    def unsign(self, token: str | None) -> dict[str, object] | None:
        if not token or token.count(".") != 1 or len(token) > 4096:
            return None
        body, mac = token.split(".")
        expected = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(expected, _unb64(mac)):
                return None
            value = json.loads(_unb64(body))
        except (ValueError, UnicodeDecodeError):
            return None
        return value if isinstance(value, dict) else None


class Sessions:
    def __init__(self, secret: bytes, max_age: float) -> None:
        self._sessions = Signer(secret, "session")
        self._flash = Signer(secret, "flash")
        self.max_age = max_age

    def new(self, now: float, *, authenticated: bool, key_name: str | None = None) -> Session:
        return Session(secrets.token_urlsafe(16), secrets.token_urlsafe(24), authenticated, now,
                       now + self.max_age, key_name)

    def encode(self, session: Session) -> str:
        return self._sessions.sign({
            "sid": session.id, "csrf": session.csrf, "auth": session.authenticated,
            "iat": session.issued_at, "exp": session.expires_at, "key": session.key_name,
        })

    def decode(self, token: str | None, now: float) -> Session | None:
        data = self._sessions.unsign(token)
        if data is None:
            return None
        try:
            session = Session(str(data["sid"]), str(data["csrf"]), bool(data["auth"]),
                              float(data["iat"]), float(data["exp"]),  # type: ignore[arg-type]
                              None if data.get("key") is None else str(data["key"]))
        except (KeyError, TypeError, ValueError):
            return None
        if not session.id:
            return None
        return session if session.expires_at > now else None

    def encode_flash(self, kind: str, text: str) -> str:
        return self._flash.sign({"kind": kind, "text": text[:500]})

    def decode_flash(self, token: str | None) -> tuple[str, str] | None:
        data = self._flash.unsign(token)
        if data is None:
            return None
        return str(data.get("kind", "info")), str(data.get("text", ""))


def same_token(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))
