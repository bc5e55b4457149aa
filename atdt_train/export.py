"""``atdt_train export``: the deployable chain of Eq. 4 as one artifact for the ROS node.

The chain computes both tasks from one E1 pass: task 1 as D1(E1(x)) and task 2 as
D2(G(E1(x))). It is written as a torch.export program (``pt2``), an ONNX model (``onnx``) and,
on CUDA machines with torch-tensorrt, a prebuilt TensorRT engine (``tensorrt``), next to a
``metadata.json`` (see :mod:`atdt_ros.artifact`). Each format is checked against the eager
model on real frames; the export fails when parity does not hold.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from atdt_train.cliargs import parse_size
from atdt_ros.artifact import (
    DIRECTIONS, FORMAT_FILES, ClassSpec, DepthSpec, InputSpec, Metadata, OutputSpec,
    ParityTolerance, load_metadata, sha256_file, write_metadata,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

LOG = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("pt2", "onnx", "tensorrt")
TOLERANCES: dict[str, ParityTolerance] = {
    "fp32": ParityTolerance(depth_max_abs=1e-3, semantic_min_agreement=0.999),
    "fp16": ParityTolerance(depth_max_abs=0.25, semantic_min_agreement=0.99),
}
"""Default parity tolerances per precision: depth in metres, semantic as label agreement."""


class ExportError(RuntimeError):
    """The chain cannot be exported, or an exported format fails the parity check."""


def labels(logits: "torch.Tensor") -> "torch.Tensor":
    """Class ids from (N, C, H, W) logits, as the deployed chain computes them.

    The argmax runs with the classes innermost: on CPU about 3x faster than over the channel
    dimension of an NCHW tensor (copy included), with the same values.
    """
    import torch

    return logits.contiguous(memory_format=torch.channels_last).argmax(dim=1)


def _chain_class() -> type:
    from torch import nn

    from atdt_train.models import transfer_features

    class Chain(nn.Module):
        """Eq. 4 deployed: task 1 = D1(E1(x)), task 2 = D2(G(E1(x))), one E1 pass for both."""

        def __init__(self, e1: nn.Module, d1: nn.Module, g: nn.Module, d2: nn.Module,
                     task1: str, task2: str) -> None:
            super().__init__()
            if {task1, task2} != {"depth", "semantic"}:
                raise ExportError(f"tasks must be depth and semantic, got {task1}, {task2}")
            self.e1, self.d1, self.g, self.d2 = e1, d1, g, d2
            self.task1, self.task2 = task1, task2

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            size = (x.shape[-2], x.shape[-1])
            features = self.e1(x)
            task1 = self.d1(features, size)                 # N1 = D1∘E1
            task2 = transfer_features(self.g, self.d2, features, size)  # Eq. 4
            depth, logits = (task1, task2) if self.task1 == "depth" else (task2, task1)
            return depth, labels(logits)

    return Chain


def build_chain(n1: nn.Module, n2: nn.Module, g: nn.Module, direction: str) -> nn.Module:
    """The eval-mode chain of Eq. 4 from N1 = D1∘E1, N2 = D2∘E2 (only D2 is used) and G."""
    if direction not in DIRECTIONS:
        raise ExportError(f"direction {direction!r} is not one of {sorted(DIRECTIONS)}")
    task1, task2 = DIRECTIONS[direction]
    chain = _chain_class()(n1.encoder, n1.decoder, g, n2.decoder, task1, task2)
    return chain.eval()


def model_hash(chain: nn.Module, input_size: tuple[int, int], direction: str) -> str:
    """SHA-256 of the chain's tensors (in key order), input size and direction."""
    import torch

    h = hashlib.sha256(f"{direction};{input_size[0]}x{input_size[1]};".encode())
    for key, value in sorted(chain.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
                 .numpy().tobytes())
    return h.hexdigest()


@dataclass
class ParityResult:
    """Largest depth difference (metres) and label agreement of one format vs eager."""

    depth_max_abs: float
    semantic_agreement: float
    frames: int

    def holds(self, tol: ParityTolerance) -> bool:
        """Whether the result is within the tolerance."""
        return (self.depth_max_abs <= tol.depth_max_abs
                and self.semantic_agreement >= tol.semantic_min_agreement)


