"""sensor_msgs/Image <-> numpy, and the chain's pre- and post-processing.

No ROS imports: functions take the Image fields (encoding, height, width, step, data) so the
same code serves the node, the replay tool and the tests. Pre- and post-processing write into
buffers allocated once per input size, so a steady camera stream allocates nothing per frame
beyond what the message itself needs.
"""

from __future__ import annotations

import functools

from collections.abc import Sequence

import cv2
import numpy as np

from atdt_ros import classmap
from atdt_ros.artifact import DepthSpec, depth_to_metres_scale
from atdt_ros.sanitize import printable

CHANNELS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
"""Accepted input encodings and their channel count (8 bits per channel)."""

RGB_ORDER: dict[str, tuple[int, int, int]] = {
    "rgb8": (0, 1, 2), "bgr8": (2, 1, 0), "rgba8": (0, 1, 2), "bgra8": (2, 1, 0), "mono8": (0, 0, 0),
}
"""Source channel of R, G and B for each encoding (mono8 replicates its one channel)."""


class InputError(ValueError):
    """An image that cannot be processed; the message names the problem and what is accepted."""


def image_to_array(encoding: str, height: int, width: int, step: int,
                   data: bytes | bytearray | memoryview | Sequence[int]) -> np.ndarray:
    """View an Image's pixels as (H, W, C) uint8 (or (H, W) for mono8), honouring row padding."""
    if encoding not in CHANNELS:
        raise InputError(f"unsupported encoding '{printable(encoding, 32)}' "
                         f"(accepted: {', '.join(CHANNELS)})")
    if height <= 0 or width <= 0:
        raise InputError(f"zero-size image {width}x{height} (width x height must be positive)")
    channels = CHANNELS[encoding]
    row = width * channels
    if step < row:
        raise InputError(f"step {step} is smaller than width*channels = {width}*{channels} = "
                         f"{row} for {encoding}")
    buf = data if isinstance(data, (bytes, bytearray, memoryview)) else memoryview(data)
    flat = np.frombuffer(buf, dtype=np.uint8)
    if flat.size != step * height:
        raise InputError(f"data length {flat.size} != step*height = {step}*{height} = "
                         f"{step * height}")
    rows = flat.reshape(height, step)[:, :row]
    if channels == 1:
        return rows
    return rows.reshape(height, width, channels)


COMPRESSED_FORMATS: tuple[str, ...] = ("jpeg", "jpg", "png")
"""sensor_msgs/CompressedImage formats the node decodes (image_transport's ``compressed``)."""


def decode_compressed(fmt: str, data: bytes | bytearray | memoryview | Sequence[int]) -> np.ndarray:
    """A CompressedImage's pixels as (H, W, 3) uint8 BGR (OpenCV's decoder); InputError when
    the format is not JPEG/PNG or the data does not decode. ``fmt`` follows image_transport:
    ``jpeg``, ``png`` or e.g. ``rgb8; jpeg compressed bgr8``."""
    kind = fmt.lower()
    if not any(k in kind for k in COMPRESSED_FORMATS):
        raise InputError(f"unsupported compressed format '{printable(fmt, 40)}' "
                         f"(accepted: jpeg, png)")
    buf = data if isinstance(data, (bytes, bytearray, memoryview)) else memoryview(data)
    raw = np.frombuffer(buf, dtype=np.uint8)
    if raw.size == 0:
        raise InputError("empty compressed image")
    pixels = cv2.imdecode(raw, cv2.IMREAD_COLOR)
    if pixels is None or pixels.size == 0:
        raise InputError(f"compressed image ({raw.size} bytes, format '{printable(fmt, 40)}') "
                         f"does not decode: corrupt or truncated")
    return pixels


