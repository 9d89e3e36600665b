"""Series to HU: ctframe vs a plain pydicom loop (the notebook's way) vs SimpleITK, same files, same run.

Run: python -m pytest benchmarks/test_bench_io.py --benchmark-only --benchmark-columns=median,iqr,rounds
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import ctframe


def ctframe_to_hu(folder: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.ScanWarning)
        return ctframe.to_hu(ctframe.open_series(folder)).values


def pydicom_loop(folder: Path) -> np.ndarray:
    """The notebook's way, with the sort fixed: read every file, sort by position, stack, rescale."""
    slices = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        slices.append((float(ds.ImagePositionPatient[2]), apply_modality_lut(ds.pixel_array, ds).astype(np.float32)))
    slices.sort(key=lambda s: s[0])
    return np.stack([s[1] for s in slices])


def simpleitk_reader(folder: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute()).astype(np.float32)


def ctframe_catalog_given(catalog) -> np.ndarray:
    """Pixels and HU only: the catalog of an earlier ``ctframe.scan`` is reused (scan once, open many times)."""
    return ctframe.to_hu(ctframe.open_series(catalog)).values


METHODS = {
    "ctframe": ctframe_to_hu,
    "ctframe_catalog_given": ctframe_catalog_given,
    "pydicom_loop": pydicom_loop,
    "simpleitk": simpleitk_reader,
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("dataset", ["lidc", "lung1", "phantom300"])
def test_bench_series_to_hu(benchmark, method: str, dataset: str, request) -> None:
    folder = request.getfixturevalue({"lidc": "lidc_dir", "lung1": "lung1_dir", "phantom300": "phantom_300"}[dataset])
    benchmark.group = f"series to HU: {dataset}"
    source = folder
    if method == "ctframe_catalog_given":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ctframe.ScanWarning)
            source = ctframe.scan(folder)  # outside the timing
    result = benchmark.pedantic(METHODS[method], args=(source,), rounds=9, warmup_rounds=2)
    assert result.ndim == 3 and result.shape[0] in (107, 133, 300)
    reference = simpleitk_reader(folder)  # same voxels (ctframe has NaN where the scan holds padding)
    measured = np.isfinite(result)
    assert measured.mean() > 0.5
    np.testing.assert_allclose(result[measured], reference[measured], rtol=0, atol=1e-3)
