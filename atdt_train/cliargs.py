"""Argument types shared by the ``atdt_train`` subcommands: sizes and positive numbers."""

from __future__ import annotations

import argparse
import math
import re


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` in pixels -> (H, W), both positive; a clear error otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected HxW in pixels, e.g. 192x384")
    h, w = int(m.group(1)), int(m.group(2))
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r}: H and W must be positive")
    return h, w


def positive_int(text: str) -> int:
    """A whole number > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value
