"""What a lab needs to run commonwatt for real: broker users and ACLs, database backups.

**Broker users and ACLs** (`commonwatt mosquitto-acl`). One Mosquitto user per device
(per physical MQTT client: a Shelly with two configured relay channels, an OpenDTU with
several inverters and a bridge with several serial devices are one client each), named
after its first configured device id (`bridge-<bridge site>` for a bridge). Each user
may publish only the topics its protocol publishes under its own prefix, and read only its
own command topics. No device may publish on another device's topics nor on any command
topic, so a compromised plug cannot switch the laser cutter on. The gateway's user reads
everything and publishes only command topics, `commonwatt/<site>/#` and `homeassistant/#`.

Mosquitto matches ACLs by topic filter and its `deny` also forbids reading, so command
topics are kept out of a device's write filters by listing what the device publishes,
level by level, instead of `<prefix>/#` minus a deny. The tables below say it per
protocol; they follow each decoder's README (gateway/decoders/<protocol>/README.md).

Passwords are random, kept in `passwords.txt` (mode 0600, for the operator to give to
each device) and hashed into `password_file` in Mosquitto 2's own PBKDF2-SHA512 format
(`$7$`), so `mosquitto_passwd` is not needed. Running the command again keeps every
existing password and only creates those of new devices.

**Backups** (`commonwatt backup` / `commonwatt restore`). SQLite's online backup API copies
the database page by page inside one read transaction, so a backup taken while the gateway
writes is a consistent snapshot. The copy is checked (`PRAGMA integrity_check`) and
described by a manifest next to it (schema versions, rows per table, SHA-256).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import Config, Device

#: Mosquitto's defaults for `$7$` hashes (mosquitto_passwd 2.0): PBKDF2-HMAC-SHA512, 12-byte salt.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
GATEWAY_USER = "commonwatt"
#: Where the generated files are expected on the broker's host (the `auth.conf` snippet names them).
BROKER_DIR = "/etc/mosquitto/commonwatt"


class DeployError(Exception):
    """A deployment step cannot be done; the message says why and what to do."""


# -- broker users ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientTopics:
    """What one physical MQTT client publishes and which command topics it reads."""

    key: str  # what makes two configured devices the same client (same key: one user)
    write: tuple[str, ...]
    read: tuple[str, ...] = ()
    user: str | None = None  # a fixed user name (bridges); else the first device's id


@dataclass(frozen=True, slots=True)
class BrokerUser:
    name: str
    devices: tuple[str, ...]
    write: tuple[str, ...]
    read: tuple[str, ...]
    readwrite: tuple[str, ...] = ()


def _strip(value: str, pattern: str) -> str:
    return re.sub(pattern, "", value)


def _shelly_gen2(dev: Device, gateway_client_id: str) -> ClientTopics:
    base = _strip(dev.prefix or "", r"/switch:\d+$")
    write = (f"{base}/online", f"{base}/events/#", f"{base}/status/#", f"{base}/debug/#")
    # The device answers an RPC on `<src>/rpc`, src being the gateway's client id (logged only).
    return ClientTopics(base, (*write, f"{gateway_client_id}/rpc"), (f"{base}/rpc", f"{base}/command"))


#: Shelly Gen1 paths a device publishes under `<base>/<device>/` (gateway/decoders/shelly_gen1/topics.py).
GEN1_PATHS = (
    "online",
    "announce",
    "info",
    "temperature",
    "temperature_f",
    "overtemperature",
    "temperature_status",
    "relay/+",
    "relay/+/power",
    "relay/+/energy",
    "relay/+/overpower_value",
    *(
        f"emeter/+/{x}"
        for x in ("power", "reactive_power", "voltage", "current", "pf", "total", "total_returned", "energy")
    ),
    "emeter/+/returned_energy",
    "input/+",
    "input_event/+",
    "longpush/+",
)


def _shelly_gen1(dev: Device, _gw: str) -> ClientTopics:
    base = str(dev.options.get("base", "shellies")).strip("/")
    device = _strip(dev.prefix or "", r"/(?:relay|emeter)/\d{1,2}$")
    head = f"{base}/{device}"
    write = (*(f"{head}/{path}" for path in GEN1_PATHS), f"{base}/announce")
    read = (f"{head}/relay/+/command", f"{head}/emeter/+/command", f"{head}/command", f"{base}/command")
    return ClientTopics(head, write, read)


def _tasmota(dev: Device, _gw: str) -> ClientTopics:
    full = str(dev.options.get("full_topic", "%prefix%/%topic%/"))
    full = full if full.endswith("/") else full + "/"
    full = full.replace("%topic%", dev.prefix or "").replace("%hostname%", "+").replace("%id%", "+")
    write = tuple(full.replace("%prefix%", p) + "#" for p in ("tele", "stat"))
    return ClientTopics(full, write, (full.replace("%prefix%", "cmnd") + "#",))


def _opendtu(dev: Device, _gw: str) -> ClientTopics:
    # One OpenDTU publishes every inverter under its base: the inverters of one base are one client.
    # Its own inverter commands (`<base>/<serial>/cmd/...`) are inside its tree; the gateway sends none.
    base = str(dev.options.get("base", "solar")).strip("/")
    return ClientTopics(f"opendtu:{base}", (f"{base}/#",), (f"{base}/+/cmd/#",))


def _victron_venus(dev: Device, _gw: str) -> ClientTopics:
    portal = (dev.prefix or "").split("/", 1)[0]
    return ClientTopics(f"venus:{portal}", (f"N/{portal}/#",), (f"R/{portal}/#", f"W/{portal}/#"))


def _esphome(dev: Device, _gw: str) -> ClientTopics:
    p = dev.prefix or ""
    write = (f"{p}/status", f"{p}/badge", f"{p}/debug", f"{p}/+/+/state")
    return ClientTopics(p, write, (f"{p}/+/+/command",))


def _generic_json(dev: Device, _gw: str) -> ClientTopics:
    topics = tuple(dict.fromkeys(str(rule["topic"]) for rule in dev.options.get("mapping", [])))
    return ClientTopics(f"generic:{dev.id}", topics)


def _commonwatt_bridge(dev: Device, _gw: str) -> ClientTopics:
    site = (dev.prefix or "").split("/", 1)[0]
    return ClientTopics(f"bridge:{site}", (f"commonwatt/bridge/{site}/#",), user=f"bridge-{site}")


#: protocol -> the topics of its MQTT client. Serial protocols have no broker user.
CLIENT_TOPICS: dict[str, Callable[[Device, str], ClientTopics]] = {
    "shelly_gen2": _shelly_gen2,
    "shelly_gen1": _shelly_gen1,
    "tasmota": _tasmota,
    "opendtu": _opendtu,
    "victron_venus": _victron_venus,
    "esphome": _esphome,
    "generic_json": _generic_json,
    "commonwatt_bridge": _commonwatt_bridge,
}


def default_client_id(config: Config) -> str:
    """The gateway's client id as `gateway.app.Gateway` chooses it (run this on the gateway's host)."""
    if config.mqtt is not None and config.mqtt.client_id:
        return config.mqtt.client_id
    return f"commonwatt-{config.site.id}-{socket.gethostname()}"[:64]


def device_users(config: Config, gateway_client_id: str | None = None) -> list[BrokerUser]:
    """One user per physical MQTT client of the configuration, in configuration order."""
    client_id = gateway_client_id or default_client_id(config)
    clients: dict[tuple[str, str], tuple[ClientTopics, list[str]]] = {}
    for dev in config.devices:
        rule = CLIENT_TOPICS.get(dev.protocol)
        if rule is None:
            continue
        topics = rule(dev, client_id)
        clients.setdefault((dev.protocol, topics.key), (topics, []))[1].append(dev.id)
    return [
        BrokerUser(topics.user or ids[0], tuple(ids), topics.write, topics.read) for topics, ids in clients.values()
    ]


def gateway_user(config: Config, devices: Iterable[BrokerUser], name: str = GATEWAY_USER) -> BrokerUser:
    """Reads everything; writes the devices' command topics, its own tree and Home Assistant's."""
    commands = tuple(dict.fromkeys(t for user in devices for t in user.read))
    own = (f"commonwatt/{config.site.id}/#", "homeassistant/#")
    return BrokerUser(name, (), commands, ("#",), own)


def broker_users(config: Config, gateway_client_id: str | None = None) -> list[BrokerUser]:
    devices = device_users(config, gateway_client_id)
    name = (config.mqtt.username if config.mqtt else None) or GATEWAY_USER
    taken = {u.name for u in devices}
    if name in taken:
        raise DeployError(f"the gateway's broker user {name!r} is also a device's user name; rename one")
    return [gateway_user(config, devices, name), *devices]


def acl_text(users: Iterable[BrokerUser]) -> str:
    """A Mosquitto `acl_file`. Anonymous clients get nothing (there is no topic before the first `user`)."""
    lines = ["# Generated by `commonwatt mosquitto-acl`; edit the configuration and run it again.", ""]
    for user in users:
        if user.devices:
            lines.append(f"# devices: {', '.join(user.devices)}")
        lines.append(f"user {user.name}")
        lines += [f"topic write {t}" for t in user.write]
        lines += [f"topic read {t}" for t in user.read]
        lines += [f"topic readwrite {t}" for t in user.readwrite]
        lines.append("")
    return "\n".join(lines)


# -- passwords ---------------------------------------------------------------------------------


def password_hash(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto 2's `$7$` entry: `$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>`."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def read_passwords(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            user, _, password = line.partition(":")
            found[user] = password
    return found


def _write_private(path: Path, text: str) -> None:
    """Write a secret: created 0600 from the start, never readable by others even for a moment."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    passwords: Path  # plaintext user:password, 0600, for the operator
    password_file: Path  # hashed, for Mosquitto's `password_file`
    acl_file: Path
    auth_conf: Path  # the snippet to include in mosquitto.conf
    users: list[BrokerUser] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # users whose password is new


