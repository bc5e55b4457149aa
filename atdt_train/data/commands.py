"""``atdt_train filelist`` (write a filelist for a dataset root) and ``atdt_train proxy-depth``."""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path
from typing import Callable, Iterator

from atdt_ros.files import atomic_write

from .decoders import KINDS
from .filelist import DatasetError, Frame, read_filelist, read_list_kind, write_filelist

log = logging.getLogger(__name__)

DEFAULT_SPLITS = {"sim": "train", "carla": "", "cityscapes": "train", "kitti": "training", "synthia": ""}
"""Split scanned when --split is not given ("" = the whole root)."""


def _first_dir(base: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (base / name).is_dir():
            return base / name
    return None


def _pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())


def _same_name(folder: Path | None, name: str) -> Path | None:
    if folder is None:
        return None
    path = folder / name
    return path if path.is_file() else None


def _scan_by_name(base: Path, rgb: tuple[str, ...], right: tuple[str, ...],
                  semantic: tuple[str, ...], depth: tuple[str, ...]) -> Iterator[Frame]:
    """Frames from sibling folders holding files of the same name (simulator, CARLA, Synthia-SF)."""
    rgb_dir = _first_dir(base, rgb)
    if rgb_dir is None:
        raise DatasetError(f"no image folder under {base}: expected one of {', '.join(rgb)}")
    right_dir, sem_dir, depth_dir = (_first_dir(base, n) for n in (right, semantic, depth))
    for image in _pngs(rgb_dir):
        yield Frame(image, _same_name(right_dir, image.name), _same_name(sem_dir, image.name),
                    _same_name(depth_dir, image.name))


def _scan_sim(root: Path, split: str) -> Iterator[Frame]:
    yield from _scan_by_name(root / split, ("rgb",), ("right",), ("semantic",), ("depth",))


def _sequences(root: Path, split: str, markers: tuple[str, ...]) -> list[Path]:
    """The split folder itself, or every sequence folder under it, that holds one of ``markers``."""
    base = root / split if split else root
    if any((base / m).is_dir() for m in markers):
        return [base]
    found = sorted(p for p in base.iterdir() if p.is_dir() and any((p / m).is_dir() for m in markers))
    if not found:
        raise DatasetError(f"no folder holding {' or '.join(m + '/' for m in markers)} under {base}")
    return found


def _scan_carla(root: Path, split: str) -> Iterator[Frame]:
    for seq in _sequences(root, split, ("CameraRGB", "rgb")):
        yield from _scan_by_name(seq, ("CameraRGB", "rgb"), ("CameraRGBRight", "right"),
                                 ("CameraSemSeg", "semantic"), ("CameraDepth", "depth"))


def _scan_synthia(root: Path, split: str) -> Iterator[Frame]:
    for seq in _sequences(root, split, ("RGBLeft",)):
        yield from _scan_by_name(seq, ("RGBLeft",), ("RGBRight",), ("GTLeft",), ("DepthLeft",))


def _scan_cityscapes(root: Path, split: str) -> Iterator[Frame]:
    left_root = root / "leftImg8bit" / split
    if not left_root.is_dir():
        raise DatasetError(f"no Cityscapes images: {left_root} is not a folder")
    for city in sorted(p for p in left_root.iterdir() if p.is_dir()):
        for image in _pngs(city):
            if not image.name.endswith("_leftImg8bit.png"):
                continue
            stem = image.name[: -len("_leftImg8bit.png")]

            def find(folder: str, suffix: str) -> Path | None:
                path = root / folder / split / city.name / f"{stem}{suffix}"
                return path if path.is_file() else None

            yield Frame(image, find("rightImg8bit", "_rightImg8bit.png"),
                        find("gtFine", "_gtFine_labelIds.png"), find("disparity", "_disparity.png"))


