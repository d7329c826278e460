"""The `commonwatt` command."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from gateway.cli_energy import energy_app, replay
from gateway.cli_ledger import ledger_app
from gateway.cli_people import badges_app, fail, load_or_exit, members_app, tokens_app, trainings_app
from gateway.cli_statements import report_app, statement
from gateway.config import Config, ConfigError
from gateway.decoders import PROTOCOLS, decoder_class
from gateway.decoders.base import MqttDecoder, SerialDecoder
from gateway.decoders.runner import (
    SERIAL_CHUNK,
    DecodeStats,
    decode_mqtt_lines,
    decode_serial_chunks,
    record_json,
)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="commonwatt: shared machines, shared energy.")


@app.command()
def decode(
    protocol: Annotated[str, typer.Argument(help=f"one of: {', '.join(sorted(PROTOCOLS))}")],
    file: Annotated[Path | None, typer.Argument(help="capture file; standard input when absent")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="decoder option KEY=JSON (e.g. -o 'mapping=[...]')"),
    ] = None,
) -> None:
    """Decode a capture without any config or service: one JSON line per record.

    MQTT protocols read JSON lines {"topic": ..., "payload": ...}; serial protocols read raw bytes.
    A summary (frames, records, rejected by reason) goes to standard error.
    """
    try:
        cls = decoder_class(protocol)
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(2) from None
    options = {}
    for item in option or []:
        key, sep, raw = item.partition("=")
        if not sep:
            typer.echo(f"error: option {item!r} is not KEY=VALUE", err=True)
            raise typer.Exit(2)
        try:
            options[key] = json.loads(raw)
        except ValueError:
            options[key] = raw
    try:
        decoder = cls(**options)
    except (TypeError, ValueError) as exc:
        typer.echo(f"error: {protocol} options: {exc}", err=True)
        raise typer.Exit(2) from None
    stats = DecodeStats()
    out = sys.stdout
    if isinstance(decoder, MqttDecoder):
        text = sys.stdin if file is None else file.open(encoding="utf-8", errors="replace")
        records = decode_mqtt_lines(decoder, text, stats)
    else:
        assert isinstance(decoder, SerialDecoder)
        stream = sys.stdin.buffer if file is None else file.open("rb")
        records = decode_serial_chunks(decoder, iter(lambda: stream.read(SERIAL_CHUNK), b""), stats)
    dumps = json.dumps
    for record in records:
        out.write(dumps(record_json(record)) + "\n")
    out.flush()
    typer.echo(f"{protocol}: {stats.summary()}", err=True)


def _load(path: Path) -> Config:
    return load_or_exit(path)


ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="commonwatt.toml")]


@app.command("check-config")
def check_config(file: Annotated[Path, typer.Argument(help="commonwatt.toml to check")]) -> None:
    """Validate a configuration file: every problem by key path and exit 2, or exit 0."""
    config = _load(file)
    serial = sum(d.is_serial for d in config.devices)
    typer.echo(
        f"{file}: ok (site {config.site.id}, {len(config.devices)} devices: "
        f"{len(config.devices) - serial} MQTT, {serial} serial; "
        f"TSDB {'→ ' + config.tsdb.url if config.tsdb else 'none'})"
    )


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def run(
    config: ConfigOpt = Path("commonwatt.toml"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the gateway. SIGTERM or Ctrl-C flushes the journal and exits cleanly."""
    from gateway.app import StartError, run_gateway

    cfg = _load(config)
    _logging(verbose)
    try:
        asyncio.run(run_gateway(cfg))
    except StartError as exc:
        fail(str(exc))


app.add_typer(members_app, name="members")
app.command("replay")(replay)
app.add_typer(ledger_app, name="ledger")
app.command("statement")(statement)
app.add_typer(report_app, name="report")
app.add_typer(energy_app, name="energy")
app.add_typer(badges_app, name="badges")
app.add_typer(trainings_app, name="trainings")
app.add_typer(tokens_app, name="tokens")


