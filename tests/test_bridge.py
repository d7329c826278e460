"""`commonwatt bridge` end to end: a DSMR meter on a pty -> bridge -> real Mosquitto -> a Gateway.

The test plays the meter (pty master, as in tests/sources/test_serial.py), runs the
bridge and the gateway with their own journals, and checks the gateway's journal
against what a DSMR decoder makes of the same bytes, under the gateway's device id.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway import decoders
from gateway.app import Gateway
from gateway.bridge import Bridge, check_bridge_config
from gateway.config import Config, ConfigError, parse_config
from gateway.decoders.dsmr import DSMRDecoder
from gateway.journal import Journal
from gateway.model import Reading
from tests.decoders.test_dsmr import TELEGRAMS, seal
from tests.services import Mosquitto
from tests.sources.test_serial import FakeDevice

ROOT = Path(__file__).resolve().parent.parent
SITE = "workshop-pi"
#: (device, metric, ts in ms, value) as the gateway journals them.
Key = tuple[str, str, int, float]


def telegram(k: int) -> bytes:
    """The v5.0 single-phase telegram of the corpus, `k` seconds later (13:00:00 CEST + k), CRC redone."""
    base = TELEGRAMS["v50_1ph"]
    body = base[: base.index(b"!") + 1]
    when = datetime(2024, 6, 12, 13, 0, 0) + timedelta(seconds=k)
    body = body.replace(b"240612134512S", when.strftime("%y%m%d%H%M%SS").encode())
    return seal(body.replace(b"1-0:2.7.0(02.384*kW)", b"1-0:2.7.0(%06.3f*kW)" % (k % 17 / 4)))


def expected(first: int, last: int) -> set[Key]:
    """What the gateway must journal for telegrams first..last-1: the DSMR readings, as device `grid`."""
    frames = DSMRDecoder().feed(b"".join(telegram(k) for k in range(first, last)), 0.0)
    return {
        ("grid", r.metric, round(r.ts * 1000), r.value)
        for f in frames
        if isinstance(f, list)
        for r in f
        if isinstance(r, Reading)
    }


def test_telegram_times_are_distinct() -> None:
    assert min(r[2] for r in expected(0, 2)) == round(datetime(2024, 6, 12, 11, tzinfo=UTC).timestamp() * 1000)
    assert len({r[2] for r in expected(0, 30)}) == 30


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The protocol as gateway/decoders/__init__.py registers it (a no-op once it is there)."""
    monkeypatch.setitem(decoders.PROTOCOLS, "commonwatt_bridge", "gateway.decoders.commonwatt_bridge:BridgeDecoder")


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[FakeDevice]:
    dev = FakeDevice(tmp_path / "by-id" / "usb-FTDI_P1_cable-if00-port0")
    yield dev
    if dev.link.exists():
        dev.unplug()


def bridge_config(tmp_path: Path, broker: Mosquitto, port: Path) -> dict[str, Any]:
    return {
        "site": {"id": SITE},
        "journal": {"path": str(tmp_path / "bridge.sqlite"), "max_delay_ms": 10},
        "mqtt": {"port": broker.port, "keepalive_s": 5},
        "devices": [
            {"id": "p1", "protocol": "dsmr", "port": str(port), "role": "grid"},
            # An MQTT device in the bridge's file: the gateway's business, ignored here.
            {"id": "laser", "protocol": "shelly_gen2", "prefix": "shellyplus1pm-a8032ab1", "role": "machine"},
        ],
    }


def gateway_config(tmp_path: Path, broker: Mosquitto) -> Config:
    return parse_config(
        {
            "site": {"id": "lab"},
            "journal": {"path": str(tmp_path / "gateway.sqlite"), "max_delay_ms": 10},
            "mqtt": {"port": broker.port, "client_id": "gateway-under-test"},
            "api": {"enabled": False},
            "devices": [
                {"id": "grid", "protocol": "commonwatt_bridge", "prefix": f"{SITE}/p1", "role": "grid"},
                {"id": "workshop", "protocol": "commonwatt_bridge", "prefix": SITE, "role": "other"},
            ],
        }
    )


def journal_rows(path: Path) -> list[tuple[Any, ...]]:
    if not path.exists():
        return []
    with Journal(path, readonly=True) as journal:
        return journal.read(0, 10_000_000)


