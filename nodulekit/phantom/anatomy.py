"""A chest anatomy described in millimetres by analytic shapes, rasterised on any pixel window.

One :class:`Anatomy` is one synthetic patient: body outline, subcutaneous fat, muscle, ribs, spine,
sternum, scapulae, mediastinum (heart, aorta, vena cava, pulmonary trunk, trachea, oesophagus), the
two lungs bounded by the chest wall, the mediastinum, the diaphragm domes and the apices, and 3-D
pulmonary vessel and airway trees that branch and thin toward the periphery.

Every shape is a signed-distance-like function of patient coordinates, so a whole 512x512 slice and a
small window around one nodule are drawn by the same code at the same native resolution
(:func:`render_region`): the crops of :func:`nodulekit.phantom.generate_crops` are cut from exactly the
anatomy a full slice shows, only cheaper.

Coordinates (mm): ``x`` to the image right (patient left), ``y`` to the image bottom (posterior), ``z``
toward the head; ``z = 0`` is the lowest point of the lungs (costophrenic recesses) and ``z = height``
the apices. Intensities are Hounsfield units.

References
----------
.. [1] Murray CD. The physiological principle of minimum work: I. The vascular system and the cost of
   blood volume. PNAS 12:207-214, 1926 (radius law used for the vessel and airway trees).
.. [2] Weibel ER. Morphometry of the Human Lung. Springer, 1963 (airway/vessel length-to-radius ratios).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

__all__ = ["Anatomy", "TreeSegments", "make_anatomy", "lung_sdf", "render_region", "render_segments"]

AIR_HU = -1000.0


def _smooth_angle_function(rng: np.random.Generator, *, harmonics: int = 4, amplitude: float = 0.25):
    """Random smooth function of the angle phi in [0, pi] with mean 1 (a few Fourier harmonics).

    Returned as a lookup table evaluated by linear interpolation (fast on large pixel grids).
    """
    coeff = rng.normal(0.0, amplitude / np.sqrt(harmonics), size=(harmonics, 2)) / np.arange(1, harmonics + 1)[:, None]
    grid = np.linspace(0.0, np.pi, 721)
    table = np.ones_like(grid)
    for k in range(harmonics):
        table += coeff[k, 0] * np.cos((k + 1) * grid) + coeff[k, 1] * np.sin((k + 1) * grid)
    return grid, table


@dataclass
class TreeSegments:
    """Cylindrical segments of a branching tree (vessels or airways), in mm.

    Attributes
    ----------
    start, end : ndarray, shape (n, 3)
        Segment end points as (x, y, z).
    radius : ndarray, shape (n,)
        Outer radius.
    lumen : ndarray, shape (n,)
        Inner (air) radius for airways; zero for vessels.
    """

    start: np.ndarray
    end: np.ndarray
    radius: np.ndarray
    lumen: np.ndarray

    def __len__(self) -> int:
        return len(self.radius)

    @property
    def lower(self) -> np.ndarray:
        """Bounding-box minimum per segment (n, 3)."""
        return np.minimum(self.start, self.end) - self.radius[:, None]

    @property
    def upper(self) -> np.ndarray:
        """Bounding-box maximum per segment (n, 3)."""
        return np.maximum(self.start, self.end) + self.radius[:, None]


@dataclass
class Anatomy:
    """One synthetic patient's chest, as parameters of analytic shapes (all lengths in mm).

    Built by :func:`make_anatomy`; use :func:`render_region` to draw it and :func:`lung_sdf` to ask
    whether points lie in a lung.
    """

    body_a: float
    body_b: float
    body_power: float
    height: float
    skin: float
    fat: tuple
    muscle: tuple
    ribcage: float
    rib_spacing: float
    rib_drop: float
    rib_phase: float
    rib_height: float
    rib_width: float
    mediastinum_x: float
    mediastinum_width: float
    spine_y: float
    spine_radius: float
    vertebra_period: float
    vertebra_phase: float
    heart: tuple
    aorta_radius: float
    arch_z: float
    carina_z: float
    hilum_z: float
    dome_right: tuple
    dome_left: tuple
    apex_curvature: float
    lung_hu: float
    lung_gradient: float
    fat_hu: float
    muscle_hu: float
    blood_hu: float
    liver_hu: float
    bone_hu: float
    marrow_hu: float
    vessels: TreeSegments | None = None
    airways: TreeSegments | None = None
    extras: dict = field(default_factory=dict)

    # ---- geometry helpers -------------------------------------------------------------------
    def body_scale(self, z: np.ndarray) -> np.ndarray:
        """Relative body width at height ``z`` (narrower toward the apices)."""
        t = np.clip(np.asarray(z, dtype=np.float64) / self.height, -0.5, 1.3)
        return 1.0 - 0.16 * np.clip(t - 0.55, 0.0, None) ** 2 / 0.2

    def polar(self, x: np.ndarray, y: np.ndarray, z: np.ndarray):
        """Depth below the skin (mm, inward positive) and the angle ``phi`` (0 posterior, pi anterior)."""
        scale = self.body_scale(z)
        a, b = self.body_a * scale, self.body_b * scale
        ax, ay = np.abs(x) / a, np.abs(y) / b
        p = self.body_power
        rho = (ax**p + ay**p) ** (1.0 / p)
        radius = np.hypot(x, y)
        edge = radius / np.maximum(rho, 1e-6)  # distance from the centre to the skin along this ray
        depth = edge - radius
        phi = np.arctan2(np.abs(x) / a, y / b)
        return depth, phi, edge

    def wall_layers(self, phi: np.ndarray, z: np.ndarray):
        """Depths (mm) at which fat, muscle, rib cage and the pleural cavity begin."""
        upper = np.clip((np.asarray(z) / self.height - 0.45) / 0.4, 0.0, 1.0)
        fat = self.skin + np.interp(phi, *self.fat)
        paraspinal = 34.0 * np.exp(-(phi / 0.33) ** 2)
        pectoral = 14.0 * upper * np.exp(-((phi - 2.35) / 0.45) ** 2)
        scapular = 18.0 * upper * np.exp(-((phi - 0.9) / 0.35) ** 2)
        muscle = fat + np.interp(phi, *self.muscle) + paraspinal + pectoral + scapular
        cavity = muscle + self.ribcage
        return fat, muscle, cavity


def _ellipse_sdf(x, y, cx, cy, a, b, angle=0.0):
    """Approximate signed distance (mm, negative inside) to an ellipse."""
    dx, dy = x - cx, y - cy
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    rho = np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
    grad = np.sqrt((dx / a**2) ** 2 + (dy / b**2) ** 2) / np.maximum(rho, 1e-9)
    return (rho - 1.0) / np.maximum(grad, 1e-9)


def _smooth_min(a, b, k):
    """Polynomial smooth minimum of two distance fields (rounded union)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _occupancy(sdf, pixel):
    """Anti-aliased area fraction of a pixel inside a shape given its signed distance."""
    return np.clip(0.5 - sdf / pixel, 0.0, 1.0)


