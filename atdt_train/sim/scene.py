"""Procedural streets as MuJoCo models: a random street per sequence and the camera path along it.

The street runs along +x (y to the left, z up): road with lanes and optional parking strips,
raised sidewalks, building rows on both sides (with gaps, front walls, fences and hedges),
trees, street lamps, traffic signs, parked and moving vehicles and pedestrians. Every geom
carries one of the 11 AT/DT classes, so the renderer maps MuJoCo segmentation ids to labels.
The camera drives along its lane; the frames of one sequence share one street, and the
renderer loads each street into one compiled pool of geoms.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from atdt_ros.classmap import CLASS_NAMES
from atdt_train.sim.domain import DomainPreset

CLS = {name: i for i, name in enumerate(CLASS_NAMES)}
TEXTURE_TILE_M = 6.0
"""World size (metres) that one facade texture tile covers (two window bays, two floors)."""
FAR_M = 1000.0
"""Far clipping plane: everything beyond (and the sky) reads as the far plane."""


@dataclass(frozen=True)
class CameraPose:
    """A camera in the world: position and rotation (columns: camera x right, y up, z back)."""

    pos: np.ndarray
    xmat: np.ndarray

    def shifted_right(self, metres: float) -> "CameraPose":
        """The same camera moved along its own x axis (the right camera of a stereo rig)."""
        return CameraPose(self.pos + metres * self.xmat[:, 0], self.xmat)


GEOM_TYPES = {"sphere": 2, "capsule": 3, "ellipsoid": 4, "cylinder": 5, "box": 6}
"""MuJoCo's ``mjtGeom`` codes of the builtin shapes streets are made of."""
POOL_BLOCK = 512
"""Geom pools grow in blocks of this many geoms."""
POOL_MARK = "<!-- geom pool -->"


@dataclass
class SceneModel:
    """One street: the geoms (arrays, one row per geom, each with its class) and the MJCF of
    the geom pool they are loaded into.

    The pool model depends only on the domain, image size and pool capacity, so one compiled
    model (and one GL context) serves every sequence of a run; a new street only rewrites the
    geom arrays of the compiled model.
    """

    pool_template: str
    assets: dict[str, bytes]
    geom_type: np.ndarray
    geom_pos: np.ndarray
    geom_size: np.ndarray
    geom_xmat: np.ndarray
    geom_rgba: np.ndarray
    geom_material: list[str]
    geom_class: np.ndarray
    shadows: bool = False

    @property
    def ngeom(self) -> int:
        """Number of geoms of the street."""
        return len(self.geom_class)

    @property
    def pool_key(self) -> str:
        """Equal keys mean a compiled pool model (and its GL context) can be reused."""
        return hashlib.sha1(self.pool_template.encode()).hexdigest()

    def pool_xml(self, capacity: int) -> str:
        """MJCF of the geom pool with room for ``capacity`` geoms."""
        if capacity < self.ngeom:
            raise ValueError(f"a pool of {capacity} geoms cannot hold {self.ngeom}")
        geom = '<geom type="box" size="1 1 1" pos="0 0 -1000" group="5"/>'
        return self.pool_template.replace(POOL_MARK, "\n    ".join([geom] * capacity))


def camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation for a camera looking along +x, angles in radians.

    Positive yaw turns left, positive pitch looks up, positive roll tilts clockwise as seen
    from behind the camera.
    """
    base = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(-pitch), math.sin(-pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    return rz @ ry @ rx @ base


def fovy_deg(hfov_deg: float, width: int, height: int) -> float:
    """Vertical field of view of a camera with square pixels and the given horizontal one."""
    half = math.tan(math.radians(hfov_deg) / 2.0) * height / width
    return math.degrees(2.0 * math.atan(half))


def intrinsics(hfov_deg: float, width: int, height: int) -> dict[str, float]:
    """Pinhole intrinsics in pixels (pixel centres at integer coordinates)."""
    fy = (height / 2.0) / math.tan(math.radians(fovy_deg(hfov_deg, width, height)) / 2.0)
    return {"fx": fy, "fy": fy, "cx": (width - 1) / 2.0, "cy": (height - 1) / 2.0}


class StreetGeoms:
    """Collects the static geoms of a street, each with its AT/DT class."""

    def __init__(self) -> None:
        self.types: list[int] = []
        self.pos: list[tuple[float, float, float]] = []
        self.size: list[tuple[float, float, float]] = []
        self.xmat: list[tuple[float, ...]] = []
        self.rgba: list[tuple[float, float, float, float]] = []
        self.material: list[str] = []
        self.classes: list[int] = []

    def add(self, cls: str, gtype: str, pos, size, rgba=None, material: str | None = None,
            yaw: float = 0.0, tilt_x: float = 0.0,
            zaxis: tuple[float, float, float] | None = None) -> None:
        """Add one geom: ``size`` as MuJoCo reads it for ``gtype``; orientation either a yaw
        (about z) after a tilt about x, or the direction of the geom's own z axis."""
        self.types.append(GEOM_TYPES[gtype])
        self.pos.append((float(pos[0]), float(pos[1]), float(pos[2])))
        full = [float(v) for v in size] + [0.0] * (3 - len(size))
        self.size.append((full[0], full[1], full[2]))
        self.xmat.append(tuple(_zaxis_rotation(zaxis).reshape(-1)) if zaxis is not None
                         else _yaw_tilt(yaw, tilt_x))
        self.rgba.append((0.5, 0.5, 0.5, 1.0) if rgba is None else tuple(float(v) for v in rgba))
        self.material.append(material or "")
        self.classes.append(CLS[cls])


def _yaw_tilt(yaw: float, tilt_x: float) -> tuple[float, ...]:
    """Row-major Rz(yaw) @ Rx(tilt_x)."""
    cz, sz, cx, sx = math.cos(yaw), math.sin(yaw), math.cos(tilt_x), math.sin(tilt_x)
    return (cz, -sz * cx, sz * sx, sz, cz * cx, -cz * sx, 0.0, sx, cx)


def _zaxis_rotation(zaxis) -> np.ndarray:
    """The smallest rotation taking (0, 0, 1) to ``zaxis`` (as MJCF's ``zaxis`` does)."""
    a = np.asarray(zaxis, dtype=float)
    a = a / np.linalg.norm(a)
    v = np.cross([0.0, 0.0, 1.0], a)
    c = float(a[2])
    if np.linalg.norm(v) < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def _fmt(values) -> str:
    return " ".join(f"{float(v):.4g}" for v in values)


# ----------------------------------------------------------------------------- textures

_TEXTURE_CACHE: dict[tuple, dict[str, bytes]] = {}