def readings(path: Path, device: str = "grid") -> list[Key]:
    return [(r[2], r[3], round(r[1] * 1000), r[4]) for r in journal_rows(path) if r[2] == device]


def cursor(path: Path) -> tuple[int, int]:
    with Journal(path, readonly=True) as journal:
        return journal.cursor("bridge"), journal.last_seq()


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def send(meter: FakeDevice, first: int, last: int) -> None:
    """Telegrams first..last-1, much faster than a real meter's one per second."""
    rng = random.Random(first)
    for k in range(first, last):
        await meter.send(telegram(k), rng)


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 90) -> None:
    async def main() -> None:
        async with asyncio.timeout(timeout):
            await scenario()

    asyncio.run(main())


async def started_gateway(config: Config) -> Gateway:
    gw = await Gateway(config).__aenter__()
    assert gw.mqtt is not None
    await gw.mqtt.wait_connected()
    await asyncio.sleep(0.2)  # subscriptions acknowledged: the broker keeps the session from here on
    return gw


def test_meter_to_gateway_journal_exactly(
    tmp_path: Path, mosquitto: Mosquitto, meter: FakeDevice, registered: None
) -> None:
    gw_config = gateway_config(tmp_path, mosquitto)
    br_config = parse_config(bridge_config(tmp_path, mosquitto, meter.link))
    want = expected(0, 40)

    async def scenario() -> None:
        gw = await started_gateway(gw_config)
        try:
            async with Bridge(br_config) as bridge:
                assert [d.id for d in bridge.devices] == ["p1"]
                await until(lambda: bridge.health()["status"] == "ok")
                await send(meter, 0, 40)
                await until(lambda: len(readings(gw_config.journal.path)) >= len(want))
                assert bridge.sink.health.lag == 0 and bridge.sink.health.records_published == len(want)
            await until(lambda: [r[3] for r in readings(gw_config.journal.path, "workshop")][-1:] == [0.0])
        finally:
            await gw.__aexit__(None, None, None)

    run(scenario)
    got = readings(gw_config.journal.path)
    assert sorted(got) == sorted(want)  # exactly these, each once
    assert [r[3] for r in readings(gw_config.journal.path, "workshop")] == [1.0, 0.0]  # online, then offline
    bridge_rows = journal_rows(br_config.journal.path)
    assert {r[2] for r in bridge_rows} == {"p1"} and len(bridge_rows) == len(want)
    assert cursor(br_config.journal.path) == (len(want), len(want))


def persistent_broker(tmp_path: Path) -> Mosquitto:
    """As in production: sessions and queued messages survive a broker restart.

    `user root`: started as root (in a container), Mosquitto would otherwise drop to its own
    user and fail to write its database into the test's folder; as anyone else it is ignored.
    """
    folder = tmp_path / "broker"
    return Mosquitto(folder, extra_conf=f"persistence true\npersistence_location {folder}/\nuser root\n")


def test_broker_outage_loses_nothing_and_the_cursor_waits(tmp_path: Path, meter: FakeDevice, registered: None) -> None:
    broker = persistent_broker(tmp_path).start()
    gw_config = gateway_config(tmp_path, broker)
    br_config = parse_config(bridge_config(tmp_path, broker, meter.link))
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        gw = await started_gateway(gw_config)
        try:
            async with Bridge(br_config) as bridge:
                await until(lambda: bridge.health()["status"] == "ok")
                await send(meter, 0, 20)
                await until(lambda: len(readings(gw_config.journal.path)) >= len(expected(0, 20)))
                await asyncio.to_thread(broker.stop)
                assert (broker.folder / "mosquitto.db").exists(), "the broker kept no sessions"
                acked, _ = await asyncio.to_thread(cursor, br_config.journal.path)
                await until(lambda: not bridge.sink.health.connected)
                await send(meter, 20, 60)  # the meter keeps talking during the outage
                await until(lambda: cursor(br_config.journal.path)[1] == len(expected(0, 60)))
                seen["during"] = await asyncio.to_thread(cursor, br_config.journal.path)
                seen["acked"] = acked
                await asyncio.to_thread(broker.start)
                await until(lambda: set(readings(gw_config.journal.path)) >= expected(0, 60), 20)
                await until(lambda: bridge.sink.health.lag == 0)
                seen["health"] = bridge.sink.health.as_json()
        finally:
            await gw.__aexit__(None, None, None)

    try:
        run(scenario)
    finally:  # also when the scenario timed out: no broker left running after the test
        broker.stop()
    want = expected(0, 60)
    got = readings(gw_config.journal.path)
    assert set(got) == want
    # At least once: a batch whose acknowledgement the outage cut off may come twice, never more.
    assert max(map(got.count, want)) <= 2
    during, _last = seen["during"]
    assert during == seen["acked"] <= len(expected(0, 20))  # nothing unacknowledged passed the cursor
    assert cursor(br_config.journal.path) == (len(want), len(want))
    assert seen["health"]["connected"] and seen["health"]["lag"] == 0