def _paint(hu, occupancy, value):
    return hu + occupancy * (value - hu)


def make_anatomy(rng: np.random.Generator, *, vessel_min_radius: float = 0.35) -> Anatomy:
    """Draw one synthetic patient's chest.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of all randomness (body size, wall thickness, organ positions, trees).
    vessel_min_radius : float
        Branching stops below this vessel radius (mm).

    Returns
    -------
    Anatomy
    """
    body_a = rng.uniform(138.0, 178.0)
    body_b = body_a * rng.uniform(0.62, 0.78)
    height = rng.uniform(210.0, 270.0)
    fat0 = rng.lognormal(np.log(12.0), 0.5)
    fat_shape = _smooth_angle_function(rng, amplitude=0.35)
    muscle0 = rng.uniform(4.0, 10.0)
    muscle_shape = _smooth_angle_function(rng, amplitude=0.3)
    mediastinum_x = rng.uniform(-4.0, 10.0)
    spine_radius = rng.uniform(15.0, 19.0)
    anatomy = Anatomy(
        body_a=body_a,
        body_b=body_b,
        body_power=rng.uniform(2.1, 2.6),
        height=height,
        skin=1.5,
        fat=(fat_shape[0], fat0 * np.clip(fat_shape[1], 0.3, None)),
        muscle=(muscle_shape[0], muscle0 * np.clip(muscle_shape[1], 0.4, None)),
        ribcage=rng.uniform(9.0, 13.0),
        rib_spacing=height / rng.uniform(9.0, 10.5),
        rib_drop=rng.uniform(70.0, 110.0),
        rib_phase=rng.uniform(0.0, 1.0),
        rib_height=rng.uniform(9.0, 13.0),
        rib_width=rng.uniform(5.5, 8.0),
        mediastinum_x=mediastinum_x,
        mediastinum_width=rng.uniform(18.0, 28.0),
        spine_y=0.0,  # set below, needs the wall
        spine_radius=spine_radius,
        vertebra_period=rng.uniform(24.0, 29.0),
        vertebra_phase=rng.uniform(0.0, 1.0),
        heart=(
            mediastinum_x + rng.uniform(18.0, 35.0),  # x
            -body_b * rng.uniform(0.12, 0.25),  # y
            rng.uniform(0.1, 0.22) * height,  # z of the centre
            rng.uniform(55.0, 70.0),  # semi-axes
            rng.uniform(42.0, 52.0),
            rng.uniform(50.0, 62.0),
            rng.uniform(-0.7, -0.3),  # rotation in the axial plane
        ),
        aorta_radius=rng.uniform(10.0, 14.0),
        arch_z=rng.uniform(0.7, 0.8) * height,
        carina_z=rng.uniform(0.6, 0.68) * height,
        hilum_z=rng.uniform(0.5, 0.58) * height,
        dome_right=(-body_a * rng.uniform(0.3, 0.4), -body_b * rng.uniform(0.0, 0.15), rng.uniform(55.0, 95.0)),
        dome_left=(body_a * rng.uniform(0.3, 0.4), -body_b * rng.uniform(0.0, 0.15), rng.uniform(40.0, 75.0)),
        apex_curvature=rng.uniform(0.8, 1.2),
        lung_hu=rng.normal(-855.0, 25.0),
        lung_gradient=rng.uniform(20.0, 90.0),
        fat_hu=rng.normal(-100.0, 8.0),
        muscle_hu=rng.normal(45.0, 6.0),
        blood_hu=rng.normal(42.0, 5.0),
        liver_hu=rng.normal(58.0, 6.0),
        bone_hu=rng.uniform(900.0, 1900.0),
        marrow_hu=rng.uniform(180.0, 380.0),
    )
    # Contrast-enhanced scan for about a third of patients: bright heart chambers and great vessels.
    if rng.random() < 0.3:
        anatomy.blood_hu = rng.uniform(150.0, 330.0)
    # Vertebral body just in front of the posterior cavity wall at the midline.
    _, _, cavity = anatomy.wall_layers(np.array(0.0), np.array(height * 0.5))
    anatomy.spine_y = anatomy.body_b - float(cavity) + 4.0 - spine_radius
    anatomy.extras["contrast"] = bool(anatomy.blood_hu > 100)
    anatomy.vessels, anatomy.airways = _grow_trees(anatomy, rng, min_radius=vessel_min_radius)
    return anatomy


