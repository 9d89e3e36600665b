"""Cohorts: many patients, many scans, one pass over the pixels.

:func:`open_cohort` scans a folder tree (or takes a catalog), picks one stack per
study with a configurable rule, and opens each as a lazy volume, arranged in an
``xr.DataTree`` (patient / study / series). :func:`summarize` then builds one
dask graph over the whole cohort: each chunk of slices is read once and reduced
to a small :class:`~ctframe.histogram.HUSummary` per region (whole scan, body,
each lung), and every table follows from those summaries:

* cohort histograms per slice, series, patient and cohort (tidy);
* region statistics per series and region (volumes, HU mean/std/median,
  percentiles incl. Perc15, %LAA, high-attenuation share);
* lung area per slice in mm²;
* longitudinal comparisons for patients with two or more studies.

Memory is bounded by the chunk size and the number of workers for the whole-scan
region, and by one series per worker when lung regions need the segmentation.
The graph runs with one ``compute`` on the local threaded scheduler or on a
dask.distributed cluster (:mod:`ctframe.execution`).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from ctframe.calibration import calibration_of_volume, per_slice_values
from ctframe.config import get_config
from ctframe.errors import CohortWarning, CTFrameError, NoSeriesError, NotHUCalibratedError, ParameterError
from ctframe.execution import Scheduler, compute
from ctframe.geometry import pixel_spacing, voxel_spacing
from ctframe.histogram import (
    CATEGORIES,
    N_FINE,
    HUSummary,
    coarse_counts,
    earth_movers_distance,
    statistics_from_counts,
    summarize_block,
)
from ctframe.hu import to_hu
from ctframe.io import catalog_for, volume_from_catalog
from ctframe.scan import PHI_COLUMNS, series_table

__all__ = [
    "REGIONS",
    "Cohort",
    "CohortSummary",
    "cohort_histograms",
    "cohort_regions",
    "histogram_edges",
    "longitudinal_table",
    "open_cohort",
    "region_categories",
    "select_series",
    "summarize",
]

#: Region name -> the categories of :data:`ctframe.histogram.CATEGORIES` it covers.
REGIONS: dict[str, tuple[int, ...]] = {
    "scan": (0, 1, 2, 3),
    "body": (1, 2, 3),
    "lungs": (2, 3),
    "right_lung": (2,),
    "left_lung": (3,),
}
#: Measures compared over time in the longitudinal table: (region, statistic) -> name.
LONGITUDINAL_MEASURES: dict[tuple[str, str], str] = {
    ("lungs", "volume_ml"): "lung_volume_ml",
    ("right_lung", "volume_ml"): "right_lung_volume_ml",
    ("left_lung", "volume_ml"): "left_lung_volume_ml",
    ("lungs", "hu_mean"): "lung_hu_mean",
    ("lungs", "hu_p15"): "lung_hu_p15",
    ("lungs", "laa_950_pct"): "lung_laa_950_pct",
    ("lungs", "haa_pct"): "lung_haa_pct",
    ("lungs", "haa_volume_ml"): "lung_haa_volume_ml",
}


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


# --------------------------------------------------------------------------- selection


def select_series(table: pd.DataFrame, rule: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Mark the stack to analyse in each study and say why.

    Parameters
    ----------
    table : DataFrame
        Output of :func:`ctframe.series_table`.
    rule : mapping, optional
        Overrides of the ``selection`` configuration: ``modalities``,
        ``orientations``, ``exclude_localizers``, ``min_slices`` and ``prefer``
        (an ordered list of ``"thinnest"``, ``"most_slices"``).

    Returns
    -------
    DataFrame
        `table` with ``candidate`` (passes the filters), ``selected`` and
        ``selection_reason`` columns, in the order of preference within each
        study.

    Examples
    --------
    >>> table = pd.DataFrame({"stack_key": ["a", "b"], "study_uid": ["s", "s"], "modality": ["CT", "CT"],
    ...     "orientation": ["AXIAL", "AXIAL"], "is_localizer": [False, False], "usable": [True, True],
    ...     "n_slices": [100, 300], "spacing_median_mm": [2.5, 1.0], "slice_thickness_mm": [2.5, 1.0],
    ...     "qc_notes": ["", ""]})
    >>> select_series(table)[["stack_key", "selected"]].values.tolist()
    [['b', True], ['a', False]]
    """
    cfg = {**get_config()["selection"], **(rule or {})}
    out = table.copy()
    reasons = pd.Series("", index=out.index, dtype=object)
    fails = [
        (~out["modality"].isin(cfg["modalities"]), "modality not in " + "/".join(cfg["modalities"])),
        (~out["orientation"].isin(cfg["orientations"]), "orientation not in " + "/".join(cfg["orientations"])),
        (out["n_slices"] < cfg["min_slices"], f"fewer than {cfg['min_slices']} slices"),
        (~out["usable"], "not usable"),
    ]
    if cfg["exclude_localizers"]:
        fails.insert(2, (out["is_localizer"], "localizer"))
    for mask, text in fails:
        reasons[mask] = reasons[mask].map(lambda r, t=text: f"{r}; {t}" if r else t)
    out["candidate"] = reasons == ""
    spacing = out["spacing_median_mm"].fillna(out["slice_thickness_mm"]).fillna(np.inf)
    keys = {"thinnest": spacing, "most_slices": -out["n_slices"]}
    sort_cols = [f"_k{i}" for i in range(len(cfg["prefer"]))]
    for col, name in zip(sort_cols, cfg["prefer"], strict=True):
        out[col] = keys[name].to_numpy()
    out = out.sort_values(
        ["study_uid", "candidate", *sort_cols, "stack_key"], ascending=[True, False] + [True] * (len(sort_cols) + 1)
    )
    out["selected"] = False
    for _, group in out.groupby("study_uid", sort=False):
        candidates = group[group["candidate"]]
        if candidates.empty:
            continue
        out.loc[candidates.index[0], "selected"] = True
        reasons[candidates.index[0]] = f"selected: best of {len(candidates)} candidate(s) by {', '.join(cfg['prefer'])}"
        for idx in candidates.index[1:]:
            reasons[idx] = (
                f"another stack of the study is preferred ({candidates.loc[candidates.index[0], 'stack_key']})"
            )
    out["selection_reason"] = reasons.loc[out.index].map(
        lambda r: r if r.startswith(("selected", "another")) else f"excluded: {r}"
    )
    return out.drop(columns=sort_cols).reset_index(drop=True)


