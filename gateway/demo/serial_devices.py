"""The demo lab's serial devices, each on a pseudo-terminal behind a `/dev/serial/by-id`-style link.

| id | device | protocol (FORMATS.md) | link under `<folder>/serial/by-id/` |
| --- | --- | --- | --- |
| `mppt` | SmartSolar MPPT 100/20 | VE.Direct §1.4 | `usb-VictronEnergy_BV_VE_Direct_cable_VE6LBNHN-if00-port0` |
| `shunt` | SmartShunt 500 A | VE.Direct §1.5 | `usb-VictronEnergy_BV_VE_Direct_cable_VE7K2ZJ9-if00-port0` |
| `door-reader` | RDM6300 badge reader | RDM6300 §3.1 | `usb-FTDI_FT232R_USB_UART_A10KZP4M-if00-port0` |

    async with SerialDemo(folder, state=from_snapshot(site.snapshot)) as serial_demo:
        config_text += serial_demo.devices_toml()
        serial_demo.reader.present("0D00A3F2C1", hold_s=1.0)

The bytes are the real devices' bytes: VE.Direct blocks with their checksum byte
(any value, CR and `:` included), a SmartShunt's main and history blocks every
second, and now and then an asynchronous HEX message (`:A...` LF) between two
blocks or in the middle of one, as a charger sends them while VictronConnect is
connected. The reader repeats its 14-byte frame every 100 ms while a card is held.

The gateway opens the slave end with pyserial exactly as it opens a USB adapter.
Like a real device, these ones keep talking when nobody listens: when the port's
buffer is full, what waits in it is dropped, oldest first, instead of blocking the
demo (see `PtyDevice.write`).

Values follow the demo site (`from_snapshot`): the shunt measures the battery the
Venus OS GX reports, the MPPT a second, small array under the same sky (its yield
is not part of the site model's balance). The devices' counters (H19/H20, H17/H18)
integrate the powers they report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import termios
import time
import tty
from collections.abc import Callable, Sequence
from functools import reduce
from operator import xor
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

from gateway.demo.physics import SiteSnapshot

# -- pseudo-terminals --------------------------------------------------------------------------


class PtyDevice:
    """A pseudo-terminal pair: the slave is the port a gateway opens, the device writes the master.

    `port` is the slave's path (`/dev/pts/N`); `link`, when given, is a symlink to it,
    the stable name a configuration uses (real installations use /dev/serial/by-id).
    The slave is raw so no byte is translated, and stays open here so that the
    port survives a reader closing it.
    """

    def __init__(self, link: Path | None = None) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self.link = link
        #: How many times the unread backlog was thrown away.
        self.overruns = 0
        if link is not None:
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)  # left over from an earlier run in the same folder
            link.symlink_to(self.port)

    def write(self, frame: bytes) -> None:
        """Sends one frame without ever blocking.

        When the port's buffer has no room (nobody has read it for a while), the
        bytes waiting in it are dropped and the frame is sent whole into the empty
        buffer: a listener that comes back gets the device's latest frames, not a
        backlog, and never half a frame from before the gap.
        """
        sent = self._try_write(frame)
        if sent < len(frame):
            termios.tcflush(self._slave, termios.TCIFLUSH)  # drops the backlog and this frame's head
            self.overruns += 1
            self._try_write(frame)  # a frame larger than the whole buffer would be cut; none is

    def _try_write(self, data: bytes) -> int:
        try:
            return os.write(self._master, data)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        """Removes the link (if it still points here) and closes both ends: the reader sees a hang-up."""
        if self.link is not None and self.link.is_symlink() and os.readlink(self.link) == self.port:
            self.link.unlink()
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# -- what the devices measure ------------------------------------------------------------------


#: The MPPT's array: two panels in series, about 72 V at their maximum power point.
MPPT_PEAK_W = 400.0


class DcState(NamedTuple):
    """The DC side the serial devices see at one moment."""

    pv_w: float  # the MPPT's panels
    battery_w: float  # at the shunt, + charging (Victron's sign)
    soc_pct: float


def steady_state() -> DcState:
    """A sunny afternoon, for running the devices without a site model."""
    return DcState(pv_w=260.0, battery_w=180.0, soc_pct=68.0)


def from_snapshot(snapshot: Callable[[], SiteSnapshot], *, mppt_peak_w: float = MPPT_PEAK_W) -> Callable[[], DcState]:
    """The devices' state from the demo site (`DemoSite.snapshot`): the site's battery, and an
    array of `mppt_peak_w` under the site's sun and clouds."""

    def state() -> DcState:
        s = snapshot()
        return DcState(pv_w=s.irradiance * mppt_peak_w, battery_w=s.battery_w, soc_pct=s.soc_pct)

    return state


