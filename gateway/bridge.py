"""`commonwatt bridge`: the serial side of a gateway, on a small computer next to the devices.

A lab whose meters and chargers sit far from the gateway (a Raspberry Pi in the
workshop, the gateway in the office) runs this next to the devices. It reads the
serial devices of its `commonwatt.toml` exactly as the gateway would, journals every
record first in a local SQLite journal, and publishes the journal to the `[mqtt]`
broker from its own cursor (`gateway.sinks.mqtt_out`), where the gateway reads it
with the `commonwatt_bridge` protocol. A broker or network outage loses nothing: the
records wait in the bridge's journal and go out when the broker is back.

The file is the ordinary configuration schema: `[site].id` names the bridge in its
topics (`commonwatt/bridge/<site id>/<device id>`), `[journal]` is the local journal,
`[mqtt]` the broker to publish to, and of `[[devices]]` only the serial ones run here
(MQTT devices belong to the gateway; they are logged and ignored, as are `[api]` and
`[tsdb]`). The wire format and the gateway's side are in
gateway/decoders/commonwatt_bridge/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from typing import Any

from gateway.config import Config, ConfigError, Device, load_config
from gateway.decoders import SerialDecoder, decoder_class
from gateway.decoders.commonwatt_bridge.wire import STATUS
from gateway.journal import GroupCommitWriter
from gateway.sinks.mqtt_out import MqttPublisherSink
from gateway.sources.base import SourceHealth
from gateway.sources.serial import SerialSource

log = logging.getLogger(__name__)

#: The journal consumer whose cursor marks what the broker has acknowledged.
CONSUMER = "bridge"
#: On SIGTERM, how long the bridge waits for the broker to take what is still unpublished.
DRAIN_S = 5.0


def check_bridge_config(config: Config, source: str = "<config>") -> None:
    """What a bridge needs beyond a valid gateway file; ConfigError naming every problem."""
    problems: list[str] = []
    if config.mqtt is None:
        problems.append("mqtt: the bridge publishes to a broker: add an [mqtt] section")
    if not any(d.is_serial for d in config.devices):
        problems.append("devices: the bridge runs serial devices, and none is configured")
    for i, dev in enumerate(config.devices):
        if dev.is_serial and dev.id == STATUS:
            problems.append(f"devices[{i}].id: {STATUS!r} is reserved on a bridge (its online/offline topic)")
    if problems:
        raise ConfigError(source, problems)


class Bridge:
    """Serial sources -> local journal -> MQTT publisher. `async with Bridge(config):` runs it."""

    def __init__(self, config: Config, *, client_id: str | None = None, drain_s: float = DRAIN_S) -> None:
        check_bridge_config(config)
        assert config.mqtt is not None
        self.config = config
        self.drain_s = drain_s
        self.devices = [d for d in config.devices if d.is_serial]
        for dev in config.devices:
            if not dev.is_serial:
                log.info("device %s (%s) is MQTT: the gateway reads it, the bridge ignores it", dev.id, dev.protocol)
        j = config.journal
        self.writer = GroupCommitWriter(j.path, max_batch=j.max_batch, max_delay=j.max_delay_ms / 1000)
        self.sink = MqttPublisherSink(
            journal_path=j.path,
            settings=config.mqtt,
            site=config.site.id,
            client_id=client_id or config.mqtt.client_id or self._client_id(),
            consumer=CONSUMER,
        )
        self.sources: list[SourceHealth] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stack = contextlib.AsyncExitStack()

    def _client_id(self) -> str:
        return f"commonwatt-bridge-{self.config.site.id}-{socket.gethostname()}"[:64]

    async def __aenter__(self) -> Bridge:
        try:
            self.writer.start()
            self._stack.callback(self.writer.close)
            await self._stack.enter_async_context(self.sink)
            self.writer.add_listener(lambda _seq: self.sink.notify())
            for dev in self.devices:
                self._start_serial(dev)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    def _start_serial(self, dev: Device) -> None:
        decoder = decoder_class(dev.protocol)(**dev.options)
        assert isinstance(decoder, SerialDecoder) and dev.port is not None
        health = SourceHealth(name=dev.id, kind="serial")
        source = SerialSource(
            name=dev.id,
            port=dev.port,
            decoder=decoder,
            device_id=dev.id,
            inbox=self.writer,
            health=health,
            silent_after_s=dev.silent_after_s,
        )
        self.sources.append(health)
        self._tasks.append(asyncio.create_task(source.run(), name=f"serial-{dev.id}"))

    async def __aexit__(self, *exc: object) -> None:
        # Order: stop reading, commit what was read, give the broker a moment to take it, stop.
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            seq = await asyncio.to_thread(self.writer.flush, 10.0)
            if not await asyncio.to_thread(self.sink.wait_delivered, seq, self.drain_s):
                log.warning(
                    "stopping with %d record(s) unpublished: they go out at the next start", self.sink.health.lag
                )
        finally:
            await self._stack.aclose()

    def health(self) -> dict[str, Any]:
        """The same shape as the gateway's health, for logs and tests."""
        sources = [s.as_json() for s in self.sources]
        sink = self.sink.health.as_json()
        ok = all(s["connected"] for s in sources) and sink["connected"] and self.writer.last_error is None
        return {
            "status": "ok" if ok else "degraded",
            "site": self.config.site.id,
            "journal": {"committed_seq": self.writer.committed_seq, "pending": self.writer.pending},
            "sources": sources,
            "sinks": [sink],
        }


async def run_bridge(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then flush the journal, drain briefly and exit."""
    from gateway.app import stop_on_signals

    async with stop_on_signals() as stop, Bridge(config) as bridge:
        log.info("bridge %s: %d serial device(s) -> %s", config.site.id, len(bridge.devices), bridge.sink.health.broker)
        await stop.wait()
        log.info("stopping: flushing the journal")


def main(argv: list[str] | None = None) -> int:
    """`python -m gateway.bridge --config FILE` (the same as `commonwatt bridge --config FILE`)."""
    parser = argparse.ArgumentParser(prog="commonwatt bridge", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", default="commonwatt.toml", help="commonwatt.toml")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        check_bridge_config(config, args.config)
    except ConfigError as exc:
        print(f"{exc.source}: the configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(run_bridge(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
