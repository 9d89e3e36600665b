"""Test helpers: a synthetic chest CT written as real DICOM, and laziness checks.

:func:`write_phantom_series` writes an analytic chest phantom (body with a fat
layer, two lungs that touch at the anterior junction, vessels, trachea and
main bronchi, heart and mediastinum, spine and ribs, stomach gas under the left
lung base and colon gas lower down, a scanner table, and the
outside-the-scan-circle fill) as one DICOM file per slice, with shuffled file
names and misleading InstanceNumbers, and returns the ground truth.
A second time point adds ground-glass opacities and a small consolidation of
known volume. :func:`write_phantom_cohort` writes several patients over time.

The anatomy is evaluated at each voxel's physical position, so gantry tilt
(sheared slices) keeps the truth exact.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np

__all__ = [
    "LABELS",
    "PhantomTruth",
    "phantom_slice",
    "raise_if_dask_computes",
    "write_phantom_cohort",
    "write_phantom_series",
]

#: Label values of the phantom's truth volume.
LABELS = {"background": 0, "right_lung": 1, "left_lung": 2, "airway": 3, "bowel_gas": 4, "body": 5, "table": 6}

HU = {
    "air": -1000.0,
    "lung": -860.0,
    "fat": -100.0,
    "soft": 40.0,
    "blood": 45.0,
    "bone": 650.0,
    "rib": 450.0,
    "table": 250.0,
    "gas": -965.0,
    "ggo": -550.0,
    "consolidation": 20.0,
    "fill": -3024.0,
}
INTERCEPT = -1024.0


# --------------------------------------------------------------------------- laziness


class _CountingScheduler:
    def __init__(self, max_computes: int) -> None:
        self.max_computes = max_computes
        self.total_computes = 0

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(f"Too many computes. Total: {self.total_computes} > max: {self.max_computes}.")
        return dask.get(dsk, keys, **kwargs)


def raise_if_dask_computes(max_computes: int = 0) -> contextlib.AbstractContextManager[Any]:
    """Context manager that raises if dask computes more than `max_computes` times.

    Examples
    --------
    >>> import dask.array as da
    >>> with raise_if_dask_computes():
    ...     y = da.ones(4) + 1  # building a graph is fine
    """
    return dask.config.set(scheduler=_CountingScheduler(max_computes))


# --------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class _Anatomy:
    """Sizes of the phantom in mm, derived from the field of view and height."""

    body_a: float  # body half-width (x)
    body_b: float  # body half-depth (y)
    height: float  # z extent
    z0: float  # z of the lowest slice
    circle_r: float  # reconstruction circle radius
    diaphragm_mm: float  # diaphragm thickness between the left lung base and the stomach
    gastric_bubble: bool = False  # a large stomach with an air-fluid level under the left dome
    dependent_consolidation: bool = False  # posterior subpleural consolidation in both lower lobes
    trachea_touching_apex: bool = False  # the trachea bends right and touches the right apex

    def t(self, z: np.ndarray) -> np.ndarray:
        return (z - self.z0) / self.height


def _inside_ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, by: float) -> np.ndarray:
    return ((x - cx) / ax) ** 2 + ((y - cy) / by) ** 2


def _segment_distance(p: tuple[np.ndarray, np.ndarray, np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from points `p` to the segment a-b."""
    ab = b - a
    px, py, pz = (p[0] - a[0], p[1] - a[1], p[2] - a[2])
    t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / float(ab @ ab), 0.0, 1.0)
    dx, dy, dz = px - t * ab[0], py - t * ab[1], pz - t * ab[2]
    return np.sqrt(dx * dx + dy * dy + dz * dz)


def _dome(r2: np.ndarray) -> np.ndarray:
    """Height (fraction of the volume) of the diaphragm under a lung, highest mid-lung."""
    return 0.20 + 0.16 * np.clip(1.0 - r2, 0.0, 1.0)


