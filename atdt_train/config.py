"""Experiment configuration: the YAML schema of ``config/experiments/*.yaml`` as dataclasses.

Unknown keys and wrong types are errors naming the key (``model.depth: expected one of 18, 34, 50,
got 19``), checked by the project's one validation mechanism, :mod:`atdt_ros.schema`.
Relative paths (filelists, ``out_dir``, ``model.init``) are taken relative to the working
directory, the repository root in the shipped experiments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from atdt_ros import schema
from atdt_ros.artifact import DIRECTIONS  # direction -> (task 1, task 2), defined once
PRECISIONS: tuple[str, ...] = ("32", "bf16-mixed", "16-mixed")
DATASET_KINDS: tuple[str, ...] = ("sim", "carla", "cityscapes", "kitti", "synthia")


class ConfigError(ValueError):
    """An experiment file that does not follow the schema; the message names the key."""


@dataclass
class Domain:
    """One domain: filelists of its splits and how to decode them."""

    train: str
    test: str
    val: str | None = None
    kind: Literal["sim", "carla", "cityscapes", "kitti", "synthia"] | None = None
    name: str | None = None
    camera_height: float | None = None  # metres above the road, where the dataset gives none


@dataclass
class Domains:
    """Domain A (both tasks labelled) and domain B (task-1 labels only, except for the Oracle)."""

    A: Domain
    B: Domain


@dataclass
class Model:
    """Task networks: dilated ResNet backbone, E/D split, normalisation (Sec. 6.1, 6.3)."""

    depth: Literal[18, 34, 50] = 18
    feature_level: Literal[1, 2, 3, 4] = 4
    norm: Literal["batch", "group", "none"] = "batch"
    init: str | None = None  # torchvision ImageNet checkpoint for the encoders
    transfer_hidden: int | None = None  # G's width (default: min(channels, 512))
    transfer_down: Literal[0, 1, 2] = 2  # G's halvings: 2 = to 1/4 and back (the paper), 1, 0
    decoder_widths: list | None = None  # one conv block per scale from 1/16 (default [128, 64, 32, 32])


@dataclass
class Data:
    """Input size (frames are resized to it), batch size and loader settings."""

    height: int = 128
    width: int = 256
    batch_size: int = 8
    num_workers: int = 2
    flip: bool = True  # random horizontal flips while training
    cache: bool = False  # keep decoded, resized frames in memory (best with num_workers: 0)


@dataclass
class Steps:
    """Optimisation steps per stage."""

    n1: int = 2000
    n2: int = 2000
    g: int = 2000
    oracle: int = 2000
    st: int = 0  # self-training of G and D2 on B (beyond the paper; 0 = no such stage)


@dataclass
class Optimizer:
    """Adam with optional weight decay and a polynomial learning-rate decay."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: Literal["poly", "constant"] = "poly"


@dataclass
class DepthOptions:
    """Depth settings: focal normalisation of targets, the metric range, and the depth loss.

    ``focal_normalised``: depth is learnt in units of ``f / f_ref`` metres (f the frame's fx at
    input size), so a network sees one focal length whatever the camera. ``height_normalised``
    (with it): in units of ``(f / f_ref) x (h / h_ref)`` metres, h the camera's height above the
    road: a road pixel y rows below the horizon is at Z = f h / y, so the ground plane's image
    geometry fixes depth only up to f x h (docs/results.md, "Sem→Dep: what sets the scale").
    Each frame's h comes from its dataset (the sim's camera.json, Cityscapes' ``extrinsic.z``,
    KITTI's 1.65 m), else from ``domains.X.camera_height``.

    ``gradient_loss`` > 0 adds, with that weight, a multi-scale gradient-matching term on log
    depth (Li & Snavely, MegaDepth, CVPR 2018) to the L1 loss of every depth network: it rewards
    depth edges, so thin structures (poles, signs, people) are not smoothed away; off in the
    paper's method (docs/training.md, "Beyond the paper").
    """

    focal_normalised: bool = False
    focal_ref: float | None = None  # default: fx of A's first training frame at input size
    height_normalised: bool = False  # with focal_normalised: units of f*h (ground-plane scale)
    height_ref: float | None = None  # default: camera height of A's first training frame (m)
    min_depth: float = 0.5
    max_depth: float = 80.0
    gradient_loss: float = 0.0  # beyond the paper: weight of the multi-scale log-depth gradient term


@dataclass
class Transfer:
    """How G is trained (stage 3). The defaults are the paper's: Eq. 3 alone.

    ``task_loss`` > 0 adds, with that weight, task 2's own loss of D2(G(E1(x))) on A's labels,
    back-propagated through the frozen D2 into G (docs/training.md, "Beyond the paper"); Eq. 3
    stays. ``class_weights: inverse_sqrt`` weights that loss's cross-entropy by 1/sqrt of each
    class's pixel frequency on A (semantic task 2 only), so thin classes are not averaged away.
    """

    task_loss: float = 0.0
    class_weights: Literal["none", "inverse_sqrt"] = "none"


