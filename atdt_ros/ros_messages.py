"""The node's ROS message helpers: QoS profiles from parameter values, camera_info geometry and
the output messages built from numpy arrays (sensor_msgs/Image, sensor_msgs/PointCloud2).

Stateless functions of messages and arrays, apart from the node so that the node module holds
its lifecycle and per-frame path only; rclpy and sensor_msgs, no node.
"""

from __future__ import annotations

import sys

import numpy as np
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from atdt_ros.camera import ImageGeometry, image_matrices
from atdt_ros.imgproc import array_to_image_fields
from atdt_ros.interface import QOS_CHOICES
from atdt_ros.pointcloud import POINT_FIELDS, POINT_STEP

POINT_TYPES: dict[str, int] = {"float32": PointField.FLOAT32, "uint32": PointField.UINT32}
"""sensor_msgs/PointField datatypes of the numpy types in :data:`atdt_ros.pointcloud.POINT_FIELDS`."""

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""QoS of the class-map topics (~/class_map, ~/label_info): like CameraInfo, a late joiner gets
the one message."""


def qos_profile(kind: str, depth: int) -> QoSProfile:
    """A QoS profile from a parameter value (sensor_data, reliable or best_effort; the values
    are checked with the parameters, :mod:`atdt_ros.parameters`)."""
    if kind not in QOS_CHOICES or depth < 1:
        raise ValueError(f"QoS '{kind}' with depth {depth}: expected one of "
                         f"{', '.join(QOS_CHOICES)} and a depth >= 1")
    if kind == "sensor_data":
        return QoSProfile(**{k: getattr(qos_profile_sensor_data, k)
                             for k in ("reliability", "durability", "history")}, depth=depth)
    reliability = ReliabilityPolicy.RELIABLE if kind == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


def image_geometry(info: CameraInfo, height: int | None = None, width: int | None = None) -> ImageGeometry:
    """:class:`atdt_ros.camera.ImageGeometry` of the image a camera_info describes (binning and
    ROI honoured), rescaled to (height, width) when given and the image has another size."""
    roi = info.roi
    return image_matrices(info.k, info.p, info.width, info.height, info.binning_x,
                          info.binning_y, (roi.x_offset, roi.y_offset, roi.width, roi.height),
                          None if height is None else (height, width))


def scale_camera_info(info: CameraInfo, height: int, width: int) -> CameraInfo:
    """camera_info for an output image of (height, width).

    When the image has the size its camera_info describes (after ROI and binning), the
    camera_info is passed on as it is: binning and ROI stay valid for the output, which has the
    input's pixels. Otherwise an equivalent plain camera_info is built: K and P of the image
    itself (ROI and binning applied, then rescaled to its size), no binning, no ROI.
    """
    out = CameraInfo()
    out.distortion_model, out.d, out.r = info.distortion_model, info.d, info.r
    if not (info.width and info.height):  # uncalibrated: nothing to rescale
        out.k, out.p = list(info.k), list(info.p)
        out.height, out.width = height, width
        return out
    plain = image_matrices(info.k, info.p, info.width, info.height, info.binning_x,
                           info.binning_y, (info.roi.x_offset, info.roi.y_offset,
                                            info.roi.width, info.roi.height))
    if (plain.width, plain.height) == (width, height):
        out.k, out.p = list(info.k), list(info.p)
        out.binning_x, out.binning_y, out.roi = info.binning_x, info.binning_y, info.roi
        out.height, out.width = info.height, info.width
        return out
    geometry = image_geometry(info, height, width)
    out.k, out.p = geometry.k.ravel().tolist(), geometry.p.ravel().tolist()
    out.height, out.width = height, width
    return out


def image_message(source: Image, array: np.ndarray, encoding: str) -> Image:
    """An output sensor_msgs/Image of ``array`` in ``encoding``, with the input's header."""
    out = Image()
    out.header = source.header
    out.height, out.width, out.step, data = array_to_image_fields(array, encoding)
    out.encoding = encoding
    out.is_bigendian = sys.byteorder == "big" if encoding in ("32FC1", "16UC1") else False
    out.data = data
    return out


def cloud_message(source: Image, cloud: np.ndarray) -> PointCloud2:
    """The organised sensor_msgs/PointCloud2 of ``cloud`` (:mod:`atdt_ros.pointcloud`), with the
    input image's header."""
    out = PointCloud2()
    out.header = source.header
    out.height, out.width = cloud.shape
    out.fields = [PointField(name=name, offset=offset, count=1,
                             datatype=POINT_TYPES[numpy_type])
                  for name, offset, numpy_type in POINT_FIELDS]
    out.is_bigendian = sys.byteorder == "big"
    out.point_step, out.row_step = POINT_STEP, POINT_STEP * cloud.shape[1]
    out.data = cloud.tobytes()
    out.is_dense = False  # invalid depth gives NaN points
    return out
