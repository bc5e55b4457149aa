"""Stage 4: evaluation on B's and A's test splits (the paper's Tables 1 and 2, Fig. 3).

Rows (task 2 on the evaluated domain):
- ``baseline``: N2^A = D2(E2(x)), trained on A only.
- ``baseline_adabn``: N2^A with every batch-norm statistic re-estimated on the evaluated
  domain's unlabelled training images (AdaBN).
- ``atdt``: Eq. 4, D2(G(E1(x))).
- ``atdt_adabn``: Eq. 4 with the batch-norm statistics of G and D2 re-estimated on features of
  the evaluated domain's training images; E1 is kept as trained (the shared N1 has already seen
  B, and its statistics describe both domains).
- ``atdt_st`` (beyond the paper, with stage ``st``): Eq. 4 with G and D2 self-trained on B's
  pseudo-labels (selftrain.py); the exported chain is this one.
- ``oracle``: N2 trained on B's task-2 labels (an upper bound on B).
AdaBN rows exist only with ``norm: batch``. Task 1 (N1 on the evaluated domain) is reported too.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from atdt_ros.classmap import NUM_CLASSES, UNLABELED
from atdt_ros.files import atomic_write
from atdt_ros.metrics import DepthMetric, SegmentationMetric

from .adabn import (Predictor, adapt_batchnorm, eval_loader, has_batchnorm, inference_device, input_preparer,
                    precision_autocast)
from .config import Experiment
from .lit import DepthRef, depth_scale, depth_to_metres
from .models import TaskNet, TransferNet, transfer
from .checkpoints import is_done, load_selftrained_decoder, load_task_net, load_transfer_net, stage_dir
from .runtime import adapt_to_machine, configure_threads
from .stages import e1_stage, make_dataset, resolve_depth_ref, training_stages

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("baseline", "baseline_adabn", "atdt", "atdt_adabn", "atdt_st", "oracle")


def predict(task: str, output: torch.Tensor, scale: torch.Tensor | None) -> np.ndarray:
    """Network output -> class ids (N,H,W) or depth in metres (N,H,W; ``scale``: metres per
    unit of each frame, :func:`lit.depth_scale`), numpy."""
    output = output.float()
    if task == "semantic":
        return output.argmax(1).cpu().numpy()
    return depth_to_metres(output[:, 0], scale).cpu().numpy()


class _Scorer:
    def __init__(self, task: str, exp: Experiment) -> None:
        self.task = task
        self.metric = (SegmentationMetric(NUM_CLASSES, UNLABELED) if task == "semantic"
                       else DepthMetric(exp.depth.min_depth, exp.depth.max_depth))

    def update(self, pred: np.ndarray, batch: dict[str, torch.Tensor]) -> None:
        if self.task == "semantic":
            self.metric.update(pred, batch["semantic"].numpy())
        else:
            self.metric.update(pred, batch["depth"].numpy(), batch["depth_valid"].numpy())

    def compute(self) -> dict[str, Any]:
        return self.metric.compute()


def _denormalise(image: torch.Tensor) -> np.ndarray:
    from .data import IMAGE_MEAN, IMAGE_STD

    mean = np.asarray(IMAGE_MEAN, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(IMAGE_STD, dtype=np.float32).reshape(3, 1, 1)
    rgb = image.float().numpy() * std + mean
    return np.clip(rgb.transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def evaluate_domain(exp: Experiment, domain: str, nets: dict[str, nn.Module], device: torch.device,
                    depth_ref: DepthRef | None) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """Every row of the tables on one domain's test split; also the figure's samples."""
    task1, task2 = exp.task1, exp.task2
    n1: TaskNet = nets[f"n1_{domain}"]
    n2: TaskNet = nets["n2"]
    g: TransferNet = nets["g"]
    oracle: TaskNet | None = nets.get("oracle")
    e1, d2 = n1.encoder, n2.decoder
    cl = exp.trainer.channels_last

    prepare = input_preparer(device, cl)

    def eq4(e1_: nn.Module, g_: nn.Module, d2_: nn.Module) -> Predictor:
        return lambda x: transfer(e1_, g_, d2_, x)

    predictors: dict[str, Predictor] = {"baseline": n2, "atdt": eq4(e1, g, d2)}
    adabn = exp.evaluation.adabn_batches > 0 and has_batchnorm(n2)
    autocast = precision_autocast(exp, device)
    if adabn:
        train = make_dataset(exp, domain, "train")
        loader = eval_loader(train, exp.evaluation.batch_size, shuffle=True, seed=exp.seed)
        n2_ada = copy.deepcopy(n2)
        with autocast:
            used = adapt_batchnorm([n2_ada], n2_ada, loader, exp.evaluation.adabn_batches, prepare)
        g_ada, d2_ada = copy.deepcopy(g), copy.deepcopy(d2)
        with autocast:
            adapt_batchnorm([g_ada, d2_ada], eq4(e1, g_ada, d2_ada), loader, exp.evaluation.adabn_batches, prepare)
        predictors["baseline_adabn"] = n2_ada
        predictors["atdt_adabn"] = eq4(e1, g_ada, d2_ada)
        log.info("AdaBN on %s: statistics from %d batches of its training images", domain, used)
    if "g_st" in nets:
        predictors["atdt_st"] = eq4(e1, nets["g_st"], nets["d2_st"])
    if oracle is not None:
        predictors["oracle"] = oracle
    predictors = {k: predictors[k] for k in METHODS if k in predictors}

    test = make_dataset(exp, domain, "test")
    if exp.evaluation.max_frames > 0 and len(test) > exp.evaluation.max_frames:
        test = Subset(test, range(exp.evaluation.max_frames))
    count = len(test)
    wanted = set(np.linspace(0, count - 1, min(exp.evaluation.figure_samples, count)).astype(int).tolist()) \
        if exp.evaluation.figure_samples > 0 else set()
    scorers = {k: _Scorer(task2, exp) for k in predictors}
    task1_scorer = _Scorer(task1, exp)
    samples: list[dict[str, np.ndarray]] = []
    seen = 0
    started = time.monotonic()
    with torch.no_grad(), autocast:
        for batch in eval_loader(test, exp.evaluation.batch_size):
            x = prepare(batch["image"])
            scale = depth_scale(batch, depth_ref)
            preds = {k: predict(task2, f(x), scale) for k, f in predictors.items()}
            for k, p in preds.items():
                scorers[k].update(p, batch)
            task1_scorer.update(predict(task1, n1(x), scale), batch)
            for i in range(x.shape[0]):
                if seen + i in wanted:
                    samples.append({
                        "rgb": _denormalise(batch["image"][i]),
                        "gt": (batch["semantic"][i].numpy() if task2 == "semantic"
                               else np.where(batch["depth_valid"][i].numpy(), batch["depth"][i].numpy(), 0.0)),
                        "baseline": preds["baseline"][i], "atdt": preds["atdt"][i],
                    })
            seen += x.shape[0]
    result = {
        "frames": count,
        "seconds": round(time.monotonic() - started, 1),
        "task2": {k: s.compute() for k, s in scorers.items()},
        "task1": task1_scorer.compute(),
        "adabn": adabn,
    }
    return result, samples


def training_summary(exp: Experiment) -> dict[str, Any]:
    """``done.json`` of every finished training stage (what results.json records as ``training``)."""
    summary = {}
    for name in training_stages(exp):
        done = stage_dir(exp, name) / "done.json"
        if done.is_file():
            summary[name] = json.loads(done.read_text())
    return summary


def evaluate_experiment(exp: Experiment) -> dict[str, Any]:
    """Evaluate every row on B and A, write ``results.json``, ``report.md`` and the figures."""
    from .report import save_figure, write_report

    for needed in {e1_stage(exp, "A"), e1_stage(exp, "B"), "n2", "g"}:
        if not is_done(exp, needed):
            raise FileNotFoundError(f"stage {needed} is not complete ({stage_dir(exp, needed)}); "
                                    f"run `atdt_train run` or `atdt_train stage {needed}` first")
    configure_threads(exp)
    adapt_to_machine(exp)
    device = inference_device(exp)
    depth_ref = resolve_depth_ref(exp)
    nets: dict[str, nn.Module] = {"n2": load_task_net(exp, "n2"), "g": load_transfer_net(exp)}
    task1_nets: dict[str, TaskNet] = {}
    for domain in ("A", "B"):  # the shared N1 serves both domains
        name = e1_stage(exp, domain)
        if name not in task1_nets:
            task1_nets[name] = load_task_net(exp, name)
        nets[f"n1_{domain}"] = task1_nets[name]
    if exp.steps.st > 0:
        if not is_done(exp, "st"):
            raise FileNotFoundError(f"stage st is not complete ({stage_dir(exp, 'st')}); run `atdt_train run` "
                                    f"or `atdt_train stage st` first, or set steps.st=0")
        nets["g_st"] = load_transfer_net(exp, "st")
        nets["d2_st"] = load_selftrained_decoder(exp, copy.deepcopy(nets["n2"].decoder))
    if is_done(exp, "oracle"):
        nets["oracle"] = load_task_net(exp, "oracle")
    else:
        log.warning("stage oracle is not complete: the Oracle row is left out")
    for net in nets.values():
        net.to(device).eval()
        if exp.trainer.channels_last:
            net.to(memory_format=torch.channels_last)
    results: dict[str, Any] = {
        "experiment": exp.name,
        "source": exp.source,
        "direction": exp.direction,
        "task1": exp.task1,
        "task2": exp.task2,
        "focal_ref": None if depth_ref is None else depth_ref.focal,
        "height_ref": None if depth_ref is None else depth_ref.height,
        "config": exp.to_dict(),
        "training": training_summary(exp),
        "domains": {},
    }
    out = exp.output_dir
    for domain in ("B", "A"):
        log.info("evaluating on %s (%s)", domain, getattr(exp.domains, domain).test)
        result, samples = evaluate_domain(exp, domain, nets, device, depth_ref)
        results["domains"][domain] = result
        if samples:
            save_figure(samples, exp.task2, out / f"figure_{domain}.png",
                        (exp.depth.min_depth, exp.depth.max_depth))
            result["figure"] = f"figure_{domain}.png"
    atomic_write(out / "results.json", json.dumps(results, indent=2, allow_nan=True) + "\n")
    write_report(results, out / "report.md")
    return results
