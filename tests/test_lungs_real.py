"""Lung masks on every shared chest CT, checked against references made independently of ctframe.

* LUNG1-003 (NSCLC-Radiomics): the clinical lung contours, as the label image
  ``reference/lungs.nii.gz`` (1 = right, 2 = left), placed on the series grid
  here with nibabel's affine and the DICOM geometry read by pydicom (not with
  ``ctframe.masks``): Dice for both lungs and per lung.
* Every chest CT (LIDC-IDRI-0001, LUNG1-003, Lung-PET-CT-Dx A0001): gas below
  the lung base (stomach, bowel) and the trachea above the carina are found
  from HU and anatomy in this file, and no lung voxel may lie in either.
* Overlays at apex, middle and base go to ``test-output/lungs_<case>_*.png``
  for a person to look at.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

import ctframe
from ctframe.errors import CTFrameError, QCWarning, ScanWarning
from ctframe.segment import ShortStackError, can_segment, lung_qc

RIGHT, LEFT = 1, 2
CASES = {
    "lidc": "lidc-idri-0001",
    "lung1_003": "nsclc-radiomics-lung1-003/ct",
    "lung_pet_ct_dx": "lung-pet-ct-dx-a0001",
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 1.0


def _open(folder: Path) -> xr.DataArray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScanWarning)
        warnings.simplefilter("ignore", QCWarning)
        return ctframe.to_hu(ctframe.open_series(folder)).compute()


_RESULTS: dict[str, tuple[xr.DataArray, np.ndarray]] = {}


@pytest.fixture(params=list(CASES))
def chest_ct(request: pytest.FixtureRequest, shared_data: Path) -> tuple[str, xr.DataArray, np.ndarray]:
    """(case, HU, lung labels with airways 3), each segmented once per session."""
    name = request.param
    if name not in _RESULTS:
        hu = _open(shared_data / CASES[name])
        _RESULTS[name] = (hu, ctframe.lung_mask(hu, airways=True).values)
    hu, labels = _RESULTS[name]
    return name, hu, labels


def _spacing(hu: xr.DataArray) -> tuple[float, float, float]:
    dz = float(np.median(np.abs(np.diff(np.asarray(hu["position_z_mm"].values, float)))))
    dy, dx = (float(v) for v in hu.attrs["pixel_spacing_mm"])
    return dz, dy, dx


def _head_last(hu: xr.DataArray) -> bool:
    z = np.asarray(hu["position_z_mm"].values, float)
    return bool(z[-1] > z[0])


# --------------------------------------------------------------------------- independent anatomy


def body_outline(slice_hu: np.ndarray) -> np.ndarray:
    """Per slice: the largest component of HU >= -500 with its in-plane holes filled."""
    with np.errstate(invalid="ignore"):
        tissue = np.nan_to_num(slice_hu, nan=-3000.0) >= -500
    labels, count = ndimage.label(tissue)
    if count == 0:
        return tissue
    largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(largest)


def find_trachea(hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """The trachea's lumen from the head end down to the carina (arrays head-last).

    The seed is the largest air component (< -900 HU) inside the body of
    50-600 mm² within 30 mm of the body's centre, in the first slice from the
    head that has one. It is followed slice by slice through the air
    component that overlaps it; where it parts in two lumens of at least a
    quarter of its area that stay apart in the next two slices, that is the
    carina and the search ends (the larynx also parts, but joins again); it
    also ends where the lumen becomes three times wider than the seed.
    """
    _, dy, dx = spacing
    out = np.zeros(hu.shape, bool)
    previous: np.ndarray | None = None
    seed_area = 0.0

    def air_components(k: int) -> tuple[np.ndarray, np.ndarray]:
        air = (np.nan_to_num(hu[k], nan=0.0) < -900) & body_outline(hu[k])
        labels, _ = ndimage.label(air)
        return labels, np.bincount(labels.ravel()) * dy * dx

    for k in range(hu.shape[0] - 1, -1, -1):
        labels, areas = air_components(k)
        if previous is None:
            body = body_outline(hu[k])
            if not body.any():
                continue
            centre = np.argwhere(body)[:, 1].mean()
            found = [
                i for i in range(1, areas.size)
                if 50 <= areas[i] <= 600 and abs(np.argwhere(labels == i)[:, 1].mean() - centre) * dx < 30
            ]  # fmt: skip
            if not found:
                continue
            best = max(found, key=lambda i: areas[i])
            current, seed_area = labels == best, float(areas[best])
        else:
            reach = ndimage.binary_dilation(previous)
            ids = [i for i in np.unique(labels[reach & (labels > 0)]) if areas[i] >= 10]
            if not ids:
                break
            big = [i for i in ids if areas[i] >= max(30.0, 0.25 * previous.sum() * dy * dx)]
            if len(big) >= 2:
                pieces = np.isin(labels, big)
                rejoined = False
                for kk in range(k - 1, max(k - 3, -1), -1):
                    below, below_areas = air_components(kk)
                    touching = np.unique(below[ndimage.binary_dilation(pieces) & (below > 0)])
                    if len([i for i in touching if below_areas[i] >= 30]) == 1:
                        rejoined = True
                        break
                if not rejoined:
                    break  # the carina
                current = pieces
            else:
                best = max(ids, key=lambda i: areas[i])
                if areas[best] > 3.0 * seed_area:
                    break
                current = labels == best
        out[k] = current
        previous = current
    return out


def find_abdominal_gas(hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Gas pockets below the lung base (arrays head-last).

    The base level is the lowest slice whose air inside the body (< -400 HU)
    reaches half of the largest such area: below it the lungs are thin
    crescents around the domes. There, 2-D components of air (< -900 HU) of
    30-5000 mm² inside the body whose median is below -950 HU are gas:
    aerated lung reads -700..-900 and its darkest components have medians of
    -910..-945 on these scans, stomach and bowel gas -950..-1010.
    """
    _, dy, dx = spacing
    values = np.nan_to_num(hu, nan=-3000.0)
    bodies = np.stack([body_outline(s) for s in values])
    area = ((values < -400) & bodies).sum(axis=(1, 2))
    base = int(np.argmax(area >= 0.5 * area.max()))
    out = np.zeros(hu.shape, bool)
    for k in range(base + 1):
        labels, count = ndimage.label((values[k] < -900) & bodies[k])
        areas = np.bincount(labels.ravel()) * dy * dx
        for i in range(1, count + 1):
            if 30 <= areas[i] <= 5000:
                pocket = labels == i
                if np.median(values[k][pocket]) < -950:
                    out[k] |= pocket
    return out


