"""A whole simulated lab on an MQTT broker: the devices `commonwatt demo` shows.

    async with DemoSite().running(broker.host, broker.port) as site:
        site.set_relay("laser", True)
        print(site.snapshot().grid_w)

On the broker, exactly as the real devices would appear:

| device | MQTT | format |
| --- | --- | --- |
| grid meter, Shelly Pro 3EM | `shellypro3em-demo01/...` | FORMATS.md §4.3 |
| laser, printer, CNC on Shelly Plus Plug S | `shellyplusplugs-{laser,printer,cnc}01/...` | §4.2 |
| Hoymiles inverter on OpenDTU | `solar/114182912345/...` | §6.1 |
| battery on a Victron GX (Venus OS) | `N/c0619ab1b2c3/...` after a keep-alive | §7 |

Each device has its own MQTT connection (own client id and last will). The site
model steps every `interval_s` on the running event loop; powers, counters and
payloads all come from the same step, so what the gateway reads balances exactly
(see `gateway.demo.physics`). Without commands the machines run on an autopilot;
`set_relay` / `set_busy` (or a `Switch.Set` RPC) take a machine off it.

Everything that touches the site runs on the event loop's thread: messages that
arrive on paho's threads are handed over with `call_soon_threadsafe`. Call
`set_relay`, `set_busy` and `snapshot` from the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.demo.devices import (
    BATTERY_INSTANCE,
    DTU_SERIAL,
    GRID_METER_PREFIX,
    SOURCE_BUTTON,
    VENUS_PORTAL,
    Message,
    OpenDTU,
    ShellyPlusPlugS,
    ShellyPro3EM,
    SimulatedDevice,
    VenusOS,
)
from gateway.demo.physics import MACHINES, SiteModel, SiteSettings, SiteSnapshot


class DemoDevice(NamedTuple):
    """One device as the gateway's configuration names it."""

    key: str  # the device key its decoder gives (gateway/decoders/base.py)
    protocol: str
    role: str
    machine: str | None = None


#: What a gateway must be configured with to read the demo lab.
GATEWAY_DEVICES: tuple[DemoDevice, ...] = (
    DemoDevice(GRID_METER_PREFIX, "shelly_gen2", "grid"),
    *(DemoDevice(p.prefix, "shelly_gen2", "machine", p.name) for p in MACHINES),
    DemoDevice(DTU_SERIAL, "opendtu", "pv"),
    DemoDevice(f"{VENUS_PORTAL}/battery/{BATTERY_INSTANCE}", "victron_venus", "battery"),
)

#: How long `start` waits for every device to be connected and subscribed.
CONNECT_TIMEOUT_S = 10.0
#: How long `stop` waits for the devices' last messages to leave.
FLUSH_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class DemoTiming:
    interval_s: float = 1.0  # every device reports this often
    counters_interval_s: float = 10.0  # the grid meter's `emdata:0` counters
    victron_keepalive_s: float = 60.0  # Venus OS stops publishing this long after a keep-alive


class _Link:
    """One device's MQTT connection. paho runs it on a thread; messages go to the loop."""

    def __init__(self, device: SimulatedDevice, loop: asyncio.AbstractEventLoop, site: DemoSite) -> None:
        self.device = device
        self.ready = asyncio.Event()
        self._loop, self._site = loop, site
        self._last: mqtt.MQTTMessageInfo | None = None
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device.client_id)
        if device.will is not None:
            will = device.will
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.client = client

    def connect(self, host: str, port: int) -> None:
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    def publish(self, messages: list[Message]) -> None:
        for m in messages:
            self._last = self.client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)

    async def close(self) -> None:
        """Waits (bounded) for what was queued to leave, then disconnects without a last will."""
        last = self._last
        if last is not None and self.client.is_connected():
            with contextlib.suppress(RuntimeError, ValueError):
                await asyncio.to_thread(last.wait_for_publish, FLUSH_TIMEOUT_S)
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    # paho callbacks, on paho's thread

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        self.publish(self.device.birth())
        if self.device.subscriptions:
            client.subscribe([(topic, 1) for topic in self.device.subscriptions])
        else:
            self._loop.call_soon_threadsafe(self.ready.set)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, _codes: Any, _p: Any) -> None:
        self._loop.call_soon_threadsafe(self.ready.set)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._loop.call_soon_threadsafe(self._site._incoming, self, msg.topic, bytes(msg.payload))


