"""The four AT/DT stages on Lightning (the ``run`` / ``stage`` / ``evaluate`` commands: run.py).

1. ``n1``: N1 = D1∘E1 for task 1 on A∪B (``shared: false`` trains ``n1_A`` and ``n1_B``, Sec. 6.2).
2. ``n2``: N2 = D2∘E2 for task 2 on A (also the Baseline on B).
3. ``g``: the transfer network G on A by Eq. 3, E1 and E2 frozen.
4. ``evaluate``: Baseline, Baseline+AdaBN, AT/DT (Eq. 4), AT/DT+AdaBN and the ``oracle`` stage
   (N2 trained on B's task-2 labels) on B's and A's test splits.

Each training stage lives in ``OUT/stages/NAME/``: ``checkpoints/last.ckpt`` (every
``trainer.checkpoint_every`` steps, written atomically; a killed stage resumes from it),
``logs/`` (CSV), and, once complete, ``weights.pt`` then ``done.json`` (the stage is skipped
when both exist). Single CPU, GPU and DDP (torchrun, SLURM, or ``strategy: ddp``) run the same code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from atdt_ros.files import atomic_path, atomic_write

from .config import ConfigError, Experiment, load_experiment

if TYPE_CHECKING:
    import torch

    from .models import TaskNet, TransferNet

log = logging.getLogger(__name__)

STAGE_NAMES: tuple[str, ...] = ("n1", "n1_A", "n1_B", "n2", "g", "oracle", "evaluate")


# ----------------------------------------------------------------------------- layout helpers

def stage_dir(exp: Experiment, name: str) -> Path:
    """Folder of a training stage's checkpoints, logs and final weights."""
    return exp.output_dir / "stages" / name


def weights_path(exp: Experiment, name: str) -> Path:
    """Final weights of a completed training stage."""
    return stage_dir(exp, name) / "weights.pt"


def is_done(exp: Experiment, name: str) -> bool:
    """True when a training stage finished: its ``done.json`` and ``weights.pt`` exist."""
    return (stage_dir(exp, name) / "done.json").is_file() and weights_path(exp, name).is_file()


def training_stages(exp: Experiment) -> list[str]:
    """Training stages of an experiment, in the order ``run`` executes them."""
    n1 = ["n1"] if exp.shared else ["n1_A", "n1_B"]
    return n1 + ["n2", "g", "oracle"]


def e1_stage(exp: Experiment, domain: str = "A") -> str:
    """The stage holding E1 used on ``domain`` (the shared N1, or N1^A / N1^B)."""
    return "n1" if exp.shared else f"n1_{domain}"


def stage_spec(exp: Experiment, name: str) -> tuple[str | None, tuple[str, ...], int]:
    """(task or None for G, training domains, steps) of a training stage."""
    specs = {
        "n1": (exp.task1, ("A", "B"), exp.steps.n1),
        "n1_A": (exp.task1, ("A",), exp.steps.n1),
        "n1_B": (exp.task1, ("B",), exp.steps.n1),
        "n2": (exp.task2, ("A",), exp.steps.n2),
        "oracle": (exp.task2, ("B",), exp.steps.oracle),
        "g": (None, ("A",), exp.steps.g),
    }
    if name not in specs:
        raise ConfigError(f"unknown stage {name!r}; accepted: {', '.join(STAGE_NAMES)}")
    return specs[name]


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
                        augment=train and exp.data.flip, cache=exp.data.cache)


def train_loader(exp: Experiment, domains: tuple[str, ...]):
    """Shuffled loader over the training splits of ``domains`` (A∪B for the shared N1)."""
    from torch.utils.data import ConcatDataset, DataLoader

    parts = [make_dataset(exp, d, "train", train=True) for d in domains]
    dataset = parts[0] if len(parts) == 1 else ConcatDataset(parts)
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


# ----------------------------------------------------------------------------- training

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


