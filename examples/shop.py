"""An example shop: receipts, user onboarding and a delayed follow-up email.

Run it with the worker, the live run board and a few demo runs::

    stackshift dev examples/shop.py

then, from another terminal in the same folder::

    stackshift start sendReceipt '{"orderId": "order_2002"}'
    stackshift events send email.verified '{"userId": "42"}' --correlation-key user:42
    stackshift runs list

The "external services" below are simulated so the example runs anywhere; the
first attempt of every receipt email fails on purpose, to show a retry that
does not repeat the step that already completed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import BaseModel

from stackshift import AsyncJobContext, StackShift

# STACKSHIFT_DATABASE_URL, or sqlite:///stackshift.db in the working directory.
stackshift = StackShift()

log = logging.getLogger("shop")


# -- simulated services ------------------------------------------------------------------


def load_order(order_id: str) -> dict[str, Any]:
    log.info("loading order %s", order_id)
    return {"orderId": order_id, "email": f"{order_id}@example.com", "total": 42.50}


def send_receipt_email(order: dict[str, Any], attempt: int) -> dict[str, Any]:
    if attempt == 1:
        # Mail providers time out now and then; the engine retries the run and
        # replays "load-order" from its stored result instead of running it again.
        raise ConnectionError("mail provider timed out (simulated)")
    # Fields given with extra= are kept with the record (runs logs, the dashboard).
    log.info("receipt for %s sent to %s", order["orderId"], order["email"],
             extra={"orderId": order["orderId"], "total": order["total"]})
    return {"to": order["email"], "messageId": f"msg_{order['orderId']}"}


async def create_user(user_id: str, email: str) -> dict[str, Any]:
    await asyncio.sleep(0.05)
    return {"id": user_id, "email": email, "locked": True}


async def send_verification_email(email: str) -> dict[str, Any]:
    await asyncio.sleep(0.05)
    log.info("verification email sent to %s", email)
    return {"to": email}


async def unlock_account(user_id: str) -> dict[str, Any]:
    return {"id": user_id, "locked": False}


def send_follow_up_email(order_id: str) -> dict[str, Any]:
    log.info("follow-up email for %s sent", order_id)
    return {"orderId": order_id}


# -- jobs --------------------------------------------------------------------------------


@stackshift.job("sendReceipt", queue="emails", max_attempts=5, backoff={"base": "0.5s"})
def send_receipt(ctx: Any) -> dict[str, Any]:
    order = ctx.step.run("load-order", load_order, ctx.payload["orderId"])
    email = ctx.step.run("send-receipt-email", send_receipt_email, order, ctx.run.attempt)
    return {"sent": True, "messageId": email["messageId"]}


class NewUser(BaseModel):
    userId: str
    email: str


@stackshift.job("userOnboarding")
async def user_onboarding(ctx: AsyncJobContext[NewUser]) -> dict[str, Any]:
    # ctx.payload is a NewUser: a payload without "email" fails the run at once,
    # naming the field, rather than in a step on every attempt.
    user_id = ctx.payload.userId
    user = await ctx.step.run("create-user", create_user, user_id, ctx.payload.email)
    await ctx.step.run("send-verification-email", send_verification_email, user["email"])
    # The run waits here without holding a worker until the event arrives:
    #   stackshift events send email.verified '{"userId": "42"}' --correlation-key user:42
    event = await ctx.step.wait_for_event(
        "email.verified", correlation_key=f"user:{user_id}", timeout="24h"
    )
    await ctx.step.run("unlock-account", unlock_account, event.payload["userId"])
    return {"onboarded": True}


@stackshift.job("sendFollowUp", queue="emails")
def send_follow_up(ctx: Any) -> dict[str, Any]:
    # A durable timer: the run is "waiting" and holds no worker slot meanwhile.
    ctx.step.sleep("cool-down", ctx.payload.get("delay", "5s"))
    ctx.step.run("send-follow-up-email", send_follow_up_email, ctx.payload["orderId"])
    return {"followedUp": True}


# -- stackshift dev ------------------------------------------------------------------------


def dev_seed(app: StackShift) -> list[str]:
    """Demo runs for ``stackshift dev``; the idempotency keys keep restarts from adding more."""
    app.start("sendReceipt", {"orderId": "order_1001"},
              idempotency_key="demo:receipt:order_1001", idempotency_ttl="30d")
    app.start("userOnboarding", {"userId": "42", "email": "ada@example.com"},
              idempotency_key="demo:onboarding:42", idempotency_ttl="30d")
    app.start("sendFollowUp", {"orderId": "order_1001", "delay": "5s"},
              idempotency_key="demo:follow-up:order_1001", idempotency_ttl="30d")
    return [
        """stackshift start sendReceipt '{"orderId": "order_2002"}'""",
        """stackshift events send email.verified '{"userId": "42"}' --correlation-key user:42""",
    ]
