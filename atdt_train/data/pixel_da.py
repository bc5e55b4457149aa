"""Pixel-level domain adaptation as a plug-in: B's images re-rendered in A's style, on disk.

The paper (Sec. 5.3, Tab. 3/4) makes B's images look like A's with CycleGAN and then runs the
Baseline and AT/DT on the translated images. Here the translation is a dataset of its own, so
every stage, evaluation and report works on it unchanged:

- ``atdt_train translate --method fda`` writes it with FDA (Yang & Soatto, "FDA: Fourier Domain
  Adaptation for Semantic Segmentation", CVPR 2020): the low-frequency amplitude spectrum of each
  image is replaced by an A image's, its phase (the structure) is kept. Training-free, CPU only.
- Images translated by any other tool (CycleGAN, ...) come in through the filelists, as in the
  official AT/DT code: a list whose ``rgb`` field points at the translated images.

The output mirrors the source dataset's tree: translated images are written where the originals
are, every other file and folder (labels, depth, camera files, ``dataset.yaml``) is a relative
symbolic link to the original, and the filelists are copied, so every decoder finds what it finds
in the source. A ``pixel_da.json`` records how the images were made; a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np

from atdt_ros.files import atomic_path, atomic_write

from .decoders import read_rgb
from .filelist import DatasetError, read_filelist

log = logging.getLogger(__name__)

METHODS = ("fda",)
RECORD = "pixel_da.json"


def fda(source: np.ndarray, style: np.ndarray, beta: float) -> np.ndarray:
    """FDA: ``source`` (uint8 H,W,3) with the low-frequency amplitude spectrum of ``style``.

    The window is the centred (2b+1) x (2b+1) block of the shifted spectrum, b = floor(min(H, W) *
    beta), as in the FDA paper's code; ``style`` is resized to ``source``'s size first. beta = 0
    leaves the image as it is (up to rounding).
    """
    import cv2

    if not 0.0 <= beta <= 0.5:
        raise ValueError(f"FDA beta must be in [0, 0.5], got {beta}")
    height, width = source.shape[:2]
    if style.shape[:2] != (height, width):
        style = cv2.resize(style, (width, height), interpolation=cv2.INTER_AREA)
    spectrum = np.fft.fftshift(np.fft.fft2(source.astype(np.float64), axes=(0, 1)), axes=(0, 1))
    style_amplitude = np.abs(np.fft.fftshift(np.fft.fft2(style.astype(np.float64), axes=(0, 1)), axes=(0, 1)))
    amplitude, phase = np.abs(spectrum), np.angle(spectrum)
    b = int(np.floor(min(height, width) * beta))
    cy, cx = height // 2, width // 2
    window = (slice(cy - b, cy + b + 1), slice(cx - b, cx + b + 1))
    amplitude[window] = style_amplitude[window]
    mixed = np.fft.ifftshift(amplitude * np.exp(1j * phase), axes=(0, 1))
    image = np.real(np.fft.ifft2(mixed, axes=(0, 1)))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _inside(root: Path, path: Path, where: str) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        raise DatasetError(f"{where}: {path} lies outside the lists' folder {root}; "
                           "translate needs the images under the folder holding the lists") from None


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise DatasetError(f"cannot write {path}")


def _mirror(root: Path, out: Path, translated: set[Path], skip: set[str]) -> int:
    """Under ``out``, link every entry of ``root`` that holds no translated image (relative links);
    folders that do hold one are created for real and mirrored entry by entry. Returns links made."""
    folders = {parent for rel in translated for parent in rel.parents}
    made = 0
    for folder in sorted(folders):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for entry in sorted((root / folder).iterdir()):
            rel = entry.relative_to(root)
            if rel in translated or rel in folders or (folder == Path(".") and entry.name in skip):
                continue
            link = out / rel
            if link.is_symlink() or link.exists():
                continue
            os.symlink(os.path.relpath(entry, link.parent), link)
            made += 1
    return made


def translate(lists: list[Path], style_list: Path, out: Path, method: str = "fda",
              beta: float = 0.01, seed: int = 0) -> dict:
    """Translate every rgb (and right) image of ``lists`` into the style of ``style_list``'s images.

    Each source frame gets one style image, drawn with ``seed``; its stereo pair gets the same
    one. Returns the record written to ``out/pixel_da.json``.
    """
    if method not in METHODS:
        raise DatasetError(f"unknown pixel-level DA method {method!r}; accepted: {', '.join(METHODS)}")
    if not lists:
        raise DatasetError("translate needs at least one filelist")
    root = lists[0].resolve().parent
    for path in lists:
        if path.resolve().parent != root:
            raise DatasetError(f"filelists must share one folder: {path} is not in {root}")
    out = out.absolute()
    if out.resolve() == root or root in out.resolve().parents:
        raise DatasetError(f"--out {out} must lie outside the source dataset {root}")
    styles = [frame.rgb for frame in read_filelist(style_list)]
    if not styles:
        raise DatasetError(f"style filelist {style_list} holds no frames")
    record = {"method": method, "beta": beta, "seed": seed, "source": str(root),
              "lists": [p.name for p in lists], "style": str(style_list.resolve())}
    previous = out / RECORD
    if previous.is_file():
        old = json.loads(previous.read_text(encoding="utf-8"))
        if {k: old.get(k) for k in record} != record:
            raise DatasetError(f"{out} holds a translation made with other settings ({previous}); "
                               "remove it or choose another --out")

    images: dict[Path, Path] = {}  # translated relative path -> style image
    rng = np.random.default_rng(seed)
    for path in lists:
        for number, frame in enumerate(read_filelist(path), start=1):
            style = styles[int(rng.integers(len(styles)))]
            for image in (frame.rgb, frame.right):
                if image is not None:
                    images.setdefault(_inside(root, image, f"{path}:{number}"), style)

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(previous, json.dumps(record, indent=2) + "\n")
    done = 0
    for number, (rel, style) in enumerate(sorted(images.items()), start=1):
        target = out / rel
        if not target.is_file():
            _write_png(target, fda(read_rgb(root / rel), read_rgb(style, "style image"), beta))
            done += 1
        if number % 500 == 0:
            log.info("translated %d / %d images", number, len(images))
    links = _mirror(root, out, set(images), skip={p.name for p in lists} | {RECORD})
    for path in lists:  # copies, not links: a list's relative paths must resolve under out/
        atomic_write(out / path.name, path.read_text(encoding="utf-8"))
    log.info("%s: %d images translated (%d already there), %d links to %s",
             out, done, len(images) - done, links, root)
    return record


def run_translate(args: argparse.Namespace) -> int:
    try:
        translate([Path(p) for p in args.list], Path(args.style), Path(args.out),
                  args.method, args.beta, args.seed)
    except (DatasetError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``translate`` subcommand."""
    p = subparsers.add_parser(
        "translate", help="pixel-level DA: B's images in A's style (FDA), as a dataset of their own",
        description="Write a copy of a dataset whose rgb (and right) images are translated into the "
                    "style of another dataset's images; labels, depth and camera files are linked, "
                    "the filelists copied (docs/training.md, 'Pixel-level domain adaptation').")
    p.add_argument("--list", action="append", required=True, metavar="FILELIST",
                   help="filelist of the dataset to translate (repeat for each split; one folder)")
    p.add_argument("--style", required=True, metavar="FILELIST", help="filelist of the style images (domain A)")
    p.add_argument("--out", required=True, help="output dataset folder (outside the source)")
    p.add_argument("--method", choices=METHODS, default="fda", help="translation method (default fda)")
    p.add_argument("--beta", type=float, default=0.01,
                   help="FDA window, a fraction of the shorter side (default 0.01, FDA's own; "
                        "the window is 2*floor(beta*min(H,W))+1 pixels wide)")
    p.add_argument("--seed", type=int, default=0, help="seed of the style image drawn per frame")
    p.set_defaults(func=run_translate)
