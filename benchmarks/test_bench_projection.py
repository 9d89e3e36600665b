"""MIP on one real LIDC slab: ctframe vs the notebook's triple loop vs plain numpy, in one run.

The slab is the notebook's coronal MIP input: the middle 40 coronal planes
(rows 236..275) of LIDC-IDRI-0001 in HU, 133 x 40 x 512 float32 with NaN
outside the scan circle. Run with::

    .venv/bin/pytest benchmarks/test_bench_projection.py --benchmark-only

All cases share the benchmark group ``coronal-mip-40`` so the table compares
them directly; each case also checks its result against ``np.nanmax``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import ctframe

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CTFRAME_SHARED_DATA", REPO.parent / "shared" / "data"))
LIDC = SHARED_DATA / "lidc-idri-0001"
SLAB = 40
GROUP = "coronal-mip-40"


@pytest.fixture(scope="module")
def lidc_hu() -> xr.DataArray:
    if not LIDC.is_dir():
        message = f"real DICOM data not found at {LIDC} (set CTFRAME_SHARED_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI must provide it")
        pytest.skip(message)
    return ctframe.to_hu(ctframe.open_series(LIDC))


@pytest.fixture(scope="module")
def volume(lidc_hu: xr.DataArray) -> np.ndarray:
    """The whole LIDC volume in HU as numpy (loaded once, outside the timings)."""
    return lidc_hu.values


@pytest.fixture(scope="module")
def bounds(volume: np.ndarray) -> tuple[int, int]:
    middle = volume.shape[1] // 2
    return middle - SLAB // 2, middle + SLAB // 2


@pytest.fixture(scope="module")
def expected(volume: np.ndarray, bounds: tuple[int, int]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(volume[:, bounds[0] : bounds[1], :], axis=1)


def notebook_triple_loop(volume: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The notebook's coronal MIP: a Python loop over output rows, columns and the slab."""
    n_slices, _, n_cols = volume.shape
    out = np.full((n_slices, n_cols), -np.inf, np.float32)
    for i in range(n_slices):
        for j in range(n_cols):
            for k in range(start, stop):
                if volume[i, k, j] > out[i, j]:
                    out[i, j] = volume[i, k, j]
    return out


def test_bench_mip__notebook_triple_loop(benchmark, volume, bounds, expected) -> None:
    benchmark.group = GROUP
    result = benchmark.pedantic(notebook_triple_loop, args=(volume, *bounds), rounds=3, iterations=1)
    valid = np.isfinite(expected)
    np.testing.assert_array_equal(result[valid], expected[valid])


def test_bench_mip__numpy_max(benchmark, volume, bounds, expected) -> None:
    benchmark.group = GROUP
    result = benchmark(np.max, volume[:, bounds[0] : bounds[1], :], axis=1)
    valid = ~np.isnan(volume[:, bounds[0] : bounds[1], :]).any(axis=1)  # np.max propagates NaN
    np.testing.assert_array_equal(result[valid], expected[valid])


def test_bench_mip__numpy_nanmax(benchmark, volume, bounds, expected) -> None:
    benchmark.group = GROUP

    def run() -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmax(volume[:, bounds[0] : bounds[1], :], axis=1)

    np.testing.assert_array_equal(benchmark(run), expected)


def test_bench_mip__ctframe_in_memory(benchmark, lidc_hu, volume, expected) -> None:
    """Graph building plus compute, threaded scheduler, on the same in-memory volume as dask (32-slice chunks)."""
    benchmark.group = GROUP
    in_memory = lidc_hu.copy(data=da.from_array(volume, chunks=(32, -1, -1)))

    def run() -> np.ndarray:
        return ctframe.mip(in_memory, dim="row", slab=SLAB).compute(scheduler="threads").values

    np.testing.assert_array_equal(benchmark(run), expected)


def test_bench_mip__ctframe_numpy_backed(benchmark, lidc_hu, volume, expected) -> None:
    """The same volume held as numpy in the DataArray (e.g. after ``.load()``): no dask overhead."""
    benchmark.group = GROUP
    in_memory = lidc_hu.copy(data=volume)

    def run() -> np.ndarray:
        return ctframe.mip(in_memory, dim="row", slab=SLAB).values

    np.testing.assert_array_equal(benchmark(run), expected)


def test_bench_mip__ctframe_from_disk(benchmark, expected) -> None:
    """End to end: open the 133 files, HU, MIP, compute (reading dominates)."""
    benchmark.group = GROUP

    def run() -> np.ndarray:
        hu = ctframe.to_hu(ctframe.open_series(LIDC))
        with dask.config.set(scheduler="threads"):
            return hu.ct.mip(dim="row", slab=SLAB).values

    result = benchmark.pedantic(run, rounds=5, iterations=1)
    np.testing.assert_array_equal(result, expected)
