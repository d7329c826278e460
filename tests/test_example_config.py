"""deploy/commonwatt.example.toml documents every key of the configuration.

The example file is the operator's reference (STYLE.md, rule 12): each key of
`gateway.config.Config` (nested sections, per-device and per-machine keys, the pricing policy)
and each decoder's options appears in it, in its own table, either set or commented out as
`#key = default`. These tests walk the pydantic models from `Config` and the decoders'
keyword arguments, so a key added to the code without its explanation in the file fails here,
named by its key path.

How the file is read: a line that starts with "#" directly followed by a key or a table header
is a commented-out key or table; "# " starts an explanation. Uncommenting every such line gives
a second TOML document in which every documented key sits in the table it belongs to; the key
paths are looked up in it. Commented values are also checked against the models' defaults,
except inside commented-out `[[...]]` entries (examples, such as a device of another protocol)
and where the default is "unset" (None), which TOML cannot write.
"""

from __future__ import annotations

import inspect
import re
import tomllib
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from typer.testing import CliRunner

from gateway.cli import app
from gateway.config import Config, ConfigError, load_config, parse_config
from gateway.decoders import PROTOCOLS, decoder_class
from gateway.ledger.pricing import PricingPolicy

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "commonwatt.example.toml"

#: "#" directly followed by a key, a quoted key or a table header: a commented-out line.
_COMMENTED = re.compile(r"#(?=[A-Za-z0-9_\"'\[])")
_HEADER = re.compile(r"(#?)\[(\[?)\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?")
_KEY = re.compile(r"(#?)([A-Za-z0-9_-]+)\s*=(.*)")

KeyPath = tuple[str, ...]
#: Path markers: any element of a list, any entry of a table whose keys are the operator's.
ITEM, ENTRY = "[]", "<key>"


# -- the models' key paths ---------------------------------------------------------------------


def key_paths(model: type[BaseModel], prefix: KeyPath = ()) -> set[KeyPath]:
    """Every key path of a model: its fields and, recursively, the keys of the models they hold."""
    out: set[KeyPath] = set()
    for name, field in model.model_fields.items():
        path = (*prefix, field.alias or name)
        out.add(path)
        out |= _type_paths(field.annotation, path)
    return out


