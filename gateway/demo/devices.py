"""The simulated devices: what each real device would publish, given the site's true state.

Each device turns a `SiteSnapshot` into MQTT messages in its real format
(FORMATS.md §4 Shelly Gen2, §6.1 OpenDTU, §7 Victron Venus OS) and answers the
requests a real one answers (Shelly `Switch.Set` RPC, Venus keep-alives and read
requests). Devices never touch the network or a clock: `DemoSite` passes messages
in and out and gives them the time, so each can be read and tested on its own.

Where the demo departs from the real device, on purpose:
- counters carry more decimals than the real firmware prints (OpenDTU and Venus
  round kWh to 0.001 or coarser), so a demo of a few seconds already shows energy
  flowing and the balance closing to the milliwatt-hour;
- everything is published every tick, where OpenDTU defaults to every 5 s.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from typing import Any, NamedTuple

from gateway.demo.physics import MachineProfile, MachineSnapshot, SiteModel, SiteSnapshot

#: The demo's device identities (topic prefix, inverter serial, GX portal id).
GRID_METER_PREFIX = "shellypro3em-demo01"
DTU_SERIAL = "114182912345"
DTU_BASE = "solar"
VENUS_PORTAL = "c0619ab1b2c3"
#: The battery monitor's D-Bus device instance on the GX.
BATTERY_INSTANCE = 512


class Message(NamedTuple):
    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 0


def json_message(topic: str, obj: object, *, retain: bool = False, qos: int = 0) -> Message:
    return Message(topic, json.dumps(obj, separators=(",", ":")).encode(), retain, qos)


def text_message(topic: str, value: object, *, retain: bool = False, qos: int = 0) -> Message:
    return Message(topic, str(value).encode(), retain, qos)


class SimulatedDevice(ABC):
    """One device on its own MQTT connection (its own client id and last will)."""

    client_id: str
    #: Its last will: sent by the broker when the connection drops without a goodbye.
    will: Message | None = None
    #: Topic filters it listens to (commands, keep-alives).
    subscriptions: tuple[str, ...] = ()

    def __init__(self, model: SiteModel) -> None:
        self.model = model

    def birth(self) -> list[Message]:
        """Published on every (re)connection. Needs no site state: it runs on the client's thread."""
        return []

    @abstractmethod
    def tick(self, now: float, counters_due: bool) -> list[Message]:
        """What it publishes at a regular tick; `counters_due` for the slower energy counters."""

    def goodbye(self, now: float) -> list[Message]:
        """Last words before the demo stops: a final full report, then what its last will says."""
        return self.tick(now, True) + ([self.will] if self.will else [])

    def on_message(self, topic: str, payload: bytes, now: float) -> list[Message]:
        """A message on one of `subscriptions`; returns the replies."""
        return []


# -- Shelly Gen2 ------------------------------------------------------------------------------


class _ShellyGen2(SimulatedDevice):
    """What every Gen2+ Shelly shares: `<prefix>/online` true, retained, last will false."""

    def __init__(self, model: SiteModel, prefix: str) -> None:
        super().__init__(model)
        self.prefix = self.client_id = prefix
        self.will = text_message(f"{prefix}/online", "false", retain=True, qos=1)

    def birth(self) -> list[Message]:
        return [text_message(f"{self.prefix}/online", "true", retain=True, qos=1)]

    def notify(self, now: float, params: dict[str, Any]) -> Message:
        """A `NotifyStatus` frame on `<prefix>/events/rpc` carrying only what changed."""
        frame = {
            "src": self.prefix,
            "dst": f"{self.prefix}/events",
            "method": "NotifyStatus",
            "params": {"ts": round(now, 2), **params},
        }
        return json_message(f"{self.prefix}/events/rpc", frame, qos=1)