@dataclass
class Auxiliary:
    """Auxiliary tasks of N1 and N2 (beyond the paper; off by default). ``edges`` > 0 adds, with
    that weight, an image-edge loss on each encoder's output E(x) (the features G maps): a small
    head predicts where the input image has edges (the top ``edge_fraction`` of its Sobel
    gradient magnitudes), so both feature spaces keep fine detail, such as poles and signs, and
    share a structure G can map (the authors' TPAMI 2023 extension, "Learning good features to
    transfer across tasks and domains", Sec. 4). Edges come from the image itself, so they need no
    label and exist in A and B alike. The head is trained with the network and not kept: the
    stored N1 and N2, and the exported chain, are as without it.
    """

    edges: float = 0.0
    edge_fraction: float = 0.1


@dataclass
class SelfTrain:
    """Stage ``st`` (beyond the paper, on when ``steps.st`` > 0): G and D2 refined on B with AT/DT's
    own predictions as pseudo-labels, while E1 stays frozen, so the deployed chain is still one E1
    pass. Semantic task 2 only.

    Pseudo-labels are class-balanced (CBST, Zou et al., ECCV 2018): for each class, the ``portion``
    most confident of the pixels AT/DT assigns to it are kept, the rest ignored, so that rare
    (thin) classes keep as large a share as frequent ones. ``adabn``: predict them after
    re-estimating G's and D2's batch-norm statistics on B (the AT/DT+AdaBN row). ``teacher``:
    who labels B: ``atdt`` (the chain alone) or ``atdt+baseline`` (the mean of its softmax and that
    of N2, both adapted likewise: N2 is then a second teacher at training time only; the deployed
    chain stays one E1 pass). Each step
    trains on one batch of B (pseudo-labels) and one of A (its true labels, weight
    ``source_weight``) through D2(G(E1(x))); ``lr`` defaults to ``optimizer.lr``. ``mix:
    classmix`` replaces the B batch by cross-domain ClassMix (DACS, Tranheden et al., WACV 2021):
    half the classes of each A frame pasted, with their true labels, onto a B frame and its
    pseudo-labels (selftrain.class_mix), so that classes the teacher hardly predicts on B (thin
    ones) still appear in B's context. ``final_adabn``: once training ends, re-estimate G's and
    D2's batch-norm statistics on B's training images (AdaBN) before the weights are stored, so
    the stored and exported chain carries B's statistics rather than those of the A∪B training
    batches (whose B half is mostly A's pixels with ``mix: classmix``).
    """

    portion: float = 0.5
    adabn: bool = True
    teacher: Literal["atdt", "atdt+baseline"] = "atdt"
    source_weight: float = 1.0
    class_weights: Literal["none", "inverse_sqrt"] = "none"
    lr: float | None = None
    mix: Literal["none", "classmix"] = "none"
    final_adabn: bool = False


@dataclass
class Trainer:
    """Lightning settings: the same experiment runs on CPU, one GPU or DDP."""

    accelerator: str = "auto"
    devices: int | str | list = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | int = "32"
    channels_last: bool = False
    threads: int = 0  # CPU threads per process; 0 = cores / local processes
    checkpoint_every: int = 200
    log_every: int = 20
    tensorboard: bool = False
    progress_bar: bool = True


@dataclass
class Evaluation:
    """Evaluation settings."""

    batch_size: int = 8
    adabn_batches: int = 50  # batches of the evaluated domain's training images for AdaBN
    figure_samples: int = 4
    max_frames: int = 0  # 0 = whole test split


