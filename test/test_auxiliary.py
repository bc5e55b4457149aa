"""The auxiliary edge task of N1 and N2 (``auxiliary.edges``, beyond the paper): its targets,
its loss, and a stage trained with it, whose stored network carries no trace of the head."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import chain_helpers
from atdt_ros.artifact import IMAGE_MEAN, IMAGE_STD
from atdt_train.lit import EDGE_STRIDE, edge_loss, image_edges


def _normalised(grey: torch.Tensor) -> torch.Tensor:
    """(N, H, W) grey levels in 0..1 -> (N, 3, H, W) ImageNet-normalised images."""
    rgb = grey.unsqueeze(1).expand(-1, 3, -1, -1)
    return (rgb - torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGE_STD).view(1, 3, 1, 1)


def test_edges_lie_on_the_step_and_a_flat_image_has_none() -> None:
    step = torch.zeros(8, 16)
    step[:, 8:] = 1.0  # a vertical step between columns 7 and 8
    images = _normalised(torch.stack([step, torch.full((8, 16), 0.5)]))
    edges = image_edges(images, fraction=0.2)
    assert edges.shape == (2, 1, 8 // EDGE_STRIDE, 16 // EDGE_STRIDE)
    # Sobel responds on columns 7 and 8 only (2 of 16 columns, under the 20 % asked for), which
    # fall in the 4x4 cells of columns 1 and 2
    assert edges[0, 0].tolist() == [[0.0, 1.0, 1.0, 0.0]] * 2
    assert edges[1].sum() == 0
    # with 5 % asked for, the 95th percentile is the step's own magnitude: ties count, same columns
    assert torch.equal(image_edges(images[:1], fraction=0.05), edges[:1])


def test_edge_loss_weighs_the_rarer_class_up() -> None:
    target = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]])
    zero = torch.zeros(1, 1, 1, 4)
    # logit 0: each pixel costs ln 2; the one edge weighs 3 (non-edges / edges), mean over 4
    assert float(edge_loss(zero, target)) == pytest.approx(6 * math.log(2) / 4)
    assert float(edge_loss(torch.tensor([[[[9.0, -9.0, -9.0, -9.0]]]]), target)) < 1e-3


def _experiment(tmp: Path, **auxiliary) -> Path:
    lists = {d: chain_helpers.write_tiny_domain(tmp / d, d) for d in "AB"}
    path = tmp / "aux.yaml"
    path.write_text(json.dumps({
        "name": "aux", "direction": "dep2sem", "out_dir": str(tmp / "run"),
        "domains": {d: {"train": lists[d]["train"], "test": lists[d]["test"], "kind": "sim"} for d in "AB"},
        "data": {"height": 32, "width": 64, "batch_size": 2, "num_workers": 0, "flip": False},
        "steps": {"n1": 2, "n2": 2, "g": 1, "oracle": 2},
        "auxiliary": auxiliary,
        "trainer": {"progress_bar": False, "threads": 1},
    }))
    return path


def test_a_stage_with_edges_trains_the_encoder_and_stores_the_network_alone(tmp_path) -> None:
    from atdt_train.checkpoints import load_task_net, load_weights, weights_path
    from atdt_train.config import load_experiment
    from atdt_train.stages import train_stage

    plain = load_experiment(_experiment(tmp_path / "plain"))
    edges = load_experiment(_experiment(tmp_path / "edges", edges=1.0))
    for exp in (plain, edges):
        train_stage(exp, "n2")
        train_stage(exp, "oracle")
    keys = set(load_weights(weights_path(edges, "n2"))["state_dict"])
    assert keys == set(load_weights(weights_path(plain, "n2"))["state_dict"])  # no edge head stored
    assert not any("edge" in k for k in keys)
    n2_plain, n2_edges = load_task_net(plain, "n2"), load_task_net(edges, "n2")
    # the edge loss reached the encoder: same seed, same data, different weights
    assert not torch.equal(n2_plain.state_dict()["encoder.conv1.weight"], n2_edges.state_dict()["encoder.conv1.weight"])
    # the Oracle is not given the auxiliary task: bit for bit the same as without it
    o_plain, o_edges = load_task_net(plain, "oracle"), load_task_net(edges, "oracle")
    for name, value in o_plain.state_dict().items():
        assert torch.equal(value, o_edges.state_dict()[name]), name


def test_auxiliary_settings_are_checked(tmp_path) -> None:
    from atdt_train.config import ConfigError, load_experiment

    path = _experiment(tmp_path)
    with pytest.raises(ConfigError, match="auxiliary.edges: must be >= 0"):
        load_experiment(path, ["auxiliary.edges=-1"])
    with pytest.raises(ConfigError, match="auxiliary.edge_fraction"):
        load_experiment(path, ["auxiliary.edge_fraction=1.5"])
