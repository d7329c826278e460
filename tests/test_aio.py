"""`wait_event`: a service's wait that a stop always ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from gateway.aio import wait_event

Wait = Callable[[asyncio.Event, float], Awaitable[object]]


async def _wait_for(event: asyncio.Event, timeout: float) -> None:
    """What the services did before: asyncio.wait_for on the event, timeout suppressed."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


def stops_when_woken_and_cancelled_together(wait: Wait) -> bool:
    """A service loop is woken (a journal commit) and cancelled (the gateway stops) in one turn."""

    async def main() -> bool:
        wake = asyncio.Event()

        async def service() -> None:
            while True:
                await wait(wake, 10.0)
                wake.clear()

        task = asyncio.create_task(service())
        await asyncio.sleep(0.01)  # the service waits
        wake.set()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=1.0)
        stopped = task in done and task.cancelled()
        if not stopped:
            task.cancel()  # once more, so the test itself ends
            await asyncio.wait([task], timeout=1.0)
        return stopped

    return asyncio.run(main())


def test_a_wake_up_never_hides_the_stop() -> None:
    assert all(stops_when_woken_and_cancelled_together(wait_event) for _ in range(20))


def test_the_race_is_real_with_wait_for() -> None:
    """Why wait_event exists: on Python 3.11, asyncio.wait_for loses that cancellation."""
    import sys

    lost = not all(stops_when_woken_and_cancelled_together(_wait_for) for _ in range(20))
    assert lost or sys.version_info >= (3, 12)


def test_it_says_whether_the_event_came() -> None:
    async def main() -> tuple[bool, bool]:
        event = asyncio.Event()
        missed = await wait_event(event, 0.01)
        event.set()
        return missed, await wait_event(event, 1.0)

    assert asyncio.run(main()) == (False, True)