def write_broker_files(
    config: Config, out_dir: str | Path, *, broker_dir: str = BROKER_DIR, gateway_client_id: str | None = None
) -> BrokerFiles:
    """Write passwords.txt, password_file, acl_file and auth.conf into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    users = broker_users(config, gateway_client_id)
    old = read_passwords(out / "passwords.txt")
    gateway_password = config.mqtt.password if config.mqtt else None
    passwords: dict[str, str] = {}
    created = []
    for user in users:
        given = gateway_password if not user.devices and gateway_password else None
        passwords[user.name] = given or old.get(user.name) or secrets.token_urlsafe(18)
        if user.name not in old and given is None:
            created.append(user.name)
    plain = "".join(f"{name}:{pw}\n" for name, pw in passwords.items())
    _write_private(out / "passwords.txt", "# user:password, one per device; keep this file secret\n" + plain)
    _write_private(out / "password_file", "".join(f"{n}:{password_hash(p)}\n" for n, p in passwords.items()))
    (out / "acl_file").write_text(acl_text(users), encoding="utf-8")
    (out / "auth.conf").write_text(auth_conf(broker_dir), encoding="utf-8")
    return BrokerFiles(
        out / "passwords.txt", out / "password_file", out / "acl_file", out / "auth.conf", users, created
    )


def auth_conf(broker_dir: str = BROKER_DIR) -> str:
    return (
        "# Generated by `commonwatt mosquitto-acl`: every client logs in, and may only do what acl_file allows.\n"
        "allow_anonymous false\n"
        f"password_file {broker_dir}/password_file\n"
        f"acl_file {broker_dir}/acl_file\n"
    )


# -- backup and restore --------------------------------------------------------------------------


class DatabaseInUse(DeployError):
    """A process (a running gateway) has the database open."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _integrity(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute("PRAGMA integrity_check").fetchall()
    return "; ".join(str(r[0]) for r in rows)


