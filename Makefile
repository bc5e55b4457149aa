# atdt: one-command set-up, tests and the end-to-end demo. Every target bootstraps .venv itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# DDS traffic stays on this machine: shared-memory transport only, a random domain per run.
export FASTDDS_BUILTIN_TRANSPORTS := SHM?max_msg_size=4MB&sockets_size=16MB
export ROS_DOMAIN_ID ?= $(shell shuf -i 1-200 -n 1)
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup test demo clean-venv

setup: $(VENV)/.stamp-project

$(VENV)/.stamp-python:
	$(PYTHON) -m venv $(VENV)
	touch $@

$(VENV)/.stamp-requirements: requirements.txt requirements-vehicle.txt $(VENV)/.stamp-python
	$(PIP) install -q -r requirements.txt
	touch $@

# msg/: atdt_msgs, and the vision_msgs subset (LabelInfo, VisionClass) the pip venv lacks
MSG_SOURCES := $(wildcard msg/msg/*.msg) msg/CMakeLists.txt msg/package.xml \
	$(wildcard msg/vision_msgs/msg/*.msg) msg/vision_msgs/CMakeLists.txt msg/vision_msgs/package.xml

$(VENV)/.stamp-msgs: $(VENV)/.stamp-requirements $(MSG_SOURCES) msg/build_into_venv.sh
	bash msg/build_into_venv.sh $(VENV)
	touch $@

# two distributions: atdt_ros (the vehicle side, setup.py) and atdt_train (workstation/setup.py,
# which depends on atdt_ros); their pinned dependencies are already in from requirements.txt.
# One after the other: replacing an atdt_ros that also held atdt_train removes its scripts.
$(VENV)/.stamp-project: $(VENV)/.stamp-msgs setup.py setup.cfg workstation/setup.py
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PIP) install -q --no-deps --no-build-isolation -e ./workstation
	touch $@

test: setup
	$(PY) -m pytest -q test

demo: setup
	$(VENV)/bin/atdt_train demo

clean-venv:
	rm -rf $(VENV)