# ---- shapes ---------------------------------------------------------------------------------------


def _diaphragm_z(anatomy: Anatomy, x, y):
    """Height of the diaphragm dome under (x, y): the lung lies above it."""
    out = np.zeros(np.broadcast(x, y).shape)
    for cx, cy, peak in (anatomy.dome_right, anatomy.dome_left):
        q = ((x - cx) / (anatomy.body_a * 0.55)) ** 2 + ((y - cy) / (anatomy.body_b * 0.75)) ** 2
        out = np.maximum(out, peak * np.clip(1.0 - q, 0.0, None) ** 0.7)
    return out


def _apex_z(anatomy: Anatomy, x, y):
    """Height of the lung apex over (x, y): the lung lies below it."""
    side = np.where(x > anatomy.mediastinum_x, 1.0, -1.0)
    cx = anatomy.mediastinum_x + side * anatomy.body_a * 0.42
    q = ((x - cx) / (anatomy.body_a * 0.5)) ** 2 + ((y + anatomy.body_b * 0.05) / (anatomy.body_b * 0.8)) ** 2
    return anatomy.height - anatomy.apex_curvature * 0.22 * anatomy.height * q


def _mediastinum_sdf(anatomy: Anatomy, x, y, z):
    """Signed distance to the mediastinum (everything between the lungs), negative inside."""
    z = np.asarray(z, dtype=np.float64)
    mx = anatomy.mediastinum_x
    # central band: narrow behind the sternum, wider in the middle, around the spine at the back
    width = anatomy.mediastinum_width * (0.7 + 0.5 * np.exp(-((y / anatomy.body_b) ** 2) / 0.15))
    sdf = np.abs(x - mx) - width
    # heart (ellipsoid), cut by its height
    hx, hy, hz, ha, hb, hc, angle = anatomy.heart
    t = np.clip(1.0 - ((z - hz) / hc) ** 2, 0.0, None)
    scale = np.sqrt(t)
    heart = np.where(t > 0.02, _ellipse_sdf(x, y, hx, hy, ha * np.maximum(scale, 0.1), hb * np.maximum(scale, 0.1), angle), 1e3)
    sdf = _smooth_min(sdf, heart, 8.0)
    # descending aorta next to the spine, on the patient's left
    ax, ay = mx + anatomy.spine_radius + 4.0, anatomy.spine_y - anatomy.spine_radius * 0.6
    aorta = np.hypot(x - ax, y - ay) - anatomy.aorta_radius
    aorta = np.where(z < anatomy.arch_z + 12.0, aorta, 1e3)
    sdf = _smooth_min(sdf, aorta, 6.0)
    # vertebral body and paravertebral tissue
    spine = np.hypot(x - mx * 0.3, y - anatomy.spine_y) - anatomy.spine_radius - 3.0
    return _smooth_min(sdf, spine, 8.0)


