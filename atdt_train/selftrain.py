"""Pseudo-labels of stage ``st`` (self-training of G and D2 on B, config.SelfTrain).

AT/DT's chain D2(G(E1(x))) labels every training frame of B once, at the start of the stage;
the labels are class-balanced (CBST: Zou et al., "Unsupervised Domain Adaptation for Semantic
Segmentation via Class-Balanced Self-Training", ECCV 2018): for each class c, a pixel predicted as
c is kept when its softmax confidence is at least t_c, the confidence above which lie the
``portion`` most confident of the pixels predicted as c; every other pixel is 255 (ignored). A
single global threshold would keep mostly road and sky; per-class ones keep the same share of
each predicted class, rare ones included.

They are kept in the stage's folder, so a resumed stage trains on the same labels:
``pseudo_labels.npy`` (uint8, frames x H x W at the input size, read with ``allow_pickle=False``)
and ``pseudo_labels.json`` (thresholds, kept pixels per class, the filelist they label).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from atdt_ros.classmap import NUM_CLASSES, UNLABELED
from atdt_ros.files import atomic_path, atomic_write

if TYPE_CHECKING:
    from .config import Experiment

log = logging.getLogger(__name__)

LABELS_FILE = "pseudo_labels.npy"
RECORD_FILE = "pseudo_labels.json"


def class_thresholds(pred: torch.Tensor, confidence: torch.Tensor, portion: float,
                     num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Per-class confidence thresholds t_c (CBST): the ``portion`` quantile from the top of the
    confidences of the pixels predicted as c (+inf for a class predicted nowhere)."""
    thresholds = torch.full((num_classes,), float("inf"))
    for c in range(num_classes):
        conf = confidence[pred == c]
        if conf.numel() == 0:
            continue
        keep = max(1, int(round(portion * conf.numel())))
        thresholds[c] = torch.topk(conf.float(), keep, sorted=True).values[-1]
    return thresholds


