"""Deployment tools: broker users and ACLs on a real Mosquitto; backup and restore of a live journal."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import Config, parse_config
from gateway.deploy_tools import (
    DatabaseInUse,
    DeployError,
    backup,
    broker_users,
    key_backup_path,
    password_hash,
    read_passwords,
    restore,
    verify_backup,
    write_broker_files,
)
from gateway.journal import GroupCommitWriter, Journal
from gateway.model import Reading
from tests.services import Mosquitto

GATEWAY_CLIENT_ID = "commonwatt-lab"
CONFIG: dict[str, Any] = {
    "site": {"id": "lab"},
    "mqtt": {"client_id": GATEWAY_CLIENT_ID},
    "devices": [
        {"id": "laser", "protocol": "shelly_gen2", "prefix": "shellyplusplugs-aaa", "role": "machine"},
        {"id": "laser-2", "protocol": "shelly_gen2", "prefix": "shellyplusplugs-aaa/switch:1", "role": "machine"},
        {"id": "printers", "protocol": "tasmota", "prefix": "tasmota_A1", "role": "machine"},
        {"id": "drill", "protocol": "shelly_gen1", "prefix": "shellyplug-s-C45BBE", "role": "machine"},
        {"id": "mill-node", "protocol": "esphome", "prefix": "cw/mill", "role": "machine"},
        {"id": "roof-pv", "protocol": "opendtu", "prefix": "114182912345", "role": "pv"},
        {"id": "battery", "protocol": "victron_venus", "prefix": "c0619ab1b2c3/battery/512", "role": "battery"},
        {"id": "mppt", "protocol": "commonwatt_bridge", "prefix": "workshop-pi/mppt", "role": "pv"},
        {"id": "p1", "protocol": "dsmr", "port": "/dev/ttyUSB0", "role": "grid"},
        {
            "id": "cnc",
            "protocol": "generic_json",
            "prefix": "cnc",
            "role": "machine",
            "options": {"mapping": [{"topic": "lab/cnc/energy", "device": "cnc", "metric": "power_w", "path": "P"}]},
        },
    ],
}


def config() -> Config:
    return parse_config(CONFIG)


# -- the generated files, as data ----------------------------------------------------------------


def test_one_user_per_physical_client() -> None:
    users = {u.name: u for u in broker_users(config(), GATEWAY_CLIENT_ID)}
    assert set(users) == {
        "commonwatt",
        "laser",
        "printers",
        "drill",
        "mill-node",
        "roof-pv",
        "battery",
        "bridge-workshop-pi",
        "cnc",
    }
    assert users["laser"].devices == ("laser", "laser-2")  # two channels of one Shelly
    assert "p1" not in users  # serial devices never reach the broker


def test_no_device_writes_a_command_topic() -> None:
    users = broker_users(config(), GATEWAY_CLIENT_ID)
    devices = [u for u in users if u.devices]
    commands = {t for u in devices for t in u.read}
    command_topics = [
        "shellyplusplugs-aaa/rpc",
        "cmnd/tasmota_A1/POWER",
        "shellies/shellyplug-s-C45BBE/relay/0/command",
        "cw/mill/switch/relay/command",
        "R/c0619ab1b2c3/keepalive",
        "W/c0619ab1b2c3/settings/0/Settings/CGwacs/AcPowerSetPoint",
    ]
    for topic in command_topics:
        assert any(paho.topic_matches_sub(f, topic) for f in commands), topic
        for user in devices:
            assert not any(paho.topic_matches_sub(f, topic) for f in user.write), (user.name, topic)
    gateway = users[0]
    assert all(any(paho.topic_matches_sub(f, t) for f in gateway.write) for t in command_topics)


def test_passwords_are_kept_and_hashed(tmp_path: Path) -> None:
    files = write_broker_files(config(), tmp_path, gateway_client_id=GATEWAY_CLIENT_ID)
    assert stat.S_IMODE(files.passwords.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.password_file.stat().st_mode) == 0o600
    first = read_passwords(files.passwords)
    assert len(first) == 9 and all(len(p) >= 20 for p in first.values())
    assert all(line.split(":", 1)[1].startswith("$7$101$") for line in files.password_file.read_text().splitlines())
    again = write_broker_files(config(), tmp_path, gateway_client_id=GATEWAY_CLIENT_ID)
    assert read_passwords(again.passwords) == first and again.created == []


def test_hash_is_pbkdf2_sha512() -> None:
    # Computed independently: PBKDF2-HMAC-SHA512("secret", b"0123456789ab", 101, 64), base64.
    entry = password_hash("secret", salt=b"0123456789ab")
    assert entry.startswith("$7$101$MDEyMzQ1Njc4OWFi$")
    assert len(entry.rsplit("$", 1)[1]) == 88  # 64 bytes of base64


# -- the generated files applied to a real Mosquitto ------------------------------------------


class Client:
    """A logged-in MQTT client that records what it receives."""

    def __init__(self, port: int, user: str | None, password: str | None, subscribe: list[str]) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.got = threading.Condition()
        self.refused: str | None = None
        self.ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{user}-{time.monotonic_ns()}")
        if user is not None:
            self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, _u, _f, reason, _p: self._connected(c, reason, subscribe)
        self.client.on_subscribe = lambda *_a: self.ready.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _connected(self, client: paho.Client, reason: Any, subscribe: list[str]) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            self.ready.set()
        elif subscribe:
            client.subscribe([(t, 1) for t in subscribe])
        else:
            self.ready.set()

    def _message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        with self.got:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.got.notify_all()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def wait_for(self, topic: str, payload: bytes, timeout: float = 5.0) -> None:
        with self.got:
            assert self.got.wait_for(lambda: (topic, payload) in self.messages, timeout), (topic, self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[Mosquitto, dict[str, str]]]:
    files = write_broker_files(config(), tmp_path / "auth", gateway_client_id=GATEWAY_CLIENT_ID)
    extra = f"allow_anonymous false\npassword_file {files.password_file}\nacl_file {files.acl_file}\n"
    if os.geteuid() == 0:  # started as root, Mosquitto drops to `mosquitto`, who cannot read our 0600 files
        extra += "user root\n"
    broker = Mosquitto(tmp_path / "mosquitto", extra_conf=extra).start()
    yield broker, read_passwords(files.passwords)
    broker.stop()


def _client(broker: Mosquitto, passwords: dict[str, str], user: str, subscribe: list[str]) -> Client:
    client = Client(broker.port, user, passwords[user], subscribe)
    assert client.ready.wait(5) and client.refused is None, client.refused
    return client


def _attempt(broker: Mosquitto, passwords: dict[str, str], user: str, topic: str, payload: bytes) -> None:
    """Publish once from a fresh connection: Mosquitto 2.0.11 drops a client whose publish it denies."""
    client = _client(broker, passwords, user, [])
    try:
        client.publish(topic, payload, qos=0)
    finally:
        client.close()


FORBIDDEN = [
    ("tele/tasmota_A1/SENSOR", b'{"forged": true}'),  # another device's topic
    ("cmnd/tasmota_A1/POWER", b"ON"),  # another device's relay
    ("shellyplusplugs-aaa/rpc", b"{}"),  # even its own command topic
    ("commonwatt/lab/status", b"offline"),  # the gateway's topics
    ("homeassistant/sensor/x/config", b"{}"),
]


def test_devices_publish_only_their_own_topics(secured: tuple[Mosquitto, dict[str, str]]) -> None:
    broker, passwords = secured
    gateway = _client(broker, passwords, "commonwatt", ["#"])
    printers = _client(broker, passwords, "printers", ["cmnd/tasmota_A1/#", "#"])
    try:
        for topic, payload in FORBIDDEN:
            _attempt(broker, passwords, "laser", topic, payload)
        _attempt(broker, passwords, "laser", "shellyplusplugs-aaa/status/switch:0", b'{"apower": 12}')
        gateway.wait_for("shellyplusplugs-aaa/status/switch:0", b'{"apower": 12}')
        gateway.publish("cmnd/tasmota_A1/POWER", b"OFF")  # the gateway commands the relay
        printers.wait_for("cmnd/tasmota_A1/POWER", b"OFF")
        assert [t for t, _ in gateway.messages] == ["shellyplusplugs-aaa/status/switch:0", "cmnd/tasmota_A1/POWER"]
        # The plug reads its own commands and nothing else, not even with `#`.
        assert printers.messages == [("cmnd/tasmota_A1/POWER", b"OFF")]
    finally:
        gateway.close()
        printers.close()


def test_gateway_publishes_its_own_topics(secured: tuple[Mosquitto, dict[str, str]]) -> None:
    broker, passwords = secured
    gateway = _client(broker, passwords, "commonwatt", ["commonwatt/#", "homeassistant/#"])
    try:
        gateway.publish("commonwatt/lab/status", b"online")
        gateway.publish("homeassistant/sensor/commonwatt_lab_x/config", b"{}")
        gateway.wait_for("homeassistant/sensor/commonwatt_lab_x/config", b"{}")
        assert ("commonwatt/lab/status", b"online") in gateway.messages
    finally:
        gateway.close()


def test_unknown_clients_are_refused(secured: tuple[Mosquitto, dict[str, str]]) -> None:
    broker, passwords = secured
    for user, password in ((None, None), ("laser", "wrong"), ("nobody", passwords["laser"])):
        client = Client(broker.port, user, password, [])
        assert client.ready.wait(5)
        assert client.refused is not None, user
        client.close()


# -- backup and restore ----------------------------------------------------------------------------


@pytest.fixture
def busy_journal(tmp_path: Path) -> Iterator[tuple[Path, threading.Event]]:
    """A journal a writer thread keeps appending to until the test ends."""
    path = tmp_path / "var" / "commonwatt.sqlite"
    path.parent.mkdir()
    writer = GroupCommitWriter(path, max_batch=500, max_delay=0.002)
    writer.start()
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            writer.put([Reading(1_700_000_000.0 + i + k / 100, "meter", "power_w", float(k)) for k in range(50)])
            i += 1
            time.sleep(0.001)

    thread = threading.Thread(target=write)
    thread.start()
    writer.flush(5)
    while writer.committed_rows < 2000:
        time.sleep(0.01)
    yield path, stop
    stop.set()
    thread.join()
    writer.close()


def test_backup_of_a_journal_being_written(busy_journal: tuple[Path, threading.Event], tmp_path: Path) -> None:
    path, _stop = busy_journal
    out = tmp_path / "backup.sqlite"
    manifest = backup(path, out)
    assert manifest["integrity_check"] == "ok"
    assert manifest["schema_versions"]["meta"]
    with sqlite3.connect(out) as db:
        count, last = db.execute("SELECT count(*), max(seq) FROM records").fetchone()
        series = db.execute("SELECT sum(count) FROM series").fetchone()[0]
    assert count == last == manifest["tables"]["records"] >= 2000
    assert series == count  # one snapshot: the summary and the records agree
    written = json.loads((tmp_path / "backup.sqlite.manifest.json").read_text())
    assert written == manifest
    assert verify_backup(out) == manifest


def test_restore_refuses_a_database_in_use(busy_journal: tuple[Path, threading.Event], tmp_path: Path) -> None:
    path, _stop = busy_journal
    out = tmp_path / "backup.sqlite"
    backup(path, out)
    with pytest.raises(DatabaseInUse):
        restore(out, path)
    assert path.exists()


def test_restore_keeps_the_old_database(tmp_path: Path) -> None:
    path = tmp_path / "commonwatt.sqlite"
    with Journal(path) as journal:
        journal.append([Reading(1.0, "meter", "power_w", 1.0)])
    out = tmp_path / "backup.sqlite"
    backup(path, out)
    with Journal(path) as journal:
        journal.append([Reading(2.0, "meter", "power_w", 2.0)])
    kept = restore(out, path)
    assert kept == tmp_path / "commonwatt.sqlite.before-restore"
    with Journal(path) as journal:
        assert journal.last_seq() == 1
    with Journal(kept) as journal:
        assert journal.last_seq() == 2


def test_restore_refuses_a_damaged_backup(tmp_path: Path) -> None:
    path = tmp_path / "commonwatt.sqlite"
    with Journal(path) as journal:
        journal.append([Reading(1.0, "meter", "power_w", 1.0)])
    out = tmp_path / "backup.sqlite"
    backup(path, out)
    data = bytearray(out.read_bytes())
    data[-100] ^= 0xFF
    out.write_bytes(bytes(data))
    with pytest.raises(DeployError, match="SHA-256"):
        restore(out, path)


def test_the_audit_signing_key_is_backed_up_and_restored_with_the_database(tmp_path: Path) -> None:
    path = tmp_path / "commonwatt.sqlite"
    with Journal(path) as journal:
        journal.append([Reading(1.0, "meter", "power_w", 1.0)])
    key = tmp_path / "audit-key.pem"
    key.write_bytes(b"the lab's key\n")
    out = tmp_path / "backups" / "backup.sqlite"
    out.parent.mkdir()
    manifest = backup(path, out)
    saved = key_backup_path(out)
    assert saved.read_bytes() == key.read_bytes()
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600  # as private as the key
    assert manifest["audit_key"]["file"] == saved.name
    # A new machine: the database and the key come back; a key that was there is kept aside.
    key.write_bytes(b"a key made by mistake on the new machine\n")
    restore(out, path)
    assert key.read_bytes() == b"the lab's key\n"
    assert (tmp_path / "audit-key.pem.before-restore").read_bytes().startswith(b"a key made by mistake")
    saved.write_bytes(b"altered\n")
    with pytest.raises(DeployError, match=r"audit-key\.pem: its SHA-256"):
        restore(out, path)


# -- the deployment files (no Docker engine nor systemd runs the suite: structure only) ---------------

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_compose_file_structure() -> None:
    import yaml

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"mosquitto", "victoriametrics", "grafana", "commonwatt"}
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:")
    assert "-dedup.minScrapeInterval=1ms" in services["victoriametrics"]["command"]
    assert any(v.startswith("./grafana/provisioning:") for v in services["grafana"]["volumes"])
    assert services["commonwatt"]["build"]["dockerfile"] == "deploy/Dockerfile"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith(".") or source in compose["volumes"], (name, volume)
        for port in service.get("ports", []):
            assert re.fullmatch(r"(127\.0\.0\.1:)?\d+:\d+", port), (name, port)
    assert "USER commonwatt" in (DEPLOY / "Dockerfile").read_text()


@pytest.mark.parametrize("unit", ["commonwatt.service", "commonwatt-bridge.service"])
def test_systemd_units_are_hardened(unit: str) -> None:
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }.items():
        assert settings[key] == [value], key
    assert settings["ReadWritePaths"][0].startswith("/var/lib/commonwatt")
    assert "@system-service" in settings["SystemCallFilter"]
    assert set(settings["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