def array_to_image_fields(array: np.ndarray, encoding: str) -> tuple[int, int, int, bytes]:
    """(height, width, step, data) of an Image holding ``array`` in ``encoding``, unpadded."""
    expected = {"32FC1": (np.float32, 1), "16UC1": (np.uint16, 1),
                "mono8": (np.uint8, 1), "rgb8": (np.uint8, 3),
                "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4)}
    if encoding not in expected:
        raise InputError(f"cannot encode '{encoding}' (accepted: {', '.join(expected)})")
    dtype, channels = expected[encoding]
    if array.dtype != dtype or (array.ndim == 2) != (channels == 1) \
            or (array.ndim == 3 and array.shape[2] != channels):
        raise InputError(f"array {array.dtype}{array.shape} does not fit encoding {encoding}")
    height, width = array.shape[:2]
    step = width * channels * array.dtype.itemsize
    return height, width, step, np.ascontiguousarray(array).tobytes()


SKY_ID: int = next(c.id for c in classmap.CLASSES if c.name == "sky")
"""Class id of sky: its pixels have no finite depth."""
DEPTH_SKY: tuple[str, ...] = ("inf", "nan", "keep")
"""What the depth output holds on sky pixels: +Inf (REP 117 "too far"), NaN, or the prediction."""
DEPTH_ENCODINGS: tuple[str, ...] = ("32FC1", "16UC1")
"""Depth output encodings (REP 118): float32 metres, or uint16 millimetres with 0 = no depth."""
MAX_MM: int = 65535


def depth_to_publish(depth: np.ndarray, labels: np.ndarray | None,
                     depth_range: tuple[float, float], *, sky: str = "inf",
                     range_limits: bool = True, encoding: str = "32FC1", in_place: bool = False,
                     out16: np.ndarray | None = None,
                     scratch: np.ndarray | None = None) -> np.ndarray:
    """The depth image to publish from (H, W) float32 metres (NaN = no reading, as
    :meth:`Postprocessor.depth_metres` gives it), following REP 117 / 118.

    ``range_limits``: values above ``depth_range[1]`` become +Inf (too far), values below
    ``depth_range[0]`` -Inf (too close); NaN stays NaN. Then, unless ``sky`` is ``keep`` or
    ``labels`` is None, pixels labelled sky become +Inf (``inf``) or NaN (``nan``), whatever
    the prediction was. ``encoding`` 32FC1 returns float32 metres; 16UC1 returns uint16
    millimetres (rounded to the nearest, finite positive values clipped to 1..65535) with 0 for
    every pixel without a finite positive depth (NaN, +Inf, -Inf).

    Vectorised, and allocation-free when the buffers are given: ``in_place`` writes into
    ``depth`` (else a copy is made), ``out16`` (H, W) uint16 receives 16UC1, ``scratch`` is an
    (H, W) bool work buffer.
    """
    if sky not in DEPTH_SKY:
        raise ValueError(f"sky '{sky}' is not one of {', '.join(DEPTH_SKY)}")
    if encoding not in DEPTH_ENCODINGS:
        raise ValueError(f"encoding '{encoding}' is not one of {', '.join(DEPTH_ENCODINGS)}")
    if depth.dtype != np.float32 or depth.ndim != 2:
        raise ValueError(f"depth must be (H, W) float32, got {depth.dtype}{depth.shape}")
    if labels is not None and labels.shape != depth.shape:
        raise ValueError(f"labels {labels.shape} and depth {depth.shape} differ in size")
    d = depth if in_place else depth.copy()
    m = scratch if scratch is not None else np.empty(d.shape, dtype=bool)
    if range_limits:
        low, high = depth_range
        np.greater(d, np.float32(high), out=m)  # NaN compares False: stays NaN
        np.copyto(d, np.float32(np.inf), where=m)
        np.less(d, np.float32(low), out=m)
        np.copyto(d, np.float32(-np.inf), where=m)
    if sky != "keep" and labels is not None:
        np.equal(labels, SKY_ID, out=m)
        np.copyto(d, np.float32(np.inf if sky == "inf" else np.nan), where=m)
    if encoding == "32FC1":
        return d
    mm = out16 if out16 is not None else np.empty(d.shape, dtype=np.uint16)
    np.greater(d, 0, out=m)                     # False for NaN and -Inf (and <= 0)
    np.logical_not(m, out=m)
    np.copyto(d, np.float32(np.nan), where=m)
    np.isinf(d, out=m)                          # +Inf: too far has no millimetre value
    np.copyto(d, np.float32(np.nan), where=m)
    np.multiply(d, np.float32(1000.0), out=d)
    np.rint(d, out=d)
    np.clip(d, 1, MAX_MM, out=d)                # a valid depth never reads as 0 (no depth)
    np.isnan(d, out=m)
    np.copyto(d, np.float32(0), where=m)
    np.copyto(mm, d, casting="unsafe")
    return mm


def resize_interpolation(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> int:
    """OpenCV filter the training data used: area when shrinking, bilinear otherwise."""
    shrinking = dst_hw[0] <= src_hw[0] and dst_hw[1] <= src_hw[1]
    return cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR


class Preprocessor:
    """Resize a camera image to the network input and normalise it into a reused NCHW buffer."""

    def __init__(self, height: int, width: int, mean: Sequence[float], std: Sequence[float]):
        self.height, self.width = height, width
        self._table = normalisation_table(tuple(map(float, mean)), tuple(map(float, std)))
        self.batch = np.empty((1, 3, height, width), dtype=np.float32)
        self._resized: dict[int, np.ndarray] = {}

    def __call__(self, pixels: np.ndarray, encoding: str) -> np.ndarray:
        """Fill and return the (1, 3, H, W) float32 batch for one image from image_to_array."""
        channels = CHANNELS[encoding]
        if pixels.shape[0] == self.height and pixels.shape[1] == self.width:
            resized = pixels
        else:
            resized = self._resized.get(channels)
            if resized is None:
                shape = (self.height, self.width) if channels == 1 else \
                    (self.height, self.width, channels)
                resized = self._resized[channels] = np.empty(shape, dtype=np.uint8)
            src = pixels if pixels.flags.c_contiguous else np.ascontiguousarray(pixels)
            cv2.resize(src, (self.width, self.height), dst=resized,
                       interpolation=resize_interpolation(pixels.shape[:2],
                                                          (self.height, self.width)))
        order = RGB_ORDER[encoding]
        for c in range(3):
            plane = resized if channels == 1 else resized[:, :, order[c]]
            np.take(self._table[c], plane, out=self.batch[0, c])
        return self.batch


@functools.lru_cache(maxsize=8)
def normalisation_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: each uint8 value of each RGB channel -> (v / 255 - mean) / std.

    The one normalisation of the project: the training data loader and the node both look
    values up in this table, so they feed the networks bit-identical inputs.
    """
    values = np.arange(256, dtype=np.float64)[None, :] / 255.0
    table = (values - np.asarray(mean, np.float64)[:, None]) / np.asarray(std, np.float64)[:, None]
    table = table.astype(np.float32)
    table.flags.writeable = False
    return table


def normalise(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float],
              out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 normalised (into ``out`` when given)."""
    table = normalisation_table(tuple(map(float, mean)), tuple(map(float, std)))
    if out is None:
        out = np.empty((3, *rgb.shape[:2]), dtype=np.float32)
    for c in range(3):
        np.take(table[c], rgb[:, :, c], out=out[c])
    return out


class Postprocessor:
    """Turn the chain's outputs into images at the camera resolution, in reused buffers.

    Depth: 32FC1 metres (REP 118), bilinear resize, non-positive or non-finite values as NaN
    (REP 118's "no reading"); :meth:`depth_output` then marks sky and out-of-range values
    (REP 117) and picks the encoding. Semantic: mono8 class ids, nearest resize, ids not in the
    class map as the unlabeled id. Colour: rgb8 from the class map's palette.
    """

    def __init__(self, depth: DepthSpec, class_ids: Sequence[int], unlabeled_id: int,
                 network_width: int):
        self.depth_spec = depth
        self.network_width = network_width
        self._lut = np.full(256, unlabeled_id, dtype=np.uint8)
        self._lut[list(class_ids)] = list(class_ids)
        self._shape: tuple[int, int] | None = None

    def _ensure(self, height: int, width: int) -> None:
        if self._shape != (height, width):
            self._shape = (height, width)
            self.depth = np.empty((height, width), dtype=np.float32)
            self.depth16: np.ndarray | None = None
            self._invalid = np.empty((height, width), dtype=bool)
            self.semantic = np.empty((height, width), dtype=np.uint8)
            self.color = np.empty((height, width, 3), dtype=np.uint8)
            self._labels_net: np.ndarray | None = None

    def depth_metres(self, depth_out: np.ndarray, height: int, width: int,
                     focal_px: float | None, camera_height: float | None = None) -> np.ndarray:
        """(1,1,h,w) or (h,w) depth output -> (height, width) float32 metres (reused buffer);
        ``camera_height``: metres above the road, for a height-normalised chain."""
        self._ensure(height, width)
        d = np.asarray(depth_out, dtype=np.float32).reshape(depth_out.shape[-2:])
        scale = depth_to_metres_scale(self.depth_spec, focal_px, width, self.network_width, camera_height)
        if d.shape == (height, width):
            np.multiply(d, np.float32(scale), out=self.depth)
        else:
            cv2.resize(d, (width, height), dst=self.depth, interpolation=cv2.INTER_LINEAR)
            if scale != 1.0:
                self.depth *= np.float32(scale)
        np.greater(self.depth, 0, out=self._invalid)  # NaN compares False: stays invalid
        np.logical_not(self._invalid, out=self._invalid)
        np.copyto(self.depth, np.float32(np.nan), where=self._invalid)
        return self.depth

    def depth_output(self, depth: np.ndarray, labels: np.ndarray | None, sky: str,
                     range_limits: bool, encoding: str) -> np.ndarray:
        """:func:`depth_to_publish` on ``depth`` from :meth:`depth_metres`, in place, with the
        chain's metadata depth range (``depth.min``/``max``); reused buffers."""
        self._ensure(*depth.shape)
        if encoding == "16UC1" and self.depth16 is None:
            self.depth16 = np.empty(depth.shape, dtype=np.uint16)
        return depth_to_publish(depth, labels, (self.depth_spec.min, self.depth_spec.max),
                                sky=sky, range_limits=range_limits, encoding=encoding,
                                in_place=True, out16=self.depth16, scratch=self._invalid)

    def semantic_ids(self, semantic_out: np.ndarray, height: int, width: int) -> np.ndarray:
        """(1,h,w) or (h,w) class ids -> (height, width) uint8 mono8 labels (reused buffer)."""
        self._ensure(height, width)
        s = np.asarray(semantic_out).reshape(semantic_out.shape[-2:])
        if self._labels_net is None or self._labels_net.shape != s.shape:
            self._labels_net = np.empty(s.shape, dtype=np.uint8)
        np.take(self._lut, s, out=self._labels_net, mode="clip")
        if s.shape == (height, width):
            self.semantic[...] = self._labels_net
        else:
            cv2.resize(self._labels_net, (width, height), dst=self.semantic,
                       interpolation=cv2.INTER_NEAREST_EXACT)
        return self.semantic

    def semantic_color(self, labels: np.ndarray) -> np.ndarray:
        """(H, W) uint8 labels -> (H, W, 3) uint8 RGB via the class map (reused buffer)."""
        self._ensure(*labels.shape)
        return classmap.colorize(labels, out=self.color)
