"""Ingest throughput: MQTT messages/s into the journal and into VictoriaMetrics.

Publishes a burst of real-format Shelly Gen2 NotifyStatus messages (about 120 bytes)
to a private Mosquitto and reports, side by side in one run:

- broker:   the broker's own delivery rate to a C subscriber (mosquitto_sub);
- paho:     a bare paho-mqtt subscriber that only parses the JSON;
- naive:    paho subscriber -> one influxdb-client Point per message -> VictoriaMetrics;
- gateway:  `commonwatt run` (a process of its own): every message decoded, journaled
            and delivered to VictoriaMetrics, timed until the last point is accepted.

Each figure is messages/s from the first publish until the last message is done.
Run it with `make bench` (or `.venv/bin/python bench/ingest.py --messages 200000`).

The publishers, the broker, VictoriaMetrics and the gateway share the machine's cores, so
the rates move with whatever else runs. The CPU time each process spent during the
gateway's run is printed too (µs per message, from /proc and the publishers' rusage):
that is what the load does not distort.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from gateway.journal import Journal  # noqa: E402
from tests.services import Mosquitto, VictoriaMetrics  # noqa: E402

T0 = 1_750_000_000.0


def prefix(i: int) -> str:
    return f"shellyplusplugs-{i:06x}"


def make_bursts(messages: int, devices: int, start: float) -> list[tuple[str, bytes]]:
    """One mosquitto_pub input per device: a message per line, distinct millisecond timestamps."""
    per = messages // devices
    bursts = []
    for d in range(devices):
        src = prefix(d)
        lines = [
            json.dumps(
                {
                    "src": src,
                    "method": "NotifyStatus",
                    "params": {"ts": round(start + k * 0.01, 2), "switch:0": {"id": 0, "apower": 400 + (k * 7) % 113}},
                },
                separators=(",", ":"),
            )
            for k in range(per)
        ]
        bursts.append((f"{src}/events/rpc", ("\n".join(lines) + "\n").encode()))
    return bursts


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publish(broker: Mosquitto, bursts: list[tuple[str, bytes]]) -> float:
    """Run one mosquitto_pub per burst; returns the CPU seconds they used together."""
    procs = []
    for topic, data in bursts:
        proc = subprocess.Popen(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", topic, "-l", "-q", "1"],
            stdin=subprocess.PIPE,
        )
        procs.append((proc, data))
    for proc, data in procs:
        assert proc.stdin is not None
        proc.stdin.write(data)
        proc.stdin.close()
    cpu = 0.0
    for proc, _ in procs:
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
    return cpu


def wait_until(done: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def run_broker(broker: Mosquitto, bursts: list[tuple[str, bytes]], n: int) -> float:
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", "#", "-q", "1", "-C", str(n)],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    t0 = time.perf_counter()
    publish(broker, bursts)
    sub.wait(120)
    return n / (time.perf_counter() - t0)


def run_paho(broker: Mosquitto, bursts: list[tuple[str, bytes]], n: int, handle: Callable[[bytes], None]) -> float:
    count = [0]
    finished = threading.Event()

    def on_message(_c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        handle(msg.payload)
        count[0] += 1
        if count[0] >= n:
            finished.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{time.time_ns()}")
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe("#", 1)
    client.loop_start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    publish(broker, bursts)
    finished.wait(300)
    rate = count[0] / (time.perf_counter() - t0)
    client.loop_stop()
    client.disconnect()
    return rate


def run_naive(broker: Mosquitto, vm: VictoriaMetrics, bursts: list[tuple[str, bytes]], n: int) -> float:
    """The straightforward way: a Point per message, written by influxdb-client."""
    from influxdb_client import InfluxDBClient, Point, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    client = InfluxDBClient(url=vm.url, token="", org="")
    api = client.write_api(write_options=SYNCHRONOUS)
    points: list[Point] = []
    lock = threading.Lock()

    def handle(payload: bytes) -> None:
        msg = json.loads(payload)
        params = msg["params"]
        point = (
            Point("naive")
            .tag("device", msg["src"])
            .field("power_w", float(params["switch:0"]["apower"]))
            .time(int(params["ts"] * 1000), WritePrecision.MS)
        )
        with lock:
            points.append(point)

    stop = threading.Event()
    written = [0]

    def writer() -> None:
        while not stop.is_set() or points:
            with lock:
                batch = points[:5000]
                del points[:5000]
            if batch:
                api.write(bucket="bench", record=batch, write_precision=WritePrecision.MS)
                written[0] += len(batch)
            else:
                time.sleep(0.01)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    run_paho(broker, bursts, n, handle)
    wait_until(lambda: written[0] >= n, 300)
    rate = n / (time.perf_counter() - t0)
    stop.set()
    thread.join()
    client.close()
    return rate


def gateway_config(folder: Path, broker: Mosquitto, vm: VictoriaMetrics, devices: int, version: str) -> Path:
    lines = [
        '[site]\nid = "bench"\n',
        f'[journal]\npath = "{folder / "journal.sqlite"}"\n',
        f'[mqtt]\nport = {broker.port}\nclient_id = "bench-gateway"\nversion = "{version}"\n',
        "[api]\nenabled = false\n",
        f'[tsdb]\nurl = "{vm.url}"\n',
    ]
    for d in range(devices):
        lines.append(f'[[devices]]\nid = "m{d}"\nprotocol = "shelly_gen2"\nprefix = "{prefix(d)}"\nrole = "machine"\n')
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "commonwatt.toml"
    path.write_text("\n".join(lines))
    return path


def run_gateway(
    folder: Path, broker: Mosquitto, vm: VictoriaMetrics, bursts: list[tuple[str, bytes]], n: int, version: str
) -> dict[str, float]:
    config = gateway_config(folder, broker, vm, len(bursts), version)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(config)], cwd=ROOT)
    journal_path = folder / "journal.sqlite"
    assert wait_until(lambda: journal_path.exists(), 20), "the gateway did not start"
    time.sleep(1.0)  # connected and subscribed
    journal = Journal(journal_path, readonly=True)
    out: dict[str, float] = {}
    others = {"broker (mosquitto)": broker.proc, "VictoriaMetrics": vm.proc}
    before = {name: cpu_seconds(p.pid) for name, p in others.items() if p is not None}
    gateway_before = cpu_seconds(proc.pid)
    self_before = time.process_time()
    t0 = time.perf_counter()
    publishers_cpu = publish(broker, bursts)

    def progress() -> bool:
        stats = journal.stats()
        if "journal" not in out and stats.records >= n:
            out["journal"] = n / (time.perf_counter() - t0)
        cursor = stats.cursors.get("tsdb")
        return stats.records >= n and cursor is not None and cursor.seq >= stats.last_seq

    ok = wait_until(progress, 300, step=0.01)
    wall = time.perf_counter() - t0
    out["tsdb"] = n / wall if ok else 0.0
    out["cpu gateway"] = cpu_seconds(proc.pid) - gateway_before
    for name, p in others.items():
        if p is not None:
            out[f"cpu {name}"] = cpu_seconds(p.pid) - before[name]
    out["cpu publishers (mosquitto_pub)"] = publishers_cpu
    out["cpu this script (polling the journal)"] = time.process_time() - self_before
    out["wall"] = wall
    proc.terminate()
    proc.wait(30)
    journal.close()
    out["samples_in_vm"] = vm.sample_count('{__name__="commonwatt_power_w", site="bench"}')
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--gateway-only", action="store_true", help="skip the broker, paho and naive baselines")
    parser.add_argument("--mqtt-version", choices=["3.1.1", "5"], default="3.1.1", help="the gateway's MQTT version")
    args = parser.parse_args()
    n = args.messages - args.messages % args.devices
    folder = Path(tempfile.mkdtemp(prefix="commonwatt-bench-"))
    broker = Mosquitto(folder / "mosquitto").start()
    vm = VictoriaMetrics(folder / "vm").start()
    try:
        size = len(make_bursts(args.devices, args.devices, T0)[0][1]) - 1
        print(f"{n:,} messages of {size} bytes from {args.devices} devices, {os.cpu_count()} cores")
        results = {}
        if not args.gateway_only:
            results["broker -> mosquitto_sub (C)"] = run_broker(broker, make_bursts(n, args.devices, T0), n)
            results["bare paho subscriber + json.loads"] = run_paho(
                broker, make_bursts(n, args.devices, T0), n, json.loads
            )
            results["naive: paho -> Point -> influxdb-client -> VM"] = run_naive(
                broker, vm, make_bursts(n, args.devices, T0 + 10_000), n
            )
        bursts = make_bursts(n, args.devices, T0 + 20_000)
        gw = run_gateway(folder / "gateway", broker, vm, bursts, n, args.mqtt_version)
        results["commonwatt: into the journal"] = gw["journal"]
        results["commonwatt: journal and VictoriaMetrics"] = gw["tsdb"]
        width = max(map(len, results))
        for name, rate in results.items():
            print(f"  {name:<{width}}  {rate:>10,.0f} messages/s")
        print(f"  samples in VictoriaMetrics: {gw['samples_in_vm']:,.0f} of {n:,} expected")
        print(f"CPU time during the gateway's run ({gw['wall']:.1f} s, {os.cpu_count()} cores):")
        cpu = {name[4:]: value for name, value in gw.items() if name.startswith("cpu ")}
        width = max(map(len, cpu))
        for name, seconds in cpu.items():
            share = seconds / gw["wall"]
            print(f"  {name:<{width}}  {seconds * 1e6 / n:>7.1f} µs/message  {share:>5.0%} of a core")
    finally:
        vm.stop()
        broker.stop()


if __name__ == "__main__":
    main()
