"""Runtime set-up of a training or evaluation process: its rank in a distributed run, CPU
threads, the precision this machine can run fast, and Lightning's log output."""

from __future__ import annotations

import logging
import os

from .config import Experiment

log = logging.getLogger(__name__)


def global_rank() -> int:
    """This process's rank in a distributed run (0 when not distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    # processes started by Lightning itself: nonzero unless both node and local rank are 0
    return int(os.environ.get("LOCAL_RANK", 0)) + int(os.environ.get("NODE_RANK", 0))


def on_cpu(exp: Experiment) -> bool:
    """True when the experiment's networks run on the CPU."""
    import torch

    return exp.trainer.accelerator == "cpu" or (exp.trainer.accelerator == "auto" and not torch.cuda.is_available())


def configure_threads(exp: Experiment) -> None:
    """CPU threads per process: the configured number, or the cores shared by local processes."""
    import torch

    if exp.trainer.threads > 0:
        torch.set_num_threads(exp.trainer.threads)
        return
    if not on_cpu(exp):
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 0)) or (exp.trainer.devices if isinstance(exp.trainer.devices, int) else 1)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))


def adapt_to_machine(exp: Experiment) -> None:
    """Fall back to fp32 where mixed precision would be slow or unsupported on this CPU.

    bf16 convolutions are fast only with oneDNN's bf16 kernels (AVX-512 BF16 / AMX); elsewhere
    PyTorch uses a slow reference path (measured ~10x slower than fp32 on an AVX2 CPU), and
    channels_last only pays off together with bf16. fp16 mixed precision needs a GPU.
    """
    import torch

    t = exp.trainer
    if not on_cpu(exp) or t.precision == "32":
        return
    if t.precision == "bf16-mixed" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return
    log.warning("precision %s is %s on this CPU (%s): using 32 and channels_last off", t.precision,
                "slow" if t.precision == "bf16-mixed" else "unsupported", torch.backends.cpu.get_cpu_capability())
    t.precision, t.channels_last = "32", False


def quiet_lightning() -> None:
    """One log line per message (ours and Lightning's alike), no advertising tips."""
    if logging.getLogger().handlers:  # the root logger prints: Lightning's own handlers would repeat
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            for handler in list(logging.getLogger(name).handlers):
                logging.getLogger(name).removeHandler(handler)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(getattr(f, "atdt", False) for f in rank_zero.filters):
        def no_tips(record: logging.LogRecord) -> bool:
            return "Tip:" not in str(record.msg)
        no_tips.atdt = True  # type: ignore[attr-defined]
        rank_zero.addFilter(no_tips)