def compare(reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]) -> ParityResult:
    """Parity of per-frame outputs (numpy dicts with depth and semantic) against a reference."""
    import numpy as np

    worst, same, total = 0.0, 0, 0
    for ref, out in zip(reference, candidate, strict=True):
        d_ref, d_out = np.asarray(ref["depth"], np.float64), np.asarray(out["depth"], np.float64)
        if d_ref.shape != d_out.shape:
            raise ExportError(f"depth shape {d_out.shape} != eager {d_ref.shape}")
        diff = np.abs(d_ref - d_out)
        worst = max(worst, float(np.nanmax(diff)) if np.isfinite(diff).any() else float("inf"))
        s_ref, s_out = np.asarray(ref["semantic"]), np.asarray(out["semantic"])
        if s_ref.shape != s_out.shape:
            raise ExportError(f"semantic shape {s_out.shape} != eager {s_ref.shape}")
        same += int((s_ref.astype(np.int64) == s_out.astype(np.int64)).sum())
        total += s_ref.size
    return ParityResult(worst, same / max(total, 1), len(reference))


def _eager_outputs(chain: nn.Module, frames: np.ndarray) -> list[dict[str, np.ndarray]]:
    import torch

    outs = []
    with torch.inference_mode():
        for i in range(len(frames)):
            depth, semantic = chain(torch.from_numpy(frames[i:i + 1]))
            outs.append({"depth": depth.numpy(), "semantic": semantic.numpy()})
    return outs


def export_pt2(chain: nn.Module, path: Path, input_size: tuple[int, int]) -> None:
    """torch.export with a dynamic batch dimension (traced with a batch of 2), saved as .pt2."""
    import torch

    example = torch.zeros(2, 3, *input_size)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(chain, (example,), dynamic_shapes=({0: batch},))
    tmp = path.with_name(f".{os.getpid()}.{path.name}")  # torch wants the .pt2 suffix
    torch.export.save(program, str(tmp))
    os.replace(tmp, path)


