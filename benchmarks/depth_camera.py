"""Which camera quantities set the metric scale of Sem->Dep depth: a diagnostic.

For a trained Sem->Dep experiment, runs the Baseline (N2) and AT/DT (D2(G(E1(x)))) on test sets
rendered with other cameras and prints, per set, the median over frames of median(truth / raw
prediction), where "raw" reads the output in A's units (metres for A's camera), and the Abs Rel
and delta<1.25 of three conversions of the raw output to metres:

- ``metres``:        raw (no camera handling),
- ``focal``:         raw x f / f_ref (the shipped ``depth.focal_normalised``),
- ``focal*height``:  raw x (f / f_ref) x (h / h_ref), h the set's nominal camera height: the
  scale of ground-plane geometry, where a road pixel y rows below the horizon is at
  Z = f h / y, so a network that learnt A's f_ref h_ref reads B's road at Z f_ref h_ref / (f h).

Object sizes scale with f alone; the road's rows with f x h. The measured medians say how much
each cue weighs. Each set is ``NAME=FILELIST:HEIGHT_M``:

    .venv/bin/python benchmarks/depth_camera.py runs/s2d_demo.yaml --height-ref 2.1 \
        B=runs/demo/data/B/test.txt:1.3 high=runs/variants/high/test.txt:2.1 ...

(docs/results.md, "Sem→Dep: what sets the scale", has the commands that render the sets.)
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from atdt_ros.metrics import DepthMetric
from atdt_train.adabn import eval_loader
from atdt_train.checkpoints import load_task_net, load_transfer_net
from atdt_train.config import load_experiment
from atdt_train.models import transfer
from atdt_train.stages import e1_stage, make_dataset, resolve_focal_ref

CONVERSIONS = ("metres", "focal", "focal*height")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", help="a trained Sem->Dep experiment YAML")
    ap.add_argument("sets", nargs="+", metavar="NAME=FILELIST:HEIGHT_M")
    ap.add_argument("--height-ref", type=float, required=True, help="A's nominal camera height (m)")
    args = ap.parse_args()
    exp = load_experiment(args.experiment)
    if exp.task2 != "depth":
        ap.error(f"{args.experiment} is {exp.direction}; this diagnostic needs task 2 = depth (sem2dep)")
    f_ref = resolve_focal_ref(exp) or 1.0
    e1 = load_task_net(exp, e1_stage(exp, "B")).encoder
    n2, g = load_task_net(exp, "n2"), load_transfer_net(exp)
    predictors = {"Baseline": n2, "AT/DT": lambda x: transfer(e1, g, n2.decoder, x)}
    print(f"{args.experiment}: f_ref {f_ref:.1f} px, h_ref {args.height_ref} m")
    for spec in args.sets:
        name, _, rest = spec.partition("=")
        filelist, _, height = rest.rpartition(":")
        if not (name and filelist and height):
            ap.error(f"set {spec!r}: expected NAME=FILELIST:HEIGHT_M")
        h = float(height)
        dataset = make_dataset(load_experiment(args.experiment, [f"domains.B.test={filelist}"]), "B", "test")
        ratios: dict[str, list[float]] = {k: [] for k in predictors}
        metrics = {(k, c): DepthMetric(exp.depth.min_depth, exp.depth.max_depth)
                   for k in predictors for c in CONVERSIONS}
        focal = float("nan")
        with torch.no_grad():
            for batch in eval_loader(dataset, exp.evaluation.batch_size):
                gt, valid = batch["depth"].numpy(), batch["depth_valid"].numpy()
                for k, net in predictors.items():
                    raw = net(batch["image"])[:, 0].float().numpy()
                    for i in range(raw.shape[0]):
                        focal = float(batch["focal"][i])
                        v = valid[i] & (gt[i] > exp.depth.min_depth) & (gt[i] < exp.depth.max_depth)
                        ratios[k].append(float(np.median(gt[i][v] / np.maximum(raw[i][v], 1e-3))))
                        factors = {"metres": 1.0, "focal": focal / f_ref,
                                   "focal*height": focal / f_ref * h / args.height_ref}
                        for c, factor in factors.items():
                            metrics[(k, c)].update(raw[i:i + 1] * factor, gt[i:i + 1], valid[i:i + 1])
        print(f"{name} ({len(dataset)} frames): f/f_ref {focal / f_ref:.2f}, h/h_ref {h / args.height_ref:.2f}, "
              f"f*h ratio {focal / f_ref * h / args.height_ref:.2f}")
        for k in predictors:
            cells = []
            for c in CONVERSIONS:
                m = metrics[(k, c)].compute()
                cells.append(f"{c} AbsRel {m['abs_rel']:.3f} d1 {100 * m['delta1']:.1f}")
            print(f"  {k:8s} median truth/raw {np.median(ratios[k]):.2f} | " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
