"""The four AT/DT stages on Lightning (the ``run`` / ``stage`` / ``evaluate`` commands: run.py).

1. ``n1``: N1 = D1∘E1 for task 1 on A∪B (``shared: false`` trains ``n1_A`` and ``n1_B``, Sec. 6.2).
2. ``n2``: N2 = D2∘E2 for task 2 on A (also the Baseline on B).
3. ``g``: the transfer network G on A by Eq. 3, E1 and E2 frozen.
   ``st`` (beyond the paper, when ``steps.st`` > 0): G and D2 refined on B's pseudo-labels and A's
   labels, E1 frozen (selftrain.py); the deployed chain then uses its G and D2.
4. ``evaluate``: Baseline, Baseline+AdaBN, AT/DT (Eq. 4), AT/DT+AdaBN and the ``oracle`` stage
   (N2 trained on B's task-2 labels) on B's and A's test splits.

Each training stage lives in ``OUT/stages/NAME/`` (its files and their format: checkpoints.py):
``checkpoints/last.ckpt`` (every ``trainer.checkpoint_every`` steps, written atomically; a killed
stage resumes from it), ``logs/`` (CSV), and, once complete, ``weights.pt`` then ``done.json``
(the stage is skipped when both exist). Single CPU, GPU and DDP (torchrun, SLURM, or
``strategy: ddp``) run the same code; the process set-up (rank, threads, precision) is runtime.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from atdt_ros.files import atomic_write

from .checkpoints import (is_done, load_selftrained_decoder, load_task_net, load_transfer_net, resume_checkpoint,
                          stage_dir, weights_path, write_done)
from .config import ConfigError, Experiment, load_experiment
from .runtime import adapt_to_machine, configure_threads, global_rank, quiet_lightning

if TYPE_CHECKING:
    import torch

    from .lit import DepthRef
    from .models import TaskNet, TransferNet

log = logging.getLogger(__name__)

STAGE_NAMES: tuple[str, ...] = ("n1", "n1_A", "n1_B", "n2", "g", "st", "oracle", "evaluate")


# ----------------------------------------------------------------------------- stages

def training_stages(exp: Experiment) -> list[str]:
    """Training stages of an experiment, in the order ``run`` executes them."""
    n1 = ["n1"] if exp.shared else ["n1_A", "n1_B"]
    return n1 + ["n2", "g"] + (["st"] if exp.steps.st > 0 else []) + ["oracle"]


def e1_stage(exp: Experiment, domain: str = "A") -> str:
    """The stage holding E1 used on ``domain`` (the shared N1, or N1^A / N1^B)."""
    return "n1" if exp.shared else f"n1_{domain}"


def stage_spec(exp: Experiment, name: str) -> tuple[str | None, tuple[str, ...], int]:
    """(task or None for G and st, training domains, steps) of a training stage."""
    specs = {
        "n1": (exp.task1, ("A", "B"), exp.steps.n1),
        "n1_A": (exp.task1, ("A",), exp.steps.n1),
        "n1_B": (exp.task1, ("B",), exp.steps.n1),
        "n2": (exp.task2, ("A",), exp.steps.n2),
        "oracle": (exp.task2, ("B",), exp.steps.oracle),
        "g": (None, ("A",), exp.steps.g),
        "st": (None, ("A", "B"), exp.steps.st),
    }
    if name not in specs:
        raise ConfigError(f"unknown stage {name!r}; accepted: {', '.join(STAGE_NAMES)}")
    return specs[name]


def save_experiment_copy(exp: Experiment) -> None:
    """Keep the resolved experiment beside its outputs (``load_networks(OUT)`` reads it)."""
    import yaml

    if global_rank() == 0:
        atomic_write(exp.output_dir / "experiment.yaml", yaml.safe_dump(exp.to_dict(), sort_keys=False))


# ----------------------------------------------------------------------------- data

def make_dataset(exp: Experiment, domain: str, split: str, train: bool = False):
    """FrameDataset of one domain's split at the experiment's input size."""
    from .data import FrameDataset

    d = getattr(exp.domains, domain)
    path = getattr(d, split)
    if path is None:
        raise ConfigError(f"domains.{domain}.{split}: no filelist given")
    return FrameDataset(path, kind=d.kind, size=(exp.data.height, exp.data.width),
                        augment=train and exp.data.flip, cache=exp.data.cache,
                        camera_height=d.camera_height)


def train_loader(exp: Experiment, domains: tuple[str, ...]):
    """Shuffled loader over the training splits of ``domains`` (A∪B for the shared N1)."""
    from torch.utils.data import ConcatDataset

    parts = [make_dataset(exp, d, "train", train=True) for d in domains]
    return shuffled_loader(exp, parts[0] if len(parts) == 1 else ConcatDataset(parts))


def shuffled_loader(exp: Experiment, dataset):
    """A training loader over ``dataset`` at the experiment's batch size and workers."""
    from torch.utils.data import DataLoader

    workers = exp.data.num_workers
    return DataLoader(dataset, batch_size=exp.data.batch_size, shuffle=True,
                      drop_last=len(dataset) >= 2 * exp.data.batch_size, num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=False)


