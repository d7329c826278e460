"""Small asyncio helpers the gateway's long-running tasks share."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for `event`, at most `timeout` seconds; True if it was set.

    Not `asyncio.wait_for(event.wait(), timeout)`: on Python 3.11 that can swallow a
    cancellation which arrives just as the event is set (it returns the finished inner
    wait instead of raising), and a service whose task the gateway cancels at stop then
    loops on for ever, so the gateway never stops. `asyncio.timeout` waits in the task
    itself, where a cancellation always arrives.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
