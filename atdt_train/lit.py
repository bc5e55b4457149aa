"""Lightning modules of the AT/DT stages: a task network N (stages 1, 2 and the Oracle) and the
transfer network G trained by Eq. 3 with E1 and E2 frozen (stage 3), plus the task losses."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

from atdt_ros.artifact import IMAGE_MEAN, IMAGE_STD, metres_per_unit
from atdt_ros.classmap import UNLABELED
from atdt_ros.files import atomic_path

from .config import Experiment
from .models import DECODER_WIDTHS, Encoder, TaskNet, TransferNet, transfer_features


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the stage stops, keeping its last good checkpoint."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints to a temporary file and renames it, so a kill never leaves half a file;
    reads them as plain data only (``weights_only=True``), so a crafted one cannot run code."""

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location or (lambda s, loc: s),
                                       weights_only=True)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(os.fspath(path)) as tmp:
            torch.save(checkpoint, tmp)


class LocalDDPStrategy(DDPStrategy):
    """DDP on one machine whose processes Lightning started itself, meeting through a file.

    Lightning's default rendezvous is torch's TCPStore on MASTER_ADDR (127.0.0.1); it looks up
    the name of each peer's address (``::ffff:127.0.0.1``), which /etc/hosts does not answer, so
    every DDP run sent reverse-DNS queries for 127.0.0.1 to the machine's resolver (measured with
    benchmarks/offline_check.py). A ``FileStore`` in the stage's folder needs no name lookup and
    no port. Processes started by torchrun, SLURM or on several nodes keep Lightning's way.
    """

    def __init__(self, store_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._store_dir = store_dir

    def setup_distributed(self) -> None:
        import torch.distributed as dist
        from lightning.fabric.plugins.environments import LightningEnvironment

        if self.num_nodes == 1 and isinstance(self.cluster_environment, LightningEnvironment) \
                and not dist.is_initialized():
            self.set_world_ranks()
            env = self.cluster_environment
            # the launcher picks a free port per run and hands it to every process: one file per run
            path = os.path.join(self._store_dir, f".ddp_rendezvous_{env.main_port}")
            dist.init_process_group(self._get_process_group_backend(), rank=env.global_rank(),
                                    world_size=env.world_size(), timeout=self._timeout,
                                    store=dist.FileStore(path, env.world_size()))
            logging.getLogger(__name__).info(
                "Initializing distributed (file rendezvous %s): GLOBAL_RANK: %d, MEMBER: %d/%d",
                path, env.global_rank(), env.global_rank() + 1, env.world_size())
        super().setup_distributed()  # finds the group initialised and keeps it


def semantic_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over labelled pixels (255 ignored), optionally class-weighted (the weighted
    mean over pixels); zero (with a graph) when none is labelled."""
    if not bool((target != UNLABELED).any()):
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=UNLABELED)


def inverse_sqrt_weights(counts: torch.Tensor) -> torch.Tensor:
    """Class weights 1/sqrt(frequency) from pixel counts per class, scaled so that the average
    weight of a labelled pixel is 1 (the loss keeps its scale). Absent classes get the largest
    weight of the present ones."""
    counts = counts.double()
    freq = counts / counts.sum().clamp(min=1.0)
    present = freq > 0
    if not bool(present.any()):
        return torch.ones_like(counts, dtype=torch.float32)
    w = torch.zeros_like(freq)
    w[present] = freq[present].rsqrt()
    w[~present] = w[present].max()
    w = w / (freq * w).sum()
    return w.float()


@dataclass(frozen=True)
class DepthRef:
    """The reference camera of normalised depth (``depth.focal_normalised``): fx ``focal`` in
    pixels at the input size and, with ``depth.height_normalised``, the height ``height`` (m)."""

    focal: float
    height: float | None = None


def depth_scale(batch: dict[str, torch.Tensor], ref: DepthRef | None) -> torch.Tensor | None:
    """Metres per depth unit of each frame of a batch (N,), or None for depth in metres."""
    if ref is None:
        return None
    height = None
    if ref.height is not None:
        height = batch["camera_height"]
        if torch.isnan(height).any():
            raise ValueError("depth.height_normalised: a frame has no camera height (neither its dataset "
                             "nor domains.A/B.camera_height gives one); set domains.<A|B>.camera_height "
                             "in metres above the road")
    return metres_per_unit(batch["focal"], ref.focal, height, ref.height)


def depth_target(depth: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Depth in training units: metres, or normalised ``depth / scale`` (:func:`depth_scale`)."""
    if scale is None:
        return depth
    return depth / scale.to(depth.device).view(-1, 1, 1)


def depth_to_metres(pred: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Network depth output (N, H, W) back to metres (undoes the normalisation)."""
    if scale is None:
        return pred
    return pred * scale.to(pred.device).view(-1, 1, 1)


def depth_loss(pred: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor,
               scale: torch.Tensor | None) -> torch.Tensor:
    """L1 over valid pixels, in metres or normalised units; zero when none is valid."""
    pred = pred.float()[:, 0]
    target = depth_target(depth, scale)
    weight = valid.to(pred.dtype)
    return ((pred - target).abs() * weight).sum() / weight.sum().clamp(min=1.0)


GRADIENT_SCALES = 4
"""Scales of the gradient-matching term: full resolution and 3 halvings (MegaDepth uses 4)."""


def gradient_matching_loss(pred: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor,
                           scale: torch.Tensor | None, floor: float) -> torch.Tensor:
    """Multi-scale gradient matching on log depth (MegaDepth, Eq. 3): with R = log d̂ − log d,
    the mean over scales of Σ|∂x R| + |∂y R| over pairs of valid neighbours, divided by the number
    of valid pixels; zero when none is valid. Predictions are clamped at ``floor`` before the log."""
    pred = pred.float()[:, 0].clamp(min=floor)
    target = depth_target(depth, scale).clamp(min=floor)
    residual = torch.log(pred) - torch.log(target)
    mask = valid.to(residual.dtype)
    total = residual.new_zeros(())
    for scale in range(GRADIENT_SCALES):
        step = 2 ** scale
        r, m = residual[:, ::step, ::step] * mask[:, ::step, ::step], mask[:, ::step, ::step]
        mx, my = m[:, :, 1:] * m[:, :, :-1], m[:, 1:, :] * m[:, :-1, :]
        grad = ((r[:, :, 1:] - r[:, :, :-1]).abs() * mx).sum() + ((r[:, 1:, :] - r[:, :-1, :]).abs() * my).sum()
        total = total + grad / m.sum().clamp(min=1.0)
    return total / GRADIENT_SCALES


def task_loss(task: str, output: torch.Tensor, batch: dict[str, torch.Tensor], ref: DepthRef | None,
              class_weight: torch.Tensor | None = None, gradient_weight: float = 0.0,
              min_depth: float = 0.5) -> torch.Tensor:
    """The loss of a task network's output on a batch of FrameDataset samples (``gradient_weight``:
    the depth loss's gradient-matching term, off by default as in the paper)."""
    if task == "semantic":
        return semantic_loss(output, batch["semantic"], class_weight)
    scale = depth_scale(batch, ref)
    loss = depth_loss(output, batch["depth"], batch["depth_valid"], scale)
    if gradient_weight > 0:
        loss = loss + gradient_weight * gradient_matching_loss(
            output, batch["depth"], batch["depth_valid"], scale, min_depth)
    return loss


EDGE_STRIDE = 4
"""Resolution of the auxiliary edge targets: 1/4 of the input (an edge anywhere in a 4x4 cell)."""


def image_edges(image: torch.Tensor, fraction: float) -> torch.Tensor:
    """Edge targets (N, 1, ceil(H/4), ceil(W/4)) in {0, 1} of normalised images (N, 3, H, W): the
    pixels among each image's top ``fraction`` of Sobel gradient magnitudes (of the grey image,
    ImageNet normalisation undone; pixels tied with the threshold included), max-pooled to 1/4.
    A flat image has none."""
    x = image.float()
    mean = x.new_tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGE_STD).view(1, 3, 1, 1)
    grey = (x * std + mean).mean(1, keepdim=True)
    kx = x.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    grad = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), torch.stack([kx, kx.t()]).unsqueeze(1))
    magnitude = grad.pow(2).sum(1, keepdim=True).sqrt()
    threshold = torch.quantile(magnitude.flatten(1), 1.0 - fraction, dim=1).view(-1, 1, 1, 1)
    # ties at the threshold count; below 1e-4 (a twentieth of one grey level's step) is rounding
    edges = ((magnitude >= threshold) & (magnitude > 1e-4)).to(x.dtype)
    return F.max_pool2d(edges, EDGE_STRIDE, ceil_mode=True)


