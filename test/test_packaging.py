"""Two distributions: ``atdt_ros`` (the vehicle side, repository root) installs alone, and
``atdt_train`` (``workstation/``) depends on it, never the reverse.

Both wheels are built from a copy of the sources with this venv's setuptools, offline
(``--no-index --no-build-isolation``), and read back as wheels: their files, their
``Requires-Dist`` and their console scripts. The vehicle wheel is then installed with
``--no-deps`` into a fresh venv that sees no other package, where the chain format imports and
``atdt_train`` does not exist.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("atdt_ros", "atdt_train", "config", "launch", "resource", "workstation",
           "setup.py", "setup.cfg", "package.xml")
TRAINING = {"lightning", "pytorch-lightning", "mujoco", "tensorboard", "torchmetrics", "onnx",
            "onnxscript", "atdt-train"}


def _name(requirement: str) -> str:
    """The normalised project name of a requirement (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()


def _pinned(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            names.add(_name(line))
        elif line.startswith("-r "):
            names |= _pinned(path.parent / line[3:].strip())
    return names


class Wheel:
    """A built wheel read back: its files, its metadata and its console scripts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with zipfile.ZipFile(path) as z:
            self.files = z.namelist()
            info = next(n for n in self.files if n.endswith(".dist-info/METADATA"))
            self.metadata = email.message_from_bytes(z.read(info))
            points = next(n for n in self.files if n.endswith(".dist-info/entry_points.txt"))
            self.entry_points = z.read(points).decode()

    @property
    def requires(self) -> list[str]:
        return self.metadata.get_all("Requires-Dist") or []

    def top_level(self) -> set[str]:
        return {n.split("/", 1)[0] for n in self.files}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Wheel]:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:  # a copy: the build writes build/ and *.egg-info beside the sources
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(origin, src / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.egg-info", "build"))
        else:
            shutil.copy2(origin, src / name)
    out = tmp_path_factory.mktemp("wheels")
    for project in (".", "./workstation"):
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-index", "--no-deps", "--no-build-isolation",
             "--disable-pip-version-check", "-q", "-w", str(out), project],
            cwd=src, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    built = {p.name.split("-")[0]: Wheel(p) for p in out.glob("*.whl")}
    assert set(built) == {"atdt_ros", "atdt_train"}
    return built


def test_the_vehicle_wheel_holds_atdt_ros_alone(wheels) -> None:
    ros = wheels["atdt_ros"]
    assert ros.top_level() == {"atdt_ros", "atdt_ros-0.1.0.dist-info", "atdt_ros-0.1.0.data"}
    assert not [n for n in ros.files if "atdt_train" in n]
    assert "atdt_ros/artifact.py" in ros.files and "atdt_ros/replay/__init__.py" in ros.files
    requires = {_name(r) for r in ros.requires}
    assert requires and not requires & TRAINING
    assert {"torch", "onnxruntime", "numpy"} <= requires
    assert requires <= _pinned(REPO / "requirements-vehicle.txt")  # every one pinned for the vehicle
    # what colcon and launch_ros look for in the ROS package's share directory
    data = "atdt_ros-0.1.0.data/data/share/"
    for rel in ("atdt_ros/package.xml", "atdt_ros/launch/perception.launch.py",
                "atdt_ros/config/perception.yaml", "ament_index/resource_index/packages/atdt_ros"):
        assert data + rel in ros.files, rel
    assert "atdt_perception = atdt_ros.node:main" in ros.entry_points
    assert "atdt_replay = atdt_ros.replay:main" in ros.entry_points
    assert "atdt_train" not in ros.entry_points


def test_the_workstation_wheel_depends_on_the_vehicle_one(wheels) -> None:
    train = wheels["atdt_train"]
    assert train.top_level() == {"atdt_train", "atdt_train-0.1.0.dist-info", "atdt_train-0.1.0.data"}
    assert not [n for n in train.files if n.startswith("atdt_ros/")]
    assert "atdt_train/sim/domain.py" in train.files and "atdt_train/py.typed" in train.files
    assert "atdt_ros==0.1.0" in train.requires
    requires = {_name(r) for r in train.requires}
    assert {"lightning", "mujoco", "onnx"} <= requires
    assert requires - {"atdt-ros"} <= _pinned(REPO / "requirements.txt")
    shipped = {p.name for p in (REPO / "config" / "domains").glob("*.yaml")}
    data = "atdt_train-0.1.0.data/data/share/atdt_train/config/"
    assert {n[len(data + "domains/"):] for n in train.files if n.startswith(data + "domains/")} == shipped
    assert data + "experiments/demo.yaml" in train.files
    assert "atdt_train = atdt_train.cli:main" in train.entry_points


def test_the_vehicle_wheel_installs_alone_into_a_bare_venv(wheels, tmp_path) -> None:
    env = tmp_path / "vehicle"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env)
    python = env / "bin" / "python"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "--no-deps",
         "--disable-pip-version-check", "-q", str(wheels["atdt_ros"].path)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (env / "bin" / "atdt_perception").is_file() and (env / "bin" / "atdt_replay").is_file()
    assert not (env / "bin" / "atdt_train").exists()
    check = r"""
import importlib.metadata, importlib.util, sys
import atdt_ros.artifact  # the chain format: standard library only
assert atdt_ros.artifact.__file__.startswith(sys.prefix), atdt_ros.artifact.__file__
assert importlib.util.find_spec("atdt_train") is None
assert importlib.util.find_spec("lightning") is None and importlib.util.find_spec("torch") is None
print(sorted(importlib.metadata.distribution("atdt_ros").entry_points.names))
"""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    ran = subprocess.run([str(python), "-I", "-c", check], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env=clean)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.strip() == "['atdt_perception', 'atdt_replay']"
