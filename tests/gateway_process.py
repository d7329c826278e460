"""`python -m gateway run` as a process of its own, for tests that SIGKILL or SIGTERM it.

The API listens on a port from `free_port()`; between that call and the gateway's bind,
a service another test starts may take it. The gateway then exits at once saying so
("the API cannot listen"), and `start` tries again on another port.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent


class GatewayProcess:
    """`settings`: commonwatt.toml without its `[api]` table, which this class writes."""

    def __init__(self, folder: Path, settings: str) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "commonwatt.toml"
        self.log = folder / "gateway.log"
        self._settings = settings
        self.api_port = free_port()
        self._write_config()
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        self.config.write_text(f"[api]\nport = {self.api_port}\n" + self._settings)

    def start(self, ready: Callable[[dict[str, Any]], bool], timeout: float = 20) -> None:
        """Start it and wait until `ready(health)` holds for the API's /api/v1/health."""
        for _attempt in range(3):
            with self.log.open("ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "gateway", "run", "--config", str(self.config)],
                    cwd=ROOT,
                    stdout=log,
                    stderr=log,
                )
            self.proc = proc
            deadline = time.monotonic() + timeout
            while proc.poll() is None and not _holds(ready, self.health()):
                assert time.monotonic() < deadline, f"the gateway did not get ready:\n{self._said()}"
                time.sleep(0.05)
            if proc.poll() is None:
                time.sleep(0.3)  # subscriptions acknowledged
                return
            said = self._said()
            assert "the API cannot listen" in said, f"the gateway exited {proc.returncode}:\n{said}"
            self.api_port = free_port()
            self._write_config()
        raise AssertionError("no free port for the gateway's API")

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/api/v1/health", timeout=1) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except OSError:
            return {}

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def _said(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


def _holds(ready: Callable[[dict[str, Any]], bool], health: dict[str, Any]) -> bool:
    try:
        return bool(health) and ready(health)
    except (KeyError, IndexError, TypeError):
        return False