def describe(path: Path) -> dict[str, Any]:
    """Tables with their row counts, and the schema version of every `meta`/`*_meta` table."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        rows = {n: db.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
        versions = {}
        for n in names:
            if n == "meta" or n.endswith("_meta"):
                found = db.execute(f"SELECT value FROM \"{n}\" WHERE key = 'schema_version'").fetchone()
                if found is not None:
                    versions[n] = str(found[0])
    return {"tables": rows, "schema_versions": versions}


def manifest_path(backup_path: Path) -> Path:
    return backup_path.with_name(backup_path.name + ".manifest.json")


#: The audit log's signing key, beside the database (gateway.audit.log.KEY_FILE).
AUDIT_KEY = "audit-key.pem"


def key_backup_path(backup_path: Path) -> Path:
    return backup_path.with_name(backup_path.name + "." + AUDIT_KEY)


def _copy_private(src: Path, dst: Path) -> None:
    """Copy a secret: the copy is readable by its owner only, from its first byte."""
    tmp = dst.with_name(dst.name + ".partial")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(src.read_bytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dst)


def backup(db_path: str | Path, out_path: str | Path) -> dict[str, Any]:
    """Copy a live database to out_path, check it, write its manifest; returns the manifest."""
    src_path, out = Path(db_path), Path(out_path)
    if not src_path.exists():
        raise DeployError(f"{src_path}: no such database")
    tmp = out.with_name(out.name + ".partial")
    tmp.unlink(missing_ok=True)
    source = contextlib.closing(sqlite3.connect(f"file:{src_path}?mode=ro", uri=True))
    with source as src, contextlib.closing(sqlite3.connect(tmp)) as dst:
        src.backup(dst)  # one step: the whole copy sees one snapshot, however busy the writer is
        dst.execute("PRAGMA journal_mode = DELETE")  # a single self-contained file
    check = _integrity(tmp)
    if check != "ok":
        tmp.unlink()
        raise DeployError(f"{src_path}: the copy fails its integrity check: {check}")
    os.replace(tmp, out)
    # The signing key goes with the database: without it the lab cannot sign checkpoints that
    # members can check against the key it has published. It is as private as the key itself.
    key = src_path.with_name(AUDIT_KEY)
    if key.exists():
        _copy_private(key, key_backup_path(out))
    manifest = {
        "source": str(src_path.resolve()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sqlite_version": sqlite3.sqlite_version,
        "integrity_check": check,
        **describe(out),
        "bytes": out.stat().st_size,
        "sha256": _sha256(out),
    }
    if key.exists():
        manifest["audit_key"] = {"file": key_backup_path(out).name, "sha256": _sha256(key_backup_path(out))}
    manifest_path(out).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def in_use(db_path: Path) -> bool:
    """True when another connection (a running gateway) has the database open.

    A connection in exclusive locking mode needs the database file to itself; any open
    WAL-mode connection, even an idle one, holds a shared lock that prevents it. When it
    gets the lock it also checkpoints the WAL into the file, so the file is whole.
    """
    db = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        db.execute("BEGIN EXCLUSIVE")
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return True
        raise
    finally:
        db.close()
    return False


def verify_backup(backup_path: Path) -> dict[str, Any] | None:
    """Integrity check, and the manifest's checksum when there is one; returns the manifest."""
    if not backup_path.exists():
        raise DeployError(f"{backup_path}: no such backup")
    manifest = None
    if manifest_path(backup_path).exists():
        manifest = json.loads(manifest_path(backup_path).read_text(encoding="utf-8"))
        if manifest.get("sha256") != _sha256(backup_path):
            raise DeployError(f"{backup_path}: its SHA-256 differs from its manifest's (damaged or altered)")
        key = manifest.get("audit_key")
        if key is not None:
            key_file = key_backup_path(backup_path)
            if not key_file.exists():
                raise DeployError(f"{key_file}: the audit signing key saved with this backup is missing")
            if key.get("sha256") != _sha256(key_file):
                raise DeployError(f"{key_file}: its SHA-256 differs from the manifest's (damaged or altered)")
    try:
        check = _integrity(backup_path)
    except sqlite3.DatabaseError as exc:
        raise DeployError(f"{backup_path}: not a readable SQLite database ({exc})") from None
    if check != "ok":
        raise DeployError(f"{backup_path}: fails its integrity check: {check}")
    return manifest


