"""Header scan of a 2,000-file tree (warm page cache): files per second.

Run: python -m pytest benchmarks/test_bench_scan.py --benchmark-only --benchmark-columns=median,iqr,rounds
"""

from __future__ import annotations

import pydicom
import pytest
from conftest import BENCH_DIR, phantom_folder

import ctframe


@pytest.fixture(scope="module")
def tree_2000():
    for i in range(10):  # 10 series x 200 slices, small pixels: the cost is in the headers
        phantom_folder(f"scan2000/s{i}", shape=(200, 32, 32), spacing_mm=(1.0, 10.0, 10.0), seed=i, patient_id=f"S{i}")
    return BENCH_DIR / "scan2000"


def pydicom_headers(root):
    """The plain alternative: dcmread(stop_before_pixels=True) on every file, one process."""
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(root.rglob("*.dcm"))]


@pytest.mark.parametrize("method", ["ctframe_default", "ctframe_one_process", "pydicom_loop"])
def test_bench_header_scan(benchmark, tree_2000, method: str) -> None:
    benchmark.group = "header scan: 2,000 files"
    funcs = {
        "ctframe_default": lambda: ctframe.scan(tree_2000),
        "ctframe_one_process": lambda: ctframe.scan(tree_2000, workers=1),
        "pydicom_loop": lambda: pydicom_headers(tree_2000),
    }
    result = benchmark.pedantic(funcs[method], rounds=5, warmup_rounds=1)
    assert len(result) == 2000
    benchmark.extra_info["files_per_second"] = round(2000 / benchmark.stats.stats.median)
