"""A running attempt's writes made a second time, as a worker makes them when the
first try's answer was lost (a connection cut at its commit): the second changes
nothing the first recorded, on every store."""

from __future__ import annotations

from stackshift import StackShift
from stackshift.store.base import StepWrite
from stackshift.testing import FakeClock


def test_a_wait_made_again_gives_the_event_it_took_not_a_second(
        fake_app: StackShift, clock: FakeClock) -> None:
    store = fake_app._service.store
    run = fake_app.start("await-payment", {"key": "order-1"})
    first = fake_app.events.send("paid", {"n": 1}, correlation_key="order-1")
    second = fake_app.events.send("paid", {"n": 2}, correlation_key="order-1")
    [claimed] = store.claim_runs("wkr_twice", ["await-payment"], 1, 60.0, clock.now())
    lease = claimed.lease
    step = StepWrite("paid", "paid", "wait", None, "waiting", None, None, clock.now(), None)

    def wait() -> object:
        return store.wait_for_event(lease, step, "paid", "order-1", clock.now() + 60, "fail",
                                    [], clock.now(), 60.0)

    taken = wait()
    again = wait()
    assert taken is not None and again is not None
    assert taken.id == again.id == first.id
    assert [s.result["id"] for s in fake_app.runs.steps(run.id)] == [first.id]
    # The second event is left for the run's next wait.
    nxt = StepWrite("paid#2", "paid", "wait", None, "waiting", None, None, clock.now(), None)
    later = store.wait_for_event(lease, nxt, "paid", "order-1", clock.now() + 60, "fail", [],
                                 clock.now(), 60.0)
    assert later is not None and later.id == second.id
