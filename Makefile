# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv/ in the repository root when it is missing or stale.
SHELL := /bin/bash
PY := .venv/bin/python
# DDS discovery stays on loopback for everything started from here.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST

.PHONY: venv demo test bench
venv:
	@bash scripts/setup_venv.sh

demo: venv
	$(PY) -m training.cli demo

test: venv
	$(PY) -m pytest -q test

bench: venv
	$(PY) -m training.cli bench --variants efficientnet_lite0
