"""Headless MuJoCo rendering of street scenes: RGB, exact depth, AT/DT class labels.

One offscreen EGL context and one compiled geom pool serve a whole run: each sequence's street
is written into the pool's arrays and the camera moves along it. Depth and labels come from the
segmentation pass (no anti-aliasing, no lighting), so both are exact per pixel; the background
is the sky. Haze and lens effects are applied to the RGB afterwards.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from atdt_ros.classmap import CLASS_NAMES, UNLABELED
from atdt_train.sim.domain import DomainPreset
from atdt_train.sim.scene import POOL_BLOCK, CameraPose, SceneModel

SKY = CLASS_NAMES.index("sky")
DEPTH_SCALE = 256.0
"""Depth PNGs store metres * 256 (KITTI convention) as uint16."""
MAX_DEPTH_M = 255.99
"""Depth is clipped here so that it fits the uint16 encoding."""
MIN_GEOM_PX = 0.35
"""Geoms whose bounding sphere projects smaller than this (pixels) are not drawn."""
VISIBLE_GROUP, HIDDEN_GROUP = 0, 5


def _import_mujoco():
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL logs at INFO on import
    from atdt_train.sim import MUJOCO_IMPORTED_WITHOUT_GL  # noqa: PLC0415

    if MUJOCO_IMPORTED_WITHOUT_GL:
        raise RuntimeError("mujoco was imported before MUJOCO_GL was set: set MUJOCO_GL=egl "
                           "(or osmesa) in the environment, or import atdt_train.sim first")
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    import mujoco  # noqa: PLC0415 - heavy, and MUJOCO_GL must be set first

    return mujoco


class StreetRenderer:
    """Offscreen renderer of ``SceneModel``s at a fixed image size."""

    def __init__(self, width: int, height: int) -> None:
        self.mj = _import_mujoco()
        self.width, self.height = width, height
        self._gl = self.mj.GLContext(width, height)
        self._gl.make_current()
        self._con = None
        self._pool_key: str | None = None
        self.model = None
        self._rect = self.mj.MjrRect(0, 0, width, height)
        self._rgb = np.empty((height, width, 3), dtype=np.uint8)
        self._ids = np.empty((height, width, 3), dtype=np.uint8)
        self._zbuf = np.empty((height, width), dtype=np.float32)

    def load(self, scene: SceneModel) -> None:
        """Make ``scene`` current (once per sequence).

        The geom pool is compiled and uploaded to GL once per domain and size; a new street
        only rewrites the pool's geom arrays (type, size, material, colour, pose).
        """
        mj = self.mj
        self._gl.make_current()
        n = scene.ngeom
        if self.model is None or scene.pool_key != self._pool_key or n > self.model.ngeom:
            same = self.model is not None and scene.pool_key == self._pool_key
            need = -(-max(n, 1) // POOL_BLOCK) * POOL_BLOCK
            self._compile_pool(scene, max(need, self.model.ngeom if same else 0))
        model, data = self.model, self.data
        matid = np.array([self._material_ids[m] for m in scene.geom_material], dtype=np.int32)
        model.geom_type[:n] = scene.geom_type
        model.geom_size[:n] = scene.geom_size
        model.geom_rgba[:n] = scene.geom_rgba
        model.geom_matid[:n] = matid
        data.geom_xpos[:n] = scene.geom_pos
        data.geom_xmat[:n] = scene.geom_xmat
        data.geom_xpos[n:] = (0.0, 0.0, -1000.0)
        self._scn.flags[mj.mjtRndFlag.mjRND_SHADOW] = bool(scene.shadows)
        self._ngeom = n
        self._geom_class = scene.geom_class
        self._geom_pos = scene.geom_pos
        self._geom_rbound = _bounding_radius(scene.geom_type, scene.geom_size)

    def _compile_pool(self, scene: SceneModel, capacity: int) -> None:
        mj = self.mj
        model = mj.MjModel.from_xml_string(scene.pool_xml(capacity), scene.assets)
        if model.ngeom < scene.ngeom:
            raise ValueError(f"geom pool holds {model.ngeom} geoms, the scene {scene.ngeom}")
        if model.vis.global_.offwidth < self.width or model.vis.global_.offheight < self.height:
            raise ValueError("scene offscreen buffer is smaller than the renderer's image size")
        if self._con is not None:
            self._con.free()
        self._con = mj.MjrContext(model, mj.mjtFontScale.mjFONTSCALE_50.value)
        mj.mjr_setBuffer(mj.mjtFramebuffer.mjFB_OFFSCREEN.value, self._con)
        self._con.readDepthMap = mj.mjtDepthMap.mjDEPTH_ZEROFAR
        self._pool_key = scene.pool_key
        self.model = model
        self.data = mj.MjData(model)
        mj.mj_kinematics(model, self.data)
        self._material_ids = {"": -1}
        for i in range(model.nmat):
            self._material_ids[mj.mj_id2name(model, mj.mjtObj.mjOBJ_MATERIAL, i)] = i
        self._scn = mj.MjvScene(model, maxgeom=model.ngeom + 64)
        self._scn.flags[mj.mjtRndFlag.mjRND_REFLECTION] = False
        self._scn.flags[mj.mjtRndFlag.mjRND_SKYBOX] = True
        self._opt = mj.MjvOption()
        self._opt.geomgroup[:] = 0
        self._opt.geomgroup[VISIBLE_GROUP] = 1
        self._cam = mj.MjvCamera()
        self._cam.type = mj.mjtCamera.mjCAMERA_FIXED
        self._cam.fixedcamid = 0
        extent = model.stat.extent
        self._near = float(np.float32(model.vis.map.znear * extent))
        self._far = float(np.float32(model.vis.map.zfar * extent))
        fovy = math.radians(float(model.cam_fovy[0]))
        self._tan_y = math.tan(fovy / 2.0)
        self._tan_x = self._tan_y * self.width / self.height
        self._fy = (self.height / 2.0) / self._tan_y

    def _cull(self, pose: CameraPose) -> None:
        """Show only geoms inside the view frustum and larger than ``MIN_GEOM_PX`` on screen.

        MuJoCo draws every geom; on a software rasteriser the cost grows with the geoms drawn,
        and a street holds many behind the camera or too far to cover a pixel. Hidden geoms
        vanish from RGB, labels and depth alike, so the three stay consistent.
        """
        rel = (self._geom_pos - pose.pos) @ pose.xmat  # camera frame: x right, y up, z back
        x, y, f = rel[:, 0], rel[:, 1], -rel[:, 2]
        rb = self._geom_rbound
        cx, sx = math.cos(math.atan(self._tan_x)), math.sin(math.atan(self._tan_x))
        cy, sy = math.cos(math.atan(self._tan_y)), math.sin(math.atan(self._tan_y))
        visible = (f > -rb) & (f * sx - np.abs(x) * cx > -rb) & (f * sy - np.abs(y) * cy > -rb)
        visible &= (f <= rb) | (rb * self._fy > MIN_GEOM_PX * f)
        self._visible = visible
        group = self.model.geom_group
        group[:] = HIDDEN_GROUP
        group[: self._ngeom] = np.where(visible, VISIBLE_GROUP, HIDDEN_GROUP)

    def _update(self, pose: CameraPose) -> None:
        mj = self.mj
        self._cull(pose)
        self.data.cam_xpos[0] = pose.pos
        self.data.cam_xmat[0] = pose.xmat.reshape(-1)
        mj.mjv_updateScene(self.model, self.data, self._opt, None, self._cam,
                           mj.mjtCatBit.mjCAT_ALL.value, self._scn)

    def render_rgb(self, pose: CameraPose) -> np.ndarray:
        """The shaded colour image seen from ``pose`` (H, W, 3) uint8."""
        mj = self.mj
        self._gl.make_current()
        self._update(pose)
        mj.mjr_render(self._rect, self._scn, self._con)
        mj.mjr_readPixels(self._rgb, None, self._rect, self._con)
        return np.flipud(self._rgb).copy()

    def render_labels(self, pose: CameraPose) -> tuple[np.ndarray, np.ndarray]:
        """Class ids (H, W) uint8 and z-depth (H, W) float32 metres (0 on sky) from ``pose``."""
        mj = self.mj
        self._gl.make_current()
        self._update(pose)
        flags = self._scn.flags
        flags[mj.mjtRndFlag.mjRND_SEGMENT] = True
        flags[mj.mjtRndFlag.mjRND_IDCOLOR] = True
        try:
            mj.mjr_render(self._rect, self._scn, self._con)
            mj.mjr_readPixels(self._ids, self._zbuf, self._rect, self._con)
        finally:
            flags[mj.mjtRndFlag.mjRND_SEGMENT] = False
            flags[mj.mjtRndFlag.mjRND_IDCOLOR] = False
        ids = np.flipud(self._ids).astype(np.int32)
        seg = ids[..., 0] | (ids[..., 1] << 8) | (ids[..., 2] << 16)
        lut = self._segid_lut()
        semantic = lut[np.minimum(seg, len(lut) - 1)]
        # undo the reversed-Z perspective projection (as mujoco.Renderer does)
        zfar, znear = self._far, self._near
        c = -(zfar + znear) / (zfar - znear)
        d = -(2.0 * zfar * znear) / (zfar - znear)
        c, d = -0.5 * c - 0.5, -0.5 * d
        z = d / (np.flipud(self._zbuf).astype(np.float64) + c)
        depth = np.minimum(z, MAX_DEPTH_M).astype(np.float32)
        depth[(semantic == SKY) | (semantic == UNLABELED)] = 0.0
        return semantic, depth

    def _segid_lut(self) -> np.ndarray:
        """Segmentation colour (segid + 1) -> class id; 0 (background) -> sky.

        The scene lists the shown geoms in model order, so segid j is the j-th visible geom;
        should MuJoCo ever add other geoms, the table is read from the scene instead.
        """
        ngeom = self._scn.ngeom
        lut = np.full(ngeom + 2, UNLABELED, dtype=np.uint8)
        lut[0] = SKY
        shown = np.flatnonzero(self._visible)
        if len(shown) == ngeom:
            lut[1:ngeom + 1] = self._geom_class[shown]
            return lut
        geom_type = int(self.mj.mjtObj.mjOBJ_GEOM)  # pragma: no cover - defensive path
        for g in self._scn.geoms[:ngeom]:
            if g.segid >= 0 and g.objtype == geom_type and 0 <= g.objid < len(self._geom_class):
                lut[g.segid + 1] = self._geom_class[g.objid]
        return lut

    def close(self) -> None:
        """Free the GL resources."""
        if self._con is not None:
            self._gl.make_current()
            self._con.free()
            self._con = None
        if self._gl is not None:
            self._gl.free()
            self._gl = None


def _bounding_radius(gtype: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Radius of each geom's bounding sphere (MuJoCo's ``geom_rbound``) from type and size."""
    r, h = size[:, 0], size[:, 1]
    return np.select(
        [gtype == 2, gtype == 3, gtype == 5, gtype == 4],
        [r, r + h, np.hypot(r, h), size.max(axis=1)],
        default=np.linalg.norm(size, axis=1),
    )


