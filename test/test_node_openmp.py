"""The node's OpenMP spin setting: libgomp's GOMP_SPINCOUNT set by main before torch loads,
unless the user chose a wait policy or a spin count."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from atdt_ros.node import GOMP_SPINCOUNT

# main() with arguments rcl refuses: it returns 2 before any DDS starts; then the environment
# it left, and whether torch (which reads the setting when it loads libgomp) was loaded yet
PROBE = """
import os, sys
from atdt_ros.node import main
code = main(["atdt_perception", "--ros-args", "--remap"])
print(code, os.environ.get("GOMP_SPINCOUNT"), "torch" in sys.modules)
"""


@pytest.mark.parametrize("env, expected", [
    ({}, GOMP_SPINCOUNT),
    ({"GOMP_SPINCOUNT": "7"}, "7"),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
])
def test_main_sets_the_spin_count_unless_chosen(env, expected) -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True,
                         text=True, timeout=60)
    code, spin, torch_loaded = out.stdout.split()[-3:]
    assert (code, spin, torch_loaded) == ("2", str(expected), "False"), out.stderr
