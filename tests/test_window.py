"""Windows and contrast: lazy results against pydicom / scikit-image on the same data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from pydicom.dataset import Dataset
from pydicom.pixels import apply_windowing
from skimage import exposure

import ctframe
from ctframe.config import config_context, load_config
from ctframe.errors import ConfigError, ParameterError
from ctframe.testing import PhantomTruth, raise_if_dask_computes
from ctframe.window import adjust_gamma, apply_window, dicom_windows, equalize_adapthist, rescale_intensity

# (slices_per_chunk when opening, extra rechunk of row/col or None)
CHUNKINGS = [(24, None), (5, None), (7, {"row": 17, "col": 33}), (1, {"row": 32})]
CHUNK_IDS = ["one-chunk", "5-slices", "7x17x33", "1x32xfull"]


@pytest.fixture(scope="module")
def hu_reference(small_phantom: PhantomTruth) -> np.ndarray:
    """The phantom's HU as numpy, computed once (NaN outside the scan circle)."""
    values = ctframe.to_hu(ctframe.open_series(small_phantom.folder)).values
    assert np.isnan(values).any() and np.isfinite(values).any()
    return values


def lazy_hu(folder: Path, chunking: tuple[int, dict[str, int] | None]) -> xr.DataArray:
    slices_per_chunk, rechunk = chunking
    hu = ctframe.to_hu(ctframe.open_series(folder, slices_per_chunk=slices_per_chunk))
    return hu.chunk(rechunk) if rechunk else hu


def pydicom_window(values: np.ndarray, level: float, width: float, function: str) -> np.ndarray:
    """pydicom's implementation of PS3.3 C.11.2.1.2 mapped to [0, 1] (unsigned 8-bit output range / 255)."""
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    ds.BitsStored = 8
    ds.WindowCenter = level
    ds.WindowWidth = width
    ds.VOILUTFunction = function
    with np.errstate(over="ignore"):
        return apply_windowing(values.astype(np.float64), ds) / 255.0


# --------------------------------------------------------------------------- apply_window


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("chunking", CHUNKINGS, ids=CHUNK_IDS)
def test_apply_window__equals_pydicom_apply_windowing(small_phantom, hu_reference, chunking, function) -> None:
    hu = lazy_hu(small_phantom.folder, chunking)
    with raise_if_dask_computes():
        display = apply_window(hu, preset="mediastinum", function=function)
    assert display.dtype == np.float32 and display.dims == hu.dims
    assert display.chunks == hu.chunks
    expected = pydicom_window(hu_reference, 50.0, 350.0, function)
    result = display.values
    np.testing.assert_array_equal(np.isnan(result), np.isnan(hu_reference))
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-6)
    assert display.attrs["window_function"] == function and display.attrs["units"] == "display"
    np.testing.assert_array_equal(display["slice"].values, hu["slice"].values)


@pytest.mark.parametrize("chunking", CHUNKINGS[:2], ids=CHUNK_IDS[:2])
def test_apply_window__uint8_rounds_and_shows_nan_black(small_phantom, hu_reference, chunking) -> None:
    hu = lazy_hu(small_phantom.folder, chunking)
    with raise_if_dask_computes():
        display = apply_window(hu, level_hu=-600, width_hu=1500, output="uint8")
    assert display.dtype == np.uint8
    expected = np.rint(np.nan_to_num(pydicom_window(hu_reference, -600.0, 1500.0, "LINEAR"), nan=0.0) * 255)
    result = display.values
    np.testing.assert_array_equal(result, expected.astype(np.uint8))
    assert (result[np.isnan(hu_reference)] == 0).all()
    assert result.max() == 255  # the phantom's bone and table lie above the lung window


