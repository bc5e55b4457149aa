"""The AT/DT networks (Sec. 4): task networks N = D∘E and the transfer network G.

- ``Encoder`` E: a dilated ResNet (output stride 16: ``layer4`` has stride 1, dilation 2) whose
  state-dict keys are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...), so ImageNet
  checkpoints load with ``load_imagenet``. ``feature_level`` k keeps the stem and
  ``layer1..layerk`` (Sec. 3.5: the split between E and D).
- ``Decoder`` D: the remaining residual stages ``layer{k+1}..layer4`` then bilinear up-sampling
  and convolution blocks (widths configurable, ``decoder_widths``) and a last layer of 11 filters
  (semantic) or 1 (depth), up-sampled bilinearly to full resolution.
- ``TaskNet`` N = D∘E.
- ``TransferNet`` G: convolutions down to 1/4 of its input resolution and deconvolutions back
  (or less deep, ``down``), mapping E1 features to E2 features of the same shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from atdt_ros.classmap import NUM_CLASSES

TASKS: tuple[str, ...] = ("semantic", "depth")
DEPTHS: tuple[int, ...] = (18, 34, 50)
NORMS: tuple[str, ...] = ("batch", "group", "none")
FEATURE_LEVELS: tuple[int, ...] = (1, 2, 3, 4)

Norm = Literal["batch", "group", "none"]

# blocks per residual stage, as in torchvision's resnet18/34/50
_LAYERS: dict[int, tuple[int, int, int, int]] = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)
# (stride, dilation) of each residual stage for output stride 16
_STRIDES: tuple[tuple[int, int], ...] = ((1, 1), (2, 1), (2, 1), (1, 2))


def task_channels(task: str) -> int:
    """Number of output filters of a task's last layer: 11 classes or 1 depth map."""
    check_choice("task", task, TASKS)
    return NUM_CLASSES if task == "semantic" else 1


def check_choice(name: str, value: object, accepted: tuple) -> None:
    """Raise ValueError naming ``name`` when ``value`` is not one of ``accepted``."""
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is not supported; accepted: {', '.join(map(str, accepted))}")


def make_norm(norm: str, channels: int) -> nn.Module:
    """The normalisation layer chosen for the Sec. 6.3 ablation: batch, group or none."""
    check_choice("norm", norm, NORMS)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        groups = 32 if channels % 32 == 0 else (16 if channels % 16 == 0 else 1)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


def stage_channels(depth: int, level: int) -> int:
    """Output channels of residual stage ``level`` (1..4) of a ResNet of ``depth`` layers."""
    check_choice("depth", depth, DEPTHS)
    check_choice("feature_level", level, FEATURE_LEVELS)
    return _WIDTHS[level - 1] * (4 if depth == 50 else 1)


def stage_stride(level: int) -> int:
    """Down-sampling factor of the features after residual stage ``level`` (4, 8, 16, 16)."""
    check_choice("feature_level", level, FEATURE_LEVELS)
    return (4, 8, 16, 16)[level - 1]


