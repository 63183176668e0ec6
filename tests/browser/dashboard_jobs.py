"""The jobs the dashboard's browser tests run on a real worker."""

from __future__ import annotations

import time
from typing import Any

from stackshift import NonRetriableError, StackShift

#: Markup that must reach the browser as text, never as elements or script.
HOSTILE = '<script>window.__pwned = "script"</script><img src=x onerror="window.__pwned=\'img\'">'

QUICK = {"base": 0.05, "factor": 2, "jitter": False}


def _pause(seconds: float) -> Any:
    def work() -> dict[str, float]:
        time.sleep(seconds)
        return {"slept": seconds}

    return work


def register_jobs(app: StackShift) -> None:
    @app.job("checkout", queue="orders", max_attempts=3, backoff=QUICK)
    def checkout(ctx: Any) -> dict[str, Any]:
        """Eight steps and a wait; the card is declined on the first two attempts."""
        order = ctx.payload["order"]
        for name in ("load-cart", "reserve-stock", "price-order", "apply-coupon"):
            ctx.step.run(name, _pause(0.02))

        def charge() -> dict[str, Any]:
            ctx.log.info("charging card for order %s (attempt %d)", order, ctx.run.attempt)
            time.sleep(0.03)
            if ctx.run.attempt < 3:
                ctx.log.warning("processor answered 502 for order %s", order)
                raise ConnectionError("card processor unavailable (502 Bad Gateway)")
            return {"charged": 4200, "currency": "EUR"}

        ctx.step.run("charge-card", charge)
        ctx.log.info("waiting for the payment to settle")
        event = ctx.step.wait_for_event("payment.settled", correlation_key=f"order:{order}",
                                        timeout="1h")
        ctx.log.info("payment settled: %s", event.payload)
        ctx.step.run("send-receipt", _pause(0.03))
        ctx.step.run("notify-warehouse", _pause(0.01))
        ctx.step.run("close-order", _pause(0.01))
        return {"order": order, "status": "closed"}

    @app.job("import-feed", queue="imports", max_attempts=2, backoff=QUICK)
    def import_feed(ctx: Any) -> dict[str, Any]:
        """Fails both attempts; a manual retry (attempt 3) succeeds, slowly."""
        ctx.step.run("download", _pause(0.01))
        ctx.log.info("parsing feed %s, attempt %d", ctx.payload["feed"], ctx.run.attempt,
                     extra={"feed": ctx.payload["feed"], "columns": ["sku", "cost"]})

        def parse() -> int:
            if ctx.run.attempt <= 2:
                raise ValueError(f"row 17: unexpected column 'price' in {ctx.payload['feed']}")
            time.sleep(1.2)
            return 120

        rows = ctx.step.run("parse", parse)
        return {"rows": rows}

    @app.job("send-email", queue="emails")
    def send_email(ctx: Any) -> dict[str, Any]:
        ctx.step.run("render", _pause(0.01))
        event = ctx.step.wait_for_event("email.verified",
                                        correlation_key=f"user:{ctx.payload['user']}",
                                        timeout="1h")
        ctx.step.run("unlock", _pause(0.01))
        return {"verified": event.payload}

    @app.job("sync-invoice", queue="billing", max_attempts=1)
    def sync_invoice(ctx: Any) -> dict[str, Any]:
        """Fails its only attempt unless the ledger is ``reachable``; a retry succeeds."""
        ctx.step.run("fetch", _pause(0.01))
        if ctx.run.attempt == 1 and not ctx.payload.get("reachable"):
            raise TimeoutError(f"ledger API timed out for invoice {ctx.payload['invoice']}")
        return {"synced": ctx.payload["invoice"]}

    @app.job("render-report", queue="reports", max_attempts=1)
    def render_report(ctx: Any) -> None:
        """Puts hostile markup in its payload, a log line and its error."""
        ctx.log.info("title was %s", ctx.payload["title"], extra={"title": ctx.payload["title"]})
        raise NonRetriableError(f"cannot render {ctx.payload['title']}")

    @app.job("crunch-numbers", queue="reports", max_attempts=1)
    def crunch_numbers(ctx: Any) -> dict[str, Any]:
        """A quick step, then one that takes ``seconds``."""
        ctx.step.run("load", _pause(0.01))
        ctx.step.run("crunch", _pause(ctx.payload["seconds"]))
        return {"crunched": True}

    @app.job("chatter", queue="reports", max_attempts=1)
    def chatter(ctx: Any) -> None:
        """Logs ``lines`` numbered lines in one step."""
        def talk() -> None:
            for n in range(ctx.payload["lines"]):
                ctx.log.info("line %d", n)

        ctx.step.run("talk", talk)

    @app.job("many-items", queue="reports", max_attempts=1)
    def many_items(ctx: Any) -> int:
        """A step for each of ``items`` items."""
        for n in range(ctx.payload["items"]):
            ctx.step.run(f"item-{n}", lambda n=n: n)
        return int(ctx.payload["items"])

    @app.job("resize-image", queue="media")
    def resize_image(ctx: Any) -> dict[str, Any]:
        ctx.step.run("resize", _pause(0.005))
        ctx.state.increment("images:resized")
        return {"width": 640}
