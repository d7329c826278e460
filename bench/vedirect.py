"""How fast a day of VE.Direct TEXT blocks decodes.

Acceptance: a day of blocks (86,400) through `commonwatt decode vedirect FILE`
in under 10 s on 2 cores. This builds such a day (an MPPT charger's blocks and a
BMV's main and history blocks, a HEX message every 50 blocks, checksums right),
then times, in the same run:

- the decoder in-process, fed in the chunks `commonwatt decode` uses;
- a naive baseline that splits lines at CR LF, as many hobby parsers do (it is
  also wrong: a checksum byte that is LF or CR shifts its lines);
- `commonwatt decode vedirect FILE > /dev/null`, when the protocol is registered.

Run: .venv/bin/python bench/vedirect.py [--blocks N]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.decoders import PROTOCOLS
from gateway.decoders.runner import SERIAL_CHUNK, DecodeStats, decode_serial_chunks
from gateway.decoders.vedirect import VEDirectDecoder
from gateway.decoders.vedirect.fields import FIELDS
from gateway.model import Reading

DAY = 86_400
HEX_MESSAGE = b":A0002000148\n"


def block(fields: list[tuple[str, object]]) -> bytes:
    body = b"".join(b"\r\n%s\t%s" % (label.encode(), str(value).encode()) for label, value in fields)
    body += b"\r\nChecksum\t"
    return body + bytes([-sum(body) % 256])


def mppt(rng: random.Random, second: int) -> bytes:
    ppv = max(0, int(400 * (1 - abs(second % DAY - DAY / 2) / (DAY / 2))) + rng.randint(-5, 5))
    return block(
        [("PID", "0xA060"), ("FW", 161), ("SER#", "HQ2132QY2KR"), ("V", 13000 + rng.randint(0, 900)),
         ("I", ppv * 70), ("VPV", 36000 + rng.randint(-500, 500)), ("PPV", ppv), ("CS", 3 if ppv else 0),
         ("MPPT", 2), ("OR", "0x00000000"), ("ERR", 0), ("LOAD", "ON"), ("IL", 300),
         ("H19", 10512 + second // 3600), ("H20", second // 3600), ("H21", 286), ("H22", 152),
         ("H23", 402), ("HSDS", 214)]
    )  # fmt: skip


def bmv_main(rng: random.Random) -> bytes:
    return block(
        [("PID", "0x203"), ("V", 12000 + rng.randint(0, 900)), ("I", rng.randint(-9000, 9000)),
         ("P", rng.randint(-110, 110)), ("CE", -rng.randint(0, 90000)), ("SOC", rng.randint(0, 1000)),
         ("TTG", rng.choice([-1, 942])), ("Alarm", "OFF"), ("Relay", "OFF"), ("AR", 0), ("BMV", 700),
         ("FW", "0308")]
    )  # fmt: skip


def bmv_history(second: int) -> bytes:
    return block(
        [("H1", -149322), ("H2", -82854), ("H3", 0), ("H4", 0), ("H5", 0), ("H6", -5526294),
         ("H7", 11733), ("H8", 16161), ("H9", 368003 + second), ("H10", 26), ("H11", 0), ("H12", 0),
         ("H17", 6843 + second // 600), ("H18", 8527 + second // 500)]
    )  # fmt: skip


def day(blocks: int) -> bytes:
    """`blocks` blocks: in turn an MPPT block, a BMV main block, a BMV history block."""
    rng = random.Random(1)
    parts = []
    for n in range(blocks):
        kind = n % 3
        parts.append(mppt(rng, n) if kind == 0 else bmv_main(rng) if kind == 1 else bmv_history(n))
        if n % 50 == 49:
            parts.append(HEX_MESSAGE)
    return b"".join(parts)


def naive(data: bytes) -> int:
    """The line-splitting parser: no checksum, no HEX handling, readings per label. Returns a count."""
    table = FIELDS
    readings = 0
    for line in data.split(b"\r\n"):
        label, _, value = line.decode("latin-1").partition("\t")
        field = table.get(label)
        if field is None:
            continue
        try:
            Reading(0.0, "naive", field.metric, int(value) * field.mul / field.div)
        except ValueError:
            continue
        readings += 1
    return readings


def timed(what: str, run: object, blocks: int) -> float:
    assert callable(run)
    start = time.perf_counter()
    detail = run()
    seconds = time.perf_counter() - start
    print(f"{what:<44} {seconds:7.2f} s {blocks / seconds:>12,.0f} blocks/s   {detail}")
    return seconds


def in_process(data: bytes) -> str:
    stats = DecodeStats()
    chunks = (data[i : i + SERIAL_CHUNK] for i in range(0, len(data), SERIAL_CHUNK))
    for _ in decode_serial_chunks(VEDirectDecoder(), chunks, stats):
        pass
    return stats.summary()


def via_cli(path: Path) -> str:
    command = [str(Path(sys.executable).parent / "commonwatt"), "decode", "vedirect", str(path)]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True, text=True)
    return done.stderr.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=DAY)
    blocks = parser.parse_args().blocks
    data = day(blocks)
    print(f"{blocks:,} blocks, {len(data) / 1e6:.1f} MB")
    timed("naive line splitter (baseline, no checksum)", lambda: f"{naive(data):,} readings", blocks)
    timed("VEDirectDecoder in-process", lambda: in_process(data), blocks)
    if "vedirect" not in PROTOCOLS:
        print("commonwatt decode vedirect: not registered yet, skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "day.bin"
        path.write_bytes(data)
        seconds = timed("commonwatt decode vedirect FILE > /dev/null", lambda: via_cli(path), blocks)
    print(f"acceptance (under 10 s for a day): {'met' if seconds * DAY / blocks < 10 else 'NOT met'}")


if __name__ == "__main__":
    main()