# --------------------------------------------------------------------------- the cohort


@dataclass(frozen=True)
class Cohort:
    """A cohort: its catalog, its stacks (with the selection) and lazy volumes.

    Attributes
    ----------
    catalog : DataFrame
        One row per image frame (see :func:`ctframe.scan`).
    series : DataFrame
        One row per stack, with QC flags, ``selected`` and ``selection_reason``.
    tree : xr.DataTree
        ``/<patient_key>/<study>/<series>`` nodes, each holding the lazy stored
        volume of a selected stack as variable ``stored`` (attrs: safe metadata).
    volumes : dict
        Selected stack key -> lazy stored volume (the same objects as in `tree`).
    """

    catalog: pd.DataFrame
    series: pd.DataFrame
    tree: xr.DataTree
    volumes: dict[str, xr.DataArray] = field(repr=False)

    @property
    def selected(self) -> pd.DataFrame:
        """The selected stacks, one per study, ordered by patient and study time."""
        return self.series[self.series["selected"]].sort_values(["patient_key", "study_datetime", "stack_key"])

    def hu(self, stack_key: str) -> xr.DataArray:
        """Lazy HU volume of a selected stack."""
        return to_hu(self.volumes[stack_key])


def open_cohort(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | pd.DataFrame,
    *,
    selection: Mapping[str, Any] | None = None,
    salt: str | None = None,
    include_phi: bool = False,
    slices_per_chunk: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Cohort:
    """Open every study of a folder tree (or catalog) as lazy volumes.

    Parameters
    ----------
    source : location, list of locations, DataFrame or DICOMwebClient
        Folder tree(s) to scan, an fsspec URL (``s3://bucket/prefix``), a
        DICOMweb service root (``dicomweb+http://host/dicom-web``), a persisted
        catalog (``.parquet`` from ``ctframe scan --catalog``), or a catalog
        from :func:`ctframe.scan` (see :mod:`ctframe.sources`).
    selection : mapping, optional
        Overrides of the series-selection rule (see :func:`select_series`).
    salt : str, optional
        Key of the patient pseudonyms.
    include_phi : bool
        Keep identifying columns (PatientID..., the original UIDs and dates) in
        the catalog (for :func:`ctframe.linkage_table`) and the volumes'
        attrs; never in the series table or the summary tables.
    slices_per_chunk : int, optional
        Slices per dask chunk.
    storage_options : dict, optional
        fsspec options of a remote source (credentials, endpoint); see :func:`ctframe.scan`.
        They travel inside the read tasks (workers of a distributed cluster read
        from the source themselves) and never appear in task keys or outputs.

    Returns
    -------
    Cohort

    Raises
    ------
    NoSeriesError
        No stack of any study passes the selection rule.

    Warns
    -----
    CohortWarning
        A selected stack could not be opened; the next candidate of its study
        is used and the reason is recorded in ``series.selection_reason``.

    Notes
    -----
    **Lazy**: headers are read; no pixel is.

    Examples
    --------
    >>> import tempfile
    >>> from ctframe.testing import write_phantom_cohort
    >>> root = tempfile.mkdtemp()
    >>> _ = write_phantom_cohort(root, n_patients=2, n_time_points=2, shape=(8, 48, 48), spacing_mm=(10, 7, 7))
    >>> cohort = open_cohort(root)
    >>> len(cohort.volumes), sorted(len(p.children) for p in cohort.tree.children.values())
    (4, [2, 2])
    """
    catalog = catalog_for(source, salt=salt, include_phi=include_phi, storage_options=storage_options)
    access = catalog.attrs.get("access")
    if not include_phi:
        catalog = catalog.drop(columns=[c for c in PHI_COLUMNS if c in catalog])
    if catalog.empty:
        raise NoSeriesError("no DICOM image found in the cohort source; check the path (see ctframe.problems_table)")
    table = select_series(series_table(catalog), selection)
    volumes: dict[str, xr.DataArray] = {}
    for _, group in table.groupby("study_uid", sort=True):
        for idx in group.index[group["candidate"]]:
            key = table.at[idx, "stack_key"]
            try:  # QC notes are in the series table already: no warnings, no second QC pass
                volume = volume_from_catalog(
                    catalog[catalog["stack_key"] == key],
                    slices_per_chunk=slices_per_chunk,
                    qc_warnings=False,
                    access=access,
                )
            except CTFrameError as exc:
                table.loc[idx, ["selected", "candidate"]] = False
                table.loc[idx, "selection_reason"] = f"excluded: could not open ({exc})"
                warnings.warn(f"stack {key} skipped: {exc}", CohortWarning, stacklevel=2)
                continue
            if not table.at[idx, "selected"]:  # the preferred stack failed: promote this one
                table.loc[group.index, "selected"] = False
                table.loc[idx, ["selected", "selection_reason"]] = [True, "selected: first candidate that opened"]
            volumes[key] = volume
            break
    if not volumes:
        raise NoSeriesError(
            f"no stack in {len(table)} found passes the series-selection rule (CT, axial, not a localizer...); "
            "see ctframe.series_table(ctframe.scan(...)) and the 'selection' configuration"
        )
    return Cohort(catalog=catalog, series=table, tree=_build_tree(table, volumes), volumes=volumes)


def _build_tree(table: pd.DataFrame, volumes: Mapping[str, xr.DataArray]) -> xr.DataTree:
    nodes: dict[str, xr.Dataset] = {}
    for row in table[table["selected"]].itertuples():
        study = f"{row.study_date or 'nodate'}_{_short_hash(row.study_uid, 6)}"
        name = f"series_{_short_hash(row.stack_key)}"
        volume = volumes[row.stack_key]
        nodes[f"/{row.patient_key}/{study}/{name}"] = xr.Dataset({"stored": volume}, attrs=volume.attrs)
    return xr.DataTree.from_dict(nodes)


# --------------------------------------------------------------------------- lazy summaries


def region_categories(hu: xr.DataArray) -> xr.DataArray:
    """Region category per voxel: 0 outside the body, 1 body, 2 right lung, 3 left lung.

    Parameters
    ----------
    hu : DataArray (slice, row, col)
        HU volume from :func:`ctframe.to_hu`.

    Returns
    -------
    DataArray (slice, row, col) of int8, chunked like `hu`.

    Notes
    -----
    **Lazy**: built from :func:`ctframe.segment.body_mask` and
    :func:`ctframe.segment.lung_mask`.
    """
    from ctframe.segment import body_mask, lung_mask

    body = body_mask(hu)
    lungs = lung_mask(hu)
    category = xr.where(lungs == 1, 2, xr.where(lungs == 2, 3, xr.where(body, 1, 0))).astype(np.int8)
    return category.chunk({"slice": hu.chunks[0]}) if hu.chunks else category


def _sum(parts: Sequence[HUSummary]) -> HUSummary:
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


@dataclass(frozen=True)
class StackOutcome:
    """What the cohort graph returns for one stack: its summary, or why there is none.

    Attributes
    ----------
    summary : HUSummary or None
        None when the stack failed.
    failure : str
        Why the stack failed (a file could not be read or decoded...); empty otherwise.
    region_issue : str
        Why the body and lung regions could not be made (the whole-scan
        region is still summarised); empty otherwise.
    lung_qc : mapping
        The lung mask's plausibility flags (:func:`ctframe.segment.lung_qc`),
        when the lungs were segmented.
    """

    summary: HUSummary | None
    failure: str = ""
    region_issue: str = ""
    lung_qc: Mapping[str, Any] = field(default_factory=dict)


class _Unevaluated:
    """A dask collection handed to a task as it is.

    Passed plainly, dask would compute it as a dependency of the task, and an
    error in it would abort the whole cohort; the task computes it itself,
    inside a ``try``, so a failure stays with its stack.
    """

    __slots__ = ("collection",)

    def __init__(self, collection: Any) -> None:
        self.collection = collection

    def __dask_tokenize__(self) -> Any:
        return ("ctframe-unevaluated", dask.base.tokenize(self.collection))

    def compute(self) -> Any:
        # the synchronous scheduler inside a task: the outer scheduler runs the stacks in parallel
        return self.collection.compute(scheduler="sync")


def _block_summary(
    stored: np.ndarray, categories: np.ndarray | None, per_slice: Mapping[str, np.ndarray], **options: Any
) -> HUSummary:
    return summarize_block(
        stored,
        per_slice["rescale_slope"],
        per_slice["rescale_intercept"],
        categories,
        n_categories=len(CATEGORIES) if categories is not None else 1,
        padding_value=per_slice["padding_value"],
        padding_range_limit=per_slice["padding_range_limit"],
        **options,
    )


def _chunk_outcome(
    block: _Unevaluated, per_slice: Mapping[str, np.ndarray], options: Mapping[str, Any]
) -> HUSummary | StackOutcome:
    """Read and summarise one chunk; a ctframe error becomes a failed outcome, not an exception."""
    try:
        stored = block.compute()
    except CTFrameError as exc:
        return StackOutcome(None, failure=str(exc))
    return _block_summary(stored, None, per_slice, **options)


def _combine_chunks(parts: Sequence[HUSummary | StackOutcome], region_issue: str) -> StackOutcome:
    failed = [p for p in parts if isinstance(p, StackOutcome)]
    if failed:
        return StackOutcome(None, failure=failed[0].failure)
    return StackOutcome(_sum(parts), region_issue=region_issue)  # type: ignore[arg-type]


def _stack_outcome_with_regions(
    volume: _Unevaluated, chunks: Sequence[int], per_slice: Mapping[str, np.ndarray], options: Mapping[str, Any]
) -> StackOutcome:
    """Read a stack once, segment it and summarise every region (one task per stack).

    A read failure fails the stack; a segmentation failure leaves the
    whole-scan region (with the reason for the others).
    """
    import dask.array as da

    try:
        stored = _Unevaluated(volume.collection.data).compute()
    except CTFrameError as exc:
        return StackOutcome(None, failure=str(exc))
    in_memory = volume.collection.copy(data=da.from_array(stored, chunks=(tuple(chunks), -1, -1)))
    categories, issue, qc = None, "", {}
    try:
        categories = _Unevaluated(region_categories(to_hu(in_memory)).data).compute()
    except CTFrameError as exc:
        issue = f"no body or lung regions: {exc}"
    else:
        qc = _lung_qc(in_memory, categories)
    bounds = np.cumsum((0, *chunks))
    parts = [
        _block_summary(
            stored[lo:hi],
            None if categories is None else categories[lo:hi],
            {name: values[lo:hi] for name, values in per_slice.items()},
            **options,
        )
        for lo, hi in itertools.pairwise(bounds)
    ]
    return StackOutcome(_sum(parts), region_issue=issue, lung_qc=qc)


def _lung_qc(volume: xr.DataArray, categories: np.ndarray) -> dict[str, Any]:
    """The lung mask's QC (:func:`ctframe.segment.lung_qc`) from the region categories of a stack."""
    from ctframe.segment import lung_qc

    labels = np.select([categories == 2, categories == 3], [1, 2], 0).astype(np.int8)  # 1 right, 2 left
    return lung_qc(volume.copy(data=labels))


#: Columns of the lung-mask QC added to the summary's series table (from :func:`ctframe.segment.lung_qc`).
LUNG_QC_COLUMNS = {
    "qc_ok": "lung_qc_ok", "qc_note": "lung_qc_note", "qc_volume": "lung_qc_volume", "qc_ratio": "lung_qc_ratio",
    "qc_components": "lung_qc_components", "qc_cut_feet": "lung_qc_cut_feet", "qc_cut_head": "lung_qc_cut_head",
}  # fmt: skip


def stack_outcome(
    volume: xr.DataArray, *, regions: bool = False, slice_edges: np.ndarray | None = None
) -> Any:
    """A delayed :class:`StackOutcome` of one stored volume.

    Parameters
    ----------
    volume : DataArray (slice, row, col)
        Stored values from :func:`ctframe.open_series`.
    regions : bool
        Segment body and lungs (one task for the stack) instead of summarising
        the whole scan only (one task per chunk).
    slice_edges : ndarray, optional
        Keep per-slice histograms on these HU edges.

    Returns
    -------
    dask.delayed.Delayed
        Computes to a :class:`StackOutcome`.

    Raises
    ------
    NotHUCalibratedError
        The stack cannot become HU (:mod:`ctframe.calibration`).

    Notes
    -----
    **Lazy**. Whatever fails while computing (a file truncated, changed or
    undecodable) becomes the stack's ``failure``: it never aborts the other
    stacks of the graph, and no chunk is read twice.
    """
    calibration = calibration_of_volume(volume)
    if not calibration.usable:
        key = volume.attrs.get("stack_key", "(unnamed)")
        raise NotHUCalibratedError(f"series {key}: stored values cannot be mapped to HU: {calibration.issue}")
    per_slice = {
        name: np.broadcast_to(per_slice_values(volume, name).to_numpy(), (volume.sizes["slice"],))
        for name in ("rescale_slope", "rescale_intercept", "padding_value", "padding_range_limit")
    }
    options = {"fill_below_hu": float(get_config()["hu"]["fill_below_hu"]), "slice_edges": slice_edges}
    chunks = volume.data.chunks[0]
    region_issue = ""
    if regions:
        try:  # what can be known without pixels (one slice, not axial...) fails here, before any read
            region_categories(to_hu(volume))
        except CTFrameError as exc:
            region_issue = f"no body or lung regions: {exc}"
        else:
            return dask.delayed(_stack_outcome_with_regions, pure=True)(
                _Unevaluated(volume), chunks, per_slice, options
            )
    bounds = np.cumsum((0, *chunks))
    parts = [
        dask.delayed(_chunk_outcome, pure=True)(
            _Unevaluated(volume.data.blocks[i]),
            {name: values[lo:hi] for name, values in per_slice.items()},
            options,
        )
        for i, (lo, hi) in enumerate(itertools.pairwise(bounds))
    ]
    return dask.delayed(_combine_chunks, pure=True)(parts, region_issue)


def histogram_edges(settings: Mapping[str, Any] | None = None) -> np.ndarray:
    """Integer HU bin edges from the ``histogram`` configuration (plus overrides).

    Examples
    --------
    >>> histogram_edges({"min_hu": -1000, "max_hu": -950, "bin_width_hu": 20}).tolist()
    [-1000, -980, -960, -950]
    """
    cfg = {**get_config()["histogram"], **(settings or {})}
    lo, hi, width = int(cfg["min_hu"]), int(cfg["max_hu"]), int(cfg["bin_width_hu"])
    if width < 1 or lo >= hi:
        raise ValueError(f"histogram bins need bin_width_hu >= 1 and min_hu < max_hu, got {cfg}")
    edges = np.arange(lo, hi, width)
    return np.append(edges, hi)


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class CohortSummary:
    """Every table of a cohort summary (see :func:`summarize`)."""

    histograms: pd.DataFrame
    regions: pd.DataFrame
    slice_areas: pd.DataFrame
    longitudinal: pd.DataFrame
    series: pd.DataFrame
    problems: pd.DataFrame


def _needs_segmentation(regions: Iterable[str]) -> bool:
    return any(r != "scan" for r in regions)


def _check_regions(regions: Sequence[str]) -> list[str]:
    unknown = [r for r in regions if r not in REGIONS]
    if unknown:
        raise ValueError(f"unknown region(s) {unknown}; choose from {', '.join(REGIONS)}")
    return list(regions)


def _compute_outcomes(
    cohort: Cohort,
    regions: Sequence[str],
    slice_edges: np.ndarray | None,
    scheduler: Scheduler,
    progress: bool | None,
) -> tuple[dict[str, StackOutcome], list[dict[str, str]]]:
    """One compute for the whole cohort: every selected stack's outcome, and the problems.

    A stack that fails (its files, its calibration) is reported in the
    problems and gets an outcome without summary; the others are unaffected.
    """
    segment = _needs_segmentation(regions)
    outcomes: dict[str, StackOutcome] = {}
    problems: list[dict[str, str]] = []
    graphs: dict[str, Any] = {}
    for key, volume in cohort.volumes.items():
        try:
            graphs[key] = stack_outcome(volume, regions=segment, slice_edges=slice_edges)
        except CTFrameError as exc:
            outcomes[key] = StackOutcome(None, failure=str(exc))
    if graphs:
        results = compute(*graphs.values(), scheduler=scheduler, progress=progress)
        outcomes.update(zip(graphs, results, strict=True))
    for key in cohort.volumes:
        outcome = outcomes[key]
        reason = outcome.failure or outcome.region_issue
        if reason:
            problems.append({"stack_key": key, "reason": reason})
            what = "skipped" if outcome.failure else "whole-scan region only"
            warnings.warn(f"stack {key} {what}: {reason}", CohortWarning, stacklevel=3)
    return {key: outcomes[key] for key in cohort.volumes}, problems


def _voxel_size(volume: xr.DataArray) -> tuple[float, float]:
    """(voxel volume in mL, pixel area in mm²) from :mod:`ctframe.geometry`; NaN where a spacing is unknown.

    A single slice without SliceThickness has no known depth: its volumes are
    NaN (with the reason in the regions table) while its counts stay.
    """
    try:
        row, col = pixel_spacing(volume)
    except ParameterError:
        return np.nan, np.nan
    try:
        depth = voxel_spacing(volume)[0]
    except ParameterError:
        depth = np.nan
    return depth * row * col / 1000.0, row * col


def _series_info(cohort: Cohort) -> pd.DataFrame:
    info = cohort.selected.set_index("stack_key")
    sizes = [_voxel_size(cohort.volumes[k]) for k in info.index]
    info["voxel_volume_ml"] = [size[0] for size in sizes]
    info["pixel_area_mm2"] = [size[1] for size in sizes]
    return info


def _histogram_rows(
    summaries: Mapping[str, HUSummary],
    info: pd.DataFrame,
    regions: Sequence[str],
    edges: np.ndarray,
    levels: Sequence[str],
    volumes: Mapping[str, xr.DataArray],
) -> pd.DataFrame:
    left = np.concatenate([[-np.inf], edges])
    right = np.concatenate([edges, [np.inf]])
    frames = []

    def emit(level: str, counts: np.ndarray, region: str, **ids: Any) -> None:
        frames.append(
            pd.DataFrame(
                {"level": level, **ids, "region": region, "bin_left_hu": left, "bin_right_hu": right, "count": counts}
            )
        )

    series_coarse = {
        key: {r: coarse_counts(s.counts[cats].sum(axis=0), edges) for r in regions if (cats := _categories(s, r))}
        for key, s in summaries.items()
    }
    ids = {key: {c: info.at[key, c] for c in ("patient_key", "study_date")} for key in summaries}
    if "slice" in levels:
        for key, s in summaries.items():
            if s.slice_hist is None:
                continue
            positions = volumes[key]["slice"].to_numpy()
            for r in regions:
                if (cats := _categories(s, r)) is None:
                    continue
                per_slice = s.slice_hist[:, cats].sum(axis=1)
                for k, position in enumerate(positions):
                    emit("slice", per_slice[k], r, **ids[key], series=key, slice_position_mm=float(position))
    if "series" in levels:
        for key in summaries:
            for r, counts in series_coarse[key].items():
                emit("series", counts, r, **ids[key], series=key)
    if "patient" in levels:
        for patient, keys in info.loc[list(summaries)].groupby("patient_key").groups.items():
            for r in regions:
                parts = [series_coarse[k][r] for k in keys if r in series_coarse[k]]
                if parts:
                    emit("patient", sum(parts), r, patient_key=patient)
    if "cohort" in levels:
        for r in regions:
            parts = [series_coarse[k][r] for k in summaries if r in series_coarse[k]]
            if parts:
                emit("cohort", sum(parts), r)
    columns = [
        "level",
        "patient_key",
        "study_date",
        "series",
        "slice_position_mm",
        "region",
        "bin_left_hu",
        "bin_right_hu",
        "count",
    ]
    if not frames:  # every stack failed: the same columns and dtypes, no rows
        dtypes = {"slice_position_mm": float, "bin_left_hu": float, "bin_right_hu": float, "count": np.int64}
        return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, object)) for c in columns})
    table = pd.concat(frames, ignore_index=True).reindex(columns=columns)
    for column in ("patient_key", "study_date", "series"):  # empty on the patient and cohort levels
        table[column] = table[column].astype(object).where(table[column].notna(), "").astype(str)
    table["count"] = table["count"].astype(np.int64)
    return table