def _lung_masks(an: _Anatomy, x: np.ndarray, y: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right (x < 0) and left lung regions, including what lies inside them."""
    a, b = an.body_a, an.body_b
    masks = []
    for side in (-1.0, 1.0):
        cx, cy, ax, by = side * 0.47 * a, 0.02 * b, 0.41 * a, 0.74 * b
        r2 = _inside_ellipse(x, y, cx, cy, ax, by)
        # apex: the cross-section shrinks as an ellipsoid dome above t = 0.62
        scale2 = np.where(t > 0.62, 1.0 - ((t - 0.62) / (0.90 - 0.62)) ** 2, 1.0)
        inside = r2 < np.maximum(scale2, 0.0)
        # base: the diaphragm is a dome, highest in the middle of each lung
        inside &= t > _dome(r2)
        masks.append(inside)
    right, left = masks
    # anterior junction: the lungs meet in front of the mediastinum
    junction = (np.abs(x) < 0.32 * a) & (y > -0.62 * b) & (y < -0.50 * b) & (t > 0.50) & (t < 0.72)
    right |= junction & (x < 0)
    left |= junction & (x >= 0)
    # mediastinum and heart push the lungs apart elsewhere
    mediastinum = (np.abs(x) < 0.09 * a) & ~junction
    heart = (_inside_ellipse(x, y, 0.10 * a, -0.18 * b, 0.30 * a, 0.36 * b) < 1.0) & (t > 0.26) & (t < 0.56)
    right &= ~mediastinum & ~heart
    left &= ~mediastinum & ~heart
    return right, left


def _airways(an: _Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    a, b = an.body_a, an.body_b
    carina = np.array([0.0, 0.22 * b, an.z0 + 0.64 * an.height])
    top = np.array([0.0, 0.22 * b, an.z0 + 2.0 * an.height])
    if an.trachea_touching_apex:
        # the trachea leans to the right above the carina: at the apex its wall
        # (and, with the lung's own dome, its lumen's partial volume) meets the right apex
        top = np.array([-0.85 * a, 0.22 * b, an.z0 + 2.0 * an.height])
    trachea = _segment_distance((x, y, z), carina, top) < 8.0
    bronchi = np.zeros_like(trachea)
    for side in (-1.0, 1.0):
        hilum = np.array([side * 0.30 * a, 0.14 * b, an.z0 + 0.55 * an.height])
        bronchi |= _segment_distance((x, y, z), carina, hilum) < 5.5
    return trachea | bronchi


def _vessels(an: _Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    a, b, h, z0 = an.body_a, an.body_b, an.height, an.z0
    out = np.zeros(x.shape, bool)
    for side in (-1.0, 1.0):
        hilum = np.array([side * 0.28 * a, 0.05 * b, z0 + 0.52 * h])
        for tip in ((0.75, -0.45, 0.40), (0.70, 0.45, 0.35), (0.55, 0.0, 0.75), (0.80, 0.10, 0.55)):
            end = np.array([side * tip[0] * a, tip[1] * b, z0 + tip[2] * h])
            out |= _segment_distance((x, y, z), hilum, end) < 3.0
    return out


def _disease(an: _Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-glass blobs (one touching the lateral pleura) and an enclosed consolidation."""
    a, b, h, z0 = an.body_a, an.body_b, an.height, an.z0

    def ball(cx: float, cy: float, ct: float, r: float) -> np.ndarray:
        return (x - cx) ** 2 + (y - cy) ** 2 + (z - (z0 + ct * h)) ** 2 < r * r

    ggo = (
        ball(-0.80 * a, 0.20 * b, 0.45, 22.0)
        | ball(0.55 * a, -0.35 * b, 0.55, 18.0)
        | ball(0.60 * a, 0.45 * b, 0.35, 16.0)
    )
    consolidation = ball(-0.45 * a, -0.30 * b, 0.50, 9.0)
    return ggo & ~consolidation, consolidation


def phantom_slice(
    an: _Anatomy,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    *,
    time_point: int = 0,
    rng: np.random.Generator | None = None,
    noise_hu: float = 18.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """HU, labels, high-attenuation and ground-glass masks at physical points (x, y, z) in mm (LPS).

    Returns
    -------
    hu : ndarray of float32 (fill voxels at -3024)
    labels : ndarray of int8 (see :data:`LABELS`)
    ggo : ndarray of bool (high-attenuation lung: ground glass and consolidation)
    ground_glass : ndarray of bool (the ground glass alone, -550 HU)
    """
    a, b = an.body_a, an.body_b
    t = an.t(z)
    hu = np.full(x.shape, HU["air"], np.float32)
    labels = np.zeros(x.shape, np.int8)

    body_r2 = _inside_ellipse(x, y, 0.0, 0.0, a, b)
    body = body_r2 < 1.0
    hu[body] = HU["fat"]
    hu[body_r2 < 0.86] = HU["soft"]
    labels[body] = LABELS["body"]

    table = (y > b + 12.0) & (y < b + 22.0) & (np.abs(x) < 1.2 * a)
    hu[table] = HU["table"]
    labels[table] = LABELS["table"]

    # ribs: bands in the chest wall every 26 mm along z
    rib_ring = (body_r2 > 0.80) & (body_r2 < 0.86) & (t > 0.25) & (t < 0.88)
    ribs = rib_ring & (np.mod(z - an.z0, 26.0) < 9.0) & (y > -0.9 * b)
    hu[ribs] = HU["rib"]
    spine = (_inside_ellipse(x, y, 0.0, 0.72 * b, 0.11 * a, 0.16 * b) < 1.0) & body
    hu[spine] = HU["bone"]

    right, left = _lung_masks(an, x, y, t)
    lung = (right | left) & body
    hu[lung] = HU["lung"]
    vessels = _vessels(an, x, y, z) & lung
    hu[vessels] = HU["blood"]
    ggo = np.zeros(x.shape, bool)
    ground_glass = np.zeros(x.shape, bool)
    if time_point > 0:
        ground_glass, consolidation = _disease(an, x, y, z)
        ground_glass &= lung & ~vessels
        consolidation &= lung
        hu[ground_glass] = HU["ggo"]
        hu[consolidation] = HU["consolidation"]
        ggo = ground_glass | consolidation
    if an.dependent_consolidation:
        # patchy dependent (posterior, subpleural) consolidation in both lower lobes:
        # balls centred just inside the posterior pleura, so each takes a bite out of the aerated lung
        for side in (-1.0, 1.0):
            for tc, dx_frac in ((0.38, 0.55), (0.44, 0.40)):
                cy = 0.02 * b + 0.74 * b * np.sqrt(max(1.0 - ((dx_frac - 0.47) / 0.41) ** 2, 0.0)) - 3.0
                blob = (x - side * dx_frac * a) ** 2 + (y - cy) ** 2 + (z - (an.z0 + tc * an.height)) ** 2 < 6.0**2
                blob &= lung
                hu[blob] = HU["consolidation"]
                ggo |= blob
    labels[right & body] = LABELS["right_lung"]
    labels[left & body] = LABELS["left_lung"]

    airway = _airways(an, x, y, z) & body & ~lung
    hu[airway] = HU["air"]
    labels[airway] = LABELS["airway"]

    # stomach gas right under the left lung base (touching it across a slice
    # boundary) and colon gas lower down
    # the stomach fills the dome under the left lung, separated from it by a
    # diaphragm thinner than a slice: in-plane a rim of soft tissue parts them,
    # across the slice boundary above the gas they touch
    top = _dome(_inside_ellipse(x, y, 0.47 * a, 0.02 * b, 0.41 * a, 0.74 * b)) - an.diaphragm_mm / an.height
    stomach = (_inside_ellipse(x, y, 0.42 * a, -0.05 * b, 0.22 * a, 0.30 * b) < 1.0) & (t <= top) & (t > top - 0.08)
    colon = (_inside_ellipse(x, y, -0.45 * a, -0.25 * b, 0.12 * a, 0.15 * b) < 1.0) & (t > 0.04) & (t < 0.10)
    if an.gastric_bubble:
        # a large stomach under the left dome, its gas over fluid: in a supine
        # patient the air-fluid level is a flat plane (constant y), gas in front
        inside = _inside_ellipse(x, y, 0.42 * a, -0.05 * b, 0.30 * a, 0.40 * b) < 1.0
        big = inside & (t <= top) & (t > top - 0.16) & body & ~lung
        fluid = big & (y >= 0.05 * b)
        hu[fluid] = HU["soft"] - 25.0
        labels[fluid] = LABELS["body"]
        stomach = big & ~fluid
    gas = (stomach | colon) & body & ~lung
    hu[gas] = HU["gas"]
    labels[gas] = LABELS["bowel_gas"]

    if rng is not None and noise_hu > 0:
        hu += rng.normal(0.0, noise_hu, size=hu.shape).astype(np.float32)
    outside = x**2 + y**2 > an.circle_r**2
    hu[outside] = HU["fill"]
    labels[outside] = LABELS["background"]
    ggo &= ~outside
    ground_glass &= ~outside
    return hu, labels, ggo, ground_glass


# --------------------------------------------------------------------------- writing


@dataclass
class PhantomTruth:
    """What a written phantom series contains (arrays in slice-position order)."""

    folder: Path
    paths: list[Path]
    series_uid: str
    study_uid: str
    patient_id: str
    study_date: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    tilt_deg: float
    time_point: int
    voxel_volume_ml: float
    lung_volume_ml: dict[str, float]
    ggo_volume_ml: float
    ground_glass_volume_ml: float
    labels: np.ndarray | None = field(default=None, repr=False)
    ggo: np.ndarray | None = field(default=None, repr=False)
    hu: np.ndarray | None = field(default=None, repr=False)


def _uid(*parts: Any) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _base_dataset(**values: Any) -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def write_phantom_series(
    folder: str | os.PathLike[str],
    *,
    shape: tuple[int, int, int] = (80, 192, 192),
    spacing_mm: tuple[float, float, float] = (4.0, 1.875, 1.875),
    tilt_deg: float = 0.0,
    time_point: int = 0,
    seed: int = 0,
    compression: str | None = None,
    patient_id: str = "PHANTOM-0001",
    patient_name: str = "Phantom^Patient",
    birth_date: str = "19600101",
    study_date: str = "20200101",
    study_time: str = "093000",
    accession_number: str = "ACC0001",
    institution_name: str = "Phantom General Hospital",
    referring_physician: str = "Doctor^Referring",
    series_description: str = "CHEST PHANTOM",
    convolution_kernel: str = "STANDARD",
    kvp: float = 120.0,
    manufacturer: str = "ctframe phantom",
    drop_slices: Sequence[int] = (),
    duplicate_slices: Sequence[int] = (),
    padding_as_unsigned: bool = False,
    noise_hu: float = 18.0,
    return_arrays: bool = True,
    uid_prefix: str = "",
    body_scale: float = 1.0,
    diaphragm_mm: float | None = None,
    gastric_bubble: bool = False,
    dependent_consolidation: bool = False,
    trachea_touching_apex: bool = False,
) -> PhantomTruth:
    """Write a synthetic chest CT series as DICOM files and return its truth.

    Parameters
    ----------
    folder : path-like
        Created if needed; one ``<random>.dcm`` file per slice.
    shape : (slices, rows, cols)
    spacing_mm : (slice, row, col) spacing in mm
        The slice step along the table (z); with a tilt the step along the
        slice normal is ``spacing_mm[0] * cos(tilt)``.
    tilt_deg : float
        Gantry tilt: the slices are rotated about the x axis, the table advances
        along z (GantryDetectorTilt is written too).
    time_point : int
        0: healthy lungs; >= 1 adds ground-glass opacities (one at the pleura)
        and an enclosed consolidation.
    seed : int
        Noise seed (and UIDs): the same arguments give the same files.
    compression : {None, "rle", "jpeg-ls", "jpeg2000", "jpeg-lossless"}
        Lossless transfer syntax to encode with.
    patient_id, patient_name, birth_date, accession_number, institution_name, referring_physician : str
        Identifying values planted in the header (privacy tests look for them).
    drop_slices, duplicate_slices : sequence of int
        Slice indices to leave out (gaps) or to write twice (duplicates).
    padding_as_unsigned : bool
        Write PixelPaddingValue as the unsigned 16-bit encoding of -2000 on a
        signed image, as some scanners (and LIDC-IDRI-0001) do.
    return_arrays : bool
        Keep truth labels, ground-glass mask and HU in the result.
    body_scale : float
        In-plane size of the body (and everything in it) relative to the
        default, within (0.5, 1.2]: smaller and larger patients.
    diaphragm_mm : float, optional
        Diaphragm thickness (z) between the left lung base and the stomach gas
        (default 0.6 slice steps: thinner than a slice).
    gastric_bubble : bool
        A large stomach under the left dome holding gas over fluid (a flat
        air-fluid level, gas in front), under the diaphragm of `diaphragm_mm`.
    dependent_consolidation : bool
        Posterior subpleural consolidation (+20 HU, two balls of 6 mm radius
        per lower lobe, counted in ``ggo``): lung in the truth.
    trachea_touching_apex : bool
        The trachea leans to the right above the carina and touches the right
        lung apex.

    Returns
    -------
    PhantomTruth
        Paths in slice order, UIDs, spacing, per-lung volumes in mL and the
        ground-glass volume; arrays when `return_arrays`.

    Examples
    --------
    >>> import tempfile
    >>> truth = write_phantom_series(tempfile.mkdtemp(), shape=(8, 64, 64))
    >>> len(truth.paths), truth.labels.shape
    (8, (8, 64, 64))
    """
    from pydicom.dataset import Dataset
    from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

    syntaxes = {
        None: None,
        "rle": RLELossless,
        "jpeg-ls": JPEGLSLossless,
        "jpeg2000": JPEG2000Lossless,
        "jpeg-lossless": JPEGLosslessSV1,
    }
    if not 0.5 < body_scale <= 1.2:
        raise ValueError(f"body_scale must lie in (0.5, 1.2], got {body_scale}")
    if compression not in syntaxes:
        raise ValueError(f"compression must be one of {sorted(map(str, syntaxes))}, got {compression!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n, n_rows, n_cols = shape
    dz, dy, dx = spacing_mm
    tilt = np.radians(tilt_deg)
    an = _Anatomy(
        body_a=0.40 * n_cols * dx * body_scale,
        body_b=0.28 * n_rows * dy * body_scale,
        height=n * dz,
        z0=-n * dz,
        circle_r=0.5 * min(n_cols * dx, n_rows * dy),
        diaphragm_mm=0.6 * dz if diaphragm_mm is None else float(diaphragm_mm),
        gastric_bubble=gastric_bubble,
        dependent_consolidation=dependent_consolidation,
        trachea_touching_apex=trachea_touching_apex,
    )
    row_dir = np.array([1.0, 0.0, 0.0])
    col_dir = np.array([0.0, np.cos(tilt), -np.sin(tilt)])
    jj, ii = np.meshgrid(np.arange(n_cols), np.arange(n_rows))
    x0, y0 = -(n_cols - 1) * dx / 2, -(n_rows - 1) * dy / 2

    tag = f"{uid_prefix}{patient_id}|{study_date}|{seed}|{time_point}"
    study_uid, series_uid, frame_uid = _uid(tag, "study"), _uid(tag, "series"), _uid(tag, "frame")
    rng_names = np.random.default_rng([seed, 99])
    dropped, duplicated = set(drop_slices), set(duplicate_slices)
    n_files = sum(1 + (k in duplicated) for k in range(n) if k not in dropped)
    names = iter(f"{rng_names.integers(10**9):09d}-{i}.dcm" for i in range(n_files))
    instance_numbers = iter(rng_names.permutation(n_files) + 1)
    pad_stored = int(HU["fill"] - INTERCEPT)  # -2000
    kept_labels: list[np.ndarray] = []
    kept_ggo: list[np.ndarray] = []
    kept_hu: list[np.ndarray] = []
    voxel_ml = dz * np.cos(tilt) * dy * dx / 1000.0
    counts = {"right": 0, "left": 0, "ggo": 0, "ground_glass": 0}
    paths: list[tuple[int, Path]] = []
    for k in range(n):
        # slice k is centred on the table position z0 + k * dz
        origin = np.array([x0, y0 * np.cos(tilt), an.z0 + k * dz - y0 * np.sin(tilt)])
        px = origin[0] + jj * dx * row_dir[0] + ii * dy * col_dir[0]
        py = origin[1] + jj * dx * row_dir[1] + ii * dy * col_dir[1]
        pz = origin[2] + jj * dx * row_dir[2] + ii * dy * col_dir[2]
        rng = np.random.default_rng([seed, time_point, k])
        hu, lab, g, glass = phantom_slice(an, px, py, pz, time_point=time_point, rng=rng, noise_hu=noise_hu)
        if k in dropped:
            continue
        counts["right"] += int((lab == LABELS["right_lung"]).sum())
        counts["left"] += int((lab == LABELS["left_lung"]).sum())
        counts["ggo"] += int(g.sum())
        counts["ground_glass"] += int(glass.sum())
        stored = np.clip(np.round(hu - INTERCEPT), -32768, 32767).astype(np.int16)
        if return_arrays:
            kept_labels.append(lab)
            kept_ggo.append(g)
            kept_hu.append(np.where(stored == pad_stored, np.nan, stored + np.float32(INTERCEPT)).astype(np.float32))
        for copy in range(1 + (k in duplicated)):
            ds = _base_dataset(
                SOPInstanceUID=_uid(tag, "instance", k, copy),
                StudyInstanceUID=study_uid,
                SeriesInstanceUID=series_uid,
                FrameOfReferenceUID=frame_uid,
                Modality="CT",
                Manufacturer=manufacturer,
                ManufacturerModelName="Analytic v1",
                PatientName=patient_name,
                PatientID=patient_id,
                PatientBirthDate=birth_date,
                PatientSex="O",
                AccessionNumber=accession_number,
                InstitutionName=institution_name,
                ReferringPhysicianName=referring_physician,
                StudyDate=study_date,
                StudyTime=study_time,
                SeriesDate=study_date,
                StudyID="1",
                SeriesNumber=2 + time_point,
                AcquisitionNumber=1,
                InstanceNumber=int(next(instance_numbers)),
                SeriesDescription=series_description,
                ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
                BodyPartExamined="CHEST",
                PatientPosition="FFS",
                ConvolutionKernel=convolution_kernel,
                KVP=f"{kvp:g}",
                SliceThickness=f"{dz * np.cos(tilt):.4f}",
                GantryDetectorTilt=f"{tilt_deg:.2f}",
                ImagePositionPatient=[f"{v:.4f}" for v in origin],
                ImageOrientationPatient=[f"{v:.6f}" for v in (*row_dir, *col_dir)],
                PixelSpacing=[f"{dy:.6f}", f"{dx:.6f}"],
                Rows=n_rows,
                Columns=n_cols,
                SamplesPerPixel=1,
                PhotometricInterpretation="MONOCHROME2",
                BitsAllocated=16,
                BitsStored=16,
                HighBit=15,
                PixelRepresentation=1,
                RescaleIntercept=f"{INTERCEPT:g}",
                RescaleSlope="1",
                RescaleType="HU",
                WindowCenter=["-600", "40"],
                WindowWidth=["1500", "400"],
            )
            if padding_as_unsigned:
                ds.add_new(0x00280120, "US", pad_stored + 65536)
            else:
                ds.add_new(0x00280120, "SS", pad_stored)
            ds.PixelData = stored.tobytes()
            if compression == "jpeg-lossless":  # pydicom has no encoder for it; imagecodecs does
                _encapsulate_jpeg_lossless(ds, stored)
            elif syntaxes[compression] is not None:
                ds.compress(syntaxes[compression], stored)
            path = folder / next(names)
            Dataset.save_as(ds, path, enforce_file_format=True)
            paths.append((k, path))

    paths.sort(key=lambda kp: kp[0])
    return PhantomTruth(
        folder=folder,
        paths=[p for _, p in paths],
        series_uid=series_uid,
        study_uid=study_uid,
        patient_id=patient_id,
        study_date=study_date,
        shape=(n - len(dropped & set(range(n))), n_rows, n_cols),
        spacing_mm=(dz * float(np.cos(tilt)), dy, dx),
        tilt_deg=tilt_deg,
        time_point=time_point,
        voxel_volume_ml=voxel_ml,
        lung_volume_ml={"right": counts["right"] * voxel_ml, "left": counts["left"] * voxel_ml},
        ggo_volume_ml=counts["ggo"] * voxel_ml,
        ground_glass_volume_ml=counts["ground_glass"] * voxel_ml,
        labels=np.stack(kept_labels) if return_arrays else None,
        ggo=np.stack(kept_ggo) if return_arrays else None,
        hu=np.stack(kept_hu) if return_arrays else None,
    )


def _encapsulate_jpeg_lossless(ds: Any, stored: np.ndarray) -> None:
    """Encode one int16 frame as JPEG Lossless, first-order prediction (Process 14, SV1)."""
    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    frame = imagecodecs.ljpeg_encode(np.ascontiguousarray(stored).view(np.uint16))
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1


def write_phantom_cohort(
    root: str | os.PathLike[str],
    *,
    n_patients: int = 3,
    n_time_points: int = 2,
    days_between: int = 90,
    shape: tuple[int, int, int] = (64, 128, 128),
    spacing_mm: tuple[float, float, float] = (5.0, 2.8, 2.8),
    seed: int = 0,
    return_arrays: bool = False,
    **series_options: Any,
) -> list[PhantomTruth]:
    """Write `n_patients` phantom patients with `n_time_points` studies each.

    Files go to ``root/patient-NN/study-T/``. Time point 0 is healthy; later
    time points add ground-glass opacities and a consolidation, so the change
    in high-attenuation lung volume is known exactly (see
    :attr:`PhantomTruth.ground_glass_volume_ml`). Patients differ in size
    (``body_scale`` cycles through 1.0, 0.92 and 1.08).

    Returns
    -------
    list of PhantomTruth
        Ordered by patient, then time point.
    """
    root = Path(root)
    base = _dt.date(2020, 1, 6)
    truths = []
    for p in range(n_patients):
        for tp in range(n_time_points):
            date = base + _dt.timedelta(days=7 * p + days_between * tp)
            truths.append(
                write_phantom_series(
                    root / f"patient-{p + 1:02d}" / f"study-{tp + 1}",
                    shape=shape,
                    spacing_mm=spacing_mm,
                    time_point=tp,
                    seed=seed + 101 * p + tp,
                    patient_id=f"PHANTOM-{p + 1:04d}",
                    patient_name=f"Phantom^Patient{p + 1}",
                    study_date=date.strftime("%Y%m%d"),
                    accession_number=f"ACC{p + 1:03d}{tp + 1}",
                    return_arrays=return_arrays,
                    **{"body_scale": (1.0, 0.92, 1.08)[p % 3], **series_options},
                )
            )
    return truths