def on_cpu(exp: Experiment) -> bool:
    """True when the experiment's networks run on the CPU."""
    import torch

    return exp.trainer.accelerator == "cpu" or (exp.trainer.accelerator == "auto" and not torch.cuda.is_available())


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


def _quiet_lightning() -> None:
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


def _make_trainer(exp: Experiment, name: str, max_steps: int, extra_callbacks: list):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from .lit import AtomicCheckpointIO, LocalDDPStrategy

    _quiet_lightning()
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


def _resume_checkpoint(folder: Path) -> str | None:
    """``last.ckpt`` when it exists and loads as plain data; otherwise it is set aside with a
    warning and the stage starts afresh.

    The check and Lightning's resume both read it with ``weights_only=True``: tensors, numbers,
    strings and containers only, so a crafted checkpoint cannot run code when loaded. One that
    holds anything else is refused, like a truncated one.
    """
    import pickle

    import torch

    last = folder / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    try:
        torch.load(last, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated by a kill before atomic writes, damaged, or crafted
        bad = last.with_suffix(".ckpt.corrupt")
        why = (f"refused: it holds objects that would run code when loaded "
               f"({str(exc).splitlines()[0][:200]})" if isinstance(exc, pickle.UnpicklingError)
               else f"cannot be read ({exc})")
        log.warning("checkpoint %s %s; moved to %s, starting the stage afresh", last, why, bad)
        if global_rank() == 0:
            os.replace(last, bad)
        return None
    return str(last)


def load_weights(path: Path) -> dict[str, Any]:
    """Read a stage's ``weights.pt``; errors name the file."""
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"stage weights not found: {path} (run that stage first)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read stage weights {path}: {exc}") from exc


def load_task_net(exp: Experiment, name: str) -> "TaskNet":
    """The trained task network of stage ``name`` (n1, n1_A, n1_B, n2, oracle), in eval mode."""
    from .models import FULL_RESOLUTION_WIDTHS, TaskNet, resplit_state_dict

    record = load_weights(weights_path(exp, name))
    # records written before decoder widths were configurable hold the full-resolution decoder
    widths = tuple(record.get("decoder_widths", FULL_RESOLUTION_WIDTHS))
    # cut where the experiment transfers (Fig. 4: one N serves every feature level)
    level = exp.model.feature_level
    net = TaskNet(record["task"], record["depth"], record["norm"], level, widths)
    net.load_state_dict(resplit_state_dict(record["state_dict"], record["feature_level"], level))
    return net.eval()


def load_transfer_net(exp: Experiment) -> "TransferNet":
    """The trained transfer network G, in eval mode."""
    from .models import TransferNet

    record = load_weights(weights_path(exp, "g"))
    g = TransferNet(record["channels"], record["norm"], record["hidden"], record["out_channels"])
    g.load_state_dict(record["state_dict"])
    return g.eval()


def _weights_record(exp: Experiment, module: Any) -> dict[str, Any]:
    from .lit import TaskModule

    def cpu(sd: dict) -> dict:
        return {k: v.detach().cpu().contiguous() for k, v in sd.items()}

    m = exp.model
    if isinstance(module, TaskModule):
        return {"kind": "task_net", "task": module.task, "depth": m.depth, "norm": m.norm,
                "feature_level": m.feature_level, "decoder_widths": list(module.net.decoder.widths),
                "state_dict": cpu(module.net.state_dict())}
    g = module.g
    hidden = g.down[0][0].out_channels
    return {"kind": "transfer_net", "channels": g.channels, "out_channels": g.out_channels,
            "hidden": hidden, "norm": m.norm, "state_dict": cpu(g.state_dict())}