def domain_textures(preset: DomainPreset) -> dict[str, bytes]:
    """The domain's texture images (PNG bytes), fixed per preset so all sequences share them."""
    key = (preset.look.texture_style, preset.look.texture_noise, preset.look.road_rgb,
           preset.look.sidewalk_rgb)
    if key not in _TEXTURE_CACHE:
        _TEXTURE_CACHE[key] = _make_textures(preset)
    return _TEXTURE_CACHE[key]


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8),
                                               cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _make_textures(preset: DomainPreset) -> dict[str, bytes]:
    look = preset.look
    photo = look.texture_style == "photo"
    rng = np.random.default_rng(12345)
    n = 128
    amp = 255.0 * look.texture_noise

    def noise(shape, scale=1.0, blur=0.0):
        z = rng.normal(0.0, 1.0, shape[:2])
        if blur > 0:
            z = cv2.GaussianBlur(z, (0, 0), blur)
            z /= max(z.std(), 1e-6)
        return amp * scale * z[..., None]

    out: dict[str, bytes] = {}
    # facades: light wall (tinted per building through the geom colour) with dark windows
    for k in range(4):
        wall = np.full((n, n, 3), 235.0)
        if photo:
            wall += noise((n, n, 1), 0.6, 0.8) + noise((n, n, 1), 0.5, 6.0)
            if k % 2 == 1:  # brick courses
                wall[:: 4 if k == 1 else 6] *= 0.8
        bays, floors = 2, 2
        bw, fh = n // bays, n // floors
        win_w = [0.45, 0.55, 0.35, 0.6][k]
        win_h = [0.5, 0.55, 0.6, 0.45][k]
        for b in range(bays):
            for f in range(floors):
                x0 = int(b * bw + bw * (1 - win_w) / 2)
                y0 = int(f * fh + fh * (1 - win_h) / 2)
                x1, y1 = x0 + int(bw * win_w), y0 + int(fh * win_h)
                glass = np.array([40.0, 55.0, 75.0]) if not photo else (
                    np.array([55.0, 62.0, 70.0]) + rng.uniform(-20, 40))
                wall[y0 - 2:y1 + 2, x0 - 2:x1 + 2] = 150.0 if photo else 200.0
                wall[y0:y1, x0:x1] = glass
                if photo:
                    wall[y0:y1, x0:x1] += noise((y1 - y0, x1 - x0, 1), 0.3, 1.0)
        out[f"facade{k}.png"] = _png(wall)
    road = np.full((n, n, 3), np.array(look.road_rgb) * 255.0)
    if photo:
        road += noise((n, n, 1), 0.7, 0.5) + noise((n, n, 1), 0.4, 8.0)
    else:
        road += noise((n, n, 1), 0.3, 0.5)
    out["asphalt.png"] = _png(road)
    side = np.full((n, n, 3), np.array(look.sidewalk_rgb) * 255.0)
    side += noise((n, n, 1), 0.5, 0.7)
    side[::32] *= 0.75
    side[:, ::32] *= 0.75
    out["paving.png"] = _png(side)
    leaves = np.full((n, n, 3), 235.0) + noise((n, n, 1), 1.2, 1.2) + 40.0 * (
        rng.random((n, n, 1)) - 0.5) * (1.0 if photo else 0.4)
    out["leaves.png"] = _png(leaves)
    fence = np.full((n, n, 3), 60.0)
    for x in range(0, n, 16):
        fence[:, x:x + 5] = 230.0
    fence[8:14] = 230.0
    fence[n - 14:n - 8] = 230.0
    out["fence.png"] = _png(fence + noise((n, n, 1), 0.3, 0.5))
    dash = np.full((n, n, 3), np.array(look.road_rgb) * 255.0)
    dash[:, : n // 2] = 235.0
    out["dash.png"] = _png(dash + noise((n, n, 1), 0.3, 0.5))
    return out


_MATERIALS = (
    # name, texture file, metres per texture tile, specular
    ("facade0", "facade0.png", TEXTURE_TILE_M, 0.1),
    ("facade1", "facade1.png", TEXTURE_TILE_M, 0.1),
    ("facade2", "facade2.png", TEXTURE_TILE_M, 0.1),
    ("facade3", "facade3.png", TEXTURE_TILE_M, 0.1),
    ("asphalt", "asphalt.png", 4.0, 0.05),
    ("paving", "paving.png", 2.0, 0.05),
    ("leaves", "leaves.png", 1.5, 0.0),
    ("fence", "fence.png", 2.0, 0.1),
    ("dash", "dash.png", 9.0, 0.1),
)


def pool_template(preset: DomainPreset, width: int, height: int) -> str:
    """MJCF of the domain's geom pool (lit and textured as the domain says), with
    ``POOL_MARK`` where the placeholder geoms go."""
    look, cam = preset.look, preset.camera
    assets = [
        f'<texture name="sky" type="skybox" builtin="gradient" rgb1="{_fmt(look.sky_zenith_rgb)}" '
        f'rgb2="{_fmt(look.sky_horizon_rgb)}" width="64" height="64"/>'
    ]
    for name, file, tile, spec in _MATERIALS:
        assets.append(f'<texture name="{name}" type="2d" file="{file}"/>')
        assets.append(
            f'<material name="{name}" texture="{name}" texuniform="true" '
            f'texrepeat="{1.0 / tile:.4g} {1.0 / tile:.4g}" specular="{spec}" shininess="0.2"/>'
        )
    assets.append(f'<material name="paint" specular="{look.specular}" shininess="0.5"/>')
    assets.append('<material name="matte" specular="0" shininess="0"/>')
    sun = np.asarray(look.sun_direction, dtype=float)
    sun = sun / max(np.linalg.norm(sun), 1e-9)
    d, a = look.sun_diffuse, look.ambient
    fovy = f"{fovy_deg(cam.hfov_deg, width, height):.6f}"
    shadow = "true" if look.shadows else "false"
    shadowsize = 2048 if look.shadows else 0
    return f"""<mujoco model="street">
  <compiler angle="radian"/>
  <statistic extent="100" center="0 0 0"/>
  <visual>
    <global offwidth="{width}" offheight="{height}" fovy="{fovy}"/>
    <quality shadowsize="{shadowsize}" offsamples="0" numslices="10" numstacks="4"
             numquads="1"/>
    <map znear="{cam.znear_m / 100.0:.6g}" zfar="{FAR_M / 100.0:.6g}" shadowclip="60"
         shadowscale="0.8"/>
    <headlight ambient="{a} {a} {a}" diffuse="0.12 0.12 0.12" specular="0 0 0"/>
    <rgba haze="{_fmt(look.sky_horizon_rgb)} 1"/>
  </visual>
  <asset>
    {chr(10).join('    ' + x for x in assets).strip()}
  </asset>
  <worldbody>
    <light directional="true" dir="{_fmt(sun)}" pos="0 0 100" diffuse="{d} {d} {d}"
           specular="0.2 0.2 0.2" castshadow="{shadow}"/>
    <camera name="left" pos="0 0 1.5" fovy="{fovy}"/>
    {POOL_MARK}
  </worldbody>
</mujoco>
"""


# ----------------------------------------------------------------------------- the street


@dataclass
class _Layout:
    road_half: float
    parking: tuple[float, float]  # parking strip width on right (-y) and left (+y) sides
    lane_width: float
    lanes: int
    sidewalk: float
    x0: float
    x1: float
    cam_x: list[float] = field(default_factory=list)
    cam_y: float = 0.0


def _u(rng: np.random.Generator, r) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def _colour(rng: np.random.Generator, preset: DomainPreset, hue=None, sat_scale=1.0) -> tuple:
    h = rng.random() if hue is None else hue
    s = min(1.0, _u(rng, preset.look.saturation) * sat_scale)
    v = _u(rng, preset.look.brightness)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (r, g, b, 1.0)


def _count(rng: np.random.Generator, per_100m: float, length: float) -> int:
    return int(rng.poisson(max(per_100m, 0.0) * length / 100.0))


def build_sequence(preset: DomainPreset, rng: np.random.Generator, width: int, height: int,
                   frames: int) -> tuple[SceneModel, list[CameraPose]]:
    """A random street for one sequence and ``frames`` camera poses driving along it."""
    st, cam = preset.street, preset.camera
    lanes = int(rng.integers(st.lanes_per_direction[0], st.lanes_per_direction[1] + 1))
    lw = _u(rng, st.lane_width_m)
    parking = tuple(float(rng.random() < 0.6) * 2.3 for _ in range(2))
    sidewalk = _u(rng, st.sidewalk_width_m)
    # camera path: ego lane on the right-hand side (-y)
    ego_lane = int(rng.integers(0, lanes))
    cam_y = -(ego_lane + 0.5) * lw + _u(rng, cam.lateral_m) * min(1.0, (lw - 2.0) / 1.2)
    cam_x = [0.0]
    for _ in range(frames - 1):
        cam_x.append(cam_x[-1] + _u(rng, cam.step_m))
    lay = _Layout(road_half=lanes * lw, parking=parking, lane_width=lw, lanes=lanes,
                  sidewalk=sidewalk, x0=-40.0, x1=cam_x[-1] + st.view_distance_m,
                  cam_x=cam_x, cam_y=cam_y)
    w = StreetGeoms()
    _road(w, lay, preset)
    for side in (-1, 1):
        _roadside(w, rng, lay, preset, side)
    _vehicles(w, rng, lay, preset)
    _pedestrians(w, rng, lay, preset)
    poses = []
    for x in cam_x:
        h = _u(rng, cam.height_m)
        rot = camera_rotation(math.radians(_u(rng, cam.yaw_deg)),
                              math.radians(_u(rng, cam.pitch_deg)),
                              math.radians(_u(rng, cam.roll_deg)))
        poses.append(CameraPose(np.array([x, cam_y, h]), rot))
    return compose_scene(preset, w, width, height), poses


def compose_scene(preset: DomainPreset, geoms: StreetGeoms, width: int,
                  height: int) -> SceneModel:
    """The scene of the geoms in ``geoms``, to render at ``width`` x ``height``."""
    n = len(geoms.classes)
    return SceneModel(
        pool_template=pool_template(preset, width, height),
        assets=domain_textures(preset),
        geom_type=np.array(geoms.types, dtype=np.int32).reshape(n),
        geom_pos=np.array(geoms.pos, dtype=np.float64).reshape(n, 3),
        geom_size=np.array(geoms.size, dtype=np.float64).reshape(n, 3),
        geom_xmat=np.array(geoms.xmat, dtype=np.float64).reshape(n, 9),
        geom_rgba=np.array(geoms.rgba, dtype=np.float32).reshape(n, 4),
        geom_material=list(geoms.material),
        geom_class=np.array(geoms.classes, dtype=np.uint8).reshape(n),
        shadows=preset.look.shadows,
    )


def _edges(lay: _Layout, side: int) -> tuple[float, float]:
    """|y| of the curb and of the sidewalk's outer edge on one side (-1 right, +1 left)."""
    curb = lay.road_half + lay.parking[0 if side < 0 else 1]
    return curb, curb + lay.sidewalk


def _road(w: StreetGeoms, lay: _Layout, preset: DomainPreset) -> None:
    cx, hx = (lay.x0 + lay.x1) / 2.0, (lay.x1 - lay.x0) / 2.0
    right, _ = _edges(lay, -1)
    left, _ = _edges(lay, 1)
    yc, hy = (left - right) / 2.0, (left + right) / 2.0
    w.add("road", "box", (cx, yc, -0.05), (hx, hy, 0.05), material="asphalt",
          rgba=(1, 1, 1, 1))
    # centre line and lane separators (flat boxes a millimetre above the asphalt)
    ys = [0.0] + [s * k * lay.lane_width for k in range(1, lay.lanes) for s in (-1, 1)]
    for y in ys:
        mat = "dash" if y != 0.0 else None
        rgba = (1, 1, 1, 1) if y != 0.0 else (0.95, 0.85 if preset.look.texture_style == "flat"
                                               else 0.9, 0.3, 1)
        w.add("road", "box", (cx, y, 0.001), (hx, 0.07, 0.001), material=mat, rgba=rgba)


def _roadside(w: StreetGeoms, rng: np.random.Generator, lay: _Layout, preset: DomainPreset,
              side: int) -> None:
    st = preset.street
    curb, outer = _edges(lay, side)
    cx, hx = (lay.x0 + lay.x1) / 2.0, (lay.x1 - lay.x0) / 2.0
    ch = st.curb_height_m
    w.add("sidewalk", "box", (cx, side * (curb + outer) / 2.0, ch / 2.0),
          (hx, (outer - curb) / 2.0, ch / 2.0), material="paving", rgba=(1, 1, 1, 1))
    # building rows with gaps; the space between sidewalk and facade is a front yard
    x = lay.x0
    while x < lay.x1:
        if rng.random() < st.building_gap_prob:
            length = float(rng.uniform(6.0, 18.0))
            _front(w, rng, preset, x, length, outer, side, 12.0, yard_ground=True)
            x += length
            continue
        length = _u(rng, st.building_length_m)
        setback = _u(rng, st.building_setback_m)
        bh = _u(rng, st.building_height_m)
        depth = float(rng.uniform(10.0, 20.0))
        y_face = outer + setback
        w.add("building", "box", (x + length / 2.0, side * (y_face + depth / 2.0), bh / 2.0),
              (length / 2.0 - 0.05, depth / 2.0, bh / 2.0),
              material=f"facade{int(rng.integers(0, 4))}",
              rgba=_colour(rng, preset, sat_scale=0.5))
        if setback > 0.8:
            _front(w, rng, preset, x, length, outer, side, setback, yard_ground=True)
        x += length
    # a second, taller row behind, visible through gaps and above low buildings
    x = lay.x0
    while x < lay.x1:
        length = float(rng.uniform(15.0, 40.0))
        y_face = outer + 25.0
        bh = _u(rng, st.building_height_m) * float(rng.uniform(1.0, 1.6))
        w.add("building", "box", (x + length / 2.0, side * (y_face + 8.0), bh / 2.0),
              (length / 2.0, 8.0, bh / 2.0), material=f"facade{int(rng.integers(0, 4))}",
              rgba=_colour(rng, preset, sat_scale=0.4))
        x += length
    length = lay.x1 - lay.x0
    # trees along the curb
    for _ in range(_count(rng, st.trees_per_100m, length)):
        tx = float(rng.uniform(lay.x0, lay.x1))
        _tree(w, rng, preset, tx, side * (curb + min(0.9, lay.sidewalk / 2.0)))
    # street lamps
    for _ in range(_count(rng, st.poles_per_100m, length)):
        px = float(rng.uniform(lay.x0, lay.x1))
        _lamp(w, rng, px, side * (curb + 0.35), side)
    # traffic signs on their own posts
    for _ in range(_count(rng, st.signs_per_100m, length)):
        sx = float(rng.uniform(lay.x0, lay.x1))
        _sign(w, rng, preset, sx, side * (curb + 0.5))


def _front(w: StreetGeoms, rng: np.random.Generator, preset: DomainPreset, x: float,
           length: float, outer: float, side: int, depth: float, yard_ground: bool) -> None:
    """The frontage between the sidewalk and a facade (or in a gap): wall, fence or hedge."""
    st = preset.street
    cx, hx = x + length / 2.0, length / 2.0
    if yard_ground:
        grass = rng.random() < 0.5
        w.add("vegetation" if grass else "sidewalk", "box",
              (cx, side * (outer + depth / 2.0), 0.05), (hx, depth / 2.0, 0.05),
              material="leaves" if grass else "paving",
              rgba=(0.35, 0.55, 0.2, 1) if grass else (0.9, 0.9, 0.9, 1))
    r = rng.random()
    y = side * (outer + 0.15)
    if r < st.front_wall_prob:
        h = float(rng.uniform(0.8, 2.6))
        w.add("wall", "box", (cx, y, h / 2.0), (hx, 0.15, h / 2.0), material="paving",
              rgba=_colour(rng, preset, sat_scale=0.3))
    elif r < st.front_wall_prob + st.front_fence_prob:
        h = float(rng.uniform(1.0, 2.0))
        w.add("fence", "box", (cx, y, h / 2.0), (hx, 0.03, h / 2.0), material="fence",
              rgba=_colour(rng, preset, sat_scale=0.4))
    elif r < st.front_wall_prob + st.front_fence_prob + st.front_hedge_prob:
        h = float(rng.uniform(0.8, 1.8))
        w.add("vegetation", "box", (cx, y + side * 0.35, h / 2.0), (hx, 0.5, h / 2.0),
              material="leaves", rgba=(0.25, 0.45, 0.15, 1))
    if rng.random() < 0.4:
        _tree(w, rng, preset, float(rng.uniform(x, x + length)), side * (outer + depth / 2.0))


def _tree(w: StreetGeoms, rng: np.random.Generator, preset: DomainPreset, x: float,
          y: float) -> None:
    h = _u(rng, preset.street.tree_height_m)
    trunk = h * 0.45
    w.add("vegetation", "cylinder", (x, y, trunk / 2.0), (0.12 + 0.02 * h / 5.0, trunk / 2.0),
          rgba=(0.35, 0.25, 0.15, 1), material="matte")
    green = _colour(rng, preset, hue=float(rng.uniform(0.2, 0.33)), sat_scale=1.0)
    r = float(rng.uniform(0.25, 0.4)) * h
    w.add("vegetation", "ellipsoid", (x, y, trunk + r * 0.8), (r, r, r * 1.1),
          material="leaves", rgba=green)
    if rng.random() < 0.6:
        w.add("vegetation", "sphere", (x + rng.uniform(-0.5, 0.5) * r, y,
                                       trunk + r * 1.5), (r * 0.7,),
              material="leaves", rgba=green)


def _lamp(w: StreetGeoms, rng: np.random.Generator, x: float, y: float, side: int) -> None:
    h = float(rng.uniform(6.0, 9.0))
    grey = float(rng.uniform(0.3, 0.6))
    rgba = (grey, grey, grey * 1.05, 1)
    w.add("pole", "cylinder", (x, y, h / 2.0), (0.09, h / 2.0), rgba=rgba, material="paint")
    arm = float(rng.uniform(1.0, 2.5))
    w.add("pole", "box", (x, y - side * arm / 2.0, h), (0.05, arm / 2.0, 0.05), rgba=rgba,
          material="paint")
    w.add("pole", "box", (x, y - side * arm, h - 0.1), (0.25, 0.15, 0.08), rgba=rgba,
          material="paint")


def _sign(w: StreetGeoms, rng: np.random.Generator, preset: DomainPreset, x: float,
          y: float) -> None:
    h = float(rng.uniform(2.0, 3.0))
    w.add("pole", "cylinder", (x, y, h / 2.0), (0.04, h / 2.0), rgba=(0.55, 0.55, 0.58, 1),
          material="paint")
    shape = int(rng.integers(0, 3))
    hue = float(rng.choice([0.0, 0.6, 0.15]))
    rgba = _colour(rng, preset, hue=hue, sat_scale=1.4)
    if shape == 0:  # round plate facing the traffic
        w.add("traffic_sign", "cylinder", (x - 0.06, y, h + 0.3), (0.35, 0.02),
              zaxis=(1.0, 0.0, 0.0), rgba=rgba, material="paint")
    elif shape == 1:  # rectangular plate
        w.add("traffic_sign", "box", (x - 0.06, y, h + 0.35), (0.02, 0.35, 0.45), rgba=rgba,
              material="paint")
    else:  # diamond
        w.add("traffic_sign", "box", (x - 0.06, y, h + 0.4), (0.02, 0.3, 0.3), rgba=rgba,
              tilt_x=math.pi / 4.0, material="paint")


def _car(w: StreetGeoms, rng: np.random.Generator, preset: DomainPreset, x: float, y: float,
         yaw: float, length: float | None = None) -> None:
    kind = rng.random()
    if length is None:
        length = float(rng.uniform(3.8, 4.9)) if kind < 0.85 else float(rng.uniform(5.5, 9.0))
    big = length > 5.2
    width = float(rng.uniform(1.7, 1.9)) if not big else 2.3
    body_h = 0.75 if not big else float(rng.uniform(1.8, 2.6))
    colour = _colour(rng, preset, sat_scale=1.2)
    c, s = math.cos(yaw), math.sin(yaw)

    def at(dx: float, dy: float) -> tuple[float, float]:
        return x + c * dx - s * dy, y + s * dx + c * dy

    bx, by = at(0.0, 0.0)
    w.add("vehicle", "box", (bx, by, 0.32 + body_h / 2.0), (length / 2.0, width / 2.0,
                                                             body_h / 2.0),
          rgba=colour, material="paint", yaw=yaw)
    if not big:
        cab = length * float(rng.uniform(0.45, 0.6))
        kx, ky = at(-length * 0.05, 0.0)
        w.add("vehicle", "box", (kx, ky, 0.32 + body_h + 0.25),
              (cab / 2.0, width / 2.0 - 0.08, 0.25), rgba=(0.12, 0.14, 0.18, 1),
              material="paint", yaw=yaw)
    for fx in (-0.32, 0.32):  # one cylinder per axle, its middle hidden in the body
        wx, wy = at(fx * length, 0.0)
        w.add("vehicle", "cylinder", (wx, wy, 0.32), (0.32, width / 2.0 - 0.02),
              zaxis=(-s, c, 0.0), rgba=(0.05, 0.05, 0.05, 1), material="matte")


def _vehicles(w: StreetGeoms, rng: np.random.Generator, lay: _Layout,
              preset: DomainPreset) -> None:
    st = preset.street
    length = lay.x1 - lay.x0
    # parked cars in the parking strips
    for i, side in enumerate((-1, 1)):
        if lay.parking[i] <= 0.0:
            continue
        y = side * (lay.road_half + lay.parking[i] / 2.0 + 0.1)
        xs = np.sort(rng.uniform(lay.x0, lay.x1, _count(rng, st.parked_cars_per_100m, length)))
        last = -1e9
        for x in xs:
            if x - last < 6.0:
                continue
            _car(w, rng, preset, float(x), float(y), math.pi * (rng.random() < 0.1),
                 length=float(rng.uniform(3.8, 4.8)))
            last = float(x)
    # moving traffic in the lanes; the ego lane only well ahead of (or behind) the camera path
    ego_min, ego_max = lay.cam_x[0] - 12.0, lay.cam_x[-1] + 10.0
    occupied: list[tuple[float, float]] = []
    for _ in range(_count(rng, st.moving_cars_per_100m, length)):
        lane = int(rng.integers(0, 2 * lay.lanes))
        side = -1 if lane < lay.lanes else 1
        k = lane % lay.lanes
        y = side * (k + 0.5) * lay.lane_width + float(rng.uniform(-0.3, 0.3))
        x = float(rng.uniform(lay.x0, lay.x1))
        if abs(y - lay.cam_y) < lay.lane_width * 0.75 and ego_min < x < ego_max:
            continue
        if any(abs(x - ox) < 7.0 and abs(y - oy) < 1.5 for ox, oy in occupied):
            continue
        occupied.append((x, y))
        yaw = (0.0 if side < 0 else math.pi) + float(rng.uniform(-0.05, 0.05))
        _car(w, rng, preset, x, y, yaw)


def _person(w: StreetGeoms, rng: np.random.Generator, preset: DomainPreset, x: float,
            y: float, z0: float) -> None:
    h = float(rng.uniform(1.55, 1.95))
    yaw = float(rng.uniform(-math.pi, math.pi))
    c, s = math.cos(yaw), math.sin(yaw)
    top = _colour(rng, preset, sat_scale=0.9)
    legs = _colour(rng, preset, sat_scale=0.4)
    skin = (0.85, 0.65, 0.5, 1) if rng.random() < 0.6 else (0.45, 0.3, 0.2, 1)
    leg = 0.47 * h
    for d in (-0.1, 0.1):
        w.add("person", "box", (x - s * d, y + c * d, z0 + leg / 2.0), (0.07, 0.07, leg / 2.0),
              rgba=legs, material="matte", yaw=yaw)
    torso = 0.33 * h
    w.add("person", "box", (x, y, z0 + leg + torso / 2.0), (0.12, 0.25, torso / 2.0),
          rgba=top, material="matte", yaw=yaw)
    w.add("person", "ellipsoid", (x, y, z0 + leg + torso + 0.1), (0.09, 0.08, 0.11),
          rgba=skin, material="matte", yaw=yaw)


def _pedestrians(w: StreetGeoms, rng: np.random.Generator, lay: _Layout,
                 preset: DomainPreset) -> None:
    st = preset.street
    length = lay.x1 - lay.x0
    for side in (-1, 1):
        curb, outer = _edges(lay, side)
        for _ in range(_count(rng, st.pedestrians_per_100m, length) // 2 + 1):
            x = float(rng.uniform(lay.x0, lay.x1))
            y = side * float(rng.uniform(curb + 0.4, outer - 0.3))
            if rng.random() < 0.3:  # a small group
                for _k in range(int(rng.integers(2, 4))):
                    _person(w, rng, preset, x + float(rng.uniform(-1.5, 1.5)),
                            y + float(rng.uniform(-0.4, 0.4)) * side, st.curb_height_m)
            else:
                _person(w, rng, preset, x, y, st.curb_height_m)
    if rng.random() < st.crossing_pedestrian_prob:  # people crossing ahead of the camera path
        x = lay.cam_x[-1] + float(rng.uniform(12.0, 40.0))
        right, _ = _edges(lay, -1)
        left, _ = _edges(lay, 1)
        for _k in range(int(rng.integers(1, 4))):
            _person(w, rng, preset, x + float(rng.uniform(-1.0, 1.0)),
                    float(rng.uniform(-right + 0.5, left - 0.5)), 0.0)
