"""Relay commands: the message that switches a machine on or off, per protocol.

The builders are pure (no clock, no socket): a protocol, the device's topic prefix
and the wanted state in, MQTT messages out. `RelayActuator` adds what a running
gateway needs: configured device ids, a request id that only grows, and publishing.

Two rules hold for every protocol:

- **Never retained.** A retained `ON` is delivered again to a device that
  reconnects, hours later, and switches a machine on with nobody at it (Tasmota
  calls it "ghost switching"; firmware-bridge/CONTRACT.md forbids it).
- **The device's report is the truth.** A command is done only when the device
  reports the new relay state (`relay_on` from its decoder); the Shelly RPC reply
  is logged, not trusted. Confirming and retrying is the domain's job.

Channels: a device key may name one relay of a multi-relay device, in the
decoders' own key scheme: `<prefix>/switch:1` (Shelly Gen2+), `<device>/relay/1`
(Shelly Gen1). `split_channel` turns it back into prefix and channel.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from gateway.config import RELAY_PROTOCOLS, Device
from gateway.decoders.esphome import relay_command as esphome_relay_command
from gateway.decoders.tasmota.decoder import compile_full_topic

#: QoS of every command: the broker acknowledges that it has it. A device that
#: subscribes at QoS 0 (ESPHome) still receives it at 0; its state report confirms.
COMMAND_QOS = 1
#: Commands whose Shelly RPC reply may still come, kept to name the device in a log line.
_REMEMBERED_REQUESTS = 256
_TOPIC_LEVELS = re.compile(r"[^+#\0]+")


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One MQTT message to publish. `retain` is always False for relay commands."""

    topic: str
    payload: bytes
    qos: int = COMMAND_QOS
    retain: bool = False


class _Request(NamedTuple):
    prefix: str
    on: bool
    channel: int
    request_id: int
    client_id: str
    options: Mapping[str, Any]


def _plain_topic(what: str, value: str) -> str:
    """`value` as topic levels: not empty, no wildcards, no empty level at either end."""
    if not _TOPIC_LEVELS.fullmatch(value) or value.startswith("/") or value.endswith("/"):
        raise ValueError(f"{what} {value!r} is not usable in a topic (empty, a wildcard, or a leading/trailing /)")
    return value


# -- one builder per protocol ------------------------------------------------------------------


def _shelly_gen2(req: _Request) -> OutgoingMessage:
    """JSON-RPC `Switch.Set` on `<prefix>/rpc`; the device replies on `<client_id>/rpc`."""
    frame = {
        "id": req.request_id,
        "src": _plain_topic("client id", req.client_id),
        "method": "Switch.Set",
        "params": {"id": req.channel, "on": req.on},
    }
    payload = json.dumps(frame, separators=(",", ":")).encode()
    return OutgoingMessage(f"{_plain_topic('prefix', req.prefix)}/rpc", payload)


def _shelly_gen1(req: _Request) -> OutgoingMessage:
    """`on`/`off` on `<base>/<device>/relay/<channel>/command` (base as the decoder's option)."""
    base = _plain_topic("base", str(req.options.get("base", "shellies")).strip("/"))
    device = _plain_topic("device id", req.prefix)
    if "/" in device:
        raise ValueError(f"shelly_gen1 device id {device!r} is one topic level")
    return OutgoingMessage(f"{base}/{device}/relay/{req.channel}/command", b"on" if req.on else b"off")


def _tasmota(req: _Request) -> OutgoingMessage:
    """`ON`/`OFF` on the `cmnd` topic of the device's FullTopic: `POWER`, or `POWER<n+1>` for channel n > 0."""
    full_topic = str(req.options.get("full_topic", "%prefix%/%topic%/"))
    compile_full_topic(full_topic)  # the decoder's checks: ValueError naming the problem
    if "%hostname%" in full_topic or "%id%" in full_topic:
        raise ValueError(f"tasmota full_topic {full_topic!r}: %hostname% and %id% are unknown here; cannot address")
    topic = _plain_topic("tasmota topic", req.prefix)
    if "/" in topic:
        raise ValueError(f"tasmota topic {topic!r} is one topic level")
    base = full_topic if full_topic.endswith("/") else full_topic + "/"
    command = "POWER" if req.channel == 0 else f"POWER{req.channel + 1}"
    head = base.replace("%prefix%", "cmnd").replace("%topic%", topic)
    return OutgoingMessage(head + command, b"ON" if req.on else b"OFF")