class _MinuteEnergy:
    """`aenergy.by_minute` (mWh; index 0 = the current, incomplete minute) and `minute_ts`."""

    def __init__(self) -> None:
        self.minute_ts = 0
        self.start_wh = math.nan
        self.done = [0.0, 0.0]

    def update(self, total_wh: float, now: float) -> dict[str, Any]:
        minute = int(now // 60) * 60
        if math.isnan(self.start_wh):
            self.minute_ts, self.start_wh = minute, total_wh
        elif minute != self.minute_ts:
            finished = (total_wh - self.start_wh) * 1000.0 if minute - self.minute_ts == 60 else 0.0
            self.done = [finished, self.done[0]]
            self.minute_ts, self.start_wh = minute, total_wh
        current = (total_wh - self.start_wh) * 1000.0
        by_minute = [round(current, 3), round(self.done[0], 3), round(self.done[1], 3)]
        return {"total": round(total_wh, 3), "by_minute": by_minute, "minute_ts": self.minute_ts}


#: How the relay was last switched, as Shelly reports it in `source`. "init" is captured;
#: "button" (the plug's own button) and "MQTT" (RPC, command topic) are our guesses.
SOURCE_INIT, SOURCE_BUTTON, SOURCE_MQTT = "init", "button", "MQTT"
#: A power change this large (W, or this fraction) is pushed at once as a NotifyStatus.
NOTIFY_MIN_W, NOTIFY_FRACTION = 50.0, 0.3


class ShellyPlusPlugS(_ShellyGen2):
    """A Shelly Plus Plug S in front of one machine: `switch:0` status, deltas, `Switch.Set`."""

    def __init__(self, model: SiteModel, profile: MachineProfile) -> None:
        super().__init__(model, profile.prefix)
        self.machine = profile.name
        self.subscriptions = (f"{self.prefix}/rpc", f"{self.prefix}/command/switch:0")
        self.source = SOURCE_INIT
        self._minutes = _MinuteEnergy()
        self._notified: tuple[bool, float] | None = None

    def _snapshot(self) -> MachineSnapshot:
        return self.model.snapshot().machine(self.machine)

    def status(self, now: float) -> dict[str, Any]:
        m = self._snapshot()
        voltage = self.model.snapshot().voltage_v[m.phase]
        temperature = 31.0 + m.power_w * 0.006
        return {
            "id": 0,
            "source": self.source,
            "output": m.relay,
            "apower": round(m.power_w, 1),
            "voltage": round(voltage, 1),
            "current": round(m.power_w / (voltage * m.power_factor), 3),
            "aenergy": self._minutes.update(m.energy_wh, now),
            "temperature": {"tC": round(temperature, 1), "tF": round(temperature * 9 / 5 + 32, 1)},
        }

    def tick(self, now: float, counters_due: bool) -> list[Message]:
        status = self.status(now)
        out = [json_message(f"{self.prefix}/status/switch:0", status, qos=1)]
        delta = self._delta(status)
        if delta:
            out.insert(0, self.notify(now, {"switch:0": delta}))
        return out

    def _delta(self, status: dict[str, Any]) -> dict[str, Any]:
        """The changed fields worth a NotifyStatus: the relay, or a jump in power."""
        output, power = status["output"], status["apower"]
        last = self._notified
        self._notified = (output, power)
        if last is None:
            return {}
        delta: dict[str, Any] = {"id": 0}
        if output != last[0]:
            delta |= {"output": output, "source": self.source}
        if abs(power - last[1]) >= max(NOTIFY_MIN_W, NOTIFY_FRACTION * last[1]):
            delta |= {"apower": power, "current": status["current"]}
        if len(delta) == 1:
            self._notified = last  # small drifts add up until one is worth telling
            return {}
        return delta

    def switch(self, on: bool, source: str, now: float) -> list[Message]:
        """Switch the relay (machine leaves the autopilot) and report it at once."""
        self.source = source
        self.model.set_relay(self.machine, on)
        return self.tick(now, False)

    def on_message(self, topic: str, payload: bytes, now: float) -> list[Message]:
        if topic.endswith("/rpc"):
            return self._rpc(payload, now)
        verb = payload.strip().decode(errors="replace")
        relay = self._snapshot().relay
        wanted = {"on": True, "off": False, "toggle": not relay}.get(verb)
        return [] if wanted is None else self.switch(wanted, SOURCE_MQTT, now)

    def _rpc(self, payload: bytes, now: float) -> list[Message]:
        """JSON-RPC over MQTT: the reply goes to `<src>/rpc`, as the device's own does."""
        try:
            request = json.loads(payload)
            src, method = str(request["src"]), request["method"]
            params = request.get("params") or {}
        except (ValueError, TypeError, KeyError, AttributeError):
            return []  # a real device drops frames it cannot read
        if not isinstance(params, dict):
            return []
        was_on = self._snapshot().relay
        handlers = {
            "Switch.Set": lambda: bool(params.get("on")),
            "Switch.Toggle": lambda: not was_on,
        }
        reply: dict[str, Any] = {"id": request.get("id"), "src": self.prefix, "dst": src}
        if method == "Switch.GetStatus":
            return [json_message(f"{src}/rpc", reply | {"result": self.status(now)}, qos=1)]
        if method not in handlers or params.get("id", 0) != 0:
            error = {"code": 404, "message": f"No handler for {method}"}
            return [json_message(f"{src}/rpc", reply | {"error": error}, qos=1)]
        answer = json_message(f"{src}/rpc", reply | {"result": {"was_on": was_on}}, qos=1)
        return [answer, *self.switch(handlers[method](), SOURCE_MQTT, now)]


_PHASE_LETTERS = ("a", "b", "c")
#: Power factor the grid meter sees per phase: a lab's mix of motors and electronics.
GRID_POWER_FACTOR = 0.96


class ShellyPro3EM(_ShellyGen2):
    """The grid meter, triphase profile: `em:0` every tick, `emdata:0` counters when due."""

    def __init__(self, model: SiteModel, prefix: str = GRID_METER_PREFIX) -> None:
        super().__init__(model, prefix)

    def em_status(self, snap: SiteSnapshot) -> dict[str, Any]:
        status: dict[str, Any] = {"id": 0}
        total_current = total_aprt = 0.0
        for phase, letter in enumerate(_PHASE_LETTERS):
            power, voltage = snap.grid_phase_w[phase], snap.voltage_v[phase]
            aprt = abs(power) / GRID_POWER_FACTOR
            current = aprt / voltage
            total_current, total_aprt = total_current + current, total_aprt + aprt
            status |= {
                f"{letter}_current": round(current, 3),
                f"{letter}_voltage": round(voltage, 1),
                f"{letter}_act_power": round(power, 1),
                f"{letter}_aprt_power": round(aprt, 1),
                f"{letter}_pf": round(math.copysign(GRID_POWER_FACTOR, power), 2),
                f"{letter}_freq": round(snap.frequency_hz, 2),
            }
        return status | {
            "n_current": None,
            "total_current": round(total_current, 3),
            "total_act_power": round(snap.grid_w, 3),
            "total_aprt_power": round(total_aprt, 3),
            "user_calibrated_phase": [],
        }

    @staticmethod
    def emdata_status(snap: SiteSnapshot) -> dict[str, Any]:
        """Counters in Wh. The totals are the sums of the phases' counters, as on the device."""
        status: dict[str, Any] = {"id": 0}
        for phase, letter in enumerate(_PHASE_LETTERS):
            status[f"{letter}_total_act_energy"] = round(snap.grid_import_wh[phase], 3)
            status[f"{letter}_total_act_ret_energy"] = round(snap.grid_export_wh[phase], 3)
        status["total_act"] = round(sum(snap.grid_import_wh), 3)
        status["total_act_ret"] = round(sum(snap.grid_export_wh), 3)
        return status

    def tick(self, now: float, counters_due: bool) -> list[Message]:
        snap = self.model.snapshot()
        out = [json_message(f"{self.prefix}/status/em:0", self.em_status(snap), qos=1)]
        if counters_due:
            out.append(json_message(f"{self.prefix}/status/emdata:0", self.emdata_status(snap), qos=1))
        return out


# -- OpenDTU ------------------------------------------------------------------------------


class OpenDTU(SimulatedDevice):
    """An OpenDTU with one two-input Hoymiles inverter. Retained plain-text values under `solar/`,
    with the inverter's own resolution: yieldtotal in kWh to 3 decimals, yieldday in whole Wh.

    At night the inverter stops answering: `status/reachable` 0, and its values are
    zeroed once (OpenDTU's "zero runtime data" option) and then no longer published.
    """

    def __init__(self, model: SiteModel, serial: str = DTU_SERIAL, base: str = DTU_BASE) -> None:
        super().__init__(model)
        self.serial, self.base = serial, base
        self.client_id = f"opendtu-{serial[-6:]}"
        self.will = text_message(f"{base}/dtu/status", "offline", retain=True)
        self._was_reachable: bool | None = None

    def birth(self) -> list[Message]:
        return [
            text_message(f"{self.base}/dtu/status", "online", retain=True),
            text_message(f"{self.base}/{self.serial}/name", "roof", retain=True),
        ]

    def values(self, snap: SiteSnapshot, now: float) -> dict[str, object]:
        """Topic (after `<base>/`) -> value, while the inverter is reachable."""
        ac, dc = snap.pv_w, snap.pv_dc_w
        dc_voltage = 28.0 + 6.0 * math.sqrt(snap.irradiance)
        inputs = {1: dc * 0.52, 2: dc * 0.48}
        s = self.serial
        values: dict[str, object] = {
            f"{s}/status/reachable": 1,
            f"{s}/status/producing": int(ac > 0),
            f"{s}/status/last_update": int(now),
            f"{s}/0/power": round(ac, 1),
            f"{s}/0/voltage": round(snap.voltage_v[0], 1),
            f"{s}/0/current": round(ac / snap.voltage_v[0], 2),
            f"{s}/0/frequency": round(snap.frequency_hz, 2),
            f"{s}/0/powerdc": round(dc, 1),
            f"{s}/0/temperature": round(18.0 + 22.0 * snap.irradiance, 1),
            f"{s}/0/yieldday": round(snap.pv_today_wh),
            f"{s}/0/yieldtotal": round(snap.pv_wh / 1000.0, 3),
        }
        for n, power in inputs.items():
            values |= {
                f"{s}/{n}/power": round(power, 1),
                f"{s}/{n}/voltage": round(dc_voltage, 1),
                f"{s}/{n}/current": round(power / dc_voltage, 2),
            }
        return values | {
            "ac/power": round(ac, 1),
            "ac/yieldday": round(snap.pv_today_wh),
            "ac/yieldtotal": round(snap.pv_wh / 1000.0, 3),
            "dc/power": round(dc, 1),
        }

    def _night(self) -> dict[str, object]:
        s = self.serial
        zeros = ("0/power", "0/current", "0/powerdc", "1/power", "1/current", "2/power", "2/current")
        values: dict[str, object] = {f"{s}/{name}": 0 for name in zeros}
        snap = self.model.snapshot()  # the counters took the last sunlit step's energy
        counters = {
            f"{s}/0/yieldday": round(snap.pv_today_wh),
            f"{s}/0/yieldtotal": round(snap.pv_wh / 1000.0, 3),
            "ac/yieldday": round(snap.pv_today_wh),
            "ac/yieldtotal": round(snap.pv_wh / 1000.0, 3),
        }
        return values | counters | {"ac/power": 0, "dc/power": 0, f"{s}/status/producing": 0}

    def tick(self, now: float, counters_due: bool) -> list[Message]:
        snap = self.model.snapshot()
        reachable = snap.pv_w > 0
        was, self._was_reachable = self._was_reachable, reachable
        if reachable:
            values = self.values(snap, now)
        else:
            values = self._night() if was is not False else {}
            values[f"{self.serial}/status/reachable"] = 0
        return [text_message(f"{self.base}/{topic}", v, retain=True) for topic, v in values.items()]


# -- Victron Venus OS ---------------------------------------------------------------------


class VenusOS(SimulatedDevice):
    """A Venus OS GX device with a battery monitor (instance 512), as dbus-flashmq speaks.

    It publishes nothing until someone sends a keep-alive on `R/<portal>/keepalive`,
    then every change for `keepalive_s` (60 s on a real GX). A keep-alive without
    `suppress-republish` first republishes every value and ends with
    `N/<portal>/full_publish_completed`. Nothing is retained. Read requests
    (`R/<portal>/battery/512/Soc`, or a sub-tree) are answered while alive or not.
    """

    def __init__(self, model: SiteModel, portal: str = VENUS_PORTAL, keepalive_s: float = 60.0) -> None:
        super().__init__(model)
        self.portal, self.keepalive_s = portal, keepalive_s
        self.client_id = f"venus-{portal}"
        self.subscriptions = (f"R/{portal}/#",)
        self.alive_until = -math.inf
        self._published: dict[str, object] = {}

    def values(self, snap: SiteSnapshot) -> dict[str, object]:
        """D-Bus path (after `N/<portal>/`) -> value, in D-Bus units (V, A, W, %, kWh, s)."""
        power, soc = snap.battery_w, snap.soc_pct
        open_circuit = 48.0 + 6.0 * soc / 100.0  # a 16-cell LFP pack
        voltage = open_circuit + 0.012 * power / open_circuit  # its internal resistance
        current = power / voltage
        state = 1 if power > 1 else 2 if power < -1 else 0
        settings = self.model.settings
        left_wh = max(0.0, soc - settings.battery_min_soc) / 100.0 * settings.battery_capacity_wh
        time_to_go = round(left_wh / -power * 3600.0) if state == 2 else None
        dc = {"Voltage": round(voltage, 2), "Current": round(current, 2), "Power": round(power, 1)}
        battery = f"battery/{BATTERY_INSTANCE}"
        return {
            "system/0/Serial": self.portal,
            f"{battery}/Soc": round(soc, 1),
            **{f"{battery}/Dc/0/{name}": value for name, value in dc.items()},
            f"{battery}/TimeToGo": time_to_go,
            f"{battery}/History/ChargedEnergy": round(snap.charged_wh / 1000.0, 6),
            f"{battery}/History/DischargedEnergy": round(snap.discharged_wh / 1000.0, 6),
            "system/0/Dc/Battery/Soc": round(soc, 1),
            **{f"system/0/Dc/Battery/{name}": value for name, value in dc.items()},
            "system/0/Dc/Battery/State": state,
        }

    def _publish(self, values: dict[str, object]) -> list[Message]:
        self._published |= values
        return [json_message(f"N/{self.portal}/{path}", {"value": v}) for path, v in values.items()]

    def tick(self, now: float, counters_due: bool) -> list[Message]:
        if now >= self.alive_until:
            return []
        current = self.values(self.model.snapshot())
        changed = {path: v for path, v in current.items() if self._published.get(path, ...) != v}
        return self._publish(changed)

    def goodbye(self, now: float) -> list[Message]:
        return self.tick(now, True)

    def full_publish(self, now: float) -> list[Message]:
        done = json_message(f"N/{self.portal}/full_publish_completed", {"value": int(now)})
        return [*self._publish(self.values(self.model.snapshot())), done]

    def on_message(self, topic: str, payload: bytes, now: float) -> list[Message]:
        path = topic.removeprefix(f"R/{self.portal}/")
        if path in ("keepalive", "system/0/Serial"):  # the second is the legacy keep-alive
            self.alive_until = now + self.keepalive_s
            return [] if "suppress-republish" in _keepalive_options(payload) else self.full_publish(now)
        values = self.values(self.model.snapshot())
        return self._publish({p: v for p, v in values.items() if p == path or p.startswith(path + "/")})


def _keepalive_options(payload: bytes) -> list[object]:
    """`{"keepalive-options": ["suppress-republish"]}`; anything else (empty, not JSON) has none."""
    try:
        obj = json.loads(payload) if payload.strip() else {}
    except ValueError:
        return []
    options = obj.get("keepalive-options") if isinstance(obj, dict) else None
    return options if isinstance(options, list) else []