def restore(backup_path: str | Path, db_path: str | Path, *, force: bool = False) -> Path | None:
    """Put a backup in place of db_path. Returns where the old database was kept (None: there was none).

    Refuses (DatabaseInUse) while another process has the database open: stop the gateway
    first. `force` skips that check, for a database left by a process that cannot be stopped
    cleanly; a gateway still writing to the old file afterwards writes to the kept copy.
    """
    src, db = Path(backup_path), Path(db_path)
    verify_backup(src)
    kept: Path | None = None
    tmp = db.with_name(db.name + ".restoring")
    shutil.copyfile(src, tmp)
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    if db.exists():
        if not force and in_use(db):
            tmp.unlink()
            raise DatabaseInUse(f"{db} is open in another process (is the gateway running?); stop it first")
        _same_owner(db, tmp)
        kept = db.with_name(db.name + ".before-restore")
        for suffix in ("", "-wal", "-shm"):
            old = Path(f"{db}{suffix}")
            if old.exists():
                os.replace(old, Path(f"{kept}{suffix}"))
    os.replace(tmp, db)
    _restore_key(src, db)
    return kept


def _restore_key(backup_path: Path, db: Path) -> None:
    """The audit key saved with the backup goes back beside the database; a different one is kept aside."""
    saved, key = key_backup_path(backup_path), db.with_name(AUDIT_KEY)
    if not saved.exists():
        return
    if key.exists():
        if key.read_bytes() == saved.read_bytes():
            return
        os.replace(key, key.with_name(AUDIT_KEY + ".before-restore"))
    _copy_private(saved, key)


def _same_owner(old: Path, new: Path) -> None:
    """The restored file gets the old one's mode and owner: run as root, it stays the gateway's."""
    st = old.stat()
    os.chmod(new, stat.S_IMODE(st.st_mode))
    if os.geteuid() == 0:
        os.chown(new, st.st_uid, st.st_gid)


__all__ = [
    "CLIENT_TOPICS",
    "BrokerFiles",
    "BrokerUser",
    "DatabaseInUse",
    "DeployError",
    "acl_text",
    "backup",
    "broker_users",
    "describe",
    "in_use",
    "key_backup_path",
    "password_hash",
    "restore",
    "verify_backup",
    "write_broker_files",
]