def reference_on_grid(hu: xr.DataArray, path: Path) -> np.ndarray:
    """The NIfTI reference labels on the series grid, placed by patient coordinates.

    nibabel gives the file's index -> RAS affine; the series' index ->
    LPS affine is built from ImagePositionPatient, ImageOrientationPatient and
    PixelSpacing read with pydicom from the first and last files by position.
    Their composition must be a signed permutation with whole-voxel offsets.
    """
    import nibabel
    import pydicom

    image = nibabel.load(path)
    data = np.asarray(image.dataobj)
    to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(path.parent.parent.glob("ct/*.dcm"))]
    headers.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    first = headers[0]
    row_dir = np.asarray(first.ImageOrientationPatient[:3], float)
    col_dir = np.asarray(first.ImageOrientationPatient[3:], float)
    dy, dx = (float(v) for v in first.PixelSpacing)
    step = (np.asarray(headers[-1].ImagePositionPatient, float) - np.asarray(first.ImagePositionPatient, float)) / (
        len(headers) - 1
    )
    grid = np.eye(4)
    grid[:3, 0], grid[:3, 1], grid[:3, 2] = step, col_dir * dy, row_dir * dx  # (slice, row, col) -> LPS
    grid[:3, 3] = np.asarray(first.ImagePositionPatient, float)
    # the HU volume is in ascending z here (checked below), like the sorted headers
    z = [float(d.ImagePositionPatient[2]) for d in headers]
    assert np.allclose(np.asarray(hu["position_z_mm"].values, float), z)
    mapping = np.linalg.inv(to_lps) @ grid
    whole = np.round(mapping[:3, :3])
    assert np.allclose(mapping[:3, :3], whole, atol=1e-3), "reference and series grids differ beyond axis order"
    assert np.allclose(mapping[:3, 3], np.round(mapping[:3, 3]), atol=1e-2)
    index = np.indices(hu.shape).reshape(3, -1)
    target = (whole @ index + np.round(mapping[:3, 3:4])).astype(int)
    return data[target[0], target[1], target[2]].reshape(hu.shape)


# --------------------------------------------------------------------------- Dice against clinical contours