def lung_sdf(anatomy: Anatomy, x, y, z) -> np.ndarray:
    """Signed distance (mm, negative inside) to the lungs, for points (x, y, z) of any shape.

    The lungs are the pleural cavity minus the mediastinum, above the diaphragm and below the apices.
    """
    x, y, z = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (x, y, z)))
    depth, phi, _ = anatomy.polar(x, y, z)
    _, _, cavity = anatomy.wall_layers(phi, z)
    sdf = cavity - depth
    sdf = np.maximum(sdf, -_mediastinum_sdf(anatomy, x, y, z))
    sdf = np.maximum(sdf, _diaphragm_z(anatomy, x, y) - z)
    sdf = np.maximum(sdf, z - _apex_z(anatomy, x, y))
    return sdf


def _wall_distance(anatomy: Anatomy, x, y, z) -> np.ndarray:
    """Distance (mm, >= 0) from points inside the chest to the costal pleura or the diaphragm."""
    depth, phi, _ = anatomy.polar(x, y, z)
    _, _, cavity = anatomy.wall_layers(phi, z)
    return np.clip(np.minimum(depth - cavity, z - _diaphragm_z(anatomy, x, y)), 0.0, None)


# ---- trees ----------------------------------------------------------------------------------------


def _unit(v):
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _random_perpendicular(u, rng):
    r = rng.normal(size=u.shape)
    r = r - np.sum(r * u, axis=-1, keepdims=True) * u
    return _unit(r)


def _inward(anatomy, points, step=2.0):
    """Unit vectors pointing into the lung (minus the gradient of :func:`lung_sdf`)."""
    grad = np.zeros_like(points)
    base = lung_sdf(anatomy, *points.T)
    for axis in range(3):
        shifted = points.copy()
        shifted[:, axis] += step
        grad[:, axis] = lung_sdf(anatomy, *shifted.T) - base
    return -_unit(grad)


def _grow(anatomy, rng, origin, direction, radius, label, *, min_radius, max_generations=18, free_start=True):
    """Grow all trees together, generation by generation (vectorised).

    Each branch ends after a length proportional to its radius, splits into two children whose
    radii follow Murray's law with random asymmetry, turns its children outward from its root, is
    steered back when it would leave the lung, and is thinned near the pleura. Returns the segments
    and each segment's root label.
    """
    points = np.atleast_2d(origin).astype(float)
    dirs = _unit(np.atleast_2d(direction).astype(float))
    radii = np.atleast_1d(radius).astype(float)
    labels = np.atleast_1d(label).astype(int)
    roots = points.copy()
    root_of = np.arange(len(points))
    starts, ends, rads, labs = [], [], [], []
    generation = 0
    while len(points) and generation < max_generations:
        length = radii * rng.uniform(7.0, 12.0, len(radii)) + 2.0
        if generation >= 2 or not free_start:
            # steer branches that would leave the lung back toward its interior
            probe = points + dirs * length[:, None]
            outside = lung_sdf(anatomy, *probe.T) > -0.5 * radii
            if outside.any():
                dirs[outside] = _unit(dirs[outside] + 1.5 * _inward(anatomy, probe[outside]))
        candidate = points + dirs * length[:, None]
        half = points + dirs * (0.5 * length)[:, None]
        both = lung_sdf(anatomy, *np.concatenate([candidate, half]).T) < -0.5 * np.concatenate([radii, radii])
        inside, inside_half = both[: len(radii)], both[len(radii) :]
        if free_start and generation < 2:  # the roots run through the hilum (mediastinum) into the lung
            inside = np.ones_like(inside)
        end = np.where(inside[:, None], candidate, half)
        keep = inside | inside_half
        starts.append(points[keep])
        ends.append(end[keep])
        rads.append(radii[keep])
        labs.append(labels[keep])
        go = keep & inside
        points, dirs, radii, end, labels, root_of = points[go], dirs[go], radii[go], end[go], labels[go], root_of[go]
        if not len(points):
            break
        outward = _unit(end - roots[root_of])
        ratio = rng.uniform(0.3, 1.0, len(radii))
        r1 = radii / (1.0 + ratio**3) ** (1.0 / 3.0)
        r2 = ratio * r1
        # vessels thin toward the pleura: a branch is at most a fraction of its distance to it
        cap = 0.3 + 0.045 * _wall_distance(anatomy, *end.T)
        r1, r2 = np.minimum(r1, cap), np.minimum(r2, cap)
        angle1 = np.deg2rad(rng.uniform(5.0, 25.0, len(radii))) * ratio
        angle2 = np.deg2rad(rng.uniform(25.0, 60.0, len(radii))) * (1.2 - 0.4 * ratio)
        normal = _random_perpendicular(dirs, rng)
        d1 = _unit(np.cos(angle1)[:, None] * dirs + np.sin(angle1)[:, None] * normal + 0.45 * outward)
        d2 = _unit(np.cos(angle2)[:, None] * dirs - np.sin(angle2)[:, None] * normal + 0.45 * outward)
        points = np.concatenate([end, end])
        dirs = np.concatenate([d1, d2])
        radii = np.concatenate([r1, r2])
        labels = np.concatenate([labels, labels])
        root_of = np.concatenate([root_of, root_of])
        alive = radii >= min_radius
        points, dirs, radii, labels, root_of = points[alive], dirs[alive], radii[alive], labels[alive], root_of[alive]
        generation += 1
    if not starts:
        empty = np.zeros((0, 3))
        return empty, empty, np.zeros(0), np.zeros(0, dtype=int)
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(rads), np.concatenate(labs)