def train_stage(exp: Experiment, name: str) -> dict[str, Any]:
    """Train one stage to completion (resuming from ``last.ckpt``), or skip it when done."""
    import warnings

    # E1 and E2 stay in eval mode on purpose while G trains
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # resuming mid-epoch restarts the shuffled loader: harmless for step-based training
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable")

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
    focal_ref = resolve_focal_ref(exp)
    if task is None:
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
                                                   focal_ref=focal_ref, class_weight=weight)
    else:
        module = TaskModule(exp, task, steps, focal_ref)
    loader = train_loader(exp, domains)
    started = time.monotonic()
    previous = _previous_seconds(folder)

    class Finish(Callback):
        """Writes weights.pt then done.json (rank zero) once max_steps are reached."""

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.global_step >= steps and trainer.is_global_zero:
                _write_done(exp, name, pl_module, trainer.global_step, previous + time.monotonic() - started)
            trainer.strategy.barrier("atdt-stage-done")

    class Timer(Callback):
        """Keeps the training time of a stage across resumes."""

        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            if trainer.is_global_zero:
                atomic_write(folder / "time.json",
                                  json.dumps({"seconds": previous + time.monotonic() - started}) + "\n")

    trainer = _make_trainer(exp, name, steps, [Timer(), Finish()])
    resume = _resume_checkpoint(folder)
    what = task or ("G (Eq. 3)" if exp.transfer.task_loss == 0 else
                    f"G (Eq. 3 + {exp.transfer.task_loss:g} x {exp.task2} loss through D2"
                    f"{', class weights ' + exp.transfer.class_weights if exp.transfer.class_weights != 'none' else ''})")
    log.info("stage %s: %s on %s, %d steps%s", name, what, "∪".join(domains), steps,
             f", resuming from {resume}" if resume else "")
    trainer.fit(module, train_dataloaders=loader, ckpt_path=resume, weights_only=True)
    if not is_done(exp, name) and trainer.global_step >= steps and trainer.is_global_zero:
        _write_done(exp, name, module, trainer.global_step, previous + time.monotonic() - started)
    if not is_done(exp, name):
        raise RuntimeError(f"stage {name} stopped at step {trainer.global_step} of {steps} without finishing")
    return json.loads((folder / "done.json").read_text())


def _previous_seconds(folder: Path) -> float:
    try:
        return float(json.loads((folder / "time.json").read_text())["seconds"])
    except (OSError, ValueError, KeyError):
        return 0.0


def _write_done(exp: Experiment, name: str, module: Any, step: int, seconds: float) -> None:
    import torch

    with atomic_path(weights_path(exp, name)) as tmp:
        torch.save(_weights_record(exp, module), tmp)
    done = {"stage": name, "steps": step, "seconds": round(seconds, 1), "precision": exp.trainer.precision,
            "final_loss": module.last_loss, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write(stage_dir(exp, name) / "done.json", json.dumps(done, indent=2) + "\n")
    log.info("stage %s: finished %d steps in %.0f s (final loss %.4f)", name, step, seconds, module.last_loss)


def load_networks(cfg_or_path: Experiment | str | os.PathLike) -> tuple["TaskNet", "TaskNet", "TransferNet", dict[str, Any]]:
    """(N1, N2, G, info) of a trained experiment, from its YAML file, output folder or config.

    N1 is the network whose encoder E1 feeds G on domain B (the shared N1, or N1^B).
    ``info``: name, direction, tasks, input size, depth settings, checkpoint files.
    """
    if isinstance(cfg_or_path, Experiment):
        exp = cfg_or_path
    else:
        path = Path(cfg_or_path)
        exp = load_experiment(path / "experiment.yaml" if path.is_dir() else path)
    n1_name = e1_stage(exp, "B")
    n1, n2, g = load_task_net(exp, n1_name), load_task_net(exp, "n2"), load_transfer_net(exp)
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
            "min_depth": exp.depth.min_depth,
            "max_depth": exp.depth.max_depth,
        },
        "checkpoints": {"n1": str(weights_path(exp, n1_name)), "n2": str(weights_path(exp, "n2")),
                        "g": str(weights_path(exp, "g"))},
    }
    return n1, n2, g, info