def battery_voltage(soc_pct: float, power_w: float) -> float:
    """The 16-cell LFP bank's terminal voltage: the same pack the Venus OS simulator reports."""
    open_circuit = 48.0 + 6.0 * soc_pct / 100.0
    return open_circuit + 0.012 * power_w / open_circuit


# -- VE.Direct framing -------------------------------------------------------------------------

MARKER = b"\r\nChecksum\t"
HEX_ASYNC = 0xA


def text_block(fields: Sequence[tuple[str, str]]) -> bytes:
    """One TEXT block: CR LF before every field, and the checksum byte that makes the sum 0 mod 256."""
    body = b"".join(b"\r\n" + label.encode("ascii") + b"\t" + value.encode("ascii") for label, value in fields)
    body += MARKER
    return body + bytes([-sum(body) & 0xFF])


def hex_message(command: int, data: bytes) -> bytes:
    """`:` command nibble, data as upper-case hex pairs, check byte, LF; command + data + check = 0x55."""
    check = (0x55 - command - sum(data)) & 0xFF
    return b":%X%s%02X\n" % (command, data.hex().upper().encode("ascii"), check)


def async_register(register: int, value: int, size: int) -> bytes:
    """An asynchronous HEX message: register id and value little-endian, flags 0."""
    data = register.to_bytes(2, "little") + b"\x00" + value.to_bytes(size, "little", signed=value < 0)
    return hex_message(HEX_ASYNC, data)


class HexInterleaver:
    """Every `every` blocks, puts one async HEX message into the stream: alternately right
    after the block's checksum byte and before one of its fields."""

    def __init__(self, every: int, rng: random.Random) -> None:
        self.every = every
        self._rng = rng
        self._blocks = 0
        self.sent = 0

    def __call__(self, block: bytes, message: bytes) -> bytes:
        self._blocks += 1
        if self.every <= 0 or self._blocks % self.every:
            return block
        self.sent += 1
        if self.sent % 2:
            return block + message
        starts = [i for i in range(2, len(block) - 1) if block.startswith(b"\r\n", i)]
        cut = self._rng.choice(starts)
        return block[:cut] + message + block[cut:]


def _on_off(on: bool) -> str:
    return "ON" if on else "OFF"


# -- SmartSolar MPPT ---------------------------------------------------------------------------


