"""A small exported chain shared by the export, node and launch tests (built once per session).

The networks are freshly initialised with a fixed seed: these tests check the deployment
mechanics (export, parity, node I/O), which do not depend on what the weights learned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

INPUT_SIZE = (64, 128)
_CACHE: dict[str, Path] = {}


def seeded_networks(seed: int = 0):
    """(N1 depth, N2 semantic, G) ResNet-18 networks in eval mode, for direction dep2sem."""
    import torch

    from atdt_train.models import TaskNet, TransferNet

    torch.manual_seed(seed)
    n1, n2 = TaskNet("depth").eval(), TaskNet("semantic").eval()
    g = TransferNet(n1.encoder.out_channels).eval()
    with torch.no_grad():  # depth head biased to plausible metres so most pixels are valid
        n1.decoder.head.bias.fill_(20.0)
    return n1, n2, g


def parity_frames(count: int = 3, seed: int = 0) -> np.ndarray:
    """Normalised frames of smooth random images (N, 3, H, W)."""
    from atdt_ros.artifact import IMAGE_MEAN, IMAGE_STD
    from atdt_ros.imgproc import normalise

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, size=(8, 16, 3), dtype=np.uint8)
        rgb = np.kron(small, np.ones((INPUT_SIZE[0] // 8, INPUT_SIZE[1] // 16, 1), np.uint8))
        out.append(normalise(rgb, IMAGE_MEAN, IMAGE_STD)[0])
    return np.stack(out)


def exported_chain(tmp_path_factory) -> Path:
    """Directory of the seeded chain exported as pt2 + onnx (dep2sem, 64x128)."""
    if "chain" not in _CACHE:
        from atdt_train.export import export_chain

        out = tmp_path_factory.mktemp("chain")
        n1, n2, g = seeded_networks()
        export_chain(n1, n2, g, out, direction="dep2sem", input_size=INPUT_SIZE,
                     frames=parity_frames(), formats=("pt2", "onnx"),
                     sources={"n1": "0" * 64})
        _CACHE["chain"] = out
    return _CACHE["chain"]