class DemoSite:
    """The simulated devices of one lab, publishing to a broker while running."""

    def __init__(self, settings: SiteSettings | None = None, timing: DemoTiming | None = None) -> None:
        self.timing = timing or DemoTiming()
        self.model = SiteModel(settings)
        self.plugs = {p.name: ShellyPlusPlugS(self.model, p) for p in MACHINES}
        self.victron = VenusOS(self.model, keepalive_s=self.timing.victron_keepalive_s)
        self.devices: list[SimulatedDevice] = [
            ShellyPro3EM(self.model),
            *self.plugs.values(),
            OpenDTU(self.model),
            self.victron,
        ]
        self._links: list[_Link] = []
        self._task: asyncio.Task[None] | None = None

    # -- lifetime ---------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        """Connects every device, waits until each listens, publishes the first reports, starts ticking."""
        loop = asyncio.get_running_loop()
        self._links = [_Link(device, loop, self) for device in self.devices]
        for link in self._links:
            link.connect(host, port)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await asyncio.gather(*(link.ready.wait() for link in self._links))
        except TimeoutError:
            await self.stop()
            raise ConnectionError(f"demo devices could not connect to MQTT at {host}:{port}") from None
        self._publish_all(counters_due=True)
        self._task = asyncio.create_task(self._run(), name="demo-site")

    async def stop(self) -> None:
        """Stops ticking; each device sends a final full report and says goodbye (online false)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            now = time.time()
            for link in self._links:
                link.publish(link.device.goodbye(now))
        links, self._links = self._links, []
        await asyncio.gather(*(link.close() for link in links))

    @contextlib.asynccontextmanager
    async def running(self, host: str, port: int) -> AsyncIterator[DemoSite]:
        await self.start(host, port)
        try:
            yield self
        finally:
            await self.stop()

    # -- what the demo (and badges, later) do ---------------------------------------------------

    def snapshot(self) -> SiteSnapshot:
        """The true simulated powers and counters, as of the last step."""
        return self.model.snapshot()

    def set_relay(self, machine: str, on: bool) -> None:
        """Switch a machine's plug as its own button would. KeyError for an unknown machine."""
        plug = self.plugs[machine]
        self._send(plug, plug.switch(on, SOURCE_BUTTON, time.time()))

    def set_busy(self, machine: str, busy: bool) -> None:
        """Someone starts or stops working at a machine; its plug reports the new power at once."""
        self.model.set_busy(machine, busy)
        plug = self.plugs[machine]
        self._send(plug, plug.tick(time.time(), False))

    # -- internals --------------------------------------------------------------------------

    async def _run(self) -> None:
        """Steps on a fixed grid of times, so the simulation neither drifts nor depends on load."""
        loop = asyncio.get_running_loop()
        interval = self.timing.interval_s
        counters_every = max(1, round(self.timing.counters_interval_s / interval))
        started, n = loop.time(), 0
        while True:
            n += 1
            await asyncio.sleep(max(0.0, started + n * interval - loop.time()))
            self.model.step(interval)
            self._publish_all(counters_due=n % counters_every == 0)

    def _publish_all(self, counters_due: bool) -> None:
        now = time.time()
        for link in self._links:
            link.publish(link.device.tick(now, counters_due))

    def _send(self, device: SimulatedDevice, messages: list[Message]) -> None:
        for link in self._links:
            if link.device is device:
                link.publish(messages)

    def _incoming(self, link: _Link, topic: str, payload: bytes) -> None:
        """A command or keep-alive for one device, now on the loop's thread."""
        if link in self._links:
            link.publish(link.device.on_message(topic, payload, time.time()))