def _esphome(req: _Request) -> OutgoingMessage:
    """`ON`/`OFF` on `<prefix>/switch/relay/command`, as firmware-bridge/CONTRACT.md defines."""
    if req.channel != 0:
        raise ValueError("an esphome node of firmware-bridge/ has one relay, channel 0")
    topic, payload, _retain = esphome_relay_command(req.prefix, req.on)
    return OutgoingMessage(topic, payload)


#: protocol -> builder of its one relay command.
BUILDERS: dict[str, Callable[[_Request], OutgoingMessage]] = {
    "shelly_gen2": _shelly_gen2,
    "shelly_gen1": _shelly_gen1,
    "tasmota": _tasmota,
    "esphome": _esphome,
}

#: protocol -> (channel suffix of a device key, suffixes that name something other than a relay).
CHANNEL_SUFFIXES: dict[str, tuple[re.Pattern[str], re.Pattern[str]]] = {
    "shelly_gen2": (re.compile(r"(?P<prefix>.+)/switch:(?P<channel>\d{1,3})"), re.compile(r".+/(?:em|em1):\d{1,3}")),
    "shelly_gen1": (re.compile(r"(?P<prefix>.+)/relay/(?P<channel>\d{1,2})"), re.compile(r".+/emeter/\d{1,2}")),
}


def _unsupported(protocol: str) -> ValueError:
    return ValueError(f"protocol {protocol!r} cannot switch a relay; supported: {', '.join(sorted(BUILDERS))}")


def relay_messages(
    protocol: str,
    prefix: str,
    on: bool,
    *,
    channel: int = 0,
    request_id: int,
    client_id: str,
    options: Mapping[str, Any] | None = None,
) -> list[OutgoingMessage]:
    """The messages that switch relay `channel` of the device at `prefix` on or off.

    `options` are the device's decoder options (`base` of shelly_gen1, `full_topic`
    of tasmota). `request_id` and `client_id` are used by Shelly Gen2+ RPC only.
    ValueError for an unknown protocol or a prefix, option or channel that cannot be addressed.
    """
    builder = BUILDERS.get(protocol)
    if builder is None:
        raise _unsupported(protocol)
    if channel < 0:
        raise ValueError(f"channel {channel} is negative")
    return [builder(_Request(prefix, on, channel, request_id, client_id, options or {}))]


def split_channel(protocol: str, key: str) -> tuple[str, int]:
    """A configured device key -> (prefix, relay channel). `shellyplus2pm-x/switch:1` -> (`shellyplus2pm-x`, 1)."""
    if protocol not in BUILDERS:
        raise _unsupported(protocol)
    suffixes = CHANNEL_SUFFIXES.get(protocol)
    if suffixes is None:
        return key, 0
    relay, other = suffixes
    if other.fullmatch(key):
        raise ValueError(f"{protocol} key {key!r} names a meter channel, not a relay")
    match = relay.fullmatch(key)
    return (match["prefix"], int(match["channel"])) if match else (key, 0)


# -- Shelly Gen2+ RPC replies ------------------------------------------------------------------


class RpcReplyError(ValueError):
    """A message on the reply topic that is not a JSON-RPC response frame."""


@dataclass(frozen=True, slots=True)
class RpcReply:
    """A Shelly's answer to one request: `was_on` when it switched, `error` when it refused."""

    request_id: int
    device: str
    was_on: bool | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def rpc_reply_topic(client_id: str) -> str:
    """The topic filter the gateway subscribes to for Shelly RPC replies: `<client_id>/rpc`."""
    return f"{_plain_topic('client id', client_id)}/rpc"


def parse_rpc_reply(payload: bytes | bytearray) -> RpcReply:
    """`{"id":7,"src":"shelly..","result":{"was_on":false}}` or `{"id":7,..,"error":{"code":..,"message":..}}`."""
    try:
        frame = json.loads(payload)
    except (ValueError, RecursionError):
        raise RpcReplyError("not JSON") from None
    request_id = frame.get("id") if isinstance(frame, dict) else None
    if isinstance(request_id, bool) or not isinstance(request_id, int):
        raise RpcReplyError("not a JSON-RPC response (no integer id)")
    device = str(frame.get("src", ""))
    error = frame.get("error")
    if error is not None:
        if not isinstance(error, dict):
            return RpcReply(request_id, device, error=str(error)[:200])
        return RpcReply(request_id, device, error=f"{error.get('code')}: {error.get('message', '')}"[:200])
    result = frame.get("result")
    if not isinstance(result, dict):
        raise RpcReplyError("a response carries `result` or `error`")
    was_on = result.get("was_on")
    return RpcReply(request_id, device, was_on=was_on if isinstance(was_on, bool) else None)