def select(pred: torch.Tensor, confidence: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Pseudo-labels: ``pred`` where its confidence reaches its class's threshold, 255 elsewhere."""
    keep = confidence >= thresholds[pred.long()]
    return torch.where(keep, pred.to(torch.uint8), torch.full_like(pred, UNLABELED, dtype=torch.uint8))


@torch.no_grad()
def predict_frames(teachers: list[Callable[[torch.Tensor], torch.Tensor]], loader: Any,
                   prepare: Callable[[torch.Tensor], torch.Tensor], autocast: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(class ids, softmax confidence) on every frame ``loader`` yields, in order, of the mean of the
    ``teachers``' softmax outputs (each a function from prepared images to logits)."""
    preds, confs = [], []
    for batch in loader:
        x = prepare(batch["image"])
        with autocast:
            outputs = [t(x) for t in teachers]
        prob = torch.stack([o.float().softmax(1) for o in outputs]).mean(0)
        conf, pred = prob.max(1)
        preds.append(pred.to(torch.uint8).cpu())
        confs.append(conf.cpu())
    return torch.cat(preds), torch.cat(confs)


def compute_pseudo_labels(exp: "Experiment", dataset: Dataset, e1: nn.Module, g: nn.Module, d2: nn.Module,
                          n2: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels uint8 N x H x W, per-class thresholds) of ``dataset`` (B's training frames).

    The teacher is the AT/DT chain D2(G(E1(x))), with the batch-norm statistics of G and D2
    re-estimated on ``dataset`` when ``selftrain.adabn``; with ``teacher: atdt+baseline`` the mean
    of its softmax and that of N2 (``n2``, likewise adapted: the Baseline+AdaBN row). The networks
    passed in are not modified (copies are adapted).
    """
    import copy

    from .adabn import (adapt_batchnorm, eval_loader, has_batchnorm, inference_device, input_preparer,
                        precision_autocast)
    from .models import transfer

    device = inference_device(exp)
    cl = exp.trainer.channels_last
    e1 = copy.deepcopy(e1).to(device).eval()
    g, d2 = copy.deepcopy(g).to(device).eval(), copy.deepcopy(d2).to(device).eval()
    n2 = copy.deepcopy(n2).to(device).eval() if n2 is not None else None
    for m in (e1, g, d2, n2):
        if cl and m is not None:
            m.to(memory_format=torch.channels_last)
    autocast = precision_autocast(exp, device)

    def chain(x: torch.Tensor) -> torch.Tensor:
        return transfer(e1, g, d2, x)

    prepare = input_preparer(device, cl)

    teachers: list[Callable[[torch.Tensor], torch.Tensor]] = [chain] + ([n2] if n2 is not None else [])
    batches = exp.evaluation.adabn_batches or 50
    if exp.selftrain.adabn:
        for modules, forward in (([g, d2], chain), ([n2], n2)):
            if modules[0] is None or not has_batchnorm(*modules):
                continue
            with autocast:
                used = adapt_batchnorm(modules, forward, eval_loader(dataset, exp.evaluation.batch_size, True, exp.seed),
                                       batches, prepare)
            log.info("stage st: %s batch-norm statistics from %d batches of B before labelling",
                     "G and D2" if forward is chain else "N2", used)
    pred, conf = predict_frames(teachers, eval_loader(dataset, exp.evaluation.batch_size), prepare, autocast)
    thresholds = class_thresholds(pred, conf, exp.selftrain.portion)
    return select(pred, conf, thresholds), thresholds


def write_pseudo_labels(folder: Path, labels: torch.Tensor, thresholds: torch.Tensor,
                        source: str, portion: float) -> dict[str, Any]:
    """Store the labels and their record atomically (the record last: it marks them complete)."""
    array = labels.numpy().astype(np.uint8)
    with atomic_path(folder / LABELS_FILE) as tmp:
        np.save(tmp, array, allow_pickle=False)
    counts = np.bincount(array[array != UNLABELED].ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
    record = {
        "frames": int(array.shape[0]), "size": list(array.shape[1:]), "filelist": source,
        "portion": portion,
        "thresholds": [None if not np.isfinite(t) else round(float(t), 4) for t in thresholds.tolist()],
        "kept_pixels": counts.tolist(),
        "kept_fraction": round(float((array != UNLABELED).mean()), 4),
    }
    atomic_write(folder / RECORD_FILE, json.dumps(record, indent=2) + "\n")
    return record


def read_pseudo_labels(folder: Path, frames: int, size: tuple[int, int]) -> np.ndarray | None:
    """The stored labels when they are complete and match ``frames`` x ``size``; else None."""
    record, path = folder / RECORD_FILE, folder / LABELS_FILE
    if not (record.is_file() and path.is_file()):
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        log.warning("pseudo-labels %s cannot be read (%s); computing them again", path, exc)
        return None
    if array.dtype != np.uint8 or array.shape != (frames, *size):
        log.warning("pseudo-labels %s are %s %s, expected uint8 %s; computing them again",
                    path, array.dtype, array.shape, (frames, *size))
        return None
    return array


class PseudoLabelled(Dataset):
    """A dataset's frames with ``semantic`` replaced by pseudo-labels (frame i -> labels[i]);
    ``flip``: random horizontal flips of image, labels and depth together."""

    def __init__(self, dataset: Dataset, labels: np.ndarray, flip: bool) -> None:
        if len(dataset) != labels.shape[0]:
            raise ValueError(f"{labels.shape[0]} pseudo-labels for {len(dataset)} frames")
        self.dataset, self.labels, self.flip = dataset, labels, flip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        item["semantic"] = torch.from_numpy(self.labels[index].astype(np.int64))
        if self.flip and torch.rand(()) < 0.5:
            for key in ("image", "semantic", "depth", "depth_valid"):
                item[key] = item[key].flip(-1)
        return item


def class_mix(target_image: torch.Tensor, target_labels: torch.Tensor, source_image: torch.Tensor,
              source_labels: torch.Tensor, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """ClassMix across domains (DACS: Tranheden et al., "DACS: Domain Adaptation via Cross-domain
    Mixed Sampling", WACV 2021): for each pair i, half of the classes labelled in
    ``source_labels[i]`` (A's true labels; rounded up, chosen at random) are pasted with their
    pixels from ``source_image[i]`` onto ``target_image[i]`` (B), and their labels onto
    ``target_labels[i]`` (B's pseudo-labels). Images N x C x H x W, labels N x H x W; returns the
    mixed (images, labels). A pair whose source has no labelled pixel is returned unchanged."""
    if target_image.shape != source_image.shape or target_labels.shape != source_labels.shape:
        raise ValueError(f"class_mix: target {tuple(target_image.shape)}/{tuple(target_labels.shape)} and "
                         f"source {tuple(source_image.shape)}/{tuple(source_labels.shape)} differ in shape")
    masks = torch.zeros_like(source_labels, dtype=torch.bool)
    for i in range(source_labels.shape[0]):
        present = torch.unique(source_labels[i])
        present = present[present != UNLABELED]
        if present.numel() == 0:
            continue
        order = torch.randperm(present.numel(), generator=generator, device="cpu").to(present.device)
        chosen = present[order[: (present.numel() + 1) // 2]]
        masks[i] = torch.isin(source_labels[i], chosen)
    image = torch.where(masks[:, None], source_image, target_image)
    labels = torch.where(masks, source_labels, target_labels)
    return image, labels
