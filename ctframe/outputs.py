"""The output folder of ``ctframe summarize``: tables, provenance, figures, report.

:func:`write_summary` writes everything into a temporary folder beside OUTDIR and
renames it into place at the end, so OUTDIR appears whole or not at all, and an
existing OUTDIR is replaced only with ``overwrite=True``. File names come from
fixed names and pseudonyms, never from header values.
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import hashlib
import json
import os
import platform
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from ctframe.export import atomic_path

__all__ = ["DEPENDENCIES", "OUTPUT_FILES", "provenance", "write_summary", "write_table"]

#: Packages whose versions go into provenance.json.
DEPENDENCIES = (
    "ctframe", "numpy", "pandas", "xarray", "dask", "distributed", "pydicom", "pylibjpeg", "imagecodecs",
    "scikit-image", "scipy", "pyarrow", "matplotlib", "hvplot",
)  # fmt: skip
#: Files every summary folder holds.
OUTPUT_FILES = (
    "series.parquet", "series.csv", "regions.parquet", "regions.csv", "histograms.parquet",
    "longitudinal.parquet", "longitudinal.csv", "slice_areas.parquet", "problems.csv", "input_checksums.csv",
    "provenance.json",
)  # fmt: skip


def write_table(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a table as Parquet or CSV, chosen by the file extension.

    Raises
    ------
    ValueError
        The extension is neither ``.parquet`` nor ``.csv``.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        table.to_csv(path, index=False)
    else:
        raise ValueError(f"{path}: write tables as .parquet or .csv")
    return path


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        for block in iter(lambda: fp.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_checksums(catalog: pd.DataFrame, root: str | os.PathLike[str] | None) -> pd.DataFrame:
    """SHA-256 and size of every catalogued file (paths relative to `root`)."""
    paths = sorted(set(catalog["path"]))
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        digests = list(pool.map(_sha256, paths))
    base = Path(root) if root is not None and Path(root).is_dir() else None
    names = [os.path.relpath(p, base) if base is not None else p for p in paths]
    sizes = [os.stat(p).st_size for p in paths]
    return pd.DataFrame({"path": names, "file_size": sizes, "sha256": digests})


def provenance(config: Mapping[str, Any], checksums: pd.DataFrame, *, command: str, scheduler: str) -> dict[str, Any]:
    """What produced an output folder: versions, configuration, inputs, time."""
    versions = {}
    for name in DEPENDENCIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    manifest = hashlib.sha256(
        "\n".join(f"{p} {s}" for p, s in zip(checksums["path"], checksums["sha256"], strict=True)).encode()
    )
    return {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "scheduler": scheduler,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "config": config,
        "inputs": {
            "n_files": len(checksums),
            "total_bytes": int(checksums["file_size"].sum()),
            "sha256_of_checksums": manifest.hexdigest(),
        },
    }


def write_summary(
    summary: Any,
    outdir: str | os.PathLike[str],
    *,
    catalog: pd.DataFrame,
    scan_problems: pd.DataFrame,
    config: Mapping[str, Any],
    root: str | os.PathLike[str] | None,
    command: str,
    scheduler: str,
    overwrite: bool = False,
    extras: Callable[[Path], None] | None = None,
) -> Path:
    """Write a :class:`~ctframe.cohort.CohortSummary` into `outdir`, atomically.

    Parameters
    ----------
    summary : CohortSummary
    outdir : path-like
        Must not exist unless `overwrite`.
    catalog : DataFrame
        The scanned catalog (for input checksums).
    scan_problems : DataFrame
        Files skipped by the scan (path, reason).
    config : mapping
        The merged configuration used.
    root : path-like, optional
        Input root; checksum paths are written relative to it.
    command, scheduler : str
        Recorded in provenance.json.
    overwrite : bool
        Replace an existing `outdir` (only once the new one is complete).
    extras : callable, optional
        Called with the temporary folder to add figures and the report.

    Returns
    -------
    Path
        `outdir`.

    Raises
    ------
    OutputExistsError
        `outdir` exists and `overwrite` is False.
    """
    with atomic_path(outdir, overwrite=overwrite) as tmp:
        tmp.mkdir()
        write_table(summary.series, tmp / "series.parquet")
        write_table(summary.series, tmp / "series.csv")
        write_table(summary.regions, tmp / "regions.parquet")
        write_table(summary.regions, tmp / "regions.csv")
        write_table(summary.histograms, tmp / "histograms.parquet")
        write_table(summary.longitudinal, tmp / "longitudinal.parquet")
        write_table(summary.longitudinal, tmp / "longitudinal.csv")
        write_table(summary.slice_areas, tmp / "slice_areas.parquet")
        problems = pd.concat(
            [
                scan_problems.assign(stage="scan", stack_key=""),
                summary.problems.assign(stage="compute", path=""),
            ],
            ignore_index=True,
        ).reindex(columns=["stage", "path", "stack_key", "reason"])
        write_table(problems, tmp / "problems.csv")
        checksums = input_checksums(catalog, root)
        write_table(checksums, tmp / "input_checksums.csv")
        record = provenance(config, checksums, command=command, scheduler=scheduler)
        (tmp / "provenance.json").write_text(json.dumps(record, indent=2, default=str))
        if extras is not None:
            extras(tmp)
    return Path(outdir)