def _categories(summary: HUSummary, region: str) -> list[int] | None:
    """Categories of `summary` that make up `region`; None when it was not segmented."""
    if summary.n_categories == 1:
        return [0] if region == "scan" else None
    return list(REGIONS[region])


#: Why a region's values are missing, when the stack was summarised but the region was not found.
NO_VOXELS_REASON = "no voxel of this region was found (the segmentation found none)"


def _missing_statistics(stats_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The statistics columns of a region that could not be measured: all NaN (voxel_count missing)."""
    template = statistics_from_counts(
        np.zeros(N_FINE, np.int64), 0.0, 0.0, voxel_volume_ml=1.0, percentiles=stats_cfg["percentiles"],
        laa_thresholds_hu=stats_cfg["laa_thresholds_hu"], haa_range_hu=stats_cfg["haa_range_hu"],
    )  # fmt: skip
    return {name: (pd.NA if name == "voxel_count" else np.nan) for name in template}


def _region_rows(outcomes: Mapping[str, StackOutcome], info: pd.DataFrame, regions: Sequence[str]) -> pd.DataFrame:
    """One row per selected stack and region; values that cannot be computed are NaN with ``missing_reason``."""
    stats_cfg = get_config()["statistics"]
    missing = _missing_statistics(stats_cfg)
    rows = []
    for key, outcome in outcomes.items():
        meta = info.loc[key]
        s = outcome.summary
        for r in regions:
            cats = _categories(s, r) if s is not None else None
            reason = ""
            if s is None:
                reason = f"stack not summarised: {outcome.failure}"
            elif cats is None:
                reason = outcome.region_issue or "region not computed"
            elif r != "scan" and not s.counts[cats].any():
                reason = NO_VOXELS_REASON
            if reason:
                stats = dict(missing)
            else:
                stats = statistics_from_counts(
                    s.counts[cats].sum(axis=0),
                    float(s.sums[cats].sum()),
                    float(s.sumsq[cats].sum()),
                    voxel_volume_ml=meta["voxel_volume_ml"],
                    percentiles=stats_cfg["percentiles"],
                    laa_thresholds_hu=stats_cfg["laa_thresholds_hu"],
                    haa_range_hu=stats_cfg["haa_range_hu"],
                )
                if not np.isfinite(meta["voxel_volume_ml"]):
                    reason = "volumes unknown: the slice spacing is unknown (one slice without SliceThickness)"
            rows.append(
                {
                    "patient_key": meta["patient_key"],
                    "study_uid": meta["study_uid"],
                    "study_date": meta["study_date"],
                    "study_datetime": meta["study_datetime"],
                    "series": key,
                    "series_uid": meta["series_uid"],
                    "region": r,
                    **stats,
                    "missing_reason": reason,
                    "convolution_kernel": meta["convolution_kernel"],
                    "slice_thickness_mm": meta["slice_thickness_mm"],
                    "kvp": meta["kvp"],
                    "manufacturer": meta["manufacturer"],
                    "manufacturer_model": meta["manufacturer_model"],
                }
            )
    columns = [
        "patient_key", "study_uid", "study_date", "study_datetime", "series", "series_uid", "region", *missing,
        "missing_reason", "convolution_kernel", "slice_thickness_mm", "kvp", "manufacturer", "manufacturer_model",
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=columns)
    table["voxel_count"] = table["voxel_count"].astype("Int64")
    if table.empty:
        return table
    order = {r: i for i, r in enumerate(regions)}
    table = table.sort_values(
        ["patient_key", "study_datetime", "series", "region"], key=lambda c: c.map(order) if c.name == "region" else c
    )
    return table.reset_index(drop=True)


def _slice_area_rows(
    summaries: Mapping[str, HUSummary],
    info: pd.DataFrame,
    regions: Sequence[str],
    volumes: Mapping[str, xr.DataArray],
) -> pd.DataFrame:
    frames = []
    for key, s in summaries.items():
        positions = volumes[key]["slice"].to_numpy()
        for r in regions:
            if (cats := _categories(s, r)) is None:
                continue
            count = s.slice_counts[:, cats].sum(axis=1)
            frames.append(
                pd.DataFrame(
                    {
                        "patient_key": info.at[key, "patient_key"],
                        "study_date": info.at[key, "study_date"],
                        "series": key,
                        "region": r,
                        "slice_index": np.arange(len(positions)),
                        "slice_position_mm": positions,
                        "voxel_count": count,
                        "area_mm2": count * info.at[key, "pixel_area_mm2"],
                    }
                )
            )
    if not frames:  # every stack failed: the same columns and dtypes, no rows
        dtypes = {"slice_index": np.int64, "slice_position_mm": float, "voxel_count": np.int64, "area_mm2": float}
        columns = ["patient_key", "study_date", "series", "region", *dtypes]
        return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, object)) for c in columns})
    return pd.concat(frames, ignore_index=True)


def longitudinal_table(regions: pd.DataFrame, lung_histograms: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Compare each patient's studies over time, from a region table.

    Parameters
    ----------
    regions : DataFrame
        A region table (:func:`cohort_regions`) holding the ``lungs``,
        ``right_lung`` and ``left_lung`` regions.
    lung_histograms : mapping, optional
        Series key -> fine lung histogram, for the Earth mover's distance
        between a study's lung histogram and the baseline's / previous one's.

    Returns
    -------
    DataFrame
        One row per patient (with two or more studies), study and measure,
        ordered by study time: ``days_since_baseline``, ``measure``, ``value``,
        ``change_from_baseline`` (and ``_pct``), ``change_from_previous`` (and
        ``_pct``), ``comparable_to_baseline``, ``comparable_to_previous`` and
        ``comparability_notes`` (kernel, slice thickness, kVp or scanner differ).

    Notes
    -----
    **Computes** nothing: a table from tables.
    """
    columns = [
        "patient_key", "study_date", "study_datetime", "days_since_baseline", "series", "measure", "value",
        "change_from_baseline", "change_from_baseline_pct", "change_from_previous", "change_from_previous_pct",
        "comparable_to_baseline", "comparable_to_previous", "comparability_notes",
    ]  # fmt: skip
    if regions.empty or "lungs" not in set(regions["region"]):
        return pd.DataFrame(columns=columns)
    series = (
        regions.drop_duplicates("series")
        .sort_values(["patient_key", "study_datetime", "study_date", "series"])
        .loc[:, ["patient_key", "study_uid", "study_date", "study_datetime", "series", "convolution_kernel",
                 "slice_thickness_mm", "kvp", "manufacturer", "manufacturer_model"]]
    )  # fmt: skip
    by_series = regions.set_index(["series", "region"])
    rows = []
    for patient, studies in series.groupby("patient_key", sort=True):
        studies = studies.drop_duplicates("study_uid")
        if len(studies) < 2:
            continue
        baseline = studies.iloc[0]
        previous = None
        for _, study in studies.iterrows():
            notes_base = _comparability(study, baseline)
            notes_prev = _comparability(study, previous) if previous is not None else []
            days = (study["study_datetime"] - baseline["study_datetime"]) / pd.Timedelta(days=1)
            measures: dict[str, float] = {}
            for (region, stat), name in LONGITUDINAL_MEASURES.items():
                if (study["series"], region) in by_series.index:
                    measures[name] = float(by_series.loc[(study["series"], region), stat])
            if lung_histograms is not None and study["series"] in lung_histograms:
                measures["lung_emd_from_baseline_hu"] = _emd(lung_histograms, study["series"], baseline["series"])
                measures["lung_emd_from_previous_hu"] = (
                    _emd(lung_histograms, study["series"], previous["series"]) if previous is not None else np.nan
                )
            for name, value in measures.items():
                base_value = _measure(by_series, baseline["series"], name)
                prev_value = _measure(by_series, previous["series"], name) if previous is not None else np.nan
                is_distance = name.startswith("lung_emd")
                # a value that could not be computed makes no comparison, whatever the scanners
                missing_base = _missing_notes(by_series, name, study["series"], baseline["series"], "baseline")
                missing_prev = (
                    _missing_notes(by_series, name, study["series"], previous["series"], "previous study")
                    if previous is not None
                    else []
                )
                rows.append(
                    {
                        "patient_key": patient,
                        "study_date": study["study_date"],
                        "study_datetime": study["study_datetime"],
                        "days_since_baseline": days,
                        "series": study["series"],
                        "measure": name,
                        "value": value,
                        "change_from_baseline": np.nan if is_distance else value - base_value,
                        "change_from_baseline_pct": np.nan if is_distance else _pct(value, base_value),
                        "change_from_previous": np.nan if is_distance else value - prev_value,
                        "change_from_previous_pct": np.nan if is_distance else _pct(value, prev_value),
                        "comparable_to_baseline": not notes_base and not missing_base,
                        "comparable_to_previous": previous is None or not (notes_prev or missing_prev),
                        "comparability_notes": "; ".join(
                            dict.fromkeys(missing_base + missing_prev + notes_base + notes_prev)
                        ),
                    }
                )
            previous = study
    return pd.DataFrame(rows, columns=columns)


def _emd(lung_histograms: Mapping[str, np.ndarray], a: str, b: str) -> float:
    if a not in lung_histograms or b not in lung_histograms:
        return np.nan
    return earth_movers_distance(lung_histograms[a], lung_histograms[b])


def _measure(by_series: pd.DataFrame, series: str, name: str) -> float:
    for (region, stat), measure in LONGITUDINAL_MEASURES.items():
        if measure == name and (series, region) in by_series.index:
            return float(by_series.loc[(series, region), stat])
    return np.nan


def _missing_notes(by_series: pd.DataFrame, name: str, series: str, other: str, label: str) -> list[str]:
    """Why `name` cannot be compared between `series` and `other` (its value or the other's is missing)."""
    notes = []
    pairs = [("this study", series)] + ([(label, other)] if other != series else [])
    for which, key in pairs:
        reason = _missing_reason(by_series, key, name)
        if reason:
            notes.append(f"no value for {which}: {reason}")
    return notes


def _missing_reason(by_series: pd.DataFrame, series: str, name: str) -> str:
    """Why the measure `name` of `series` is NaN ("" when it has a value)."""
    for (region, stat), measure in LONGITUDINAL_MEASURES.items():
        if measure == name and (series, region) in by_series.index:
            row = by_series.loc[(series, region)]
            if np.isfinite(float(row[stat])):
                return ""
            return str(row.get("missing_reason", "")) or f"{stat} could not be computed"
    if name.startswith("lung_emd"):
        return ""
    return "region not measured"


def _pct(value: float, reference: float) -> float:
    if not np.isfinite(reference) or reference == 0:
        return np.nan
    return 100.0 * (value - reference) / abs(reference)


def _comparability(study: pd.Series, other: pd.Series | None) -> list[str]:
    if other is None or study["series"] == other["series"]:
        return []
    notes = []
    if study["convolution_kernel"] != other["convolution_kernel"]:
        notes.append(f"kernel differs ({other['convolution_kernel']} vs {study['convolution_kernel']})")
    if not np.isclose(study["slice_thickness_mm"], other["slice_thickness_mm"], atol=0.01, equal_nan=True):
        notes.append(f"slice thickness differs ({other['slice_thickness_mm']:g} vs {study['slice_thickness_mm']:g} mm)")
    if not np.isclose(study["kvp"], other["kvp"], equal_nan=True):
        notes.append(f"kVp differs ({other['kvp']:g} vs {study['kvp']:g})")
    if (study["manufacturer"], study["manufacturer_model"]) != (other["manufacturer"], other["manufacturer_model"]):
        notes.append("scanner differs")
    return notes


# --------------------------------------------------------------------------- entry points


def summarize(
    cohort: Cohort,
    *,
    regions: Sequence[str] | None = None,
    levels: Sequence[str] = ("series", "patient", "cohort"),
    bins: Mapping[str, Any] | None = None,
    scheduler: Scheduler = None,
    progress: bool | None = None,
) -> CohortSummary:
    """Compute every cohort table with one pass over the pixels.

    Parameters
    ----------
    cohort : Cohort
        From :func:`open_cohort`.
    regions : sequence of str, optional
        Any of ``scan``, ``body``, ``lungs``, ``right_lung``, ``left_lung``
        (default ``cohort.regions`` of the configuration). Regions other than
        ``scan`` run the lung segmentation (one task per series).
    levels : sequence of str
        Histogram levels: ``slice``, ``series``, ``patient``, ``cohort``.
    bins : mapping, optional
        Overrides of the ``histogram`` configuration (``min_hu``, ``max_hu``,
        ``bin_width_hu``); edges are whole HU.
    scheduler : None, str or distributed.Client
        See :func:`ctframe.execution.compute`.
    progress : bool, optional
        Progress bar (default: on a terminal).

    Returns
    -------
    CohortSummary
        ``histograms`` (tidy: level, patient_key, study_date, series,
        slice_position_mm, region, bin_left_hu, bin_right_hu, count; padding
        and fill never counted), ``regions`` (one row per series and region;
        values that cannot be computed are NaN, never 0, with the reason in
        ``missing_reason``),
        ``slice_areas`` (area in mm² per slice and region), ``longitudinal``,
        ``series`` (the selection, with each selected stack's ``outcome`` and
        the lung mask's QC: ``lung_qc_ok``, ``lung_qc_note`` and the flags
        ``lung_qc_volume``, ``_ratio``, ``_components``, ``_cut_feet``,
        ``_cut_head`` of :func:`ctframe.segment.lung_qc`; missing where no
        lung mask was made) and
        ``problems`` (stacks that failed or lost their lung regions).

    Notes
    -----
    **Computes**: one ``compute`` for the whole cohort, however many stacks
    fail. Each stack's task returns its summary or its failure: a stack whose
    files turn out unreadable is reported in ``problems`` (and in
    ``series.outcome``), its region rows hold NaN with ``missing_reason``, and
    the other stacks' pixels are read once, as if nothing had failed.
    """
    regions = _check_regions(regions or get_config()["cohort"]["regions"])
    unknown_levels = set(levels) - {"slice", "series", "patient", "cohort"}
    if unknown_levels:
        raise ValueError(f"unknown histogram level(s) {sorted(unknown_levels)}; use slice, series, patient, cohort")
    edges = histogram_edges(bins)
    outcomes, problems = _compute_outcomes(
        cohort, regions, edges if "slice" in levels else None, scheduler=scheduler, progress=progress
    )
    summaries = {key: o.summary for key, o in outcomes.items() if o.summary is not None}
    info = _series_info(cohort)
    region_table = _region_rows(outcomes, info, regions)
    lung_histograms = None
    if "lungs" in regions and summaries and _needs_segmentation(regions):
        lung_histograms = {
            k: s.counts[list(REGIONS["lungs"])].sum(axis=0) for k, s in summaries.items() if s.n_categories > 1
        }
    series = cohort.series.copy()
    series["outcome"] = series["stack_key"].map(
        {key: _outcome_text(o) for key, o in outcomes.items()}
    ).fillna("")
    for name, column in LUNG_QC_COLUMNS.items():  # absent (NA) where no lung mask was made
        values = {key: o.lung_qc[name] for key, o in outcomes.items() if o.lung_qc}
        mapped = series["stack_key"].map(values)
        series[column] = mapped.astype("string") if name == "qc_note" else mapped.astype("boolean")
    return CohortSummary(
        histograms=_histogram_rows(summaries, info, regions, edges, levels, cohort.volumes),
        regions=region_table,
        slice_areas=_slice_area_rows(summaries, info, regions, cohort.volumes),
        longitudinal=longitudinal_table(region_table, lung_histograms),
        series=series,
        problems=pd.DataFrame(problems, columns=["stack_key", "reason"]),
    )


def _outcome_text(outcome: StackOutcome) -> str:
    if outcome.failure:
        return f"failed: {outcome.failure}"
    if outcome.region_issue:
        return f"whole-scan region only: {outcome.region_issue}"
    return "summarised"


def cohort_histograms(cohort: Cohort, **options: Any) -> pd.DataFrame:
    """Cohort histograms as a tidy table; see :func:`summarize` for the options.

    Notes
    -----
    **Computes** (one pass).
    """
    return summarize(cohort, **options).histograms


def cohort_regions(cohort: Cohort, **options: Any) -> pd.DataFrame:
    """Region statistics of every selected series; see :func:`summarize`.

    Notes
    -----
    **Computes** (one pass).
    """
    return summarize(cohort, **options).regions
