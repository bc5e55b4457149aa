"""Starting and stopping ``atdt_perception`` as a subprocess (used by the replay and by ``make demo``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


from atdt_ros.replay.common import NODE_NAME, log


def start_node(model: str, namespace: str, params_file: str | None, backend: str | None,
               log_path: Path, trust_model_code: bool = False) -> subprocess.Popen:
    """Start ``atdt_perception`` for ``model`` as a subprocess with this environment.

    ``trust_model_code`` sets the node's parameter of that name (backends torch and tensorrt
    unpickle chain.pt2); False leaves the params file's value. The node publishes the chain's own
    depth (``depth_sky: keep``, ``depth_range_limits: false``): replay scores the chain as the
    offline evaluation does, and the REP 117 markers (+Inf sky, ±Inf out of range) would otherwise
    be scored as predictions."""
    exe = Path(sys.executable).parent / NODE_NAME
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "atdt_ros.node"]
    command += ["--ros-args", "-r", f"__ns:={namespace or '/'}"]
    if params_file:
        command += ["--params-file", params_file]
    command += ["-p", f"model_path:={os.path.abspath(model)}", "-p", "depth_sky:=keep",
                "-p", "depth_range_limits:=false"]
    if backend:
        command += ["-p", f"backend:={backend}"]
    if trust_model_code:
        command += ["-p", "trust_model_code:=true"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log_path, "wb")
    log.info("starting the node: %s (log %s)", " ".join(command), log_path)
    return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=os.environ.copy(),
                            start_new_session=True)


def stop_node(process: subprocess.Popen) -> int | None:
    """Ask the node to stop (SIGINT), then kill it if it does not within 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    return process.returncode
