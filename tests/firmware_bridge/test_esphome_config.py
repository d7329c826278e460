"""Every node YAML of firmware-bridge/ passes `esphome config` and keeps the contract.

ESPHome lives in a virtualenv of its own (`.venv-esphome`, created by `make test`) so
that its pinned dependencies never meet the gateway's. Set ESPHOME to use another
installation. `esphome config` only validates: it compiles nothing and needs no
network; the nodes' secrets come from secrets.example.yaml in a copy of the folder.

Besides ESPHome's own validation, the resolved configuration of every node is
checked against CONTRACT.md and the gateway's decoder: the topics, the version,
and the rules that keep a machine from switching on by itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.decoders.esphome import CONTRACT_VERSION, relay_command
from gateway.decoders.esphome.fields import COMPONENTS, ENTITIES, INFORMATIONAL, VERSION_ENTITY

REPO = Path(__file__).resolve().parents[2]
BRIDGE = REPO / "firmware-bridge"
NODES = sorted(p.name for p in BRIDGE.glob("*.yaml") if not p.name.startswith("secrets"))
#: Substitution variants that must validate too: the other offline policy, the other meter chip.
VARIANTS = [
    ("machine-node.yaml", {"offline_policy": "keep_running"}),
    ("machine-node.yaml", {"meter_model": "BL0937", "offline_grace": "0s"}),
]
KNOWN_ENTITIES = set(ENTITIES) | {VERSION_ENTITY} | INFORMATIONAL
#: What a machine node (one with a relay) must publish for the gateway to meter and switch it.
MACHINE_ENTITIES = {("sensor", "power"), ("sensor", "energy"), ("switch", "relay")}


def _esphome() -> str:
    configured = os.environ.get("ESPHOME")
    if configured:
        found = shutil.which(configured)
        if found is None:
            pytest.fail(f"ESPHOME={configured!r} is not an executable; unset it to use the one `make test` installs")
        return found
    local = REPO / ".venv-esphome" / "bin" / "esphome"
    if not local.exists():
        pytest.fail(
            f"ESPHome is not installed at {local}: `make test` installs it (or set ESPHOME to an esphome executable)"
        )
    return str(local)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of firmware-bridge/ with the example secrets in place of real ones."""
    copy = tmp_path_factory.mktemp("firmware-bridge")
    shutil.copytree(BRIDGE, copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".esphome", "secrets.yaml"))
    shutil.copy(BRIDGE / "secrets.example.yaml", copy / "secrets.yaml")
    yield copy


