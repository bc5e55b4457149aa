"""Shared pieces of the benchmarks: a seeded ResNet-18 chain, CPU matmul peak, interleaved timing.

Timings do not depend on what the weights learned, so the benchmarks use freshly initialised
(seeded) networks of the deployed architecture; pass ``--model DIR`` to time a trained export.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

import atdt_ros  # noqa: F401  (first: library telemetry off before anything loads)

LOG = logging.getLogger("benchmarks")


SHIPPED_EXPERIMENT = Path(__file__).resolve().parent.parent / "config" / "experiments" / "sim_dep2sem.yaml"


@functools.lru_cache(maxsize=1)
def shipped_model() -> tuple[tuple[int, ...], int | None]:
    """(decoder widths, G width) of the shipped CPU experiment, the architecture the benchmarks time."""
    from atdt_train.config import load_experiment
    from atdt_train.lit import decoder_widths

    exp = load_experiment(SHIPPED_EXPERIMENT)
    return decoder_widths(exp), exp.model.transfer_hidden


def seeded_networks(depth: int = 18, seed: int = 0, hidden: int | None = None,
                    widths: tuple[int, ...] | None = None):
    """(N1 depth, N2 semantic, G) in eval mode, direction dep2sem, as ``atdt_train run`` builds them.

    Decoder widths and G's width default to those of the shipped experiment.
    """
    import torch

    from atdt_train.models import TaskNet, TransferNet

    shipped_widths, shipped_hidden = shipped_model()
    widths = widths or shipped_widths
    hidden = hidden or shipped_hidden
    torch.manual_seed(seed)
    n1 = TaskNet("depth", depth, decoder_widths=widths).eval()
    n2 = TaskNet("semantic", depth, decoder_widths=widths).eval()
    g = TransferNet(n1.encoder.out_channels, hidden=hidden).eval()
    return n1, n2, g


def exported_chain(size: tuple[int, int], formats=("pt2", "onnx"), out: Path | None = None) -> Path:
    """Export the seeded chain at ``size`` into ``out`` unless that very chain is already there.

    By default ``out`` is private to this user (``~/.cache/atdt/benchmarks/chain_HxW``): the
    benchmarks load its .pt2 with ``trust_model_code``, which a chain in the shared temporary
    directory, where another user can put one first, must never get.
    """
    from atdt_ros.artifact import ArtifactError, load_metadata
    from atdt_ros.privacy import private_cache_dir
    from atdt_train.export import build_chain, export_chain, model_hash

    out = out or private_cache_dir("benchmarks") / f"chain_{size[0]}x{size[1]}"
    n1, n2, g = seeded_networks()
    wanted = model_hash(build_chain(n1, n2, g, "dep2sem"), size, "dep2sem")
    try:
        md = load_metadata(out)
        if md.model_hash == wanted and set(formats) <= set(md.formats):
            return out
    except ArtifactError:
        pass
    frames = np.random.default_rng(0).normal(size=(2, 3, *size)).astype(np.float32)
    LOG.info("exporting a seeded chain at %dx%d to %s", size[0], size[1], out)
    export_chain(n1, n2, g, out, direction="dep2sem", input_size=size, frames=frames,
                 formats=formats)
    return out


def matmul_peak(dtype_name: str = "float32", n: int = 2048, seconds: float = 2.0) -> float:
    """GFLOP/s of an n x n matmul in this process's torch thread setting (best of repeats)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def cpu_flags() -> str:
    """The CPU's vector extensions that matter here (avx2, avx512*, amx*)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    wanted = sorted(f for f in flags if f.startswith(("avx2", "avx512", "amx", "fma")))
    return " ".join(wanted) or "none of avx2/avx512/amx"


def chain_flops(module, x) -> int:
    """FLOPs of one forward pass (multiply-add = 2), counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module(x)
    return counter.get_total_flops()


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Time each function ``rounds`` times, alternating between them so load drifts hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def summary(samples: list[float]) -> str:
    """min / median / p90 in milliseconds."""
    q = np.percentile(np.asarray(samples) * 1e3, [50, 90])
    return f"min {min(samples) * 1e3:7.1f} ms, median {q[0]:7.1f} ms (p90 {q[1]:.1f}, n={len(samples)})"


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads in torch (0 keeps its default)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def median(samples: list[float]) -> float:
    """Median of the samples."""
    return statistics.median(samples)


def machine() -> str:
    """One line describing the CPU, cores and library versions."""
    import os
    import platform

    import torch

    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), load average {load[0]:.1f}/{load[1]:.1f}")
