"""The composition root: configuration -> journal, sources, live view, sinks, API.

Data flows one way. Sources put decoded records into the journal writer; the
writer commits them in batches and wakes the consumers (the live view, the TSDB
sink), each of which reads the journal from its own position. Nothing acts on a
record before it is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from gateway.config import Config
from gateway.journal import GroupCommitWriter
from gateway.live import LiveState
from gateway.sources.base import SourceHealth
from gateway.sources.mqtt import MqttSource

if TYPE_CHECKING:
    from gateway.energy_service import EnergyService
    from gateway.floor_service import FloorService
    from gateway.ledger_service import LedgerService

log = logging.getLogger(__name__)


class StartError(Exception):
    """The gateway cannot start as configured (a port in use); the message says what to change."""


class Gateway:
    """One site's gateway. `async with Gateway(config) as gw:` runs it until the block exits."""

    def __init__(self, config: Config, *, client_id: str | None = None) -> None:
        self.config = config
        self.started = time.time()
        self.client_id = client_id or (config.mqtt.client_id if config.mqtt else None) or self._client_id()
        self.writer = GroupCommitWriter(
            config.journal.path,
            max_batch=config.journal.max_batch,
            max_delay=config.journal.max_delay_ms / 1000,
        )
        self.live = LiveState(config.journal.path)
        self.mqtt: MqttSource | None = None
        self.floor: FloorService | None = None
        self.energy: EnergyService | None = None
        self.homeassistant: Any = None
        self.ledger: LedgerService | None = None
        self.audit: Any = None
        self.sources: list[SourceHealth] = []
        self.sinks: list[Any] = []
        self._wakers: list[Callable[[], None]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._stack = contextlib.AsyncExitStack()
        #: Set when the gateway stops, so long-lived responses (the pages' event stream) end cleanly.
        self.stopping = asyncio.Event()
        self.api_port: int | None = None

    def _client_id(self) -> str:
        return f"commonwatt-{self.config.site.id}-{socket.gethostname()}"[:64]

    # -- lifetime ------------------------------------------------------------------------------

    async def __aenter__(self) -> Gateway:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        # The API's port first: taken by another program, it is a clear error before anything runs.
        api_socket = self._bind_api() if self.config.api.enabled else None
        if api_socket is not None:
            self._stack.callback(api_socket.close)
        self.writer.start()
        self._stack.callback(self.writer.close)

        def _committed(_seq: int) -> None:
            loop.call_soon_threadsafe(self._wake_all)

        self.writer.add_listener(_committed)
        live_wake = asyncio.Event()
        self._wakers.append(live_wake.set)
        self._spawn(self.live.follow(live_wake), "live")
        self._stack.callback(self.live.close)
        await self._start_sinks()
        await self._start_sources()
        await self._start_ledger()
        await self._start_audit()
        if self.config.machines:
            await self._start_floor()
        if self.config.devices:
            await self._start_energy()
        if api_socket is not None:
            await self._start_api(api_socket)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def _wake_all(self) -> None:
        for wake in self._wakers:
            wake()

    async def _start_sinks(self) -> None:
        if self.config.tsdb is None:
            return
        from gateway.sinks.tsdb import TsdbSink

        t = self.config.tsdb
        sink = TsdbSink(
            journal_path=self.config.journal.path,
            url=t.url,
            token=t.token,
            org=t.org,
            bucket=t.bucket,
            site=self.config.site.id,
            device_tags={d.id: {"role": d.role} for d in self.config.devices},
            batch_size=t.batch_size,
            timeout_s=t.timeout_s,
            max_backoff_s=t.max_backoff_s,
        )
        await self._stack.enter_async_context(sink)
        self._wakers.append(sink.notify)
        self.sinks.append(sink)

    async def _start_sources(self) -> None:
        cfg = self.config
        ha = cfg.homeassistant if cfg.homeassistant is not None and cfg.homeassistant.enabled else None
        if cfg.mqtt is not None and (ha is not None or any(not d.is_serial for d in cfg.devices)):
            hooks: dict[str, Any] = {}
            if ha is not None:
                from gateway import __version__
                from gateway.sinks.homeassistant import HA_STATUS_TOPIC, HomeAssistantPublisher

                self.homeassistant = HomeAssistantPublisher(cfg, self._publish, sw_version=__version__)
                h = self.homeassistant
                hooks = {"will": h.will, "on_connected": h.on_connected, "handlers": {HA_STATUS_TOPIC: h.handle}}
            self.mqtt = MqttSource(cfg.mqtt, cfg.devices, self.writer, client_id=self.client_id, **hooks)
            await self._stack.enter_async_context(self.mqtt)
            self.sources.append(self.mqtt.health)
            if ha is not None:
                self._spawn(self._homeassistant_states(ha.interval_s), "homeassistant")
        for dev in cfg.devices:
            if dev.is_serial:
                self._start_serial(dev)

    def _publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
        if self.mqtt is not None:
            self.mqtt.publish(topic, payload, qos=qos, retain=retain)

    async def _homeassistant_states(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            if self.homeassistant is not None and self.mqtt is not None and self.mqtt.health.connected:
                self.homeassistant.publish_states(self.live, self.floor)

    def _start_serial(self, dev: Any) -> None:
        from gateway.decoders import SerialDecoder, decoder_class
        from gateway.sources.serial import SerialSource

        health = SourceHealth(name=dev.id, kind="serial")
        decoder = decoder_class(dev.protocol)(**dev.options)
        assert isinstance(decoder, SerialDecoder)
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
        self._spawn(source.run(), f"serial-{dev.id}")

    async def _start_ledger(self) -> None:
        from gateway.ledger_service import LedgerService

        self.ledger = LedgerService(self.config, publish=self._publish)
        await self._stack.enter_async_context(self.ledger)
        self._wakers.append(self.ledger.notify)
        if self.config.tsdb is not None:
            from gateway.sinks.ledger_tsdb import LedgerTsdbWriter

            await self._start_tsdb_writer(LedgerTsdbWriter)

    async def _start_audit(self) -> None:
        from gateway.audit.service import AuditService

        self.audit = AuditService(self.config, self._publish, every_s=self.config.audit.checkpoint_every_s)
        await self._stack.enter_async_context(self.audit)

    async def _start_floor(self) -> None:
        from gateway.actuators.relays import RelayActuator
        from gateway.floor_service import FloorService

        actuator = None
        publish = None
        if self.mqtt is not None:
            publish = self.mqtt.publish
            actuator = RelayActuator(self.config.devices, publish, client_id=self.client_id)
        credit_ok = self.ledger.credit_ok if self.ledger is not None else None
        self.floor = FloorService(self.config, actuator=actuator, publish=publish, credit_ok=credit_ok)
        await self._stack.enter_async_context(self.floor)
        self._wakers.append(self.floor.notify)
        if self.config.tsdb is not None:
            from gateway.sinks.machinestate import MachineStateSink

            t = self.config.tsdb
            states = MachineStateSink(
                floor=self.floor,
                machines=[m.id for m in self.config.machines],
                journal_path=self.config.journal.path,
                url=t.url,
                site=self.config.site.id,
                token=t.token,
                org=t.org,
                bucket=t.bucket,
                timeout_s=t.timeout_s,
            )
            await self._stack.enter_async_context(states)
            self.sinks.append(states)
        # The floor wakes on every commit; the ingest path stays unaware of it.

    async def _start_energy(self) -> None:
        from gateway.energy_service import EnergyService, EnergyTsdbWriter

        self.energy = EnergyService(self.config)
        await self._stack.enter_async_context(self.energy)
        self._wakers.append(self.energy.notify)
        if self.config.tsdb is not None:
            await self._start_tsdb_writer(EnergyTsdbWriter)

    async def _start_tsdb_writer(self, make: Callable[..., Any]) -> None:
        """A writer to the TSDB with a journal cursor of its own (energy, ledger), on `[tsdb]`."""
        t = self.config.tsdb
        assert t is not None
        writer = make(
            journal_path=self.config.journal.path,
            site=self.config.site.id,
            url=t.url,
            token=t.token,
            org=t.org,
            bucket=t.bucket,
            timeout_s=t.timeout_s,
            max_backoff_s=t.max_backoff_s,
        )
        await self._stack.enter_async_context(writer)
        self._wakers.append(writer.notify)
        self.sinks.append(writer)

    def _bind_api(self) -> socket.socket:
        api = self.config.api
        family = socket.AF_INET6 if ":" in api.host else socket.AF_INET
        try:
            return socket.create_server((api.host, api.port), family=family)
        except OSError as exc:
            raise StartError(
                f"the API cannot listen on {api.host}:{api.port}: {exc.strerror or exc} "
                "(is another commonwatt running? [api] port in commonwatt.toml sets it)"
            ) from None

    async def _start_api(self, sock: socket.socket) -> None:
        import uvicorn

        from gateway.api.app import create_app

        class _ApiServer(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield  # the gateway handles SIGTERM itself: flush first, then stop the API

        api = self.config.api
        app = create_app(self)
        self._stack.callback(lambda: getattr(app.state, "people", None) and app.state.people.close())
        self._stack.callback(lambda: getattr(app.state, "ledger", None) and app.state.ledger.close())
        server = _ApiServer(uvicorn.Config(app, host=api.host, port=api.port, log_level="warning", lifespan="off"))
        self._spawn(server.serve(sockets=[sock]), "api")
        while not server.started:
            await asyncio.sleep(0.01)
        self.api_port = server.servers[0].sockets[0].getsockname()[1]

        async def _stop_api() -> None:
            server.should_exit = True

        self._stack.push_async_callback(_stop_api)

    async def __aexit__(self, *exc: object) -> None:
        self.stopping.set()
        if self.homeassistant is not None:
            self._publish(self.homeassistant.availability_topic, "offline", qos=1, retain=True)
        await asyncio.sleep(0.05)
        # Order: stop the sources (no new records), flush the journal, stop the consumers.
        if self.mqtt is not None:
            await self.mqtt.__aexit__(None, None, None)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.writer.flush, 10.0)
        await self._stack.aclose()

    # -- what the API shows ----------------------------------------------------------------------

    def device_health(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        out = {}
        for dev in self.config.devices:
            live = self.live.devices.get(dev.id)
            last = live.last_seen if live else None
            out[dev.id] = {
                "protocol": dev.protocol,
                "role": dev.role,
                "last_seen": last,
                "online": live.online if live else None,
                "silent": last is None or now - last > dev.silent_after_s,
            }
        return out

    def health(self) -> dict[str, Any]:
        sources = [s.as_json() for s in self.sources]
        sinks = [s.health.as_json() for s in self.sinks]
        writer_error = self.writer.last_error
        ok = all(s["connected"] for s in sources) and all(s.get("connected", True) for s in sinks)
        return {
            "status": "ok" if ok and writer_error is None else "degraded",
            "site": self.config.site.id,
            "uptime_s": round(time.time() - self.started, 1),
            "journal": {
                "committed_seq": self.writer.committed_seq,
                "pending": self.writer.pending,
                "error": None if writer_error is None else str(writer_error),
            },
            "sources": sources,
            "sinks": sinks,
            "ledger": None if self.ledger is None else self.ledger.health(),
            "energy": None
            if self.energy is None
            else {"position": self.energy.position, "error": self.energy.last_error},
            "floor": None
            if self.floor is None
            else {"position": self.floor.position, "decisions": self.floor.decisions, "error": self.floor.last_error},
            "devices": self.device_health(),
        }


@contextlib.asynccontextmanager
async def stop_on_signals() -> AsyncIterator[asyncio.Event]:
    """An event set by SIGTERM or SIGINT, so `run` flushes and exits cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def run_gateway(config: Config) -> None:
    async with stop_on_signals() as stop, Gateway(config):
        await stop.wait()
        log.info("stopping: flushing the journal")