def _scan_kitti(root: Path, split: str) -> Iterator[Frame]:
    base = root / split
    image_dir = _first_dir(base, ("image_2", "colored_0"))
    if image_dir is None:
        raise DatasetError(f"no KITTI images under {base}: expected image_2/ (2015) or colored_0/ (2012)")
    right_dir = _first_dir(base, ("image_3", "colored_1"))
    sem_dir = _first_dir(base, ("semantic",))
    disp_dir = _first_dir(base, ("disp_occ_0", "disp_occ", "disp_noc_0", "disp_noc"))
    for image in _pngs(image_dir):
        yield Frame(image, _same_name(right_dir, image.name), _same_name(sem_dir, image.name),
                    _same_name(disp_dir, image.name))


SCANNERS: dict[str, Callable[[Path, str], Iterator[Frame]]] = {
    "sim": _scan_sim, "carla": _scan_carla, "cityscapes": _scan_cityscapes,
    "kitti": _scan_kitti, "synthia": _scan_synthia,
}


def scan_dataset(kind: str, root: str | os.PathLike, splits: list[str] | None = None) -> list[Frame]:
    """Frames of a dataset root laid out in its kind's standard structure (docs/datasets.md)."""
    if kind not in SCANNERS:
        raise DatasetError(f"unknown dataset kind {kind!r}; accepted: {', '.join(KINDS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder")
    frames: list[Frame] = []
    for split in splits or [DEFAULT_SPLITS[kind]]:
        if split and not (root / split).is_dir() and kind not in ("cityscapes",):
            raise DatasetError(f"split folder {root / split} does not exist")
        frames.extend(SCANNERS[kind](root, split))
    if not frames:
        raise DatasetError(f"no frames found for kind {kind} under {root} (splits: {splits or 'default'})")
    return frames


def _declare_kind(list_path: Path, kind: str) -> None:
    """Write ``dataset.yaml`` (kind) beside a list unless one is there; warn if it names another kind."""
    existing = read_list_kind(list_path)
    meta = list_path.absolute().parent / "dataset.yaml"
    if existing is None and not meta.exists():
        atomic_write(meta, f"kind: {kind}\n")
    elif existing != kind:
        log.warning("%s declares kind %r, not %r: give --kind %s / kind: %s when using %s",
                    meta, existing, kind, kind, kind, list_path)


def run_filelist(args: argparse.Namespace) -> int:
    """``atdt_train filelist``: scan a dataset root and write its filelist."""
    splits = [s for part in (args.split or []) for s in part.split(",") if s] or None
    try:
        frames = scan_dataset(args.kind, args.root, splits)
        out = write_filelist(args.out, frames)
        _declare_kind(out, args.kind)
    except DatasetError as exc:
        log.error("%s", exc)
        return 2
    counts = {f: sum(getattr(fr, f) is not None for fr in frames) for f in ("right", "semantic", "depth")}
    log.info("wrote %s: %d frames (right %d, semantic %d, depth %d)", out, len(frames),
             counts["right"], counts["semantic"], counts["depth"])
    return 0


MAX_SATURATION_WARNINGS = 5
"""Saturated frames named one by one in the log; all of them go to proxy_depth_stats.json."""