def _grow_trees(anatomy: Anatomy, rng: np.random.Generator, *, min_radius: float):
    """Pulmonary arteries (with bronchi beside them) and veins from both hila, plus the small
    peripheral vessels that the trees do not reach."""
    origins, directions, radii, labels = [], [], [], []
    for side in (-1.0, 1.0):
        hx = anatomy.mediastinum_x + side * (anatomy.mediastinum_width + 4.0)
        hy = -anatomy.body_b * 0.02
        for label, dz in ((0, 8.0), (1, -14.0)):  # 0 artery, 1 vein
            base = np.array(
                [
                    [0.35 * side, -0.1, 1.0],  # upper lobe
                    [1.0 * side, -0.6, 0.1],  # middle lobe / lingula
                    [0.9 * side, 0.4, -0.3],  # lateral basal
                    [0.3 * side, 0.8, -1.0],  # posterior basal
                    [0.4 * side, -0.5, -1.0],  # anterior basal
                    [0.6 * side, 0.9, 0.6],  # apical-posterior
                ]
            )
            directions.append(_unit(base + rng.normal(0, 0.15, base.shape)))
            origins.append(np.repeat([[hx, hy, anatomy.hilum_z + dz]], len(base), 0))
            radii.append(rng.uniform(3.2, 4.6, len(base)))
            labels.append(np.full(len(base), label))
    start, end, radius, label = _grow(
        anatomy, rng, np.concatenate(origins), np.concatenate(directions), np.concatenate(radii), np.concatenate(labels),
        min_radius=min_radius,
    )
    # bronchi run beside the larger arteries
    big = (label == 0) & (radius >= 2.6)
    direction = _unit(end[big] - start[big])
    offset = _unit(np.cross(direction, np.array([0.0, 0.0, 1.0])) + 1e-3)
    lumen = radius[big] * rng.uniform(0.8, 1.1, big.sum())
    wall = 0.3 + 0.12 * lumen
    shift = offset * (radius[big] + lumen + wall + 0.3)[:, None]
    airways = TreeSegments(start[big] + shift, end[big] + shift, lumen + wall, lumen)
    # small peripheral vessels beyond the reach of the main trees: little trees seeded through the
    # lung that branch two or three times on their way toward the pleura
    count = int(anatomy.extras.get("peripheral_seeds", 5000))
    box = np.array([anatomy.body_a, anatomy.body_b, anatomy.height])
    seeds = rng.uniform([-1, -1, 0], [1, 1, 1], size=(count, 3)) * box
    seeds = seeds[lung_sdf(anatomy, *seeds.T) < -2.0]
    hilum = np.array([anatomy.mediastinum_x, 0.0, anatomy.hilum_z])
    direction = _unit(_unit(seeds - hilum) + 0.5 * rng.normal(size=seeds.shape))
    p_start, p_end, p_radius, _ = _grow(
        anatomy, rng, seeds, direction, rng.uniform(0.45, 0.8, len(seeds)), np.full(len(seeds), 2),
        min_radius=0.3, max_generations=4, free_start=False,
    )
    vessels = TreeSegments(
        np.concatenate([start, p_start]),
        np.concatenate([end, p_end]),
        np.concatenate([radius, p_radius]),
        np.zeros(len(radius) + len(p_radius)),
    )
    return vessels, airways


# ---- rendering ------------------------------------------------------------------------------------


