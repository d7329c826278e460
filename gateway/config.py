"""commonwatt.toml: pydantic models, validated once at start-up.

Every check happens here, so nothing on the hot path has to doubt its input.
A bad file is reported with every problem at once, each by its key path
(`devices[2].protocol: ...`), and the command exits with status 2.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.decoders import PROTOCOLS, decoder_class, is_serial
from gateway.domain.energy import EnergySettings, Intensity
from gateway.ledger.pricing import PricingPolicy

#: Protocols whose devices the gateway can switch: the command builders of
#: gateway/actuators/relays.py (`BUILDERS`), which takes this set from here.
RELAY_PROTOCOLS = frozenset({"shelly_gen2", "shelly_gen1", "tasmota", "esphome"})
#: Protocols whose decoder emits BadgeEvents, so a device of theirs can be a machine's reader:
#: RDM6300 modules and keyboard wedges on a serial line, the firmware-bridge/ node's `badge`
#: topic (esphome), and badges read by a `commonwatt bridge` elsewhere. tests/test_config.py
#: keeps it equal to the decoders that build a BadgeEvent and give one in their corpus.
BADGE_PROTOCOLS = frozenset({"rdm6300", "esphome", "commonwatt_bridge"})
#: Protocols whose decoder gives `power_w` or `energy_wh`, what a machine's meter must report.
#: generic_json only when its mapping has a rule for them (checked per device). Kept in line
#: with the decoders' corpora (tests/fixtures/<protocol>/) by tests/test_config.py.
POWER_PROTOCOLS = frozenset(
    {
        "shelly_gen2",
        "shelly_gen1",
        "tasmota",
        "esphome",
        "opendtu",
        "victron_venus",
        "dsmr",
        "vedirect",
        "generic_json",
        "commonwatt_bridge",
    }
)
#: The metrics the floor reads from a machine's meter (gateway/floor_service.py).
METER_METRICS = frozenset({"power_w", "energy_wh"})
#: Roles of the site's own meters: never a machine's relay.
_SITE_ROLES = frozenset({"pv", "battery", "grid", "site_load"})

Role = Literal["pv", "battery", "grid", "site_load", "machine", "other"]
_ID = r"^[a-z0-9][a-z0-9_-]{0,62}$"
Ident = Annotated[str, Field(pattern=_ID)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Site(_Strict):
    id: Ident = Field(description="short id of the site, used in topics and as the TSDB `site` tag")
    name: str = ""
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like Europe/Brussels)") from None
        return value


class JournalSettings(_Strict):
    path: Path = Path("var/commonwatt.sqlite")
    max_batch: int = Field(5000, ge=1, le=100_000)
    max_delay_ms: int = Field(50, ge=1, le=5000)


class MqttSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    qos: Literal[0, 1] = 1
    version: Literal["5", "3.1.1"] = "3.1.1"
    session_expiry_s: int = Field(86_400, ge=0)

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str | None) -> str | None:
        # Shelly Gen2 devices answer RPC on `<client_id>/rpc`, so the id must work as topic levels.
        if value is not None and (
            not value or any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/")
        ):
            raise ValueError(
                f"{value!r}: the gateway's relays are answered on <client_id>/rpc, so no +, # or NUL, "
                "not empty and no leading or trailing /"
            )
        return value

    tls: bool = False
    ca_file: Path | None = None


class ApiSettings(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class TsdbSettings(_Strict):
    url: str
    org: str = ""
    bucket: str = "commonwatt"
    token: str = ""
    batch_size: int = Field(20_000, ge=1, le=1_000_000)
    timeout_s: float = Field(10.0, gt=0, le=300)
    max_backoff_s: float = Field(30.0, gt=0, le=3600)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value.rstrip("/")


class HomeAssistantSettings(_Strict):
    """Publish the gateway's own entities (machines, battery, PV, grid) by MQTT discovery."""

    enabled: bool = True
    #: How often the entities' states are published.
    interval_s: float = Field(10.0, gt=0, le=3600)


