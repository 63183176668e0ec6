"""A FastAPI application with the StackShift handler route mounted (push mode).

Served by uvicorn in ``test_push.py``. Its client talks to the server only
(``STACKSHIFT_URL`` and ``STACKSHIFT_API_KEY``); ``PUSH_URL`` is the route's
public URL, registered at start-up. Each step appends ``start:NAME:PID`` and
``done:NAME:PID`` to the file in ``PUSH_EFFECTS`` (fsynced, so a killed process
leaves an exact record); ``PUSH_HANG_AT=NAME`` makes that step block (for
``PUSH_HANG_SECONDS``, 600 by default).
``PUSH_RECORD=FILE`` saves every request the route receives (headers and
body), so a test can send captured requests again.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

from fastapi import FastAPI

from stackshift import StackShift

PID = os.getpid()
client = StackShift()


def effect(line: str) -> None:
    with open(os.environ["PUSH_EFFECTS"], "a", encoding="utf-8") as f:
        f.write(f"{line}:{PID}\n")
        f.flush()
        os.fsync(f.fileno())


def work(name: str, value: Any = None) -> Any:
    effect(f"start:{name}")
    if os.environ.get("PUSH_HANG_AT") == name:
        time.sleep(float(os.environ.get("PUSH_HANG_SECONDS", "600")))
    effect(f"done:{name}")
    return value


@client.job("userOnboarding")
async def user_onboarding(ctx: Any) -> dict[str, Any]:
    user_id = ctx.payload["userId"]
    user = await ctx.step.run("create-user", work, "create-user",
                              {"id": user_id, "email": ctx.payload["email"]})
    await ctx.step.run("send-verification-email", work, "send-verification-email",
                       {"to": user["email"]})
    event = await ctx.step.wait_for_event("email.verified", correlation_key=f"user:{user_id}",
                                          timeout="24h")
    await ctx.step.run("unlock-account", work, "unlock-account", event.payload["userId"])
    return {"onboarded": user_id, "eventId": event.id}


@client.job("pushEcho")
def push_echo(ctx: Any) -> dict[str, Any]:
    ctx.step.run("echo", work, f"echo-{ctx.payload['n']}")
    return {"echo": ctx.payload["n"]}


class Recorder:
    """Saves each request, then passes it on unchanged."""

    def __init__(self, inner: Any, path: str) -> None:
        self.inner = inner
        self.path = path

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        messages = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({
                "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                "body": base64.b64encode(body).decode(),
            }) + "\n")

        async def replay() -> Any:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        await self.inner(scope, replay, send)


app = FastAPI()
route = client.asgi_app(url=os.environ["PUSH_URL"])
record = os.environ.get("PUSH_RECORD")
app.mount("/stackshift", Recorder(route, record) if record else route)


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
