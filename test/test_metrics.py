"""atdt_ros.metrics against values computed by hand."""

import math

import numpy as np
import pytest

from atdt_ros.metrics import DEPTH_METRICS, DepthMetric, SegmentationMetric

TARGET = np.array([[0, 0, 1], [1, 1, 2], [2, 255, 2]])
PRED = np.array([[0, 1, 1], [1, 1, 2], [0, 0, 2]])


def test_segmentation_3x3_by_hand():
    m = SegmentationMetric(num_classes=3, ignore_index=255)
    m.update(PRED, TARGET)
    r = m.compute()
    # class 0: TP 1, FN 1 (0,1), FP 1 (2,0) -> 1/3; class 1: TP 3, FP 1 -> 3/4; class 2: TP 2, FN 1 -> 2/3
    assert r["iou"] == pytest.approx([1 / 3, 3 / 4, 2 / 3])
    assert r["miou"] == pytest.approx(21 / 36)
    assert r["accuracy"] == pytest.approx(6 / 8)  # the ignored pixel is not counted
    assert r["pixels"] == 8


def test_segmentation_absent_class_is_nan_and_excluded():
    m = SegmentationMetric(num_classes=5)
    m.update(PRED, TARGET)
    r = m.compute()
    assert math.isnan(r["iou"][3]) and math.isnan(r["iou"][4])
    assert r["miou"] == pytest.approx(21 / 36)
    # a class only predicted (never in ground truth) has IoU 0 and counts in the mean
    m.update(np.array([[4]]), np.array([[0]]))
    r = m.compute()
    assert r["iou"][4] == 0.0
    assert r["iou"][0] == pytest.approx(1 / 4)  # one more false negative for class 0
    assert r["miou"] == pytest.approx((1 / 4 + 3 / 4 + 2 / 3 + 0) / 4)


def test_segmentation_accumulates_and_out_of_range_prediction_is_a_miss():
    whole = SegmentationMetric(3)
    whole.update(np.stack([PRED, PRED]), np.stack([TARGET, TARGET]))
    parts = SegmentationMetric(3)
    parts.update(PRED, TARGET)
    other = SegmentationMetric(3)
    other.update(PRED, TARGET)
    parts.merge(other)
    assert np.array_equal(whole.confusion, parts.confusion)
    m = SegmentationMetric(3)
    m.update(np.array([255, 0]), np.array([0, 0]))  # an "unlabeled" prediction is a false negative
    assert m.compute()["iou"][0] == pytest.approx(0.5)
    assert m.compute()["accuracy"] == pytest.approx(0.5)


def test_segmentation_rejects_bad_input():
    m = SegmentationMetric(3)
    with pytest.raises(ValueError, match="shape"):
        m.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\[7\]"):
        m.update(np.zeros((1, 1)), np.array([[7]]))


def test_depth_by_hand():
    target = np.array([[1.0, 2.0, 4.0], [0.0, 10.0, 100.0]])  # 0 invalid, 100 beyond max_depth
    pred = np.array([[2.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    m = DepthMetric(min_depth=0.5, max_depth=80.0)
    m.update(pred, target)
    r = m.compute()
    # valid pairs (p, t): (2,1) (2,2) (3,4) (5,10)
    assert r["pixels"] == 4
    assert r["abs_rel"] == pytest.approx((1 + 0 + 0.25 + 0.5) / 4)
    assert r["sq_rel"] == pytest.approx((1 + 0 + 0.25 + 2.5) / 4)
    assert r["rmse"] == pytest.approx(math.sqrt((1 + 0 + 1 + 25) / 4))
    ln2 = math.log(2)
    assert r["rmse_log"] == pytest.approx(math.sqrt((2 * ln2**2 + math.log(0.75) ** 2) / 4))
    # ratios 2, 1, 4/3, 2
    assert (r["delta1"], r["delta2"], r["delta3"]) == pytest.approx((0.25, 0.5, 0.5))


def test_depth_mask_clip_and_pooling():
    m = DepthMetric(min_depth=1.0, max_depth=10.0)
    # the valid mask removes the second pixel; the prediction 0 is clipped to min_depth (1)
    m.update(np.array([0.0, 3.0]), np.array([2.0, 3.0]), valid=np.array([True, False]))
    assert m.compute()["abs_rel"] == pytest.approx(0.5)
    # pooled over all pixels of all images (not a mean of per-image means)
    m.update(np.array([4.0, 4.0, 4.0]), np.array([4.0, 4.0, 4.0]))
    assert m.compute()["abs_rel"] == pytest.approx(0.5 / 4)
    empty = DepthMetric()
    assert all(math.isnan(empty.compute()[k]) for k in DEPTH_METRICS)
    with pytest.raises(ValueError, match="min_depth"):
        DepthMetric(min_depth=5.0, max_depth=1.0)
