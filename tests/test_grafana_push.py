"""`commonwatt grafana push` against a local HTTP server that plays Grafana's documented HTTP API.

No Grafana server runs in the test suite. The server below answers only the requests
Grafana documents (https://grafana.com/docs/grafana/latest/developers/http_api/) for
data sources, folders and dashboards, checks each one (method, path, bearer token, the
body's required fields) and keeps what it was given, so a second push sees the first.
Anything else is a 404 the test fails on.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gateway.grafana_push import DATASOURCE_UID, FOLDER_UID

ROOT = Path(__file__).resolve().parent.parent
#: grafana-client lives in a virtualenv of its own: it pulls niquests, which installs
#: urllib3-future under the name `urllib3` and would change every library that imports it
#: (schemathesis, influxdb-client) in the gateway's environment. `make test` creates it.
GRAFANA_PYTHON = Path(os.environ.get("GRAFANA_PYTHON", ROOT / ".venv-grafana" / "bin" / "python"))
_PUSH = """
import json, sys
from gateway.grafana_push import GrafanaPushError, push
try:
    r = push(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))
except GrafanaPushError as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(3)
print(json.dumps({"datasource": r.datasource, "folder": r.folder, "dashboards": list(r.dashboards)}))
"""


class GrafanaPushError(Exception):
    pass


@dataclass
class Pushed:
    datasource: str
    folder: str
    dashboards: list[str]


def push(url: str, token: str, **options: Any) -> Pushed:
    """`gateway.grafana_push.push`, run where grafana-client is installed."""
    if not GRAFANA_PYTHON.exists():
        pytest.fail(f"{GRAFANA_PYTHON} is missing: `make test` creates the .venv-grafana virtualenv")
    out = subprocess.run(
        [str(GRAFANA_PYTHON), "-c", _PUSH, url, token, json.dumps(options)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode == 3:
        raise GrafanaPushError(json.loads(out.stdout)["error"])
    assert out.returncode == 0, out.stderr
    return Pushed(**json.loads(out.stdout))


TOKEN = "glsa_test_token"
DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards" / "json"


@dataclass
class FakeGrafana:
    """State and the log of checked requests; `problems` lists every deviation from the API."""

    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    token: str = TOKEN


def _require(grafana: FakeGrafana, body: dict[str, Any], where: str, *keys: str) -> None:
    for key in keys:
        if key not in body:
            grafana.problems.append(f"{where}: body without '{key}'")


def _handle(grafana: FakeGrafana, method: str, path: str, body: Any) -> tuple[int, Any]:
    """Grafana's answer to one request, after checking it against the documented API."""
    if method == "GET" and path.startswith("/api/datasources/uid/"):
        uid = path.rsplit("/", 1)[1]
        return (200, grafana.datasources[uid]) if uid in grafana.datasources else (404, {"message": "not found"})
    if method == "POST" and path == "/api/datasources":
        _require(grafana, body, "POST /api/datasources", "name", "type", "access", "url")
        grafana.datasources[body.get("uid", "")] = body
        return 200, {"message": "Datasource added", "datasource": body}
    if method == "PUT" and path.startswith("/api/datasources/uid/"):
        uid = path.rsplit("/", 1)[1]
        _require(grafana, body, "PUT /api/datasources/uid", "name", "type", "access", "url")
        if uid not in grafana.datasources:
            return 404, {"message": "not found"}
        grafana.datasources[uid] = body
        return 200, {"message": "Datasource updated", "datasource": body}
    if method == "GET" and path.startswith("/api/folders/"):
        uid = path.rsplit("/", 1)[1]
        return (200, grafana.folders[uid]) if uid in grafana.folders else (404, {"message": "folder not found"})
    if method == "POST" and path == "/api/folders":
        _require(grafana, body, "POST /api/folders", "title")
        grafana.folders[body.get("uid", "")] = body
        return 200, {"uid": body.get("uid"), "title": body.get("title")}
    if method == "POST" and path == "/api/dashboards/db":
        return _dashboard(grafana, body)
    return 404, {"message": f"{method} {path} is not an endpoint this test knows"}


def _dashboard(grafana: FakeGrafana, body: dict[str, Any]) -> tuple[int, Any]:
    _require(grafana, body, "POST /api/dashboards/db", "dashboard", "folderUid", "overwrite")
    board = body.get("dashboard", {})
    _require(grafana, board, "dashboard model", "uid", "title", "panels")
    if body.get("folderUid") not in grafana.folders:
        return 400, {"message": "folder not found"}
    if "id" in board and board["id"] is not None:
        grafana.problems.append("a dashboard id was sent: Grafana would look for that id, not the uid")
    grafana.dashboards[board.get("uid", "")] = body
    return 200, {"status": "success", "uid": board.get("uid"), "version": 1}


def _handler(grafana: FakeGrafana) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            grafana.requests.append((self.command, self.path))
            if self.headers.get("Authorization") != f"Bearer {grafana.token}":
                status, answer = 401, {"message": "invalid API key"}
            else:
                if raw and not self.headers.get("Content-Type", "").startswith("application/json"):
                    grafana.problems.append(f"{self.command} {self.path}: body not sent as JSON")
                status, answer = _handle(grafana, self.command, self.path, json.loads(raw) if raw else {})
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def grafana() -> Iterator[tuple[FakeGrafana, str]]:
    state = FakeGrafana()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_first_push_creates_the_data_source_the_folder_and_every_dashboard(grafana: tuple[FakeGrafana, str]) -> None:
    state, url = grafana
    result = push(url, TOKEN, victoria_url="http://vm.lab:8428")
    assert state.problems == []
    assert result.datasource == "created" and result.folder == "created"
    assert state.datasources[DATASOURCE_UID]["type"] == "prometheus"
    assert state.datasources[DATASOURCE_UID]["url"] == "http://vm.lab:8428"
    expected = {json.loads(p.read_text())["uid"] for p in DASHBOARDS.glob("*.json")}
    assert set(state.dashboards) == expected == set(result.dashboards)
    for body in state.dashboards.values():
        assert body["folderUid"] == FOLDER_UID and body["overwrite"] is True
    assert state.requests[:4] == [
        ("GET", f"/api/datasources/uid/{DATASOURCE_UID}"),
        ("POST", "/api/datasources"),
        ("GET", f"/api/folders/{FOLDER_UID}"),
        ("POST", "/api/folders"),
    ]


def test_a_second_push_updates_in_place(grafana: tuple[FakeGrafana, str]) -> None:
    state, url = grafana
    push(url, TOKEN)
    state.requests.clear()
    result = push(url, TOKEN, victoria_url="http://other:8428")
    assert state.problems == []
    assert result.datasource == "updated" and result.folder == "exists"
    assert ("PUT", f"/api/datasources/uid/{DATASOURCE_UID}") in state.requests
    assert ("POST", "/api/datasources") not in state.requests and ("POST", "/api/folders") not in state.requests
    assert state.datasources[DATASOURCE_UID]["url"] == "http://other:8428"


def test_a_wrong_token_is_an_error_that_says_so(grafana: tuple[FakeGrafana, str]) -> None:
    state, url = grafana
    with pytest.raises(GrafanaPushError, match=r"401|[Uu]nauthori"):
        push(url, "wrong")
    assert state.dashboards == {}
