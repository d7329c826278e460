"""`commonwatt grafana push`: the data source, a folder and the dashboards into a running Grafana.

For a Grafana that is not file-provisioned from `deploy/grafana/provisioning/` (a hosted
Grafana, one run by somebody else). It upserts, through Grafana's HTTP API
(https://grafana.com/docs/grafana/latest/developers/http_api/):

1. the Prometheus-type data source `commonwatt-vm` pointing at VictoriaMetrics:
   `GET /api/datasources/uid/{uid}`, then `PUT /api/datasources/uid/{uid}` when it exists,
   else `POST /api/datasources`;
2. the folder `commonwatt`: `GET /api/folders/{uid}`, else `POST /api/folders`;
3. each dashboard of `dashboards/json/`: `POST /api/dashboards/db` with
   `{dashboard, folderUid, overwrite: true, message}`.

Running it twice changes nothing but the dashboards' version. The token is a Grafana
service-account token with the Editor role (Admin to create the data source).

grafana-client is an optional extra (`pip install 'commonwatt[grafana]'`) and imported
only here, when a push runs: it brings niquests, which installs urllib3-future under
the name `urllib3` for every library of the environment.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The committed dashboards (`make dashboards` regenerates them).
DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboards" / "json"
DATASOURCE_UID = "commonwatt-vm"
DATASOURCE_NAME = "commonwatt VictoriaMetrics"
FOLDER_UID = "commonwatt"
FOLDER_TITLE = "commonwatt"


class GrafanaPushError(Exception):
    """Grafana refused a request or could not be reached; the message says which and why."""


@dataclass
class PushResult:
    datasource: str = ""  # "created" or "updated"
    folder: str = ""  # "created" or "exists"
    dashboards: list[str] = field(default_factory=list)  # uids pushed


def datasource_body(victoria_url: str) -> dict[str, Any]:
    """Grafana's data source model for VictoriaMetrics as a Prometheus server."""
    return {
        "uid": DATASOURCE_UID,
        "name": DATASOURCE_NAME,
        "type": "prometheus",
        "access": "proxy",
        "url": victoria_url,
        "isDefault": False,
        "jsonData": {"httpMethod": "POST", "timeInterval": "10s", "prometheusType": "Prometheus"},
    }


def load_dashboards(folder: Path = DASHBOARD_DIR) -> list[dict[str, Any]]:
    """The committed dashboard models, by file name order."""
    boards = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]
    if not boards:
        raise GrafanaPushError(f"no dashboards in {folder}: run `make dashboards`")
    return boards


def _client(url: str, token: str, timeout_s: float) -> Any:
    try:
        from grafana_client.api import GrafanaApi
    except ImportError as exc:
        raise GrafanaPushError("grafana-client is not installed: pip install 'commonwatt[grafana]'") from exc
    return GrafanaApi.from_url(url, credential=token, timeout=timeout_s)


def _status(exc: Exception) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _upsert_datasource(api: Any, body: dict[str, Any]) -> str:
    try:
        api.datasource.get_datasource_by_uid(DATASOURCE_UID)
    except Exception as exc:
        if _status(exc) != 404:
            raise
        api.datasource.create_datasource(body)
        return "created"
    api.datasource.update_datasource_by_uid(DATASOURCE_UID, body)
    return "updated"


def _ensure_folder(api: Any) -> str:
    try:
        api.folder.get_folder(FOLDER_UID)
    except Exception as exc:
        if _status(exc) != 404:
            raise
        api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
        return "created"
    return "exists"


def _push_dashboards(api: Any, boards: Iterable[dict[str, Any]]) -> list[str]:
    pushed = []
    for board in boards:
        model = {k: v for k, v in board.items() if k != "id"}  # Grafana matches by uid
        api.dashboard.update_dashboard(
            {"dashboard": model, "folderUid": FOLDER_UID, "overwrite": True, "message": "commonwatt grafana push"}
        )
        pushed.append(str(model["uid"]))
    return pushed


def push(
    url: str,
    token: str,
    *,
    victoria_url: str = "http://victoria-metrics:8428",
    dashboards: Path = DASHBOARD_DIR,
    timeout_s: float = 10.0,
) -> PushResult:
    """Upsert the data source, the folder and every dashboard into the Grafana at `url`.

    `victoria_url` is VictoriaMetrics as Grafana's server reaches it (the data source uses
    proxy access), not necessarily as this machine does.
    """
    boards = load_dashboards(dashboards)
    api = _client(url, token, timeout_s)
    try:
        return PushResult(
            datasource=_upsert_datasource(api, datasource_body(victoria_url)),
            folder=_ensure_folder(api),
            dashboards=_push_dashboards(api, boards),
        )
    except GrafanaPushError:
        raise
    except Exception as exc:  # grafana-client's errors and the transport's, in one message
        raise GrafanaPushError(f"{type(exc).__name__}: {exc}") from exc
