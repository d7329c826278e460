"""The `commonwatt` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

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


def main() -> None:
    app()