def to_toml(config: dict[str, Any]) -> str:
    """The few shapes bridge_config() uses: tables of scalars and one array of tables."""

    def table(values: dict[str, Any]) -> str:
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())

    out = [f"[{name}]\n{table(values)}" for name, values in config.items() if name != "devices"]
    out += [f"[[devices]]\n{table(dev)}" for dev in config["devices"]]
    return "\n".join(out)


class BridgeProcess:
    """`python -m gateway.bridge --config FILE`, as the `commonwatt bridge` command runs it."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.folder = folder
        self.file = folder / "bridge.toml"
        self.file.write_text(to_toml(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.folder / "bridge.log").open("ab")
        cmd = [sys.executable, "-m", "gateway.bridge", "--config", str(self.file)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log)

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(20)


def test_bridge_sigkilled_keeps_its_journal_and_resumes_from_its_cursor(
    tmp_path: Path, mosquitto: Mosquitto, meter: FakeDevice, registered: None
) -> None:
    gw_config = gateway_config(tmp_path, mosquitto)
    raw = bridge_config(tmp_path, mosquitto, meter.link)
    br_journal = Path(raw["journal"]["path"])
    bridge = BridgeProcess(tmp_path, raw)
    seen: dict[str, Any] = {}

    def online_count() -> int:
        return sum(1 for r in readings(gw_config.journal.path, "workshop") if r[3] == 1.0)

    async def scenario() -> None:
        gw = await started_gateway(gw_config)
        try:
            bridge.start()
            await until(lambda: online_count() == 1, 15)
            await send(meter, 0, 30)
            await until(lambda: cursor(br_journal)[1] == len(expected(0, 30)))
            seen["killed"] = bridge.signal(signal.SIGKILL)
            bridge.start()
            await until(lambda: online_count() == 2, 15)
            await send(meter, 30, 40)
            await until(lambda: set(readings(gw_config.journal.path)) >= expected(0, 40), 15)
            await until(lambda: cursor(br_journal)[0] == cursor(br_journal)[1])
            seen["stopped"] = await asyncio.to_thread(bridge.signal, signal.SIGTERM)
        finally:
            if bridge.proc is not None and bridge.proc.poll() is None:
                bridge.proc.kill()
            await gw.__aexit__(None, None, None)

    run(scenario)
    assert seen["killed"] == -signal.SIGKILL and seen["stopped"] == 0
    with Journal(br_journal, readonly=True) as journal:
        assert journal.integrity_check() == "ok"
        assert journal.last_seq() == len(expected(0, 40))
    assert set(readings(gw_config.journal.path)) == expected(0, 40)


def test_a_bridge_without_broker_or_serial_devices_is_refused(tmp_path: Path, mosquitto: Mosquitto) -> None:
    raw = bridge_config(tmp_path, mosquitto, tmp_path / "p1")
    status = {"id": "status", "protocol": "dsmr", "port": "/dev/null", "role": "grid"}
    with pytest.raises(ConfigError) as err:
        check_bridge_config(parse_config({**raw, "mqtt": None, "devices": [status]}))
    assert err.value.problems == [
        "mqtt: the bridge publishes to a broker: add an [mqtt] section",
        "devices[0].id: 'status' is reserved on a bridge (its online/offline topic)",
    ]
    raw["devices"] = raw["devices"][1:]
    with pytest.raises(ConfigError) as err:
        check_bridge_config(parse_config(raw))
    assert err.value.problems == ["devices: the bridge runs serial devices, and none is configured"]
