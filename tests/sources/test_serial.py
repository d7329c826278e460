"""The serial source against pseudo-terminal pairs with real pyserial on the gateway's end.

The test plays the device: it writes the meter's bytes into the pty master; the
source opens the slave through a `by-id`-style symlink, as a real installation
does. Unplugging the adapter is closing the pair and removing the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
import tty
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.decoders.base import DecodeError, SerialDecoder
from gateway.decoders.dsmr import DSMRDecoder
from gateway.model import Reading, Record
from gateway.sources.base import SourceHealth
from gateway.sources.serial import SerialSource, rekey
from tests.decoders.test_dsmr import TELEGRAMS

DEVICE = "grid"


class ListInbox:
    """Thread-safe, list-backed: one entry per `put` (one frame)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames: list[list[Record]] = []

    def put(self, records: Sequence[Record]) -> None:
        with self._lock:
            self._frames.append(list(records))

    @property
    def frames(self) -> list[list[Record]]:
        with self._lock:
            return list(self._frames)


class FakeDevice:
    """A pty pair behind a symlink: the slave is the port, the test writes into the master."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no CR/LF translation before pyserial opens it
        os.set_blocking(self.master, False)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.ttyname(self.slave))
        self.plugged = True

    async def send(self, data: bytes, rng: random.Random) -> None:
        """The bytes in chunks cut at random boundaries, as a USB adapter delivers them."""
        pos = 0
        while pos < len(data):
            chunk = data[pos : pos + rng.randint(1, 200)]
            with contextlib.suppress(BlockingIOError):  # the pty buffer is full: the reader catches up
                pos += os.write(self.master, chunk)
            await asyncio.sleep(0.002)

    def unplug(self) -> None:
        # Once only: after a replug the same link path belongs to the next device, and the
        # closed descriptor numbers may already be reused by it.
        if not self.plugged:
            return
        self.plugged = False
        self.link.unlink(missing_ok=True)
        os.close(self.master)
        os.close(self.slave)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def expected(decoder: SerialDecoder, data: bytes, ts: float = 0.0) -> list[list[Record]]:
    """What a fresh decoder makes of the bytes, under the configured device id."""
    return [rekey(f, DEVICE) for f in decoder.feed(data, ts) if isinstance(f, list) and f]


@pytest.fixture
def port(tmp_path: Path) -> Path:
    return tmp_path / "by-id" / "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"


@pytest.fixture
def devices() -> Iterator[list[FakeDevice]]:
    made: list[FakeDevice] = []
    yield made
    for dev in made:
        dev.unplug()


def run_with_source(source: SerialSource, scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        task = asyncio.create_task(source.run())
        try:
            async with asyncio.timeout(12):
                await scenario()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def make_source(port: Path, inbox: ListInbox, decoder: SerialDecoder, **kw: Any) -> SerialSource:
    return SerialSource(
        name=DEVICE, port=str(port), decoder=decoder, device_id=DEVICE, inbox=inbox, min_backoff_s=0.05, **kw
    )


def test_dsmr_telegrams_at_the_meter_rate_with_noise_and_bad_crc(port: Path, devices: list[FakeDevice]) -> None:
    t = TELEGRAMS
    bad_crc = t["v50_1ph"].replace(b"(004521.873*kWh)", b"(004521.878*kWh)")
    seconds = [t["v50_1ph"], b"\x8f~noise~\x00" + bad_crc, t["be_fluvius"], b"garbage" + t["v50_3ph"]]
    inbox = ListInbox()
    source = make_source(port, inbox, DSMRDecoder())
    devices.append(FakeDevice(port))
    rng = random.Random(5)

    async def scenario() -> None:
        await until(lambda: source.health.connected)
        for second in seconds:  # DSMR 5: one telegram per second
            started = time.monotonic()
            await devices[0].send(second, rng)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        await until(lambda: len(inbox.frames) == 3)

    run_with_source(source, scenario)
    assert inbox.frames == expected(DSMRDecoder(), b"".join(seconds))
    assert len(inbox.frames) == 3
    assert {r.device if isinstance(r, Reading) else r.reader for f in inbox.frames for r in f} == {DEVICE}
    health = source.health
    assert health.rejected == {"noise": 2, "bad_checksum": 1}
    assert health.messages == 6
    assert health.records == sum(map(len, inbox.frames))
    assert health.connected and health.error is None and health.last_message is not None


def test_unplugged_adapter_is_reported_and_the_source_resumes(port: Path, devices: list[FakeDevice]) -> None:
    inbox = ListInbox()
    health = SourceHealth(name=DEVICE, kind="serial")
    source = make_source(port, inbox, DSMRDecoder(), max_backoff_s=0.2)
    source.health = health
    rng = random.Random(7)
    marks: dict[str, float | None] = {}

    async def scenario() -> None:
        await until(lambda: health.since is not None and not health.connected)
        assert health.error is not None and str(port) in health.error  # missing at start
        devices.append(FakeDevice(port))
        await until(lambda: health.connected)
        await devices[0].send(TELEGRAMS["v42_kaifa"], rng)
        await until(lambda: len(inbox.frames) == 1)
        await devices[0].send(TELEGRAMS["v50_3ph"][:300], rng)  # unplugged mid-telegram
        await asyncio.sleep(0.05)
        devices[0].unplug()
        await until(lambda: not health.connected)
        marks["gone"] = health.since
        await asyncio.sleep(0.3)  # a few retries against a missing path
        assert not health.connected and health.since == marks["gone"]
        devices.append(FakeDevice(port))
        await until(lambda: health.connected)
        await devices[1].send(TELEGRAMS["v50_3ph"], rng)
        await until(lambda: len(inbox.frames) == 2)

    run_with_source(source, scenario)
    assert inbox.frames == expected(DSMRDecoder(), TELEGRAMS["v42_kaifa"] + TELEGRAMS["v50_3ph"])
    # The half telegram sent before the unplug is reported when the next one starts.
    assert health.rejected == {"truncated": 1}
    assert health.error is None


def test_silent_device_is_reported_and_the_port_stays_open(port: Path, devices: list[FakeDevice]) -> None:
    inbox = ListInbox()
    source = make_source(port, inbox, DSMRDecoder(), silent_after_s=0.3)
    devices.append(FakeDevice(port))
    rng = random.Random(9)

    async def scenario() -> None:
        await until(lambda: source.health.connected)
        opened = source.health.since
        await until(lambda: (source.health.error or "").startswith("silent since"))
        assert source.health.connected and source.health.since == opened
        await devices[0].send(TELEGRAMS["v50_1ph"], rng)
        await until(lambda: len(inbox.frames) == 1)
        assert source.health.error is None

    run_with_source(source, scenario)


def test_vedirect_blocks_through_the_same_source(port: Path, devices: list[FakeDevice]) -> None:
    vedirect = pytest.importorskip("gateway.decoders.vedirect")
    fixtures = Path(__file__).parent.parent / "fixtures" / "vedirect"
    data = (fixtures / "smartshunt_two_blocks" / "input.bin").read_bytes()
    want = expected(vedirect.VEDirectDecoder(), data, ts=1234.5)
    inbox = ListInbox()
    # VE.Direct carries no clock: the readings take the receive time, from the source's clock.
    source = make_source(port, inbox, vedirect.VEDirectDecoder(), clock=lambda: 1234.5)
    devices.append(FakeDevice(port))

    async def scenario() -> None:
        await until(lambda: source.health.connected)
        await devices[0].send(data, random.Random(11))
        await until(lambda: len(inbox.frames) == len(want))

    run_with_source(source, scenario)
    assert want and inbox.frames == want


class BrokenDecoder(DSMRDecoder):
    """A decoder with a bug: it raises on one input."""

    def feed(self, data: bytes, ts: float) -> list[list[Record] | DecodeError]:
        if b"BOOM" in data:
            raise RuntimeError("bug")
        return super().feed(data, ts)


def test_a_failing_decoder_is_counted_and_the_port_kept(port: Path, devices: list[FakeDevice]) -> None:
    inbox = ListInbox()
    source = make_source(port, inbox, BrokenDecoder())
    devices.append(FakeDevice(port))

    async def scenario() -> None:
        await until(lambda: source.health.connected)
        os.write(devices[0].master, b"BOOM")
        await until(lambda: source.health.rejected["decoder_error"] == 1)
        await devices[0].send(TELEGRAMS["v50_1ph"], random.Random(3))
        await until(lambda: len(inbox.frames) == 1)

    run_with_source(source, scenario)
    assert source.health.connected


def _vedirect_block(n: int) -> bytes:
    fields = [
        ("PID", "0xA060"),
        ("V", str(12800 + n)),
        ("I", str(1500 + n)),
        ("PPV", str(40 + n)),
        ("H19", str(100 + n)),
    ]
    body = b"".join(b"\r\n%s\t%s" % (k.encode(), v.encode()) for k, v in fields) + b"\r\nChecksum\t"
    return body + bytes([-sum(body) % 256])


def _rdm6300_frame(uid10: str) -> bytes:
    data = bytes.fromhex(uid10)
    check = 0
    for byte in data:
        check ^= byte
    return b"\x02" + uid10.encode() + b"%02X" % check + b"\x03"


def _corrupt(frame: bytes) -> bytes:
    """One bit flipped where it keeps the frame well formed: only its checksum is wrong."""
    at = len(frame) - 3 if frame.startswith(b"\x02") else len(frame) // 2  # RDM6300: a checksum digit
    return frame[:at] + bytes([frame[at] ^ 0x01]) + frame[at + 1 :]


# Per protocol: a decoder, the frames a device sends one per period, what goes between them
# (noise, VE.Direct's HEX lines), and the frames that are sent corrupted (bad checksum).
SERIAL_CASES = {
    "vedirect": (
        lambda: __import__("gateway.decoders.vedirect", fromlist=["X"]).VEDirectDecoder(),
        [_vedirect_block(n) for n in range(6)],
        b":A0102000543\n",
        {2},
        "bad_checksum",
    ),
    "rdm6300": (
        lambda: __import__("gateway.decoders.rdm6300", fromlist=["X"]).RDM6300Decoder(),
        [_rdm6300_frame(f"0D00A3F2{n:02X}") for n in range(6)],
        b"\x00\xff",
        {3},
        "bad_checksum",
    ),
    "dsmr": (
        DSMRDecoder,
        [TELEGRAMS["v50_1ph"], TELEGRAMS["be_fluvius"], TELEGRAMS["v50_3ph"], TELEGRAMS["v50_1ph"]],
        b"",
        {1},
        "bad_checksum",
    ),
}


@pytest.mark.parametrize("protocol", sorted(SERIAL_CASES))
def test_every_serial_decoder_through_a_pty_with_faults_and_a_replug(
    protocol: str, port: Path, devices: list[FakeDevice]
) -> None:
    """Frames at a device's pace, cut at random, with noise, corrupted frames and the adapter replugged."""
    make, frames, between, corrupted, reason = SERIAL_CASES[protocol]
    sent = [(_corrupt(f) if i in corrupted else f) + between for i, f in enumerate(frames)]
    want = expected(make(), b"".join(sent))
    inbox = ListInbox()
    source = make_source(port, inbox, make(), clock=lambda: 0.0)  # receive times as in `expected`
    devices.append(FakeDevice(port))
    rng = random.Random(protocol)
    half = len(sent) // 2

    async def scenario() -> None:
        await until(lambda: source.health.connected)
        for i, chunk in enumerate(sent):
            if i == half:  # the adapter is pulled out and plugged in again, between two frames
                devices[-1].unplug()
                await until(lambda: not source.health.connected)
                devices.append(FakeDevice(port))
                await until(lambda: source.health.connected, 10)
            await devices[-1].send(chunk, rng)
            await asyncio.sleep(0.25)  # a device's period, shortened
        await until(lambda: len(inbox.frames) >= len(want))

    run_with_source(source, scenario)
    assert inbox.frames == want
    assert len(want) == len(frames) - len(corrupted)
    assert source.health.rejected[reason] == len(corrupted)