class Device(_Strict):
    id: Ident
    protocol: str
    role: Role
    name: str = ""
    #: MQTT protocols: the device key the protocol carries (topic prefix, serial number).
    prefix: str | None = None
    #: Serial protocols: the port, preferably a stable /dev/serial/by-id/... path.
    port: str | None = None
    #: Seconds without a reading after which the device is reported silent.
    silent_after_s: float = Field(300.0, gt=0)
    #: Protocol-specific options, passed to the decoder (see each decoder's README).
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        if value not in PROTOCOLS:
            raise ValueError(f"unknown protocol {value!r}; known: {', '.join(sorted(PROTOCOLS))}")
        return value

    @model_validator(mode="after")
    def _transport(self) -> Device:
        problems: list[str] = []
        serial = is_serial(self.protocol)
        if serial and not self.port:
            problems.append(f"protocol {self.protocol} reads a serial port: set `port`")
        if serial and self.prefix:
            problems.append(f"protocol {self.protocol} reads a serial port: `prefix` has no meaning")
        if not serial and not self.prefix:
            problems.append(f"protocol {self.protocol} is MQTT: set `prefix` (its topic prefix or key)")
        if not serial and self.port:
            problems.append(f"protocol {self.protocol} is MQTT: `port` has no meaning")
        try:
            decoder_class(self.protocol)(**self.options)
        except (TypeError, ValueError) as exc:
            problems.append(f"options: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def is_serial(self) -> bool:
        return is_serial(self.protocol)


class Machine(_Strict):
    """A machine members badge into. Its meter, relay and reader are devices declared above."""

    id: Ident
    name: str = ""
    #: Device of role `machine` whose power_w / energy_wh readings are this machine's consumption.
    meter: str
    #: Device that switches the machine (shelly_gen2, shelly_gen1, tasmota or esphome); none: no relay.
    relay: str | None = None
    #: Badge reader(s) at the machine: an rdm6300 serial device, an esphome node of
    #: firmware-bridge/, or a reader behind a commonwatt bridge (commonwatt_bridge).
    readers: list[str] = Field(default_factory=list)
    #: Trainings a member must hold (and not expired) to use the machine.
    trainings: list[Ident] = Field(default_factory=list)
    #: Under this power the machine counts as idle.
    idle_threshold_w: float = Field(10.0, ge=0)
    #: A session ends after the machine has been idle this long ...
    idle_timeout_s: float = Field(900.0, gt=0)
    #: ... but never while it still draws: after the timeout, wait for this long under the threshold.
    spin_down_s: float = Field(60.0, ge=0)
    #: A session ends after this long whatever happens (0: no limit).
    max_duration_s: float = Field(8 * 3600.0, ge=0)
    #: Power above the idle threshold with no session for this long raises an "unauthorized use" alert.
    unauthorized_after_s: float = Field(30.0, ge=0)


class AccessSettings(_Strict):
    #: After a trainer's badge, a trainee's badge within this many seconds grants the machine's trainings.
    trainer_window_s: float = Field(30.0, gt=0)
    #: Opening hours in the site's time zone, per weekday (mon..sun): "09:00-22:00"; absent days are closed.
    #: No table at all: always open.
    opening_hours: dict[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], str] | None = None
    #: A relay command counts as done when the device reports the new state within this many seconds ...
    relay_confirm_s: float = Field(3.0, gt=0)
    #: ... else it is sent again this many times, then an alert is raised.
    relay_retries: int = Field(2, ge=0, le=10)

    @field_validator("opening_hours")
    @classmethod
    def _hours(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for day, span in (value or {}).items():
            if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d", span):
                raise ValueError(f"{day}: {span!r} is not HH:MM-HH:MM")
        return value


class EnergyConfig(_Strict):
    """`[energy]` of commonwatt.toml: how the site's energy is cut into intervals and shared."""

    #: Interval length: 60 s, or 900 / 1800 s as energy communities settle.
    interval_s: Literal[60, 300, 900, 1800, 3600] = 60
    #: A counter silent longer than this: its next delta is not placed, the intervals are `missing`.
    max_gap_s: float = Field(900.0, gt=0, le=86_400)
    convention: Literal["proportional", "priority"] = "proportional"
    #: Grid carbon intensity, g CO₂ per kWh: a constant ...
    co2_g_per_kwh: float = Field(0.0, ge=0, le=5000)
    #: ... or a step series [[from unix seconds, g/kWh], ...] (the constant applies before its first step).
    co2_series: list[tuple[float, float]] = Field(default_factory=list)
    #: The live service makes an interval final this long after its end (default: two intervals) ...
    final_after_s: float | None = Field(None, ge=0, le=86_400)
    #: ... once every meter has reported past its end, or at the latest this much later: a meter
    #: that reports every few minutes (Tasmota's TelePeriod is 300 s) still counts in full.
    meter_wait_s: float = Field(300.0, ge=0, le=86_400)

    @model_validator(mode="after")
    def _sorted(self) -> EnergyConfig:
        if [t for t, _ in self.co2_series] != sorted(t for t, _ in self.co2_series):
            raise ValueError("co2_series: steps must be in time order")
        return self

    def settings(self) -> EnergySettings:
        return EnergySettings(interval_s=self.interval_s, max_gap_s=self.max_gap_s, convention=self.convention)

    def intensity(self) -> Intensity:
        return Intensity(constant=self.co2_g_per_kwh, series=tuple(self.co2_series))

    @property
    def grace_s(self) -> float:
        return self.final_after_s if self.final_after_s is not None else 2.0 * self.interval_s


class AuditSettings(_Strict):
    """`[audit]` of commonwatt.toml: the ledger's signed checkpoints."""

    #: A checkpoint is signed this often when the log grew (and at start): members can download
    #: the proof of a transaction once a checkpoint covers it.
    checkpoint_every_s: float = Field(900.0, ge=1, le=86_400)


class Config(_Strict):
    site: Site
    journal: JournalSettings = Field(default_factory=JournalSettings)
    mqtt: MqttSettings | None = None
    api: ApiSettings = Field(default_factory=ApiSettings)
    tsdb: TsdbSettings | None = None
    devices: list[Device] = Field(default_factory=list)
    machines: list[Machine] = Field(default_factory=list)
    access: AccessSettings = Field(default_factory=AccessSettings)
    energy: EnergyConfig = Field(default_factory=EnergyConfig)
    homeassistant: HomeAssistantSettings | None = None
    pricing: PricingPolicy = Field(default_factory=PricingPolicy)
    audit: AuditSettings = Field(default_factory=AuditSettings)

    @model_validator(mode="after")
    def _unique(self) -> Config:
        problems: list[str] = self._machine_problems()
        seen: dict[str, int] = {}
        keys: dict[tuple[str, str], int] = {}
        for i, dev in enumerate(self.devices):
            if dev.id in seen:
                problems.append(f"devices[{i}].id: {dev.id!r} is already used by devices[{seen[dev.id]}]")
            seen.setdefault(dev.id, i)
            where = (dev.protocol, dev.prefix or dev.port or "")
            if where in keys:
                problems.append(f"devices[{i}]: same protocol and prefix/port as devices[{keys[where]}]")
            keys.setdefault(where, i)
        if self.mqtt is None and any(not d.is_serial for d in self.devices):
            problems.append("mqtt: MQTT devices are configured but there is no [mqtt] section")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _machine_problems(self) -> list[str]:
        problems: list[str] = []
        devices = {d.id: d for d in self.devices}
        seen: set[str] = set()
        for i, m in enumerate(self.machines):
            if m.id in seen:
                problems.append(f"machines[{i}].id: {m.id!r} is used twice")
            seen.add(m.id)
            meter = devices.get(m.meter)
            if meter is None:
                problems.append(f"machines[{i}].meter: no device {m.meter!r}")
            else:
                problems += [f"machines[{i}].meter: {p}" for p in _meter_problems(meter)]
            if m.relay is not None:
                relay = devices.get(m.relay)
                if relay is None:
                    problems.append(f"machines[{i}].relay: no device {m.relay!r}")
                else:
                    problems += [f"machines[{i}].relay: {p}" for p in _relay_problems(relay, self.site.id)]
            for k, reader_id in enumerate(m.readers):
                reader = devices.get(reader_id)
                if reader is None:
                    problems.append(f"machines[{i}].readers[{k}]: no device {reader_id!r}")
                elif reader.protocol not in BADGE_PROTOCOLS:
                    problems.append(
                        f"machines[{i}].readers[{k}]: {reader.id!r} is a {reader.protocol} device, which gives "
                        "no badges; a reader is a device of protocol " + ", ".join(sorted(BADGE_PROTOCOLS))
                    )
        for machine in self.pricing.machines:
            if machine not in seen:
                problems.append(f"pricing.machines.{machine}: no machine {machine!r}")
        return problems

    def device(self, device_id: str) -> Device:
        for dev in self.devices:
            if dev.id == device_id:
                return dev
        raise KeyError(device_id)


def _meter_problems(device: Device) -> list[str]:
    """Why a device cannot be a machine's meter; empty when it can."""
    if device.role != "machine":
        return [f"{device.id!r} has role {device.role}; a machine's meter is a device of role machine"]
    if device.protocol not in POWER_PROTOCOLS:
        return [
            f"{device.id!r} is a {device.protocol} device, which gives no power or energy; "
            "a meter is a device of protocol " + ", ".join(sorted(POWER_PROTOCOLS))
        ]
    if device.protocol == "generic_json" and not _mapping_gives_power(device):
        return [
            f"{device.id!r}: no rule of its mapping gives "
            + " or ".join(sorted(METER_METRICS))
            + f" under its device key {device.prefix!r}"
        ]
    return []


def _mapping_gives_power(device: Device) -> bool:
    """Whether a generic_json device's mapping has a power or energy rule whose device key can be its prefix."""
    from gateway.decoders.generic_json.mapping import compile_mapping

    for rule in compile_mapping(device.options.get("mapping", [])):
        # A `{n}` in the rule's device key stands for whatever its topic's n-th `+` level matched.
        key = "".join(re.escape(part) if isinstance(part, str) else "[^/]*" for part in rule.device)
        if rule.metric in METER_METRICS and re.fullmatch(key, device.prefix or "", re.DOTALL):
            return True
    return False


def _relay_problems(device: Device, site_id: str) -> list[str]:
    """Why a device cannot be a machine's relay; empty when the relay actuator can switch it."""
    if device.protocol not in RELAY_PROTOCOLS:
        return [f"{device.protocol} cannot switch a relay; use one of " + ", ".join(sorted(RELAY_PROTOCOLS))]
    if device.role in _SITE_ROLES:
        return [f"{device.id!r} is the site's {device.role} meter; a relay is a device of role machine or other"]
    # The actuator imports this module: it is imported here, once the models exist.
    from gateway.actuators.relays import relay_messages, relay_target

    try:
        target = relay_target(device)
        # The actuator's own start-up check. The client id only names the gateway in Shelly
        # RPC replies, not the device: the gateway's default form is given.
        relay_messages(
            target.protocol,
            target.prefix,
            True,
            channel=target.channel,
            request_id=1,
            client_id=f"commonwatt-{site_id}",
            options=target.options,
        )
    except ValueError as exc:
        return [f"{device.id!r} cannot be switched: {exc}"]
    return []


class ConfigError(Exception):
    """The configuration cannot be used. `problems` lists each one, prefixed by its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: {len(problems)} problem(s)")
        self.source = source
        self.problems = problems


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in {"function-after[_transport(), Device]"}:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        path = _key_path(tuple(p for p in err["loc"] if not str(p).startswith("function-")))
        if err["type"] == "extra_forbidden":
            msg = "unknown key (misspelt?)"
        for line in msg.splitlines():
            if re.match(r"^[a-z_]+(\[\d+\])?[.:]", line) and path == "(top level)":
                problems.append(line)
            else:
                problems.append(f"{path}: {line}")
    return problems


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a commonwatt.toml; ConfigError listing every problem otherwise."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    config = parse_config(data, str(path))
    if not config.journal.path.is_absolute():
        journal = config.journal.model_copy(update={"path": path.parent / config.journal.path})
        config = config.model_copy(update={"journal": journal})
    return config