def test_apply_window__standard_boundaries_linear_and_linear_exact() -> None:
    # PS3.3 C.11.2.1.2.1 (LINEAR) and C.11.2.1.3.2 (LINEAR_EXACT) for c = -600, w = 1500, written out here
    x = np.array([-2048, -1350, -1349, -600, 149, 150, 151], np.float64)
    hu = xr.DataArray(x.astype(np.float32), dims="col")
    c, w = -600.0, 1500.0
    linear = np.where(
        x <= c - 0.5 - (w - 1) / 2, 0.0, np.where(x > c - 0.5 + (w - 1) / 2, 1.0, (x - (c - 0.5)) / (w - 1) + 0.5)
    )
    exact = np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, (x - c) / w + 0.5))
    got_linear = apply_window(hu, preset="lung").values
    got_exact = apply_window(hu, preset="lung", function="LINEAR_EXACT").values
    np.testing.assert_allclose(got_linear, linear, atol=1e-7)
    np.testing.assert_allclose(got_exact, exact, atol=1e-7)
    # what the issue asks, function by function
    assert got_exact[3] == 0.5 and got_exact[1] == 0.0 and got_exact[5] == 1.0 and 0 < got_exact[4] < 1
    assert got_linear[3] == pytest.approx(0.5 + 0.5 / 1499, abs=1e-7)  # LINEAR is not exactly 0.5 at the level
    assert got_linear[1] == 0.0 and got_linear[2] > 0.0 and got_linear[4] == 1.0  # saturates at 149, not 150


@pytest.mark.realdata
def test_apply_window__lidc_lung_window_middle_slice(lidc_dir: Path) -> None:
    # keep the -2048 HU outside-the-circle fill so the low clip is exercised on real voxels
    hu = ctframe.to_hu(ctframe.open_series(lidc_dir), fill_below_hu=-1e9).isel(slice=66)
    with raise_if_dask_computes():
        exact = apply_window(hu, preset="lung", function="LINEAR_EXACT")
        linear = apply_window(hu, preset="lung")
    x = hu.values.astype(np.float64)
    got_exact, got_linear = exact.values, linear.values
    assert (x == -600).sum() > 0 and (x == -2048).sum() > 0 and (x > 150).sum() > 0
    np.testing.assert_array_equal(got_exact[x == -600], 0.5)
    np.testing.assert_allclose(got_linear[x == -600], 0.5 + 0.5 / 1499, atol=1e-7)
    for got in (got_exact, got_linear):
        assert (got[x <= -1350] == 0).all()
        assert (got[x > 150] == 1).all()
        inside = (x > -1350) & (x < 149)
        assert ((got[inside] > 0) & (got[inside] < 1)).all()
    np.testing.assert_array_equal(got_exact[x == 150], 1.0)
    np.testing.assert_allclose(got_exact[x == 149], 1 - 1 / 1500, atol=1e-7)
    np.testing.assert_array_equal(got_linear[x == 149], 1.0)
    np.testing.assert_allclose(got_exact, pydicom_window(x, -600, 1500, "LINEAR_EXACT"), atol=1e-6)
    np.testing.assert_allclose(got_linear, pydicom_window(x, -600, 1500, "LINEAR"), atol=1e-6)


@pytest.mark.realdata
def test_apply_window__lidc_dicom_preset_is_the_header_window(lidc_dir: Path) -> None:
    hu = ctframe.to_hu(ctframe.open_series(lidc_dir))
    assert dicom_windows(hu) == [(-600.0, 1600.0)]
    own = apply_window(hu, preset="dicom")
    assert (own.attrs["window_level_hu"], own.attrs["window_width_hu"], own.attrs["window_function"]) == (
        -600.0,
        1600.0,
        "LINEAR",
    )


def test_apply_window__dicom_preset_picks_with_which_and_uses_voi_lut_function(small_phantom, hu_reference) -> None:
    hu = ctframe.to_hu(ctframe.open_series(small_phantom.folder))
    assert dicom_windows(hu) == [(-600.0, 1500.0), (40.0, 400.0)]
    with raise_if_dask_computes():
        second = apply_window(hu, preset="dicom", which=1)
        sigmoid = apply_window(hu.assign_attrs(voi_lut_function="SIGMOID"), preset="dicom")
        overridden = apply_window(hu.assign_attrs(voi_lut_function="SIGMOID"), preset="dicom", function="LINEAR")
    np.testing.assert_allclose(second.values, pydicom_window(hu_reference, 40, 400, "LINEAR"), atol=1e-6)
    np.testing.assert_allclose(sigmoid.values, pydicom_window(hu_reference, -600, 1500, "SIGMOID"), atol=1e-6)
    assert sigmoid.attrs["window_function"] == "SIGMOID" and overridden.attrs["window_function"] == "LINEAR"