class BasicBlock(nn.Module):
    """torchvision's BasicBlock (same parameter names) with dilation support."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = make_norm(norm, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (stride on the 3x3 conv, same parameter names) with dilation."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = make_norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = make_norm(norm, planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_stage(depth: int, level: int, norm: str) -> nn.Sequential:
    """Residual stage ``layer{level}`` of a dilated ResNet (torchvision's key layout)."""
    block = Bottleneck if depth == 50 else BasicBlock
    planes = _WIDTHS[level - 1]
    inplanes = 64 if level == 1 else stage_channels(depth, level - 1)
    stride, dilation = _STRIDES[level - 1]
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
            make_norm(norm, planes * block.expansion),
        )
    # like DeepLab's dilated ResNets, the first block of a dilated stage uses half the dilation
    blocks = [block(inplanes, planes, stride, max(1, dilation // 2), downsample, norm)]
    blocks += [block(planes * block.expansion, planes, 1, dilation, None, norm)
               for _ in range(1, _LAYERS[depth][level - 1])]
    return nn.Sequential(*blocks)


def load_resnet_weights(module: nn.Module, path: str | Path) -> list[str]:
    """Copy the tensors of a torchvision ResNet checkpoint whose keys ``module`` also has.

    Keys the module lacks (``fc``, stages outside it) are ignored; a key present in both with a
    different shape is an error naming the key. Returns the loaded keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or not a torch file
        raise ValueError(f"cannot read ImageNet checkpoint {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict (got {type(state).__name__})")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = module.state_dict()
    loaded = {}
    for key, value in state.items():
        if key not in own:
            continue
        if own[key].shape != value.shape:
            raise ValueError(f"{path}: key {key} has shape {tuple(value.shape)}, "
                             f"the network expects {tuple(own[key].shape)} (wrong ResNet depth?)")
        loaded[key] = value
    if not loaded:
        raise ValueError(f"{path}: no key matches a torchvision ResNet (e.g. 'conv1.weight')")
    module.load_state_dict(loaded, strict=False)
    return sorted(loaded)


class Encoder(nn.Module):
    """E: dilated ResNet-18/34/50 up to residual stage ``feature_level`` (output stride <= 16)."""

    def __init__(self, depth: int = 18, norm: Norm = "batch", feature_level: int = 4) -> None:
        super().__init__()
        check_choice("depth", depth, DEPTHS)
        check_choice("norm", norm, NORMS)
        check_choice("feature_level", feature_level, FEATURE_LEVELS)
        self.depth, self.norm, self.feature_level = depth, norm, feature_level
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = make_norm(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for level in range(1, feature_level + 1):
            setattr(self, f"layer{level}", make_stage(depth, level, norm))
        self.out_channels = stage_channels(depth, feature_level)
        self.stride = stage_stride(feature_level)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for level in range(1, self.feature_level + 1):
            x = getattr(self, f"layer{level}")(x)
        return x

    def load_imagenet(self, path: str | Path) -> list[str]:
        """Load a torchvision ImageNet checkpoint (``--init PATH``), ignoring fc and absent stages."""
        return load_resnet_weights(self, path)


class UpBlock(nn.Module):
    """Bilinear up-sampling to a given size followed by conv 3x3 + norm + ReLU."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none")
        self.bn = make_norm(norm, cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.relu(self.bn(self.conv(x)))


DECODER_WIDTHS: tuple[int, ...] = (128, 64, 32, 32)
"""Default decoder: blocks at 1/16, 1/8, 1/4 and 1/2 of the input, the last layer at 1/2 and a
bilinear up-sampling of its output to full resolution (about 1.1 GFLOP at 192x384, ResNet-18)."""
FULL_RESOLUTION_WIDTHS: tuple[int, ...] = (256, 128, 64, 32, 32)
"""A heavier decoder with a block at every scale down to full resolution (about 4.5 GFLOP at
192x384); also what weights written before ``decoder_widths`` existed were trained with."""


def check_decoder_widths(widths: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Validate decoder widths: 1 to 5 positive ints, one block per scale from 1/16 upwards."""
    widths = tuple(widths)
    if not 1 <= len(widths) <= 5 or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                                             for w in widths):
        raise ValueError(f"decoder_widths={list(widths)!r} is not supported; accepted: 1 to 5 positive "
                         f"integers, one conv block per scale 1/16, 1/8, 1/4, 1/2, 1/1")
    return widths


class Decoder(nn.Module):
    """D: residual stages after ``feature_level``, then bilinear up-sampling and convolution blocks.

    ``widths`` gives one block per scale, from 1/16 of the input towards full resolution (at most
    five: 1/16, 1/8, 1/4, 1/2, 1/1). The last layer (11 filters or 1) runs at the last block's
    scale; when that is not full resolution its output is up-sampled bilinearly to the input size.
    """

    def __init__(self, task: str, feature_level: int = 4, depth: int = 18, norm: Norm = "batch",
                 widths: tuple[int, ...] = DECODER_WIDTHS) -> None:
        super().__init__()
        check_choice("task", task, TASKS)
        check_choice("depth", depth, DEPTHS)
        check_choice("feature_level", feature_level, FEATURE_LEVELS)
        self.widths = check_decoder_widths(widths)
        self.task, self.feature_level, self.depth = task, feature_level, depth
        self.in_channels = stage_channels(depth, feature_level)
        for level in range(feature_level + 1, 5):
            setattr(self, f"layer{level}", make_stage(depth, level, norm))
        self.stride = 16  # after layer4 (or a shallower split, which is up-sampled anyway)
        cin = stage_channels(depth, 4)
        self.project = UpBlock(cin, self.widths[0], norm)  # at 1/16
        self.up = nn.ModuleList(UpBlock(a, b, norm) for a, b in zip(self.widths[:-1], self.widths[1:]))
        self.head = nn.Conv2d(self.widths[-1], task_channels(task), 3, padding=1)
        _init_weights(self)

    def forward(self, features: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        x = features
        for level in range(self.feature_level + 1, 5):
            x = getattr(self, f"layer{level}")(x)
        h, w = int(out_size[0]), int(out_size[1])
        x = self.project(x, tuple(x.shape[-2:]))
        for block, f in zip(self.up, (8, 4, 2, 1)):
            x = block(x, (-(-h // f), -(-w // f)))
        x = self.head(x)
        if tuple(x.shape[-2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return x

    def load_imagenet(self, path: str | Path) -> list[str]:
        """Load the ImageNet weights of this decoder's residual stages (none when level 4)."""
        if self.feature_level == 4:
            return []
        return load_resnet_weights(self, path)


class TaskNet(nn.Module):
    """N = D∘E for one task (``semantic`` logits (N,11,H,W) or ``depth`` (N,1,H,W))."""

    def __init__(self, task: str, depth: int = 18, norm: Norm = "batch", feature_level: int = 4,
                 decoder_widths: tuple[int, ...] = DECODER_WIDTHS) -> None:
        super().__init__()
        self.task = task
        self.encoder = Encoder(depth, norm, feature_level)
        self.decoder = Decoder(task, feature_level, depth, norm, decoder_widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x), tuple(x.shape[-2:]))

    def load_imagenet(self, path: str | Path) -> list[str]:
        """Initialise E (and D's residual stages) from a torchvision ImageNet checkpoint."""
        keys = self.encoder.load_imagenet(path)
        return keys + [f"decoder.{k}" for k in self.decoder.load_imagenet(path)]


def resplit_state_dict(state: dict[str, torch.Tensor], from_level: int, to_level: int) -> dict[str, torch.Tensor]:
    """A TaskNet's weights, trained split after residual stage ``from_level``, renamed for a split
    after ``to_level``: ``encoder.layerK`` and ``decoder.layerK`` trade places, no value changes.

    N = D∘E is the same network wherever it is cut, so one trained N1 and N2 serve every feature
    level of Fig. 4; only G (which maps E1's output) depends on the level.
    """
    check_choice("feature_level", from_level, FEATURE_LEVELS)
    check_choice("feature_level", to_level, FEATURE_LEVELS)
    out = {}
    for key, value in state.items():
        part, _, rest = key.partition(".")
        if part in ("encoder", "decoder") and rest[:5] == "layer" and rest[5:6].isdigit():
            part = "encoder" if int(rest[5]) <= to_level else "decoder"
        out[f"{part}.{rest}" if rest else part] = value
    return out


TRANSFER_DOWNS: tuple[int, ...] = (0, 1, 2)


class TransferNet(nn.Module):
    """G: E1 features -> E2 features through an hourglass of ``down`` halvings (Sec. 4).

    ``down: 2`` is the paper's G: convolutions down to 1/4 of its input resolution and
    deconvolutions back. E1's features are at 1/16 of the image, so G's bottleneck is 1/64 of it:
    8x16 cells for a 512x1024 input, 2x4 for 128x256. ``down: 1`` or ``0`` (beyond the paper)
    keep the layer count and replace each stride-2 convolution by a stride-1 one with dilation 2
    and each deconvolution by a 3x3 convolution, so the bottleneck stays at 1/2 or at the input
    grid.
    """

    def __init__(self, channels: int, norm: Norm = "batch", hidden: int | None = None,
                 out_channels: int | None = None, down: int = 2) -> None:
        super().__init__()
        check_choice("norm", norm, NORMS)
        check_choice("transfer_down", down, TRANSFER_DOWNS)
        hidden = hidden or min(channels, 512)
        out_channels = out_channels or channels
        self.channels, self.out_channels, self.down_steps = channels, out_channels, down

        def block(conv: nn.Module, c: int) -> nn.Sequential:
            return nn.Sequential(conv, make_norm(norm, c), nn.ReLU(inplace=True))

        bias = norm == "none"

        def halve(i: int) -> nn.Module:
            if i < down:
                return nn.Conv2d(hidden, hidden, 3, 2, 1, bias=bias)
            return nn.Conv2d(hidden, hidden, 3, 1, 2, dilation=2, bias=bias)

        def double(i: int) -> nn.Module:
            if i < down:
                return nn.ConvTranspose2d(hidden, hidden, 4, 2, 1, bias=bias)
            return nn.Conv2d(hidden, hidden, 3, 1, 1, bias=bias)

        self.down = nn.Sequential(
            block(nn.Conv2d(channels, hidden, 3, 1, 1, bias=bias), hidden),
            block(halve(0), hidden),
            block(halve(1), hidden),
        )
        self.up = nn.Sequential(block(double(0), hidden), block(double(1), hidden))
        self.out = nn.Conv2d(hidden, out_channels, 3, 1, 1)
        _init_weights(self)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.up(self.down(features))
        if x.shape[-2:] != features.shape[-2:]:  # odd sizes: back to the input grid
            x = F.interpolate(x, size=features.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(x)


def transfer_features(g: nn.Module, d2: nn.Module, features: torch.Tensor,
                      size: tuple[int, int]) -> torch.Tensor:
    """Eq. 4 on task-1 features f = E1(x): D2(G(f)) at the image size. The one place it is
    written: training-time evaluation, the exported chain and the tests all call it."""
    return d2(g(features), size)


def transfer(e1: nn.Module, g: nn.Module, d2: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eq. 4: task-2 prediction from task-1 features, D2(G(E1(x)))."""
    return transfer_features(g, d2, e1(x), (x.shape[-2], x.shape[-1]))


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