def _type_paths(tp: Any, path: KeyPath) -> set[KeyPath]:
    origin, args = get_origin(tp), get_args(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return key_paths(tp, path)
    if origin is Annotated:
        return _type_paths(args[0], path)
    if origin in (Union, types.UnionType):
        return set().union(*(_type_paths(arg, path) for arg in args))
    if origin in (list, tuple, set, frozenset, Sequence):
        return set().union(set(), *(_type_paths(arg, (*path, ITEM)) for arg in args if arg is not Ellipsis))
    if origin in (dict, Mapping):
        key, value = args
        if get_origin(key) is Literal:  # a closed set of keys (weekdays): each is a key of its own
            return set().union(*({(*path, str(k))} | _type_paths(value, (*path, str(k))) for k in get_args(key)))
        return _type_paths(value, (*path, ENTRY))
    return set()


def show(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += part if part == ITEM else ("." if out else "") + part
    return out


def present(doc: Any, path: KeyPath) -> bool:
    """Whether some element of the document has this key path (list items and entries: any one)."""
    if not path:
        return True
    head, rest = path[0], path[1:]
    if head == ITEM:
        return isinstance(doc, list) and any(present(item, rest) for item in doc)
    if not isinstance(doc, dict):
        return False
    if head == ENTRY:
        return any(present(value, rest) for value in doc.values())
    return head in doc and present(doc[head], rest)


# -- reading the example -----------------------------------------------------------------------


def uncommented(text: str) -> str:
    """The file with every commented-out key and table header uncommented."""
    return "\n".join(line[1:] if _COMMENTED.match(line) else line for line in text.splitlines())


def everything(text: str) -> dict[str, Any]:
    """The uncommented file as TOML: each documented key in the table it belongs to."""
    try:
        return tomllib.loads(uncommented(text))
    except tomllib.TOMLDecodeError as exc:
        raise AssertionError(
            f"the example with its commented-out lines uncommented is not valid TOML ({exc}): a key both set "
            "and shown commented out in one table, or a commented value that is not TOML on one line"
        ) from None


@dataclass(frozen=True)
class KeyLine:
    line: int
    commented: bool
    table: KeyPath  # the table it is in, as written in its header: ("devices", "options")
    key: str
    value: Any  # commented lines only
    example: bool  # inside a commented-out [[...]] entry: values are examples, not defaults
    device: int  # index of the [[devices]] entry in effect (commented ones count), -1 before any


def key_lines(text: str) -> tuple[list[KeyLine], list[str]]:
    """Each key line with its table; and the live keys that would land in the wrong table.

    A live key under a commented-out header belongs, in the live file, to the table above the
    header: that is always a mistake in the file.
    """
    out: list[KeyLine] = []
    problems: list[str] = []
    table: KeyPath = ()
    header_commented = False
    live_arrays: dict[KeyPath, bool] = {}
    device = -1
    for n, line in enumerate(text.splitlines(), 1):
        header = _HEADER.fullmatch(line)
        if header:
            header_commented = bool(header[1])
            table = tuple(part.strip() for part in header[3].split("."))
            if header[2]:
                live_arrays[table] = not header_commented
                device += table == ("devices",)
            continue
        found = _KEY.match(line)
        if not found:
            continue
        commented = bool(found[1])
        if not commented and header_commented:
            problems.append(f"line {n}: `{found[2]}` is set under a commented-out header: it lands in the table above")
        # Only commented values are compared; a live value may run over several lines.
        value = tomllib.loads(f"v ={found[3]}")["v"] if commented else None
        example = any(not live_arrays.get(table[:i], True) for i in range(1, len(table) + 1))
        out.append(KeyLine(n, commented, table, found[2], value, example, device))
    return out, problems


def undocumented(text: str) -> list[str]:
    """Key paths of `Config` that the file neither sets nor shows commented out, in their table."""
    doc = everything(text)
    return sorted(show(p) for p in key_paths(Config) if not present(doc, p))


def decoder_options(protocol: str) -> dict[str, Any]:
    """A protocol's options: keyword arguments of its decoder, with their defaults."""
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = inspect.signature(decoder_class(protocol).__init__).parameters
    return {name: p.default for name, p in params.items() if name != "self" and p.kind in kinds}


def undocumented_options(text: str) -> list[str]:
    """Options no device of their protocol shows in its `options` table (set or commented out)."""
    devices = everything(text).get("devices", [])
    missing = []
    for protocol in sorted(PROTOCOLS):
        shown: set[str] = set()
        for dev in devices:
            if dev.get("protocol") == protocol:
                shown |= set(dev.get("options", {}))
        missing += [f"{protocol}: devices[].options.{name}" for name in decoder_options(protocol) if name not in shown]
    return missing


def _inner(tp: Any) -> Any:
    """The type a table of this field holds: without Annotated, `| None` and list[...]."""
    while True:
        origin, args = get_origin(tp), get_args(tp)
        if origin is Annotated:
            tp = args[0]
        elif origin in (Union, types.UnionType) and len(others := [a for a in args if a is not type(None)]) == 1:
            tp = others[0]
        elif origin in (list, Sequence):
            tp = args[0]
        else:
            return tp


def field_at(model: type[BaseModel], path: KeyPath) -> FieldInfo | None:
    """The model field a key path ends at; None for an entry of an operator-keyed table."""
    tp: Any = model
    field: FieldInfo | None = None
    for part in path:
        tp = _inner(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            field = tp.model_fields[part]
            tp = field.annotation
        elif get_origin(tp) in (dict, Mapping):
            field, tp = None, get_args(tp)[1]
        else:
            return None
    return field


def wrong_defaults(text: str) -> list[str]:
    """Commented-out values that are not the default they claim to be."""
    devices = everything(text).get("devices", [])
    lines, _ = key_lines(text)
    problems = []
    for kl in (kl for kl in lines if kl.commented):
        where = f"line {kl.line}: #{kl.key} = {kl.value!r}"
        if kl.table == ("devices", "options"):  # a protocol's options are shown at their defaults
            default = decoder_options(devices[kl.device]["protocol"]).get(kl.key, inspect.Parameter.empty)
            if default not in (inspect.Parameter.empty, None) and kl.value != default:
                problems.append(f"{where}, but the decoder's default is {default!r}")
            continue
        field = None if kl.example else field_at(Config, (*kl.table, kl.key))
        if field is None:
            continue
        default = field.get_default(call_default_factory=True)
        if default is None or default is PydanticUndefined:
            continue  # no default to show: the line is an example
        try:
            value = TypeAdapter(field.rebuild_annotation()).validate_python(kl.value)
        except ValidationError as exc:
            problems.append(f"{where} is not a valid value: {exc.errors()[0]['msg']}")
            continue
        if value != default:
            problems.append(f"{where}, but the default of {show((*kl.table, kl.key))} is {default!r}")
    return problems


# -- the example -------------------------------------------------------------------------------


def test_the_example_is_a_valid_configuration() -> None:
    config = load_config(EXAMPLE)  # as `commonwatt check-config` loads it
    result = CliRunner().invoke(app, ["check-config", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    # The live part is a small lab with machines members badge into, and prices.
    devices = {d.id: d for d in config.devices}
    assert len(config.machines) >= 2
    for machine in config.machines:
        assert machine.relay in devices and machine.readers and machine.meter in devices
    assert any(d.protocol == "rdm6300" for d in config.devices)
    assert config.pricing != PricingPolicy()


def test_every_config_key_is_documented_in_its_table() -> None:
    missing = undocumented(EXAMPLE.read_text(encoding="utf-8"))
    assert not missing, (
        f"{EXAMPLE.name} does not document these keys (set them, or show them as `#key = default` "
        f"in their table, with an explanation): {', '.join(missing)}"
    )


def test_every_protocol_option_is_documented() -> None:
    missing = undocumented_options(EXAMPLE.read_text(encoding="utf-8"))
    assert not missing, (
        f"{EXAMPLE.name} does not document these protocol options (show each under a device of "
        f"its protocol, in [devices.options]): {', '.join(missing)}"
    )


def test_the_example_with_every_commented_key_uncommented_is_valid() -> None:
    """Every commented value is one the gateway accepts, under a key it knows (no misspelt key)."""
    doc = everything(EXAMPLE.read_text(encoding="utf-8"))
    try:
        parse_config(doc, "the example, everything uncommented")
    except ConfigError as exc:
        raise AssertionError("\n".join(exc.problems)) from None


def test_commented_values_are_the_defaults() -> None:
    problems = wrong_defaults(EXAMPLE.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


def test_no_live_key_under_a_commented_header() -> None:
    _, problems = key_lines(EXAMPLE.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


# -- the checks themselves fail when they should -----------------------------------------------


def _without(text: str, line_start: str) -> str:
    lines = text.splitlines()
    kept = [line for line in lines if not line.startswith(line_start)]
    assert len(kept) == len(lines) - 1, f"exactly one line of the example starts with {line_start!r}"
    return "\n".join(kept)


def test_a_key_whose_documentation_is_removed_is_named() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert undocumented(_without(text, "#spin_down_s =")) == []  # the CNC mill sets it
    assert undocumented(_without(_without(text, "#spin_down_s ="), "spin_down_s =")) == ["machines[].spin_down_s"]
    assert undocumented(_without(text, "#trainer_window_s =")) == ["access.trainer_window_s"]
    assert undocumented(_without(text, "#sun =")) == ["access.opening_hours.sun"]
    assert undocumented(_without(text, "#ada =")) == []  # the header alone names the table
    gone = _without(_without(text, "#[pricing.member_credit_limits]"), "#ada =")
    assert undocumented(gone) == ["pricing.member_credit_limits"]
    assert undocumented_options(_without(text, "#holdoff_s =")) == ["rdm6300: devices[].options.holdoff_s"]


def test_a_key_in_the_wrong_table_is_missing_from_its_own() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    moved = _without(text, "#relay_retries =").replace("[energy]\n", "[energy]\n#relay_retries = 2\n")
    assert undocumented(moved) == ["access.relay_retries"]
    with_it_live = text.replace("#[homeassistant]\n", "#[homeassistant]\nenabled = true\n")
    assert key_lines(with_it_live)[1] != []


def test_a_wrong_default_is_named() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "#keepalive_s = 30\n" in text and "#holdoff_s = 1.5\n" in text and "#day = 1\n" in text
    problems = wrong_defaults(text.replace("#keepalive_s = 30\n", "#keepalive_s = 31\n"))
    assert problems and "mqtt.keepalive_s is 30" in problems[0]
    problems = wrong_defaults(text.replace("#holdoff_s = 1.5\n", "#holdoff_s = 2.0\n"))
    assert problems and "decoder's default is 1.5" in problems[0]
    assert wrong_defaults(text.replace("#day = 1\n", '#day = "first"\n'))  # not even a valid value


class _Laser(BaseModel):
    kind: Literal["laser"]
    watts: int = 40


class _Lathe(BaseModel):
    kind: Literal["lathe"]
    swing_mm: int = 300


class _Toy(BaseModel):
    tools: list[Annotated[_Laser | _Lathe, Field(discriminator="kind")]] = []
    main: _Laser | None = None
    by_room: dict[str, _Lathe] = {}
    days: dict[Literal["mon", "tue"], str] | None = None
    steps: list[tuple[float, float]] = []


def test_key_paths_follow_lists_tables_unions_and_discriminated_unions() -> None:
    paths = {show(p) for p in key_paths(_Toy)}
    assert paths == {
        "tools", "tools[].kind", "tools[].watts", "tools[].swing_mm",
        "main", "main.kind", "main.watts",
        "by_room", "by_room.<key>.kind", "by_room.<key>.swing_mm",
        "days", "days.mon", "days.tue",
        "steps",
    }  # fmt: skip
    doc = {"tools": [{"kind": "laser", "watts": 1}, {"swing_mm": 2}], "by_room": {"a": {"kind": "lathe"}}}
    missing = {show(p) for p in key_paths(_Toy) if not present(doc, p)}
    assert missing == {
        "by_room.<key>.swing_mm",
        "main",
        "main.kind",
        "main.watts",
        "days",
        "days.mon",
        "days.tue",
        "steps",
    }