# -- the gateway's actuator ----------------------------------------------------------------------


class Publish(Protocol):
    """How messages leave: `MqttSource.publish` fits (thread-safe, queues while disconnected)."""

    def __call__(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class RelayTarget:
    """Where one configured relay device is addressed."""

    device_id: str
    protocol: str
    prefix: str
    channel: int
    options: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SentCommand:
    device_id: str
    on: bool
    request_id: int


class UnknownRelay(KeyError):
    """A device id that is not a configured device of a relay protocol."""


def relay_target(device: Device) -> RelayTarget:
    """The address of a configured device's relay; ValueError when it cannot be switched."""
    if device.prefix is None:
        raise ValueError(f"device {device.id!r} has no prefix")
    prefix, channel = split_channel(device.protocol, device.prefix)
    return RelayTarget(device.id, device.protocol, prefix, channel, dict(device.options))


class RelayActuator:
    """Switches the configured relays: `command("laser-plug", True)` builds and publishes.

    Thread-safe: ids are taken and messages published under one lock, so the
    broker sees commands in the order their ids say, whichever thread sent them.
    """

    def __init__(self, devices: Iterable[Device], publish: Publish, *, client_id: str, first_id: int = 1) -> None:
        self.client_id = client_id
        rpc_reply_topic(client_id)  # refuse an unusable client id now, not at the first command
        self._publish = publish
        self._next_id = first_id
        self._lock = threading.Lock()
        self._sent: OrderedDict[int, SentCommand] = OrderedDict()
        self.targets: dict[str, RelayTarget] = {}
        #: Relay-protocol devices that cannot be switched, and why (e.g. a Shelly EM channel).
        self.problems: dict[str, str] = {}
        for device in devices:
            if device.protocol in RELAY_PROTOCOLS:
                self._add(device)

    def _add(self, device: Device) -> None:
        try:
            target = relay_target(device)
            self._build(target, True, 0)  # every problem shows at start-up, not at the first badge
        except ValueError as exc:
            self.problems[device.id] = str(exc)
            return
        self.targets[device.id] = target

    def _build(self, target: RelayTarget, on: bool, request_id: int) -> list[OutgoingMessage]:
        return relay_messages(
            target.protocol,
            target.prefix,
            on,
            channel=target.channel,
            request_id=request_id,
            client_id=self.client_id,
            options=target.options,
        )

    def reply_topics(self) -> list[str]:
        """Topic filters to subscribe to for replies (Shelly Gen2+ RPC), if any relay needs them."""
        needed = any(t.protocol == "shelly_gen2" for t in self.targets.values())
        return [rpc_reply_topic(self.client_id)] if needed else []

    def command(self, device_id: str, on: bool) -> list[OutgoingMessage]:
        """Switch a device's relay: the messages, as published. UnknownRelay / ValueError for a bad id."""
        target = self.targets.get(device_id)
        if target is None:
            if device_id in self.problems:
                raise ValueError(f"relay {device_id!r}: {self.problems[device_id]}")
            raise UnknownRelay(device_id)
        with self._lock:
            request_id = self._next_id
            self._next_id += 1
            messages = self._build(target, on, request_id)
            for msg in messages:
                self._publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
            self._remember(SentCommand(device_id, on, request_id))
        return messages

    def _remember(self, sent: SentCommand) -> None:
        self._sent[sent.request_id] = sent
        if len(self._sent) > _REMEMBERED_REQUESTS:
            self._sent.popitem(last=False)

    def sent(self, request_id: int) -> SentCommand | None:
        """The command a Shelly RPC reply answers (one of the last few hundred), to name it in a log."""
        with self._lock:
            return self._sent.get(request_id)


__all__ = [
    "BUILDERS",
    "COMMAND_QOS",
    "OutgoingMessage",
    "Publish",
    "RelayActuator",
    "RelayTarget",
    "RpcReply",
    "RpcReplyError",
    "SentCommand",
    "UnknownRelay",
    "parse_rpc_reply",
    "relay_messages",
    "relay_target",
    "rpc_reply_topic",
    "split_channel",
]
