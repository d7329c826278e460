# The two commands of the README. Both create .venv and install into it first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VENV_ESPHOME := .venv-esphome
ESPHOME_VERSION := 2026.6.5
VENV_GRAFANA := .venv-grafana

.PHONY: demo demo-month test lint typecheck services bench clean dashboards

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# ESPHome validates the firmware-bridge node files (tests/firmware_bridge/). It has a
# virtualenv of its own: it pins its dependencies, which must not meet the gateway's.
# Pinned because ESPHome changes its configuration schemas often.
$(VENV_ESPHOME)/bin/esphome:
	test -x $(VENV_ESPHOME)/bin/python || $(PY) -m venv $(VENV_ESPHOME)
	$(VENV_ESPHOME)/bin/python -m pip install -q 'esphome==$(ESPHOME_VERSION)'

# grafana-client for `commonwatt grafana push`'s test, in a virtualenv of its own: it pulls
# niquests, which installs urllib3-future under the name urllib3 and would change every library
# of the gateway's environment that imports it.
$(VENV_GRAFANA)/bin/python:
	test -x $(VENV_GRAFANA)/bin/python || $(PY) -m venv $(VENV_GRAFANA)
	$(VENV_GRAFANA)/bin/python -m pip install -q 'grafana-client>=5.1'

dashboards: $(STAMP)
	$(BIN)/python dashboards/build.py

demo: $(STAMP)
	$(BIN)/commonwatt demo

# Last month of the demo lab in about a minute: statements, community report, audit verify.
demo-month: $(STAMP)
	$(BIN)/commonwatt demo --month

# The services the integration tests start themselves (Mosquitto, VictoriaMetrics),
# installed from Debian's packages when missing.
services:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients; }
	@command -v mosquitto_sub >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto-clients; }
	@command -v victoria-metrics >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq victoria-metrics; }
	@test -x /usr/bin/chromium || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) $(VENV_ESPHOME)/bin/esphome $(VENV_GRAFANA)/bin/python services lint typecheck
	$(BIN)/python -m pytest -n 2 -q

bench: $(STAMP) services
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) $(VENV_ESPHOME) $(VENV_GRAFANA) .pytest_cache .mypy_cache .ruff_cache
