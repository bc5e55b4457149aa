"""The one class map of AT/DT: the paper's 11 semantic classes, their ids and colours.

Used by the dataset decoders, the reports and the ROS node (which publishes it latched as an
``atdt_msgs/ClassMap``). Colours follow the Cityscapes palette for the matching classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNLABELED: int = 255
"""Class id meaning "no label / ignore" in label images and in the node's mono8 output."""


@dataclass(frozen=True)
class SemanticClass:
    id: int
    name: str
    color: tuple[int, int, int]


CLASSES: tuple[SemanticClass, ...] = (
    SemanticClass(0, "road", (128, 64, 128)),
    SemanticClass(1, "sidewalk", (244, 35, 232)),
    SemanticClass(2, "wall", (102, 102, 156)),
    SemanticClass(3, "fence", (190, 153, 153)),
    SemanticClass(4, "person", (220, 20, 60)),
    SemanticClass(5, "pole", (153, 153, 153)),
    SemanticClass(6, "vegetation", (107, 142, 35)),
    SemanticClass(7, "vehicle", (0, 0, 142)),
    SemanticClass(8, "traffic_sign", (220, 220, 0)),
    SemanticClass(9, "building", (70, 70, 70)),
    SemanticClass(10, "sky", (70, 130, 180)),
)
NUM_CLASSES: int = len(CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
"""Names as in the paper's tables: Road, Sidewalk, Walls, Fence, Person, Poles, Vegetation,
Vehicles, Traffic Signs, Building, Sky."""
TABLE_NAMES: tuple[str, ...] = (
    "Road", "Sidewalk", "Walls", "Fence", "Person", "Poles",
    "Vegetation", "Vehicles", "Tr. Signs", "Building", "Sky",
)
THIN_CLASSES: tuple[int, ...] = (4, 5, 8)
"""person, pole, traffic sign: the thin classes an L2 feature mapping tends to average away."""
UNLABELED_COLOR: tuple[int, int, int] = (0, 0, 0)


def palette() -> np.ndarray:
    """(256, 3) uint8 lookup table: class id -> RGB colour; every other id is black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    for c in CLASSES:
        lut[c.id] = c.color
    lut[UNLABELED] = UNLABELED_COLOR
    return lut


_PALETTE = palette()


def colorize(labels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Colour-code an (H, W) integer label image into (H, W, 3) uint8 RGB."""
    return np.take(_PALETTE, labels.astype(np.intp, copy=False), axis=0, out=out)