class EdgeHead(nn.Module):
    """The auxiliary edge head on an encoder's output (``auxiliary.edges``): two convolutions to
    one logit per feature cell, up-sampled to the edge targets' size. Training only."""

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, 1, 1))

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.net(features), size=size, mode="bilinear", align_corners=False)


def edge_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of edge logits, edges weighted by the batch's non-edge / edge ratio
    (so the rarer class counts as much)."""
    target = target.float()
    positives = target.sum()
    pos_weight = ((target.numel() - positives) / positives.clamp(min=1.0)).detach()
    return F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=pos_weight)


def decoder_widths(exp: Experiment) -> tuple[int, ...]:
    """The experiment's decoder widths (``model.decoder_widths`` or the default)."""
    return tuple(exp.model.decoder_widths) if exp.model.decoder_widths else DECODER_WIDTHS


def _poly(max_steps: int):
    return lambda step: max(0.0, 1.0 - step / max(1, max_steps)) ** 0.9


class _StageModule(L.LightningModule):
    """Shared optimiser, input layout and non-finite-loss guard of the stages."""

    def __init__(self, exp: Experiment, max_steps: int, lr: float | None = None) -> None:
        super().__init__()
        self.exp = exp
        self.max_steps = max_steps
        self.lr = float(lr if lr is not None else exp.optimizer.lr)
        self.channels_last = exp.trainer.channels_last
        self.last_loss = float("nan")

    def _input(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["image"]
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _check_finite(self, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).item())
        if self.trainer.world_size > 1:  # every process must stop together
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at step {self.global_step}; stopping, the last good "
                f"checkpoint is kept")

    def _finish(self, loss: torch.Tensor) -> torch.Tensor:
        """A training step's end: the non-finite guard, ``last_loss`` and the logged loss."""
        self._check_finite(loss)
        self.last_loss = float(loss.detach())
        self.log("loss", loss, prog_bar=True)
        return loss

    def _trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        opt = self.exp.optimizer
        params = self._trainable()
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params)
        optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=opt.weight_decay, fused=fused or None)
        if opt.schedule == "constant":
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _poly(self.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class TaskModule(_StageModule):
    """Trains a task network N = D∘E (N1, N2 or the Oracle) with its task loss."""

    def __init__(self, exp: Experiment, task: str, max_steps: int, depth_ref: DepthRef | None = None,
                 edge_weight: float = 0.0) -> None:
        super().__init__(exp, max_steps)
        self.task = task
        self.depth_ref = depth_ref if task == "depth" else None
        self.gradient_weight = float(exp.depth.gradient_loss) if task == "depth" else 0.0
        self.min_depth = float(exp.depth.min_depth)
        self.net = TaskNet(task, exp.model.depth, exp.model.norm, exp.model.feature_level,
                           decoder_widths(exp))
        if exp.model.init:
            self.net.load_imagenet(exp.model.init)
        # auxiliary.edges: a head beside the network, so the stored N (self.net) is as without it
        self.edge_weight = float(edge_weight)
        self.edge_fraction = float(exp.auxiliary.edge_fraction)
        self.edge_head = EdgeHead(self.net.encoder.out_channels) if self.edge_weight > 0 else None
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = self._input(batch)
        features = self.net.encoder(x)
        loss = task_loss(self.task, self.net.decoder(features, (x.shape[-2], x.shape[-1])), batch,
                         self.depth_ref, gradient_weight=self.gradient_weight, min_depth=self.min_depth)
        if self.edge_head is not None:
            target = image_edges(batch["image"], self.edge_fraction)
            edges = edge_loss(self.edge_head(features, (target.shape[-2], target.shape[-1])), target)
            self.log("edges", edges)
            loss = loss + self.edge_weight * edges
        return self._finish(loss)


class TransferModule(_StageModule):
    """Trains G on domain A by Eq. 3, ‖G(E1(x)) − E2(x)‖² (mean squared error of the features).

    E1 and E2 (and D2, when given) are frozen: no gradients to their weights, kept in eval mode
    (their batch-norm statistics never move). With ``transfer.task_loss`` = λ > 0 the loss is
    Eq. 3 + λ · L2(D2(G(E1(x))), y2): task 2's loss on A's labels, back-propagated through the
    frozen D2 into G (``class_weight``: the cross-entropy's class weights, semantic only).
    """

    def __init__(self, exp: Experiment, e1: Encoder, e2: Encoder, max_steps: int,
                 d2: nn.Module | None = None, depth_ref: DepthRef | None = None,
                 class_weight: torch.Tensor | None = None) -> None:
        super().__init__(exp, max_steps)
        self.task_weight = float(exp.transfer.task_loss)
        if self.task_weight > 0 and d2 is None:
            raise ValueError("transfer.task_loss > 0 needs D2 (the decoder of N2)")
        self.e1, self.e2 = e1, e2
        self.d2 = d2 if self.task_weight > 0 else None
        frozen = [e1, e2] + ([self.d2] if self.d2 is not None else [])
        for p in (p for m in frozen for p in m.parameters()):
            p.requires_grad_(False)
        self.task2 = exp.task2
        self.depth_ref = depth_ref if exp.task2 == "depth" else None
        self.register_buffer("class_weight", class_weight, persistent=False)
        self.g = TransferNet(e1.out_channels, exp.model.norm, exp.model.transfer_hidden, e2.out_channels,
                             exp.model.transfer_down)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        self.train()

    def train(self, mode: bool = True) -> "TransferModule":
        super().train(mode)
        self.e1.eval()
        self.e2.eval()
        if self.d2 is not None:
            self.d2.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g(self.e1(x))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = self._input(batch)
        with torch.no_grad():
            f1, f2 = self.e1(x), self.e2(x)
        mapped = self.g(f1)
        feature_loss = F.mse_loss(mapped.float(), f2.float())  # Eq. 3
        loss = feature_loss
        if self.d2 is not None:
            output = self.d2(mapped, (x.shape[-2], x.shape[-1]))  # Eq. 4 after G: D2(G(E1(x)))
            through_d2 = task_loss(self.task2, output, batch, self.depth_ref, self.class_weight)
            loss = feature_loss + self.task_weight * through_d2
            self.log("eq3", feature_loss)
            self.log("task", through_d2)
        return self._finish(loss)


class SelfTrainModule(_StageModule):
    """Stage ``st``: refines G and D2 on B's pseudo-labels and A's labels, E1 frozen (config.SelfTrain).

    Each step takes a batch of A (true task-2 labels) and one of B (pseudo-labels, 255 where none
    was kept) and runs them through D2(G(E1(x))) as one batch, so the batch-norm layers of G and D2
    see both domains together, as N1's saw A∪B; the loss is CE(B) + ``source_weight`` · CE(A).
    """

    def __init__(self, exp: Experiment, e1: Encoder, g: TransferNet, d2: nn.Module, max_steps: int,
                 class_weight: torch.Tensor | None = None) -> None:
        super().__init__(exp, max_steps, lr=exp.selftrain.lr)
        self.e1, self.g, self.d2 = e1, g, d2
        for p in e1.parameters():
            p.requires_grad_(False)
        self.source_weight = float(exp.selftrain.source_weight)
        self.mix = exp.selftrain.mix
        self.register_buffer("class_weight", class_weight, persistent=False)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        self.train()

    def train(self, mode: bool = True) -> "SelfTrainModule":
        super().train(mode)
        self.e1.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return transfer_features(self.g, self.d2, self.e1(x), (x.shape[-2], x.shape[-1]))

    def training_step(self, batch: dict[str, dict[str, torch.Tensor]], batch_idx: int) -> torch.Tensor:
        a, b = batch["A"], batch["B"]
        n = b["image"].shape[0]
        if self.mix == "classmix":
            from .selftrain import class_mix

            image, labels = class_mix(b["image"], b["semantic"], a["image"], a["semantic"])
            b = {"image": image, "semantic": labels}
        x = self._input({"image": torch.cat([b["image"], a["image"]])})
        with torch.no_grad():
            f1 = self.e1(x)
        logits = transfer_features(self.g, self.d2, f1, (x.shape[-2], x.shape[-1]))
        target = semantic_loss(logits[:n], b["semantic"], self.class_weight)
        source = semantic_loss(logits[n:], a["semantic"], self.class_weight)
        loss = target + self.source_weight * source
        self.log("pseudo", target)
        self.log("source", source)
        return self._finish(loss)
