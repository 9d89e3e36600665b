"""Reformats and projections: lazy results against numpy slicing and nan-reductions."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import ctframe
from ctframe.errors import ParameterError
from ctframe.projection import aspect, mean_projection, minip, mip, plane_dim, reformat, resample_isotropic
from ctframe.testing import PhantomTruth, raise_if_dask_computes

# small_phantom: 24 x 64 x 64, spacing (10, 5, 5) mm
CHUNKINGS = [{"slice": 24}, {"slice": 5}, {"slice": 7, "row": 17, "col": 33}, {"slice": 1, "row": 64, "col": 10}]
CHUNK_IDS = ["one-chunk", "5-slices", "7x17x33", "1x64x10"]
AXIS = {"slice": 0, "row": 1, "col": 2}


@pytest.fixture(scope="module")
def phantom_hu(small_phantom: PhantomTruth) -> xr.DataArray:
    return ctframe.to_hu(ctframe.open_series(small_phantom.folder, slices_per_chunk=24))


@pytest.fixture(scope="module")
def hu_reference(phantom_hu: xr.DataArray) -> np.ndarray:
    values = phantom_hu.values
    assert np.isnan(values).any()
    return values


def nan_reference(function, values: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rays
        return function(values, axis=axis)


@pytest.fixture(scope="module")
def lidc_hu(lidc_dir: Path) -> xr.DataArray:
    return ctframe.to_hu(ctframe.open_series(lidc_dir))


@pytest.fixture(scope="module")
def lidc_reference(lidc_hu: xr.DataArray) -> np.ndarray:
    return lidc_hu.values


# --------------------------------------------------------------------------- projections

# (slab kwargs, expected [start, stop) for a dim of n samples, spacing in mm)
SLABS = [
    ({}, lambda n: (0, n)),
    ({"slab": 5}, lambda n: ((n - 5) // 2, (n - 5) // 2 + 5)),
    ({"slab": 4, "center": 3}, lambda n: (1, 5)),
    ({"slab": 1, "center": -1}, lambda n: (n - 1, n)),
]
SLAB_IDS = ["whole", "middle-5", "4-around-3", "last"]


@pytest.mark.parametrize(("kind", "reference"), [(mip, np.nanmax), (minip, np.nanmin), (mean_projection, np.nanmean)])
@pytest.mark.parametrize("dim", ["slice", "row", "col"])
@pytest.mark.parametrize(("slab", "bounds"), SLABS, ids=SLAB_IDS)
@pytest.mark.parametrize("chunks", CHUNKINGS, ids=CHUNK_IDS)
def test_mip__equals_numpy_nan_reduction(phantom_hu, hu_reference, kind, reference, dim, slab, bounds, chunks) -> None:
    volume = phantom_hu.chunk(chunks)
    with raise_if_dask_computes():
        result = kind(volume, dim=dim, **slab)
    start, stop = bounds(volume.sizes[dim])
    index = [slice(None)] * 3
    index[AXIS[dim]] = slice(start, stop)
    expected = nan_reference(reference, hu_reference[tuple(index)], AXIS[dim]).astype(np.float32)
    assert result.dims == tuple(d for d in volume.dims if d != dim)
    assert result.dtype == np.float32
    assert result.attrs["slab_indices"] == [start, stop]
    np.testing.assert_allclose(result.values, expected, rtol=1e-6, equal_nan=True)
    for other in result.dims:
        np.testing.assert_array_equal(result[other].values, volume[other].values)


def test_mip__slab_mm_and_center_mm_pick_the_nearest_samples(phantom_hu, hu_reference) -> None:
    # slice spacing 10 mm: 44 mm -> 4 samples, 45 mm -> 5 (halves round up); centre nearest -170 mm
    coords = phantom_hu["slice"].values
    centre = int(np.argmin(np.abs(coords - -170.0)))
    with raise_if_dask_computes():
        four = mip(phantom_hu.chunk({"slice": 3}), slab_mm=44.0, center_mm=-170.0)
        five = mip(phantom_hu.chunk({"slice": 3}), slab_mm=45.0, center_mm=-170.0)
    assert four.attrs["slab_indices"] == [centre - 2, centre + 2]
    assert five.attrs["slab_indices"] == [centre - 2, centre + 3]
    assert four.attrs["slab_range_mm"] == [coords[centre - 2], coords[centre + 1]]
    np.testing.assert_array_equal(four.values, nan_reference(np.nanmax, hu_reference[centre - 2 : centre + 2], 0))


def test_mip__all_nan_rays_are_nan_without_warnings(phantom_hu) -> None:
    volume = phantom_hu.chunk({"slice": 5, "row": 20})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        projections = [f(volume, dim="slice").values for f in (mip, minip, mean_projection)]
    corner = np.isnan(phantom_hu.isel(slice=0).values) & np.isnan(phantom_hu.isel(slice=-1).values)
    for projected in projections:
        assert np.isnan(projected[0, 0]) and corner[0, 0]
        assert np.isfinite(projected[32, 32])


def test_mean_projection__integer_input_gives_float32(phantom_hu, small_phantom) -> None:
    stored = ctframe.open_series(small_phantom.folder, slices_per_chunk=5)
    with raise_if_dask_computes():
        mean = mean_projection(stored, dim="col", slab=7)
    assert stored.dtype == np.int16 and mean.dtype == np.float32
    values = stored.values[:, :, 28:35].astype(np.float64)
    np.testing.assert_allclose(mean.values, values.mean(axis=2), rtol=1e-6)


@pytest.mark.realdata
def test_mip__lidc_notebook_one_liners(lidc_hu, lidc_reference) -> None:
    with raise_if_dask_computes():
        axial = lidc_hu.ct.mip(dim="slice", slab=50)
        coronal = lidc_hu.ct.mip(dim="row", slab=40)
    middle_slice, middle_row = 133 // 2, 512 // 2
    # the notebook's slabs: the 50 slices and 40 rows around the middle
    expected_axial = nan_reference(np.nanmax, lidc_reference[middle_slice - 25 : middle_slice + 25], 0)
    expected_coronal = nan_reference(np.nanmax, lidc_reference[:, middle_row - 20 : middle_row + 20, :], 1)
    np.testing.assert_array_equal(axial.values, expected_axial)
    np.testing.assert_array_equal(coronal.values, expected_coronal)
    assert axial.dims == ("row", "col") and coronal.dims == ("slice", "col")
    assert axial.attrs["slab_range_mm"] == pytest.approx([lidc_hu["slice"].values[41], lidc_hu["slice"].values[90]])
    assert np.isnan(axial.values[0, 0]) and np.nanmax(axial.values) > 1000  # outside the circle; bone inside


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": "z"}, r"dim 'z' is not a dim of this array; its dims are \('slice', 'row', 'col'\)"),
        ({"slab": 3, "slab_mm": 5.0}, r"give slab \(samples\) or slab_mm, not both"),
        ({"slab": 3, "center": 1, "center_mm": 5.0}, r"give center \(index\) or center_mm, not both"),
        ({"center": 2}, r"center/center_mm place a slab; give slab or slab_mm too"),
        ({"slab": 0}, r"slab must be an int >= 1 \(samples\), got 0"),
        ({"slab": 2.5}, r"slab must be an int >= 1 \(samples\), got 2.5"),
        ({"slab_mm": -1.0}, r"slab_mm must be a number > 0, got -1.0"),
        ({"slab": 9}, r"a slab of 9 samples is thicker than dim 'slice' \(4 samples\)"),
        ({"slab": 3, "center": 0}, r"runs past dim 'slice' \(4 samples\); centre it on an index in 1..2"),
        ({"slab": 2, "center": 4}, r"center=4 is out of range for dim 'slice' of length 4; use 0..3"),
        ({"slab": 2, "center_mm": 100.0}, r"center_mm=100 mm lies outside dim 'slice', whose coordinate runs from 0"),
    ],
)  # fmt: skip
def test_mip__errors_say_how_to_fix(kwargs, message) -> None:
    volume = xr.DataArray(
        np.zeros((4, 3, 3), np.float32), dims=("slice", "row", "col"), coords={"slice": [0.0, 2.5, 5.0, 7.5]}
    )
    for function in (mip, minip, mean_projection):
        with pytest.raises(ParameterError, match=message):
            function(volume, **kwargs)


# --------------------------------------------------------------------------- reformats


@pytest.mark.parametrize(
    ("plane", "kwargs", "index"),
    [
        ("axial", {}, (12, slice(None), slice(None))),
        ("axial", {"index": -1}, (23, slice(None), slice(None))),
        ("coronal", {"index": 10}, (slice(None), 10, slice(None))),
        ("coronal", {"position_mm": 52.4}, (slice(None), 10, slice(None))),  # rows every 5 mm: 50 is nearest
        ("sagittal", {"position_mm": 0.0}, (slice(None), slice(None), 0)),
    ],
)
@pytest.mark.parametrize("chunks", CHUNKINGS[1:3], ids=CHUNK_IDS[1:3])
def test_reformat__equals_numpy_slicing(phantom_hu, hu_reference, plane, kwargs, index, chunks) -> None:
    with raise_if_dask_computes():
        cut = reformat(phantom_hu.chunk(chunks), plane=plane, **kwargs)
    np.testing.assert_array_equal(cut.values, hu_reference[index])
    assert cut.attrs["plane"] == plane and cut.ndim == 2


@pytest.mark.realdata
def test_reformat__lidc_coronal_coords_keep_the_physical_aspect(lidc_hu, lidc_reference) -> None:
    with raise_if_dask_computes():
        coronal = lidc_hu.ct.reformat(plane="coronal")
    assert coronal.dims == ("slice", "col")
    np.testing.assert_allclose(np.diff(coronal["slice"].values), 2.5)
    np.testing.assert_allclose(np.diff(coronal["col"].values), 0.703125)
    assert coronal.ct.aspect() == pytest.approx(2.5 / 0.703125)
    assert float(coronal["row"]) == pytest.approx(256 * 0.703125)
    np.testing.assert_array_equal(coronal.values, lidc_reference[:, 256, :])


@pytest.mark.realdata
def test_reformat__lidc_isotropic_coronal(lidc_hu, lidc_reference) -> None:
    with raise_if_dask_computes():
        square = reformat(lidc_hu, plane="coronal", isotropic=True)
    step = np.diff(square["slice"].values)
    np.testing.assert_allclose(step, 0.703125)
    assert aspect(square) == pytest.approx(1.0)
    assert square.sizes["slice"] == int(np.floor(132 * 2.5 / 0.703125 + 1e-9)) + 1
    # every 9 slices (22.5 mm = 32 pixels of 0.703125 mm) a new row lands on an original slice: it reproduces it
    original = lidc_hu["slice"].values
    hit = np.flatnonzero(np.isclose(square["slice"].values[:, None], original[None, :]).any(axis=1))
    assert hit.size > 1
    for i in hit[:3]:
        k = int(np.argmin(np.abs(original - square["slice"].values[i])))
        np.testing.assert_allclose(square.values[i], lidc_reference[k, 256, :], atol=1e-3)


def test_plane_dim__follows_the_orientation() -> None:
    def series(orientation):
        return xr.DataArray(np.zeros((2, 2, 2)), dims=("slice", "row", "col"), attrs={"orientation": orientation})

    # axial: rows run along x (L), columns down y (P), normal z
    planes = ("axial", "coronal", "sagittal")
    assert [plane_dim(series([1, 0, 0, 0, 1, 0]), p) for p in planes] == ["slice", "row", "col"]
    # sagittal acquisition: along a row y (P), down a column -z, normal -x
    assert [plane_dim(series([0, 1, 0, 0, 0, -1]), p) for p in planes] == ["row", "col", "slice"]
    # 18.5 degree gantry tilt keeps the axial layout
    tilt = np.radians(18.5)
    assert plane_dim(series([1, 0, 0, 0, np.cos(tilt), -np.sin(tilt)]), "coronal") == "row"
    # no orientation: an axial series is assumed
    assert plane_dim(xr.DataArray(np.zeros((2, 2, 2)), dims=("slice", "row", "col")), "sagittal") == "col"


@pytest.mark.parametrize(
    ("kwargs", "attrs", "message"),
    [
        ({"plane": "transverse"}, {}, r"plane must be one of axial, coronal, sagittal, got 'transverse'"),
        ({"plane": "axial", "index": 1, "position_mm": 2.5}, {}, r"give index or position_mm, not both"),
        ({"plane": "axial", "index": 4}, {}, r"index=4 is out of range for dim 'slice' of length 4; use 0..3"),
        ({"plane": "axial", "index": 1.0}, {}, r"index must be an int, got 1.0"),
        ({"plane": "axial", "position_mm": -10.0}, {}, r"position_mm=-10 mm lies outside dim 'slice'"),
        ({"plane": "coronal", "position_mm": 1.0}, {}, r"dim 'row' has no coordinate in mm"),
        ({"plane": "axial"}, {"orientation": [0.7071, 0.7071, 0, -0.7071, 0.7071, 0]}, r"is oblique.*with .isel"),
    ],
)  # fmt: skip
def test_reformat__errors_say_how_to_fix(kwargs, attrs, message) -> None:
    volume = xr.DataArray(
        np.zeros((4, 3, 3)), dims=("slice", "row", "col"), coords={"slice": [0.0, 2.5, 5.0, 7.5]}, attrs=attrs
    )
    with pytest.raises(ParameterError, match=message):
        reformat(volume, **kwargs)


def test_aspect__errors() -> None:
    with pytest.raises(ParameterError, match=r"aspect needs a 2-D image; got dims \('slice', 'row', 'col'\)"):
        aspect(xr.DataArray(np.zeros((2, 2, 2)), dims=("slice", "row", "col")))
    with pytest.raises(ParameterError, match=r"dim 'row' has no coordinate in mm"):
        aspect(xr.DataArray(np.zeros((2, 2)), dims=("row", "col")))


@pytest.mark.parametrize("chunks", [{"slice": 24}, {"slice": 5, "col": 20}, {"slice": 1}], ids=["one", "5x20", "1"])
def test_resample_isotropic__equals_numpy_interp(phantom_hu, hu_reference, chunks) -> None:
    coronal = reformat(phantom_hu, plane="coronal", index=30).chunk(chunks)
    with raise_if_dask_computes():
        square = resample_isotropic(coronal)
    old = phantom_hu["slice"].values
    new = old[0] + 5.0 * np.arange(round((old[-1] - old[0]) / 5.0) + 1)
    np.testing.assert_allclose(square["slice"].values, new)
    np.testing.assert_array_equal(square["col"].values, coronal["col"].values)
    plane = hu_reference[:, 30, :]
    expected = np.stack([np.interp(new, old, plane[:, j]) for j in range(plane.shape[1])], axis=1)
    np.testing.assert_allclose(square.values, expected, rtol=1e-6, equal_nan=True)
    assert "rescale_slope" not in square.coords  # per-slice values do not survive resampling


def test_resample_isotropic__errors() -> None:
    plane = xr.DataArray(np.zeros((2, 2)), dims=("slice", "col"), coords={"slice": [0.0, 2.0], "col": [0.0, 1.0]})
    with pytest.raises(ParameterError, match=r"spacing_mm must be a number > 0, got 0"):
        resample_isotropic(plane, spacing_mm=0)
    with pytest.raises(ParameterError, match=r"method must be 'linear' or 'nearest', got 'cubic'"):
        resample_isotropic(plane, method="cubic")


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("mip", {"dim": "row", "slab": 4}),
        ("minip", {"slab_mm": 30.0}),
        ("mean_projection", {"dim": "col"}),
        ("reformat", {"plane": "sagittal"}),
        ("resample_isotropic", {"spacing_mm": 10.0}),
    ],
)
def test_mip__accessor_delegates(phantom_hu, name, kwargs) -> None:
    volume = phantom_hu.chunk({"slice": 6})
    expected = getattr(ctframe, name)(volume, **kwargs)
    xr.testing.assert_identical(getattr(volume.ct, name)(**kwargs).compute(), expected.compute())
    assert volume.ct.plane_dim("coronal") == "row"