def class_pixel_counts(exp: Experiment, domain: str, max_frames: int = 256) -> "torch.Tensor":
    """Labelled pixels per class in up to ``max_frames`` evenly spaced frames of a domain's
    training split, at the input size (semantic labels; 255 is not counted)."""
    import numpy as np
    import torch

    from atdt_ros.classmap import NUM_CLASSES

    dataset = make_dataset(exp, domain, "train")
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(max_frames, len(dataset))).astype(int))
    counts = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    for i in picks.tolist():
        label = torch.as_tensor(dataset[i]["semantic"]).flatten().long()
        label = label[label < NUM_CLASSES]
        counts += torch.bincount(label, minlength=NUM_CLASSES).double()
    return counts


def resolve_focal_ref(exp: Experiment) -> float | None:
    """f_ref of focal-normalised depth (None when off): configured, or fx of A's first training frame."""
    if not exp.depth.focal_normalised:
        return None
    if exp.depth.focal_ref is not None:
        return float(exp.depth.focal_ref)
    record = exp.output_dir / "focal_ref.json"
    if record.is_file():
        return float(json.loads(record.read_text())["focal_ref"])
    focal = float(make_dataset(exp, "A", "train").load(0)[3])
    atomic_write(record, json.dumps({"focal_ref": focal}) + "\n")
    return focal


def resolve_height_ref(exp: Experiment) -> float | None:
    """h_ref (m) of height-normalised depth (None when off): configured, or the camera height of
    A's first training frame. Checks that the first frame of every split in use has a camera
    height, so a dataset without one fails here, naming the key to set, not mid-training."""
    if not exp.depth.height_normalised:
        return None
    first = {}
    for domain, split in (("A", "train"), ("A", "test"), ("B", "train"), ("B", "test")):
        first[domain, split] = make_dataset(exp, domain, split).camera_height(0)
        if math.isnan(first[domain, split]):
            raise ConfigError(f"depth.height_normalised: {getattr(getattr(exp.domains, domain), split)} "
                              f"(domains.{domain}.{split}) records no camera height; set "
                              f"domains.{domain}.camera_height (metres above the road)")
    if exp.depth.height_ref is not None:
        return float(exp.depth.height_ref)
    return first["A", "train"]


def resolve_depth_ref(exp: Experiment) -> DepthRef | None:
    """The reference camera of normalised depth (None: depth in metres)."""
    from .lit import DepthRef

    focal = resolve_focal_ref(exp)
    return None if focal is None else DepthRef(focal, resolve_height_ref(exp))


# ----------------------------------------------------------------------------- training

