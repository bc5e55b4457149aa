"""Two tasks for the price of one? The Eq. 4 chain (both outputs) against one task network.

The chain runs E1 once and both decoders plus G: D1(E1(x)) and D2(G(E1(x))). Its cost relative
to a single TaskNet N1 = D1∘E1 is printed as FLOPs and as time (eager fp32, and bf16 autocast +
channels_last where the CPU has native bf16, else fp32 channels_last), measured interleaved in
one run, with the per-part FLOP breakdown.
Two separate networks would cost 2x.

    nice -n 10 .venv/bin/python benchmarks/two_tasks.py [--size 192x384] [--hidden 512]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="192x384")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--hidden", type=int, nargs="*", default=[512, 256, 128],
                    help="G widths to compare (model.transfer_hidden; default 512 = min(C, 512))")
    args = ap.parse_args()
    import numpy as np
    import torch

    from atdt_train.export import build_chain

    h, w = (int(v) for v in args.size.split("x"))
    common.set_threads(args.threads)
    print(common.machine())
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, h, w)).astype(np.float32))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    from atdt_ros.backends import native_bf16

    bf16 = native_bf16()  # emulated bf16 is many times slower than fp32: not worth timing
    second = "bf16+cl" if bf16 else "fp32+cl"
    print(f"second setting: {second} (native bf16: {bf16}; CPU flags: {common.cpu_flags()})")
    fns, flops = {}, {}
    for hidden in args.hidden:
        n1, n2, g = common.seeded_networks(hidden=hidden)
        chain = build_chain(n1, n2, g, "dep2sem")
        f = n1.encoder(x)
        parts = {"E1": common.chain_flops(n1.encoder, x),
                 "D1": common.chain_flops(lambda t: n1.decoder(t, (h, w)), f),
                 "G": common.chain_flops(g, f),
                 "D2": common.chain_flops(lambda t: n2.decoder(t, (h, w)), f)}
        flops[hidden] = parts
        if hidden == args.hidden[0]:
            fns["single fp32"] = _runner(n1, x, False)
            cl1 = common.seeded_networks(hidden=hidden)[0].to(memory_format=torch.channels_last)
            fns[f"single {second}"] = _runner(cl1, x_cl, bf16)
        fns[f"chain G{hidden} fp32"] = _runner(chain, x, False)
        fns[f"chain G{hidden} {second}"] = _runner(
            build_chain(*common.seeded_networks(hidden=hidden), "dep2sem")
            .to(memory_format=torch.channels_last), x_cl, bf16)
    for hidden, p in flops.items():
        single, total = p["E1"] + p["D1"], sum(p.values())
        print(f"G hidden {hidden}: GFLOP E1 {p['E1'] / 1e9:.2f}, D1 {p['D1'] / 1e9:.2f}, "
              f"G {p['G'] / 1e9:.2f}, D2 {p['D2'] / 1e9:.2f}; single N1 {single / 1e9:.2f}, "
              f"chain {total / 1e9:.2f}: FLOP ratio {total / single:.2f}x")
    times = common.interleaved(fns, args.rounds)
    for name, samples in times.items():
        print(f"{name:24s} {common.summary(samples)}")
    for prec in ("fp32", second):
        single = times[f"single {prec}"]
        for hidden in args.hidden:
            chain = times[f"chain G{hidden} {prec}"]
            print(f"time ratio chain/single, {prec}, G hidden {hidden}: "
                  f"{min(chain) / min(single):.2f}x fastest rounds, "
                  f"{common.median(chain) / common.median(single):.2f}x medians "
                  f"(target <= 1.3x; two networks 2x)")
    return 0


def _runner(module, x, bf16: bool):
    import torch

    def run():
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return module(x)
    return run


if __name__ == "__main__":
    sys.exit(main())
