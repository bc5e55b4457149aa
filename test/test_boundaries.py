"""The vehicle side stands alone: every atdt_ros module imports without the training side.

A child process blocks Lightning, MuJoCo, TensorBoard, torchmetrics, the ONNX exporter packages
and atdt_train itself (an import of any of them raises ModuleNotFoundError, as on a vehicle
installed from requirements-vehicle.txt), then imports every module of atdt_ros. rclpy may be
loaded only by the modules that talk ROS.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("lightning", "pytorch_lightning", "mujoco", "tensorboard", "torchmetrics", "onnx",
           "onnxscript", "atdt_train")
ROS_MODULES = ("atdt_ros.node", "atdt_ros.ros_messages", "atdt_ros.replay.link", "atdt_ros.classmap_msg")

CHILD = r"""
import importlib, importlib.abc, pkgutil, sys
BLOCKED, ROS = {blocked!r}, {ros!r}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked on the vehicle: {{name}}")
        return None

sys.meta_path.insert(0, Block())
import atdt_ros
names = sorted(m.name for m in pkgutil.walk_packages(atdt_ros.__path__, "atdt_ros."))
plain = [n for n in names if n not in ROS]
for name in plain:
    importlib.import_module(name)
assert "rclpy" not in sys.modules, "rclpy loaded by a module that does not talk ROS"
for name in ROS:
    importlib.import_module(name)
print("imported", len(names), ",".join(names))
"""


def test_every_atdt_ros_module_imports_without_the_training_side() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD.format(blocked=BLOCKED, ros=ROS_MODULES)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = done.stdout.split()[-1].split(",")
    assert set(ROS_MODULES) <= set(imported)
    assert {"atdt_ros.backends", "atdt_ros.artifact", "atdt_ros.files", "atdt_ros.privacy"} <= set(imported)


def test_the_vehicle_requirements_leave_out_the_training_side() -> None:
    vehicle = (REPO / "requirements-vehicle.txt").read_text().lower()
    pinned = {line.split("==")[0].strip() for line in vehicle.splitlines()
              if "==" in line and not line.lstrip().startswith("#")}
    assert not pinned & {"lightning", "mujoco", "tensorboard", "torchmetrics", "onnx", "onnxscript"}
    assert {"torch", "onnxruntime", "ros-rclpy"} <= pinned
    assert "-r requirements-vehicle.txt" in (REPO / "requirements.txt").read_text()