@pytest.fixture(scope="module")
def lung1_003(shared_data: Path) -> tuple[xr.DataArray, np.ndarray, np.ndarray]:
    hu = _open(shared_data / CASES["lung1_003"])
    if "lung1_003" not in _RESULTS:
        _RESULTS["lung1_003"] = (hu, ctframe.lung_mask(hu, airways=True).values)
    reference = reference_on_grid(hu, shared_data / "nsclc-radiomics-lung1-003" / "reference" / "lungs.nii.gz")
    return hu, _RESULTS["lung1_003"][1], reference


def test_lungs_real__reference_placed_by_geometry(lung1_003: tuple[xr.DataArray, np.ndarray, np.ndarray]) -> None:
    """The reference's right lung (1) lies at smaller patient x (LPS), and its volumes are the documented ones."""
    hu, _, reference = lung1_003
    dz, dy, dx = _spacing(hu)
    voxel_ml = dz * dy * dx / 1000.0
    assert abs((reference == RIGHT).sum() * voxel_ml - 2184) < 5  # PROVENANCE.md: right 2,184 mL, left 1,734 mL
    assert abs((reference == LEFT).sum() * voxel_ml - 1734) < 5
    x_of_col = float(hu["position_x_mm"].values[0]) + np.arange(hu.sizes["col"]) * dx * hu.attrs["orientation"][0]
    mean_x = {v: float((reference == v).sum(axis=(0, 1)) @ x_of_col / (reference == v).sum()) for v in (RIGHT, LEFT)}
    assert mean_x[RIGHT] < 0 < mean_x[LEFT]


def test_lungs_real__dice_per_lung_against_clinical_contours(
    lung1_003: tuple[xr.DataArray, np.ndarray, np.ndarray],
) -> None:
    _, labels, reference = lung1_003
    # measured 2026-12-07b: right 0.9754, left 0.9635, both 0.9702 (the left contour carves out the hilar
    # vessels and, on three slices, includes the dome of the diaphragm under the lung ring)
    assert dice(labels == RIGHT, reference == RIGHT) >= 0.95
    assert dice(labels == LEFT, reference == LEFT) >= 0.95


def test_lungs_real__dice_both_lungs_at_least_097(lung1_003: tuple[xr.DataArray, np.ndarray, np.ndarray]) -> None:
    """The issue's target for both lungs together (0.9697 before the envelope stopped at the mediastinum)."""
    _, labels, reference = lung1_003
    assert dice(np.isin(labels, (RIGHT, LEFT)), reference > 0) >= 0.97


# --------------------------------------------------------------------------- every chest CT


def test_lungs_real__no_lung_in_gas_below_the_base(chest_ct: tuple[str, xr.DataArray, np.ndarray]) -> None:
    name, hu, labels = chest_ct
    assert _head_last(hu)  # the gas search below runs from slice 0 (feet) upwards
    gas = find_abdominal_gas(hu.values, _spacing(hu))
    assert gas.sum() > 50, "precondition: each of these scans has gas under the lung base"
    lungs = np.isin(labels, (RIGHT, LEFT))
    assert not lungs[gas].any(), f"{name}: {int(lungs[gas].sum())} lung voxels in abdominal gas"


def test_lungs_real__gas_finder_never_marks_reference_lung(
    lung1_003: tuple[xr.DataArray, np.ndarray, np.ndarray],
) -> None:
    """The test's own gas finder, checked against the clinical contours: the gas it finds is not lung."""
    hu, _, reference = lung1_003
    gas = find_abdominal_gas(hu.values, _spacing(hu))
    assert gas.sum() > 50 and not (reference[gas] > 0).any()


def test_lungs_real__no_lung_in_the_trachea_above_the_carina(chest_ct: tuple[str, xr.DataArray, np.ndarray]) -> None:
    name, hu, labels = chest_ct
    spacing = _spacing(hu)
    trachea = find_trachea(hu.values, spacing)
    length_mm = int(trachea.any(axis=(1, 2)).sum()) * spacing[0]
    assert length_mm >= 60, f"precondition: the trachea is found over at least 6 cm ({name}: {length_mm:.0f} mm)"
    # the lumen and one pixel of its wall in-plane
    in_plane = np.array([np.zeros((3, 3)), np.ones((3, 3)), np.zeros((3, 3))], bool)
    wall = ndimage.binary_dilation(trachea, structure=in_plane)
    lungs = np.isin(labels, (RIGHT, LEFT))
    assert not lungs[wall].any(), f"{name}: {int(lungs[wall].sum())} lung voxels in or at the trachea"


