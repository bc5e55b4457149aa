"""The workstation side: the ``atdt_train`` distribution (simulator, training, evaluation, export).

It depends on the vehicle side, ``atdt_ros`` (the repository root's setup.py), for the chain
format it writes and the metrics it shares; never the other way round. The package's source is
the repository's ``atdt_train/``, one level up: ``pip install ./workstation`` (``make setup``
installs it editable). The exact pins of a repeatable install are in requirements.txt.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent.parent
VERSION = "0.1.0"

# What atdt_train imports from PyPI beyond atdt_ros's own requirements; test/test_packaging.py
# checks that every name here is pinned in requirements.txt.
REQUIRES = [
    f"atdt_ros=={VERSION}",
    "numpy",
    "opencv-python-headless",
    "torch",
    "tqdm",
    "rosbags",
    "pyyaml",
    "mujoco",
    "lightning",
    "tensorboard",
    "onnx",
    "onnxscript",
]


def _relative(path: Path) -> str:
    return str(Path("..") / path.relative_to(ROOT))


setup(
    name="atdt_train",
    version=VERSION,
    description="AT/DT (Learning Across Tasks and Domains), workstation side: simulated domains, "
                "the four AT/DT stages, evaluation, reports and export of the deployable chain",
    license="Apache-2.0",
    python_requires=">=3.11",
    package_dir={"atdt_train": "../atdt_train"},
    packages=find_packages(where=str(ROOT), include=["atdt_train", "atdt_train.*"]),
    package_data={"atdt_train": ["py.typed"]},
    install_requires=REQUIRES,
    data_files=[
        ("share/atdt_train/config/domains",
         [_relative(p) for p in sorted((ROOT / "config" / "domains").glob("*.yaml"))]),
        ("share/atdt_train/config/experiments",
         [_relative(p) for p in sorted((ROOT / "config" / "experiments").glob("*.yaml"))]),
    ],
    zip_safe=False,
    entry_points={"console_scripts": ["atdt_train = atdt_train.cli:main"]},
)