_VIGNETTE_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _radius2(h: int, w: int) -> np.ndarray:
    """Squared distance from the image centre, in half-widths (cached per size)."""
    if (h, w) not in _VIGNETTE_CACHE:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xx - (w - 1) / 2.0) / (w / 2.0)) ** 2 + ((yy - (h - 1) / 2.0) / (w / 2.0)) ** 2
        _VIGNETTE_CACHE[(h, w)] = np.clip(r2, 0.0, 2.0)[..., None]
    return _VIGNETTE_CACHE[(h, w)]


LensMaps = tuple[np.ndarray | None, np.ndarray | None]
"""Per-pixel factor (H, W, 1) and additive term (H, W, 3) of haze and vignette, or None."""


def lens_maps(depth: np.ndarray, preset: DomainPreset) -> LensMaps:
    """Haze by distance and vignetting of one frame (shared by both views of a stereo pair)."""
    look, lens = preset.look, preset.lens
    h, w = depth.shape
    scale = offset = None
    if look.haze_per_km > 0.0:
        dist = np.where(depth > 0.0, depth, np.float32(1000.0))
        scale = np.exp(np.float32(-look.haze_per_km * 1e-3) * dist)[..., None]
        offset = (1.0 - scale) * (np.asarray(look.haze_rgb, dtype=np.float32) * 255.0)
    if lens.vignette > 0.0:
        v = 1.0 - np.float32(lens.vignette / 2.0) * _radius2(h, w)
        scale = v if scale is None else scale * v
        if offset is not None:
            offset *= v
    return scale, offset


