"""The compiled chain's labels: argmax over the classes as elementwise comparisons
(atdt_ros.backends.channel_argmax), put into the exported program by fuse_label_argmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import chain_helpers
from atdt_ros.backends import channel_argmax, fuse_label_argmax


def test_channel_argmax_known_values_and_first_maximum_on_ties() -> None:
    logits = torch.tensor([[[[0.0, 5.0, 1.0]],
                            [[2.0, 5.0, 1.0]],   # ties 5 = 5 at pixel 1, 1 = 1 = 1 at pixel 2
                            [[1.0, -1.0, 1.0]]]])  # (1, 3 classes, 1, 3 pixels)
    assert channel_argmax(logits).tolist() == [[[1, 0, 0]]]
    assert logits.argmax(dim=1).tolist() == [[[1, 0, 0]]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channel_argmax_equals_argmax(dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 11, 24, 48, generator=gen).to(dtype)
    logits[:, 3] = logits[:, 7]  # exact ties between two classes everywhere
    got = channel_argmax(logits)
    assert got.dtype == torch.int64 and got.shape == (2, 24, 48)
    assert torch.equal(got, logits.argmax(dim=1))


def test_fuse_label_argmax_in_an_exported_chain_keeps_its_outputs() -> None:
    from atdt_train.export import build_chain

    chain = build_chain(*chain_helpers.seeded_networks(), "dep2sem")
    x = torch.from_numpy(chain_helpers.parity_frames(2))
    module = torch.export.export(chain, (x,)).module()
    with torch.no_grad():
        depth, labels = module(x)
    argmaxes = [n for n in module.graph.nodes if n.target is torch.ops.aten.argmax.default]
    assert len(argmaxes) == 1
    assert fuse_label_argmax(module) == 1
    assert not [n for n in module.graph.nodes if n.target is torch.ops.aten.argmax.default]
    assert fuse_label_argmax(module) == 0  # nothing left to replace
    with torch.no_grad():
        fused_depth, fused_labels = module(x)
    assert torch.equal(fused_labels, labels) and torch.equal(fused_depth, depth)
    assert len(np.unique(labels.numpy())) > 1  # a real labelling, not one class
