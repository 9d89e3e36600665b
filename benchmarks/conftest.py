"""Benchmark fixtures: real series from ../shared/data and large phantoms, cached on disk.

Phantoms are written once into ``$CTFRAME_BENCH_DIR`` (default: a ``ctframe-bench``
folder in the system temp dir) and reused by later runs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("CTFRAME_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

BENCH_DIR = Path(os.environ.get("CTFRAME_BENCH_DIR", Path(tempfile.gettempdir()) / "ctframe-bench"))


def phantom_folder(name: str, **options) -> Path:
    """Write (once) and return a phantom series folder under BENCH_DIR."""
    from ctframe.testing import write_phantom_series

    folder = BENCH_DIR / name
    done = BENCH_DIR / ".complete" / name.replace("/", "__")
    if not done.exists():
        done.parent.mkdir(parents=True, exist_ok=True)
        write_phantom_series(folder, return_arrays=False, **options)
        done.write_text("ok")
    return folder


def phantom_cohort(n_series: int, shape=(300, 512, 512)) -> list[Path]:
    """`n_series` distinct 300x512x512 phantom series (patients), cached."""
    return [
        phantom_folder(f"series-{shape[0]}-{i}", shape=shape, spacing_mm=(1.0, 0.7, 0.7), seed=100 + i,
                       patient_id=f"BENCH-{i:02d}")
        for i in range(n_series)
    ]  # fmt: skip


@pytest.fixture(scope="session")
def lidc_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real DICOM data not found at {SHARED_DATA}")
    return SHARED_DATA / "lidc-idri-0001"


@pytest.fixture(scope="session")
def phantom_300() -> Path:
    return phantom_cohort(1)[0]


@pytest.fixture(scope="session")
def lung1_dir() -> Path:
    """NSCLC-Radiomics LUNG1-003: 107 slices (the 100-300 slice range of the Series-to-HU target)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real DICOM data not found at {SHARED_DATA}")
    return SHARED_DATA / "nsclc-radiomics-lung1-003" / "ct"
