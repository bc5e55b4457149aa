"""Measure the simulator: frames/s of ``simulate`` with and without stereo, class frequencies.

``python -m atdt_train.sim.bench --frames 100 --size 192x384`` renders each domain into a
temporary directory through the same code as ``atdt_train simulate`` and prints a Markdown
table (the numbers in docs/simulator.md come from it). ``--preview PNG`` also writes a strip
of RGB / labels / depth per domain.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from atdt_ros.classmap import NUM_CLASSES, TABLE_NAMES, UNLABELED, colorize
from atdt_ros.present import depth_colormap
from atdt_train.sim.command import parse_size, simulate


def class_frequencies(split_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per class: fraction of all pixels, and fraction of frames where it occurs."""
    import cv2  # noqa: PLC0415

    pixels = np.zeros(256, dtype=np.int64)
    frames = np.zeros(256, dtype=np.int64)
    files = sorted((split_dir / "semantic").glob("*.png"))
    for f in files:
        counts = np.bincount(cv2.imread(str(f), cv2.IMREAD_UNCHANGED).ravel(), minlength=256)
        pixels += counts
        frames += counts > 0
    return pixels / max(pixels.sum(), 1), frames / max(len(files), 1)


def preview(split_dir: Path, index: int = 0) -> np.ndarray:
    """RGB above colour-coded labels above colour-coded depth (0.5-80 m, the reports' colour map)
    of one frame."""
    import cv2  # noqa: PLC0415

    name = f"{index:06d}.png"
    rgb = cv2.imread(str(split_dir / "rgb" / name))[..., ::-1]
    sem = cv2.imread(str(split_dir / "semantic" / name), cv2.IMREAD_UNCHANGED)
    depth = cv2.imread(str(split_dir / "depth" / name), cv2.IMREAD_UNCHANGED) / 256.0
    return np.concatenate([rgb, colorize(sem), depth_colormap(depth, (0.5, 80.0))], axis=0)


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print Markdown tables."""
    import cv2  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--domains", nargs="+", default=["synthetic", "realistic"])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", type=parse_size, default=(192, 384))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preview", type=Path, help="write a preview PNG here")
    args = ap.parse_args(argv)
    h, w = args.size
    load0 = os.getloadavg()[0]
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} cores; size {h}x{w}, "
          f"{args.frames} frames per run (whole run after imports: GL context, model "
          "compilation and file writing included)\n")
    rows, freq_rows, strips = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: module imports and texture synthesis happen once per process
        for domain in args.domains:
            simulate(domain, 1, (h, w), "train", args.seed, False, Path(tmp) / f"warm_{domain}",
                     progress=False)
        for domain in args.domains:
            fps, cpu = {}, {}
            for stereo in (False, True):
                out = Path(tmp) / f"{domain}_{int(stereo)}"
                t0, c0 = time.perf_counter(), time.process_time()
                simulate(domain, args.frames, (h, w), "train", args.seed, stereo, out,
                         progress=False)
                fps[stereo] = args.frames / (time.perf_counter() - t0)
                cpu[stereo] = args.frames / (time.process_time() - c0)
            rows.append(f"| {domain} | {fps[False]:.1f} | {cpu[False]:.1f} | {fps[True]:.1f} "
                        f"| {cpu[True]:.1f} |")
            pix, occ = class_frequencies(Path(tmp) / f"{domain}_0" / "train")
            freq_rows.append((domain, pix, occ))
            strips.append(preview(Path(tmp) / f"{domain}_0" / "train", 1))
    print(f"1-minute load average of the machine: {load0:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end (other processes share the cores)\n")
    print("| domain | frames/s | frames per CPU-second | frames/s --stereo "
          "| frames per CPU-second --stereo |\n|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nClass frequencies: % of pixels (% of frames where the class occurs)\n")
    print("| class | " + " | ".join(d for d, _, _ in freq_rows) + " |")
    print("|---|" + "---|" * len(freq_rows))
    for c in list(range(NUM_CLASSES)) + [UNLABELED]:
        name = TABLE_NAMES[c] if c < NUM_CLASSES else "unlabeled"
        cells = [f"{100 * pix[c]:.1f} ({100 * occ[c]:.0f})" for _, pix, occ in freq_rows]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.preview:
        img = np.concatenate(strips, axis=1)
        cv2.imwrite(str(args.preview), img[..., ::-1])
        print(f"\npreview written to {args.preview}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
