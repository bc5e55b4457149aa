"""Shared test set-up: DDS stays on this machine (shared memory only, a random domain id)."""

import os
import random

os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = "SHM?max_msg_size=4MB&sockets_size=16MB"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))
os.environ.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
# sleeping (not spinning) OpenMP threads: spinning made torch steps ~15x slower on a busy machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
