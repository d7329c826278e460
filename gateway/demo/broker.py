"""An MQTT broker inside the demo process, so `commonwatt demo` needs nothing but Python.

It is amqtt (MQTT 3.1.1, pure Python) listening on a free loopback port: anonymous
clients, retained messages and last wills kept in memory only, nothing on disk.
About 2,400 messages per second reach a paho subscriber through it on these
machines: plenty for a simulated lab, not a broker for a real one (use Mosquitto,
see deploy/).

    async with EmbeddedBroker() as broker:
        client.connect(broker.host, broker.port)

It runs as tasks of the running event loop: the loop must keep running (await,
never block it) for clients, including paho clients in their own threads, to be
served.
"""

from __future__ import annotations

import logging
import socket
from types import TracebackType
from typing import Any

from amqtt.broker import Broker
from amqtt.errors import BrokerError

#: amqtt logs every connection and packet at INFO; the demo's console is for people.
_NOISY_LOGGERS = ("amqtt", "transitions")


class _ShutdownNoise(logging.Filter):
    """Drops "N messages not broadcasted": at shutdown every client is already gone, so
    the devices' last words still queued had nobody left to reach. Not worth a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().endswith("messages not broadcasted")


_SHUTDOWN_NOISE = _ShutdownNoise()


def quiet_amqtt() -> None:
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("amqtt.broker").addFilter(_SHUTDOWN_NOISE)  # addFilter skips a filter already there


#: A free port can be taken by someone else between our probe and amqtt's bind.
_BIND_ATTEMPTS = 5


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt settings: one TCP listener, anonymous clients, no $SYS topics, no packet logging."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


class EmbeddedBroker:
    """An in-process MQTT broker on `host:port`; `port=None` picks a free one at start."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self._wanted_port = port
        self.port = port or 0
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        quiet_amqtt()
        attempts = 1 if self._wanted_port else _BIND_ATTEMPTS
        for attempt in range(attempts):
            port = self._wanted_port or free_port(self.host)
            broker = Broker(broker_config(self.host, port))
            try:
                await broker.start()
            except BrokerError:
                if attempt + 1 == attempts:
                    raise
                continue
            self._broker, self.port = broker, port
            return

    async def stop(self) -> None:
        """Disconnects every client (no last wills are sent) and closes the listener."""
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
