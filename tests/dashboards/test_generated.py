"""The committed dashboards are what `dashboards/build.py` generates now: `make dashboards` after a change."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("grafana_foundation_sdk")

ROOT = Path(__file__).resolve().parents[2]


def _build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboards_build", ROOT / "dashboards" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_json_is_not_stale() -> None:
    generated: dict[str, str] = _build().generate()
    committed = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "dashboards" / "json").glob("*.json")}
    assert set(committed) == set(generated), "run `make dashboards`"
    for name, text in generated.items():
        assert committed[name] == text, f"dashboards/json/{name} is stale: run `make dashboards`"


def test_every_panel_is_titled_described_and_has_a_unit() -> None:
    for name, text in _build().generate().items():
        board = json.loads(text)
        assert board["uid"].startswith("commonwatt-") and board["title"] and board["description"]
        assert {v["name"] for v in board["templating"]["list"]} >= {"site"}
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            where = f"{name}: {panel.get('title')}"
            assert panel.get("title") and panel.get("description"), where
            assert panel["datasource"] == {"type": "prometheus", "uid": "commonwatt-vm"}, where
            defaults = panel["fieldConfig"]["defaults"]
            assert defaults.get("thresholds", {}).get("steps"), where
            if panel["type"] != "state-timeline":
                assert defaults.get("unit"), where
