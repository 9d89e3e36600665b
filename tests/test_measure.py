"""Region statistics: equal to a direct numpy computation on the same voxels, lazily or not."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import ctframe
from ctframe.errors import NotHUCalibratedError, ParameterError
from ctframe.measure import label_names, region_stats, summarize_labels
from ctframe.testing import PhantomTruth, raise_if_dask_computes

PERCENTILES = (5, 15, 25, 50, 75, 95)


def numpy_stats(values: np.ndarray, voxel_ml: float) -> dict[str, float]:
    """The statistics of region_stats, computed directly with numpy on the region's HU values."""
    x = values[~np.isnan(values)].astype(np.float64)
    out = {
        "voxel_count": x.size,
        "volume_ml": x.size * voxel_ml,
        "hu_mean": x.mean(),
        "hu_std": x.std(),
        "hu_median": np.median(x),
        **{f"hu_p{q}": np.percentile(x, q) for q in PERCENTILES},
        "laa_950_pct": 100.0 * (x < -950).mean(),
        "laa_910_pct": 100.0 * (x < -910).mean(),
        "laa_856_pct": 100.0 * (x < -856).mean(),
        "haa_pct": 100.0 * ((x >= -700) & (x < -250)).mean(),
        "haa_volume_ml": ((x >= -700) & (x < -250)).sum() * voxel_ml,
        "consolidation_pct": 100.0 * ((x >= -100) & (x < 150)).mean(),
        "consolidation_volume_ml": ((x >= -100) & (x < 150)).sum() * voxel_ml,
    }
    return {k: float(v) for k, v in out.items()}


def voxel_ml(volume: xr.DataArray) -> float:
    dz = float(np.median(np.diff(volume["slice"].values)))
    dy = float(volume["row"][1] - volume["row"][0])
    dx = float(volume["col"][1] - volume["col"][0])
    return dz * dy * dx / 1000.0


def assert_matches_numpy(row: pd.Series, expected: dict[str, float]) -> None:
    for key, value in expected.items():
        if key in ("voxel_count",) or key.startswith("hu_p") or key == "hu_median":
            assert row[key] == value, key  # integer HU: exact
        else:
            assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


@pytest.fixture(scope="module")
def phantom_hu(phantom: PhantomTruth) -> xr.DataArray:
    return ctframe.to_hu(ctframe.open_series(phantom.folder))


@pytest.fixture(scope="module")
def phantom_values(phantom_hu: xr.DataArray) -> np.ndarray:
    return phantom_hu.values


@pytest.fixture(scope="module")
def truth_labels(phantom: PhantomTruth, phantom_hu: xr.DataArray) -> xr.DataArray:
    """The phantom's truth (0..6) on the volume's grid, as an eager DataArray."""
    return xr.DataArray(phantom.labels, dims=phantom_hu.dims, coords={d: phantom_hu[d] for d in phantom_hu.dims})


def test_region_stats__equals_numpy_on_truth_labels(
    phantom_hu: xr.DataArray, phantom_values: np.ndarray, truth_labels: xr.DataArray
) -> None:
    table = region_stats(phantom_hu, truth_labels, names={1: "right_lung", 2: "left_lung"})
    assert table["label"].tolist() == [1, 2, 3, 4, 5, 6]
    assert table["region"].tolist()[:3] == ["right_lung", "left_lung", "label_3"]
    ml = voxel_ml(phantom_hu)
    labels = truth_labels.values
    for _, row in table.iterrows():
        assert_matches_numpy(row, numpy_stats(phantom_values[labels == row["label"]], ml))


def test_region_stats__equals_numpy_on_lung_mask(phantom: PhantomTruth, phantom_hu: xr.DataArray) -> None:
    """The lazy labels from lung_mask over the same lazy volume (the bind path)."""
    labels = ctframe.lung_mask(phantom_hu)
    with raise_if_dask_computes(max_computes=1):
        table = region_stats(phantom_hu, labels)
    assert table["region"].tolist() == ["right_lung", "left_lung"]
    values, lab = phantom_hu.values, labels.values
    for _, row in table.iterrows():
        assert_matches_numpy(row, numpy_stats(values[lab == row["label"]], voxel_ml(phantom_hu)))
    # volumes close to the writer's truth, and the ground glass shows up as high-attenuation area
    right = table.set_index("region").loc["right_lung"]
    assert right["volume_ml"] == pytest.approx(phantom.lung_volume_ml["right"], rel=0.02)
    total_haa = table["haa_volume_ml"].sum()
    assert total_haa == pytest.approx(phantom.ground_glass_volume_ml, rel=0.05)


