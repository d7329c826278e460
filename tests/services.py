"""Real services for the integration tests: Mosquitto and VictoriaMetrics.

Each instance runs on a free loopback port in its own temp folder, started and
stopped by the test. Nothing here talks to a service the machine already runs.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _find(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError(f"{name} is not installed; `make test` installs it from Debian's packages")


class Mosquitto:
    """A private Mosquitto broker. `restart()` keeps the port."""

    def __init__(self, folder: Path, port: int | None = None, extra_conf: str = "") -> None:
        self.folder = folder
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = folder / "mosquitto.conf"

    def start(self) -> Mosquitto:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 0\n"
            "max_inflight_messages 0\n"
            "log_dest stderr\n"
            "log_type error\n" + self.extra_conf
        )
        log = (self.folder / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([_find("mosquitto"), "-c", str(self.conf)], stdout=log, stderr=log)
        _wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = False, qos: int = 0) -> None:
        """Publish one message with mosquitto_pub (a client that is not ours)."""
        args = [_find("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(self.port), "-t", topic, "-q", str(qos)]
        if retain:
            args.append("-r")
        data = payload if isinstance(payload, bytes) else payload.encode()
        subprocess.run([*args, "-s"], input=data, check=True, timeout=10)


class VictoriaMetrics:
    """A private single-node VictoriaMetrics. `restart()` keeps port and data."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> VictoriaMetrics:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "vm.log").open("ab")
        self.proc = subprocess.Popen(
            [
                _find("victoria-metrics"),
                f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-storageDataPath={self.folder / 'data'}",
                "-retentionPeriod=100y",
                "-search.latencyOffset=0s",
                "-search.disableCache",
                # As in production: a batch re-sent after a crash is stored once (see gateway/sinks/TSDB.md).
                "-dedup.minScrapeInterval=1ms",
                "-loggerLevel=ERROR",
            ],
            stdout=log,
            stderr=log,
        )
        _wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def flush(self) -> None:
        """Make everything written so far searchable (VictoriaMetrics buffers about a second)."""
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10).read()

    def get(self, path: str, **params: str) -> bytes:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as resp:
            body: bytes = resp.read()
            return body

    def export(self, match: str) -> list[dict[str, object]]:
        """Every raw sample of the matching series (no deduplication, no step)."""
        import json

        self.flush()
        body = self.get("/api/v1/export", **{"match[]": match})
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def sample_count(self, match: str) -> int:
        total = 0
        for series in self.export(match):
            values = series["values"]
            assert isinstance(values, list)
            total += len(values)
        return total
