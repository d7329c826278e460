"""Badge latency: from a card at the machine to the relay command on the broker.

A private Mosquitto, `commonwatt run` (a process of its own) with one machine behind an
ESPHome node of firmware-bridge/CONTRACT.md, and in this process:

- a node client that presents the same member's card again and again (each badge opens
  or closes the session, so each toggles the relay) and answers every relay command with
  the relay's new state, as a real node does;
- a separate subscriber on `<p>/switch/relay/command`, which times each badge from the
  moment it was published to the moment the command arrives.

Between badges, the same two clients time a plain message through the same broker
(published by the node client, received by the subscriber): that is the floor under which
no gateway can go. The figures of both are printed side by side; the target for the
gateway is p99 < 20 ms. Run it with `.venv/bin/python bench/badge_latency.py [--badges N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from gateway.people import People  # noqa: E402
from tests.services import Mosquitto, free_port  # noqa: E402

PREFIX = "commonwatt/bench"
UID = "04BE4C11"
PING = "bench/ping"
#: Send every packet at once. Mosquitto's default (Nagle on) holds a small message back
#: while the previous one to that client waits for its delayed ACK: up to 40 ms on Linux.
BROKER_CONF = "set_tcp_nodelay true\n"


def write_config(folder: Path, broker: Mosquitto, api_port: int) -> Path:
    journal = folder / "journal.sqlite"
    with People(journal) as people:
        people.add_member("bench", "Bench Member")
        people.assign_badge(UID, "bench")
    config = folder / "commonwatt.toml"
    config.write_text(
        f'[site]\nid = "bench"\n[journal]\npath = "{journal}"\n'
        f'[mqtt]\nport = {broker.port}\nclient_id = "gw-bench"\n[api]\nport = {api_port}\n'
        f'[[devices]]\nid = "bench"\nprotocol = "esphome"\nprefix = "{PREFIX}"\nrole = "machine"\n'
        '[[machines]]\nid = "bench"\nmeter = "bench"\nrelay = "bench"\nreaders = ["bench"]\n'
    )
    return config


def wait_ready(api_port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/api/v1/health", timeout=1) as resp:
                health = json.loads(resp.read())
            if health["sources"][0]["connected"] and health["floor"] is not None:
                time.sleep(0.5)  # subscriptions acknowledged
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the gateway did not come up")


def no_delay(client: paho.Client) -> None:
    """Send each packet at once (TCP_NODELAY); paho leaves Nagle's algorithm on.

    With it on, a message written while the previous one (the node's relay state) waits
    for the broker's delayed ACK is held back for up to 40 ms: the bench would measure
    its own clients. A real node badges seconds after its last message, so nothing is
    held back there.
    """
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Clients:
    """The node (publishes badges and pings, answers commands) and the timing subscriber."""

    def __init__(self, port: int) -> None:
        #: What the timing subscriber received: (perf_counter, topic, payload).
        self.inbox: queue.Queue[tuple[float, str, bytes]] = queue.Queue()
        #: Messages that were not the one waited for (a retried command, say).
        self.unexpected: list[tuple[str, bytes]] = []
        self.node = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-node")
        self.node.on_message = self._node_message
        self.node.connect("127.0.0.1", port)
        self.node.subscribe(f"{PREFIX}/switch/relay/command", qos=0)
        self.timer = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-timer")
        self.timer.on_message = self._timer_message
        self.timer.connect("127.0.0.1", port)
        self.timer.subscribe([(f"{PREFIX}/switch/relay/command", 1), (PING, 1)])
        for client in (self.node, self.timer):
            no_delay(client)
            client.loop_start()
        time.sleep(0.5)

    def _node_message(self, client: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        client.publish(f"{PREFIX}/switch/relay/state", msg.payload, qos=0)

    def _timer_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        self.inbox.put((time.perf_counter(), msg.topic, bytes(msg.payload)))

    def time_one(self, topic: str, payload: bytes, expect: tuple[str, bytes]) -> float:
        """Publish at QoS 1 and return seconds until the subscriber receives `expect` (topic, payload)."""
        sent = time.perf_counter()
        self.node.publish(topic, payload, qos=1)
        while True:
            try:
                at, got_topic, got = self.inbox.get(timeout=5.0)
            except queue.Empty:
                raise RuntimeError(f"no {expect} within 5 s of {topic}") from None
            if (got_topic, got) == expect:
                return at - sent
            self.unexpected.append((got_topic, got))

    def close(self) -> None:
        for client in (self.node, self.timer):
            client.disconnect()
            client.loop_stop()


def figures(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"{name:<22} n={len(ms):>5}  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  max {ms[-1]:7.2f} ms"


def measure(clients: Clients, badges: int) -> tuple[list[float], list[float]]:
    """(badge -> relay command, broker round trip) in seconds, one of each per badge."""
    badge_s, broker_s = [], []
    body = json.dumps({"v": 1, "uid": UID, "reader": "rdm6300"}).encode()
    for k in range(badges):
        command = (f"{PREFIX}/switch/relay/command", b"ON" if k % 2 == 0 else b"OFF")
        badge_s.append(clients.time_one(f"{PREFIX}/badge", body, command))
        broker_s.append(clients.time_one(PING, b"%d" % k, (PING, b"%d" % k)))
        time.sleep(0.005)  # let the node's relay state reach the gateway, as between two real badges
    return badge_s, broker_s


def stop(gateway: subprocess.Popen[bytes]) -> None:
    gateway.terminate()
    try:
        gateway.wait(15)
    except subprocess.TimeoutExpired:  # SIGABRT: faulthandler writes every thread's stack to gateway.log
        print("the gateway did not exit within 15 s of SIGTERM; aborted (its threads' stacks are in gateway.log)")
        gateway.send_signal(signal.SIGABRT)
        gateway.wait()


def run(folder: Path, badges: int, broker_conf: str) -> None:
    broker = Mosquitto(folder / "mosquitto", extra_conf=broker_conf).start()
    api_port = free_port()
    config = write_config(folder, broker, api_port)
    with (folder / "gateway.log").open("ab") as log:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            cwd=ROOT,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
    try:
        wait_ready(api_port)
        clients = Clients(broker.port)
        try:
            badge_s, broker_s = measure(clients, badges)
        finally:
            clients.close()
    finally:
        stop(gateway)
        broker.stop()
    print(f"{badges} badges (alternating in/out), each followed by one plain message through the same broker")
    print(f"broker: {broker_conf.strip() or 'Mosquitto defaults'}")
    print(figures("broker round trip", broker_s))
    print(figures("badge -> relay command", badge_s))
    print("target: badge -> relay command p99 < 20 ms")
    if clients.unexpected:
        print(f"{len(clients.unexpected)} message(s) not waited for: {clients.unexpected[:10]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--badges", type=int, default=1000)
    parser.add_argument(
        "--nagle", action="store_true", help="leave Mosquitto's Nagle algorithm on (its default) to see what it costs"
    )
    parser.add_argument("--keep", type=Path, help="a folder to keep the journal and logs in (default: a temp folder)")
    args = parser.parse_args()
    broker_conf = "" if args.nagle else BROKER_CONF
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        run(args.keep, args.badges, broker_conf)
        return
    with tempfile.TemporaryDirectory(prefix="badge-bench-") as tmp:
        run(Path(tmp), args.badges, broker_conf)


if __name__ == "__main__":
    main()
