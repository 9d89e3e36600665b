"""Figures and views: content checked on rendered pixels and drawn data, laziness counted.

Expected values come from the data (numpy on the HU arrays, scipy labelling,
the DICOM LINEAR window formula written out here), never from ctframe.plot.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import dask
import numpy as np
import pandas as pd
import pydicom
import pytest
import xarray as xr
from _figure_checks import assert_legible
from dask.callbacks import Callback
from dask.utils import key_split
from PIL import Image
from scipy import ndimage

import ctframe
from ctframe import plot
from ctframe.cohort import open_cohort, summarize
from ctframe.errors import ParameterError
from ctframe.testing import raise_if_dask_computes, write_phantom_cohort

LUNG_LEVEL, LUNG_WIDTH = -600.0, 1500.0


def linear_window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR, written out independently of ctframe.window."""
    y = (hu - (level - 0.5)) / (width - 1) + 0.5
    y = np.where(hu <= level - 0.5 - (width - 1) / 2, 0.0, y)
    y = np.where(hu > level - 0.5 + (width - 1) / 2, 1.0, y)
    return y


class ReadCounter(Callback):
    """Count the DICOM read tasks dask runs (one per chunk of slices)."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list = []

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if key_split(key) == "read-dicom":
            self.keys.append(key)


def png_pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def to_png_rows_cols(fig, ax, x_mm: np.ndarray, y_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PNG pixel (row, col) of data points (x, y in mm) drawn on `ax` of a figure saved at its own dpi."""
    display = ax.transData.transform(np.column_stack([x_mm, y_mm]))
    height = fig.bbox.height
    return np.floor(height - display[:, 1]).astype(int), np.floor(display[:, 0]).astype(int)


def axes_labelled(fig, label: str):
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, [ax.get_label() for ax in fig.axes]
    return found[0]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lidc(lidc_dir: Path) -> xr.DataArray:
    return ctframe.open_series(lidc_dir)