def render_segments(
    segments: TreeSegments,
    x: np.ndarray,
    y: np.ndarray,
    z_samples: np.ndarray,
    pixel: float,
    *,
    use_lumen: bool = False,
) -> np.ndarray:
    """Slab-averaged occupancy (0..1) of tree segments on a pixel grid.

    Parameters
    ----------
    segments : TreeSegments
    x, y : ndarray, shape (rows, columns)
        Pixel centres in mm (a regular grid).
    z_samples : ndarray
        Heights (mm) across the slice thickness; the occupancy is averaged over them (partial volume).
    pixel : float
        Pixel size (mm), the anti-aliasing width.
    use_lumen : bool
        Draw the inner (lumen) radius instead of the outer one.

    Returns
    -------
    ndarray, shape (rows, columns)
    """
    rows, cols = x.shape
    x0, y0 = x[0, 0], y[0, 0]
    occupancy = np.zeros((len(z_samples), rows, cols))
    if not len(segments):
        return occupancy.mean(0)
    radius = segments.lumen if use_lumen else segments.radius
    lower, upper = segments.lower, segments.upper
    zmin, zmax = float(np.min(z_samples)), float(np.max(z_samples))
    pick = (
        (radius > 0)
        & (upper[:, 0] >= x0 - pixel)
        & (lower[:, 0] <= x[0, -1] + pixel)
        & (upper[:, 1] >= y0 - pixel)
        & (lower[:, 1] <= y[-1, 0] + pixel)
        & (upper[:, 2] >= zmin)
        & (lower[:, 2] <= zmax)
    )
    if not pick.any():
        return occupancy.mean(0)
    a, b, r = segments.start[pick], segments.end[pick], radius[pick]
    lo, hi = lower[pick], upper[pick]
    c0 = np.clip(np.floor((lo[:, 0] - x0) / pixel).astype(int) - 1, 0, cols)
    c1 = np.clip(np.ceil((hi[:, 0] - x0) / pixel).astype(int) + 2, 0, cols)
    r0 = np.clip(np.floor((lo[:, 1] - y0) / pixel).astype(int) - 1, 0, rows)
    r1 = np.clip(np.ceil((hi[:, 1] - y0) / pixel).astype(int) + 2, 0, rows)
    width, height = np.maximum(c1 - c0, 0), np.maximum(r1 - r0, 0)
    counts = width * height
    total = int(counts.sum())
    if total == 0:
        return occupancy.mean(0)
    seg = np.repeat(np.arange(len(r)), counts)
    local = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    col = c0[seg] + local % np.maximum(width[seg], 1)
    row = r0[seg] + local // np.maximum(width[seg], 1)
    px = x0 + col * pixel
    py = y0 + row * pixel
    r_eff = np.maximum(r, 0.5 * pixel)
    contrast = r / r_eff
    ab = b - a
    ab2 = np.maximum((ab**2).sum(1), 1e-12)
    flat = occupancy.reshape(len(z_samples), -1)
    index = row * cols + col
    for k, zs in enumerate(z_samples):
        apx, apy, apz = px - a[seg, 0], py - a[seg, 1], zs - a[seg, 2]
        t = np.clip((apx * ab[seg, 0] + apy * ab[seg, 1] + apz * ab[seg, 2]) / ab2[seg], 0.0, 1.0)
        dx = apx - t * ab[seg, 0]
        dy = apy - t * ab[seg, 1]
        dz = apz - t * ab[seg, 2]
        # structures thinner than a pixel are drawn one pixel wide with proportionally less contrast
        dist = np.sqrt(dx * dx + dy * dy + dz * dz) - r_eff[seg]
        occ = _occupancy(dist, pixel) * contrast[seg]
        np.maximum.at(flat[k], index, occ)
    return occupancy.mean(0)


def _ribs(anatomy: Anatomy, depth, phi, z, cavity_depth, pixel):
    """Occupancy of rib bone and of its cortex (two arrays) at height z."""
    centre = cavity_depth - anatomy.ribcage * 0.5
    half_width = anatomy.rib_width * 0.5 * (1.0 + 0.25 * np.exp(-((phi / 0.6) ** 2)))
    half_height = anatomy.rib_height * 0.5 * (0.8 + 0.35 * (phi / np.pi))
    drop = anatomy.rib_drop * (phi / np.pi) ** 1.3
    u = (z + drop) / anatomy.rib_spacing + anatomy.rib_phase
    v = (u - np.floor(u)) * anatomy.rib_spacing  # mm above the lower edge of the rib period
    dv = v - half_height
    dr = depth - centre
    rho = np.sqrt((dr / half_width) ** 2 + (dv / half_height) ** 2)
    scale = np.minimum(half_width, half_height)
    sdf = (rho - 1.0) * scale
    bone = _occupancy(sdf, pixel)
    inner = _occupancy(sdf + 1.3, pixel)
    anterior = phi > 2.7  # costal cartilage in front, no ribs across the sternum
    bone = np.where(phi > 2.95, 0.0, bone)
    return bone, inner, anterior