class VEDirectMPPT:
    """A SmartSolar MPPT 100/20 on the 48 V bank: one TEXT block per second (FORMATS.md §1.4).

    Its yield counters count what it delivers to the battery: `H19` (total) and
    `H20` (today) in 0.01 kWh, `H21` the day's peak power. HEX messages carry the
    panel power, panel voltage or charger voltage (registers 0xEDBC, 0xEDBB, 0xEDD5).
    """

    PID = "0xA060"  # as FORMATS.md §1.6.3; the model mapping is not checked against Victron's table
    FW = "161"
    SERIAL = "HQ2132ABCDE"
    EFFICIENCY = 0.97
    PEAK_W = MPPT_PEAK_W

    def __init__(self, state: Callable[[], DcState] = steady_state, *, hex_every: int = 7, seed: int = 1) -> None:
        self.state = state
        self.total_wh = 105_120.0
        self.today_wh = 0.0
        self.max_today_w = 0.0
        self._hex = HexInterleaver(hex_every, random.Random(seed))

    def tick(self, dt: float) -> bytes:
        """The bytes of one second (`dt` seconds of yield counted): the block, maybe with a HEX message."""
        s = self.state()
        pv_w = max(0.0, s.pv_w)
        out_w = pv_w * self.EFFICIENCY
        self.total_wh += out_w * dt / 3600.0
        self.today_wh += out_w * dt / 3600.0
        self.max_today_w = max(self.max_today_w, pv_w)
        fields, registers = self._fields(s, pv_w, out_w)
        register = registers[self._hex.sent % len(registers)]
        return self._hex(text_block(fields), async_register(*register))

    def _fields(
        self, s: DcState, pv_w: float, out_w: float
    ) -> tuple[list[tuple[str, str]], list[tuple[int, int, int]]]:
        volts = battery_voltage(s.soc_pct, s.battery_w)
        on = pv_w >= 1.0
        vpv = 64.0 + 8.0 * math.sqrt(min(1.0, pv_w / self.PEAK_W)) if on else 0.01
        fields = [
            ("PID", self.PID), ("FW", self.FW), ("SER#", self.SERIAL),
            ("V", str(round(volts * 1000))), ("I", str(round(out_w / volts * 1000))),
            ("VPV", str(round(vpv * 1000))), ("PPV", str(round(pv_w))),
            ("CS", str(charger_state(on, s.soc_pct))), ("MPPT", "2" if on else "0"),
            ("OR", "0x00000000" if on else "0x00000001"), ("ERR", "0"),
            ("LOAD", "ON"), ("IL", "0"),
            ("H19", str(int(self.total_wh / 10))), ("H20", str(int(self.today_wh / 10))),
            ("H21", str(round(self.max_today_w))), ("H22", "152"), ("H23", "402"), ("HSDS", "214"),
        ]  # fmt: skip
        registers = [(0xEDBC, round(pv_w * 100), 4), (0xEDBB, round(vpv * 100), 2), (0xEDD5, round(volts * 100), 2)]
        return fields, registers


#: MPPT charger states (`CS`) by state of charge while the sun shines: bulk, absorption, float.
CHARGE_STAGES: tuple[tuple[float, int], ...] = ((90.0, 3), (98.0, 4), (math.inf, 5))


def charger_state(on: bool, soc_pct: float) -> int:
    if not on:
        return 0
    return next(cs for below, cs in CHARGE_STAGES if soc_pct < below)


# -- SmartShunt --------------------------------------------------------------------------------