def _config(bridge: Path, node: str, substitutions: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [_esphome()]
    for key, value in (substitutions or {}).items():
        args += ["-s", key, value]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run(
        [*args, "config", node], cwd=bridge, env=env, capture_output=True, text=True, timeout=180, check=False
    )


class _Loader(yaml.SafeLoader):
    """Reads ESPHome's resolved output; its tags (!secret, !lambda) become their plain text."""


_Loader.add_multi_constructor("!", lambda loader, _tag, node: loader.construct_scalar(node))


def _contract_problems(config: dict[str, Any]) -> list[str]:
    """Where a node's resolved configuration departs from CONTRACT.md (empty when it keeps it)."""
    prefix = config["substitutions"]["topic_prefix"]
    mqtt, problems = config["mqtt"], []
    expected = {
        "mqtt.topic_prefix": (mqtt["topic_prefix"], prefix),
        "mqtt.clean_session": (mqtt["clean_session"], True),
        "mqtt.reboot_timeout": (mqtt["reboot_timeout"], "0s"),
        "wifi.reboot_timeout": (config["wifi"]["reboot_timeout"], "0s"),
        "mqtt.birth_message": (_message(mqtt["birth_message"]), (f"{prefix}/status", "online", True)),
        "mqtt.will_message": (_message(mqtt["will_message"]), (f"{prefix}/status", "offline", True)),
    }
    problems += [f"{key} is {got!r}, not {want!r}" for key, (got, want) in expected.items() if got != want]
    published = _entities(config, prefix, problems)
    problems += [f"publishes {c}/{o}, which the contract does not define" for c, o in published - KNOWN_ENTITIES]
    if config.get("switch"):
        problems += _relay_problems(config, prefix, published)
    problems += _version_problems(config)
    return problems


def _message(msg: dict[str, Any]) -> tuple[str, str, bool]:
    return msg["topic"], msg["payload"], msg["retain"]


def _named(entry: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The entities of one platform entry: itself when named, and named sub-sensors (hlw8012's power ...)."""
    if "name" in entry and not entry.get("internal"):
        yield entry
    for value in entry.values():
        if isinstance(value, dict):
            yield from _named(value)


def _entities(config: dict[str, Any], prefix: str, problems: list[str]) -> set[tuple[str, str]]:
    """(component, object_id) of every entity the node publishes, read from its state_topic."""
    found = set()
    for component in COMPONENTS:
        for entity in (e for entry in config.get(component) or [] for e in _named(entry)):
            topic = entity.get("state_topic", "")
            head, _, rest = topic.partition(f"{prefix}/{component}/")
            object_id = rest.removesuffix("/state")
            if head or not object_id or "/" in object_id or not rest.endswith("/state"):
                problems.append(f"{component} {entity['name']!r}: state_topic {topic!r} is not the contract's")
            if component == "sensor" and entity.get("retain") is not False:
                problems.append(f"sensor {entity['name']!r}: measurements must not be retained")
            found.add((component, object_id))
    return found


def _relay_problems(config: dict[str, Any], prefix: str, published: set[tuple[str, str]]) -> list[str]:
    problems = [f"a machine node must publish {c}/{o}" for c, o in MACHINE_ENTITIES - published]
    for switch in config["switch"]:
        if switch.get("restore_mode") != "ALWAYS_OFF":
            problems.append(f"switch {switch.get('id')}: restore_mode must be ALWAYS_OFF")
        if switch.get("command_topic") != relay_command(prefix, True)[0]:
            problems.append(f"switch {switch.get('id')}: command_topic {switch.get('command_topic')!r}")
    if not config["mqtt"].get("on_disconnect"):
        problems.append("a node with a relay needs an offline policy (mqtt.on_disconnect)")
    return problems


def _version_problems(config: dict[str, Any]) -> list[str]:
    """The contract version the node announces and puts in each badge must be the decoder's."""
    text = yaml.safe_dump(config)
    problems = []
    if f'return {{"{CONTRACT_VERSION}"}};' not in text:
        problems.append(f"text_sensor contract_version does not announce version {CONTRACT_VERSION}")
    if f'root["v"] = {CONTRACT_VERSION};' not in text:
        problems.append(f"the badge message does not carry v = {CONTRACT_VERSION}")
    return problems


def _check(bridge: Path, node: str, substitutions: dict[str, str]) -> list[str]:
    result = _config(bridge, node, substitutions)
    label = f"{node} {substitutions}" if substitutions else node
    if result.returncode != 0:
        return [f"{label}: esphome config failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"]
    config = yaml.load(result.stdout, Loader=_Loader)  # a SafeLoader subclass
    return [f"{label}: {problem}" for problem in _contract_problems(config)]


def test_there_are_node_files() -> None:
    assert {"machine-node.yaml", "machine-node-pn532-ct.yaml", "badge-node-shelly.yaml"} <= set(NODES)


def test_every_node_passes_esphome_config_and_keeps_the_contract(bridge: Path) -> None:
    runs: list[tuple[str, dict[str, str]]] = [(node, {}) for node in NODES] + VARIANTS
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = pool.map(lambda run: _check(bridge, *run), runs)
    problems = [problem for result in results for problem in result]
    assert not problems, "\n".join(problems)


def test_an_unknown_offline_policy_fails_validation(bridge: Path) -> None:
    result = _config(bridge, "machine-node.yaml", {"offline_policy": "sometimes"})
    assert result.returncode != 0
    assert "offline_sometimes.yaml" in result.stdout + result.stderr