def render_region(
    anatomy: Anatomy,
    x: np.ndarray,
    y: np.ndarray,
    z: float,
    *,
    pixel: float,
    thickness: float,
    rng: np.random.Generator,
) -> dict:
    """Draw the anatomy (no nodule, no blur, no noise) on a pixel grid at height ``z``.

    Parameters
    ----------
    anatomy : Anatomy
    x, y : ndarray, shape (rows, columns)
        Pixel centres in mm.
    z : float
        Height of the slice centre (mm).
    pixel : float
        Pixel size (mm).
    thickness : float
        Slice thickness (mm): vessels, airways and the diaphragm are averaged across it.
    rng : numpy.random.Generator
        For the parenchymal texture.

    Returns
    -------
    dict
        ``hu`` (HU before blur and noise), ``lung`` (lung occupancy 0..1), ``cavity`` (inside the
        pleural cavity: lung or mediastinum, 0..1), ``z_samples``.
    """
    n_samples = int(np.clip(np.ceil(thickness / 0.8), 2, 4))
    z_samples = z + (np.arange(n_samples) + 0.5) / n_samples * thickness - thickness / 2
    zz = np.full(x.shape, float(z))
    depth, phi, _ = anatomy.polar(x, y, zz)
    fat_d, muscle_d, cavity_d = anatomy.wall_layers(phi, zz)

    hu = np.full(x.shape, AIR_HU)
    # patient table under the back
    table_y = anatomy.body_b * anatomy.body_scale(z) + 12.0 + 0.0004 * x**2
    hu = _paint(hu, _occupancy(np.abs(y - table_y) - 1.5, pixel) * (np.abs(x) < anatomy.body_a * 0.9), 120.0)
    hu = _paint(hu, _occupancy(-depth, pixel), 25.0)  # skin
    hu = _paint(hu, _occupancy(fat_d - depth, pixel), anatomy.fat_hu)
    hu = _paint(hu, _occupancy(muscle_d - depth, pixel), anatomy.muscle_hu)
    # rib cage: intercostal muscle, ribs (cortex, marrow), costal cartilage
    bone_total = np.zeros(x.shape)
    for zs in z_samples:
        bone, inner, anterior = _ribs(anatomy, depth, phi, zs, cavity_d, pixel)
        bone_total += bone / len(z_samples)
        value = np.where(anterior, 140.0, anatomy.bone_hu)
        marrow = np.where(anterior, 110.0, anatomy.marrow_hu)
        hu = _paint(hu, bone / len(z_samples), value)
        hu = _paint(hu, inner / len(z_samples), marrow)
    # sternum
    upper = z > 0.3 * anatomy.height
    if upper:
        sy = -anatomy.body_b * anatomy.body_scale(z) + (muscle_d + anatomy.ribcage * 0.5)
        sternum = _ellipse_sdf(x, y, 0.0, np.where(phi > 2.5, sy, 1e3), 15.0, 6.0)
        hu = _paint(hu, _occupancy(sternum, pixel), anatomy.bone_hu * 0.8)
        hu = _paint(hu, _occupancy(sternum + 1.5, pixel), anatomy.marrow_hu)
    # scapulae in the upper chest, in the posterior muscle
    if z > 0.5 * anatomy.height:
        band = np.abs(depth - (fat_d + 0.5 * (muscle_d - fat_d))) - 2.5
        band = np.maximum(band, np.abs(phi - 0.95) - 0.28)
        hu = _paint(hu, _occupancy(band, pixel), anatomy.bone_hu * 0.7)
    # pleural cavity: abdomen below the domes, mediastinum, lungs
    cavity_sdf = cavity_d - depth
    cavity = _occupancy(cavity_sdf, pixel)
    dome = _diaphragm_z(anatomy, x, y)
    above = np.clip((z + thickness / 2 - dome) / thickness, 0.0, 1.0)  # partial volume of the dome
    liver_side = np.where(x < anatomy.mediastinum_x, anatomy.liver_hu, anatomy.liver_hu - 15.0)
    hu = _paint(hu, cavity, liver_side)
    mediastinum = _mediastinum_sdf(anatomy, x, y, zz)
    lung = cavity * above * _occupancy(-mediastinum, pixel) * _occupancy(zz - _apex_z(anatomy, x, y), pixel)
    hu = _paint(hu, cavity * _occupancy(mediastinum, pixel) * above, anatomy.fat_hu)
    hu = _mediastinal_organs(anatomy, hu, x, y, z, pixel, cavity * above)
    # parenchyma: gravity gradient toward the back plus smooth mottling
    rows, cols = x.shape
    mottle = ndi.gaussian_filter(rng.normal(size=(rows, cols)), 3.0 / pixel)
    mottle *= 20.0 / max(mottle.std(), 1e-6)
    posterior = np.clip((y / (anatomy.body_b * anatomy.body_scale(z)) + 0.2) / 1.0, 0.0, 1.0) ** 2
    parenchyma = anatomy.lung_hu + anatomy.lung_gradient * posterior + mottle
    hu = _paint(hu, lung, parenchyma)
    # vessels and airways (inside the cavity: lungs and hila)
    vessel = render_segments(anatomy.vessels, x, y, z_samples, pixel) * cavity * above
    hu = _paint(hu, vessel, anatomy.blood_hu * 0.6 + 15.0)
    wall = render_segments(anatomy.airways, x, y, z_samples, pixel) * cavity * above
    hu = _paint(hu, wall, 30.0)
    lumen = render_segments(anatomy.airways, x, y, z_samples, pixel, use_lumen=True) * cavity * above
    hu = _paint(hu, lumen, AIR_HU + 40.0)
    return {"hu": hu, "lung": lung, "cavity": cavity, "vessel": vessel, "bone": bone_total, "z_samples": z_samples}


