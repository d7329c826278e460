"""The rules of a generic JSON mapping: validated and compiled once, at construction.

A rule says: messages on topics matching `topic` (an MQTT filter with `+` and
`#`) carry `metric` of device `device` at `path` in their JSON payload, times
`scale`. `device` may name the `+` levels of the topic as `{1}`, `{2}` ...;
`path` is `ENERGY.Power`, `data[0].v`, or empty for the whole payload.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.quantities import is_known, quantity

Step = str | int
Path = tuple[Step, ...]

_KEYS = frozenset({"topic", "device", "metric", "path", "scale", "ts_path"})
_REQUIRED = ("topic", "device", "metric")
_PATH = re.compile(r"(?:[^.\[\]]+|\[[0-9]+\])(?:\.[^.\[\]]+|\[[0-9]+\])*")
_STEP = re.compile(r"([^.\[\]]+)|\[([0-9]+)\]")
_PLACEHOLDER = re.compile(r"\{([0-9]+)\}")


@dataclass(frozen=True, slots=True)
class Rule:
    index: int
    topic: str
    #: None for a filter without wildcards (compared as a plain string).
    regex: re.Pattern[str] | None
    #: The first topic level when it is literal: rules are indexed by it.
    first: str | None
    #: Literal text and `+`-level numbers (1-based) that make up the device key.
    device: tuple[str | int, ...]
    metric: str
    is_state: bool
    path: Path
    scale: float
    ts_path: Path | None

    def match(self, topic: str) -> tuple[str, ...] | None:
        """The `+` levels of a matching topic (empty for a literal filter); None when it does not match."""
        if self.regex is None:
            return () if topic == self.topic else None
        found = self.regex.fullmatch(topic)
        return None if found is None else found.groups()

    def device_key(self, levels: tuple[str, ...]) -> str:
        return "".join(p if isinstance(p, str) else levels[p - 1] for p in self.device)


def parse_path(path: str) -> Path:
    """`data[0].v` -> ("data", 0, "v"); "" -> (). ValueError when malformed."""
    if path == "":
        return ()
    if not _PATH.fullmatch(path):
        raise ValueError(f"malformed path {path!r}; write it like ENERGY.Power or data[0].v")
    return tuple(name if name else int(index) for name, index in _STEP.findall(path))


def compile_filter(topic: str) -> tuple[re.Pattern[str] | None, int]:
    """An MQTT topic filter -> (regex with one group per `+`, or None when literal; number of `+`)."""
    levels = topic.split("/")
    problems = [lvl for lvl in levels if lvl not in ("+", "#") and ("+" in lvl or "#" in lvl)]
    if not topic or problems or "#" in levels[:-1]:
        raise ValueError(f"bad topic filter {topic!r}: + and # must fill a level, # only last")
    if "+" not in levels and "#" not in levels:
        return None, 0
    parts = ["([^/]*)" if lvl == "+" else re.escape(lvl) for lvl in levels if lvl != "#"]
    regex = "/".join(parts)
    if levels[-1] == "#":
        regex = regex + "(?:/.*)?" if parts else ".*"
    return re.compile(regex, re.DOTALL), levels.count("+")


def compile_device(template: str, wildcards: int) -> tuple[str | int, ...]:
    pieces = _PLACEHOLDER.split(template)
    literals, numbers = pieces[0::2], [int(n) for n in pieces[1::2]]
    if any("{" in lit or "}" in lit for lit in literals):
        raise ValueError(f"{template!r}: use {{1}}, {{2}} ... for the + levels of the topic, nothing else in braces")
    if any(not 1 <= n <= wildcards for n in numbers):
        raise ValueError(f"{template!r} names a + level the topic filter does not have ({wildcards})")
    return tuple(p if i % 2 == 0 else int(p) for i, p in enumerate(pieces) if p != "")


def _scale(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or raw == 0:
        raise ValueError(f"scale must be a non-zero number, not {raw!r}")
    return float(raw)


def _metric(raw: str) -> str:
    if not is_known(raw):
        raise ValueError(f"unknown metric {raw!r} (see gateway/quantities.py)")
    return raw


def _checked(where: str, rule: dict[str, Any], problems: list[str]) -> bool:
    """Shape checks of one rule; False when it cannot be compiled further (a key missing, a non-string)."""
    problems += [f"{where}.{key}: unknown key" for key in sorted(set(rule) - _KEYS)]
    before = len(problems)
    problems += [f"{where}.{key}: required" for key in _REQUIRED if key not in rule]
    for key in ("topic", "device", "metric", "path", "ts_path"):
        if key in rule and not isinstance(rule[key], str):
            problems.append(f"{where}.{key}: must be a string")
    return len(problems) == before


def _compile_rule(index: int, rule: dict[str, Any], problems: list[str]) -> Rule | None:
    where = f"mapping[{index}]"
    if not _checked(where, rule, problems):
        return None
    parts: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], object]]] = [
        ("topic", lambda: compile_filter(rule["topic"])),
        ("metric", lambda: _metric(rule["metric"])),
        ("path", lambda: parse_path(rule.get("path", ""))),
        ("scale", lambda: _scale(rule.get("scale", 1.0))),
        ("ts_path", lambda: None if "ts_path" not in rule else parse_path(rule["ts_path"]) or None),
    ]
    for key, build in steps:
        try:
            parts[key] = build()
        except ValueError as exc:
            problems.append(f"{where}.{key}: {exc}")
    if "topic" not in parts:
        return None
    try:
        parts["device"] = compile_device(rule["device"], parts["topic"][1])
    except ValueError as exc:
        problems.append(f"{where}.device: {exc}")
    if len(parts) < len(steps) + 1:
        return None
    first = rule["topic"].split("/", 1)[0]
    return Rule(
        index=index,
        topic=rule["topic"],
        regex=parts["topic"][0],
        first=None if first in ("+", "#") else first,
        device=parts["device"],
        metric=parts["metric"],
        is_state=quantity(parts["metric"]).kind == "state",
        path=parts["path"],
        scale=parts["scale"],
        ts_path=parts["ts_path"],
    )


def compile_mapping(mapping: Any) -> list[Rule]:
    """Every rule compiled; ValueError listing every problem of the whole mapping."""
    if not isinstance(mapping, list) or not mapping:
        raise ValueError("generic_json mapping: needs a non-empty list of rules")
    problems: list[str] = []
    rules: list[Rule] = []
    for index, raw in enumerate(mapping):
        if not isinstance(raw, dict):
            problems.append(f"mapping[{index}]: must be a table of topic, device, metric ...")
            continue
        rule = _compile_rule(index, raw, problems)
        if rule is not None:
            rules.append(rule)
    if problems:
        raise ValueError("generic_json mapping:\n  " + "\n  ".join(problems))
    return rules


def index_rules(rules: Sequence[Rule]) -> tuple[dict[str, tuple[Rule, ...]], tuple[Rule, ...]]:
    """Rules by literal first topic level (each list completed by the wildcard-first rules,
    in mapping order), and the wildcard-first rules alone for any other first level."""
    wild = tuple(r for r in rules if r.first is None)
    by_first: dict[str, list[Rule]] = {}
    for rule in rules:
        if rule.first is not None:
            by_first.setdefault(rule.first, []).append(rule)
    merged = {first: tuple(sorted([*own, *wild], key=lambda r: r.index)) for first, own in by_first.items()}
    return merged, wild
