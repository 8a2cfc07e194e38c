# The two set-up commands of the README: `make demo` and `make test` (what CI runs).
# Every target creates .venv/ in the repository root when it is missing or stale.
# `make test-fast` leaves out the tests marked slow (demo, launch, packaging, node, training, exports) for the
# edit loop;
# `make study` runs the localization study on more routes with the model `make demo` trained.
SHELL := /bin/bash
PY := .venv/bin/python
# DDS discovery stays on loopback for everything started from here.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST

.PHONY: venv demo study test test-fast bench
venv:
	@bash scripts/setup_venv.sh

demo: venv
	$(PY) -m training.cli demo

study: venv
	$(PY) -m training.cli study

test: venv
	$(PY) -m pytest -q test

test-fast: venv
	$(PY) -m pytest -q -m "not slow" test

bench: venv
	$(PY) -m training.cli bench --variants efficientnet_lite0
