"""The depth loss's gradient-matching term (depth.gradient_loss) against hand-computed values."""

import math

import pytest
import torch

from atdt_train.config import ConfigError, experiment_from_dict
from atdt_train.lit import gradient_matching_loss, task_loss
from atdt_train.suite import stage_key
from test_stages import domains, experiment  # noqa: F401  (domains is a fixture)


def _batch(depth, valid=None):
    depth = torch.tensor(depth, dtype=torch.float32)[None]
    valid = torch.ones_like(depth, dtype=torch.bool) if valid is None else torch.tensor(valid)[None]
    return {"depth": depth, "depth_valid": valid, "focal": torch.tensor([100.0])}


def _loss(pred, batch):
    return float(gradient_matching_loss(torch.tensor(pred, dtype=torch.float32)[None, None], batch["depth"],
                                        batch["depth_valid"], None, 0.5))


def test_one_depth_edge_by_hand():
    # R = log(pred) - log(gt) = [[0, 1], [0, 0]]: at full scale one x pair and one y pair differ by 1,
    # over 4 valid pixels = 0.5; the 3 coarser scales are 1x1 (no pairs) = 0; mean over 4 scales.
    batch = _batch([[2.0, 2.0], [2.0, 2.0]])
    assert _loss([[2.0, 2.0 * math.e], [2.0, 2.0]], batch) == pytest.approx(0.125, rel=1e-6)
    # the same pixel marked invalid: every pair touching it is left out, and it is not counted
    masked = _batch([[2.0, 2.0], [2.0, 2.0]], [[True, False], [True, True]])
    assert _loss([[2.0, 2.0 * math.e], [2.0, 2.0]], masked) == 0.0


def test_scale_invariant_and_zero_when_equal():
    torch.manual_seed(0)
    gt = torch.rand(6, 8) * 20 + 1
    batch = _batch(gt.tolist())
    assert _loss(gt.tolist(), batch) == 0.0
    assert _loss((3.0 * gt).tolist(), batch) == pytest.approx(0.0, abs=1e-5)  # log: a scale is a constant
    assert _loss((gt + torch.rand(6, 8)).tolist(), batch) > 0.0


def test_task_loss_adds_the_weighted_term_only_when_asked():
    batch = _batch([[2.0, 2.0], [2.0, 2.0]])
    pred = torch.tensor([[2.0, 2.0 * math.e], [2.0, 2.0]])[None, None]
    l1 = float(task_loss("depth", pred, batch, None))
    assert l1 == pytest.approx((2.0 * math.e - 2.0) / 4, rel=1e-6)
    assert float(task_loss("depth", pred, batch, None, gradient_weight=2.0)) == pytest.approx(l1 + 2.0 * 0.125, rel=1e-6)


def test_option_is_validated_and_retrains_only_depth_networks(domains, tmp_path):
    base = experiment_from_dict(experiment(domains, tmp_path / "x"))
    grad = experiment_from_dict(experiment(domains, tmp_path / "x", depth={"gradient_loss": 0.5}))
    assert stage_key(grad, "n1") != stage_key(base, "n1")  # Dep->Sem: N1 is the depth network
    for stage in ("n2", "oracle"):  # semantic networks are shared
        assert stage_key(grad, stage) == stage_key(base, stage)
    with pytest.raises(ConfigError, match=r"depth.gradient_loss: must be >= 0"):
        experiment_from_dict(experiment(domains, tmp_path / "x", depth={"gradient_loss": -1.0}))
