"""The serial source: one port, one decoder, records into the inbox.

Transport only: it opens the port with the decoder's line settings, hands every
chunk of bytes to the decoder with its receive time, and puts each decoded
frame's records into the inbox under the configured device id. It never looks
at the bytes itself.

USB serial adapters come and go (unplugged, re-enumerated after a power dip).
When the port is missing or vanishes, the source marks itself disconnected
(`since` = when it went), retries with exponential backoff, and resumes as soon
as the path exists again. Configure ports by their `/dev/serial/by-id/...` path:
it survives re-plugging, `/dev/ttyUSB0` may not. Garbage on the line is the
decoder's business (rejected frames are counted by reason) and never stops the
source. A device that sends no frame for `silent_after_s` is reported in
`health.error`; the port stays open and the error clears with the next frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

import serial
import serial_asyncio_fast

from gateway.decoders.base import DecodeError, SerialDecoder
from gateway.model import BadgeEvent, Reading, Record, iso
from gateway.sources.base import Inbox, SourceHealth

log = logging.getLogger(__name__)

#: Bytes asked for per read; the decoder frames whatever arrives.
_READ_SIZE = 4096


def rekey(records: Sequence[Record], device_id: str) -> list[Record]:
    """The records under the configured device id instead of the protocol's own key."""
    return [
        Reading(r.ts, device_id, r.metric, r.value)
        if isinstance(r, Reading)
        else BadgeEvent(r.ts, device_id, r.badge_uid)
        for r in records
    ]


class SerialSource:
    """Reads one serial port until cancelled. `health` is live and safe to read at any time.

    `clock` gives the receive time handed to the decoder and measures silence; it is
    `time.time` except in tests.
    """

    def __init__(
        self,
        *,
        name: str,
        port: str,
        decoder: SerialDecoder,
        device_id: str,
        inbox: Inbox,
        health: SourceHealth | None = None,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        silent_after_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.port = port
        self.decoder = decoder
        self.device_id = device_id
        self.health = health if health is not None else SourceHealth(name=name, kind="serial")
        self._inbox = inbox
        self._min_backoff = min_backoff_s
        self._max_backoff = max_backoff_s
        self._silent_after = silent_after_s
        self._clock = clock
        self._heard = 0.0  # last frame, or when the port was opened
        self._silent = False

    async def run(self) -> None:
        """Open, read, and reopen after every loss of the port, until cancelled."""
        backoff = self._min_backoff
        while True:
            try:
                async with self._open() as reader:
                    backoff = self._min_backoff
                    await self._pump(reader)
                error = "port closed (end of data)"
            except (serial.SerialException, OSError) as exc:
                error = str(exc) or type(exc).__name__
            # Warn when the port goes or the reason changes, not at every retry of an unplugged adapter.
            level = logging.WARNING if self.health.connected or error != self.health.error else logging.DEBUG
            log.log(level, "%s: %s; retrying in %.2f s", self.name, error, backoff)
            self._set_connected(False, error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[asyncio.StreamReader]:
        d = self.decoder
        # Settings are read from the instance: a decoder may set them per device (DSMR 2.2 vs 5).
        # `exclusive` keeps a second gateway or ModemManager from taking half of the bytes.
        reader, writer = await serial_asyncio_fast.open_serial_connection(
            url=self.port,
            baudrate=d.baudrate,
            bytesize=d.bytesize,
            parity=d.parity,
            stopbits=d.stopbits,
            exclusive=True,
        )
        self._heard = self._clock()
        self._silent = False
        self._set_connected(True)
        log.info("%s: %s open", self.name, self.port)
        try:
            yield reader
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        """Feed the decoder until the port reports end of data; port errors propagate."""
        while True:
            try:
                async with asyncio.timeout(self._read_timeout()):
                    data = await reader.read(_READ_SIZE)
            except TimeoutError:
                self._check_silence()
                continue
            if not data:
                return
            self._handle(self._decode(data))
            self._check_silence()

    def _decode(self, data: bytes) -> list[list[Record] | DecodeError]:
        """The decoder's frames. A decoder that raises has a bug: it is logged and counted, and the
        port keeps being read rather than the site losing its meter until a restart."""
        try:
            return self.decoder.feed(data, self._clock())
        except Exception:
            log.exception("%s: decoder %s failed on %d bytes", self.name, self.decoder.name, len(data))
            return [DecodeError("decoder_error")]

    def _handle(self, frames: list[list[Record] | DecodeError]) -> None:
        if not frames:
            return
        health = self.health
        for frame in frames:
            if isinstance(frame, DecodeError):
                health.rejected[frame.reason] += 1
            elif frame:
                self._inbox.put(rekey(frame, self.device_id))
                health.records += len(frame)
        health.messages += len(frames)
        self._heard = health.last_message = self._clock()

    def _read_timeout(self) -> float | None:
        """Time left until the device counts as silent; no limit once it is reported."""
        if self._silent:
            return None
        return max(0.0, self._heard + self._silent_after - self._clock())

    def _check_silence(self) -> None:
        silent = self._clock() - self._heard >= self._silent_after
        if silent != self._silent:
            self._silent = silent
            self.health.error = f"silent since {iso(self._heard)}" if silent else None
            if silent:
                log.warning("%s: no frame since %s", self.name, iso(self._heard))

    def _set_connected(self, connected: bool, error: str | None = None) -> None:
        changed = connected != self.health.connected or self.health.since is None
        self.health.set_connected(connected, error)
        if changed:
            self.health.since = self._clock()
