"""The product's reference examples, run end to end on a real database.

``sendReceipt``: a failure after the first step retries without repeating it.
``provisionAfterPayment``: an error in the handler body retries;
``NonRetriableError`` fails at once.
``send-verification-email``: an idempotency key with a TTL maps duplicate starts
to one run until the TTL passes.

Each runs with plain and ``async def`` handlers, through ``StackShift`` and
through ``AsyncStackShift``. Time is a fake clock: backoff and TTLs take no
wall-clock time.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from stackshift import (
    AsyncStackShift,
    IdempotencyConflictError,
    NonRetriableError,
    Run,
    StackShift,
)
from stackshift.testing import FakeClock, run_until_idle

FLAVOURS = ["sync", "async"]


def drive(app: StackShift, clock: FakeClock, run_id: str, *, step: str = "10m",
          rounds: int = 20) -> Run:
    """Execute what is due, move the clock past any backoff, until the run finishes."""
    for _ in range(rounds):
        run_until_idle(app)
        run = app.runs.get(run_id)
        if run.is_terminal:
            return run
        clock.advance(step)
    raise AssertionError(f"run {run_id} did not finish: {app.runs.get(run_id).status}")


def kinds(app: StackShift, run_id: str) -> list[str]:
    return [e.kind for e in app.runs.timeline(run_id)]


# -- sendReceipt -------------------------------------------------------------------------


class Shop:
    """The outside world of the receipt example; counts real side effects."""

    def __init__(self, email_failures: int = 0) -> None:
        self.email_failures = email_failures
        self.calls: Counter[str] = Counter()
        self.sent: list[dict[str, Any]] = []
        self.email_keys: list[str] = []
        self._lock = threading.Lock()

    def load_order(self, order_id: str) -> dict[str, Any]:
        with self._lock:
            self.calls["load-order"] += 1
        return {"orderId": order_id, "email": "ada@example.com", "total": 4200}

    def send_receipt_email(self, order: dict[str, Any], key: str) -> dict[str, Any]:
        with self._lock:
            self.calls["send-receipt-email"] += 1
            self.email_keys.append(key)
            if self.calls["send-receipt-email"] <= self.email_failures:
                raise ConnectionError("mail provider timed out")
            self.sent.append(order)
        return {"messageId": f"msg-{len(self.sent)}"}


def register_send_receipt(app: StackShift | AsyncStackShift, flavour: str, shop: Shop) -> None:
    if flavour == "sync":

        @app.job("sendReceipt", queue="emails", max_attempts=5)
        def send_receipt(ctx):  # type: ignore[no-untyped-def]
            order = ctx.step.run("load-order", shop.load_order, ctx.payload["orderId"])
            ctx.step.run(
                "send-receipt-email",
                lambda: shop.send_receipt_email(order, ctx.step.idempotency_key()),
            )
            return {"sent": True}

    else:

        async def load_order(order_id: str) -> dict[str, Any]:
            await asyncio.sleep(0)
            return shop.load_order(order_id)

        @app.job("sendReceipt", queue="emails", max_attempts=5)
        async def send_receipt_async(ctx):  # type: ignore[no-untyped-def]
            order = await ctx.step.run("load-order", load_order, ctx.payload["orderId"])
            await ctx.step.run(
                "send-receipt-email",
                lambda: shop.send_receipt_email(order, ctx.step.idempotency_key()),
            )
            return {"sent": True}


def check_receipt_run(app: StackShift, run: Run, shop: Shop) -> None:
    assert run.status == "completed"
    assert run.result == {"sent": True}
    assert run.attempt == 2
    assert run.error is None
    # The first step ran once; the email was tried twice and sent once.
    assert shop.calls == {"load-order": 1, "send-receipt-email": 2}
    assert len(shop.sent) == 1
    # The key handed to the mail provider is the same on the retry.
    assert len(set(shop.email_keys)) == 1

    attempts = app.runs.attempts(run.id)
    assert [a.status for a in attempts] == ["failed", "completed"]
    assert attempts[0].error is not None
    assert attempts[0].error.type == "ConnectionError"
    assert attempts[0].error.message == "mail provider timed out"

    steps = {s.key: s for s in app.runs.steps(run.id)}
    assert steps["load-order"].status == "completed"
    assert steps["load-order"].attempt == 1  # made in attempt 1, reused in attempt 2
    assert steps["load-order"].result == {"orderId": "order_123", "email": "ada@example.com",
                                          "total": 4200}
    assert steps["send-receipt-email"].status == "completed"
    assert steps["send-receipt-email"].attempt == 2
    assert steps["send-receipt-email"].result == {"messageId": "msg-1"}

    entries = app.runs.timeline(run.id)
    step_entries = [(e.kind, e.step, e.attempt) for e in entries if e.kind.startswith("step.")]
    assert step_entries == [
        ("step.completed", "load-order", 1),
        ("step.failed", "send-receipt-email", 1),
        ("step.completed", "send-receipt-email", 2),
    ]
    failed = next(e for e in entries if e.kind == "step.failed")
    assert failed.data["error"] == {"type": "ConnectionError",
                                    "message": "mail provider timed out"}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_send_receipt_retries_without_repeating_the_first_step(
    fake_app: StackShift, clock: FakeClock, flavour: str
) -> None:
    shop = Shop(email_failures=1)
    register_send_receipt(fake_app, flavour, shop)
    run = fake_app.queue("emails").enqueue(
        "sendReceipt", {"orderId": "order_123", "customerId": "cus_123"},
        idempotency_key="receipt:order_123", max_attempts=5,
    )
    assert (run.status, run.queue, run.max_attempts) == ("queued", "emails", 5)

    assert run_until_idle(fake_app) == 1
    after_first = fake_app.runs.get(run.id)
    assert after_first.status == "retrying"
    assert after_first.error is not None and after_first.error.type == "ConnectionError"
    # Backoff after the first failure: between 0.5s and 1s.
    assert after_first.next_attempt_at is not None
    wait = (after_first.next_attempt_at.timestamp() - clock.now())
    assert 0.5 <= wait <= 1.0
    # Not due yet: nothing runs until the clock passes the backoff.
    assert run_until_idle(fake_app) == 0
    assert shop.calls["send-receipt-email"] == 1

    clock.advance("1s")
    assert run_until_idle(fake_app) == 1
    check_receipt_run(fake_app, fake_app.runs.get(run.id), shop)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_send_receipt_through_the_async_client(db_url: str, clock: FakeClock,
                                               flavour: str) -> None:
    shop = Shop(email_failures=1)

    async def main() -> tuple[Run, list[Any]]:
        async with AsyncStackShift(db_url, clock=clock) as app:
            register_send_receipt(app, flavour, shop)
            run = await app.queue("emails").enqueue(
                "sendReceipt", {"orderId": "order_123", "customerId": "cus_123"},
                idempotency_key="receipt:order_123", max_attempts=5,
            )
            assert run.created
            # run_until_idle blocks (and runs async handlers on its own loop): keep it
            # off this event loop.
            await asyncio.to_thread(run_until_idle, app)
            assert (await app.runs.get(run.id)).status == "retrying"
            clock.advance("1s")
            await asyncio.to_thread(run_until_idle, app)
            done = await app.runs.wait(run.id, timeout="5s")
            return done, await app.runs.timeline(run.id)

    done, timeline = asyncio.run(main())
    with StackShift(db_url, clock=clock) as reader:
        check_receipt_run(reader, done, shop)
        assert [e.kind for e in reader.runs.timeline(done.id)] == [e.kind for e in timeline]


# -- provisionAfterPayment -----------------------------------------------------------


class Billing:
    """Payments and provisioning; counts real side effects."""

    def __init__(self, payment_status: str = "paid", gateway_down_for: int = 0) -> None:
        self.payment_status = payment_status
        self.gateway_down_for = gateway_down_for
        self.calls: Counter[str] = Counter()

    def verify_payment(self, payment_id: str) -> dict[str, Any]:
        self.calls["verify-payment"] += 1
        return {"id": payment_id, "status": self.payment_status,
                "customerEmail": "ada@example.com"}

    def entitlements_ready(self) -> bool:
        """Checked outside any step, so it runs again on every attempt."""
        self.calls["entitlements-check"] += 1
        return self.calls["entitlements-check"] > self.gateway_down_for

    def provision(self, customer_id: str) -> dict[str, Any]:
        self.calls["provision-customer-resources"] += 1
        return {"customer": customer_id, "cluster": "eu-1"}

    def enable_plan(self, customer_id: str) -> str:
        self.calls["enable-plan"] += 1
        return "pro"

    def send_receipt(self, email: str) -> bool:
        self.calls["send-receipt"] += 1
        return True


def check_payment(payment: dict[str, Any], billing: Billing) -> None:
    if payment["status"] == "declined":
        raise NonRetriableError(f"payment {payment['id']} was declined")
    if payment["status"] != "paid":
        raise RuntimeError("Payment is not complete")
    if not billing.entitlements_ready():
        raise RuntimeError("entitlements service unavailable")


def register_provision(app: StackShift | AsyncStackShift, flavour: str,
                       billing: Billing) -> None:
    if flavour == "sync":

        @app.job("provisionAfterPayment", queue="payments")
        def provision(ctx):  # type: ignore[no-untyped-def]
            payment = ctx.step.run("verify-payment", billing.verify_payment,
                                   ctx.payload["paymentId"])
            check_payment(payment, billing)
            customer = ctx.payload["customerId"]
            ctx.step.run("provision-customer-resources", billing.provision, customer)
            ctx.step.run("enable-plan", billing.enable_plan, customer)
            ctx.step.run("send-receipt", billing.send_receipt, payment["customerEmail"])
            return {"provisioned": True}

    else:

        @app.job("provisionAfterPayment", queue="payments")
        async def provision_async(ctx):  # type: ignore[no-untyped-def]
            payment = await ctx.step.run("verify-payment", billing.verify_payment,
                                         ctx.payload["paymentId"])
            check_payment(payment, billing)
            customer = ctx.payload["customerId"]
            await ctx.step.run("provision-customer-resources", billing.provision, customer)
            await ctx.step.run("enable-plan", billing.enable_plan, customer)
            await ctx.step.run("send-receipt", billing.send_receipt, payment["customerEmail"])
            return {"provisioned": True}


PAYMENT = {"paymentId": "pay_123", "customerId": "cus_123"}


def start_provision(app: StackShift) -> Run:
    return app.queue("payments").enqueue(
        "provisionAfterPayment", PAYMENT, max_attempts=6,
        idempotency_key="payment:pay_123:provision",
    )


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_provision_error_in_handler_body_retries_then_completes(
    fake_app: StackShift, clock: FakeClock, flavour: str
) -> None:
    billing = Billing(gateway_down_for=2)
    register_provision(fake_app, flavour, billing)
    run = start_provision(fake_app)

    done = drive(fake_app, clock, run.id)
    assert done.status == "completed"
    assert done.result == {"provisioned": True}
    assert done.attempt == 3
    # Code outside steps ran on every attempt; every step's side effect happened once.
    assert billing.calls == {
        "verify-payment": 1,
        "entitlements-check": 3,
        "provision-customer-resources": 1,
        "enable-plan": 1,
        "send-receipt": 1,
    }
    attempts = fake_app.runs.attempts(run.id)
    assert [a.status for a in attempts] == ["failed", "failed", "completed"]
    for failed in attempts[:2]:
        assert failed.error is not None
        assert failed.error.type == "RuntimeError"
        assert failed.error.message == "entitlements service unavailable"
        assert failed.error.traceback is not None
        assert "check_payment" in failed.error.traceback
    assert kinds(fake_app, run.id).count("run.retrying") == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_provision_keeps_retrying_a_body_error_until_attempts_run_out(
    fake_app: StackShift, clock: FakeClock, flavour: str
) -> None:
    # The payment is still pending; the verified result is remembered, so every
    # attempt fails the same way until the budget of 6 is spent.
    billing = Billing(payment_status="pending")
    register_provision(fake_app, flavour, billing)
    run = start_provision(fake_app)

    failed = drive(fake_app, clock, run.id)
    assert failed.status == "failed"
    assert failed.attempt == 6
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == ("RuntimeError",
                                                         "Payment is not complete")
    assert billing.calls == {"verify-payment": 1}
    attempts = fake_app.runs.attempts(run.id)
    assert [a.number for a in attempts] == [1, 2, 3, 4, 5, 6]
    assert all(a.status == "failed" for a in attempts)
    timeline = kinds(fake_app, run.id)
    assert timeline.count("attempt.failed") == 6
    assert timeline.count("run.retrying") == 5
    assert timeline[-1] == "run.failed"
    # The failed run is listed as failed in its queue.
    listed = fake_app.runs.list(status="failed", queue="payments")
    assert [r.id for r in listed] == [run.id]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_provision_non_retriable_error_fails_at_once(
    fake_app: StackShift, clock: FakeClock, flavour: str
) -> None:
    billing = Billing(payment_status="declined")
    register_provision(fake_app, flavour, billing)
    run = start_provision(fake_app)

    assert run_until_idle(fake_app) == 1
    failed = fake_app.runs.get(run.id)
    assert failed.status == "failed"
    assert failed.attempt == 1 and failed.max_attempts == 6
    assert failed.error is not None
    assert failed.error.type == "NonRetriableError"
    assert failed.error.message == "payment pay_123 was declined"
    assert failed.next_attempt_at is None
    assert failed.finished_at is not None
    # Nothing more happens, however long we wait.
    clock.advance("1d")
    assert run_until_idle(fake_app) == 0
    assert fake_app.runs.get(run.id).attempt == 1
    assert billing.calls == {"verify-payment": 1}
    timeline = kinds(fake_app, run.id)
    assert "run.retrying" not in timeline
    assert timeline[-2:] == ["attempt.failed", "run.failed"]


def test_provision_through_the_async_client(db_url: str, clock: FakeClock) -> None:
    billing = Billing(payment_status="declined")

    async def main() -> Run:
        async with AsyncStackShift(db_url, clock=clock) as app:
            register_provision(app, "async", billing)
            run = await app.queue("payments").enqueue(
                "provisionAfterPayment", PAYMENT, max_attempts=6,
                idempotency_key="payment:pay_123:provision",
            )
            await asyncio.to_thread(run_until_idle, app)
            attempts = await app.runs.attempts(run.id)
            assert len(attempts) == 1
            return await app.runs.get(run.id)

    failed = asyncio.run(main())
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.type == "NonRetriableError"


# -- send-verification-email -----------------------------------------------------------


class Mailer:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, email: str) -> dict[str, str]:
        self.sent.append(email)
        return {"to": email}


def register_verification(app: StackShift | AsyncStackShift, flavour: str,
                          mailer: Mailer) -> None:
    if flavour == "sync":

        @app.job("send-verification-email", queue="emails")
        def send_verification(ctx):  # type: ignore[no-untyped-def]
            return ctx.step.run("send", mailer.send, ctx.payload["email"])

    else:

        @app.job("send-verification-email", queue="emails")
        async def send_verification_async(ctx):  # type: ignore[no-untyped-def]
            return await ctx.step.run("send", mailer.send, ctx.payload["email"])


USER = {"userId": "user_123", "email": "ada@example.com"}
KEY = "verify:user_123"


def start_verification(app: StackShift, payload: Any = None) -> Run:
    return app.start("send-verification-email", USER if payload is None else payload,
                     queue_name="emails", idempotency_key=KEY, idempotency_ttl="30d")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_verification_email_idempotency_key_and_ttl(
    fake_app: StackShift, clock: FakeClock, flavour: str
) -> None:
    mailer = Mailer()
    register_verification(fake_app, flavour, mailer)

    first = start_verification(fake_app)
    assert first.created is True
    assert (first.status, first.queue, first.idempotency_key) == ("queued", "emails", KEY)

    again = start_verification(fake_app)
    assert again.created is False
    assert again.id == first.id
    # Key order does not matter: payloads are compared as canonical JSON.
    reordered = start_verification(fake_app, {"email": "ada@example.com", "userId": "user_123"})
    assert (reordered.id, reordered.created) == (first.id, False)

    timeline = fake_app.runs.timeline(first.id)
    assert [e.kind for e in timeline] == ["run.queued", "run.duplicate_start",
                                          "run.duplicate_start"]

    # Executed once, however many starts mapped to it.
    run_until_idle(fake_app)
    assert mailer.sent == ["ada@example.com"]
    done = fake_app.runs.get(first.id)
    assert done.status == "completed"
    assert done.result == {"to": "ada@example.com"}

    # Still within the TTL: a duplicate returns the finished run, whatever its status.
    clock.advance("29d")
    late = start_verification(fake_app)
    assert (late.id, late.created, late.status) == (first.id, False, "completed")
    assert late.result == {"to": "ada@example.com"}
    run_until_idle(fake_app)
    assert mailer.sent == ["ada@example.com"]

    # A different payload under the live key is a conflict naming the owner.
    with pytest.raises(IdempotencyConflictError) as conflict:
        start_verification(fake_app, {"userId": "user_123", "email": "other@example.com"})
    assert conflict.value.existing_run_id == first.id
    assert KEY in str(conflict.value)
    with pytest.raises(IdempotencyConflictError):
        fake_app.start("another-job", USER, idempotency_key=KEY)

    # One second before the TTL (counted from the first start) the key still holds.
    clock.set(first.created_at.timestamp() + 30 * 86400 - 1)
    assert start_verification(fake_app).id == first.id

    # After the TTL the key starts new work.
    clock.set(first.created_at.timestamp() + 30 * 86400)
    fresh = start_verification(fake_app)
    assert fresh.created is True
    assert fresh.id != first.id
    run_until_idle(fake_app)
    assert mailer.sent == ["ada@example.com", "ada@example.com"]
    assert fake_app.runs.get(fresh.id).status == "completed"
    # The first run and its history are untouched.
    assert fake_app.runs.get(first.id).status == "completed"
    assert fake_app.runs.timeline(fresh.id)[0].kind == "run.queued"
    assert "run.duplicate_start" not in kinds(fake_app, fresh.id)
    both = fake_app.runs.list(idempotency_key=KEY)
    assert [r.id for r in both] == [fresh.id, first.id]


def test_after_the_ttl_the_key_accepts_a_different_payload(
    fake_app: StackShift, clock: FakeClock
) -> None:
    first = start_verification(fake_app)
    clock.advance("30d")
    other = start_verification(fake_app, {"userId": "user_123", "email": "new@example.com"})
    assert other.created and other.id != first.id
    assert other.payload == {"userId": "user_123", "email": "new@example.com"}


def test_default_ttl_is_24_hours(fake_app: StackShift, clock: FakeClock) -> None:
    first = fake_app.start("send-verification-email", USER, idempotency_key=KEY)
    clock.advance("23h59m")
    assert fake_app.start("send-verification-email", USER, idempotency_key=KEY).id == first.id
    clock.advance("1m")
    assert fake_app.start("send-verification-email", USER, idempotency_key=KEY).created


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_verification_email_through_the_async_client(
    db_url: str, clock: FakeClock, flavour: str
) -> None:
    mailer = Mailer()

    async def main() -> None:
        async with AsyncStackShift(db_url, clock=clock) as app:
            register_verification(app, flavour, mailer)
            starts = await asyncio.gather(*[
                app.start("send-verification-email", USER, queue_name="emails",
                          idempotency_key=KEY, idempotency_ttl="30d")
                for _ in range(5)
            ])
            assert len({r.id for r in starts}) == 1
            assert sorted(r.created for r in starts) == [False, False, False, False, True]
            first = starts[0]
            timeline = await app.runs.timeline(first.id)
            assert [e.kind for e in timeline].count("run.duplicate_start") == 4

            await asyncio.to_thread(run_until_idle, app)
            assert (await app.runs.get(first.id)).status == "completed"

            with pytest.raises(IdempotencyConflictError) as conflict:
                await app.start("send-verification-email", {"userId": "u2"},
                                idempotency_key=KEY)
            assert conflict.value.existing_run_id == first.id

            clock.advance("30d")
            fresh = await app.start("send-verification-email", USER, queue_name="emails",
                                    idempotency_key=KEY, idempotency_ttl="30d")
            assert fresh.created and fresh.id != first.id
            await asyncio.to_thread(run_until_idle, app)
            page = await app.runs.list(idempotency_key=KEY)
            assert [r.status for r in page] == ["completed", "completed"]

    asyncio.run(main())
    assert mailer.sent == ["ada@example.com", "ada@example.com"]


@pytest.fixture
def two_clients(db_url: str, clock: FakeClock) -> Iterator[tuple[StackShift, StackShift]]:
    a, b = StackShift(db_url, clock=clock), StackShift(db_url, clock=clock)
    yield a, b
    a.close()
    b.close()


def test_duplicate_start_from_another_client_maps_to_the_same_run(
    two_clients: tuple[StackShift, StackShift]
) -> None:
    a, b = two_clients
    first = start_verification(a)
    second = start_verification(b)
    assert (second.id, second.created) == (first.id, False)
    assert kinds(a, first.id).count("run.duplicate_start") == 1
