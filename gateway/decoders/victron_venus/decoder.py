"""Victron Venus OS (GX devices) over MQTT: `N/<portal>/<service>/<instance>/<path>` `{"value": v}`.

The device key is `<portal>/<service>/<instance>` (`c0619ab1b2c3/battery/512`),
so a site configures its battery monitor, solar charger and grid meter as
separate devices. Which paths are read is the table in `fields.py`.

Presence: Venus publishes an empty payload on every topic of a device that
disappeared. The first empty payload of a device gives `online` 0, its next
value `online` 1 (also the first value ever seen of a device): one record per
change, not one per topic.

Keep-alive: Venus publishes nothing unless someone sends `R/<portal>/keepalive`
at least every 60 s. `keepalive()` asks for a full republish (empty payload)
whenever nothing was heard from the device since the previous keep-alive (the
first call, a broker or network outage) and suppresses the republish otherwise.
"""

from __future__ import annotations

import json
import math
from typing import ClassVar

from gateway.decoders.base import DecodeError, MqttDecoder
from gateway.decoders.victron_venus.fields import SERVICES, Field
from gateway.model import Reading, Record

SUPPRESS_REPUBLISH = b'{ "keepalive-options" : ["suppress-republish"] }'
#: Every this many keep-alives of a device (about 4 minutes at the source's 30 s), one asks for a
#: full republish anyway. Venus publishes a value only when it changes: a battery's energy
#: counter stays silent for hours while the battery rests, and the energy balance would count
#: that silence as missing data (a gap is longer than `energy.max_gap_s`, 15 minutes by default).
#: Republished, the unchanged counter proves that no energy flowed.
FULL_EVERY = 8


def keepalive_topic(portal: str) -> str:
    return f"R/{portal}/keepalive"


def full_keepalive(portal: str) -> tuple[str, bytes]:
    """The keep-alive that makes Venus republish every value (empty payload)."""
    return keepalive_topic(portal), b""


def quiet_keepalive(portal: str) -> tuple[str, bytes]:
    """The keep-alive that only keeps the session going."""
    return keepalive_topic(portal), SUPPRESS_REPUBLISH


def _value(payload: bytes, path: str) -> float | None:
    """The number in `{"value": v}`; None for `{"value": null}` (Venus's "invalid")."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        raise DecodeError("bad_json", path) from None
    if not isinstance(obj, dict) or "value" not in obj:
        raise DecodeError("unexpected_shape", f'{path}: expected {{"value": ...}}')
    raw = obj["value"]
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise DecodeError("bad_value", f"{path}={raw!r}"[:80])
    try:
        value = float(raw)
    except OverflowError:
        raise DecodeError("bad_value", f"{path} out of range") from None
    if not math.isfinite(value):
        raise DecodeError("bad_value", f"{path}={raw!r}")
    return value


class VictronVenusDecoder(MqttDecoder):
    """Battery, solar charger, PV inverter, grid meter and system values of a Venus OS GX."""

    name: ClassVar[str] = "victron_venus"
    default_topics: ClassVar[tuple[str, ...]] = ("N/#",)

    def __init__(self) -> None:
        #: device key -> last `online` value given (1.0 / 0.0).
        self._online: dict[str, float] = {}
        #: keep-alive key -> whether anything was heard from it since its last keep-alive.
        self._heard: dict[str, bool] = {}
        #: keep-alive key -> keep-alives since its last full republish.
        self._since_full: dict[str, int] = {}

    def topics(self, prefix: str | None = None) -> list[str]:
        return [f"N/{prefix}/#"] if prefix else list(self.default_topics)

    def keepalive(self, device_key: str) -> list[tuple[str, bytes]]:
        portal = device_key.split("/", 1)[0]
        since = self._since_full.get(device_key, FULL_EVERY)
        full = not self._heard.get(device_key, False) or since + 1 >= FULL_EVERY
        self._heard[device_key] = False
        self._since_full[device_key] = 0 if full else since + 1
        return [full_keepalive(portal) if full else quiet_keepalive(portal)]

    def decode(self, topic: str, payload: bytes, ts: float) -> list[Record]:
        levels = topic.split("/", 4)
        if levels[0] != "N" or len(levels) == 4 or len(levels) < 3 or not all(levels):
            raise DecodeError("unknown_topic", topic)
        if len(levels) == 3:
            return []  # N/<portal>/full_publish_completed, N/<portal>/keepalive
        _, portal, service, instance, path = levels
        key = f"{portal}/{service}/{instance}"
        if self._heard:
            self._hear(portal, key)
        table = SERVICES.get(service)
        if table is None:
            return []
        if not payload:
            return self._presence(key, 0.0, ts)
        field = table.get(path)
        value = None if field is None else _value(payload, path)
        records = self._presence(key, 1.0, ts)
        if field is not None and value is not None:
            records.append(Reading(ts, key, field.metric, _rounded(value, field)))
        return records

    def _hear(self, portal: str, key: str) -> None:
        for watched in (portal, key):
            if watched in self._heard:
                self._heard[watched] = True

    def _presence(self, key: str, online: float, ts: float) -> list[Record]:
        """`online` when it changes; nothing otherwise."""
        if self._online.get(key) == online:
            return []
        self._online[key] = online
        return [Reading(ts, key, "online", online)]


def _rounded(value: float, field: Field) -> float:
    return round(value * field.scale, field.digits) + 0.0  # + 0.0 turns -0.0 into 0.0
