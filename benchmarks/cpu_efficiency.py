"""CPU efficiency of the Eq. 4 chain: achieved GFLOP/s against this CPU's matmul peak.

Measures, in one run: the matmul peak (fp32 and bf16, 2048^2), the chain's FLOPs, and the
chain's time at 192x384 (ResNet-18) under each CPU setting: eager fp32, channels_last, bf16
autocast, the deployed torch.export program (.pt2), that program under torch.compile (inductor
with freezing, the node's ``compile: true``) and
ONNX Runtime. Prints a table with GFLOP/s and the fraction of the matching peak.

    nice -n 10 .venv/bin/python benchmarks/cpu_efficiency.py [--size 192x384] [--rounds 10]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="192x384")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--model", default=None, help="exported chain directory (default: a seeded one)")
    ap.add_argument("--threads", type=int, default=0, help="torch/ORT threads (0: default)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to build)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import numpy as np
    import torch

    from atdt_ros.backends import open_backend
    from atdt_train.export import build_chain

    h, w = (int(v) for v in args.size.split("x"))
    common.set_threads(args.threads)
    print(common.machine())
    peak32 = common.matmul_peak("float32")
    peak16 = common.matmul_peak("bfloat16", n=512)  # small: emulated bf16 is very slow
    print(f"matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s "
          f"(CPU flags: {common.cpu_flags()})", flush=True)
    from atdt_ros.backends import native_bf16

    with_bf16 = native_bf16()  # AVX-512 BF16 / AMX; emulated bf16 is far slower than fp32
    if not with_bf16:
        print("bf16 settings skipped: this CPU has no native bf16, its bf16 matmul is "
              f"{peak32 / max(peak16, 1e-9):.0f}x slower than fp32", flush=True)

    n1, n2, g = common.seeded_networks()
    chain = build_chain(n1, n2, g, "dep2sem")
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, h, w)).astype(np.float32))
    flops = common.chain_flops(chain, x)
    print(f"chain FLOPs at {h}x{w}: {flops / 1e9:.2f} GFLOP")

    model_dir = Path(args.model) if args.model else common.exported_chain((h, w))
    xn = x.numpy()
    pt2 = open_backend(model_dir, "torch", threads=args.threads, trust_model_code=True)
    ort = open_backend(model_dir, "onnxruntime", threads=args.threads)

    cl = build_chain(n1, n2, g, "dep2sem").to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def eager(m, inp, bf16=False):
        def run():
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return m(inp)
        return run

    variants = {
        "eager fp32": (eager(chain, x), peak32),
        "eager fp32 channels_last": (eager(cl, x_cl), peak32),
        "torch.export .pt2 (node backend torch)": (lambda: pt2.infer(xn), peak32),
        "ONNX Runtime (node backend onnxruntime)": (lambda: ort.infer(xn), peak32),
    }
    if with_bf16:
        pt2_bf16 = open_backend(model_dir, "torch", threads=args.threads, precision="bf16",
                                trust_model_code=True)
        variants["eager bf16 autocast + channels_last"] = (eager(cl, x_cl, True), peak16)
        variants[".pt2 bf16 (node precision bf16)"] = (lambda: pt2_bf16.infer(xn), peak16)
    if not args.no_compile:  # the node's compile: true (torch.compile of the .pt2, freezing)
        settings = [("fp32", "torch.compile fp32 (node compile)")]
        if with_bf16:
            settings.append(("bf16", "torch.compile bf16 (node compile + bf16)"))
        for precision, name in settings:
            print(f"compiling {name} ...", flush=True)  # noqa: T201
            backend = open_backend(model_dir, "torch", threads=args.threads, precision=precision,
                                   compile=True, trust_model_code=True)
            variants[name] = (lambda b=backend: b.infer(xn), peak16 if precision == "bf16" else peak32)
    times = common.interleaved({k: v[0] for k, v in variants.items()}, args.rounds)
    print(f"\n{'setting':42s} {'min ms':>8s} {'median':>8s} {'GFLOP/s':>8s} {'% peak':>7s} "
          f"{'vs eager':>8s}")
    base = min(times["eager fp32"])
    for name, (_, peak) in variants.items():
        t, med = min(times[name]), common.median(times[name])
        gflops = flops / t / 1e9
        print(f"{name:42s} {t * 1e3:8.1f} {med * 1e3:8.1f} {gflops:8.0f} {100 * gflops / peak:6.0f}% "
              f"{base / t:7.2f}x")
    print("\nGFLOP/s and speed-ups from the fastest of the interleaved rounds (least disturbed by "
          "other load);\n% peak: against the fp32 matmul peak, or the bf16 one for bf16 settings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
