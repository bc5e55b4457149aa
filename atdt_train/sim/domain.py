"""Domain presets of the street simulator: the YAML schema, its loader and name resolution.

A domain (the paper's domain A or B) is a YAML file under ``config/domains/``: camera rig,
street layout statistics, look (textures, light, haze) and lens effects. Unknown keys and wrong
types fail naming the key, so a typo in a user's preset never passes silently (the project's
one validation mechanism, :mod:`atdt_ros.schema`).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml

from atdt_ros import schema

Range = Annotated[tuple[float, float], schema.Interval]
"""A closed interval ``[lo, hi]`` sampled uniformly; a single number in YAML means lo == hi."""
RGB = tuple[float, float, float]
"""A colour with components in 0..1."""


class DomainError(ValueError):
    """A domain preset that cannot be found or does not match the schema."""


@dataclass(frozen=True)
class CameraSpec:
    """The camera rig: pose statistics along the street, optics and the stereo baseline."""

    height_m: Range = (1.4, 1.6)
    hfov_deg: float = 70.0
    pitch_deg: Range = (-3.0, 1.0)
    yaw_deg: Range = (-4.0, 4.0)
    roll_deg: Range = (-1.0, 1.0)
    lateral_m: Range = (-0.6, 0.6)
    baseline_m: float = 0.54
    step_m: Range = (3.0, 6.0)
    frames_per_sequence: int = 8
    znear_m: float = 0.1


@dataclass(frozen=True)
class StreetSpec:
    """Layout statistics of the procedural street (all distances in metres)."""

    lanes_per_direction: Annotated[tuple[int, int], schema.Interval] = (1, 2)
    lane_width_m: Range = (3.0, 3.6)
    sidewalk_width_m: Range = (2.0, 4.0)
    curb_height_m: float = 0.15
    building_height_m: Range = (8.0, 25.0)
    building_length_m: Range = (8.0, 25.0)
    building_setback_m: Range = (0.0, 4.0)
    building_gap_prob: float = 0.15
    front_wall_prob: float = 0.3
    front_fence_prob: float = 0.3
    front_hedge_prob: float = 0.2
    trees_per_100m: float = 6.0
    tree_height_m: Range = (5.0, 10.0)
    poles_per_100m: float = 4.0
    signs_per_100m: float = 3.0
    parked_cars_per_100m: float = 6.0
    moving_cars_per_100m: float = 4.0
    pedestrians_per_100m: float = 6.0
    crossing_pedestrian_prob: float = 0.2
    view_distance_m: float = 160.0


@dataclass(frozen=True)
class LookSpec:
    """Scene appearance: texture style, colour statistics, light and haze."""

    texture_style: str = "flat"
    texture_noise: float = 0.0
    saturation: Range = (0.5, 0.9)
    brightness: Range = (0.5, 0.9)
    road_rgb: RGB = (0.30, 0.30, 0.32)
    sidewalk_rgb: RGB = (0.60, 0.58, 0.55)
    sky_zenith_rgb: RGB = (0.25, 0.45, 0.85)
    sky_horizon_rgb: RGB = (0.70, 0.82, 0.95)
    sun_direction: tuple[float, float, float] = (0.4, 0.3, -1.0)
    sun_diffuse: float = 0.7
    ambient: float = 0.35
    specular: float = 0.1
    shadows: bool = False
    haze_per_km: float = 0.0
    haze_rgb: RGB = (0.75, 0.78, 0.80)


@dataclass(frozen=True)
class LensSpec:
    """Camera effects applied to the rendered RGB (never to labels or depth)."""

    color_cast: RGB = (1.0, 1.0, 1.0)
    exposure: Range = (1.0, 1.0)
    gamma: float = 1.0
    vignette: float = 0.0
    blur_sigma_px: float = 0.0
    noise_std: float = 0.0


@dataclass(frozen=True)
class DomainPreset:
    """One simulated domain: everything that makes its frames look and lay out as they do."""

    name: str
    description: str = ""
    camera: CameraSpec = field(default_factory=CameraSpec)
    street: StreetSpec = field(default_factory=StreetSpec)
    look: LookSpec = field(default_factory=LookSpec)
    lens: LensSpec = field(default_factory=LensSpec)

    def to_dict(self) -> dict[str, Any]:
        """Plain-YAML form (tuples as lists) of the preset, loadable again by ``parse_preset``."""
        return _plain(dataclasses.asdict(self))


TEXTURE_STYLES = ("flat", "photo")


def domains_dir() -> Path:
    """The directory of shipped presets: ``config/domains`` of the source tree or install."""
    here = Path(__file__).resolve().parents[2] / "config" / "domains"
    if here.is_dir():
        return here
    installed = Path(sys.prefix) / "share" / "atdt_train" / "config" / "domains"  # workstation/setup.py
    return installed if installed.is_dir() else here


def available_domains() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in domains_dir().glob("*.yaml"))


def resolve_domain(name_or_path: str) -> Path:
    """A preset name (``config/domains/NAME.yaml``) or a path to a YAML file -> its path."""
    as_path = Path(name_or_path)
    if as_path.suffix in (".yaml", ".yml") or as_path.parent != Path("."):
        if not as_path.is_file():
            raise DomainError(f"domain preset file {name_or_path!r} does not exist")
        return as_path
    candidate = domains_dir() / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise DomainError(
            f"unknown domain {name_or_path!r}: expected one of {available_domains()} "
            f"(files in {domains_dir()}) or a path to a preset YAML file"
        )
    return candidate


def load_domain(name_or_path: str) -> DomainPreset:
    """Load and validate a domain preset by name or path."""
    path = resolve_domain(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DomainError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return parse_preset(raw, default_name=path.stem)
    except DomainError as exc:
        raise DomainError(f"{path}: {exc}") from exc


def parse_preset(raw: Any, default_name: str = "custom") -> DomainPreset:
    """Validate a preset mapping (as read from YAML) into a ``DomainPreset``."""
    if not isinstance(raw, dict):
        raise DomainError(f"a domain preset must be a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    raw.setdefault("name", default_name)
    preset = schema.build(DomainPreset, raw, "", DomainError, root="preset")
    if preset.look.texture_style not in TEXTURE_STYLES:
        raise DomainError(
            f"look.texture_style: {preset.look.texture_style!r} is not one of {TEXTURE_STYLES}"
        )
    if preset.camera.frames_per_sequence < 1:
        raise DomainError("camera.frames_per_sequence: must be >= 1")
    if not 1.0 <= preset.camera.hfov_deg <= 170.0:
        raise DomainError("camera.hfov_deg: must be within 1..170 degrees")
    return preset


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
