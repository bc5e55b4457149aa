"""Datasets of AT/DT: filelists, native-format decoders, the torch ``FrameDataset``, proxy depth.

``FrameDataset``, ``IMAGE_MEAN``/``IMAGE_STD`` (torch) and the proxy-depth functions (OpenCV)
load on first use, so that importing this package (and ``atdt_train --help``) stays quick.
"""

from __future__ import annotations

import importlib
from typing import Any

from .decoders import (
    CARLA_TO_ATDT,
    CITYSCAPES_TO_ATDT,
    KINDS,
    SYNTHIA_TO_ATDT,
    Camera,
    Decoder,
    Intrinsics,
    camera_intrinsics,
    depth_from_png256,
    encode_depth_png256,
    get_decoder,
)
from .filelist import DatasetError, Frame, read_filelist, read_list_kind, write_filelist

_LAZY = {
    "FrameDataset": "dataset",
    "IMAGE_MEAN": "dataset",
    "IMAGE_STD": "dataset",
    "normalize_image": "dataset",
    "compute_proxy_depth": "proxy_depth",
    "sgbm_disparity": "proxy_depth",
    "left_right_check": "proxy_depth",
    "scan_dataset": "commands",
}

__all__ = [
    "CARLA_TO_ATDT", "CITYSCAPES_TO_ATDT", "KINDS", "SYNTHIA_TO_ATDT", "Camera", "DatasetError",
    "Decoder", "Frame", "Intrinsics", "camera_intrinsics", "depth_from_png256", "encode_depth_png256", "get_decoder",
    "read_filelist", "read_list_kind", "write_filelist", *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
