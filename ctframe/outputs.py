"""The output folder of ``ctframe summarize``: tables, provenance, figures, report.

:func:`write_summary` writes everything into a temporary folder beside OUTDIR and
renames it into place at the end, so OUTDIR appears whole or not at all, and an
existing OUTDIR is replaced only with ``overwrite=True``. File names come from
fixed names and pseudonyms, never from header values.

Every table is de-identified at its source (:mod:`ctframe.privacy`); here the
identifying columns of a catalog scanned with ``include_phi=True`` are dropped
from every shared table once more and written only to ``linkage.csv``, and
provenance.json names where the salt came from, never the salt.
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
from ctframe.privacy import linkage_table, salt_source
from ctframe.scan import PHI_COLUMNS
from ctframe.sources import is_remote, redact

__all__ = ["DEPENDENCIES", "LINKAGE_FILE", "OUTPUT_FILES", "provenance", "write_summary", "write_table"]

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
#: Written only when the catalog holds the original identifiers (``--keep-identifiers``).
LINKAGE_FILE = "linkage.csv"


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


def _shared(table: pd.DataFrame) -> pd.DataFrame:
    """`table` without identifying columns and attrs (they belong in linkage.csv only)."""
    out = table.drop(columns=[c for c in PHI_COLUMNS if c in table])
    out.attrs = {}
    return out


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        for block in iter(lambda: fp.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_checksums(catalog: pd.DataFrame, root: str | os.PathLike[str] | None) -> pd.DataFrame:
    """SHA-256 and size of every catalogued local file (paths relative to `root`).

    Remote files (object storage, DICOMweb) are not downloaded again for a
    checksum: their row holds the size and version the scan recorded
    (``file_version``: ETag or version id) and an empty ``sha256``.
    """
    firsts = catalog.drop_duplicates("path").set_index("path")
    paths = sorted(firsts.index)
    local = [p for p in paths if not is_remote(p)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        digests = dict(zip(local, pool.map(_sha256, local), strict=True))
    base = Path(root) if root is not None and not is_remote(os.fspath(root)) and Path(root).is_dir() else None
    names = [os.path.relpath(p, base) if base is not None and p in digests else redact(p) for p in paths]
    sizes = [os.stat(p).st_size if p in digests else int(firsts.at[p, "file_size"]) for p in paths]
    versions = [str(firsts.at[p, "file_version"]) if "file_version" in firsts else "" for p in paths]
    return pd.DataFrame(
        {"path": names, "file_size": sizes, "file_version": versions, "sha256": [digests.get(p, "") for p in paths]}
    )


def _without_salt(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration with ``pseudonym.salt`` replaced by a note (the salt is never written)."""
    out = dict(config)
    if isinstance(out.get("pseudonym"), Mapping) and "salt" in out["pseudonym"]:
        out["pseudonym"] = {**out["pseudonym"], "salt": "(not recorded)"}
    return out


def provenance(
    config: Mapping[str, Any],
    checksums: pd.DataFrame,
    *,
    command: str,
    scheduler: str,
    keep_identifiers: bool = False,
) -> dict[str, Any]:
    """What produced an output folder: versions, configuration, inputs, time, de-identification.

    The salt itself is never recorded: ``config`` has it replaced and
    ``deidentification.salt`` says only where it came from.
    """
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
        "config": _without_salt(config),
        "deidentification": {
            "profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile, "
            "Retain Longitudinal Temporal Information with Modified Dates Option",
            "uids": "replaced by 2.25.<128 bits of HMAC-SHA256(salt, UID)>",
            "dates": "moved back by 365 to 3650 whole days per patient (HMAC of the PatientID); times of day kept",
            "patients": "P-<HMAC-SHA256(salt, PatientID)>",
            "salt": salt_source(),
            "original_identifiers": f"only in {LINKAGE_FILE}" if keep_identifiers else "not written",
        },
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

    Notes
    -----
    When `catalog` holds the original identifiers (scanned with
    ``include_phi=True``), they are written to ``linkage.csv``
    (:func:`ctframe.linkage_table`) and nowhere else; every other table has
    the identifying columns dropped.

    Returns
    -------
    Path
        `outdir`.

    Raises
    ------
    OutputExistsError
        `outdir` exists and `overwrite` is False.
    """
    keep_identifiers = "original_series_uid" in catalog
    with atomic_path(outdir, overwrite=overwrite) as tmp:
        tmp.mkdir()
        for name, table in (
            ("series", summary.series), ("regions", summary.regions), ("histograms", summary.histograms),
            ("longitudinal", summary.longitudinal), ("slice_areas", summary.slice_areas),
        ):  # fmt: skip
            shared = _shared(table)
            write_table(shared, tmp / f"{name}.parquet")
            if f"{name}.csv" in OUTPUT_FILES:
                write_table(shared, tmp / f"{name}.csv")
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
        if keep_identifiers:
            write_table(linkage_table(catalog), tmp / LINKAGE_FILE)
        record = provenance(
            config, checksums, command=command, scheduler=scheduler, keep_identifiers=keep_identifiers
        )
        (tmp / "provenance.json").write_text(json.dumps(record, indent=2, default=str))
        if extras is not None:
            extras(tmp)
    return Path(outdir)
