"""The lifetime the gateway's stateful journal consumers share: a thread of their own, woken on commits.

The machine floor (`gateway.floor_service`), the credit ledger (`gateway.ledger_service`) and
the energy balance (`gateway.energy_service`) each read the journal after a cursor of their
own and write back to it. Their work is blocking SQLite, so each runs it on one thread of
its own (one thread: a consumer's state is never touched by two at once), and the event
loop only wakes it: on every journal commit (`notify`) and at least once a tick, so timers
(a session timing out, an interval becoming final) run without new rows.

A service says what it opens, closes and does in one step; this class runs them:

    async with FloorService(config, ...) as floor:   # open() on its thread, then the loop
        ...                                           # floor.notify() after each commit
                                                      # on leaving: the loop stopped, close()

The demo (`gateway.demo.month`) calls `open`, `step` and `close` itself, on its simulated clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Self

from gateway.aio import wait_event


class JournalConsumerService(ABC):
    """A journal consumer run on its own thread: `step(now)` on every commit and at least every `tick_s`.

    A step that raises is logged and kept in `last_error` (shown in health); the next commit
    or tick tries again, so a locked database or a full disk does not stop the service.
    """

    def __init__(self, name: str, *, tick_s: float, log: logging.Logger) -> None:
        #: Names the thread and the task, and the service in the log.
        self.name = name
        self.tick_s = tick_s
        self._log = log
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: The last step's error; None once a step succeeds.
        self.last_error: str | None = None

    @abstractmethod
    def open(self) -> None:
        """Open the stores and restore the state from the checkpoint (`async with` does it on the thread)."""

    @abstractmethod
    def close(self) -> None:
        """Close what `open` opened (`async with` does it on the thread once the loop has stopped)."""

    @abstractmethod
    def step(self, now: float) -> None:
        """Handle the journal rows after the cursor and what is due at `now` (on the thread)."""

    async def __aenter__(self) -> Self:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.open)
        self._task = asyncio.create_task(self._run(), name=self.name)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._executor, self.close)
        self._executor.shutdown()

    def notify(self) -> None:
        """New rows in the journal (called on the event loop)."""
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(self._executor, self.step, time.time())
                self.last_error = None
            except Exception as exc:  # the service must keep running; the error is shown in health
                self._log.exception("%s step failed", self.name)
                self.last_error = str(exc)
            await wait_event(self._wake, self.tick_s)
            self._wake.clear()
