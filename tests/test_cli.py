"""The `commonwatt` command as users run it: real processes, real files."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def commonwatt(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_accepts_the_example() -> None:
    out = commonwatt("check-config", "deploy/commonwatt.example.toml")
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_check_config_names_every_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[site]\nid = "Fab Lab"\ntimezone = "Mars/Olympus"\n'
        "[mqtt]\nport = 70000\n"
        '[tsdb]\nurl = "ftp://example"\n'
        '[[devices]]\nid = "grid"\nprotocol = "shely_gen2"\nrole = "grid"\n'
        '[[devices]]\nid = "pv"\nprotocol = "opendtu"\nrole = "sun"\nprefix = "1141"\n'
        '[[devices]]\nid = "pv2"\nprotocol = "opendtu"\nrole = "pv"\n'
    )
    out = commonwatt("check-config", str(bad))
    assert out.returncode == 2
    for key in ("site.id", "site.timezone", "mqtt.port", "tsdb.url", "devices[0].protocol", "devices[1].role"):
        assert key in out.stderr, f"{key} not named in:\n{out.stderr}"
    assert "devices[2]" in out.stderr and "prefix" in out.stderr


def test_check_config_reports_toml_syntax_and_missing_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[site\nid = 1\n")
    out = commonwatt("check-config", str(broken))
    assert out.returncode == 2 and "not valid TOML" in out.stderr
    out = commonwatt("check-config", str(tmp_path / "missing.toml"))
    assert out.returncode == 2 and "cannot read" in out.stderr


def test_decode_prints_records_and_a_summary() -> None:
    capture = "\n".join(
        json.dumps(line)
        for line in [
            {"topic": "solar/114182912345/0/power", "payload": "612.4", "ts": "2024-06-12T12:00:00Z"},
            {"topic": "solar/114182912345/0/yieldtotal", "payload": "1843.217"},
            {"topic": "solar/114182912345/0/power", "payload": "lots"},
            {"not": "a capture line"},
        ]
    )
    out = commonwatt("decode", "opendtu", stdin=capture.encode())
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert records == [
        {"ts": "2024-06-12T12:00:00.000Z", "device": "114182912345", "metric": "power_w", "value": 612.4},
        {"ts": "2024-06-12T12:00:00.000Z", "device": "114182912345", "metric": "energy_wh", "value": 1843217.0},
    ]
    assert "frames 4; records 2; rejected 2 (bad_capture_line 1, bad_value 1)" in out.stderr


def test_decode_unknown_protocol_exits_2() -> None:
    out = commonwatt("decode", "modbus", stdin=b"")
    assert out.returncode == 2 and "unknown protocol" in out.stderr


def test_journal_stats_on_a_missing_journal_says_so(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[site]\nid = "lab"\n')
    out = commonwatt("journal", "stats", "--config", str(cfg))
    assert out.returncode == 1 and "no journal" in out.stderr


def test_journal_stats_shows_counts_span_devices_and_lag(tmp_path: Path) -> None:
    from gateway.journal import Journal
    from gateway.model import Reading

    cfg = tmp_path / "c.toml"
    cfg.write_text('[site]\nid = "lab"\n[journal]\npath = "j.sqlite"\n')
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.append([Reading(1_700_000_000.0 + i, "grid", "power_w", float(i)) for i in range(10)])
        journal.set_cursor("tsdb", 4)
    out = commonwatt("journal", "stats", "--config", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["records"] == 10 and stats["last_seq"] == 10
    assert stats["devices"]["grid"]["count"] == 10
    assert stats["cursors"]["tsdb"]["lag"] == 6
    table = commonwatt("journal", "stats", "--config", str(cfg))
    assert "grid" in table.stdout and "tsdb" in table.stdout


def test_people_commands_through_the_real_command(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[site]\nid = "lab"\n[journal]\npath = "j.sqlite"\n')
    assert commonwatt("members", "add", "ada", "Ada Lovelace", "-c", str(cfg)).returncode == 0
    assert commonwatt("badges", "assign", "04:a3:f2:c1", "ada", "-c", str(cfg)).returncode == 0
    listed = commonwatt("members", "list", "--json", "-c", str(cfg))
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["id"] == "ada"
    token = commonwatt("tokens", "create", "--role", "member", "--member", "ada", "-c", str(cfg))
    assert token.returncode == 0 and "cw_" in token.stdout
    dup = commonwatt("members", "add", "ada", "Someone Else", "-c", str(cfg))
    assert dup.returncode == 1 and "error:" in dup.stderr


def test_backup_restore_and_acl_commands(tmp_path: Path) -> None:
    from gateway.journal import Journal
    from gateway.model import Reading

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[site]\nid = "lab"\n[journal]\npath = "j.sqlite"\n[mqtt]\n'
        '[[devices]]\nid = "laser"\nprotocol = "shelly_gen2"\nprefix = "shellyplusplugs-a1"\nrole = "machine"\n'
    )
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.append([Reading(1_700_000_000.0, "laser", "power_w", 5.0)])
    out = commonwatt("backup", str(tmp_path / "copy.sqlite"), "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.append([Reading(1_700_000_001.0, "laser", "power_w", 6.0)])
    out = commonwatt("restore", str(tmp_path / "copy.sqlite"), "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    with Journal(tmp_path / "j.sqlite", readonly=True) as journal:
        assert journal.last_seq() == 1  # the state of the backup
    acl = commonwatt("mosquitto-acl", "-c", str(cfg), "--out", str(tmp_path / "mq"))
    assert acl.returncode == 0, acl.stderr
    assert (
        "laser" in (tmp_path / "mq" / "acl_file").read_text()
        or "shellyplusplugs-a1" in (tmp_path / "mq" / "acl_file").read_text()
    )


def test_run_with_the_api_port_taken_says_so_and_starts_nothing(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = tmp_path / "commonwatt.toml"
        config.write_text(f'[site]\nid = "lab"\n[journal]\npath = "{tmp_path / "j.sqlite"}"\n[api]\nport = {port}\n')
        result = commonwatt("run", "--config", str(config))
    assert result.returncode == 1
    assert f"the API cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
