"""Cohorts: selection, one-pass tables against eager numpy, schedulers, longitudinal."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ctframe
from ctframe.cohort import (
    CohortSummary,
    histogram_edges,
    longitudinal_table,
    open_cohort,
    select_series,
    summarize,
)
from ctframe.errors import CohortWarning, NoSeriesError, ScanWarning
from ctframe.privacy import pseudonymous_uid
from ctframe.testing import raise_if_dask_computes, write_phantom_cohort, write_phantom_series

EDGES = histogram_edges()
ALL_EDGES = np.concatenate([[-np.inf], EDGES, [np.inf]])


@pytest.fixture(scope="module")
def cohort_root(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("cohort")
    truths = write_phantom_cohort(root, n_patients=2, n_time_points=2, shape=(40, 96, 96), spacing_mm=(6.0, 3.75, 3.75))
    return root, truths


@pytest.fixture(scope="module")
def cohort(cohort_root):
    return open_cohort(cohort_root[0])


@pytest.fixture(scope="module")
def scan_summary(cohort) -> CohortSummary:
    return summarize(cohort, regions=["scan"], levels=("slice", "series", "patient", "cohort"), progress=False)


def test_open_cohort__tree_and_selection(cohort, cohort_root) -> None:
    _, truths = cohort_root
    assert set(cohort.volumes) == {pseudonymous_uid(t.series_uid) for t in truths}  # keys are pseudonyms
    assert len(cohort.tree.children) == 2  # two patients
    for patient in cohort.tree.children.values():
        assert len(patient.children) == 2  # two studies each
        for study in patient.children.values():
            (series,) = study.children.values()
            assert series.dataset["stored"].dims == ("slice", "row", "col")
    assert cohort.series["selected"].all()
    assert cohort.series["selection_reason"].str.startswith("selected").all()


def test_open_cohort__is_lazy(cohort_root) -> None:
    with raise_if_dask_computes():
        cohort = open_cohort(cohort_root[0])
    assert all(v.chunks for v in cohort.volumes.values())


def test_select_series__prefers_thin_then_long_and_explains(tmp_path: Path) -> None:
    common = {"patient_id": "SEL-1", "study_date": "20210101", "uid_prefix": "same-study"}
    thick = write_phantom_series(tmp_path / "thick", shape=(10, 32, 32), spacing_mm=(5.0, 10.0, 10.0), **common)
    thin = write_phantom_series(tmp_path / "thin", shape=(12, 32, 32), spacing_mm=(2.0, 10.0, 10.0), seed=1, **common)
    table = ctframe.series_table(ctframe.scan(tmp_path))
    # the phantom writer derives the study UID from patient, date and seed: give both one study
    table["study_uid"] = "1.2.3"
    chosen = select_series(table).set_index("stack_key")
    thin_key, thick_key = pseudonymous_uid(thin.series_uid), pseudonymous_uid(thick.series_uid)
    assert chosen.at[thin_key, "selected"] and not chosen.at[thick_key, "selected"]
    assert "another stack of the study is preferred" in chosen.at[thick_key, "selection_reason"]
    by_count = select_series(table, {"prefer": ["most_slices"]}).set_index("stack_key")
    assert by_count.at[thin_key, "selected"]  # 12 > 10 slices
    coronal_only = select_series(table, {"orientations": ["CORONAL"]})
    assert not coronal_only["selected"].any()
    assert coronal_only["selection_reason"].str.contains("excluded: orientation not in CORONAL").all()


def test_open_cohort__nothing_selectable_raises(shared_data: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScanWarning)
        catalog = ctframe.scan(shared_data / "edge-cases" / "pydicom-3.0.2" / "dicomdirtests" / "98892001" / "CT2N")
    with pytest.raises(NoSeriesError, match="passes the series-selection rule"):
        open_cohort(catalog)


def _eager_hu(cohort, key: str) -> np.ndarray:
    return ctframe.to_hu(cohort.volumes[key]).values


def test_summarize__scan_histograms_equal_numpy(cohort, scan_summary) -> None:
    hist = scan_summary.histograms
    patients: dict[str, np.ndarray] = {}
    total = np.zeros(len(ALL_EDGES) - 1, np.int64)
    for key in cohort.volumes:
        hu = _eager_hu(cohort, key)
        values = hu[~np.isnan(hu)]
        expected, _ = np.histogram(values, bins=ALL_EDGES)
        got = hist[(hist["level"] == "series") & (hist["series"] == key)]
        np.testing.assert_array_equal(got["count"].to_numpy(), expected)
        np.testing.assert_array_equal(got["bin_left_hu"].to_numpy(), ALL_EDGES[:-1])
        patient = cohort.volumes[key].attrs["patient_key"]
        patients[patient] = patients.get(patient, 0) + expected
        total += expected
        # per slice
        per_slice = hist[(hist["level"] == "slice") & (hist["series"] == key)]
        assert per_slice["slice_position_mm"].nunique() == hu.shape[0]
        k = 7
        position = cohort.volumes[key]["slice"].values[k]
        slice_expected, _ = np.histogram(hu[k][~np.isnan(hu[k])], bins=ALL_EDGES)
        np.testing.assert_array_equal(per_slice[per_slice["slice_position_mm"] == position]["count"], slice_expected)
    for patient, expected in patients.items():
        got = hist[(hist["level"] == "patient") & (hist["patient_key"] == patient)]["count"].to_numpy()
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(hist[hist["level"] == "cohort"]["count"].to_numpy(), total)


def test_summarize__scan_region_statistics_equal_numpy(cohort, scan_summary) -> None:
    regions = scan_summary.regions.set_index("series")
    for key, volume in cohort.volumes.items():
        hu = _eager_hu(cohort, key)
        values = hu[~np.isnan(hu)].astype(float)
        row = regions.loc[key]
        voxel_ml = np.prod(volume.attrs["pixel_spacing_mm"]) * volume.attrs["slice_spacing_mm"] / 1000
        assert row["voxel_count"] == values.size
        assert row["volume_ml"] == pytest.approx(values.size * voxel_ml)
        assert row["hu_mean"] == pytest.approx(values.mean())
        assert row["hu_std"] == pytest.approx(values.std())
        assert row["hu_median"] == np.median(values)
        assert row["hu_p15"] == np.percentile(values, 15)
        assert row["laa_950_pct"] == pytest.approx(100 * (values < -950).mean())
        assert row["haa_pct"] == pytest.approx(100 * ((values >= -700) & (values < -250)).mean())


def test_summarize__slice_areas_in_mm2(cohort, scan_summary) -> None:
    areas = scan_summary.slice_areas
    key = next(iter(cohort.volumes))
    hu = _eager_hu(cohort, key)
    rows = areas[(areas["series"] == key) & (areas["region"] == "scan")]
    pixel_area = np.prod(cohort.volumes[key].attrs["pixel_spacing_mm"])
    np.testing.assert_allclose(rows["area_mm2"].to_numpy(), (~np.isnan(hu)).sum(axis=(1, 2)) * pixel_area)


def test_summarize__bad_region_and_level_raise(cohort) -> None:
    with pytest.raises(ValueError, match="unknown region"):
        summarize(cohort, regions=["liver"])
    with pytest.raises(ValueError, match="unknown histogram level"):
        summarize(cohort, regions=["scan"], levels=("study",))


def test_summarize__unreadable_stack_is_skipped(tmp_path: Path) -> None:
    truths = write_phantom_cohort(
        tmp_path, n_patients=2, n_time_points=1, shape=(8, 32, 32), spacing_mm=(8.0, 10.0, 10.0)
    )
    cohort = open_cohort(tmp_path)
    broken = truths[1]
    broken.paths[3].write_bytes(broken.paths[3].read_bytes()[:-500])  # truncated after the scan
    good_key, broken_key = pseudonymous_uid(truths[0].series_uid), pseudonymous_uid(broken.series_uid)
    with pytest.warns(CohortWarning, match="skipped"):
        summary = summarize(cohort, regions=["scan"], progress=False)
    assert list(summary.problems["stack_key"]) == [broken_key]
    assert "changed since it was scanned" in summary.problems["reason"].iloc[0]
    ok = summary.regions[summary.regions["series"] == good_key]
    assert ok["volume_ml"].notna().all() and (ok["missing_reason"] == "").all()
    failed = summary.regions[summary.regions["series"] == broken_key]
    assert len(failed) == 1 and failed["volume_ml"].isna().all() and failed["voxel_count"].isna().all()
    assert failed["missing_reason"].iloc[0].startswith("stack not summarised: ")
    assert "changed since it was scanned" in failed["missing_reason"].iloc[0]
    outcome = summary.series.set_index("stack_key")["outcome"]
    assert outcome[good_key] == "summarised" and outcome[broken_key].startswith("failed: ")
    assert set(summary.histograms["series"]) - {""} == {good_key}


def test_longitudinal_table__changes_and_comparability() -> None:
    base = {"study_uid": "s1", "study_date": "20200101", "study_datetime": pd.Timestamp("2020-01-01"),
            "series": "a", "convolution_kernel": "STANDARD", "slice_thickness_mm": 1.0, "kvp": 120.0,
            "manufacturer": "GE", "manufacturer_model": "X"}  # fmt: skip
    later = {**base, "study_uid": "s2", "study_date": "20200131", "study_datetime": pd.Timestamp("2020-01-31"),
             "series": "b", "convolution_kernel": "LUNG"}  # fmt: skip
    rows = []
    for meta, volume in ((base, 4000.0), (later, 3000.0)):
        for region, scale in (("lungs", 1.0), ("right_lung", 0.5), ("left_lung", 0.5)):
            rows.append({**meta, "patient_key": "P-1", "region": region, "volume_ml": volume * scale, "hu_mean": -850.0,
                         "hu_p15": -900.0, "laa_950_pct": 1.0, "haa_pct": 2.0, "haa_volume_ml": 80.0})  # fmt: skip
    table = longitudinal_table(pd.DataFrame(rows))
    volume = table[table["measure"] == "lung_volume_ml"].set_index("series")
    assert volume.at["b", "days_since_baseline"] == 30
    assert volume.at["b", "change_from_baseline"] == -1000.0
    assert volume.at["b", "change_from_baseline_pct"] == -25.0
    assert volume.at["b", "change_from_previous"] == -1000.0
    assert volume.at["a", "change_from_baseline"] == 0.0
    assert not volume.at["b", "comparable_to_baseline"]
    assert "kernel differs (STANDARD vs LUNG)" in volume.at["b", "comparability_notes"]
    assert volume.at["a", "comparable_to_baseline"]


def test_open_cohort__covid_patients_prior_and_current(shared_data: Path) -> None:
    root = shared_data / "covid19-ny-sbu-slices"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScanWarning)
        cohort = open_cohort(root)
    selected = cohort.selected
    assert selected["patient_key"].nunique() == 10 and len(selected) == 20
    assert (selected["orientation"] == "AXIAL").all()
    # folder names are the (de-identified) patient IDs, file names start with the study date
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        dates = sorted({f.name.split("-")[0] for f in (folder / "axial").glob("*.dcm")})
        rows = cohort.catalog[cohort.catalog["path"].str.startswith(str(folder) + os.sep)]
        (key,) = rows["patient_key"].unique()
        mine = selected[selected["patient_key"] == key].sort_values("study_datetime")
        # de-identified: both studies moved back by one offset of 1-10 years, so the interval is exact
        shift = pd.to_datetime(dates, format="%Y%m%d") - pd.to_datetime(mine["study_date"], format="%Y%m%d").values
        assert len(dates) == 2 and shift.nunique() == 1, folder.name  # prior first, then current
        assert 365 <= shift[0].days <= 3650 and not set(dates) & set(mine["study_date"]), folder.name
        assert folder.name not in key
    # coronal and sagittal reformats are recorded as excluded, with the reason
    excluded = cohort.series[~cohort.series["selected"]]
    assert len(excluded) == 40
    assert excluded["selection_reason"].str.contains("orientation not in AXIAL").all()


# --------------------------------------------------------------------------- with the lung segmentation


@pytest.fixture(scope="module")
def lung_cohort(tmp_path_factory):
    """One patient, healthy then with ground glass, at the default phantom resolution (4 mm slices)."""
    root = tmp_path_factory.mktemp("lung-cohort")
    truths = write_phantom_cohort(
        root, n_patients=1, n_time_points=2, shape=(80, 192, 192), spacing_mm=(4.0, 1.875, 1.875), return_arrays=True
    )
    cohort = open_cohort(root)
    return cohort, truths, summarize(cohort, progress=False)


def test_summarize__lung_histograms_equal_numpy_on_the_mask(lung_cohort) -> None:
    from ctframe.cohort import region_categories

    cohort, _, summary = lung_cohort
    hist = summary.histograms
    for key, volume in cohort.volumes.items():
        hu = ctframe.to_hu(volume)
        category = region_categories(hu).values
        values = hu.values
        for region, codes in (("lungs", (2, 3)), ("right_lung", (2,)), ("body", (1, 2, 3)), ("scan", (0, 1, 2, 3))):
            mask = np.isin(category, codes) & ~np.isnan(values)
            expected, _ = np.histogram(values[mask], bins=ALL_EDGES)
            got = hist[(hist["level"] == "series") & (hist["series"] == key) & (hist["region"] == region)]
            np.testing.assert_array_equal(got["count"].to_numpy(), expected, err_msg=region)


def test_summarize__longitudinal_ground_glass_change_within_2_percent(lung_cohort) -> None:
    _, truths, summary = lung_cohort
    baseline, follow_up = truths
    assert baseline.ground_glass_volume_ml == 0 and follow_up.ground_glass_volume_ml > 20
    table = summary.longitudinal
    haa = table[table["measure"] == "lung_haa_volume_ml"].sort_values("days_since_baseline")
    assert haa["days_since_baseline"].tolist() == [0.0, 90.0]
    change = haa["change_from_baseline"].iloc[1]
    known = follow_up.ground_glass_volume_ml - baseline.ground_glass_volume_ml
    assert change == pytest.approx(known, rel=0.02)
    assert haa["comparable_to_baseline"].all()
    volume = table[table["measure"] == "lung_volume_ml"]["value"].to_numpy()
    truth_volume = [sum(t.lung_volume_ml.values()) for t in truths]
    np.testing.assert_allclose(volume, truth_volume, rtol=0.02)
    emd = table[table["measure"] == "lung_emd_from_baseline_hu"]["value"].to_numpy()
    assert emd[0] == 0 and emd[1] > 0


def test_summarize__lung_qc_in_the_series_table(lung_cohort) -> None:
    from ctframe.segment import lung_mask, lung_qc

    cohort, _, summary = lung_cohort
    series = summary.series.set_index("stack_key")
    for key, volume in cohort.volumes.items():
        expected = lung_qc(lung_mask(ctframe.to_hu(volume)))  # the mask made on its own, outside the cohort graph
        assert bool(series.loc[key, "lung_qc_ok"]) == expected["qc_ok"]
        assert series.loc[key, "lung_qc_note"] == expected["qc_note"]
        assert bool(series.loc[key, "lung_qc_cut_feet"]) == expected["qc_cut_feet"]
    assert series.loc[~series["selected"], "lung_qc_ok"].isna().all()
