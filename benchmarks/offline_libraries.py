"""Exercise each library the project loads, one at a time, for ``offline_check.py`` to watch.

Each part runs in its own child process (so one library's behaviour is not masked by another's
import) with ``HOME`` in a fresh temporary directory, then lists what the library left there
(a telemetry store or device id would show up). Run it under the offline check:

    .venv/bin/python benchmarks/offline_check.py --seconds 10 -- .venv/bin/python benchmarks/offline_libraries.py

and, to see what one library alone sends, ``offline_libraries.py --only lightning`` under the check.
``--raw-onnxruntime`` also runs ONNX Runtime *without* the project's import first (telemetry on,
as a bare ``import onnxruntime`` has it): the control that shows the check can see telemetry.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTS: dict[str, str] = {
    "torch": """
import atdt_ros, torch
x = torch.randn(1, 3, 64, 64)
y = torch.nn.Conv2d(3, 8, 3)(x).sum()
y.backward() if y.requires_grad else None
""",
    "lightning+tensorboard": """
import atdt_ros, torch, lightning as L
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
class M(L.LightningModule):
    def __init__(self):
        super().__init__(); self.l = torch.nn.Linear(4, 1)
    def training_step(self, b, i):
        loss = self.l(b[0]).pow(2).mean(); self.log("loss", loss); return loss
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), 0.1)
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 4)), batch_size=4)
out = sys.argv[1]
t = L.Trainer(max_steps=4, logger=[CSVLogger(out), TensorBoardLogger(out)], enable_progress_bar=False,
              default_root_dir=out, log_every_n_steps=1)
t.fit(M(), data)
""",
    "matplotlib": """
import atdt_ros, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(); ax.plot([0, 1], [1, 0]); ax.set_title("probe"); fig.savefig(sys.argv[1] + "/f.png")
""",
    "mujoco": """
import os; os.environ.setdefault("MUJOCO_GL", "egl")
import atdt_ros, mujoco
m = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='1'/></worldbody></mujoco>")
r = mujoco.Renderer(m, 32, 32); d = mujoco.MjData(m); mujoco.mj_forward(m, d); r.update_scene(d); r.render()
""",
    "onnxruntime (project import)": """
import atdt_ros, numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto
g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
s = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                         providers=["CPUExecutionProvider"])
s.run(None, {"x": np.ones(1, np.float32)})
""",
}
RAW_ORT = PARTS["onnxruntime (project import)"].replace("import atdt_ros, ", "import ")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="run only the part whose name starts with this")
    ap.add_argument("--wait", type=float, default=20.0,
                    help="seconds each part stays alive after its work (telemetry is sent late)")
    ap.add_argument("--raw-onnxruntime", action="store_true",
                    help="also ONNX Runtime imported without the project first (control)")
    args = ap.parse_args()
    parts = dict(PARTS)
    if args.raw_onnxruntime:
        parts["onnxruntime (bare import, control)"] = RAW_ORT
    failed = 0
    for name, code in parts.items():
        if args.only and not name.startswith(args.only):
            continue
        with tempfile.TemporaryDirectory(prefix="offline_home.") as home:
            env = {k: v for k, v in os.environ.items()
                   if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR")}
            env["HOME"] = home
            work = Path(home) / "work"
            work.mkdir()
            script = "import sys, time\n" + code + f"\ntime.sleep({args.wait})\n"
            started = time.monotonic()
            done = subprocess.run([sys.executable, "-c", script, str(work)], env=env,
                                  capture_output=True, text=True)
            left = sorted(str(p.relative_to(home)) for p in Path(home).rglob("*")
                          if not str(p.relative_to(home)).startswith("work"))
            status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
            failed += done.returncode != 0
            print(f"{name:36s} {status:8s} {time.monotonic() - started:5.1f} s  left in HOME: "
                  f"{', '.join(left) or 'nothing'}", flush=True)
            if done.returncode:
                print(done.stderr[-2000:], flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
