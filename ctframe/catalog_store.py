"""A catalog that persists: Parquet on disk, brought up to date by reading only what changed.

``ctframe.scan(source, catalog="cohort.parquet")`` (CLI: ``ctframe scan SOURCE
--catalog cohort.parquet``) writes the catalog with what identifies each file's
version: ``file_size`` and ``file_version`` (``mtime_ns`` locally, the ETag or
version id in object storage; DICOMweb instances are identified by their sealed
SOPInstanceUID). The next scan of the same source lists the files (one listing,
no header read), reads the headers of the files that are new or whose size or
version changed, drops the rows of files that are gone, and reports the counts
in ``catalog.attrs["scan_changes"]``. Files that were problems keep their
reason until they change. A catalog written with another salt (its pseudonyms
would not match) or another ``include_phi`` is read again in full.

The file is replaced whole (written beside it, then renamed): a crash leaves the
previous catalog, never half of one. It holds no credentials; its source
locations are stored redacted (:func:`ctframe.sources.redact`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ctframe.errors import DicomReadError, ParameterError
from ctframe.privacy import pseudonymous_uid
from ctframe.scan import (
    STACK_COLUMNS,
    CatalogRows,
    assign_stacks,
    catalog_columns,
    is_dicomweb_root,
    read_catalog_rows,
    root_label,
    with_scan_attrs,
)
from ctframe.sources import Access, FileInfo, gc_paused, is_dicomweb, is_remote, list_files

__all__ = ["read_catalog", "update_catalog", "write_catalog"]

#: Format tag stored in the Parquet metadata (bumped when the layout changes).
FORMAT = "ctframe-catalog/1"
_META_KEY = b"ctframe"


def _salt_check(salt: str) -> str:
    """A value that tells whether two catalogs were pseudonymised with the same salt (reveals nothing of it)."""
    return pseudonymous_uid("ctframe-catalog-salt-check", salt=salt)


def write_catalog(catalog: pd.DataFrame, path: str | os.PathLike[str], *, salt: str) -> None:
    """Write `catalog` (from :func:`ctframe.scan`) to the Parquet file `path`, whole or not at all.

    Parameters
    ----------
    catalog : DataFrame
        A catalog; its problems, roots and file versions of problem files
        (``attrs["problem_versions"]``) are kept in the file's metadata.
    path : path-like
        A local ``.parquet`` file; replaced atomically.
    salt : str
        The salt the catalog was pseudonymised with (only a check value derived from it is stored).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = os.fspath(path)
    if is_remote(target):
        raise ParameterError(f"{target}: a catalog is written to a local file; give a local path")
    versions = dict(catalog.attrs.get("problem_versions", {}))
    meta = {
        "format": FORMAT,
        "problems": [[p, r, *versions.get(p, (-1, ""))] for p, r in catalog.attrs.get("problems", ())],
        "roots": list(catalog.attrs.get("roots", ())),
        "n_files": int(catalog.attrs.get("n_files", 0)),
        "include_phi": "patient_id" in catalog,
        "salt_check": _salt_check(salt),
    }
    table = pa.Table.from_pandas(catalog, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()})
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_catalog(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A catalog written by :func:`write_catalog` (or ``ctframe scan --catalog``), with its attrs.

    Raises
    ------
    DicomReadError
        The file is not a ctframe catalog (or was written by an incompatible version).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = os.fspath(path)
    try:
        table = pq.read_table(source)
    except FileNotFoundError:
        raise DicomReadError(f"{source}: no such catalog file; write one with ctframe scan SOURCE --catalog") from None
    except (OSError, ValueError, pa.ArrowException) as exc:  # pyarrow's errors on a file that is not Parquet
        raise DicomReadError(f"{source}: not a readable Parquet catalog ({type(exc).__name__}: {exc})") from None
    raw = (table.schema.metadata or {}).get(_META_KEY)
    meta = json.loads(raw) if raw else {}
    if meta.get("format") != FORMAT:
        raise DicomReadError(
            f"{source}: not a ctframe catalog of format {FORMAT} (found {meta.get('format')!r}); scan the source again"
        )
    catalog = table.to_pandas()
    catalog.attrs["problems"] = tuple((p, r) for p, r, *_ in meta["problems"])
    catalog.attrs["problem_versions"] = {p: (int(size), str(version)) for p, _, size, version in meta["problems"]}
    catalog.attrs["roots"] = tuple(meta["roots"])
    catalog.attrs["n_files"] = meta["n_files"]
    catalog.attrs["scan_mode"] = f"catalog: {os.path.basename(source)}"
    catalog.attrs["scan_worker_pids"] = ()
    catalog.attrs["salt_check"] = meta["salt_check"]
    catalog.attrs["access"] = Access()
    return catalog


def _objects(column: pd.Series) -> list[str]:
    """A text column as a list of Python strings, converted in one go."""
    return column.astype(str).to_numpy(dtype=object).tolist()


def _listing(roots: Sequence[Any], access: Access) -> list[FileInfo]:
    infos: list[FileInfo] = []
    for item in roots:
        infos.extend(list_files(os.fspath(item), access))
    return infos


def _update_web(
    stored: pd.DataFrame | None,
    web_roots: Sequence[Any],
    salt: str,
    include_phi: bool,
    access: Access,
    changes: dict[str, int],
) -> tuple[pd.DataFrame, pd.DataFrame, list[tuple[str, str]], int]:
    """The DICOMweb part of an update: rows kept, rows read again, problems, and the instances counted.

    A series whose QIDO-RS instance count still equals its instances in the stored catalog is
    kept without a metadata request (DICOM instances do not change under their UID); every
    other series is read again from its WADO-RS metadata, and its instances are compared with
    the stored ones by sealed path and version. Series with non-image instances (problems) never
    match their count, so they are always read again and their problems are fresh.
    """
    empty = pd.DataFrame(columns=catalog_columns(include_phi))
    if not web_roots:
        return empty, empty, [], 0
    from ctframe.dicomweb import discover

    stored_web = empty if stored is None else stored[stored["path"].str.startswith("dicomweb+")]
    known_series = stored_web.groupby("series_uid")["path"].nunique().to_dict() if len(stored_web) else {}
    frames, problems, unchanged_series = [], [], set()
    for item in web_roots:
        frame, found = discover(item, salt=salt, include_phi=include_phi, access=access, known_series=known_series)
        frames.append(frame)
        problems.extend((p["path"], p["reason"]) for p in found)
        unchanged_series |= set(frame.attrs.get("unchanged_series", ()))
    fresh = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else empty
    kept = stored_web[stored_web["series_uid"].isin(unchanged_series)]
    before = dict(zip(_objects(stored_web["path"]), _objects(stored_web["file_version"]), strict=True))
    after = dict(zip(_objects(fresh["path"]), _objects(fresh["file_version"]), strict=True))
    kept_paths = set(kept["path"])
    changes["unchanged"] += len(kept_paths) + sum(before.get(p) == v for p, v in after.items())
    changes["new"] += sum(p not in before for p in after)
    changes["changed"] += sum(p in before and before[p] != v for p, v in after.items())
    changes["removed"] += len(set(before) - kept_paths - set(after))
    return kept, fresh, problems, len(kept_paths) + len(after) + len(problems)


def _known_versions(stored: pd.DataFrame) -> dict[str, tuple[int, str]]:
    """(size, version) of every file or instance of a stored catalog: its rows and its problem files."""
    firsts = stored.drop_duplicates("path")
    # lists of Python objects: iterating pandas' Arrow-backed strings one by one costs 3 us each
    known = dict(
        zip(
            _objects(firsts["path"]),
            zip(firsts["file_size"].to_numpy(int).tolist(), _objects(firsts["file_version"]), strict=True),
            strict=True,
        )
    )
    known.update(stored.attrs["problem_versions"])
    return known


def _unchanged(
    stored: pd.DataFrame, listing: list[FileInfo], roots: Sequence[Any], access: Access, target: str, salt: str
) -> pd.DataFrame:
    """The stored catalog as the result of a re-scan that found nothing new, changed or gone."""
    result = CatalogRows(
        rows=stored,
        problems=stored.attrs["problems"],
        mode=f"catalog: {len(listing)} unchanged, 0 file(s) read",
        pids=(),
        n_files=len(listing),
        roots=tuple(root_label(r) for r in roots),
        access=access,
    )
    versions, stored_roots = stored.attrs["problem_versions"], stored.attrs.get("roots")
    catalog = with_scan_attrs(stored, result)
    catalog.attrs["problem_versions"] = versions
    catalog.attrs["scan_changes"] = {"unchanged": len(listing), "new": 0, "changed": 0, "removed": 0}
    if stored_roots != result.roots:
        write_catalog(catalog, target, salt=salt)  # the same files under another root name: record it
    return catalog


def update_catalog(
    path: str | os.PathLike[str],
    roots: Sequence[Any],
    *,
    salt: str,
    include_phi: bool,
    workers: int | None,
    progress: bool | None,
    access: Access,
) -> pd.DataFrame:
    """Bring the persisted catalog `path` up to date with `roots` and write it back (see the module docstring).

    Returns
    -------
    DataFrame
        The catalog, as :func:`ctframe.scan` returns it, with
        ``attrs["scan_changes"]``: counts of ``unchanged``, ``new``,
        ``changed`` and ``removed`` files (DICOMweb: instances).
    """
    target = os.fspath(path)
    web_roots = [r for r in roots if is_dicomweb_root(r)]
    file_roots = [r for r in roots if not is_dicomweb_root(r)]
    stored = read_catalog(target) if os.path.exists(target) else None
    if stored is not None and (
        stored.attrs["salt_check"] != _salt_check(salt) or ("patient_id" in stored) != include_phi
    ):
        stored = None  # other pseudonyms or other columns: nothing of it can be reused
    listing = _listing(file_roots, access)
    with gc_paused():  # tens of thousands of small tuples (see gc_paused)
        known = _known_versions(stored) if stored is not None else {}
        unchanged = {info.path for info in listing if known.get(info.path) == (info.size, info.version)}
    if stored is not None and not web_roots and len(unchanged) == len(known) == len(listing):
        return _unchanged(stored, listing, roots, access, target, salt)  # the common re-scan: nothing to do
    current = {info.path: (info.size, info.version) for info in listing}
    is_web = {p for p in known if is_dicomweb(p)}
    known = {p: v for p, v in known.items() if p not in is_web}  # DICOMweb instances: see _update_web

    kept_rows = pd.DataFrame(columns=catalog_columns(include_phi))
    kept_problems: list[tuple[str, str]] = []
    versions: dict[str, tuple[int, str]] = {}
    if stored is not None:
        paths = stored["path"].to_numpy(dtype=object)
        kept_rows = stored[np.fromiter((p in unchanged for p in paths), bool, len(paths))]
        kept_problems = [(p, r) for p, r in stored.attrs["problems"] if p in unchanged]
        versions = {p: v for p, v in stored.attrs["problem_versions"].items() if p in unchanged}
    to_read = sorted(p for p, v in current.items() if known.get(p) != v)
    changes = {
        "unchanged": len(current) - len(to_read),
        "new": sum(p not in known for p in to_read),
        "changed": sum(p in known for p in to_read),
        "removed": sum(p not in current for p in known) + (0 if web_roots else len(is_web)),
    }
    fresh: CatalogRows = read_catalog_rows(
        file_roots,
        to_read,
        salt=salt,
        include_phi=include_phi,
        workers=workers,
        progress=progress,
        access=access,
    )
    kept_web, fresh_web, web_problems, n_web = _update_web(stored, web_roots, salt, include_phi, access, changes)
    parts = [
        frame.drop(columns=[c for c in STACK_COLUMNS if c in frame])
        for frame in (kept_rows, kept_web, fresh.rows, fresh_web)
        if len(frame)
    ]
    catalog = assign_stacks(pd.concat(parts, ignore_index=True) if parts else fresh.rows)
    kept_problems += web_problems
    problems = tuple(sorted(kept_problems + list(fresh.problems)))
    versions.update({p: current[p] for p, _ in fresh.problems if p in current})
    result = CatalogRows(
        rows=catalog,
        problems=problems,
        mode=f"catalog: {changes['unchanged']} unchanged, {len(to_read)} file(s) read; {fresh.mode}",
        pids=fresh.pids,
        n_files=len(current) + n_web,
        roots=tuple(root_label(r) for r in roots),
        access=access,
    )
    catalog = with_scan_attrs(catalog, result)
    catalog.attrs["problem_versions"] = versions
    catalog.attrs["scan_changes"] = changes
    write_catalog(catalog, target, salt=salt)
    return catalog
