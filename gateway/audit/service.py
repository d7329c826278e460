"""The audit log at run time: logs new ledger transactions and signs checkpoints on a schedule.

At start and then every `every_s` seconds (15 minutes by default) the service appends the
leaves of the transactions posted since its last round and, when the log grew, signs a
checkpoint. The latest checkpoint is published RETAINED on
`commonwatt/<site>/audit/checkpoint`, so anyone who subscribes (a member's phone, a
witness at another lab) receives the current one at once, also after a restart.

Fifteen minutes keeps the number of checkpoints small (about 3,000 a month at most, none
when nothing was charged) while a member's receipt is provable within the quarter hour.
The database work runs in a thread so the event loop never waits on SQLite.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from gateway.aio import wait_event
from gateway.audit.log import AuditLog, StoredCheckpoint

if TYPE_CHECKING:
    from gateway.config import Config

log = logging.getLogger(__name__)

DEFAULT_EVERY_S = 15 * 60.0


class Publish(Protocol):
    """How messages leave (`Gateway._publish` and `MqttSource.publish` fit)."""

    def __call__(self, topic: str, payload: bytes | str, *, qos: int, retain: bool) -> None: ...


def checkpoint_topic(site: str) -> str:
    return f"commonwatt/{site}/audit/checkpoint"


class AuditService:
    """`async with AuditService(config, publish) as audit:` keeps the log and its checkpoints current."""

    def __init__(
        self,
        config: Config,
        publish: Publish | None = None,
        *,
        every_s: float = DEFAULT_EVERY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = AuditLog.for_config(config)
        self.topic = checkpoint_topic(config.site.id)
        self._publish = publish
        self._every_s = every_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        #: Rounds run and the last error, for the health page and tests.
        self.rounds = 0
        self.last_error: str | None = None

    async def __aenter__(self) -> AuditService:
        self._task = asyncio.create_task(self._run(), name="audit")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.log.close()

    def notify(self) -> None:
        """Run a round now instead of at the next tick (an operator asked, a test waits)."""
        self._wake.set()

    async def _run(self) -> None:
        published = False
        while True:
            published = await self._round_and_publish(published)
            self.rounds += 1
            await wait_event(self._wake, self._every_s)
            self._wake.clear()

    async def _round_and_publish(self, published: bool) -> bool:
        """One round; the first one also republishes the latest checkpoint (the broker may have lost it)."""
        try:
            signed = await asyncio.to_thread(self.round)
            if signed is None and not published:
                signed = await asyncio.to_thread(self.log.latest)
            if signed is not None:
                self._send(signed)
                published = True
            self.last_error = None
        except Exception as exc:  # a full disk or a locked file: try again next round
            self.last_error = str(exc)
            log.exception("audit round failed")
        return published

    def round(self) -> StoredCheckpoint | None:
        """Log what is new and sign a checkpoint if the log grew; the new checkpoint, or None."""
        self.log.sync()
        return self.log.checkpoint(self._clock())

    def _send(self, signed: StoredCheckpoint) -> None:
        if self._publish is not None:
            self._publish(self.topic, signed.signed_note.encode(), qos=1, retain=True)