class VEDirectSmartShunt:
    """A SmartShunt 500 A/50 mV on a 200 Ah, 48 V bank (FORMATS.md §1.5): every second its main
    block, then its history block (H1..H12, H17, H18; no auxiliary input, so no VS/H13..H16,
    and no relay). HEX messages carry the main voltage (0xED8D) or the state of charge (0x0FFF):
    BMV register ids from third-party code, not checked on a real shunt; decoders skip them anyway."""

    PID = "0xA389"  # as FORMATS.md §1.6.4
    MODEL = "SmartShunt 500A/50mV"
    FW = "0418"
    CAPACITY_AH = 200.0
    MIN_SOC = 10.0  # TTG counts down to this, like the Venus OS simulator

    def __init__(self, state: Callable[[], DcState] = steady_state, *, hex_every: int = 7, seed: int = 2) -> None:
        self.state = state
        self.charged_wh = 612_400.0
        self.discharged_wh = 548_900.0
        self.drawn_mah = 9_912_544.0
        self.since_full_s = 86_412.0
        self.min_mv: int | None = None
        self.max_mv = 0
        self._hex = HexInterleaver(hex_every, random.Random(seed))

    def tick(self, dt: float) -> bytes:
        s = self.state()
        volts = battery_voltage(s.soc_pct, s.battery_w)
        amps = s.battery_w / volts
        self._integrate(s, amps, dt)
        mv = round(volts * 1000)
        self.min_mv = mv if self.min_mv is None else min(self.min_mv, mv)
        self.max_mv = max(self.max_mv, mv)
        registers = [(0xED8D, round(volts * 100), 2), (0x0FFF, round(s.soc_pct * 100), 2)]
        register = registers[self._hex.sent % len(registers)]
        main = self._hex(text_block(self._main(s, mv, amps)), async_register(*register))
        return main + self._hex(text_block(self._history()), async_register(*register))

    def _integrate(self, s: DcState, amps: float, dt: float) -> None:
        hours = dt / 3600.0
        self.charged_wh += max(s.battery_w, 0.0) * hours
        self.discharged_wh += max(-s.battery_w, 0.0) * hours
        self.drawn_mah += max(-amps, 0.0) * 1000.0 * hours
        self.since_full_s = 0.0 if s.soc_pct >= 99.9 else self.since_full_s + dt

    def _main(self, s: DcState, mv: int, amps: float) -> list[tuple[str, str]]:
        consumed_mah = (100.0 - s.soc_pct) / 100.0 * self.CAPACITY_AH * 1000.0
        low = s.soc_pct < self.MIN_SOC
        return [
            ("PID", self.PID), ("V", str(mv)), ("I", str(round(amps * 1000))), ("P", str(round(s.battery_w))),
            ("CE", str(-round(consumed_mah))), ("SOC", str(round(s.soc_pct * 10))),
            ("TTG", str(self._time_to_go_min(s, amps))), ("Alarm", _on_off(low)), ("AR", "4" if low else "0"),
            ("BMV", self.MODEL), ("FW", self.FW), ("MON", "0"),
        ]  # fmt: skip

    def _time_to_go_min(self, s: DcState, amps: float) -> int:
        """Minutes until MIN_SOC at the present discharge; -1 (infinite) when not discharging."""
        if amps > -0.05:
            return -1
        left_ah = max(0.0, s.soc_pct - self.MIN_SOC) / 100.0 * self.CAPACITY_AH
        return round(left_ah / -amps * 60.0)

    def _history(self) -> list[tuple[str, str]]:
        return [
            ("H1", "-102341"), ("H2", "-28430"), ("H3", "-51220"), ("H4", "187"), ("H5", "0"),
            ("H6", str(-round(self.drawn_mah))), ("H7", str(self.min_mv or 0)), ("H8", str(self.max_mv)),
            ("H9", str(round(self.since_full_s))), ("H10", "72"), ("H11", "0"), ("H12", "0"),
            ("H17", str(int(self.discharged_wh / 10))), ("H18", str(int(self.charged_wh / 10))),
        ]  # fmt: skip


# -- RDM6300 -----------------------------------------------------------------------------------

STX, ETX = b"\x02", b"\x03"
#: How often the reader repeats a held card's frame.
REPEAT_S = 0.1


def rdm6300_frame(uid: str) -> bytes:
    """STX, the 10 hex characters (version byte + 4 tag bytes), their XOR as 2 hex characters, ETX."""
    if len(uid) != 10 or not all(ch in "0123456789abcdefABCDEF" for ch in uid):
        raise ValueError(f"an RDM6300 card id is 10 hex characters, not {uid!r}")
    check = reduce(xor, bytes.fromhex(uid))
    return STX + uid.upper().encode("ascii") + b"%02X" % check + ETX


class RDM6300Reader:
    """A 125 kHz reader: silent until a card is presented, then its frame every 100 ms while held."""

    def __init__(self) -> None:
        self._frame = b""
        self._until = 0.0
        self._presented = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        #: Frames written so far.
        self.frames = 0

    def present(self, card_uid_hex10: str, hold_s: float) -> None:
        """Holds a card at the reader for `hold_s` seconds (at least one frame). A card presented
        while another is held replaces it, as swapping cards in the field does."""
        self._frame = rdm6300_frame(card_uid_hex10)
        self._until = time.monotonic() + hold_s
        self._idle.clear()
        self._presented.set()

    async def wait_idle(self) -> None:
        """Returns once no card is held."""
        await self._idle.wait()

    async def run(self, port: PtyDevice) -> None:
        while True:
            await self._presented.wait()
            while True:
                self._presented.clear()  # a card presented during the hold sets it again
                port.write(self._frame)
                self.frames += 1
                await asyncio.sleep(REPEAT_S)
                if time.monotonic() >= self._until:
                    break
            if not self._presented.is_set():
                self._idle.set()