def export_onnx(chain: nn.Module, path: Path, input_size: tuple[int, int]) -> list[str]:
    """ONNX via the dynamo exporter (.onnx + .onnx.data), dynamic batch; returns the files."""
    import torch

    example = torch.zeros(2, 3, *input_size)
    tmpdir = Path(tempfile.mkdtemp(prefix=".onnx.", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        batch = torch.export.Dim("batch", min=1, max=64)
        program = torch.onnx.export(
            chain, (example,), dynamo=True, input_names=["image"],
            output_names=["depth", "semantic"], dynamic_shapes=({0: batch},),
            external_data=True, verbose=False)
        program.save(str(tmp), external_data=True)
        files = sorted(p.name for p in tmpdir.iterdir())
        # data first, graph last: a reader never sees a graph pointing at missing data
        for name in sorted(files, key=lambda n: n == path.name):
            os.replace(tmpdir / name, path.parent / name)
        return files
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def read_frames(dataset: Any, count: int) -> tuple[np.ndarray, float | None, float | None]:
    """Up to ``count`` evenly spaced normalised images (N,3,H,W) of a FrameDataset, fx and the
    camera height in metres (None: not recorded)."""
    import numpy as np

    if len(dataset) == 0:
        raise ExportError(f"{getattr(dataset, 'source', 'dataset')} holds no frames for the "
                          f"parity check")
    step = max(1, len(dataset) // count)
    indices = list(range(0, len(dataset), step))[:count]
    samples = [dataset[i] for i in indices]
    images = np.stack([np.asarray(s["image"], dtype=np.float32) for s in samples])
    focal = float(samples[0]["focal"]) if "focal" in samples[0] else None
    height = float(samples[0].get("camera_height", float("nan")))
    return images, focal, None if np.isnan(height) else height


def export_chain(
    n1: nn.Module, n2: nn.Module, g: nn.Module, out: str | os.PathLike, *,
    direction: str, input_size: tuple[int, int], frames: np.ndarray,
    formats: Sequence[str] = ("pt2", "onnx"), precision: str = "fp16",
    tolerance: ParityTolerance | None = None, depth: DepthSpec | None = None,
    sources: dict[str, str] | None = None, extra: dict[str, Any] | None = None,
    device: str = "cuda",
) -> Metadata:
    """Write the artifact directory ``out``; raises ExportError when a format fails parity.

    ``frames`` are normalised (N,3,H,W) float32 images at ``input_size`` for the parity check.
    ``precision`` and ``device`` apply to the ``tensorrt`` format only.
    """
    import numpy as np
    import torch

    from atdt_ros import classmap
    from atdt_ros.backends import native_bf16, open_backend, tensorrt_status

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown formats {unknown} (accepted: {', '.join(FORMATS)})")
    if "tensorrt" in formats:
        ok, why = tensorrt_status()
        if not ok:
            raise ExportError(f"format tensorrt cannot be built here: {why}; export pt2/onnx "
                              f"and build the engine on the vehicle (atdt_perception with "
                              f"build_only:=true)")
    frames = np.ascontiguousarray(frames, dtype=np.float32)
    if frames.ndim != 4 or frames.shape[1:] != (3, *input_size) or len(frames) == 0:
        raise ExportError(f"parity frames must be (N,3,{input_size[0]},{input_size[1]}), "
                          f"got {frames.shape}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chain = build_chain(n1, n2, g, direction).to("cpu")
    digest = model_hash(chain, input_size, direction)
    depth = depth or DepthSpec("m", 0.0, 100.0, False, 1.0, 1.0)
    written: dict[str, str] = {}
    if "pt2" in formats or "tensorrt" in formats:
        LOG.info("export: torch.export -> %s", out / FORMAT_FILES["pt2"])
        export_pt2(chain, out / FORMAT_FILES["pt2"], input_size)
        written["pt2"] = FORMAT_FILES["pt2"]
    if "onnx" in formats:
        LOG.info("export: ONNX (dynamo) -> %s", out / FORMAT_FILES["onnx"])
        onnx_files = export_onnx(chain, out / FORMAT_FILES["onnx"], input_size)
        written["onnx"] = FORMAT_FILES["onnx"]
    # every file of the chain with its hash: the node loads nothing that does not match
    files = {name: sha256_file(out / name)
             for name in sorted({*written.values(), *(onnx_files if "onnx" in formats else ())})}

    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = ""
    trt_ok, trt_why = tensorrt_status()
    fp32 = TOLERANCES["fp32"]
    metadata = Metadata(
        input=InputSpec(input_size[0], input_size[1]),
        outputs={"depth": OutputSpec("depth", "float32", ("N", "1", "H", "W")),
                 "semantic": OutputSpec("semantic", "int64", ("N", "H", "W"))},
        classes=ClassSpec(tuple(c.id for c in classmap.CLASSES),
                          tuple(c.name for c in classmap.CLASSES),
                          tuple(c.color for c in classmap.CLASSES), classmap.UNLABELED),
        depth=depth, direction=direction,
        tasks={"task1": DIRECTIONS[direction][0], "task2": DIRECTIONS[direction][1]},
        formats=written, parity_tolerance=tolerance or fp32, parity={},
        sources=dict(sources or {}), model_hash=digest, files=files,
        versions={"torch": torch.__version__, "onnxruntime": ort_version,
                  "tensorrt": trt_why if trt_ok else ""},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        extra=dict(extra or {}),
    )
    # metadata first (the backends read it), then parity per format, then final metadata
    write_metadata(out, metadata)
    reference = _eager_outputs(chain, frames)
    checks = [("torch", "pt2", "fp32"), ("onnxruntime", "onnx", "fp32")]
    if "tensorrt" in formats:
        checks.append(("tensorrt", "tensorrt", precision))
    failures = []
    for backend_name, fmt, prec in checks:
        if fmt not in formats:
            continue
        tol = (tolerance or fp32) if prec == "fp32" else TOLERANCES.get(prec, fp32)
        # trusted: the files were written by this process a moment ago (and are hash-checked)
        backend = open_backend(out, backend_name, device="cpu" if fmt != "tensorrt" else device,
                               precision=prec, metadata=metadata, trust_model_code=True)
        result = compare(reference, [backend.infer(frames[i:i + 1]) for i in range(len(frames))])
        metadata.parity[fmt] = {"depth_max_abs": result.depth_max_abs,
                                "semantic_agreement": result.semantic_agreement,
                                "frames": result.frames, "precision": prec,
                                "tolerance_depth_max_abs": tol.depth_max_abs,
                                "tolerance_semantic_min_agreement": tol.semantic_min_agreement}
        LOG.info("parity %s (%s): depth max |diff| %.3g m (tol %.3g), labels agree %.5f "
                 "(min %.4f) on %d frames", fmt, prec, result.depth_max_abs, tol.depth_max_abs,
                 result.semantic_agreement, tol.semantic_min_agreement, result.frames)
        if not result.holds(tol):
            failures.append(f"{fmt}: depth max |diff| {result.depth_max_abs:.3g} m "
                            f"(tol {tol.depth_max_abs:.3g}), label agreement "
                            f"{result.semantic_agreement:.5f} (min {tol.semantic_min_agreement})")
        if fmt == "tensorrt":
            metadata.extra["tensorrt_engine"] = str(Path(backend.engine_path).relative_to(out))
    if "pt2" in formats and native_bf16():
        # informational: what the node's `precision: bf16` (torch backend) changes
        bf16 = open_backend(out, "torch", precision="bf16", metadata=metadata,
                            trust_model_code=True)
        result = compare(reference, [bf16.infer(frames[i:i + 1]) for i in range(len(frames))])
        metadata.parity["pt2_bf16"] = {"depth_max_abs": result.depth_max_abs,
                                       "semantic_agreement": result.semantic_agreement,
                                       "frames": result.frames, "precision": "bf16",
                                       "gating": False}
        LOG.info("parity pt2 under bf16 autocast (informational): depth max |diff| %.3g m, "
                 "labels agree %.5f", result.depth_max_abs, result.semantic_agreement)
    write_metadata(out, metadata)
    if failures:
        raise ExportError(f"parity check failed for {out}: " + "; ".join(failures))
    return load_metadata(out)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``atdt_train`` command line."""
    p = subparsers.add_parser(
        "export", help="export the Eq. 4 chain (pt2 / onnx / tensorrt) for the ROS node",
        description="Export a trained experiment's chain D1(E1(x)), D2(G(E1(x))) as one "
                    "artifact directory with metadata.json, checked for parity on real frames.")
    p.add_argument("experiment", help="experiment YAML (or its run directory) with trained N1, N2, G")
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument("--formats", default="pt2,onnx",
                   help="comma-separated: pt2, onnx, tensorrt (default: pt2,onnx)")
    p.add_argument("--size", type=parse_size, default=None,
                   help="network input HxW (default: the experiment's resolution)")
    p.add_argument("--filelist", default=None,
                   help="frames for the parity check (default: domain B's test list)")
    p.add_argument("--kind", default=None,
                   help="dataset kind of --filelist (default: its dataset.yaml)")
    p.add_argument("--parity-frames", type=int, default=8, help="frames checked (default 8)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp16",
                   help="TensorRT precision (default fp16)")
    p.add_argument("--device", default="cuda", help="TensorRT device (default cuda)")
    p.add_argument("--depth-tol", type=float, default=None,
                   help=f"max |depth diff| in metres for fp32 formats "
                        f"(default {TOLERANCES['fp32'].depth_max_abs})")
    p.add_argument("--min-agreement", type=float, default=None,
                   help=f"min fraction of identical labels for fp32 formats "
                        f"(default {TOLERANCES['fp32'].semantic_min_agreement})")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """The ``export`` command: load the trained networks, export, check parity."""
    from atdt_train.config import load_experiment
    from atdt_train.data import FrameDataset
    from atdt_train.stages import load_networks, make_dataset

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    path = Path(args.experiment)
    exp = load_experiment(path / "experiment.yaml" if path.is_dir() else path)
    n1, n2, g, info = load_networks(exp)
    size = args.size or (int(info["input_size"][0]), int(info["input_size"][1]))
    if args.filelist:
        dataset = FrameDataset(args.filelist, kind=args.kind, size=size)
        frames_from = str(args.filelist)
    else:
        dataset = make_dataset(exp, "B", "test")
        frames_from = f"domains.B.test ({exp.domains.B.test})"
    frames, focal, camera_height = read_frames(dataset, args.parity_frames)
    if frames.shape[-2:] != tuple(size):
        raise ExportError(f"parity frames are {frames.shape[-2:]}, the export size is {size}")
    fp32 = TOLERANCES["fp32"]
    tol = ParityTolerance(args.depth_tol if args.depth_tol is not None else fp32.depth_max_abs,
                          args.min_agreement if args.min_agreement is not None
                          else fp32.semantic_min_agreement)
    d = info.get("depth") or {}
    focal_ref = d.get("focal_ref")
    normalised = bool(d.get("focal_normalised")) and focal_ref is not None
    height_ref = d.get("height_ref")
    by_height = normalised and bool(d.get("height_normalised")) and height_ref is not None
    if by_height and camera_height is None:
        LOG.error("the chain is height-normalised (depth.height_normalised) but the parity frames "
                  "(%s) record no camera height; export with frames that do, or set "
                  "domains.B.camera_height", frames_from)
        return 1
    depth = DepthSpec("m", float(d.get("min_depth", 0.0)), float(d.get("max_depth", 100.0)),
                      normalised, float(focal_ref or 1.0),
                      float(focal or focal_ref or 1.0) if normalised else 1.0,
                      by_height, float(height_ref) if by_height else 1.0,
                      float(camera_height) if by_height else 1.0)
    sources = {name: sha256_file(p) for name, p in (info.get("checkpoints") or {}).items()}
    try:
        metadata = export_chain(
            n1, n2, g, args.out, direction=info["direction"], input_size=size, frames=frames,
            formats=formats, precision=args.precision, tolerance=tol, depth=depth,
            sources=sources, device=args.device,
            extra={"experiment": info.get("name", str(args.experiment)),
                   "parity_frames_from": frames_from,
                   "backbone_depth": info.get("backbone_depth"),
                   "feature_level": info.get("feature_level"), "norm": info.get("norm")})
    except ExportError as exc:
        LOG.error("%s", exc)
        return 1
    LOG.info("exported %s to %s (model %s)", ", ".join(metadata.formats), args.out,
             metadata.model_hash[:16])
    return 0