def test_apply_window__presets_come_from_the_config() -> None:
    presets = load_config()["window"]["presets"]
    issue = {"lung": (-600, 1500), "mediastinum": (50, 350), "abdomen": (50, 400), "liver": (30, 150),
             "bone": (400, 1800), "brain": (40, 80)}  # fmt: skip
    for name, (level, width) in issue.items():
        assert (presets[name]["level_hu"], presets[name]["width_hu"]) == (level, width)
    hu = xr.DataArray(np.array([-10.0, 0.0, 10.0], np.float32), dims="col")
    with config_context(window={"presets": {"narrow": {"level_hu": 0, "width_hu": 20}}, "function": "LINEAR_EXACT"}):
        np.testing.assert_allclose(apply_window(hu, preset="narrow").values, [0.0, 0.5, 1.0])


@pytest.mark.parametrize(
    ("kwargs", "attrs", "message"),
    [
        ({"preset": "lungs"}, {}, r"unknown window preset 'lungs'; known presets: abdomen, bone, brain"),
        ({"preset": "lung", "level_hu": 40}, {}, r"either preset or level_hu and width_hu, not both"),
        ({"level_hu": 40}, {}, r"needs level_hu and width_hu, or a preset"),
        ({"level_hu": 40, "width_hu": 0.5}, {}, r"below 1, which the DICOM LINEAR function does not allow"),
        ({"level_hu": 40, "width_hu": -5, "function": "LINEAR_EXACT"}, {}, r"window width must be > 0 HU"),
        ({"level_hu": float("nan"), "width_hu": 5}, {}, r"level_hu must be a finite number"),
        ({"preset": "lung", "function": "GAMMA"}, {}, r"function is 'GAMMA'; supported VOI LUT functions: LINEAR"),
        ({"preset": "lung", "output": "int16"}, {}, r"output must be one of float32, uint8"),
        ({"preset": "lung", "which": 1}, {}, r"which=1 picks one of the series' own windows; it needs preset='dicom'"),
        ({"preset": "dicom"}, {}, r"has no WindowCenter/WindowWidth in its header; use a named preset"),
        ({"preset": "dicom", "which": 2}, {"window_center": "-600\\40", "window_width": "1500\\400"},
         r"which=2 is not one of the 2 window\(s\) of series .*0: L-600/W1500, 1: L40/W400"),
        ({"preset": "dicom"}, {"window_center": "-600\\40", "window_width": "1500"}, r"cannot be read as pairs"),
        ({"preset": "dicom"}, {"window_center": "-600", "window_width": "1500", "voi_lut_function": "LOG"},
         r"the series' VOILUTFunction is 'LOG'.*pass function=... to override"),
        ({"preset": "lung"}, {"units": "stored value"}, r"expects Hounsfield units.*ctframe.to_hu"),
    ],
)  # fmt: skip
def test_apply_window__errors_say_how_to_fix(kwargs, attrs, message) -> None:
    hu = xr.DataArray(np.zeros(3, np.float32), dims="col", attrs=attrs)
    with pytest.raises(ParameterError, match=message):
        apply_window(hu, **kwargs)


@pytest.mark.parametrize(
    ("presets", "message"),
    [
        ({"mine": {"level_hu": 40, "width_hu": 0}}, r"'window.presets.mine.width_hu' is 0; a window width must be > 0"),
        ({"mine": {"level_hu": "high", "width_hu": 10}}, r"'window.presets.mine.level_hu' must be a finite number"),
        ({"lung": {"width_hu": 1600}}, r"'window.presets.lung' must be a mapping with exactly the keys level_hu"),
        ({"mine": [40, 400]}, r"'window.presets.mine' must be a mapping"),
        ({"dicom": {"level_hu": 40, "width_hu": 400}}, r"'window.presets.dicom': 'dicom' is reserved"),
    ],
)
def test_load_config__bad_window_preset_names_the_key(tmp_path: Path, presets, message) -> None:
    import yaml

    user = tmp_path / "user.yaml"
    user.write_text(yaml.safe_dump({"window": {"presets": presets}}))
    with pytest.raises(ConfigError, match=message):
        load_config(user)


