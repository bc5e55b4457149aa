"""The procedural MuJoCo street simulator behind ``atdt_train simulate``.

``domain`` holds the YAML preset schema, ``scene`` builds random streets as MuJoCo models,
``render`` renders RGB, exact depth and class labels, ``command`` writes the dataset layout.
"""

import os as _os
import sys as _sys

MUJOCO_IMPORTED_WITHOUT_GL = "mujoco" in _sys.modules and "MUJOCO_GL" not in _os.environ
"""True when mujoco was imported before a GL backend was chosen (then EGL cannot be used)."""

# MuJoCo picks its GL backend when first imported: headless EGL unless the user chose another.
_os.environ.setdefault("MUJOCO_GL", "egl")
if _os.environ["MUJOCO_GL"] == "egl":
    _os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
