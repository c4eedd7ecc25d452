"""Synthetic lung nodules: kinds, sizes, 3-D shapes, placement in an anatomy, and simulated readers.

A nodule is a smooth union of ellipsoidal lobes (lobulated margin) with optional tapered spicules
(spiculated margin), placed in the lung of an :class:`~nodulekit.phantom.anatomy.Anatomy`: free in
the parenchyma, against the chest wall (juxtapleural) or against a pulmonary vessel (juxtavascular).
Its density follows its kind (solid soft tissue, ground glass, part-solid with a solid core,
calcified). It is drawn with the same slab (partial-volume) integration as the anatomy.

Size distribution
-----------------
The nominal diameter (twice the mean semi-axis of the main lobe) is log-normal with median
:data:`MEDIAN_DIAMETER_MM` and log-standard deviation :data:`LOG_SD_DIAMETER`, truncated to the
``diameter_range`` (default 3-30 mm, the LIDC-IDRI range in which readers outlined nodules). With
every slice of every nodule kept, this reproduces the per-slice mask areas of the LIDC-IDRI crops
(median about 70 px at about 0.7 mm/px, two-sample KS distance about 0.1-0.15; see
:func:`nodulekit.phantom.realism_report`). Calcified nodules (granulomas) are capped at 4-12 mm.

References
----------
.. [1] Armato SG 3rd et al. The Lung Image Database Consortium (LIDC) and Image Database Resource
   Initiative (IDRI). Med Phys 38:915-931, 2011 (nodules >= 3 mm outlined by up to four readers).
.. [2] Hansell DM et al. Fleischner Society: glossary of terms for thoracic imaging. Radiology
   246:697-722, 2008 (solid, part-solid, ground-glass, calcified, spiculated, lobulated).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..errors import InvalidParameterError
from .anatomy import Anatomy, _unit, _wall_distance, lung_sdf

__all__ = [
    "KINDS",
    "DEFAULT_KIND_WEIGHTS",
    "MEDIAN_DIAMETER_MM",
    "LOG_SD_DIAMETER",
    "Nodule",
    "sample_diameters",
    "make_nodule",
    "nodule_occupancy",
    "simulate_readers",
]

#: The nodule kinds the generator draws.
KINDS = ("solid", "spiculated", "part_solid", "ground_glass", "calcified", "juxtapleural", "juxtavascular")

#: Default mix: mostly solid, about a quarter against the chest wall, as in LIDC-IDRI.
DEFAULT_KIND_WEIGHTS = {
    "solid": 0.26,
    "spiculated": 0.07,
    "part_solid": 0.08,
    "ground_glass": 0.11,
    "calcified": 0.08,
    "juxtapleural": 0.28,
    "juxtavascular": 0.12,
}

#: Median nominal diameter (mm) of the default size distribution.
MEDIAN_DIAMETER_MM = 7.8
#: Log-standard deviation of the default (log-normal) size distribution.
LOG_SD_DIAMETER = 0.5


@dataclass
class Nodule:
    """One nodule in patient coordinates (mm).

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    center : ndarray, shape (3,)
        (x, y, z) of the main lobe's centre.
    diameter : float
        Nominal diameter (mm).
    rotation : ndarray, shape (3, 3)
        Orientation of the lobes.
    lobes : ndarray, shape (k, 6)
        Per lobe: offset (3) in the rotated frame and semi-axes (3).
    spicules : ndarray, shape (m, 8)
        Per spicule: start (3), end (3), start radius, end radius (rotated frame).
    solid_hu, ggo_hu : float
        Density of the solid part and of the ground-glass part.
    core_fraction : float
        Part-solid: the solid core is the shape shrunk to this fraction of its radius (0 = none).
    calcification : str
        "", "diffuse", "central", "popcorn" or "laminated".
    calcium_hu : float
    juxtapleural, juxtavascular : bool
        Whether it touches the chest wall / a vessel.
    """

    kind: str
    center: np.ndarray
    diameter: float
    rotation: np.ndarray
    lobes: np.ndarray
    spicules: np.ndarray
    solid_hu: float
    ggo_hu: float
    core_fraction: float = 0.0
    calcification: str = ""
    calcium_hu: float = 0.0
    texture_hu: float = 15.0
    popcorn: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    air: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    bumps: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    juxtapleural: bool = False
    juxtavascular: bool = False

    @property
    def extent(self) -> float:
        """Radius (mm) of a sphere around ``center`` that holds the whole nodule."""
        reach = np.linalg.norm(self.lobes[:, :3], axis=1) + self.lobes[:, 3:].max(1)
        out = float(reach.max())
        if len(self.spicules):
            out = max(out, float(np.linalg.norm(self.spicules[:, 3:6], axis=1).max() + self.spicules[:, 6].max()))
        return out + 0.5

    @property
    def has_ggo(self) -> bool:
        return self.kind in ("ground_glass", "part_solid")

    def sdf(self, points: np.ndarray, *, shrink: float = 0.0) -> np.ndarray:
        """Signed distance (mm, negative inside) for points of shape (..., 3)."""
        q = (points - self.center) @ self.rotation
        k = 0.25 * self.diameter / 2
        out = None
        for lobe in self.lobes:
            d = q - lobe[:3]
            axes = lobe[3:] - shrink
            axes = np.maximum(axes, 0.05)
            rho = np.sqrt(((d / axes) ** 2).sum(-1))
            grad = np.sqrt(((d / axes**2) ** 2).sum(-1)) / np.maximum(rho, 1e-9)
            dist = (rho - 1.0) / np.maximum(grad, 1e-9)
            out = dist if out is None else _smooth_min(out, dist, k)
        for bump in self.bumps:  # irregular margin: a few smooth random undulations
            out = out + bump[4] * np.sin(q @ bump[:3] + bump[3])
        if not shrink:
            for spike in self.spicules:
                a, b, r0, r1 = spike[:3], spike[3:6], spike[6], spike[7]
                ab = b - a
                t = np.clip(((q - a) * ab).sum(-1) / max(float((ab**2).sum()), 1e-9), 0.0, 1.0)
                dist = np.linalg.norm(q - a - t[..., None] * ab, axis=-1) - (r0 + (r1 - r0) * t)
                out = _smooth_min(out, dist, 0.6)
        return out


def _smooth_min(a, b, k):
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def sample_diameters(
    n: int,
    rng: np.random.Generator,
    *,
    diameter_range: tuple[float, float] = (3.0, 30.0),
    median: float = MEDIAN_DIAMETER_MM,
    log_sd: float = LOG_SD_DIAMETER,
) -> np.ndarray:
    """Nominal nodule diameters (mm): log-normal, truncated to ``diameter_range``.

    Parameters
    ----------
    n : int
    rng : numpy.random.Generator
    diameter_range : (float, float)
        Smallest and largest diameter (mm).
    median, log_sd : float
        Median and log-standard deviation of the untruncated log-normal.

    Returns
    -------
    ndarray of float, shape (n,)
    """
    low, high = diameter_range
    out = np.empty(0)
    while len(out) < n:
        draw = rng.lognormal(np.log(median), log_sd, size=max(2 * n, 8))
        out = np.concatenate([out, draw[(draw >= low) & (draw <= high)]])
    return out[:n]


def _shape(kind: str, diameter: float, rng: np.random.Generator):
    """Lobes and spicules of one nodule (rotated frame)."""
    radius = diameter / 2
    axes = radius * rng.uniform(0.82, 1.15, 3)
    axes *= radius / np.exp(np.log(axes).mean())  # mean semi-axis = nominal radius
    lobes = [np.concatenate([np.zeros(3), axes])]
    lobulated = {"solid": 0.65, "spiculated": 0.75, "part_solid": 0.6, "ground_glass": 0.6, "calcified": 0.1}.get(kind, 0.55)
    large = diameter > 12
    if diameter > 4 and rng.random() < (lobulated if not large else 0.9):
        for _ in range(rng.integers(3, 9) if large else rng.integers(1, 6)):
            direction = _unit(rng.normal(size=3))
            lobe_r = radius * rng.uniform(0.3, 0.65)
            offset = direction * radius * rng.uniform(0.55, 0.95 if large else 0.85)
            lobes.append(np.concatenate([offset, lobe_r * rng.uniform(0.85, 1.15, 3)]))
    spicules = []
    n_spicules = 0
    if kind == "spiculated":
        n_spicules = rng.integers(6, 20)
    elif kind in ("solid", "juxtavascular", "part_solid") and diameter > 8 and rng.random() < (0.5 if large else 0.25):
        n_spicules = rng.integers(2, 9)
    for _ in range(n_spicules):
        direction = _unit(rng.normal(size=3))
        start = direction * radius * 0.7
        end = direction * radius * rng.uniform(1.3, 2.6)
        base = rng.uniform(0.6, 1.6) * min(1.0, diameter / 12)
        spicules.append(np.concatenate([start, end, [base, 0.3]]))
    bumps = []
    irregular = {"calcified": 0.03, "solid": 0.12, "juxtapleural": 0.1, "juxtavascular": 0.1}.get(kind, 0.14)
    irregular *= 1.0 + diameter / 20.0  # larger nodules have rougher margins
    for _ in range(rng.integers(2, 6) if diameter > 4 else 0):
        wave = _unit(rng.normal(size=3)) * 2 * np.pi / (radius * rng.uniform(0.7, 2.0))
        bumps.append(np.concatenate([wave, [rng.uniform(0, 2 * np.pi), radius * irregular * rng.uniform(0.3, 1.0)]]))
    return np.array(lobes), (np.array(spicules) if spicules else np.zeros((0, 8))), np.array(bumps).reshape(-1, 5)


def _density(kind: str, diameter: float, rng: np.random.Generator) -> dict:
    solid = float(np.clip(rng.normal(10.0, 30.0), -80.0, 70.0))
    out = {
        "solid_hu": solid,
        "ggo_hu": solid,
        "core_fraction": 0.0,
        "calcification": "",
        "calcium_hu": 0.0,
        "texture_hu": float(rng.uniform(10.0, 35.0)),
    }
    if kind == "ground_glass":
        out["ggo_hu"] = float(rng.uniform(-750.0, -300.0))
    elif kind == "part_solid":
        out["ggo_hu"] = float(rng.uniform(-650.0, -350.0))
        out["core_fraction"] = float(rng.uniform(0.3, 0.65))
    elif kind == "calcified":
        pattern = rng.choice(["diffuse", "central", "popcorn", "laminated"], p=[0.5, 0.25, 0.15, 0.1])
        out["calcification"] = str(pattern)
        out["calcium_hu"] = float(rng.uniform(250.0, 700.0) if pattern == "diffuse" else rng.uniform(400.0, 1200.0))
    return out


def make_nodule(
    anatomy: Anatomy,
    kind: str,
    diameter: float,
    rng: np.random.Generator,
    *,
    z_range: tuple[float, float] | None = None,
    max_tries: int = 200,
) -> Nodule:
    """Shape a nodule of ``kind`` and place it in the lungs of ``anatomy``.

    Parameters
    ----------
    anatomy : Anatomy
    kind : str
        One of :data:`KINDS`.
    diameter : float
        Nominal diameter (mm).
    rng : numpy.random.Generator
    z_range : (float, float), optional
        Heights (mm) the centre must lie between (default: the whole lung).
    max_tries : int
        Placement attempts before giving up.

    Returns
    -------
    Nodule

    Raises
    ------
    InvalidParameterError
        Unknown kind, or no place in the lungs holds a nodule this large.
    """
    if kind not in KINDS:
        raise InvalidParameterError(f"kind must be one of {KINDS}, got {kind!r}")
    lobes, spicules, bumps = _shape(kind, diameter, rng)
    radius = diameter / 2
    low, high = z_range if z_range is not None else (0.05 * anatomy.height, 0.95 * anatomy.height)
    box = np.array([anatomy.body_a, anatomy.body_b])
    center = None
    juxtapleural = juxtavascular = False
    if kind == "juxtavascular":
        seg = anatomy.vessels
        mid = 0.5 * (seg.start + seg.end)
        ok = (seg.radius >= 0.7) & (seg.radius <= max(1.2, 0.5 * radius)) & (mid[:, 2] > low) & (mid[:, 2] < high)
        candidates = np.flatnonzero(ok)
        for _ in range(max_tries if len(candidates) else 0):
            i = rng.choice(candidates)
            axis = seg.end[i] - seg.start[i]
            point = seg.start[i] + rng.uniform(0.2, 0.8) * axis
            perp = _unit(np.cross(_unit(axis), _unit(rng.normal(size=3))))
            perp[2] *= 0.3  # beside the vessel within the slice, so the contact is visible
            perp = _unit(perp)
            trial = point + perp * (radius * 0.85 + seg.radius[i] * rng.uniform(0.0, 0.6))
            if lung_sdf(anatomy, *trial) < -(radius + 1.5):
                center, juxtavascular = trial, True
                break
    elif kind == "juxtapleural":
        for _ in range(max_tries):
            trial = np.array([*rng.uniform(-box, box), rng.uniform(low, high)])
            if lung_sdf(anatomy, *trial) > -1.0:
                continue
            wall = float(_wall_distance(anatomy, *trial))
            if wall > 25.0:
                continue
            inward = _wall_gradient(anatomy, trial)
            on_wall = trial - inward * wall
            trial = on_wall + inward * radius * rng.uniform(0.5, 0.9)
            if lung_sdf(anatomy, *(on_wall + inward * (radius + 1.0))) < -1.0:
                center, juxtapleural = trial, True
                break
    else:
        peripheral = rng.random() < 0.5  # nodules favour the outer third of the lung
        for _ in range(max_tries):
            trial = np.array([*rng.uniform(-box, box), rng.uniform(low, high)])
            if lung_sdf(anatomy, *trial) < -(radius + 2.0):
                if peripheral and _wall_distance(anatomy, *trial) > radius + 20.0:
                    continue
                center = trial
                break
    if center is None:
        raise InvalidParameterError(
            f"diameter {diameter:.1f} mm: no place found for a {kind} nodule in this patient's lungs "
            f"(allowed: up to about 30 mm, and a z_range inside the lungs)"
        )
    rotation = _random_rotation(rng)
    density = _density(kind, diameter, rng)
    popcorn = np.zeros((0, 4))
    air = np.zeros((0, 4))
    if kind in ("solid", "spiculated", "juxtapleural", "juxtavascular") and diameter > 12 and rng.random() < 0.2:
        k = rng.integers(1, 4)
        air = np.concatenate([rng.normal(0, radius * 0.3, (k, 3)), radius * rng.uniform(0.1, 0.25, (k, 1))], 1)
    if density["calcification"] == "popcorn":
        k = rng.integers(3, 7)
        popcorn = np.concatenate([rng.normal(0, radius * 0.35, (k, 3)), radius * rng.uniform(0.15, 0.3, (k, 1))], 1)
    return Nodule(
        kind=kind,
        center=np.asarray(center, dtype=float),
        diameter=float(diameter),
        rotation=rotation,
        lobes=lobes,
        spicules=spicules,
        popcorn=popcorn,
        air=air,
        bumps=bumps,
        juxtapleural=juxtapleural,
        juxtavascular=juxtavascular,
        **density,
    )


def _wall_gradient(anatomy: Anatomy, point: np.ndarray, step: float = 1.0) -> np.ndarray:
    base = _wall_distance(anatomy, *point)
    grad = np.array([_wall_distance(anatomy, *(point + step * e)) - base for e in np.eye(3)])
    return _unit(grad)


def nodule_occupancy(
    nodule: Nodule,
    x: np.ndarray,
    y: np.ndarray,
    z_samples: np.ndarray,
    pixel: float,
    rng: np.random.Generator,
) -> dict:
    """Slab-averaged occupancy and density of a nodule on a pixel grid.

    Parameters
    ----------
    nodule : Nodule
    x, y : ndarray, shape (rows, columns)
        Pixel centres (mm), a regular grid.
    z_samples : ndarray
        Heights across the slice thickness.
    pixel : float
        Pixel size (mm).
    rng : numpy.random.Generator
        For the internal texture.

    Returns
    -------
    dict
        ``occupancy`` (0..1, whole nodule), ``hu`` (density where occupied), ``box`` (row and column
        slices the nodule touches) — or an all-zero occupancy when the slice misses it.
    """
    rows, cols = x.shape
    extent = nodule.extent
    zeros = {"occupancy": np.zeros((rows, cols)), "hu": np.zeros((rows, cols)), "solid": np.zeros((rows, cols))}
    if np.min(np.abs(np.asarray(z_samples) - nodule.center[2])) > extent:
        return zeros
    c0 = int(max(0, np.floor((nodule.center[0] - extent - x[0, 0]) / pixel) - 1))
    c1 = int(min(cols, np.ceil((nodule.center[0] + extent - x[0, 0]) / pixel) + 2))
    r0 = int(max(0, np.floor((nodule.center[1] - extent - y[0, 0]) / pixel) - 1))
    r1 = int(min(rows, np.ceil((nodule.center[1] + extent - y[0, 0]) / pixel) + 2))
    if c1 <= c0 or r1 <= r0:
        return zeros
    bx, by = x[r0:r1, c0:c1], y[r0:r1, c0:c1]
    occ = np.zeros(bx.shape)
    core = np.zeros(bx.shape)
    calcium = np.zeros(bx.shape)
    lucent = np.zeros(bx.shape)
    radius = nodule.diameter / 2
    for zs in z_samples:
        points = np.stack([bx, by, np.full(bx.shape, zs)], -1)
        sdf = nodule.sdf(points)
        occ += np.clip(0.5 - sdf / pixel, 0.0, 1.0)
        if nodule.core_fraction:
            core_sdf = nodule.sdf(points, shrink=radius * (1 - nodule.core_fraction))
            core += np.clip(0.5 - core_sdf / pixel, 0.0, 1.0)
        if nodule.calcification:
            q = (points - nodule.center) @ nodule.rotation
            if nodule.calcification == "diffuse":
                c = np.clip(0.5 - sdf / pixel, 0.0, 1.0)
            elif nodule.calcification == "central":
                c = np.clip(0.5 - (np.linalg.norm(q, axis=-1) - 0.45 * radius) / pixel, 0.0, 1.0)
            elif nodule.calcification == "laminated":
                c = np.clip(0.5 - (np.abs(np.linalg.norm(q, axis=-1) - 0.55 * radius) - 0.12 * radius) / pixel, 0.0, 1.0)
            else:
                c = np.zeros(bx.shape)
                for ball in nodule.popcorn:
                    c = np.maximum(c, np.clip(0.5 - (np.linalg.norm(q - ball[:3], axis=-1) - ball[3]) / pixel, 0.0, 1.0))
            calcium += c * np.clip(0.5 - sdf / pixel, 0.0, 1.0)
        if len(nodule.air):
            q = (points - nodule.center) @ nodule.rotation
            for bubble in nodule.air:
                lucent += np.clip(0.5 - (np.linalg.norm(q - bubble[:3], axis=-1) - bubble[3]) / pixel, 0.0, 1.0)
    n = len(z_samples)
    occ, core, calcium, lucent = occ / n, core / n, calcium / n, np.clip(lucent / n, 0.0, 1.0)
    if not occ.any():
        return zeros
    # density: solid or ground glass with mottled texture, solid core, calcium
    texture = ndi.gaussian_filter(rng.normal(size=bx.shape), 0.8 / pixel)
    texture /= max(texture.std(), 1e-6)
    if nodule.has_ggo:
        base = nodule.ggo_hu + 70.0 * texture
        solid_part = np.clip(core / np.maximum(occ, 1e-6), 0.0, 1.0)
        hu = base + solid_part * (nodule.solid_hu - base)
    else:
        hu = nodule.solid_hu + nodule.texture_hu * texture
    if nodule.calcification:
        share = np.clip(calcium / np.maximum(occ, 1e-6), 0.0, 1.0)
        hu = hu + share * (nodule.calcium_hu - hu)
    if len(nodule.air):
        hu = hu + lucent * (-900.0 - hu)
    out = {"occupancy": np.zeros((rows, cols)), "hu": np.zeros((rows, cols)), "solid": np.zeros((rows, cols))}
    out["occupancy"][r0:r1, c0:c1] = occ
    out["hu"][r0:r1, c0:c1] = hu
    out["solid"][r0:r1, c0:c1] = core if nodule.has_ggo else occ
    return out


def simulate_readers(
    occupancy_slices: list[np.ndarray],
    allowed_slices: list[np.ndarray],
    diameter: float,
    rng: np.random.Generator,
    *,
    readers: int = 4,
) -> tuple[np.ndarray, int]:
    """Simulated radiologists' outlines of one nodule on each of its slices.

    Each reader who marks the nodule (more likely for larger nodules, at least one does) draws
    where the slightly blurred nodule occupancy exceeds a personal threshold that wanders smoothly
    along the outline; outlines are single filled regions, limited to the lung side of the pleura,
    and a reader skips slices where the nodule is only a sliver.

    Parameters
    ----------
    occupancy_slices : list of ndarray (rows, columns)
        The nodule's slab occupancy per slice (0..1).
    allowed_slices : list of ndarray (rows, columns) of bool
        Where an outline may go (inside the pleural cavity).
    diameter : float
        Nominal diameter (mm): small nodules are missed by more readers.
    rng : numpy.random.Generator
    readers : int
        Number of simulated readers (0 gives no reader masks).

    Returns
    -------
    masks : ndarray of uint8, shape (slices, readers, rows, columns)
    n_marking : int
        Readers who marked the nodule on at least one slice.
    """
    n_slices = len(occupancy_slices)
    shape = occupancy_slices[0].shape if n_slices else (0, 0)
    masks = np.zeros((n_slices, readers, *shape), dtype=np.uint8)
    if readers == 0 or n_slices == 0:
        return masks, 0
    p_mark = 0.2 + 0.75 / (1.0 + np.exp(-(diameter - 7.0) / 2.0))
    marks = rng.random(readers) < p_mark
    if not marks.any():
        marks[rng.integers(readers)] = True
    for j in np.flatnonzero(marks):
        sigma = rng.uniform(0.2, 0.8)
        threshold = rng.uniform(0.2, 0.45)
        wander = rng.uniform(0.03, 0.12)
        min_area = rng.uniform(1.0, 8.0)
        for k in range(n_slices):
            occ = ndi.gaussian_filter(occupancy_slices[k], sigma)
            field = ndi.gaussian_filter(rng.normal(size=shape), 3.0)
            field *= wander / max(field.std(), 1e-6)
            drawn = (occ >= threshold + field) & allowed_slices[k]
            if not drawn.any():
                continue
            labels, count = ndi.label(drawn)
            if count > 1:
                sizes = ndi.sum(drawn, labels, index=np.arange(1, count + 1))
                drawn = labels == (1 + int(np.argmax(sizes)))
            drawn = ndi.binary_fill_holes(drawn)
            if drawn.sum() >= min_area:
                masks[k, j] = drawn
    if not masks.any():  # the one marking reader keeps at least the exact outline
        j = int(np.flatnonzero(marks)[0])
        for k in range(n_slices):
            masks[k, j] = (occupancy_slices[k] >= 0.3) & allowed_slices[k]
    n_marking = int(masks.reshape(n_slices, readers, -1).any(axis=(0, 2)).sum())
    return masks, n_marking
