"""``atdt_train simulate``: render a split of a simulated domain into the dataset layout.

Layout (docs/architecture.md): ``OUT/dataset.yaml``, ``OUT/<split>.txt`` and
``OUT/<split>/{camera.json,rgb,right,semantic,depth}``. Frame ``i`` belongs to sequence
``i // K`` (K = the preset's ``camera.frames_per_sequence``), whose street is drawn from the
seed ``(S, split, i // K)``: splits never share a street, like the paper's split by sequence.
Re-running skips frames whose files all exist (every file is written atomically).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from atdt_ros.files import atomic_write
from atdt_train import cliargs

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_CODE = {name: i for i, name in enumerate(SPLITS)}
MAX_SIZE = 4096


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``simulate`` subcommand."""
    p = subparsers.add_parser(
        "simulate",
        help="render a simulated street domain (RGB, depth, semantics, optional stereo)",
        description="Render a split of a simulated street domain (RGB, exact depth, AT/DT "
                    "class labels, optional rectified right image) into the dataset layout of "
                    "docs/architecture.md. Deterministic per seed; re-running fills in missing "
                    "frames.",
    )
    p.add_argument("--domain", required=True,
                   help="preset name (config/domains/NAME.yaml) or path to a preset YAML")
    p.add_argument("--frames", type=int, required=True, help="number of frames in the split")
    p.add_argument("--size", type=parse_size, default=(192, 384), metavar="HxW",
                   help="image size, e.g. 192x384 (default)")
    p.add_argument("--split", choices=SPLITS, default="train")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--stereo", action="store_true",
                   help="also render the right image of a rectified stereo pair")
    p.add_argument("--out", type=Path, required=True, help="dataset directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` -> (H, W), each within 8..MAX_SIZE pixels."""
    h, w = cliargs.parse_size(text)
    if not (8 <= h <= MAX_SIZE and 8 <= w <= MAX_SIZE):
        raise argparse.ArgumentTypeError(f"size {text!r}: H and W must be within 8..{MAX_SIZE}")
    return h, w


def run(args: argparse.Namespace) -> int:
    """Entry point of ``atdt_train simulate``."""
    from atdt_train.sim.domain import DomainError  # noqa: PLC0415

    if args.frames < 1:
        log.error("--frames must be >= 1, got %d", args.frames)
        return 2
    try:
        simulate(args.domain, args.frames, args.size, args.split, args.seed, args.stereo,
                 args.out, progress=not args.no_progress)
    except (DomainError, DatasetMismatch) as exc:
        log.error("%s", exc)
        return 2
    return 0


class DatasetMismatch(ValueError):
    """The output directory already holds a dataset made with other settings."""


def frame_name(index: int) -> str:
    """File stem of frame ``index``."""
    return f"{index:06d}"


def sequence_rng(seed: int, split: str, sequence: int, *extra: int) -> np.random.Generator:
    """The random stream of one sequence (or of a frame within it, with ``extra``)."""
    return np.random.default_rng([seed, SPLIT_CODE[split], sequence, *extra])


def simulate(domain: str, frames: int, size: tuple[int, int], split: str, seed: int,
             stereo: bool, out: Path, progress: bool = True) -> Path:
    """Render (or complete) one split of a simulated dataset; returns the filelist path."""
    from tqdm import tqdm  # noqa: PLC0415

    from atdt_train.sim.domain import load_domain  # noqa: PLC0415
    from atdt_train.sim.render import (  # noqa: PLC0415
        DEPTH_SCALE,
        StreetRenderer,
        apply_lens,
        lens_maps,
    )
    from atdt_train.sim.scene import build_sequence, intrinsics  # noqa: PLC0415

    if split not in SPLIT_CODE:
        raise DatasetMismatch(f"split {split!r}: expected one of {SPLITS}")
    preset = load_domain(domain)
    height, width = size
    out = Path(out)
    split_dir = out / split
    for sub in ("rgb", "semantic", "depth") + (("right",) if stereo else ()):
        (split_dir / sub).mkdir(parents=True, exist_ok=True)
    # mount_height_m: the nominal height above the road (the middle of the preset's range; each
    # frame's own height varies around it, as a car's does with load and suspension)
    camera = dict(intrinsics(preset.camera.hfov_deg, width, height), width=width,
                  height=height, baseline=preset.camera.baseline_m,
                  mount_height_m=round(sum(preset.camera.height_m) / 2.0, 4))
    _record_dataset(out, preset, split, seed, size, frames, stereo, camera)
    atomic_write(split_dir / "camera.json", (json.dumps(camera, indent=2) + "\n").encode())

    def paths(i: int) -> dict[str, Path]:
        stem = frame_name(i) + ".png"
        p = {k: split_dir / k / stem for k in ("rgb", "semantic", "depth")}
        if stereo:
            p["right"] = split_dir / "right" / stem
        return p

    def complete(i: int) -> bool:
        return all(f.is_file() and f.stat().st_size > 0 for f in paths(i).values())

    k = preset.camera.frames_per_sequence
    todo = [i for i in range(frames) if not complete(i)]
    if len(todo) < frames:
        log.info("%s/%s: %d of %d frames already present", out, split, frames - len(todo), frames)
    renderer = None
    bar = tqdm(total=len(todo), desc=f"simulate {preset.name}/{split}", unit="frame",
               disable=not progress)
    # PNG encoding and writing overlap with rendering the next frame
    writer = ThreadPoolExecutor(max_workers=1)
    pending: deque[Future] = deque()
    try:
        by_seq: dict[int, list[int]] = {}
        for i in todo:
            by_seq.setdefault(i // k, []).append(i)
        for seq, indices in by_seq.items():
            if renderer is None:
                renderer = StreetRenderer(width, height)
            scene, poses = build_sequence(preset, sequence_rng(seed, split, seq), width,
                                          height, k)
            renderer.load(scene)
            for i in indices:
                pose = poses[i % k]
                semantic, depth = renderer.render_labels(pose)
                rng = sequence_rng(seed, split, seq, i % k)
                exposure = float(rng.uniform(*preset.lens.exposure))
                maps = lens_maps(depth, preset)
                rgb = apply_lens(renderer.render_rgb(pose), maps, preset, rng, exposure)
                p = paths(i)
                images = {
                    p["semantic"]: semantic,
                    p["depth"]: np.round(depth * DEPTH_SCALE).astype(np.uint16),
                    p["rgb"]: rgb,
                }
                if stereo:
                    right = renderer.render_rgb(pose.shifted_right(preset.camera.baseline_m))
                    # the left view's haze stands in: the baseline shift is negligible there
                    images[p["right"]] = apply_lens(right, maps, preset, rng, exposure)
                pending.append(writer.submit(_save_frame, images))
                while len(pending) > 2:
                    pending.popleft().result()
                    bar.update(1)
        while pending:
            pending.popleft().result()
            bar.update(1)
    finally:
        for f in pending:
            f.cancel()
        writer.shutdown(wait=True)
        bar.close()
        if renderer is not None:
            renderer.close()
    lines = []
    for i in range(frames):
        stem = frame_name(i) + ".png"
        right = f"{split}/right/{stem}" if stereo else ""
        lines.append(f"{split}/rgb/{stem};{right};{split}/semantic/{stem};{split}/depth/{stem}")
    filelist = out / f"{split}.txt"
    atomic_write(filelist, ("\n".join(lines) + "\n").encode())
    log.info("wrote %s (%d frames)", filelist, frames)
    return filelist


def _save_frame(images: dict[Path, np.ndarray]) -> None:
    """Encode the images of one frame as PNG (RGB given as RGB) and write each atomically."""
    import cv2  # noqa: PLC0415

    for path, img in images.items():
        if img.ndim == 3:  # colour: run-length strategy is faster and smaller here
            params = [cv2.IMWRITE_PNG_COMPRESSION, 1,
                      cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
            img = np.ascontiguousarray(img[..., ::-1])
        elif img.dtype == np.uint8:  # labels: large flat regions
            params = [cv2.IMWRITE_PNG_COMPRESSION, 1,
                      cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
        else:
            params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
        ok, buf = cv2.imencode(".png", img, params)
        if not ok:
            raise RuntimeError(f"PNG encoding failed for {path}")
        atomic_write(path, buf.tobytes())


def _record_dataset(out: Path, preset: Any, split: str, seed: int, size: tuple[int, int],
                    frames: int, stereo: bool, camera: dict[str, Any]) -> None:
    """Create or update ``OUT/dataset.yaml``; refuse to mix domains, seeds or sizes."""
    import yaml  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    # runs of other splits may update the same file concurrently
    with open(out / ".dataset.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = out / "dataset.yaml"
        meta: dict[str, Any] = {}
        if path.is_file():
            meta = yaml.safe_load(path.read_text()) or {}
            if meta.get("kind") != "sim":
                raise DatasetMismatch(f"{path}: kind is {meta.get('kind')!r}, not 'sim'")
            known = meta.get("domain") is not None or meta.get("preset") is not None
            if known and (meta.get("domain") != preset.name
                          or meta.get("preset") != preset.to_dict()):
                raise DatasetMismatch(
                    f"{path}: holds domain {meta.get('domain')!r} with a different preset; "
                    f"write domain {preset.name!r} to another --out directory"
                )
            old = (meta.get("splits") or {}).get(split)
            if old and (old.get("seed") != seed or old.get("size") != [size[0], size[1]]):
                raise DatasetMismatch(
                    f"{path}: split {split!r} was made with seed {old.get('seed')} and size "
                    f"{old.get('size')}; got seed {seed} and size {list(size)} "
                    "(use another --out directory or delete the split)"
                )
        meta.update(kind="sim", domain=preset.name, preset=preset.to_dict())
        splits = dict(meta.get("splits") or {})
        splits[split] = {"frames": frames, "seed": seed, "size": [size[0], size[1]],
                         "stereo": bool(stereo),
                         "camera": camera,
                         "frames_per_sequence": preset.camera.frames_per_sequence}
        meta["splits"] = splits
        atomic_write(path, yaml.safe_dump(meta, sort_keys=False).encode())