def _make_trainer(exp: Experiment, name: str, max_steps: int, extra_callbacks: list):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from .lit import AtomicCheckpointIO, LocalDDPStrategy

    quiet_lightning()
    folder = stage_dir(exp, name)
    loggers = [CSVLogger(str(folder), name="logs")]  # a new version_N per (re)start keeps old logs
    if exp.trainer.tensorboard:
        loggers.append(TensorBoardLogger(str(folder), name="tensorboard", version=0))
    checkpoint = ModelCheckpoint(dirpath=str(folder / "checkpoints"), save_last=True, save_top_k=0,
                                 every_n_train_steps=exp.trainer.checkpoint_every)
    t = exp.trainer
    # DDP started by Lightning on one machine meets through a file, not TCPStore (LocalDDPStrategy)
    strategy = LocalDDPStrategy(str(folder)) if t.strategy == "ddp" and t.num_nodes == 1 else t.strategy
    return L.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=strategy, num_nodes=t.num_nodes,
        precision=t.precision, max_steps=max_steps, max_epochs=-1, logger=loggers,
        callbacks=[checkpoint, *extra_callbacks], plugins=[AtomicCheckpointIO()],
        log_every_n_steps=min(t.log_every, max(1, max_steps)), enable_progress_bar=t.progress_bar,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        default_root_dir=str(folder), use_distributed_sampler=True,
    )


def train_stage(exp: Experiment, name: str) -> dict[str, Any]:
    """Train one stage to completion (resuming from ``last.ckpt``), or skip it when done."""
    import warnings

    # E1 and E2 stay in eval mode on purpose while G trains
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # resuming mid-epoch restarts the shuffled loader: harmless for step-based training
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable")
    # raised inside Lightning's CombinedLoader (stage st) by its own use of torch's pytree
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

    folder = stage_dir(exp, name)
    folder.mkdir(parents=True, exist_ok=True)
    with stage_lock(folder):
        return _train_stage(exp, name, folder)


