"""The vehicle side: the ``atdt_ros`` distribution (node, replay, backends, the chain format).

It installs alone: its requirements name no training library (Lightning, MuJoCo, TensorBoard,
the ONNX exporter) and nothing of ``atdt_train``; the workstation side is its own distribution,
``workstation/setup.py``, which depends on this one. Used by pip (``make setup`` installs both
editable into .venv) and by colcon's ament_python build on a full ROS 2 install (package.xml
build_type ament_python), where rclpy and the messages come from ROS 2 (docs/ros.md).
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "atdt_ros"
VERSION = "0.1.0"

# What the vehicle's Python code imports from PyPI; the exact pins of a repeatable install are in
# requirements-vehicle.txt (with the ROS 2 wheels of a pip-only machine, which a ROS 2 install
# provides instead). test/test_packaging.py checks that every name here is pinned there.
REQUIRES = [
    "numpy",
    "opencv-python-headless",
    "torch",
    "onnxruntime",
    "tqdm",
    "matplotlib",
    "rosbags",
]

setup(
    name=PACKAGE,
    version=VERSION,
    description="AT/DT (Learning Across Tasks and Domains), vehicle side: the ROS 2 perception "
                "node, rosbag replay and the exported-chain format",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["atdt_ros", "atdt_ros.*"]),
    install_requires=REQUIRES,
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.py")),
        ("share/" + PACKAGE + "/config", glob("config/*.yaml")),
    ],
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "atdt_perception = atdt_ros.node:main",
            "atdt_replay = atdt_ros.replay:main",
        ],
    },
)