@dataclass
class Experiment:
    """One AT/DT experiment: domains, direction, networks, training and evaluation settings."""

    name: str
    direction: Literal["dep2sem", "sem2dep"]
    domains: Domains
    out_dir: str | None = None
    seed: int = 0
    shared: bool = True  # one N1 on A∪B (True) or N1^A and N1^B (Sec. 6.2 ablation)
    model: Model = field(default_factory=Model)
    data: Data = field(default_factory=Data)
    steps: Steps = field(default_factory=Steps)
    optimizer: Optimizer = field(default_factory=Optimizer)
    transfer: Transfer = field(default_factory=Transfer)
    auxiliary: Auxiliary = field(default_factory=Auxiliary)
    selftrain: SelfTrain = field(default_factory=SelfTrain)
    depth: DepthOptions = field(default_factory=DepthOptions)
    trainer: Trainer = field(default_factory=Trainer)
    evaluation: Evaluation = field(default_factory=Evaluation)
    source: str | None = field(default=None, metadata={"internal": True})

    @property
    def task1(self) -> str:
        """Task whose labels exist in both domains (its features are transferred)."""
        return DIRECTIONS[self.direction][0]

    @property
    def task2(self) -> str:
        """Task labelled only in domain A (predicted on B by Eq. 4)."""
        return DIRECTIONS[self.direction][1]

    @property
    def output_dir(self) -> Path:
        """Directory of the experiment's checkpoints, results and report."""
        return Path(self.out_dir or f"runs/{self.name}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (for results.json)."""
        data = dataclasses.asdict(self)
        data.pop("source", None)
        return data


def build_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """A dataclass from plain data (a parsed YAML mapping), by the same rules as experiments
    (:func:`atdt_ros.schema.build`): unknown keys, missing keys and wrong types are
    ``ConfigError``s naming the key, the value and what is accepted."""
    return schema.build(cls, data, prefix, ConfigError, root="experiment")


def _validate(exp: Experiment) -> None:
    def positive(key: str, value: float, allow_zero: bool = False) -> None:
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")

    exp.trainer.precision = str(exp.trainer.precision)
    if exp.trainer.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision: expected one of {', '.join(PRECISIONS)}, "
                          f"got {exp.trainer.precision!r}")
    if exp.model.decoder_widths is not None:
        from .models import check_decoder_widths

        try:
            exp.model.decoder_widths = list(check_decoder_widths(exp.model.decoder_widths))
        except ValueError as exc:
            raise ConfigError(f"model.decoder_widths: {exc}") from None
    if exp.model.transfer_hidden is not None:
        positive("model.transfer_hidden", exp.model.transfer_hidden)
    for name in ("height", "width", "batch_size"):
        positive(f"data.{name}", getattr(exp.data, name))
    if exp.data.height % 16 or exp.data.width % 16:
        raise ConfigError(f"data.height/width: must be multiples of 16 (output stride), "
                          f"got {exp.data.height}x{exp.data.width}")
    positive("data.num_workers", exp.data.num_workers, allow_zero=True)
    for name in ("n1", "n2", "g", "oracle", "st"):
        positive(f"steps.{name}", getattr(exp.steps, name), allow_zero=True)
    st = exp.selftrain
    if not 0 < st.portion <= 1:
        raise ConfigError(f"selftrain.portion: the share of each class's pixels kept as pseudo-labels, "
                          f"need 0 < portion <= 1, got {st.portion}")
    positive("selftrain.source_weight", st.source_weight, allow_zero=True)
    if st.lr is not None:
        positive("selftrain.lr", st.lr)
    if exp.steps.st > 0 and exp.task2 != "semantic":
        raise ConfigError(f"steps.st: self-training (stage st) refines semantic segmentation, but task 2 "
                          f"of {exp.direction} is {exp.task2}; accepted: steps.st: 0, or direction: dep2sem")
    positive("optimizer.lr", exp.optimizer.lr)
    positive("transfer.task_loss", exp.transfer.task_loss, allow_zero=True)
    positive("auxiliary.edges", exp.auxiliary.edges, allow_zero=True)
    if not 0 < exp.auxiliary.edge_fraction < 1:
        raise ConfigError(f"auxiliary.edge_fraction: the share of pixels taken as edges, need "
                          f"0 < edge_fraction < 1, got {exp.auxiliary.edge_fraction}")
    if exp.transfer.class_weights != "none" and exp.task2 != "semantic":
        raise ConfigError(f"transfer.class_weights: {exp.transfer.class_weights!r} weights classes of "
                          f"semantic segmentation, but task 2 of {exp.direction} is {exp.task2}; accepted: 'none'")
    positive("optimizer.weight_decay", exp.optimizer.weight_decay, allow_zero=True)
    positive("trainer.checkpoint_every", exp.trainer.checkpoint_every)
    positive("trainer.log_every", exp.trainer.log_every)
    positive("evaluation.batch_size", exp.evaluation.batch_size)
    if not 0 < exp.depth.min_depth < exp.depth.max_depth:
        raise ConfigError(f"depth.min_depth/max_depth: need 0 < min_depth < max_depth, "
                          f"got {exp.depth.min_depth}, {exp.depth.max_depth}")
    if exp.depth.gradient_loss < 0:
        raise ConfigError(f"depth.gradient_loss: must be >= 0 (0 = the paper's L1 loss alone), "
                          f"got {exp.depth.gradient_loss}")
    if exp.depth.focal_ref is not None:
        positive("depth.focal_ref", exp.depth.focal_ref)
    if exp.depth.height_normalised and not exp.depth.focal_normalised:
        raise ConfigError("depth.height_normalised: true scales depth by focal length x camera height, "
                          "so it needs depth.focal_normalised: true; accepted: both true, or "
                          "height_normalised: false")
    if exp.depth.height_ref is not None:
        positive("depth.height_ref", exp.depth.height_ref)
    for name in ("A", "B"):
        height = getattr(exp.domains, name).camera_height
        if height is not None:
            positive(f"domains.{name}.camera_height", height)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``steps.n1=100`` -> (["steps", "n1"], 100); the value is parsed as YAML."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. steps.n1=100")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def experiment_from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """Build and validate an ``Experiment`` from plain data plus ``KEY=VALUE`` overrides."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a mapping")
        node[keys[-1]] = value
    exp = build_dataclass(Experiment, data)
    _validate(exp)
    return exp


def read_yaml(path: str | Path, what: str) -> Any:
    """The data of a project YAML file ({} when empty); ConfigError naming the file otherwise."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return data if data is not None else {}


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """Read an experiment YAML file; errors name the file and the key at fault."""
    path = Path(path)
    data = read_yaml(path, "experiment")
    try:
        exp = experiment_from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    exp.source = " ".join([str(path), *(f"--set {o}" for o in overrides)])  # as typed, for reports
    return exp