def apply_lens(rgb: np.ndarray, maps: LensMaps, preset: DomainPreset,
               rng: np.random.Generator, exposure: float = 1.0) -> np.ndarray:
    """Haze and vignette (``maps``), then the camera: exposure, colour cast, blur, sensor
    noise and gamma. Deterministic for a given ``rng`` state."""
    import cv2  # noqa: PLC0415

    lens = preset.lens
    scale, offset = maps
    gain = np.asarray(lens.color_cast, dtype=np.float32) * np.float32(exposure)
    if (scale is None and offset is None and np.all(gain == 1.0) and lens.blur_sigma_px <= 0.0
            and lens.noise_std <= 0.0 and lens.gamma == 1.0):
        return rgb  # an ideal camera in clear air
    img = rgb.astype(np.float32)
    if scale is not None:
        img *= scale
    if offset is not None:
        img += offset
    img *= gain
    if lens.blur_sigma_px > 0.0:
        img = cv2.GaussianBlur(img, (0, 0), lens.blur_sigma_px)
    if lens.noise_std > 0.0:
        noise = np.empty_like(img)
        cv2.setRNGSeed(int(rng.integers(0, 2**31 - 1)))
        cv2.randn(noise, (0.0, 0.0, 0.0), (lens.noise_std,) * 3)
        img += noise
    out = np.clip(img + np.float32(0.5), 0.0, 255.0).astype(np.uint8)
    if lens.gamma != 1.0:
        out = cv2.LUT(out, _gamma_lut(lens.gamma))
    return out


def _gamma_lut(gamma: float) -> np.ndarray:
    x = np.arange(256, dtype=np.float64) / 255.0
    return np.clip(np.rint(255.0 * x ** (1.0 / gamma)), 0, 255).astype(np.uint8)
