"""Header scan of a 2,000-file tree (warm page cache): files per second; the header fast path against dcmread.

Run: python -m pytest benchmarks/test_bench_scan.py --benchmark-only --benchmark-columns=median,iqr,rounds
"""

from __future__ import annotations

from unittest import mock

import pandas as pd
import pydicom
import pytest
from conftest import BENCH_DIR, SHARED_DATA, phantom_folder

import ctframe
from ctframe import dicom


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


#: Real chest CT series: GE (explicit VR), CMS and Philips (implicit VR, with sequences).
REAL_SERIES = {
    "lidc_ge_133": "lidc-idri-0001",
    "nsclc_cms_107": "nsclc-radiomics-lung1-003/ct",
    "lung_pet_ct_philips_64": "lung-pet-ct-dx-a0001/ct",
}


def _declined(fp, size):
    return None


@pytest.mark.parametrize("header_path", ["fast_path", "dcmread"])
@pytest.mark.parametrize("series", sorted(REAL_SERIES))
def test_bench_catalog_records(benchmark, series: str, header_path: str) -> None:
    """``read_header`` on every file of a real series: with the header fast path, and with pydicom's dcmread only."""
    folder = SHARED_DATA / REAL_SERIES[series]
    if not folder.is_dir():
        pytest.skip(f"real DICOM data not found at {folder}")
    paths = sorted(p for p in folder.glob("*.dcm"))
    benchmark.group = f"catalog records: {series}"

    def records():
        return [r for p in paths for r in dicom.read_header(p)]

    if header_path == "dcmread":
        with mock.patch.object(dicom, "parse_header", _declined):
            result = benchmark.pedantic(records, rounds=15, warmup_rounds=2)
    else:
        result = benchmark.pedantic(records, rounds=15, warmup_rounds=2)
    with mock.patch.object(dicom, "parse_header", _declined):
        reference = pd.DataFrame(records())
    assert pd.DataFrame(result).equals(reference)  # both ways give the same catalog (NaN equal to NaN)
    benchmark.extra_info["us_per_file"] = round(benchmark.stats.stats.median / len(paths) * 1e6, 1)