def test_region_stats__per_slice_areas(phantom_hu: xr.DataArray, truth_labels: xr.DataArray) -> None:
    table = region_stats(phantom_hu, truth_labels, per_slice=True)
    n = phantom_hu.sizes["slice"]
    assert len(table) == 6 * n  # every slice for every region, zeros where absent
    assert {"slice_index", "slice_position_mm", "area_mm2"} <= set(table.columns)
    pixel_mm2 = float(phantom_hu["row"][1] - phantom_hu["row"][0]) * float(phantom_hu["col"][1] - phantom_hu["col"][0])
    values, labels = phantom_hu.values, truth_labels.values
    right = table[table["label"] == 1].set_index("slice_index")
    expected_area = ((labels == 1) & ~np.isnan(values)).sum(axis=(1, 2)) * pixel_mm2
    np.testing.assert_allclose(right["area_mm2"].to_numpy(), expected_area)
    np.testing.assert_allclose(right["slice_position_mm"].to_numpy(), phantom_hu["slice"].values)
    k = int(np.argmax(expected_area))
    assert_matches_numpy(right.loc[k], numpy_stats(values[k][labels[k] == 1], voxel_ml(phantom_hu)))
    empty = right[right["voxel_count"] == 0]
    assert len(empty) > 0 and empty["hu_mean"].isna().all() and (empty["area_mm2"] == 0).all()
    # per-slice volumes add up to the region's volume
    whole = region_stats(phantom_hu, truth_labels).set_index("label")
    assert right["volume_ml"].sum() == pytest.approx(whole.loc[1, "volume_ml"])


def test_region_stats__nan_voxels_are_never_counted(phantom_hu: xr.DataArray, phantom_values: np.ndarray) -> None:
    everything = xr.DataArray(np.ones(phantom_hu.shape, np.uint8), dims=phantom_hu.dims)
    row = region_stats(phantom_hu, everything).iloc[0]
    assert np.isnan(phantom_values).sum() > 0
    assert row["voxel_count"] == int((~np.isnan(phantom_values)).sum())
    assert np.isfinite(row["hu_mean"]) and row["hu_mean"] == pytest.approx(np.nanmean(phantom_values.astype(float)))


@pytest.mark.parametrize("chunks", [(1, -1, -1), (7, -1, -1), (80, -1, -1), (10, 50, 64)])
def test_region_stats__lazy_equals_eager(
    phantom_hu: xr.DataArray, phantom_values: np.ndarray, truth_labels: xr.DataArray, chunks: tuple[int, ...]
) -> None:
    eager_hu = phantom_hu.copy(data=phantom_values)
    expected = region_stats(eager_hu, truth_labels, per_slice=True)
    lazy_hu = phantom_hu.copy(data=da.from_array(phantom_values, chunks=chunks))
    lazy_labels = truth_labels.copy(data=da.from_array(truth_labels.values, chunks=(13, -1, -1)))
    with raise_if_dask_computes(max_computes=1):
        got = region_stats(lazy_hu, lazy_labels, per_slice=True)
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12)


def test_region_stats__options_and_names(phantom_hu: xr.DataArray, truth_labels: xr.DataArray) -> None:
    values, labels = phantom_hu.values, truth_labels.values
    table = region_stats(
        phantom_hu, truth_labels, percentiles=[10, 90], laa_thresholds_hu=[-900], haa_range_hu=[-600, -500],
        include_background=True,
    )  # fmt: skip
    assert table["label"].tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert {"hu_p10", "hu_p90", "laa_900_pct"} <= set(table.columns) and "hu_p15" not in table.columns
    lung = values[labels == 1]
    row = table.set_index("label").loc[1]
    assert row["hu_p10"] == np.percentile(lung, 10)
    assert row["laa_900_pct"] == pytest.approx(100.0 * (lung < -900).mean())
    assert row["haa_pct"] == pytest.approx(100.0 * ((lung >= -600) & (lung < -500)).mean())
    # names from the CF attrs of the labels, overridden by `names`
    named = truth_labels.assign_attrs(flag_values=[0, 1, 2], flag_meanings="background lung_r lung_l")
    assert label_names(named) == {0: "background", 1: "lung_r", 2: "lung_l"}
    regions = region_stats(phantom_hu, named, names={2: "left"})["region"].tolist()
    assert regions[:2] == ["lung_r", "left"]