def test_lungs_real__qc_passes_on_good_masks(chest_ct: tuple[str, xr.DataArray, np.ndarray]) -> None:
    name, hu, labels = chest_ct
    qc = lung_qc(xr.DataArray(labels, dims=hu.dims, coords=hu.coords))
    assert qc["qc_ok"], (name, qc["qc_note"])
    assert qc["right_components"] == 1 and qc["left_components"] == 1
    # independent volume: voxel count x spacing from the coordinates
    dz, dy, dx = _spacing(hu)
    assert qc["right_ml"] == pytest.approx((labels == RIGHT).sum() * dz * dy * dx / 1000.0)


def test_lungs_real__qc_flags_a_cut_and_a_split_mask(chest_ct: tuple[str, xr.DataArray, np.ndarray]) -> None:
    """Masks made wrong on purpose from the real ones raise the matching flags."""
    _, hu, labels = chest_ct
    lung_slices = np.flatnonzero(np.isin(labels, (RIGHT, LEFT)).any(axis=(1, 2)))
    middle = int(lung_slices[len(lung_slices) // 2])
    cut = labels[middle:]  # head-last: the stack now starts (feet end) inside the lungs
    qc = lung_qc(xr.DataArray(cut, dims=hu.dims, coords=hu.isel(slice=slice(middle, None)).coords))
    assert qc["qc_cut_feet"] and not qc["qc_ok"] and "bases are cut off" in qc["qc_note"]
    split = labels.copy()
    split[middle][split[middle] == RIGHT] = 0  # a gap of one slice through the right lung
    qc = lung_qc(xr.DataArray(split, dims=hu.dims, coords=hu.coords))
    assert qc["qc_components"] and qc["right_components"] >= 2 and qc["left_components"] == 1
    one_lung = np.where(labels == LEFT, 0, labels)
    qc = lung_qc(xr.DataArray(one_lung, dims=hu.dims, coords=hu.coords))
    assert qc["qc_ratio"] and "missing" in qc["qc_note"]


def test_lungs_real__short_stacks_are_refused_with_a_reason(chest_ct: tuple[str, xr.DataArray, np.ndarray]) -> None:
    _, hu, _ = chest_ct
    assert can_segment(hu) == (True, "")
    for stack in (hu.isel(slice=[len(hu["slice"]) // 2]), hu.isel(slice=slice(40, 44))):
        ok, reason = can_segment(stack)
        assert not ok and "lung segmentation needs at least" in reason
        with pytest.raises(ShortStackError, match="lung segmentation needs at least") as info:
            ctframe.lung_mask(stack)
        assert isinstance(info.value, CTFrameError) and isinstance(info.value, ValueError)


def test_lungs_real__overlays(chest_ct: tuple[str, xr.DataArray, np.ndarray], test_output: Path) -> None:
    """Apex, middle and base with the lungs (red right, green left), the trachea found here (cyan) and gas (yellow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, hu, labels = chest_ct
    spacing = _spacing(hu)
    trachea = find_trachea(hu.values, spacing)
    gas = find_abdominal_gas(hu.values, spacing)
    lung_slices = np.flatnonzero(np.isin(labels, (RIGHT, LEFT)).any(axis=(1, 2)))
    gas_slices = np.flatnonzero(gas.any(axis=(1, 2)))
    trachea_slices = np.flatnonzero(trachea.any(axis=(1, 2)))
    picks = {
        "apex": int(lung_slices[-1]) - 1,
        "middle": int(trachea_slices[0]) + 1,  # just above the carina
        "base": int(gas_slices[-1]) if gas_slices.size else int(lung_slices[0]) + 2,
    }
    values = np.nan_to_num(hu.values, nan=-2000.0)
    for view, k in picks.items():
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.imshow(values[k], cmap="gray", vmin=-1350, vmax=150)
        for mask, colour in ((labels[k] == RIGHT, "red"), (labels[k] == LEFT, "lime"), (trachea[k], "cyan"),
                             (gas[k], "yellow")):  # fmt: skip
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=colour, linewidths=0.8)
        ax.set_title(f"{name} {view}: slice {k} (z {float(hu['position_z_mm'].values[k]):.0f} mm)", fontsize=9)
        ax.axis("off")
        path = test_output / f"lungs_{name}_{view}.png"
        fig.savefig(path, dpi=60, bbox_inches="tight")
        plt.close(fig)
        assert path.stat().st_size > 5_000