# -- the three together ------------------------------------------------------------------------


class SerialDevice(NamedTuple):
    """One serial device as the gateway's configuration names it."""

    id: str
    protocol: str
    role: str
    name: str
    link: str  # file name under <folder>/serial/by-id
    #: A badge reader is quiet until somebody badges: it must not be reported silent.
    silent_after_s: float | None = None


BY_ID = Path("serial", "by-id")
# Role "other" for both Victron devices: the SmartShunt measures the same battery the Venus OS
# device reports, and the shed-roof MPPT is not part of the demo site's model; as `battery` and
# `pv` they would be counted twice in the site's energy balance.
MPPT = SerialDevice(
    "mppt",
    "vedirect",
    "other",
    "SmartSolar MPPT, shed roof",
    "usb-VictronEnergy_BV_VE_Direct_cable_VE6LBNHN-if00-port0",
)
SHUNT = SerialDevice(
    "shunt",
    "vedirect",
    "other",
    "SmartShunt, battery bank",
    "usb-VictronEnergy_BV_VE_Direct_cable_VE7K2ZJ9-if00-port0",
)
READER = SerialDevice(
    "door-reader", "rdm6300", "other", "badge reader, door", "usb-FTDI_FT232R_USB_UART_A10KZP4M-if00-port0", 86_400.0
)
SERIAL_DEVICES: tuple[SerialDevice, ...] = (MPPT, SHUNT, READER)


def link_path(folder: Path, device: SerialDevice) -> Path:
    return folder / BY_ID / device.link


def devices_toml(folder: Path) -> str:
    """The `[[devices]]` tables a gateway needs to read the serial devices of a demo in `folder`."""
    tables = []
    for dev in SERIAL_DEVICES:
        lines = [
            "[[devices]]",
            f"id = {json.dumps(dev.id)}",
            f"protocol = {json.dumps(dev.protocol)}",
            f"port = {json.dumps(str(link_path(folder, dev)))}",
            f"role = {json.dumps(dev.role)}",
            f"name = {json.dumps(dev.name)}",
        ]
        if dev.silent_after_s is not None:
            lines.append(f"silent_after_s = {dev.silent_after_s}")
        tables.append("\n".join(lines) + "\n")
    return "\n".join(tables)


class SerialDemo:
    """The MPPT, the SmartShunt and the door reader on pseudo-terminals, each run by one task.

    Links are made under `folder` (`<folder>/serial/by-id/...`) at `start` and removed at
    `stop`. `interval_s` is the VE.Direct period (1 s on the real devices).
    """

    def __init__(
        self,
        folder: Path,
        *,
        state: Callable[[], DcState] = steady_state,
        interval_s: float = 1.0,
        hex_every: int = 7,
    ) -> None:
        self.folder = folder
        self.interval_s = interval_s
        self.mppt = VEDirectMPPT(state, hex_every=hex_every)
        self.shunt = VEDirectSmartShunt(state, hex_every=hex_every)
        self.reader = RDM6300Reader()
        self.ports: dict[str, PtyDevice] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.ports = {dev.id: PtyDevice(link_path(self.folder, dev)) for dev in SERIAL_DEVICES}
        self._tasks = [
            asyncio.create_task(self._paced(self.mppt.tick, self.ports[MPPT.id]), name="demo-mppt"),
            asyncio.create_task(self._paced(self.shunt.tick, self.ports[SHUNT.id]), name="demo-shunt"),
            asyncio.create_task(self.reader.run(self.ports[READER.id]), name="demo-door-reader"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for port in self.ports.values():
            port.close()
        self.ports = {}

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.stop()

    def devices_toml(self) -> str:
        return devices_toml(self.folder)

    async def _paced(self, tick: Callable[[float], bytes], port: PtyDevice) -> None:
        """One tick every `interval_s` on a fixed grid of times, so the period does not drift."""
        loop = asyncio.get_running_loop()
        started, n = loop.time(), 0
        while True:
            port.write(tick(self.interval_s))
            n += 1
            await asyncio.sleep(max(0.0, started + n * self.interval_s - loop.time()))
