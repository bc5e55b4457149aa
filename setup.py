"""Installs atdt_ros (vehicle side) and atdt_train (workstation side).

Used by pip (``make setup`` installs it editable into .venv) and by colcon's ament_python build
on a full ROS 2 install (package.xml build_type ament_python).
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "atdt_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="AT/DT (Learning Across Tasks and Domains): training CLI and ROS 2 perception node",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["atdt_ros", "atdt_ros.*", "atdt_train", "atdt_train.*"]),
    package_data={"atdt_train": ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.py")),
        ("share/" + PACKAGE + "/config", glob("config/*.yaml")),
        ("share/" + PACKAGE + "/config/domains", glob("config/domains/*.yaml")),
        ("share/" + PACKAGE + "/config/experiments", glob("config/experiments/*.yaml")),
    ],
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "atdt_train = atdt_train.cli:main",
            "atdt_perception = atdt_ros.node:main",
            "atdt_replay = atdt_ros.replay:main",
        ],
    },
)