@app.command()
def bridge(
    config: ConfigOpt = Path("commonwatt.toml"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run only the serial devices and publish their records to MQTT for a gateway elsewhere."""
    from gateway.bridge import check_bridge_config, run_bridge

    cfg = _load(config)
    try:
        check_bridge_config(cfg, str(config))
    except ConfigError as exc:
        typer.echo(f"{exc.source}: the configuration has {len(exc.problems)} problem(s):", err=True)
        for problem in exc.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(2) from None
    _logging(verbose)
    asyncio.run(run_bridge(cfg))


@app.command("mosquitto-acl")
def mosquitto_acl(
    config: ConfigOpt = Path("commonwatt.toml"),
    out: Annotated[Path, typer.Option("--out", help="folder for the generated files")] = Path("mosquitto"),
    broker_dir: Annotated[
        str, typer.Option("--broker-dir", help="where the broker will read them")
    ] = "/etc/mosquitto/commonwatt",
) -> None:
    """Write Mosquitto's users (one per device, and the gateway) and the ACLs that keep each device to its topics."""
    from gateway.deploy_tools import DeployError, write_broker_files

    cfg = _load(config)
    try:
        files = write_broker_files(cfg, out, broker_dir=broker_dir)
    except DeployError as exc:
        fail(str(exc))
    typer.echo(f"{len(files.users)} users: {', '.join(u.name for u in files.users)}")
    for path in (files.passwords, files.password_file, files.acl_file, files.auth_conf):
        typer.echo(f"wrote {path}")
    typer.echo(f"hand each device its password from {files.passwords}; keep that file private")


@app.command()
def backup(
    out: Annotated[Path, typer.Argument(help="the backup file to write")],
    config: ConfigOpt = Path("commonwatt.toml"),
) -> None:
    """A consistent copy of the database (journal, people, ledger), safe while the gateway runs."""
    from gateway.deploy_tools import DeployError
    from gateway.deploy_tools import backup as do_backup

    cfg = _load(config)
    try:
        manifest = do_backup(cfg.journal.path, out)
    except DeployError as exc:
        fail(str(exc))
    typer.echo(f"{out}: {json.dumps(manifest, sort_keys=True)}")


@app.command()
def restore(
    backup_file: Annotated[Path, typer.Argument(help="a file written by `commonwatt backup`")],
    config: ConfigOpt = Path("commonwatt.toml"),
    force: Annotated[bool, typer.Option("--force", help="even if a process has the database open")] = False,
) -> None:
    """Put a backup in place of the database; the old one is kept beside it. Stop the gateway first."""
    from gateway.deploy_tools import DeployError
    from gateway.deploy_tools import restore as do_restore

    cfg = _load(config)
    try:
        kept = do_restore(backup_file, cfg.journal.path, force=force)
    except DeployError as exc:
        fail(str(exc))
    typer.echo(f"restored {backup_file} to {cfg.journal.path}" + (f"; the old database is {kept}" if kept else ""))


grafana_app = typer.Typer(help="Grafana: the data source, folder and dashboards.", no_args_is_help=True)
app.add_typer(grafana_app, name="grafana")


@grafana_app.command("push")
def grafana_push_cmd(
    url: Annotated[str, typer.Option(help="Grafana's URL, e.g. http://grafana:3000")],
    token: Annotated[str, typer.Option(envvar="GRAFANA_TOKEN", help="a service-account token (Admin)")],
    victoria_url: Annotated[
        str, typer.Option(help="VictoriaMetrics as Grafana reaches it")
    ] = "http://victoria-metrics:8428",
) -> None:
    """Upsert the data source, the commonwatt folder and every dashboard through Grafana's HTTP API.

    Needs the optional extra: pip install 'commonwatt[grafana]'.
    """
    try:
        import grafana_client  # noqa: F401
    except ImportError:
        typer.echo("error: grafana push needs grafana-client: pip install 'commonwatt[grafana]'", err=True)
        raise typer.Exit(2) from None
    from gateway.grafana_push import GrafanaPushError, push

    try:
        result = push(url, token, victoria_url=victoria_url)
    except GrafanaPushError as exc:
        typer.echo(f"grafana push failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"data source {result.datasource}, folder {result.folder}, dashboards: {', '.join(result.dashboards)}")


audit_app = typer.Typer(no_args_is_help=True, help="Check the ledger's audit log.")
app.add_typer(audit_app, name="audit")


@audit_app.command("check-proof")
def audit_check_proof(
    files: Annotated[list[Path], typer.Argument(help="proof files downloaded from the gateway")],
    key: Annotated[
        list[str] | None, typer.Option("--key", help="the log's verifier key as your lab publishes it")
    ] = None,
) -> None:
    """Offline: are my transactions under a signed checkpoint, does a later checkpoint extend an earlier one?"""
    from gateway.audit import check_proof_files

    ok, lines = check_proof_files(files, key or [])
    for line in lines:
        typer.echo(line)
    raise typer.Exit(0 if ok else 1)


@audit_app.command("verify")
def audit_verify(config: ConfigOpt = Path("commonwatt.toml")) -> None:
    """Recompute the Merkle log, every balance and every charge; exit 1 on any mismatch."""
    from gateway.audit.verify import run

    status, lines = run(_load(config))
    for line in lines:
        typer.echo(line)
    raise typer.Exit(status)


journal_app = typer.Typer(no_args_is_help=True, help="Inspect the journal.")
app.add_typer(journal_app, name="journal")


@journal_app.command("stats")
def journal_stats(
    config: ConfigOpt = Path("commonwatt.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Counts, time span, each device's last reading, each consumer's lag."""
    from gateway.journal import Journal, JournalError
    from gateway.journal_report import print_stats

    cfg = _load(config)
    try:
        journal = Journal(cfg.journal.path, readonly=True)
    except JournalError as exc:
        fail(str(exc))
    with journal:
        print_stats(journal.stats(), as_json=as_json)


@app.command()
def demo(
    api_port: Annotated[int, typer.Option(help="port of the demo's API (0: any free port)")] = 8080,
    seconds: Annotated[float, typer.Option(help="stop after this many seconds (0: run until Ctrl-C)")] = 0,
    folder: Annotated[Path | None, typer.Option(help="where the demo keeps its files (default: a temp folder)")] = None,
    month: Annotated[bool, typer.Option("--month", help="a month in minutes, then statements and audit")] = False,
    month_name: Annotated[str | None, typer.Argument(metavar="YYYY-MM", help="--month: which (default: last)")] = None,
    days: Annotated[int | None, typer.Option(help="with --month: only its first days")] = None,
) -> None:
    """Run a simulated lab: embedded broker, simulated devices, the gateway, a live table."""
    if month or month_name is not None:
        from gateway.demo.month import run_month_command

        raise typer.Exit(run_month_command(month_name, folder, days))
    from gateway.demo.run import run_demo

    _logging(False)
    logging.getLogger().setLevel(logging.WARNING)
    asyncio.run(run_demo(api_port=api_port, seconds=seconds, folder=folder))


def main() -> None:
    app()