@contextlib.contextmanager
def stage_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` while a stage trains, so that two processes given the same stage (two
    ``run``s, or suite rows sharing it) train it once: the second waits, then finds it done.

    Only the rank-zero process locks: DDP ranks train one stage together.
    """
    import fcntl

    if global_rank() != 0:
        yield
        return
    with open(folder / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("stage %s: another process is training it (%s); waiting for it", folder.name, folder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train_stage(exp: Experiment, name: str, folder: Path) -> dict[str, Any]:
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from .lit import TaskModule, TransferModule

    if is_done(exp, name):
        log.info("stage %s: done already (%s), skipped", name, folder)
        return json.loads((folder / "done.json").read_text())
    task, domains, steps = stage_spec(exp, name)
    configure_threads(exp)
    adapt_to_machine(exp)
    L.seed_everything(exp.seed, workers=True, verbose=False)
    depth_ref = resolve_depth_ref(exp)
    loader = None
    if name == "st":
        module, loader = _selftrain_setup(exp, folder, steps)
    elif task is None:
        for needed in (e1_stage(exp, "A"), "n2"):
            if not is_done(exp, needed):
                raise ConfigError(f"stage g needs stage {needed} first ({stage_dir(exp, needed)} is not complete)")
        e1 = load_task_net(exp, e1_stage(exp, "A")).encoder
        n2 = load_task_net(exp, "n2")
        weight = None
        if exp.transfer.class_weights == "inverse_sqrt":
            from .lit import inverse_sqrt_weights

            weight = inverse_sqrt_weights(class_pixel_counts(exp, "A"))
            log.info("stage g: class weights %s", " ".join(f"{w:.2f}" for w in weight.tolist()))
        module: L.LightningModule = TransferModule(exp, e1, n2.encoder, steps, d2=n2.decoder,
                                                   depth_ref=depth_ref, class_weight=weight)
    else:
        # the auxiliary edge task shapes the feature spaces G maps: N1 and N2, not the Oracle
        edges = exp.auxiliary.edges if name != "oracle" else 0.0
        module = TaskModule(exp, task, steps, depth_ref, edge_weight=edges)
    if loader is None:
        loader = train_loader(exp, domains)
    started = time.monotonic()
    previous = _previous_seconds(folder)

    class Finish(Callback):
        """Writes weights.pt then done.json (rank zero) once max_steps are reached."""

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.global_step >= steps and trainer.is_global_zero:
                write_done(exp, name, pl_module, trainer.global_step, previous + time.monotonic() - started)
            trainer.strategy.barrier("atdt-stage-done")

    class Timer(Callback):
        """Keeps the training time of a stage across resumes."""

        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            if trainer.is_global_zero:
                atomic_write(folder / "time.json",
                                  json.dumps({"seconds": previous + time.monotonic() - started}) + "\n")

    class AdaptOnB(Callback):
        """Stage st with ``selftrain.final_adabn``: G's and D2's batch-norm statistics re-estimated
        on B's training images once training ends, before the weights are written, so the stored
        (and exported) chain carries B's statistics instead of the A∪B mix of the training batches."""

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.global_step >= steps:
                used = adapt_on_target(exp, pl_module)
                log.info("stage st: G and D2 batch-norm statistics from %d batches of B after training", used)

    callbacks = [Timer()] + ([AdaptOnB()] if name == "st" and exp.selftrain.final_adabn else []) + [Finish()]
    trainer = _make_trainer(exp, name, steps, callbacks)
    resume = resume_checkpoint(folder)
    what = task or ("G and D2 by self-training on B's pseudo-labels" if name == "st" else
                    "G (Eq. 3)" if exp.transfer.task_loss == 0 else
                    f"G (Eq. 3 + {exp.transfer.task_loss:g} x {exp.task2} loss through D2"
                    f"{', class weights ' + exp.transfer.class_weights if exp.transfer.class_weights != 'none' else ''})")
    log.info("stage %s: %s on %s, %d steps%s", name, what, "∪".join(domains), steps,
             f", resuming from {resume}" if resume else "")
    trainer.fit(module, train_dataloaders=loader, ckpt_path=resume, weights_only=True)
    if not is_done(exp, name) and trainer.global_step >= steps and trainer.is_global_zero:
        write_done(exp, name, module, trainer.global_step, previous + time.monotonic() - started)
    if not is_done(exp, name):
        raise RuntimeError(f"stage {name} stopped at step {trainer.global_step} of {steps} without finishing")
    return json.loads((folder / "done.json").read_text())


def _selftrain_setup(exp: Experiment, folder: Path, steps: int):
    """Stage st's module and loader: E1, G and D2 from the earlier stages, B's pseudo-labels
    (computed once, kept in the stage folder: selftrain.py) and A's labelled frames."""
    from lightning.pytorch.utilities import CombinedLoader

    from .lit import SelfTrainModule, inverse_sqrt_weights
    from .selftrain import PseudoLabelled

    for needed in (e1_stage(exp, "B"), "n2", "g"):
        if not is_done(exp, needed):
            raise ConfigError(f"stage st needs stage {needed} first ({stage_dir(exp, needed)} is not complete)")
    e1 = load_task_net(exp, e1_stage(exp, "B")).encoder
    g, d2 = load_transfer_net(exp), load_task_net(exp, "n2").decoder
    labels = pseudo_labels(exp, folder, e1, g, d2)
    weight = None
    if exp.selftrain.class_weights == "inverse_sqrt":
        weight = inverse_sqrt_weights(class_pixel_counts(exp, "A"))
        log.info("stage st: class weights %s", " ".join(f"{w:.2f}" for w in weight.tolist()))
    module = SelfTrainModule(exp, e1, g, d2, steps, class_weight=weight)
    b = PseudoLabelled(make_dataset(exp, "B", "train"), labels, flip=exp.data.flip)
    a = make_dataset(exp, "A", "train", train=True)
    return module, CombinedLoader({"B": shuffled_loader(exp, b), "A": shuffled_loader(exp, a)}, mode="max_size_cycle")


def adapt_on_target(exp: Experiment, module: "L.LightningModule") -> int:
    """AdaBN of a SelfTrainModule's G and D2 on B's training images (unaugmented, a reproducible
    shuffle: the same batches on every DDP process). Returns the batches used."""
    from .adabn import adapt_batchnorm, eval_loader, input_preparer, precision_autocast

    device = module.device
    prepare = input_preparer(device, exp.trainer.channels_last)
    loader = eval_loader(make_dataset(exp, "B", "train"), exp.evaluation.batch_size, True, exp.seed)
    with precision_autocast(exp, device):
        return adapt_batchnorm([module.g, module.d2], module.forward, loader,
                               exp.evaluation.adabn_batches or 50, prepare)


def pseudo_labels(exp: Experiment, folder: Path, e1: "torch.nn.Module", g: "torch.nn.Module",
                  d2: "torch.nn.Module"):
    """B's training frames labelled by the stage's teacher, class-balanced (selftrain.py); read
    back from the stage folder when a (resumed) stage computed them already."""
    from .selftrain import compute_pseudo_labels, read_pseudo_labels, write_pseudo_labels

    dataset = make_dataset(exp, "B", "train")
    stored = read_pseudo_labels(folder, len(dataset), (exp.data.height, exp.data.width))
    if stored is not None:
        log.info("stage st: pseudo-labels of %d frames of B read from %s", len(dataset), folder)
        return stored
    n2 = load_task_net(exp, "n2") if exp.selftrain.teacher == "atdt+baseline" else None
    labels, thresholds = compute_pseudo_labels(exp, dataset, e1, g, d2, n2)
    if global_rank() == 0:
        record = write_pseudo_labels(folder, labels, thresholds, str(exp.domains.B.train), exp.selftrain.portion)
        log.info("stage st: pseudo-labels for %d frames of B, %.0f %% of pixels kept", record["frames"],
                 100 * record["kept_fraction"])
    return labels.numpy()


def _previous_seconds(folder: Path) -> float:
    try:
        return float(json.loads((folder / "time.json").read_text())["seconds"])
    except (OSError, ValueError, KeyError):
        return 0.0


def load_networks(cfg_or_path: Experiment | str | os.PathLike) -> tuple["TaskNet", "TaskNet", "TransferNet", dict[str, Any]]:
    """(N1, N2, G, info) of a trained experiment, from its YAML file, output folder or config.

    N1 is the network whose encoder E1 feeds G on domain B (the shared N1, or N1^B). With stage
    ``st`` (``steps.st`` > 0), G is the self-trained one and N2's decoder is the self-trained D2.
    ``info``: name, direction, tasks, input size, depth settings, checkpoint files.
    """
    if isinstance(cfg_or_path, Experiment):
        exp = cfg_or_path
    else:
        path = Path(cfg_or_path)
        exp = load_experiment(path / "experiment.yaml" if path.is_dir() else path)
    n1_name = e1_stage(exp, "B")
    n1, n2 = load_task_net(exp, n1_name), load_task_net(exp, "n2")
    g_stage = "st" if exp.steps.st > 0 else "g"  # the self-trained G and D2 replace the paper's
    g = load_transfer_net(exp, g_stage)
    if g_stage == "st":
        load_selftrained_decoder(exp, n2.decoder)
    info = {
        "name": exp.name,
        "direction": exp.direction,
        "task1": exp.task1,
        "task2": exp.task2,
        "input_size": [exp.data.height, exp.data.width],
        "backbone_depth": exp.model.depth,
        "feature_level": exp.model.feature_level,
        "norm": exp.model.norm,
        "depth": {
            "focal_normalised": exp.depth.focal_normalised,
            "focal_ref": resolve_focal_ref(exp),
            "height_normalised": exp.depth.height_normalised,
            "height_ref": resolve_height_ref(exp),
            "min_depth": exp.depth.min_depth,
            "max_depth": exp.depth.max_depth,
        },
        "checkpoints": {"n1": str(weights_path(exp, n1_name)), "n2": str(weights_path(exp, "n2")),
                        "g": str(weights_path(exp, "g")),
                        **({"st": str(weights_path(exp, "st"))} if g_stage == "st" else {})},
        "selftrained": g_stage == "st",
    }
    return n1, n2, g, info
