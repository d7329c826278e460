"""/metrics in the Prometheus text format, for VictoriaMetrics or Prometheus to scrape."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from gateway.api.deps import GatewayDep

router = APIRouter(tags=["metrics"])


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _line(name: str, value: float | int | None, **labels: str) -> str:
    lbl = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
    return f"{name}{{{lbl}}} {0 if value is None else value}"


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(gateway: GatewayDep) -> str:
    """Ingested and rejected records, journal and sink lag, device last-seen times."""
    lines = [
        "# TYPE commonwatt_messages_total counter",
        "# TYPE commonwatt_records_total counter",
        "# TYPE commonwatt_rejected_total counter",
        "# TYPE commonwatt_source_connected gauge",
    ]
    for src in gateway.sources:
        lines.append(_line("commonwatt_messages_total", src.messages, source=src.name))
        lines.append(_line("commonwatt_records_total", src.records, source=src.name))
        lines.append(_line("commonwatt_source_connected", int(src.connected), source=src.name))
        for reason, n in sorted(src.rejected.items()):
            lines.append(_line("commonwatt_rejected_total", n, source=src.name, reason=reason))
    lines.append("# TYPE commonwatt_journal_committed_seq gauge")
    lines.append(f"commonwatt_journal_committed_seq {gateway.writer.committed_seq}")
    lines.append("# TYPE commonwatt_journal_pending gauge")
    lines.append(f"commonwatt_journal_pending {gateway.writer.pending}")
    lines.append("# TYPE commonwatt_sink_lag gauge")
    for sink in gateway.sinks:
        h = sink.health.as_json()
        lines.append(_line("commonwatt_sink_lag", h.get("lag"), sink=h.get("name", "tsdb")))
        lines.append(_line("commonwatt_sink_connected", int(bool(h.get("connected"))), sink=h.get("name", "tsdb")))
    lines.append("# TYPE commonwatt_device_last_seen_seconds gauge")
    for dev_id, dev in sorted(gateway.device_health().items()):
        if dev["last_seen"] is not None:
            lines.append(_line("commonwatt_device_last_seen_seconds", dev["last_seen"], device=dev_id))
    return "\n".join(lines) + "\n"