def test_region_stats__consolidation_range(phantom: PhantomTruth, phantom_hu: xr.DataArray) -> None:
    """The dense part of the lungs in its own HU range: the phantom's consolidation (+20 HU) and vessels (+45 HU)."""
    labels = ctframe.lung_mask(phantom_hu)
    values = phantom_hu.values
    lungs = np.isin(labels.values, (1, 2))
    table = region_stats(phantom_hu, labels, consolidation_range_hu=[0, 100]).set_index("region")
    for name, value in (("right_lung", 1), ("left_lung", 2)):
        x = values[labels.values == value]
        expected = ((x >= 0) & (x < 100)).sum()
        assert table.loc[name, "consolidation_volume_ml"] == pytest.approx(expected * voxel_ml(phantom_hu))
        assert table.loc[name, "consolidation_pct"] == pytest.approx(100.0 * expected / np.isfinite(x).sum())
    # the truth's consolidation (+20 HU, inside the right lung) is all counted
    dense_truth = phantom.ggo & (phantom.hu > -320) & lungs
    assert dense_truth.sum() > 100
    assert table["consolidation_volume_ml"].sum() >= dense_truth.sum() * voxel_ml(phantom_hu)
    with pytest.raises(ParameterError, match="consolidation_range_hu must be"):
        region_stats(phantom_hu, labels, consolidation_range_hu=[100, 0])


def test_region_stats__bool_mask_and_accessor(phantom_hu: xr.DataArray, phantom_values: np.ndarray) -> None:
    body = ctframe.body_mask(phantom_hu)
    table = phantom_hu.ct.region_stats(body)
    assert table["label"].tolist() == [1]
    assert_matches_numpy(table.iloc[0], numpy_stats(phantom_values[body.values], voxel_ml(phantom_hu)))


def test_region_stats__lidc_lungs_equal_numpy(lidc_dir: Path) -> None:
    hu = ctframe.to_hu(ctframe.open_series(lidc_dir))
    labels = ctframe.lung_mask(hu).compute()  # segment once; the lazy-labels path is tested on the phantom
    table = region_stats(hu, labels)
    values, lab = hu.values, labels.values
    for _, row in table.iterrows():
        assert_matches_numpy(row, numpy_stats(values[lab == row["label"]], voxel_ml(hu)))
    assert (table["hu_p15"] < -800).all() and (table["hu_p15"] > -1000).all()


def test_summarize_labels__rejects_negative_labels() -> None:
    with pytest.raises(ParameterError, match="labels must be >= 0, found -1"):
        summarize_labels(np.zeros((1, 2, 2), np.float32), np.array([[[0, -1], [1, 1]]]))


def test_region_stats__errors(phantom_hu: xr.DataArray, truth_labels: xr.DataArray, phantom: PhantomTruth) -> None:
    with pytest.raises(NotHUCalibratedError, match=r"needs HU .* ctframe.to_hu"):
        region_stats(ctframe.open_series(phantom.folder), truth_labels)
    with pytest.raises(ParameterError, match="labels must be integers or bool"):
        region_stats(phantom_hu, truth_labels.astype(float))
    with pytest.raises(ParameterError, match="labels must lie on the volume's grid"):
        region_stats(phantom_hu, truth_labels.isel(slice=slice(1, None)))
    shifted = truth_labels.assign_coords(row=truth_labels["row"] + 1.0)
    with pytest.raises(ParameterError, match=r"'row' coordinates of the labels and of the volume .* differ"):
        region_stats(phantom_hu, shifted)
    with pytest.raises(ParameterError, match=r"percentiles must be numbers in \[0, 100\]"):
        region_stats(phantom_hu, truth_labels, percentiles=[150])
    with pytest.raises(ParameterError, match="haa_range_hu must be"):
        region_stats(phantom_hu, truth_labels, haa_range_hu=[-250, -700])
    with pytest.raises(ParameterError, match="HU thresholds must be whole numbers"):
        region_stats(phantom_hu, truth_labels, laa_thresholds_hu=[-950.5])
    with pytest.raises(ParameterError, match=r"needs two xarray\.DataArrays"):
        region_stats(phantom_hu, truth_labels.values)  # type: ignore[arg-type]