def test_load_config__window_function_must_be_a_dicom_function() -> None:
    with pytest.raises(ConfigError, match=r"'window.function' is 'linear'; allowed values: 'LINEAR'"):
        load_config(overrides={"window": {"function": "linear"}})


# --------------------------------------------------------------------------- contrast


@pytest.fixture(scope="module")
def display_reference(hu_reference: np.ndarray) -> np.ndarray:
    return pydicom_window(hu_reference, -600.0, 1500.0, "LINEAR").astype(np.float32)


@pytest.mark.parametrize("chunking", CHUNKINGS, ids=CHUNK_IDS)
def test_equalize_adapthist__equals_skimage_slice_by_slice(small_phantom, display_reference, chunking) -> None:
    display = apply_window(lazy_hu(small_phantom.folder, chunking), preset="lung")
    with raise_if_dask_computes():
        enhanced = equalize_adapthist(display, clip_limit=0.02, kernel_size=(16, 24))
    assert enhanced.dtype == np.float32 and enhanced.dims == display.dims
    expected = np.empty_like(display_reference)
    for k, plane in enumerate(display_reference):
        missing = np.isnan(plane)
        expected[k] = exposure.equalize_adapthist(np.where(missing, 0, plane), clip_limit=0.02, kernel_size=(16, 24))
        expected[k][missing] = np.nan
    np.testing.assert_allclose(enhanced.values, expected, rtol=0, atol=1e-6)
    assert not np.allclose(np.nan_to_num(expected), np.nan_to_num(display_reference), atol=0.01)  # it did something


def test_equalize_adapthist__coronal_plane_uses_its_own_two_dims(small_phantom, display_reference) -> None:
    display = apply_window(lazy_hu(small_phantom.folder, (5, None)), preset="lung")
    with raise_if_dask_computes():
        coronal = equalize_adapthist(display.isel(row=30))
    assert coronal.dims == ("slice", "col")
    plane = display_reference[:, 30, :]
    missing = np.isnan(plane)
    expected = exposure.equalize_adapthist(np.where(missing, 0, plane))
    expected[missing] = np.nan
    np.testing.assert_allclose(coronal.values, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip_limit": 2.0}, r"clip_limit must lie in \[0, 1\], got 2.0"),
        ({"kernel_size": (0, 8)}, r"kernel_size must be an int >= 1 or a pair \(row, col\)"),
        ({"kernel_size": (8, 8, 8)}, r"kernel_size must be an int >= 1 or a pair \(row, col\)"),
        ({"nbins": 1}, r"nbins must be an int >= 2"),
    ],
)
def test_equalize_adapthist__errors(kwargs, message) -> None:
    with pytest.raises(ParameterError, match=message):
        equalize_adapthist(xr.DataArray(np.zeros((2, 8, 8)), dims=("slice", "row", "col")), **kwargs)


def test_equalize_adapthist__refuses_hu_and_planeless_arrays() -> None:
    with pytest.raises(ParameterError, match=r"has units 'HU'; window it first, e.g. ctframe.apply_window"):
        equalize_adapthist(xr.DataArray(np.zeros((8, 8)), dims=("row", "col"), attrs={"units": "HU"}))
    with pytest.raises(ParameterError, match=r"no \('row', 'col'\) plane"):
        equalize_adapthist(xr.DataArray(np.zeros((2, 8, 8)), dims=("a", "b", "c")))


