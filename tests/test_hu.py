"""to_hu: per-slice rescale, padding and scan-circle fill as NaN, clear errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import xarray as xr
from pydicom.pixels import apply_modality_lut

import ctframe
from ctframe.errors import NotHUCalibratedError, QCWarning, ScanWarning
from ctframe.hu import hu_kernel
from ctframe.testing import raise_if_dask_computes, write_phantom_series


@pytest.fixture(scope="module")
def varying_rescale(tmp_path_factory) -> Path:
    """A phantom whose slices carry different slopes and intercepts (same HU)."""
    folder = tmp_path_factory.mktemp("rescale")
    truth = write_phantom_series(folder, shape=(9, 48, 48), spacing_mm=(5.0, 7.0, 7.0), seed=4)
    for k, path in enumerate(truth.paths[::2]):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(float) - 1024.0
        slope, intercept = (0.5, -2048.0) if k % 2 else (2.0, -1000.0)
        stored = np.round((hu - intercept) / slope).astype(np.int16)
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.PixelPaddingValue = round((-3024 - intercept) / slope)
        ds.PixelData = stored.tobytes()
        ds.save_as(path)
    return folder


@pytest.mark.parametrize("slices_per_chunk", [1, 2, 4, 9])
def test_to_hu__per_slice_rescale_equals_pydicom(varying_rescale: Path, slices_per_chunk: int) -> None:
    with pytest.warns(QCWarning, match="rescale slope/intercept varies"):
        volume = ctframe.open_series(varying_rescale, slices_per_chunk=slices_per_chunk)
    with raise_if_dask_computes():
        hu = ctframe.to_hu(volume)
    assert hu.dtype == np.float32 and hu.attrs["units"] == "HU"
    values = hu.values
    by_z = {float(pydicom.dcmread(p).ImagePositionPatient[2]): p for p in varying_rescale.glob("*.dcm")}
    for k, z in enumerate(volume["position_z_mm"].values):
        ds = pydicom.dcmread(by_z[float(z)])
        reference = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        # padding (stored == PixelPaddingValue) and fill become NaN; everything else is pydicom's value
        padding = ds.pixel_array == int(ds.PixelPaddingValue)
        expected = np.where(padding | (reference < -1500), np.nan, reference)
        np.testing.assert_array_equal(values[k], expected)
        assert padding.any()


def test_to_hu__unsigned_padding_on_signed_image(tmp_path: Path) -> None:
    truth = write_phantom_series(tmp_path, shape=(4, 48, 48), spacing_mm=(5.0, 7.0, 7.0), padding_as_unsigned=True)
    assert pydicom.dcmread(truth.paths[0]).PixelPaddingValue == 63536
    hu = ctframe.to_hu(ctframe.open_series(tmp_path), fill_below_hu=-1e9)  # only the padding rule masks
    np.testing.assert_array_equal(np.isnan(hu.values), np.isnan(truth.hu))
    assert np.isnan(truth.hu).mean() > 0.15


def test_to_hu__lidc_fill_becomes_nan(lidc_dir: Path) -> None:
    volume = ctframe.open_series(lidc_dir)
    middle = volume.isel(slice=66)
    hu = ctframe.to_hu(middle).values
    stored = middle.values
    np.testing.assert_array_equal(np.isnan(hu), stored == -1024)  # -2048 HU outside the circle
    assert np.nanmin(hu) >= -1024
    assert 0.15 < np.isnan(hu).mean() < 0.3


def test_hu_kernel__padding_range_limit() -> None:
    stored = np.array([[[-3000, -2500, -2000, 0, 100]]], dtype=np.int16)
    hu = hu_kernel(
        stored, np.array(1.0), np.array(-1024.0), padding_value=-3000, padding_range_limit=-2000, fill_below_hu=-1e9
    )
    np.testing.assert_array_equal(np.isnan(hu), [[[True, True, True, False, False]]])
    np.testing.assert_array_equal(hu[0, 0, 3:], [-1024.0, -924.0])


def test_to_hu__fill_threshold_is_configurable(small_phantom) -> None:
    volume = ctframe.open_series(small_phantom.folder)
    with ctframe.config_context(hu={"fill_below_hu": -900.0}):
        strict = ctframe.to_hu(volume).values
    default = ctframe.to_hu(volume).values
    assert np.isnan(strict).sum() > np.isnan(default).sum()
    assert np.nanmin(strict) >= -900


def test_to_hu__already_hu_is_returned_unchanged(small_phantom) -> None:
    hu = ctframe.open_series(small_phantom.folder).ct.to_hu()
    assert ctframe.to_hu(hu) is hu


def test_to_hu__non_ct_modality_raises(edge_cases: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScanWarning)
        volume = ctframe.open_series(edge_cases / "pydicom-3.0.2" / "MR_small_implicit.dcm")
    with pytest.raises(NotHUCalibratedError, match=r"modality is MR, not CT.*assume_hu=True"):
        ctframe.to_hu(volume)
    assert ctframe.to_hu(volume, assume_hu=True).dtype == np.float32


def test_to_hu__derived_rescale_type_raises(edge_cases: Path) -> None:
    volume = ctframe.open_series(edge_cases / "pydicom-data-1.0.0" / "eCT_Supplemental.dcm")
    with pytest.raises(NotHUCalibratedError, match=r"RescaleType is 'US'"):
        ctframe.to_hu(volume)


def test_to_hu__missing_rescale_raises(tmp_path: Path) -> None:
    truth = write_phantom_series(tmp_path, shape=(3, 32, 32), spacing_mm=(5.0, 10.0, 10.0))
    ds = pydicom.dcmread(truth.paths[1])
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.save_as(truth.paths[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QCWarning)
        volume = ctframe.open_series(tmp_path)
    with pytest.raises(NotHUCalibratedError, match="RescaleSlope missing or not a finite number on 1 of 3"):
        ctframe.to_hu(volume)


def test_to_hu__plain_dataarray_without_rescale_raises() -> None:
    with pytest.raises(NotHUCalibratedError, match=r"open it with ctframe\.open_series"):
        ctframe.to_hu(xr.DataArray(np.zeros((2, 2, 2)), dims=("slice", "row", "col")))


def test_hu_kernel__compiled_lookup_equals_numpy_take(lidc_dir: Path, monkeypatch) -> None:
    # the LUT step runs in a numba loop (it releases the GIL); np.take on the same table is the reference
    from ctframe import hu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.CTFrameWarning)
        stored = ctframe.open_series(lidc_dir).values[50:70]
    slope = np.linspace(0.5, 1.5, len(stored))[:, None, None]  # a table per slice, non-integer HU
    intercept = np.full_like(slope, -1024.25)
    options = dict(padding_value=-2000.0, padding_range_limit=np.nan, fill_below_hu=-1500.0)
    assert hu.lookup_kernel() is not None
    compiled = hu_kernel(stored, slope, intercept, **options)
    unsigned = hu_kernel(stored.astype(np.uint16), slope, intercept, **options)  # the other signedness
    monkeypatch.setattr(hu, "lookup_kernel", lambda: None)
    np.testing.assert_array_equal(compiled, hu_kernel(stored, slope, intercept, **options))
    np.testing.assert_array_equal(unsigned, hu_kernel(stored.astype(np.uint16), slope, intercept, **options))
    assert np.isnan(compiled).any() and np.isfinite(compiled).mean() > 0.5


def test_hu_kernel__big_endian_stored_values_take_numpy_path() -> None:
    stored = np.array([[[0, 1000, 2000], [-2000, 40, 3000]]], dtype=np.int16)
    expected = hu_kernel(stored, np.ones((1, 1, 1)), np.full((1, 1, 1), -1024.0), padding_value=-2000.0,
                         padding_range_limit=np.nan, fill_below_hu=-1500.0)  # fmt: skip
    swapped = stored.astype(">i2")
    got = hu_kernel(swapped, np.ones((1, 1, 1)), np.full((1, 1, 1), -1024.0), padding_value=-2000.0,
                    padding_range_limit=np.nan, fill_below_hu=-1500.0)  # fmt: skip
    np.testing.assert_array_equal(got, expected)
    assert np.isnan(got[0, 1, 0]) and got[0, 0, 1] == -24.0


def test_hu_kernel__one_table_per_rescale_even_with_nan_padding(lidc_dir: Path, monkeypatch) -> None:
    """LIDC slices share slope, intercept and padding (and have no range limit: NaN): one lookup table per block."""
    import ctframe.hu as hu_module

    volume = ctframe.open_series(lidc_dir, slices_per_chunk=8)
    block = volume.data.blocks[3].compute()
    calls = []
    original = hu_module._lookup_table
    monkeypatch.setattr(hu_module, "_lookup_table", lambda *a, **k: calls.append(a) or original(*a, **k))
    n = block.shape[0]
    out = hu_kernel(block, np.ones(n), np.full(n, -1024.0), np.full(n, -2000.0), np.full(n, np.nan),
                    fill_below_hu=-1500)
    assert len(calls) == 1
    monkeypatch.undo()
    expected = apply_modality_lut(block, pydicom.dcmread(next(lidc_dir.glob("*.dcm")))).astype(np.float32)
    expected[(block == -2000) | (expected < -1500)] = np.nan
    np.testing.assert_array_equal(out, expected)
