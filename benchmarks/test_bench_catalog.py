"""A persisted catalog: re-scanning an unchanged 10,000-file tree against the first scan.

Issue 16's target: the re-scan (list the tree, compare sizes and versions with the Parquet
catalog, read nothing) takes under 5% of the first scan (every header read, catalog written).
Both run in this session on the same tree, so their ratio is what counts; the median of each
is in the benchmark table and the ratio in ``extra_info["ratio_to_first_scan"]`` of the re-scan.

Run: python -m pytest benchmarks/test_bench_catalog.py --benchmark-only --benchmark-columns=median,iqr,rounds
"""

from __future__ import annotations

import warnings

import pytest
from conftest import BENCH_DIR, phantom_folder

import ctframe

#: Medians of this session, for the ratio (first scan runs first: tests run in file order).
MEDIANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def tree_10000():
    for i in range(50):  # 50 series x 200 slices, small pixels: the cost is in the headers and the listing
        phantom_folder(
            f"catalog10000/s{i:02d}", shape=(200, 16, 16), spacing_mm=(1.0, 10.0, 10.0), seed=i, patient_id=f"C{i:02d}"
        )
    return BENCH_DIR / "catalog10000"


def _scan(root, catalog):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.ScanWarning)
        return ctframe.scan(root, catalog=catalog)


def test_bench_catalog_first_scan(benchmark, tree_10000, tmp_path) -> None:
    path = tmp_path / "first.parquet"

    def fresh() -> tuple[tuple, dict]:
        path.unlink(missing_ok=True)
        return (tree_10000, path), {}

    catalog = benchmark.pedantic(_scan, setup=fresh, rounds=3, warmup_rounds=1)
    assert len(catalog) == 10_000 and catalog.attrs["scan_changes"]["new"] == 10_000
    MEDIANS["first"] = benchmark.stats.stats.median


def test_bench_catalog_rescan_unchanged(benchmark, tree_10000, tmp_path) -> None:
    path = tmp_path / "catalog.parquet"
    _scan(tree_10000, path)
    catalog = benchmark.pedantic(_scan, args=(tree_10000, path), rounds=10, warmup_rounds=1)
    assert len(catalog) == 10_000 and catalog.attrs["scan_changes"]["unchanged"] == 10_000
    if "first" in MEDIANS:
        benchmark.extra_info["ratio_to_first_scan"] = round(benchmark.stats.stats.median / MEDIANS["first"], 4)
