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
        out.append(normalise(rgb, IMAGE_MEAN, IMAGE_STD))
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


def write_tiny_domain(root: Path, domain: str, frames: int = 2, size: tuple[int, int] = (32, 64),
                      fx: float = 50.0, mount_height: float | None = None) -> dict[str, str]:
    """Train/test splits in the ``atdt_train simulate`` layout: road below sky, a box per frame
    (``mount_height``: the camera height camera.json records; None: none)."""
    h, w = size
    rng = np.random.default_rng(ord(domain))
    tint = np.array((30, 0, 0) if domain == "A" else (0, 0, 30), np.int16)

    def frame():
        sem = np.full((h, w), 10, np.uint8)          # sky, no depth
        depth = np.zeros((h, w), np.float32)
        sem[h // 2:] = 0                               # road, nearer towards the bottom
        depth[h // 2:] = np.linspace(30.0, 3.0, h - h // 2, dtype=np.float32)[:, None]
        c0 = int(rng.integers(0, w - w // 4))
        sem[h // 3:h // 2 + 4, c0:c0 + w // 4] = 7    # a vehicle
        depth[h // 3:h // 2 + 4, c0:c0 + w // 4] = 12.0
        rgb = np.stack([sem * 20, 255 - sem * 20, sem * 9], -1).astype(np.int16) + tint
        rgb = np.clip(rgb + rng.integers(-8, 9, rgb.shape), 0, 255).astype(np.uint8)
        return rgb, sem, depth

    return {split: write_sim_split(root, split, [frame() for _ in range(frames)], fx, domain, mount_height)
            for split in ("train", "test")}


def write_sim_split(root: Path, split: str, frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                    fx: float, domain: str, mount_height: float | None = None) -> str:
    """Write (RGB uint8, class ids uint8, depth metres float32) frames as one split of the
    ``atdt_train simulate`` layout under ``root``; returns the filelist's path."""
    import json

    import cv2

    h, w = frames[0][1].shape
    base = root / split
    for sub in ("rgb", "semantic", "depth"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    camera = {"fx": fx, "fy": fx, "cx": w / 2, "cy": h / 2, "width": w, "height": h, "baseline": 0.5}
    if mount_height is not None:
        camera["mount_height_m"] = mount_height
    (base / "camera.json").write_text(json.dumps(camera))
    lines = []
    for i, (rgb, sem, depth) in enumerate(frames):
        name = f"{i:06d}.png"
        cv2.imwrite(str(base / "rgb" / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(base / "semantic" / name), sem)
        cv2.imwrite(str(base / "depth" / name), np.round(depth * 256).astype(np.uint16))
        lines.append(f"{split}/rgb/{name};;{split}/semantic/{name};{split}/depth/{name}")
    (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "dataset.yaml").write_text(f"kind: sim\ndomain: {domain}\n")
    return str(root / f"{split}.txt")


class CodeOnLoad:
    """Pickles into a payload that creates ``marker`` when unpickled: the code a crafted model
    file, checkpoint or engine would run (``exec`` of one harmless statement)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def crafted_pt2(src: Path, dst: Path, marker: Path) -> Path:
    """``src`` (a torch.export archive) with its first weight replaced by a :class:`CodeOnLoad`
    pickle and marked ``use_pickle``: ``torch.export.load(dst)`` creates ``marker``."""
    import json
    import pickle
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        cfg_name = next(n for n in zin.namelist()
                        if n.endswith("data/weights/model_weights_config.json"))
        cfg = json.loads(zin.read(cfg_name))
        first = next(iter(cfg["config"]))
        cfg["config"][first]["use_pickle"] = True
        target = cfg_name.rsplit("/", 1)[0] + "/" + cfg["config"][first]["path_name"]
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == cfg_name:
                data = json.dumps(cfg).encode()
            elif info.filename == target:
                data = pickle.dumps(CodeOnLoad(marker))
            zout.writestr(info, data)
    return dst
