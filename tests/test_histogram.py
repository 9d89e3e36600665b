"""Stored-value counting and one-pass summaries: the compiled loop equals np.bincount on real data."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import ctframe
from ctframe import kernels
from ctframe.histogram import _count_values, summarize_block


@pytest.fixture(scope="module")
def lidc_stored(lidc_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.CTFrameWarning)
        volume = ctframe.open_series(lidc_dir)
    return volume.values[40:72], volume["rescale_slope"].values[40:72], volume["rescale_intercept"].values[40:72]


def _bincount_reference(stored: np.ndarray, lo: int, n_values: int, category=None, n_categories: int = 1):
    out = np.zeros((stored.shape[0], n_categories, n_values), np.int64)
    for k in range(stored.shape[0]):
        for c in range(n_categories):
            values = stored[k] if category is None else stored[k][category[k] == c]
            out[k, c] = np.bincount(values.ravel().astype(np.int64) - lo, minlength=n_values)
    return out


def test_count_values__compiled_loop_equals_bincount_on_lidc(lidc_stored) -> None:
    stored = lidc_stored[0]
    assert kernels.counting_kernels() is not None  # numba is a dependency: the compiled loop is what runs
    lo, n_values = int(stored.min()), int(stored.max()) - int(stored.min()) + 1
    np.testing.assert_array_equal(_count_values(stored, lo, n_values), _bincount_reference(stored, lo, n_values))
    # with region categories (here: below / above -500 HU in stored values), as summaries by region use them
    category = (stored > 524).astype(np.uint8) + (stored > 1100).astype(np.uint8)
    np.testing.assert_array_equal(
        _count_values(stored, lo, n_values, category, 3), _bincount_reference(stored, lo, n_values, category, 3)
    )


def test_count_values__fallback_without_numba_gives_the_same(lidc_stored, monkeypatch) -> None:
    stored = lidc_stored[0][:4]
    lo, n_values = int(stored.min()), int(stored.max()) - int(stored.min()) + 1
    category = (stored > 524).astype(np.uint8)
    compiled = _count_values(stored, lo, n_values, category, 2)
    monkeypatch.setattr(kernels, "counting_kernels", lambda: None)
    np.testing.assert_array_equal(_count_values(stored, lo, n_values, category, 2), compiled)


@pytest.mark.parametrize("numba", [True, False])
def test_count_values__out_of_range_raises_instead_of_writing_outside(numba: bool, monkeypatch) -> None:
    if not numba:
        monkeypatch.setattr(kernels, "counting_kernels", lambda: None)
    stored = np.array([[[0, 5, 9]]], np.int16)
    with pytest.raises(ValueError, match="region categories not below 2"):
        _count_values(stored, 0, 10, np.array([[[0, 1, 2]]], np.uint8), 2)
    if numba:  # np.bincount would silently grow; the compiled loop checks every index
        with pytest.raises(ValueError, match=r"outside \[1, 11\)"):
            _count_values(stored, 1, 10)


def test_summarize_block__counts_equal_numpy_histogram_of_hu(lidc_stored) -> None:
    stored, slope, intercept = lidc_stored
    summary = summarize_block(stored, slope, intercept, padding_value=-2000.0)
    hu = stored.astype(np.float64) * slope[:, None, None] + intercept[:, None, None]
    kept = hu[(stored != -2000) & (hu >= -1500)]
    expected, _ = np.histogram(kept, bins=np.arange(-2048, 4097))
    np.testing.assert_array_equal(summary.counts[0, 1:-1], expected)
    assert summary.sums[0] == pytest.approx(kept.sum())


def test_count_values__big_endian_values_are_counted_too() -> None:
    stored = np.array([[[3, 4, 4], [5, 3, 3]]], dtype=">i2")
    np.testing.assert_array_equal(_count_values(stored, 3, 3), [[[3, 2, 1]]])