@pytest.fixture(scope="module")
def cohort_summary(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("plot-cohort")
    write_phantom_cohort(root, n_patients=2, n_time_points=2, shape=(24, 64, 64), spacing_mm=(10.0, 5.0, 5.0))
    cohort = open_cohort(root)
    return cohort, summarize(cohort, progress=False)


def _lungs(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right and left lung of an axial HU slice: air not connected to the image border, two largest pieces."""
    air = np.isnan(hu) | (np.nan_to_num(hu, nan=-2000.0) < -400)
    labels, n = ndimage.label(air)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    sizes = ndimage.sum(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    inside = [k + 1 for k in np.argsort(sizes)[::-1] if k + 1 not in border]
    first, second = (labels == inside[0]), (labels == inside[1])
    # Patient right (LPS x < 0) is at small column indices in a standard axial series.
    if ndimage.center_of_mass(first)[1] > ndimage.center_of_mass(second)[1]:
        first, second = second, first
    return first, second


# --------------------------------------------------------------------------- static figures on LIDC


@pytest.mark.realdata
def test_plot_axial_slice__lidc_lung_dark_mediastinum_bright(lidc, test_output):
    fig = plot.plot_axial_slice(lidc, preset="lung")
    path = plot.save_figure(fig, test_output / "plot_axial_slice_lidc.png", dpi=100)
    pixels = png_pixels(path)
    assert pixels.shape[:2] == (round(fig.bbox.height), round(fig.bbox.width))
    assert pixels.shape[1] >= 1000 and pixels.shape[0] >= 300
    gray = pixels.mean(axis=2)

    middle = lidc.sizes["slice"] // 2
    hu = ctframe.to_hu(lidc).isel(slice=middle).values
    right, left = _lungs(hu)
    assert right.sum() > 5000 and left.sum() > 5000  # both lungs cut at mid-chest
    ax = axes_labelled(fig, "windowed")
    cols_mm, rows_mm = lidc["col"].values, lidc["row"].values

    lungs = ndimage.binary_erosion(right | left, iterations=4)
    r, c = np.nonzero(lungs)
    pr, pc = to_png_rows_cols(fig, ax, cols_mm[c], rows_mm[r])
    lung_gray = float(np.median(gray[pr, pc]))

    # Mediastinum: tissue above -100 HU (heart, contrast-filled vessels, soft tissue) in the middle half of the
    # band between the lung centroids, from the lungs' front to their centroids (the spine lies further back).
    (r1, c1), (r2, c2) = ndimage.center_of_mass(right), ndimage.center_of_mass(left)
    rows, cols = np.indices(hu.shape)
    front = np.nonzero((right | left).any(axis=1))[0][0]
    band = (cols > c1 + (c2 - c1) / 4) & (cols < c2 - (c2 - c1) / 4) & (rows > front) & (rows < (r1 + r2) / 2)
    soft = band & (np.nan_to_num(hu, nan=-2000.0) > -100)
    soft = ndimage.binary_erosion(soft, iterations=2)
    assert soft.sum() > 1000, "a slice through the heart has a large soft-tissue mediastinum"
    r, c = np.nonzero(soft)
    pr, pc = to_png_rows_cols(fig, ax, cols_mm[c], rows_mm[r])
    mediastinum_gray = float(np.median(gray[pr, pc]))
    expected_mediastinum = 255 * float(np.median(linear_window(hu[soft], LUNG_LEVEL, LUNG_WIDTH)))

    # Outside the reconstruction circle (NaN fill) is black, as on a scanner's screen.
    corner_r, corner_c = to_png_rows_cols(fig, ax, cols_mm[[5]], rows_mm[[5]])
    assert np.isnan(hu[5, 5])
    corner_gray = float(gray[corner_r[0], corner_c[0]])

    expected_lung = 255 * float(np.median(linear_window(hu[lungs], LUNG_LEVEL, LUNG_WIDTH)))
    print(f"lung {lung_gray:.0f} (window formula {expected_lung:.0f}, {lungs.sum()} px, median "
          f"{np.median(hu[lungs]):.0f} HU), mediastinum {mediastinum_gray:.0f} (formula {expected_mediastinum:.0f}, "
          f"{soft.sum()} px, median {np.median(hu[soft]):.0f} HU), outside {corner_gray:.0f}")  # fmt: skip
    assert lung_gray < 110
    assert mediastinum_gray > 200
    assert abs(lung_gray - expected_lung) < 12
    assert abs(mediastinum_gray - expected_mediastinum) < 12
    assert corner_gray < 10
    # The other two panels hold non-constant pictures too.
    for label in ("stored", "hu"):
        box = axes_labelled(fig, label).get_window_extent()
        crop = gray[int(pixels.shape[0] - box.y1) : int(pixels.shape[0] - box.y0), int(box.x0) : int(box.x1)]
        assert crop.std() > 20


@pytest.mark.realdata
def test_plot_planes__lidc_coronal_physical_aspect_head_up(lidc, test_output):
    fig = plot.plot_planes({"LIDC": lidc}, plane="coronal", preset="lung")
    path = plot.save_figure(fig, test_output / "plot_planes_lidc_coronal.png")
    gray = png_pixels(path).mean(axis=2)
    ax = axes_labelled(fig, "LIDC")
    box = ax.get_window_extent()
    height_mm = lidc.sizes["slice"] * float(np.median(np.diff(lidc["slice"].values)))
    width_mm = lidc.sizes["col"] * float(np.median(np.diff(lidc["col"].values)))
    assert box.height / box.width == pytest.approx(height_mm / width_mm, rel=0.02)
    assert box.height / box.width > 0.8  # the notebook's aspect-free plane was 133/512 = 0.26

    # Head up: the half of the plane holding more lung (superior here) is drawn in the upper half.
    hu = ctframe.to_hu(lidc).isel(row=lidc.sizes["row"] // 2).values  # (slice, col)
    lung = np.nan_to_num(hu, nan=0.0) < -600
    n = hu.shape[0]
    z = lidc["slice"].values
    lung_high_z = lung[z > np.median(z)].sum() > lung[z <= np.median(z)].sum()
    height = gray.shape[0]
    crop = gray[int(height - box.y1) : int(height - box.y0), int(box.x0) : int(box.x1)]
    upper_darker = crop[: crop.shape[0] // 2].mean() < crop[crop.shape[0] // 2 :].mean()
    assert n == lidc.sizes["slice"]
    assert lung_high_z  # LIDC runs from the upper abdomen (z = -340) to the apex (z = -10)
    assert upper_darker
    assert crop.std() > 20


@pytest.mark.realdata
def test_plot_mip__lidc_notebook_slabs_match_numpy(lidc, lidc_dir):
    hu = ctframe.to_hu(lidc)
    volume = hu.values
    n_slice, n_row = volume.shape[:2]
    # The slabs in mm, from the DICOM headers (pydicom), not from ctframe's coordinates.
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(lidc_dir.glob("*.dcm"))]
    z = np.sort([float(h.ImagePositionPatient[2]) for h in headers])  # axial HFS: the normal is +z
    row_mm = float(headers[0].PixelSpacing[0])
    cases = [("coronal", 40, "row", 1), ("axial", 50, "slice", 0)]
    for plane, slab, dim, axis in cases:
        fig = plot.plot_mip({"LIDC": hu}, plane=plane, slab=slab)
        n = {"slice": n_slice, "row": n_row}[dim]
        start = (n - slab) // 2
        title = axes_labelled(fig, "LIDC").get_title()
        if dim == "row":
            thickness, ends = slab * row_mm, (start * row_mm, (start + slab - 1) * row_mm)
            where = "row"
        else:
            thickness, ends = slab * float(np.median(np.diff(z))), (z[start], z[start + slab - 1])
            where = "position"
        assert f"MIP of a {thickness:.1f} mm slab, {where} {ends[0]:.1f} to {ends[1]:.1f} mm" in title, title
        assert "[" not in title and "slab" in fig.get_suptitle() and f"{thickness:.1f} mm" in fig.get_suptitle()
        taken = np.take(volume, np.arange(start, start + slab), axis=axis)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # rays of NaN fill only: NaN, as documented
            expected = linear_window(np.nanmax(taken, axis=axis), LUNG_LEVEL, LUNG_WIDTH)
        drawn = axes_labelled(fig, "LIDC").get_images()[0].get_array()
        assert drawn.shape == expected.shape
        np.testing.assert_allclose(np.ma.filled(drawn, np.nan), expected, atol=1e-6)
        assert np.nanstd(expected) > 0.05


# --------------------------------------------------------------------------- static figures on phantoms


def test_plot_histogram_grid__counts_match_numpy_without_padding(cohort_summary, test_output):
    cohort, summary = cohort_summary
    patients = sorted(cohort.selected["patient_key"].unique())
    middle_slice = ctframe.to_hu(cohort.volumes[cohort.selected["stack_key"].iloc[0]])
    slice_hu = middle_slice.isel(slice=middle_slice.sizes["slice"] // 2)
    fig = plot.plot_histogram_grid(summary.histograms, patients=patients, slice_hu=slice_hu, range_hu=(-1100, 1200))
    plot.save_figure(fig, test_output / "plot_histogram_grid_phantom.png")
    assert [ax.get_label() for ax in fig.axes] == ["slice", "A", "B", "both"]

    def values_of(patient: str) -> np.ndarray:
        keys = cohort.selected.loc[cohort.selected["patient_key"] == patient, "stack_key"]
        values = np.concatenate([ctframe.to_hu(cohort.volumes[k]).values.ravel() for k in keys])
        return values[np.isfinite(values)]

    def drawn(ax) -> tuple[np.ndarray, np.ndarray]:
        patch = ax.patches[0]
        data = patch.get_data()
        return np.asarray(data.values), np.asarray(data.edges)

    for label, patient in zip(("A", "B"), patients, strict=True):
        counts, edges = drawn(axes_labelled(fig, label))
        assert edges[0] >= -1100 and edges[-1] <= 1200
        values = values_of(patient)
        expected, _ = np.histogram(values[values < edges[-1]], bins=edges)
        np.testing.assert_array_equal(counts, expected)
    counts, edges = drawn(axes_labelled(fig, "slice"))
    values = slice_hu.values[np.isfinite(slice_hu.values)]
    np.testing.assert_array_equal(counts, np.histogram(values[values < edges[-1]], bins=edges)[0])
    # The phantom pads outside its circle with -2000 HU: never counted, never drawn.
    assert np.isnan(ctframe.to_hu(cohort.volumes[cohort.selected["stack_key"].iloc[0]]).values).any()
    together = [p for p in axes_labelled(fig, "both").patches if p.get_label() == "together"]
    both = np.asarray(together[0].get_data().values)
    assert both.sum() == sum(drawn(axes_labelled(fig, k))[0].sum() for k in ("A", "B"))


def test_plot_histogram_grid__unknown_patient(cohort_summary):
    _, summary = cohort_summary
    with pytest.raises(ParameterError, match="have no 'scan' histogram"):
        plot.plot_histogram_grid(summary.histograms, patients=["P-nobody"])


def test_plot_mask_overlay__truth_labels_at_apex_middle_base(small_phantom, test_output):
    volume = ctframe.open_series(small_phantom.folder)
    hu = ctframe.to_hu(volume)
    truth = np.where(np.isin(small_phantom.labels, [1, 2]), small_phantom.labels, 0).astype(np.int8)
    labels = xr.DataArray(truth, dims=hu.dims, coords={d: hu[d] for d in hu.dims})
    fig = plot.plot_mask_overlay(hu, labels)
    path = plot.save_figure(fig, test_output / "plot_mask_overlay_phantom.png")
    rgb = png_pixels(path)

    present = np.flatnonzero(truth.any(axis=(1, 2)))
    low, high = present[0], present[-1]
    z = hu["slice"].values
    assert z[-1] > z[0]  # slice positions ascend towards the head in this phantom
    chosen = {}
    for name in ("apex", "middle", "base"):
        title = axes_labelled(fig, name).get_title()
        chosen[name] = int(title.split("slice ")[1].split()[0])
    extent = high - low
    assert high - 0.1 * extent <= chosen["apex"] <= high
    assert low <= chosen["base"] <= low + 0.1 * extent
    assert abs(chosen["middle"] - (low + high) / 2) <= 1
    assert truth[chosen["apex"]].any() and truth[chosen["base"]].any()

    ax = axes_labelled(fig, "middle")
    for value, warm in ((1, False), (2, True)):  # right lung blue, left lung orange
        r, c = (round(v) for v in ndimage.center_of_mass(truth[chosen["middle"]] == value))
        pr, pc = to_png_rows_cols(fig, ax, hu["col"].values[[c]], hu["row"].values[[r]])
        red, _, blue = rgb[pr[0], pc[0]]
        assert (red > blue + 30) if warm else (blue > red + 30), (value, rgb[pr[0], pc[0]])


def test_plot_mask_overlay__rejects_other_grid(small_phantom):
    hu = ctframe.to_hu(ctframe.open_series(small_phantom.folder))
    with pytest.raises(ParameterError, match="pass labels on its grid"):
        plot.plot_mask_overlay(hu, xr.zeros_like(hu.isel(slice=slice(0, 3)), dtype=np.int8))


def test_plot_lung_volumes__bars_are_the_region_volumes(cohort_summary, test_output):
    _, summary = cohort_summary
    fig = plot.plot_lung_volumes(summary.regions)
    plot.save_figure(fig, test_output / "plot_lung_volumes_phantom.png")
    bars = fig.axes[0].patches
    n_series = summary.regions["series"].nunique()
    assert len(bars) == 2 * n_series
    heights = sorted(round(b.get_width(), 6) for b in bars)  # horizontal bars: the length is the volume
    table = summary.regions[summary.regions["region"].isin(["right_lung", "left_lung"])]
    assert heights == sorted(round(v, 6) for v in table["volume_ml"])


def test_plot_lung_volumes__needs_lung_regions(cohort_summary):
    _, summary = cohort_summary
    with pytest.raises(ParameterError, match="no lung regions"):
        plot.plot_lung_volumes(summary.regions[summary.regions["region"] == "scan"])


def test_plot_lung_area__lines_are_the_slice_areas(cohort_summary, test_output):
    _, summary = cohort_summary
    fig = plot.plot_lung_area(summary.slice_areas, region="lungs")
    path = plot.save_figure(fig, test_output / "plot_lung_area_phantom.png")
    assert png_pixels(path).std() > 10
    lines = fig.axes[0].lines
    rows = summary.slice_areas[summary.slice_areas["region"] == "lungs"]
    assert len(lines) == rows["series"].nunique()
    drawn = np.sort(np.concatenate([line.get_ydata() for line in lines]))
    np.testing.assert_allclose(drawn, np.sort(rows["area_mm2"].to_numpy()))
    assert drawn.max() > 1000  # mm², not pixel counts (5 x 5 mm pixels)


def test_plot_longitudinal__one_panel_per_measure(cohort_summary):
    _, summary = cohort_summary
    fig = plot.plot_longitudinal(summary.longitudinal, measures=["lung_volume_ml", "lung_haa_pct"])
    assert [ax.get_label() for ax in fig.axes] == ["lung_volume_ml", "lung_haa_pct"]
    ax = axes_labelled(fig, "lung_haa_pct")
    assert len(ax.lines) == summary.longitudinal["patient_key"].nunique()
    rows = summary.longitudinal[summary.longitudinal["measure"] == "lung_haa_pct"]
    np.testing.assert_allclose(np.sort(np.concatenate([ln.get_ydata() for ln in ax.lines])), np.sort(rows["value"]))


def test_plot_longitudinal__unknown_measure(cohort_summary):
    _, summary = cohort_summary
    with pytest.raises(ParameterError, match="unknown measure"):
        plot.plot_longitudinal(summary.longitudinal, measures=["shoe_size"])


def test_plot_images__draws_physical_extent(test_output):
    plane = xr.DataArray(
        np.linspace(-1000, 200, 12, dtype=np.float32).reshape(3, 4),
        dims=("slice", "col"),
        coords={"slice": [0.0, 5.0, 10.0], "col": np.arange(4) * 1.25},
        attrs={"units": "HU"},
    )
    fig = plot.plot_images({"p": plane}, preset="lung")
    plot.save_figure(fig, test_output / "plot_images_extent.png")
    box = fig.axes[0].get_window_extent()
    assert box.height / box.width == pytest.approx(15.0 / 5.0, rel=0.02)
    left, right, bottom, top = fig.axes[0].get_images()[0].get_extent()
    assert (left, right) == (-0.625, 4.375) and sorted((bottom, top)) == [-2.5, 12.5]


def test_plot_images__rejects_volumes():
    with pytest.raises(ParameterError, match="pass 2-D planes"):
        plot.plot_images({"v": xr.DataArray(np.zeros((2, 2, 2)), dims=("slice", "row", "col"))})


def test_plot_axial_slice__rejects_hu(small_phantom):
    hu = ctframe.to_hu(ctframe.open_series(small_phantom.folder))
    with pytest.raises(ParameterError, match="before to_hu"):
        plot.plot_axial_slice(hu)


def test_plot_axial_slice__computes_one_chunk(small_phantom):
    volume = ctframe.open_series(small_phantom.folder, slices_per_chunk=4)
    with ReadCounter() as counter:
        plot.plot_axial_slice(volume, index=9)
    assert [k[1] for k in counter.keys] == [9 // 4]


def test_save_figure__png_size_and_content(small_phantom, tmp_path):
    volume = ctframe.open_series(small_phantom.folder)
    fig = plot.plot_planes(volume, plane="sagittal")
    path = plot.save_figure(fig, tmp_path / "sagittal.png", dpi=50)
    width, height = fig.get_size_inches() * 50
    pixels = png_pixels(path)
    assert pixels.shape[:2] == (round(height), round(width))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
    with pytest.raises(ParameterError, match="dpi"):
        plot.save_figure(fig, tmp_path / "x.png", dpi=0)


# --------------------------------------------------------------------------- interactive views


def test_browse__building_computes_nothing(small_phantom):
    import holoviews as hv

    volume = ctframe.open_series(small_phantom.folder)
    with raise_if_dask_computes():
        view = plot.browse(volume, plane="axial", preset="lung")
    assert isinstance(view, hv.DynamicMap)
    assert [d.name for d in view.kdims] == ["index", "preset"]
    assert view.kdims[0].range == (0, volume.sizes["slice"] - 1)
    assert "lung" in view.kdims[1].values and "bone" in view.kdims[1].values


def test_browse__axial_frame_reads_one_slice(small_phantom):
    import holoviews as hv

    volume = ctframe.open_series(small_phantom.folder, slices_per_chunk=1)
    view = plot.browse(volume, plane="axial")
    with raise_if_dask_computes(max_computes=1), ReadCounter() as counter:
        frame = view[7, "lung"]
    assert [k[1:] for k in counter.keys] == [(7, 0, 0)]
    assert isinstance(frame, hv.Image)
    assert [d.name for d in frame.kdims] == ["col", "row"]
    shown = frame.dimension_values(2, flat=False)
    assert shown.shape == (volume.sizes["row"], volume.sizes["col"])
    hu = ctframe.to_hu(volume).isel(slice=7).values
    expected = linear_window(hu, LUNG_LEVEL, LUNG_WIDTH)
    # hvplot may store rows bottom-up; compare as sets of rows either way.
    assert np.allclose(shown, expected, equal_nan=True) or np.allclose(shown[::-1], expected, equal_nan=True)
    hv.render(frame, backend="bokeh")  # a real bokeh figure can be made from it


def test_browse__preset_selector_changes_window(small_phantom):
    volume = ctframe.open_series(small_phantom.folder)
    view = plot.browse(volume)
    lung = view[10, "lung"].dimension_values(2)
    bone = view[10, "bone"].dimension_values(2)
    hu = np.sort(ctframe.to_hu(volume).isel(slice=10).values.ravel())
    assert np.nanmean(lung) > np.nanmean(bone)  # air and soft tissue are darker in the bone window
    assert np.nanmax(np.abs(np.sort(lung) - np.sort(linear_window(hu, LUNG_LEVEL, LUNG_WIDTH)))) < 1e-6


def test_browse__coronal_with_mask_one_compute(small_phantom):
    import holoviews as hv

    volume = ctframe.open_series(small_phantom.folder, slices_per_chunk=4)
    truth = np.where(np.isin(small_phantom.labels, [1, 2]), small_phantom.labels, 0).astype(np.int8)
    mask = xr.DataArray(dask.array.from_array(truth, chunks=(4, -1, -1)), dims=volume.dims)
    view = plot.browse(volume, plane="coronal", mask=mask)
    row = volume.sizes["row"] // 2
    with raise_if_dask_computes(max_computes=1):
        frame = view[row, "mediastinum"]
    assert isinstance(frame, hv.Overlay)
    image, overlay = frame.values()
    assert [d.name for d in image.kdims] == ["col", "slice"]
    assert image.dimension_values(2, flat=False).shape == (volume.sizes["slice"], volume.sizes["col"])
    drawn = overlay.dimension_values(2)
    assert set(np.unique(drawn[np.isfinite(drawn)])) == set(np.unique(truth[:, row][truth[:, row] > 0]))


def test_browse__rejects_unknown_preset(small_phantom):
    with pytest.raises(ParameterError, match="preset must be one of"):
        plot.browse(ctframe.open_series(small_phantom.folder), preset="disco")


def test_histogram_view__one_curve_per_patient(cohort_summary):
    import holoviews as hv

    _, summary = cohort_summary
    view = plot.histogram_view(summary.histograms, by="patient", region="lungs", range_hu=(-1000, 0))
    assert isinstance(view, hv.NdOverlay)
    patients = sorted(summary.regions["patient_key"].unique())
    assert sorted(view.keys()) == patients
    table = summary.histograms
    rows = table[(table["level"] == "patient") & (table["region"] == "lungs") & (table["patient_key"] == patients[0])]
    rows = rows[np.isfinite(rows["bin_left_hu"]) & np.isfinite(rows["bin_right_hu"])]
    percent = 100 * rows["count"] / rows["count"].sum() / (rows["bin_right_hu"] - rows["bin_left_hu"])
    inside = (rows["bin_left_hu"] >= -1000) & (rows["bin_right_hu"] <= 0)
    curve = view[patients[0]]
    np.testing.assert_allclose(curve.dimension_values("percent_per_hu"), percent[inside].to_numpy())


def test_histogram_view__unknown_level(cohort_summary):
    _, summary = cohort_summary
    with pytest.raises(ParameterError, match="by must be"):
        plot.histogram_view(summary.histograms, by="cohort")


def test_lung_area_view__curve_per_scan(cohort_summary):
    import holoviews as hv

    _, summary = cohort_summary
    view = plot.lung_area_view(summary.slice_areas)
    assert isinstance(view, hv.NdOverlay)
    assert len(view) == summary.slice_areas["series"].nunique()
    first = next(iter(view.values()))
    assert [d.name for d in first.kdims] == ["slice_position_mm"]
    assert [d.name for d in first.vdims] == ["area_mm2"]


def test_lung_area_view__unknown_region(cohort_summary):
    _, summary = cohort_summary
    with pytest.raises(ParameterError, match="no rows for region"):
        plot.lung_area_view(summary.slice_areas, region="spleen")


def test_longitudinal_view__panel_per_measure(cohort_summary):
    import holoviews as hv

    _, summary = cohort_summary
    view = plot.longitudinal_view(summary.longitudinal)
    assert isinstance(view, hv.NdLayout)
    assert sorted(key[0] for key in view.data) == sorted(summary.longitudinal["measure"].unique())
    panel = view.data[("lung_volume_ml",)]
    assert len(panel.get(0)) == summary.longitudinal["patient_key"].nunique()  # one curve per patient
    for measure, (title, unit) in [("lung_volume_ml", ("Lung volume", "mL")), ("lung_hu_mean", (None, "HU"))]:
        rendered = hv.render(view.data[(measure,)])  # the bokeh figure a notebook would show
        assert "_" not in rendered.title.text and (title is None or rendered.title.text == title)
        assert rendered.yaxis[0].axis_label == unit
        assert rendered.xaxis[0].axis_label == "days since baseline"


def test_longitudinal_view__empty_table():
    empty = pd.DataFrame(columns=["patient_key", "days_since_baseline", "measure", "value"])
    with pytest.raises(ParameterError, match="longitudinal table is empty"):
        plot.longitudinal_view(empty)


def test_import_ctframe__no_plotting_libraries():
    code = (
        "import sys, ctframe, ctframe.plot, ctframe.report; "
        "print(sorted(m for m in ('holoviews', 'hvplot', 'bokeh', 'panel', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_browse__accessor_delegates(small_phantom):
    volume = ctframe.open_series(small_phantom.folder)
    view = volume.ct.browse(plane="sagittal")
    assert [d.name for d in view[3, "lung"].kdims] == ["row", "slice"]


# --------------------------------------------------------------------------- patient directions on image axes

LPS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))


def expected_letters(direction) -> str:
    """DICOM patient-direction letters of an LPS vector (PS3.3 C.7.6.1.1.1), largest component first.

    Components of at least 0.25 add their letter, as documented in docs/figures.md.
    """
    v = np.asarray(direction, float)
    v = v / np.linalg.norm(v)
    order = sorted(range(3), key=lambda k: -abs(v[k]))
    return "".join(LPS_LETTERS[k][0 if v[k] > 0 else 1] for i, k in enumerate(order) if i == 0 or abs(v[k]) >= 0.25)


def edge_texts(ax) -> dict[str, str]:
    found = {t.get_gid(): t.get_text() for t in ax.texts if str(t.get_gid()).startswith("direction-")}
    return {k.removeprefix("direction-"): v for k, v in found.items()}


def drawn_axes(ax) -> tuple[bool, bool]:
    """Whether the drawn x data grows to the right and y data grows upwards (matplotlib's axis limits)."""
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    return x1 > x0, y1 > y0


def assert_directions(ax, right_dir, up_dir) -> None:
    """The edge letters and axis labels of `ax` give the patient directions `right_dir` and `up_dir` (LPS)."""
    right, up = np.asarray(right_dir, float), np.asarray(up_dir, float)
    edges = edge_texts(ax)
    want = {"right": expected_letters(right), "left": expected_letters(-right),
            "top": expected_letters(up), "bottom": expected_letters(-up)}  # fmt: skip
    assert edges == want
    assert ax.get_xlabel().endswith(f"{want['left']} \u2190 \u2192 {want['right']}"), ax.get_xlabel()
    assert ax.get_ylabel().endswith(f"{want['bottom']} \u2190 \u2192 {want['top']}"), ax.get_ylabel()


def dicom_headers(files) -> list:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def iop(header) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray([float(v) for v in header.ImageOrientationPatient])
    return values[:3], values[3:]


def heart_and_table_side(ax) -> tuple[str, str]:
    """Screen side of the heart (left/right) and of the scanner table (top/bottom) in the HU image on `ax`.

    From the drawn pixels and matplotlib's own mapping of them (extent, transData), nothing from ctframe: the
    heart is the soft tissue (0..200 HU) between the lungs away from the lung edges; the table is the second
    largest dense (> -500 HU) piece, under the supine patient (the largest is the body).
    """
    image = ax.get_images()[0]
    hu = np.ma.filled(image.get_array(), np.nan).astype(float)
    air = np.nan_to_num(hu, nan=-2000.0) < -400
    labels, n = ndimage.label(air)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    sizes = ndimage.sum(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    lungs = np.isin(labels, [k + 1 for k in np.argsort(sizes)[::-1] if k + 1 not in border][:2])
    rows, cols = np.nonzero(lungs.any(axis=1))[0], np.nonzero(lungs.any(axis=0))[0]
    box = np.zeros_like(lungs)
    box[rows[0] : rows[-1], cols[0] : cols[-1]] = True
    away = box & ~ndimage.binary_dilation(lungs, iterations=3)
    heart = np.argwhere(away & (hu > 0) & (hu < 200)).mean(axis=0)
    dense = np.nan_to_num(hu, nan=-2000.0) > -500
    pieces, m = ndimage.label(dense)
    by_size = np.argsort(ndimage.sum(dense, pieces, index=np.arange(1, m + 1)))[::-1]
    table = np.argwhere(pieces == by_size[1] + 1).mean(axis=0)
    left, right, bottom, top = image.get_extent()
    n_rows, n_cols = hu.shape

    def to_display(point):
        # imshow: array column j spans left + (j, j + 1) * (right - left) / n_cols; row i counts from `top`
        # downwards with origin="upper", from `bottom` upwards with origin="lower".
        x = left + (point[1] + 0.5) * (right - left) / n_cols
        if image.origin == "upper":
            y = top + (point[0] + 0.5) * (bottom - top) / n_rows
        else:
            y = bottom + (point[0] + 0.5) * (top - bottom) / n_rows
        return ax.transData.transform((x, y))

    centre = ax.transAxes.transform((0.5, 0.5))
    heart_xy, table_xy = to_display(heart), to_display(table)
    return ("right" if heart_xy[0] > centre[0] else "left"), ("top" if table_xy[1] > centre[1] else "bottom")


def write_restored(files, folder: Path, *, flip_cols: bool, flip_rows: bool) -> Path:
    """Rewrite real slices with the same anatomy stored the other way round.

    Pixel columns (rows) reversed, the row (column) direction cosines negated and ImagePositionPatient moved
    to the new first pixel: every voxel keeps its patient position, only the storage order changes (with
    ``flip_cols`` an axial HFS series becomes the layout of a feet-first one).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        row_dir, col_dir = iop(ds)
        position = np.asarray([float(v) for v in ds.ImagePositionPatient])
        spacing_row, spacing_col = (float(v) for v in ds.PixelSpacing)
        if flip_cols:
            pixels = pixels[:, ::-1]
            position = position + row_dir * (ds.Columns - 1) * spacing_col
            row_dir = -row_dir
        if flip_rows:
            pixels = pixels[::-1, :]
            position = position + col_dir * (ds.Rows - 1) * spacing_row
            col_dir = -col_dir
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.save_as(folder / f"{k:03d}.dcm")
    return folder


@pytest.fixture(scope="module")
def lidc_middle_files(lidc_dir: Path) -> list[Path]:
    """The 5 LIDC slices around the middle of the stack (by ImagePositionPatient z)."""
    files = sorted(lidc_dir.glob("*.dcm"))
    z = [float(h.ImagePositionPatient[2]) for h in dicom_headers(files)]
    order = np.argsort(z)
    middle = len(files) // 2
    return [files[i] for i in order[middle - 2 : middle + 3]]


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("flip_cols", "flip_rows"), [(False, False), (True, False), (False, True), (True, True)],
    ids=["as-stored", "row-direction-flipped", "column-direction-flipped", "both-flipped"],
)  # fmt: skip
def test_direction_labels__lidc_restored_keep_anatomy(lidc_middle_files, tmp_path, test_output, flip_cols, flip_rows):
    folder = write_restored(lidc_middle_files, tmp_path / "restored", flip_cols=flip_cols, flip_rows=flip_rows)
    volume = ctframe.open_series(folder)
    fig = plot.plot_axial_slice(volume, index=2)
    name = "_".join(["flipcols"] * flip_cols + ["fliprows"] * flip_rows) or "asstored"
    plot.save_figure(fig, test_output / f"plot_directions_lidc_{name}.png", dpi=60)
    header = pydicom.dcmread(sorted(folder.iterdir())[0], stop_before_pixels=True)
    row_dir, col_dir = iop(header)
    for label in ("stored", "hu", "windowed"):
        ax = axes_labelled(fig, label)
        grows_right, grows_up = drawn_axes(ax)
        # col index grows along the row direction cosines, row index along the column direction cosines
        assert_directions(ax, row_dir if grows_right else -row_dir, col_dir if grows_up else -col_dir)
    # The anatomy agrees with the letters however the pixels are stored: the heart on the patient's left,
    # the table under the supine patient (posterior).
    ax = axes_labelled(fig, "hu")
    heart, table = heart_and_table_side(ax)
    edges = edge_texts(ax)
    assert edges[heart] == "L", (heart, edges)
    assert edges[table] == "P", (table, edges)
    # and the storage flips did move heart and table on screen (the test is not vacuous)
    assert heart == ("left" if flip_cols else "right")
    assert table == ("top" if flip_rows else "bottom")


@pytest.mark.realdata
@pytest.mark.parametrize("plane", ["coronal", "sagittal"])
def test_direction_labels__covid_single_slices(shared_data, plane, test_output):
    """Single coronal and sagittal slices (GE and Toshiba, one slightly oblique): letters from their own IOP."""
    files = sorted((shared_data / "covid19-ny-sbu-slices").glob(f"*/{plane}/*.dcm"))[:4]
    assert len(files) == 4
    for k, path in enumerate(files):
        volume = ctframe.open_series([path])
        fig = plot.plot_axial_slice(volume)
        if k == 0:
            plot.save_figure(fig, test_output / f"plot_directions_covid_{plane}.png", dpi=60)
        row_dir, col_dir = iop(dicom_headers([path])[0])
        ax = axes_labelled(fig, "windowed")
        grows_right, grows_up = drawn_axes(ax)
        assert_directions(ax, row_dir if grows_right else -row_dir, col_dir if grows_up else -col_dir)
        edges = edge_texts(ax)
        # these slices are stored with the head up, and coronal ones with the patient's right on the left
        assert edges["top"] == "S" and edges["bottom"] == "I"
        assert (edges["left"], edges["right"]) == (("R", "L") if plane == "coronal" else ("A", "P"))


@pytest.mark.realdata
def test_direction_labels__tilted_series_reformat(shared_data, test_output):
    """Gantry tilt -18.5 degrees: tilted rows (letters 'AS'/'PI') and a slice axis along the table (S/I)."""
    folder = shared_data / "dcm_qa_ct" / "Philips_S21610_S2010_tilt-18.5"
    headers = dicom_headers(sorted(folder.iterdir()))
    row_dir, col_dir = iop(headers[0])
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    positions = positions[np.argsort(positions @ normal)]
    step = positions[-1] - positions[0]  # the slices step along the table, not along the tilted normal
    assert abs(step[2]) / np.linalg.norm(step) > 0.99 and abs(normal[1]) > 0.3
    with pytest.warns(ctframe.errors.QCWarning, match="gantry tilt"):
        volume = ctframe.open_series(folder)
    fig = plot.plot_axial_slice(volume)
    ax = axes_labelled(fig, "windowed")
    grows_right, grows_up = drawn_axes(ax)
    assert_directions(ax, row_dir if grows_right else -row_dir, col_dir if grows_up else -col_dir)
    assert {edge_texts(ax)["top"], edge_texts(ax)["bottom"]} == {"AS", "PI"}
    fig = plot.plot_planes({"tilt": volume}, plane="coronal")
    plot.save_figure(fig, test_output / "plot_directions_tilt_coronal.png", dpi=60)
    ax = axes_labelled(fig, "tilt")
    grows_right, grows_up = drawn_axes(ax)
    assert_directions(ax, row_dir if grows_right else -row_dir, step if grows_up else -step)
    assert edge_texts(ax)["top"] == "S"  # head up


# --------------------------------------------------------------------------- legible with 1 and with 50 scans


@pytest.fixture(scope="module")
def one_scan_summary(tmp_path_factory: pytest.TempPathFactory):
    """A real summary of a cohort of one patient with one scan."""
    root = tmp_path_factory.mktemp("one-scan")
    write_phantom_cohort(root, n_patients=1, n_time_points=1, shape=(24, 64, 64), spacing_mm=(10.0, 5.0, 5.0))
    return summarize(open_cohort(root), progress=False)


def replicate_summary(summary, *, n_patients: int, scans_per_patient: int) -> SimpleNamespace:
    """Tables of a cohort of n_patients x scans_per_patient scans, built from a real summary's rows.

    Each new scan copies the rows of one real scan (round robin) under a new patient key, scan reference and
    date (37 days apart), its values scaled by a small factor so that the curves differ. Only the figures'
    legibility is tested on these tables, never a number.
    """
    real = list(dict.fromkeys(summary.regions["series"]))
    regions, areas, histograms, longitudinal = [], [], [], []
    base = pd.Timestamp("2020-01-06")
    k = 0
    for p in range(n_patients):
        patient = f"P-{p:012x}"
        for t in range(scans_per_patient):
            source, factor = real[k % len(real)], 1.0 + 0.02 * ((7 * k) % 11)
            k += 1
            series, date = f"s{k:03d}", (base + pd.Timedelta(days=37 * t + 3 * p)).strftime("%Y%m%d")
            names = {"patient_key": patient, "series": series, "study_date": date}
            part = summary.regions[summary.regions["series"] == source].assign(**names)
            regions.append(part.assign(volume_ml=part["volume_ml"] * factor))
            part = summary.slice_areas[summary.slice_areas["series"] == source].assign(**names)
            areas.append(part.assign(area_mm2=part["area_mm2"] * factor))
            part = summary.histograms[summary.histograms["series"] == source].assign(**names)
            histograms.append(part)
            if scans_per_patient > 1:  # as summarize: no longitudinal rows without a second scan
                part = summary.longitudinal[summary.longitudinal["series"] == source].assign(**names)
                longitudinal.append(part.assign(value=part["value"] * factor, days_since_baseline=37.0 * t))
        source_patient = summary.histograms.loc[summary.histograms["level"] == "patient", "patient_key"].iloc[0]
        rows = summary.histograms[(summary.histograms["level"] == "patient")]
        histograms.append(rows[rows["patient_key"] == source_patient].assign(patient_key=patient))
    return SimpleNamespace(
        regions=pd.concat(regions, ignore_index=True),
        slice_areas=pd.concat(areas, ignore_index=True),
        histograms=pd.concat(histograms, ignore_index=True),
        longitudinal=pd.concat(longitudinal, ignore_index=True) if longitudinal else summary.longitudinal.iloc[:0],
    )


def table_figures(tables) -> dict[str, tuple[object, str]]:
    """Every table figure of the report, with the axis that carries the values.

    The longitudinal figure only where the table has rows: a cohort without a second scan of anyone has
    none, and the report then draws no such figure (tests/test_report.py).
    """
    figures = {
        "histogram_grid": (plot.plot_histogram_grid(tables.histograms), "y"),
        "histograms_by_patient": (plot.plot_histograms(tables.histograms, by="patient", region="scan"), "y"),
        "histograms_lungs_by_scan": (plot.plot_histograms(tables.histograms, by="series", region="lungs"), "y"),
        "lung_area": (plot.plot_lung_area(tables.slice_areas, region="lungs"), "y"),
        "lung_volumes": (plot.plot_lung_volumes(tables.regions), "x"),
    }
    if not tables.longitudinal.empty:
        figures["longitudinal"] = (plot.plot_longitudinal(tables.longitudinal), "y")
    return figures


@pytest.mark.parametrize(
    ("n_patients", "scans_per_patient"), [(1, 1), (5, 10), (25, 2)],
    ids=["1-scan", "50-scans-of-5-patients", "50-scans-of-25-patients"],
)  # fmt: skip
def test_table_figures__legible_with_1_and_50_scans(
    one_scan_summary, cohort_summary, test_output, n_patients, scans_per_patient
):
    if n_patients == 1:
        tables = one_scan_summary  # the real summary itself
    else:
        tables = replicate_summary(cohort_summary[1], n_patients=n_patients, scans_per_patient=scans_per_patient)
    n_scans = n_patients * scans_per_patient
    assert tables.regions["series"].nunique() == n_scans
    for name, (fig, value_axis) in table_figures(tables).items():
        plot.save_figure(fig, test_output / f"figures_{n_patients}x{scans_per_patient}_{name}.png")
        assert_legible(fig, value_axis=value_axis, allow_inside_legend=name == "histogram_grid")
        if name == "lung_volumes":
            assert len(fig.axes[0].get_yticklabels()) == n_scans  # every scan named
    assert tables.longitudinal.empty == (scans_per_patient == 1 and n_patients == 1)
    grid = plot.plot_histogram_grid(tables.histograms)  # no slice-level rows in a default summary
    labels = [ax.get_label() for ax in grid.axes]
    assert labels == (["A"] if n_patients == 1 else ["A", "B", "both"])
    note = " ".join(t.get_text() for t in grid.texts if t.get_gid() == "note")
    assert "no single-slice panel" in note
    assert ("one patient" in note) == (n_patients == 1)


def test_plot_longitudinal__plain_titles_units_and_no_empty_panel(cohort_summary, test_output):
    _, summary = cohort_summary
    table = summary.longitudinal.copy()
    table.loc[table["measure"] == "lung_haa_pct", "value"] = np.nan  # a measure nobody has
    fig = plot.plot_longitudinal(table)
    plot.save_figure(fig, test_output / "plot_longitudinal_missing_measure.png")
    assert_legible(fig)
    drawn = [ax.get_label() for ax in fig.axes]
    assert "lung_haa_pct" not in drawn and "lung_volume_ml" in drawn
    note = " ".join(t.get_text() for t in fig.texts if t.get_gid() == "note")
    assert "High-attenuation area" in note and "not drawn" in note
    ax = axes_labelled(fig, "lung_volume_ml")
    assert ax.get_title() == "Lung volume" and ax.get_ylabel() == "mL"
    assert axes_labelled(fig, "lung_hu_mean").get_ylabel() == "HU"
    assert axes_labelled(fig, "lung_laa_950_pct").get_ylabel().startswith("%")
    table["value"] = np.nan
    with pytest.raises(ParameterError, match=r"no measure .* has a value"):
        plot.plot_longitudinal(table)


def test_browse__axis_labels_give_patient_directions(small_phantom):
    """The phantom is axial head-first supine (IOP 1,0,0,0,1,0): R to L across, A at the top, head up."""
    import holoviews as hv

    header = pydicom.dcmread(next(iter(sorted(Path(small_phantom.folder).glob("*.dcm")))), stop_before_pixels=True)
    row_dir, col_dir = iop(header)
    assert expected_letters(row_dir) == "L" and expected_letters(col_dir) == "P"
    volume = ctframe.open_series(small_phantom.folder)
    axial = hv.render(plot.browse(volume, plane="axial")[3, "lung"])
    assert axial.xaxis[0].axis_label == "col (mm), R \u2190 \u2192 L"
    assert axial.yaxis[0].axis_label == "row (mm), P \u2190 \u2192 A"  # y drawn downwards: A at the top
    assert axial.y_range.start > axial.y_range.end  # flipped: larger row values lower
    coronal = hv.render(plot.browse(volume, plane="coronal")[3, "lung"])
    assert coronal.yaxis[0].axis_label == "slice (mm), I \u2190 \u2192 S"
    assert coronal.y_range.start < coronal.y_range.end


def test_plot_lung_volumes__scans_without_lungs_left_out_with_a_note(cohort_summary):
    _, summary = cohort_summary
    regions = summary.regions.copy()
    first = regions["series"].iloc[0]
    regions.loc[regions["series"] == first, "volume_ml"] = np.nan  # the segmentation found no lung there
    fig = plot.plot_lung_volumes(regions)
    assert_legible(fig, value_axis="x")
    assert len(fig.axes[0].get_yticklabels()) == regions["series"].nunique() - 1
    note = " ".join(t.get_text() for t in fig.texts if t.get_gid() == "note")
    assert "1 scan(s) without a lung volume not drawn" in note
    regions["volume_ml"] = np.nan
    with pytest.raises(ParameterError, match="no scan has a lung volume"):
        plot.plot_lung_volumes(regions)