def _mediastinal_organs(anatomy: Anatomy, hu, x, y, z, pixel, inside):
    """Heart, great vessels, airway, oesophagus and spine inside the mediastinum."""
    mx = anatomy.mediastinum_x
    hx, hy, hz, ha, hb, hc, angle = anatomy.heart
    t = 1.0 - ((z - hz) / hc) ** 2
    if t > 0.02:
        s = np.sqrt(t)
        heart = _ellipse_sdf(x, y, hx, hy, ha * s - 3.0, hb * s - 3.0, angle)
        hu = _paint(hu, _occupancy(heart, pixel) * inside, anatomy.muscle_hu - 5.0)
        if anatomy.extras.get("contrast"):
            chamber = _ellipse_sdf(x, y, hx - 6.0, hy + 4.0, ha * s * 0.55, hb * s * 0.5, angle)
            hu = _paint(hu, _occupancy(chamber, pixel) * inside, anatomy.blood_hu)
    heart_top = hz + hc * 0.85
    blood = anatomy.blood_hu
    # descending aorta, arch, ascending aorta, pulmonary trunk, superior vena cava
    ax, ay = mx + anatomy.spine_radius + 4.0, anatomy.spine_y - anatomy.spine_radius * 0.6
    if z < anatomy.arch_z + 12.0:
        hu = _paint(hu, _occupancy(np.hypot(x - ax, y - ay) - anatomy.aorta_radius, pixel) * inside, blood)
    def circle(cx, cy, radius):
        return _occupancy(np.hypot(x - cx, y - cy) - radius, pixel) * inside

    b = anatomy.body_b
    if heart_top - 10.0 < z < anatomy.arch_z:
        hu = _paint(hu, circle(mx - 8.0, -0.3 * b, anatomy.aorta_radius + 2.0), blood)  # ascending aorta
        hu = _paint(hu, circle(mx + 14.0, -0.38 * b, 12.0), blood)  # pulmonary trunk
    if z > heart_top - 25.0:
        hu = _paint(hu, circle(mx - 22.0, -0.25 * b, 9.0), blood)  # superior vena cava
    if abs(z - anatomy.arch_z) < 12.0:  # aortic arch: a curved band over the other vessels
        bend = np.abs(np.hypot(x - mx, (y - (ay - 0.3 * b) / 2) / 1.6) - 30.0) - anatomy.aorta_radius
        hu = _paint(hu, _occupancy(np.maximum(bend, -(y - ay + 60)), pixel) * inside, blood)
    # trachea above the carina, oesophagus behind it
    ty = anatomy.spine_y - anatomy.spine_radius - 20.0
    if z > anatomy.carina_z:
        trachea = np.hypot(x - mx * 0.5, y - ty)
        hu = _paint(hu, _occupancy(trachea - 11.0, pixel) * inside, 35.0)
        hu = _paint(hu, _occupancy(trachea - 9.0, pixel) * inside, AIR_HU + 20.0)
    oesophagus = np.hypot(x - mx * 0.5 - 6.0, y - (anatomy.spine_y - anatomy.spine_radius - 6.0)) - 6.5
    hu = _paint(hu, _occupancy(oesophagus, pixel) * inside, 35.0)
    # spine: vertebral body (or disc), canal, arch, spinous and transverse processes
    phase = (z / anatomy.vertebra_period + anatomy.vertebra_phase) % 1.0
    is_disc = phase < 0.2
    body = np.hypot(x - mx * 0.3, y - anatomy.spine_y) - anatomy.spine_radius
    hu = _paint(hu, _occupancy(body, pixel), 85.0 if is_disc else anatomy.bone_hu * 0.8)
    if not is_disc:
        hu = _paint(hu, _occupancy(body + 1.5, pixel), anatomy.marrow_hu)
    cy = anatomy.spine_y + anatomy.spine_radius + 9.0
    canal = np.hypot(x - mx * 0.3, y - cy)
    hu = _paint(hu, _occupancy(canal - 12.0, pixel), anatomy.bone_hu * 0.75)
    spinous = _ellipse_sdf(x, y, mx * 0.3, cy + 22.0, 4.0, 16.0)
    hu = _paint(hu, _occupancy(spinous, pixel), anatomy.bone_hu * 0.75)
    for side in (-1.0, 1.0):
        transverse = _ellipse_sdf(x, y, mx * 0.3 + side * 22.0, cy - 2.0, 13.0, 5.0, side * 0.35)
        hu = _paint(hu, _occupancy(transverse, pixel), anatomy.bone_hu * 0.75)
    hu = _paint(hu, _occupancy(canal - 7.5, pixel), 15.0)
    return hu
