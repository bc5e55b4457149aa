"""What a training stage leaves on disk and how it is read back: the stage folder's layout,
the ``weights.pt`` record (format and loaders), ``done.json``, and the resume check of
``checkpoints/last.ckpt``.

``OUT/stages/NAME/``: ``checkpoints/last.ckpt`` (Lightning's, written atomically every
``trainer.checkpoint_every`` steps), then, once the stage is complete, ``weights.pt`` and
``done.json``. Every file is read with ``weights_only=True`` (plain data, no code).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atdt_ros.files import atomic_path, atomic_write

from .config import Experiment
from .runtime import global_rank

if TYPE_CHECKING:
    import torch

    from .models import TaskNet, TransferNet

log = logging.getLogger(__name__)


def stage_dir(exp: Experiment, name: str) -> Path:
    """Folder of a training stage's checkpoints, logs and final weights."""
    return exp.output_dir / "stages" / name


def weights_path(exp: Experiment, name: str) -> Path:
    """Final weights of a completed training stage."""
    return stage_dir(exp, name) / "weights.pt"


def is_done(exp: Experiment, name: str) -> bool:
    """True when a training stage finished: its ``done.json`` and ``weights.pt`` exist."""
    return (stage_dir(exp, name) / "done.json").is_file() and weights_path(exp, name).is_file()


def weights_record(exp: Experiment, module: Any) -> dict[str, Any]:
    """The ``weights.pt`` record of a trained Lightning module: the network's settings and its
    state dict on the CPU (``kind`` ``task_net``, ``transfer_net``, or ``selftrained``: the G
    record under ``g`` and D2's state dict under ``d2``)."""
    from .lit import SelfTrainModule, TaskModule

    def cpu(sd: dict) -> dict:
        return {k: v.detach().cpu().contiguous() for k, v in sd.items()}

    m = exp.model
    if isinstance(module, TaskModule):
        return {"kind": "task_net", "task": module.task, "depth": m.depth, "norm": m.norm,
                "feature_level": m.feature_level, "decoder_widths": list(module.net.decoder.widths),
                "state_dict": cpu(module.net.state_dict())}
    g = module.g
    hidden = g.down[0][0].out_channels
    g_record = {"kind": "transfer_net", "channels": g.channels, "out_channels": g.out_channels,
                "hidden": hidden, "down": g.down_steps, "norm": m.norm, "state_dict": cpu(g.state_dict())}
    if isinstance(module, SelfTrainModule):
        return {"kind": "selftrained", "g": g_record, "d2": cpu(module.d2.state_dict())}
    return g_record


def write_done(exp: Experiment, name: str, module: Any, step: int, seconds: float) -> None:
    """Write ``weights.pt``, then ``done.json`` (the stage counts as done once both exist)."""
    import torch

    with atomic_path(weights_path(exp, name)) as tmp:
        torch.save(weights_record(exp, module), tmp)
    done = {"stage": name, "steps": step, "seconds": round(seconds, 1), "precision": exp.trainer.precision,
            "final_loss": module.last_loss, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write(stage_dir(exp, name) / "done.json", json.dumps(done, indent=2) + "\n")
    log.info("stage %s: finished %d steps in %.0f s (final loss %.4f)", name, step, seconds, module.last_loss)


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


def load_transfer_net(exp: Experiment, name: str = "g") -> "TransferNet":
    """The trained transfer network G of stage ``g`` (or the self-trained one of ``st``), in eval mode."""
    from .models import TransferNet

    record = load_weights(weights_path(exp, name))
    if record.get("kind") == "selftrained":
        record = record["g"]
    # records written before transfer_down existed hold the paper's G (two halvings)
    g = TransferNet(record["channels"], record["norm"], record["hidden"], record["out_channels"],
                    record.get("down", 2))
    g.load_state_dict(record["state_dict"])
    return g.eval()


def load_selftrained_decoder(exp: Experiment, d2: "torch.nn.Module") -> "torch.nn.Module":
    """Load stage st's self-trained D2 into ``d2`` (N2's decoder, same architecture); eval mode."""
    path = weights_path(exp, "st")
    record = load_weights(path)
    if record.get("kind") != "selftrained":
        raise ValueError(f"{path}: not a self-training record (kind {record.get('kind')!r})")
    d2.load_state_dict(record["d2"])
    return d2.eval()


def resume_checkpoint(folder: Path) -> str | None:
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
