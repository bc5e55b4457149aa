"""Where evaluation and the self-training stage run the trained networks: the device, the
autocast of the training precision, an evaluation loader, and AdaBN (batch-norm statistics
re-estimated on a domain's unlabelled images; Li et al., "Revisiting Batch Normalization for
Practical Domain Adaptation", 2016)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from .config import Experiment

Predictor = Callable[[torch.Tensor], torch.Tensor]


def inference_device(exp: Experiment) -> torch.device:
    """CUDA when the experiment's accelerator allows it and one is present, else the CPU."""
    if exp.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def precision_autocast(exp: Experiment, device: torch.device) -> Any:
    """Autocast matching ``trainer.precision`` (bf16, fp16 on CUDA), or no autocast."""
    if exp.trainer.precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if exp.trainer.precision == "16-mixed" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def input_preparer(device: torch.device, channels_last: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images of a loader's batch onto ``device``, channels-last when the experiment trains so."""

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    return prepare


def eval_loader(dataset, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A single-process loader; shuffled reproducibly by ``seed`` when asked."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=0, generator=generator)


def has_batchnorm(*modules: nn.Module) -> bool:
    """True when any module holds a batch-norm layer (AdaBN applies)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for mod in modules for m in mod.modules())


@torch.no_grad()
def adapt_batchnorm(modules: list[nn.Module], forward: Predictor, loader: DataLoader, max_batches: int,
                    prepare: Callable[[torch.Tensor], torch.Tensor]) -> int:
    """AdaBN: re-estimate the batch-norm statistics of ``modules`` from ``forward`` on unlabelled
    images (cumulative average over up to ``max_batches`` batches). Returns the batches used."""
    layers = [m for mod in modules for m in mod.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    used = 0
    for batch in loader:
        if used >= max_batches:
            break
        forward(prepare(batch["image"]))
        used += 1
    for bn, momentum in zip(layers, momenta):
        bn.momentum = momentum
        bn.eval()
    return used
