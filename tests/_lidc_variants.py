"""Real LIDC-IDRI-0001 slices rewritten with pydicom into geometry variants (for the geometry tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

#: 20 neighbouring slices of the 133 (file names run against position order; any run is contiguous).
LIDC_SLICES = tuple(f"1-{n:03d}.dcm" for n in range(50, 70))


def write_variant(lidc_dir: Path, dest: Path, edit: Callable[[int, pydicom.Dataset], None] | None = None) -> list[Path]:
    """Copy the 20 LIDC slices into `dest`, calling ``edit(k, dataset)`` on each (k = 0..19, by file name)."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, name in enumerate(LIDC_SLICES):
        ds = pydicom.dcmread(lidc_dir / name)
        if edit is not None:
            edit(k, ds)
        path = dest / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def rotation(axis: str, degrees: float) -> np.ndarray:
    """3x3 rotation about a patient axis ("x", "y" or "z")."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    out = np.eye(3)
    out[i, i] = out[j, j] = c
    out[i, j], out[j, i] = -s, s
    return out


def set_orientation(ds: pydicom.Dataset, row_dir: np.ndarray, col_dir: np.ndarray) -> None:
    """Write ImageOrientationPatient as DS text with full precision (16 characters at most)."""
    ds.ImageOrientationPatient = [f"{v:.10g}" for v in (*row_dir, *col_dir)]
