import asyncio

from services.lifetime import Lifetime
from services.store.port import StoreUnavailable


async def test_periodic_work_survives_failures_and_stops_on_close() -> None:
    lifetime = Lifetime()
    calls = []

    async def work() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise StoreUnavailable("down")
        if len(calls) == 2:
            raise RuntimeError("a bug")

    lifetime.every(0.01, work, what="test work")
    await asyncio.sleep(0.1)
    await lifetime.close()
    seen = len(calls)
    assert seen >= 3  # went on after both failures
    await asyncio.sleep(0.05)
    assert len(calls) == seen  # and stopped


class FakeSubscription:
    cancelled = False

    async def cancel(self) -> None:
        self.cancelled = True


async def test_close_cancels_the_subscriptions() -> None:
    lifetime = Lifetime()
    subscription = FakeSubscription()
    lifetime.hold(subscription)  # type: ignore[arg-type]
    await lifetime.close()
    assert subscription.cancelled