@pytest.mark.parametrize("output", ["float32", "uint8"])
@pytest.mark.parametrize("chunking", CHUNKINGS[1:3], ids=CHUNK_IDS[1:3])
def test_adjust_gamma__equals_skimage(small_phantom, chunking, output) -> None:
    display = apply_window(lazy_hu(small_phantom.folder, chunking), preset="lung", output=output)
    reference = display.values
    with raise_if_dask_computes():
        corrected = adjust_gamma(display, gamma=0.6, gain=0.9)
    assert corrected.dtype == reference.dtype
    expected = exposure.adjust_gamma(reference, gamma=0.6, gain=0.9)
    np.testing.assert_allclose(corrected.values, expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "attrs", "message"),
    [
        ({"gamma": 0}, {}, r"gamma must be > 0, got 0"),
        ({"gamma": float("inf")}, {}, r"gamma must be a finite number"),
        ({"gamma": 2}, {"units": "HU"}, r"has units 'HU'; window it first"),
    ],
)
def test_adjust_gamma__errors(kwargs, attrs, message) -> None:
    with pytest.raises(ParameterError, match=message):
        adjust_gamma(xr.DataArray(np.zeros(3), attrs=attrs), **kwargs)


@pytest.mark.parametrize("chunking", CHUNKINGS, ids=CHUNK_IDS)
def test_rescale_intensity__equals_skimage_with_explicit_range(small_phantom, hu_reference, chunking) -> None:
    hu = lazy_hu(small_phantom.folder, chunking)
    with raise_if_dask_computes():
        scaled = rescale_intensity(hu, in_range=(-1000, 200))
        stretched = rescale_intensity(hu, in_range="image", out_range=(-1.0, 1.0))
    assert scaled.dtype == np.float32
    expected = exposure.rescale_intensity(hu_reference, in_range=(-1000, 200), out_range=(0.0, 1.0))
    np.testing.assert_allclose(scaled.values, expected, rtol=1e-6, atol=1e-6)
    image_range = (float(np.nanmin(hu_reference)), float(np.nanmax(hu_reference)))
    expected = exposure.rescale_intensity(hu_reference, in_range=image_range, out_range=(-1.0, 1.0))
    np.testing.assert_allclose(stretched.values, expected, rtol=1e-6, atol=1e-6)


def test_rescale_intensity__window_range_is_linear_exact(hu_reference) -> None:
    hu = xr.DataArray(hu_reference, dims=("slice", "row", "col")).chunk({"slice": 6})
    with raise_if_dask_computes():
        scaled = rescale_intensity(hu, in_range=(50 - 175, 50 + 175))
        windowed = apply_window(hu, preset="mediastinum", function="LINEAR_EXACT")
    np.testing.assert_allclose(scaled.values, windowed.values, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_range": (200, -1000)}, r"in_range must have low < high"),
        ({"in_range": "data"}, r"in_range must be a pair \(low, high\) or 'image'"),
        ({"in_range": (0, float("nan"))}, r"in_range\[1\] must be a finite number"),
        ({"in_range": (0,)}, r"in_range must be a pair \(low, high\) of numbers"),
        ({"in_range": (0, 1), "out_range": (1, 1)}, r"out_range must not be empty"),
    ],
)
def test_rescale_intensity__errors(kwargs, message) -> None:
    with pytest.raises(ParameterError, match=message):
        rescale_intensity(xr.DataArray(np.zeros(3)), **kwargs)


# --------------------------------------------------------------------------- accessor


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("apply_window", {"preset": "lung"}),
        ("rescale_intensity", {"in_range": (-1000, 400)}),
    ],
)
def test_apply_window__accessor_delegates(hu_reference, name, kwargs) -> None:
    hu = xr.DataArray(hu_reference[:3], dims=("slice", "row", "col"), attrs={"units": "HU"}).chunk({"slice": 1})
    function = getattr(ctframe, name)
    xr.testing.assert_identical(getattr(hu.ct, name)(**kwargs).compute(), function(hu, **kwargs).compute())
    display = function(hu, **kwargs)
    gamma = adjust_gamma(display, gamma=2.0)
    xr.testing.assert_identical(display.ct.adjust_gamma(gamma=2.0).compute(), gamma.compute())
    xr.testing.assert_identical(display.ct.equalize_adapthist().compute(), equalize_adapthist(display).compute())
