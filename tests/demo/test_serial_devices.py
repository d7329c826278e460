"""The demo's serial devices, read back the way the gateway reads them.

Every byte goes through a pseudo-terminal and a real pyserial on the slave, then
through the project's own decoders. Checksums are recomputed here from the bytes
read, independently of both the simulators and the decoders.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from functools import reduce
from operator import xor
from pathlib import Path
from typing import NamedTuple

import pytest
import serial

from gateway.config import parse_config
from gateway.decoders import PROTOCOLS
from gateway.decoders.base import DecodeError
from gateway.decoders.rdm6300 import RDM6300Decoder
from gateway.decoders.vedirect import VEDirectDecoder
from gateway.demo.physics import SiteModel
from gateway.demo.serial_devices import (
    MPPT,
    SERIAL_DEVICES,
    SHUNT,
    DcState,
    PtyDevice,
    RDM6300Reader,
    SerialDemo,
    VEDirectMPPT,
    VEDirectSmartShunt,
    devices_toml,
    from_snapshot,
    link_path,
    rdm6300_frame,
    text_block,
)
from gateway.model import BadgeEvent, Reading, Record
from gateway.sources.serial import SerialSource

MARKER = b"\r\nChecksum\t"
HEX_LINE = re.compile(rb":([0-9A-F])((?:[0-9A-F]{2})+)\n")
STATE = DcState(pv_w=312.0, battery_w=-240.0, soc_pct=47.5)


class ListInbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.frames: list[list[Record]] = []

    def put(self, records: Sequence[Record]) -> None:
        with self._lock:
            self.frames.append(list(records))


class Stream(NamedTuple):
    blocks: list[bytes]  # TEXT blocks, HEX lines cut out
    hexes: list[bytes]  # every HEX line
    inside: int  # HEX lines that sat in the middle of a block


def split_stream(data: bytes) -> Stream:
    """The stream taken apart again, independently of the decoder.

    A block ends one byte after the checksum marker; that byte may be anything. Before
    it, a `:` only ever starts a HEX line; one right after the checksum byte is between
    two blocks, any other is inside a block.
    """
    out, pos = Stream([], [], 0), 0
    while (marker := data.find(MARKER, pos)) >= 0:
        end = marker + len(MARKER) + 1
        raw = data[pos : end - 1]
        found = list(HEX_LINE.finditer(raw))
        out.hexes.extend(m.group(0) for m in found)
        out = out._replace(inside=out.inside + sum(m.start() > 0 for m in found))
        out.blocks.append(HEX_LINE.sub(b"", raw) + data[end - 1 : end])
        pos = end
    out.hexes.extend(m.group(0) for m in HEX_LINE.finditer(data[pos:]))
    return out


def hex_check_ok(line: bytes) -> bool:
    m = HEX_LINE.fullmatch(line)
    assert m is not None
    raw = bytes.fromhex(m.group(2).decode())
    return (int(m.group(1), 16) + sum(raw)) & 0xFF == 0x55


async def read_while(port: serial.Serial, running: Awaitable[None]) -> list[tuple[float, bytes]]:
    """What the port (real pyserial, non-blocking) gives until `running` is done and the line is
    quiet: chunks with their arrival time."""
    task = asyncio.ensure_future(running)
    chunks: list[tuple[float, bytes]] = []
    while not task.done() or port.in_waiting:
        if chunk := port.read(port.in_waiting or 1):
            chunks.append((time.monotonic(), chunk))
        await asyncio.sleep(0.005)
    await task
    return chunks


async def ticking(tick: Callable[[float], bytes], pty: PtyDevice, n: int, interval: float) -> None:
    for _ in range(n):
        pty.write(tick(1.0))
        await asyncio.sleep(interval)


def run_vedirect(device: VEDirectMPPT | VEDirectSmartShunt, tmp_path: Path, ticks: int) -> bytes:
    async def main() -> list[tuple[float, bytes]]:
        with PtyDevice(tmp_path / "by-id" / "ve") as pty, serial.Serial(str(pty.link), 19200, timeout=0) as port:
            return await read_while(port, ticking(device.tick, pty, ticks, 0.01))

    return b"".join(chunk for _, chunk in asyncio.run(main()))


def decode_all(decoder: VEDirectDecoder | RDM6300Decoder, data: bytes) -> list[list[Record] | DecodeError]:
    """Fed in small uneven chunks, as a USB adapter delivers them."""
    out: list[list[Record] | DecodeError] = []
    for i, start in enumerate(range(0, len(data), 37)):
        out += decoder.feed(data[start : start + 37], float(i))
    return out


def metrics(frame: list[Record] | DecodeError) -> dict[str, float]:
    assert isinstance(frame, list)
    return {r.metric: r.value for r in frame if isinstance(r, Reading)}


# -- pure framing ------------------------------------------------------------------------------


def test_text_block_matches_the_captured_mppt_frame() -> None:
    fields = "PID 0xA05F FW 139 SER# HQ18486U2B4 V 12810 I -10 VPV 10 PPV 0 CS 0 MPPT 0 ERR 0 LOAD ON IL 0"
    pairs = list(zip(*[iter(fields.split())] * 2, strict=True))
    pairs += [(f"H{n}", "0") for n in range(19, 24)] + [("HSDS", "0")]
    assert text_block(pairs)[-1] == 0xE4  # FORMATS.md §1.6.1, captured from a real charger


def test_rdm6300_frames_match_the_reference_table() -> None:
    assert rdm6300_frame("0D00A3F2C1").hex(" ") == "02 30 44 30 30 41 33 46 32 43 31 39 44 03"
    assert rdm6300_frame("1a00b4e817") == b"\x021A00B4E81751\x03"
    for bad in ("0D00A3F2C", "0D00A3F2CG", "0D00A3F2C1FF"):
        with pytest.raises(ValueError, match="10 hex characters"):
            rdm6300_frame(bad)


# -- through a pty and pyserial into the decoders ----------------------------------------------


def test_mppt_blocks_decode_with_no_rejection(tmp_path: Path) -> None:
    mppt = VEDirectMPPT(lambda: STATE, hex_every=3)
    data = run_vedirect(mppt, tmp_path, ticks=24)
    blocks, hexes, inside = split_stream(data)
    assert len(blocks) == 24 and len(hexes) == 8 and inside == 4
    assert all(sum(b) & 0xFF == 0 and b.startswith(b"\r\nPID\t0xA060\r\n") for b in blocks)
    assert all(hex_check_ok(h) and h.startswith(b":A") for h in hexes)
    frames = decode_all(VEDirectDecoder(), data)
    assert not [f for f in frames if isinstance(f, DecodeError)]
    assert len(frames) == 24
    first, last = metrics(frames[0]), metrics(frames[-1])
    assert first["pv_power_w"] == 312 and first["device_state"] == 3 and first["error_code"] == 0
    assert 48.0 < first["voltage_v"] < 54.0
    assert first["current_a"] == pytest.approx(312 * 0.97 / first["voltage_v"], abs=0.001)
    # 24 ticks of one second at ~303 W delivered: about 2 Wh, and H19 counts in steps of 10 Wh.
    assert last["energy_wh"] - first["energy_wh"] in (0.0, 10.0)
    assert mppt.total_wh == pytest.approx(105_120.0 + 312 * 0.97 * 24 / 3600)


def test_smartshunt_sends_main_and_history_blocks(tmp_path: Path) -> None:
    shunt = VEDirectSmartShunt(lambda: STATE, hex_every=4)
    data = run_vedirect(shunt, tmp_path, ticks=10)
    blocks, hexes, inside = split_stream(data)
    assert len(blocks) == 20 and len(hexes) == 5 and inside == 2
    assert all(sum(b) & 0xFF == 0 for b in blocks)
    assert all(hex_check_ok(h) for h in hexes)
    assert [b[:6] for b in blocks[:2]] == [b"\r\nPID\t", b"\r\nH1\t-"]
    frames = decode_all(VEDirectDecoder(), data)
    assert not [f for f in frames if isinstance(f, DecodeError)]
    main, history = metrics(frames[0]), metrics(frames[1])
    assert main["power_w"] == -240 and main["soc_pct"] == 47.5
    assert main["current_a"] == pytest.approx(-240 / main["voltage_v"], abs=0.001)
    assert main["consumed_ah"] == pytest.approx(105.0)
    # Down to 10 % of 200 Ah at the present current: minutes, rounded.
    assert main["time_to_go_s"] == pytest.approx(75.0 / (240 / main["voltage_v"]) * 3600, rel=0.01)
    assert set(history) == {"energy_charged_wh", "energy_discharged_wh"}
    assert metrics(frames[-1])["energy_discharged_wh"] >= history["energy_discharged_wh"]


def test_each_presentation_is_one_badge_event(tmp_path: Path) -> None:
    reader = RDM6300Reader()
    # The same card twice, with a pause longer than the decoder's hold-off, then another card.
    plan = [("0D00A3F2C1", 0.35, 0.0), ("0D00A3F2C1", 0.3, 0.9), ("1A00B4E817", 0.25, 0.0)]

    async def present_all() -> None:
        for uid, hold, pause in plan:
            await asyncio.sleep(pause)
            reader.present(uid, hold)
            await reader.wait_idle()

    async def main() -> list[tuple[float, bytes]]:
        with PtyDevice(tmp_path / "door") as pty, serial.Serial(str(pty.link), 9600, timeout=0) as port:
            task = asyncio.create_task(reader.run(pty))
            chunks = await read_while(port, present_all())
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return chunks

    chunks = asyncio.run(main())
    data = b"".join(chunk for _, chunk in chunks)
    frames = [data[i : i + 14] for i in range(0, len(data), 14)]
    assert reader.frames == len(frames) >= 3 + 3 + 2  # one every 100 ms while held
    for frame in frames:
        assert frame[0] == 2 and frame[-1] == 3
        assert reduce(xor, bytes.fromhex(frame[1:11].decode())) == int(frame[11:13], 16)
    decoder = RDM6300Decoder(device="door", holdoff_s=0.6)
    decoded = [f for ts, chunk in chunks for f in decoder.feed(chunk, ts)]
    assert not [f for f in decoded if isinstance(f, DecodeError)]
    events = [r for f in decoded if isinstance(f, list) for r in f]
    assert [e.badge_uid for e in events if isinstance(e, BadgeEvent)] == [uid for uid, _, _ in plan]
    assert len(events) == len(plan)


def test_a_device_nobody_reads_drops_its_oldest_frames(tmp_path: Path) -> None:
    frames = [rdm6300_frame(f"0D00A3{n:04X}") for n in range(5000)]  # 70 kB: more than the port holds
    with PtyDevice(tmp_path / "stalled") as pty, serial.Serial(pty.port, 9600, timeout=0) as port:
        for frame in frames:
            pty.write(frame)  # the listener has stalled: this must never block
        assert pty.overruns > 0
        kept = b""
        while chunk := port.read(65536):
            kept += chunk
    # What was kept is the newest frames, whole, in order.
    assert 0 < len(kept) < 70_000 and len(kept) % 14 == 0
    assert kept == b"".join(frames[-(len(kept) // 14) :])


# -- the whole thing, as the gateway sees it ---------------------------------------------------


def test_serial_source_reads_the_mppt_through_its_by_id_link(tmp_path: Path) -> None:
    inbox = ListInbox()
    model = SiteModel()
    link = link_path(tmp_path, MPPT)
    source = SerialSource(
        name="mppt", port=str(link), decoder=VEDirectDecoder(), device_id="mppt", inbox=inbox, min_backoff_s=0.05
    )

    async def main() -> None:
        async with SerialDemo(tmp_path, state=from_snapshot(model.snapshot), interval_s=0.1, hex_every=3) as demo:
            assert link.resolve() == Path(demo.ports[MPPT.id].port)
            task = asyncio.create_task(source.run())
            await asyncio.sleep(2.0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert not link.exists()

    asyncio.run(main())
    readings = [r for f in inbox.frames for r in f if isinstance(r, Reading)]
    assert len(inbox.frames) >= 15
    assert {r.device for r in readings} == {"mppt"}
    assert {"pv_power_w", "voltage_v", "energy_wh"} <= {r.metric for r in readings}
    # Opening the port may catch the device mid-block; nothing else is ever rejected.
    assert set(source.health.rejected) <= {"partial_block"} and sum(source.health.rejected.values()) <= 1


def test_devices_snippet_names_every_link(tmp_path: Path) -> None:
    devices = tomllib.loads(devices_toml(tmp_path))["devices"]
    assert [(d["id"], d["protocol"], d["role"]) for d in devices] == [
        ("mppt", "vedirect", "other"),
        ("shunt", "vedirect", "other"),
        ("door-reader", "rdm6300", "other"),
    ]
    assert [d["port"] for d in devices] == [str(link_path(tmp_path, dev)) for dev in SERIAL_DEVICES]
    assert "/serial/by-id/usb-VictronEnergy_BV_VE_Direct_cable_" in devices[SERIAL_DEVICES.index(SHUNT)]["port"]


def test_devices_snippet_is_a_valid_configuration(tmp_path: Path) -> None:
    if not {"vedirect", "rdm6300"} <= set(PROTOCOLS):
        pytest.skip("vedirect and rdm6300 are not registered in gateway.decoders.PROTOCOLS yet")
    config = parse_config(tomllib.loads('[site]\nid = "demo"\n\n' + devices_toml(tmp_path)))
    assert [(d.id, d.is_serial) for d in config.devices] == [(dev.id, True) for dev in SERIAL_DEVICES]