def run_proxy_depth(args: argparse.Namespace) -> int:
    """``atdt_train proxy-depth``: SGBM + left-right check depth labels and a filelist pointing to them.

    Warns per frame when the disparities saturate (:data:`~.proxy_depth.SATURATION_SHARE` of
    them within :data:`~.proxy_depth.SATURATION_MARGIN_PX` of the top of the range) and in the
    summary when fewer than :data:`~.proxy_depth.LOW_KEPT_FRACTION` of the pixels are kept; the
    exit status stays 0 (the labels are written), the warnings go to the stats file too.
    """
    import json

    import cv2
    from tqdm import tqdm

    from .decoders import encode_depth_png256, get_decoder
    from .proxy_depth import (DEFAULT_MIN_DEPTH_M, LOW_KEPT_FRACTION, SATURATION_MARGIN_PX, SATURATION_SHARE,
                              ProxyStats, StereoParams, stereo_proxy_depth)

    try:
        if args.num_disparities is not None and args.min_depth is not None:
            raise ValueError(f"give --num-disparities ({args.num_disparities}) or --min-depth "
                             f"({args.min_depth}), not both: the range follows from --min-depth")
        min_depth = DEFAULT_MIN_DEPTH_M if args.min_depth is None else args.min_depth
        params = StereoParams(args.num_disparities, args.block_size, args.max_lr_diff, min_depth=min_depth)
        if not math.isfinite(args.doffs):
            raise ValueError(f"--doffs must be a finite number of pixels, got {args.doffs}")
        kind = args.kind or read_list_kind(args.list)
        if kind is None:
            raise DatasetError(f"no dataset kind for {args.list}: pass --kind")
        decoder = get_decoder(kind, args.fx, args.baseline)
        frames = read_filelist(args.list)
        stereo = [f for f in frames if f.right is not None]
        if not stereo:
            raise DatasetError(f"{args.list} has no frame with a right image (second field)")
    except (DatasetError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    out = Path(args.out)
    (out / "depth").mkdir(parents=True, exist_ok=True)
    stats = ProxyStats()
    new_frames: list[Frame] = []
    ranges: set[int] = set()
    saturated: list[dict[str, object]] = []
    for index, frame in enumerate(tqdm(stereo, desc="proxy depth", unit="frame")):
        try:
            left = decoder.rgb(frame.rgb)
            right = decoder.rgb(frame.right)  # type: ignore[arg-type]
            camera = decoder.camera(frame, left.shape[1])
            if camera is None or camera.baseline is None:
                raise DatasetError(f"no camera focal length and baseline for {frame.rgb}: pass --fx and --baseline")
            scale = left.shape[1] / camera.width if camera.width else 1.0
            fx, doffs = camera.fx * scale, args.doffs * scale
            result = stereo_proxy_depth(left, right, fx, camera.baseline, params, doffs)
            exact = decoder.depth(frame.depth, frame) if (args.compare and frame.depth is not None) else None
        except (DatasetError, ValueError) as exc:
            log.error("%s", exc)
            return 2
        if result.num_disparities not in ranges:
            ranges.add(result.num_disparities)
            log.info("%s: searching disparities 0..%d px (depths from %.3g m on)", frame.rgb,
                     result.num_disparities, result.nearest_depth)
        share = result.saturated_share
        if share >= SATURATION_SHARE:
            saturated.append({"frame": str(frame.rgb), "saturated_share": share,
                              "num_disparities": result.num_disparities})
            if len(saturated) <= MAX_SATURATION_WARNINGS:
                fix = (f"--num-disparities {2 * result.num_disparities}" if params.num_disparities is not None
                       else f"--min-depth {params.min_depth / 2:g}")
                log.warning("%s: %.1f %% of the matched disparities lie within %g px of the top of the "
                            "searched range (0..%d px, depths from %.3g m on): the scene is nearer, those "
                            "pixels are wrong or lost; search a larger range (e.g. %s)", frame.rgb, 100 * share,
                            SATURATION_MARGIN_PX, result.num_disparities, result.nearest_depth, fix)
        stats.add(result.depth, exact)
        target = out / "depth" / f"{index:06d}_{frame.rgb.stem}.png"
        ok, png = cv2.imencode(".png", encode_depth_png256(result.depth))
        if not ok:
            log.error("cannot encode %s", target)
            return 1
        atomic_write(target, png.tobytes())
        new_frames.append(Frame(frame.rgb, frame.right, frame.semantic, target))
    list_path = write_filelist(out / Path(args.list).name, new_frames)
    _declare_kind(list_path, kind)
    summary = stats.summary()
    warnings: list[str] = []
    if saturated:
        warnings.append(f"{len(saturated)} of {len(new_frames)} frames saturated the disparity range "
                        f"(>= {100 * SATURATION_SHARE:g} % of matches within {SATURATION_MARGIN_PX:g} px of "
                        f"its top): raise --num-disparities or lower --min-depth")
    if summary["kept_fraction"] < LOW_KEPT_FRACTION:
        warnings.append(f"only {100 * summary['kept_fraction']:.1f} % of the pixels were kept (below "
                        f"{100 * LOW_KEPT_FRACTION:g} %): check the disparity range (--min-depth, "
                        f"--num-disparities), the camera (--fx, --baseline, --doffs) and that the pairs are rectified")
    (out / "proxy_depth_stats.json").write_text(json.dumps(
        {"frames": len(new_frames), "params": vars(params), "doffs": args.doffs,
         "num_disparities_used": sorted(ranges), **summary, "saturated_frames": saturated,
         "warnings": warnings}, indent=2) + "\n", encoding="utf-8")
    message = ", ".join(f"{k} {v:.4f}" for k, v in summary.items())
    log.info("wrote %d proxy depth labels and %s (%s)", len(new_frames), list_path, message)
    for warning in warnings:
        log.warning("%s", warning)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``filelist`` and ``proxy-depth`` subcommands."""
    p = subparsers.add_parser("filelist", help="write a filelist for a dataset root",
                              description="Scan a dataset root in its kind's standard layout and write "
                                          "an rgb;right;semantic;depth filelist (see docs/datasets.md).")
    p.add_argument("--kind", required=True, choices=KINDS, help="dataset kind")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--split", action="append", metavar="NAME[,NAME...]",
                   help="split(s) to scan: sim train|val|test; cityscapes train|val|test; kitti "
                        "training|testing; synthia/carla sequence folders (default: "
                        + ", ".join(f"{k} {v or 'all'}" for k, v in DEFAULT_SPLITS.items()) + ")")
    p.add_argument("--out", required=True, help="filelist to write")
    p.set_defaults(func=run_filelist)

    q = subparsers.add_parser("proxy-depth", help="proxy depth labels from stereo (SGBM + left-right check)",
                              description="Compute disparity with OpenCV StereoSGBM on each stereo pair of a "
                                          "filelist, keep pixels passing a left-right consistency check, "
                                          "write depth labels (uint16 PNG, metres*256, 0 invalid) and a filelist.")
    q.add_argument("--list", required=True, help="input filelist (needs the right-image field)")
    q.add_argument("--out", required=True, help="output folder: depth/*.png and a filelist of the same name")
    q.add_argument("--kind", choices=KINDS, help="dataset kind (default: dataset.yaml beside the list)")
    q.add_argument("--fx", type=float, help="focal length in pixels at native width, when the dataset gives none")
    q.add_argument("--baseline", type=float, help="stereo baseline in metres, when the dataset gives none")
    q.add_argument("--num-disparities", type=int,
                   help="SGBM disparity range in pixels, a multiple of 16 (default: derived per frame, "
                        "fx * baseline / min-depth - doffs rounded up to a multiple of 16)")
    q.add_argument("--min-depth", type=float,
                   help="nearest depth in metres the derived range reaches (default "
                        "0.5, the configs' depth.min_depth); lower searches further and costs more time")
    q.add_argument("--doffs", type=float, default=0.0,
                   help="principal-point offset of the right camera in pixels at native width, "
                        "depth = fx * baseline / (disparity + doffs) (Middlebury's doffs; default 0)")
    q.add_argument("--block-size", type=int, default=5, help="SGBM block size (odd)")
    q.add_argument("--max-lr-diff", type=float, default=1.0, help="left-right check tolerance in pixels")
    q.add_argument("--compare", action="store_true",
                   help="score the proxy labels against the list's depth field (kept fraction, abs rel error)")
    q.set_defaults(func=run_proxy_depth)
