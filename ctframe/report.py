"""The cohort report: ``figures/*.png`` and one self-contained ``report.html``.

:func:`write_figures_and_report` is what ``ctframe summarize`` calls on its output
folder. The report is a static HTML page: every figure is an inline PNG (a
``data:`` URI), the stylesheet is inline, and there is no script, so it opens
offline, from an e-mail attachment or an archive, and looks the same in ten
years. A Content-Security-Policy forbids the page any network request.

Patients appear only under their pseudonymous keys (``P-`` + HMAC of the
PatientID, see :mod:`ctframe.privacy`); series under short references
(``series_`` + 8 hex digits of a hash of the stack key, the node names of
``Cohort.tree``), never their UIDs; dates are the de-identified (shifted)
ones of the catalog; file paths in error messages are elided.
Figure file names come from fixed names and patient keys via
:func:`ctframe.privacy.safe_name`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctframe.errors import CTFrameError, ParameterError
from ctframe.privacy import safe_name

__all__ = ["series_reference", "write_figures_and_report"]

#: Columns of the series table shown in the report, in order (never identifying ones).
SERIES_COLUMNS = (
    "scan", "series_ref", "study_date", "modality", "orientation", "n_slices", "rows", "columns",
    "pixel_spacing_row_mm", "spacing_median_mm", "slice_thickness_mm", "convolution_kernel", "kvp", "manufacturer",
    "manufacturer_model", "transfer_syntax", "qc_notes", "selection_reason", "outcome",
    "lung_qc_note",
)  # fmt: skip
#: Columns of the region table shown in the report.
REGION_COLUMNS = (
    "scan", "study_date", "region", "volume_ml", "hu_mean", "hu_std", "hu_median", "hu_p15", "laa_950_pct",
    "haa_pct", "haa_volume_ml", "missing_reason",
)  # fmt: skip
#: Columns of the longitudinal table shown in the report.
LONGITUDINAL_COLUMNS = (
    "patient_key", "study_date", "days_since_baseline", "measure", "value", "change_from_baseline",
    "change_from_baseline_pct", "change_from_previous", "comparable_to_baseline", "comparability_notes",
)  # fmt: skip
_LUNG_REGIONS = ("lungs", "right_lung", "left_lung")
#: Slab thickness (mm) of the report's coronal and axial MIPs: about the notebook's middle 40 coronal planes of
#: 0.7 mm and 50 axial slices of 2.5 mm, stated in mm so that every scan gets the same anatomy whatever its spacing.
CORONAL_MIP_MM = 30.0
AXIAL_MIP_MM = 125.0
#: Scans with fewer slices get no coronal plane, projection or lung mask in the report.
MIN_SLICES_3D = 16
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s:;,()'\"\\/]+){2,}[\\/]?")

_CSS = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #d9e2ec; --accent: #245b8f; --bg: #f7f9fb; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: var(--bg); }
header { background: var(--accent); color: #fff; padding: 1.4rem 2rem; }
header h1 { margin: 0 0 .3rem; font-size: 1.6rem; }
header p { margin: 0; opacity: .9; }
main { max-width: 1280px; margin: 0 auto; padding: 1rem 2rem 3rem; }
nav ol { columns: 2; padding-left: 1.2rem; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 1rem 1.4rem;
          margin: 1.2rem 0; }
h2 { font-size: 1.25rem; margin: .2rem 0 .8rem; color: var(--accent); }
h3 { font-size: 1.05rem; margin: 1.2rem 0 .5rem; }
.cards { display: flex; flex-wrap: wrap; gap: .8rem; margin: 1rem 0; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: .6rem 1rem; min-width: 9rem; }
.card b { display: block; font-size: 1.5rem; color: var(--accent); }
.note { color: var(--muted); font-size: .9rem; }
.warn { background: #fff4e5; border-left: 4px solid #f0a202; padding: .4rem .8rem; }
.scroll { overflow-x: auto; max-height: 32rem; overflow-y: auto; border: 1px solid var(--line); border-radius: 4px; }
table.data { border-collapse: collapse; font-size: .82rem; width: 100%; }
table.data th, table.data td { padding: .3rem .55rem; border-bottom: 1px solid var(--line); text-align: right;
                               white-space: nowrap; }
table.data th { background: #eef2f7; position: sticky; top: 0; text-align: center; }
table.data td:first-child, table.data th:first-child { text-align: left; }
table.data tbody tr:nth-child(even) { background: #fafbfd; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; background: #fff; }
figcaption { color: var(--muted); font-size: .88rem; margin-top: .3rem; }
footer { color: var(--muted); font-size: .85rem; text-align: center; padding: 1rem; }
"""


def series_reference(stack_key: str) -> str:
    """Short, non-identifying reference of a stack: ``series_`` + 8 hex digits of SHA-256.

    The same names as the series nodes of ``Cohort.tree``.

    Examples
    --------
    >>> series_reference("1.2.3")
    'series_c47f5b18'
    """
    return "series_" + hashlib.sha256(str(stack_key).encode()).hexdigest()[:8]


@dataclass
class _Figure:
    section: str
    title: str
    caption: str
    file: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class _Scan:
    tag: str  # "A", "B", ...
    stack_key: str
    patient_key: str
    study_date: str
    ordinal: int  # scan number within the patient, by study time (1-based)

    @property
    def label(self) -> str:
        return f"{self.patient_key} scan {self.ordinal}"

    @property
    def file_stem(self) -> str:
        return f"{safe_name(self.patient_key)}_scan{self.ordinal}"


def _scan_labels(selected: pd.DataFrame) -> dict[str, tuple[str, int]]:
    """Stack key -> (patient key, scan number within the patient by study time)."""
    out: dict[str, tuple[str, int]] = {}
    for patient, group in selected.groupby("patient_key", sort=True):
        for k, key in enumerate(group.sort_values(["study_datetime", "stack_key"])["stack_key"], start=1):
            out[str(key)] = (str(patient), k)
    return out


def _scrub(text: Any, references: dict[str, str]) -> str:
    """Replace stack keys by references and elide file paths."""
    out = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text)
    for key, ref in references.items():
        out = out.replace(key, ref)
    return _PATH.sub("<path>", out)


def _table_html(table: pd.DataFrame, columns: Sequence[str], *, empty: str) -> str:
    shown = table.loc[:, [c for c in columns if c in table.columns]]
    if shown.empty:
        return f'<p class="note">{html.escape(empty)}</p>'
    formatted = shown.copy()
    for column in formatted.columns:
        values = formatted[column]
        if pd.api.types.is_bool_dtype(values):
            formatted[column] = values.map({True: "yes", False: "no"})
        elif pd.api.types.is_float_dtype(values):
            formatted[column] = values.map(_number)
    body = formatted.to_html(index=False, border=0, classes="data", na_rep="", escape=True)
    return f'<div class="scroll">{body}</div>'


def _number(value: float) -> str:
    if value is None or not np.isfinite(value):
        return ""
    if value == int(value) and abs(value) < 1e9:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def _image_scans(cohort: Any, patients: int, failed: set[str] = frozenset()) -> list[_Scan]:
    """The baseline scan of each of the first `patients` patients (patient A, B, ...), skipping `failed` stacks."""
    selected = cohort.selected[~cohort.selected["stack_key"].isin(failed)]
    labels = _scan_labels(selected)
    scans = []
    for patient, group in selected.groupby("patient_key", sort=True):
        if len(scans) >= patients:
            break
        first = group.sort_values(["study_datetime", "stack_key"]).iloc[0]
        key = str(first["stack_key"])
        if key not in cohort.volumes:
            continue
        tag = chr(ord("A") + len(scans)) if len(scans) < 26 else str(len(scans) + 1)
        scans.append(_Scan(tag, key, str(patient), str(first["study_date"] or ""), labels[key][1]))
    return scans


def _lazy_images(cohort: Any, scans: Sequence[_Scan], *, masks: bool, notes: list[str]) -> dict[tuple[str, str], Any]:
    """Every lazy array the image figures need, to compute in one pass."""
    from ctframe.hu import to_hu
    from ctframe.projection import reformat

    lazy: dict[tuple[str, str], Any] = {}
    for scan in scans:
        volume = cohort.volumes[scan.stack_key]
        hu = to_hu(volume)
        n = volume.sizes["slice"]
        builders: dict[str, Callable[[], Any]] = {"stored": lambda v=volume, n=n: v.isel(slice=[n // 2])}
        if n < MIN_SLICES_3D:
            notes.append(
                f"{scan.label} has {n} slice(s): no coronal plane, projections or lung mask from it "
                f"(they need at least {MIN_SLICES_3D})"
            )
            masks_here = False
        else:
            masks_here = masks
            builders |= {
                "coronal": lambda hu=hu: reformat(hu, plane="coronal"),
                "coronal_mip": lambda hu=hu: _middle_mip(hu, "coronal", CORONAL_MIP_MM),
                "axial_mip": lambda hu=hu: _middle_mip(hu, "axial", AXIAL_MIP_MM),
            }
        if masks_here:
            from ctframe.segment import lung_mask

            builders["labels"] = lambda hu=hu: lung_mask(hu)
        for name, build in builders.items():
            try:
                lazy[(scan.tag, name)] = build()
            except CTFrameError as exc:
                notes.append(f"{scan.label}: no {name.replace('_', ' ')} ({exc})")
    return lazy


def _middle_mip(hu: Any, plane: str, slab_mm: float) -> Any:
    """MIP over the middle `slab_mm` of `hu` normal to `plane` (the whole volume where it is thinner)."""
    from ctframe.geometry import voxel_spacing
    from ctframe.projection import mip, plane_dim

    dim = plane_dim(hu, plane)
    spacing = dict(zip(("slice", "row", "col"), voxel_spacing(hu), strict=True))[dim]
    if slab_mm >= hu.sizes[dim] * spacing:
        return mip(hu, dim=dim)
    return mip(hu, dim=dim, slab_mm=slab_mm)


def _compute_images(lazy: dict[tuple[str, str], Any], scans: Sequence[_Scan], notes: list[str]) -> dict[Any, Any]:
    """Compute every image in one pass; if that fails, one by one, dropping those that fail."""
    import dask

    try:
        return dict(zip(lazy, dask.compute(*lazy.values()), strict=True))
    except CTFrameError:
        pass
    labels = {scan.tag: scan.label for scan in scans}
    out = {}
    for key, value in lazy.items():
        try:
            (out[key],) = dask.compute(value)
        except CTFrameError as exc:
            notes.append(f"{labels[key[0]]}: no {key[1].replace('_', ' ')} ({exc})")
    return out


def write_figures_and_report(
    summary: Any,
    cohort: Any,
    folder: str | os.PathLike[str],
    *,
    image_patients: int = 2,
    mask_overlays: bool = True,
    dpi: int = 100,
) -> Path:
    """Write ``figures/*.png`` and a self-contained ``report.html`` into `folder`.

    Parameters
    ----------
    summary : CohortSummary
        From :func:`ctframe.cohort.summarize`.
    cohort : Cohort
        The cohort it summarises (:func:`ctframe.cohort.open_cohort`), for the
        image figures.
    folder : path-like
        Output folder (created if missing); ``figures/`` is made inside it.
    image_patients : int
        How many patients get image figures (axial slice, coronal plane,
        MIPs, mask overlays), from their baseline scan: patient A, B, ... in
        the order of their keys. Table figures cover the whole cohort.
    mask_overlays : bool
        Draw lung masks at apex, middle and base (re-runs the segmentation of
        those scans) when the summary has lung regions.
    dpi : int
        Resolution of the PNG files.

    Returns
    -------
    Path
        The path of ``report.html``.

    Raises
    ------
    ParameterError
        `image_patients` negative or `dpi` not a positive integer.

    Notes
    -----
    **Computes**: the image figures' planes, projections and masks in one
    ``dask.compute`` (each chunk read once), then the few HU slices under
    the masks; the rest is drawn from the summary's tables. A figure that
    cannot be drawn (e.g. no lung found) becomes a note in the report.

    Examples
    --------
    >>> import tempfile
    >>> from ctframe.cohort import open_cohort, summarize
    >>> from ctframe.testing import write_phantom_cohort
    >>> root = tempfile.mkdtemp()
    >>> _ = write_phantom_cohort(root, n_patients=1, n_time_points=2, shape=(8, 32, 32), spacing_mm=(10, 10, 10))
    >>> cohort = open_cohort(root)
    >>> summary = summarize(cohort, regions=["scan"], progress=False)
    >>> write_figures_and_report(summary, cohort, tempfile.mkdtemp(), image_patients=1).name
    'report.html'
    """
    from ctframe import plot
    from ctframe.hu import to_hu

    if isinstance(image_patients, bool) or not isinstance(image_patients, int) or image_patients < 0:
        raise ParameterError(f"image_patients must be a non-negative integer, got {image_patients!r}")
    if isinstance(dpi, bool) or not isinstance(dpi, int) or dpi < 1:
        raise ParameterError(f"dpi must be a positive integer, got {dpi!r}")
    folder = Path(folder)
    figdir = folder / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    figures: list[_Figure] = []
    notes: list[str] = []

    def add(section: str, name: str, title: str, caption: str, draw: Callable[[], Any]) -> None:
        entry = _Figure(section, title, caption)
        try:
            fig = draw()
        except CTFrameError as exc:
            entry.error = str(exc)
        else:
            path = plot.save_figure(fig, figdir / f"{safe_name(name)}.png", dpi=dpi)
            entry.file = path.name
        figures.append(entry)

    measured = summary.regions[summary.regions["volume_ml"].notna()] if not summary.regions.empty else None
    regions_present = set(measured["region"]) if measured is not None else set()  # NaN rows measured nothing
    has_lungs = bool(regions_present & set(_LUNG_REGIONS))
    outcome = summary.series.get("outcome", pd.Series(dtype=str)).astype(str)
    failed = set(summary.series.loc[outcome.str.startswith("failed"), "stack_key"])  # their pixels cannot be read
    scans = _image_scans(cohort, image_patients, failed)
    lazy = _lazy_images(cohort, scans, masks=mask_overlays and has_lungs, notes=notes)
    computed = _compute_images(lazy, scans, notes)
    labelled = {f"{s.tag}: {s.label}": s.tag for s in scans}

    def image(tag: str, name: str) -> Any:
        if (tag, name) not in computed:
            raise ParameterError(f"scan {tag} has no {name.replace('_', ' ')}")
        return computed[(tag, name)]

    def images(name: str) -> dict[str, Any]:
        found = {lab: computed[(tag, name)] for lab, tag in labelled.items() if (tag, name) in computed}
        if not found:
            raise ParameterError(f"no scan has a {name.replace('_', ' ')} (see the notes)")
        return found

    # --- histograms
    slice_hu = None
    if scans and (scans[0].tag, "stored") in computed:
        slice_hu = to_hu(computed[(scans[0].tag, "stored")]).isel(slice=0)
    grid_patients = [s.patient_key for s in scans[:2]] or None
    patient_rows = summary.histograms[summary.histograms["level"] == "patient"]
    n_grid = len(grid_patients) if grid_patients else min(2, patient_rows["patient_key"].nunique())
    add(
        "histograms", "histogram_grid",
        "HU histograms: one slice, patient A, patient B, both" if n_grid > 1 else "HU histograms: one slice, patient A",
        "The notebook's grid, in Hounsfield units with padding and outside-the-circle fill excluded. "
        "The slice is the middle slice of patient A's baseline scan. Panels with nothing to show (no second "
        "patient) are left out and named under the figure.",
        lambda: plot.plot_histogram_grid(summary.histograms, patients=grid_patients, slice_hu=slice_hu),
    )  # fmt: skip
    add(
        "histograms", "histograms_by_patient", "HU histograms per patient (whole scan)",
        "Normalised to each patient's voxel count, so patients of different size compare.",
        lambda: plot.plot_histograms(summary.histograms, by="patient", region="scan"),
    )  # fmt: skip
    if "lungs" in regions_present:
        add(
            "histograms", "histograms_lungs_by_scan", "Lung HU histograms per scan",
            "Voxels inside the lung mask only; a shift to the right over time is denser lung (ground glass, "
            "consolidation).",
            lambda: plot.plot_histograms(summary.histograms, by="series", region="lungs"),
        )  # fmt: skip
    # --- images
    for scan in scans:
        add(
            "images", f"axial_slice_{scan.file_stem}", f"Axial slice of patient {scan.tag} ({scan.label})",
            "The middle slice as stored, in HU (padding in violet) and in the lung window (W1500/L-600, DICOM "
            "LINEAR function), with the series' own rescale.",
            lambda scan=scan: plot.plot_axial_slice(cohort.volumes[scan.stack_key]),
        )  # fmt: skip
    if any((s.tag, "coronal") in computed for s in scans):
        add(
            "images", "coronal_middle", "Middle coronal planes",
            "Drawn with their physical aspect: rows are slice spacing tall and pixel spacing wide (mm axes); "
            "letters at the image edges give the patient directions (R/L, A/P, S/I).",
            lambda: plot.plot_images(images("coronal"), preset="lung",
                                     title="middle coronal planes"),
        )  # fmt: skip
        add(
            "images", f"coronal_mip_{CORONAL_MIP_MM:g}mm", f"Coronal MIP of the middle {CORONAL_MIP_MM:g} mm",
            f"Maximum intensity projection over a {CORONAL_MIP_MM:g} mm coronal slab through the middle of the scan "
            "(the whole scan when it is thinner; each panel states its slab in mm), lung window; NaN padding never "
            "wins the maximum. Letters at the image edges give the patient directions (R/L, A/P, S/I).",
            lambda: plot.plot_images(images("coronal_mip"), preset="lung",
                                     title=f"coronal MIP, middle {CORONAL_MIP_MM:g} mm slab"),
        )  # fmt: skip
        add(
            "images", f"axial_mip_{AXIAL_MIP_MM:g}mm", f"Axial MIP of the middle {AXIAL_MIP_MM:g} mm",
            f"Maximum intensity projection over a {AXIAL_MIP_MM:g} mm axial slab through the middle of the scan "
            "(the whole scan when it is thinner; each panel states its slab in mm).",
            lambda: plot.plot_images(images("axial_mip"), preset="lung",
                                     title=f"axial MIP, middle {AXIAL_MIP_MM:g} mm slab"),
        )  # fmt: skip
    # --- lungs
    if has_lungs:
        add(
            "lungs", "lung_volumes", "Lung volumes per scan (mL)",
            "Right and left lung volumes from voxel counts times the voxel volume (pixel spacing x slice spacing).",
            lambda: plot.plot_lung_volumes(summary.regions),
        )  # fmt: skip
        add(
            "lungs", "lung_area", "Lung area per slice (mm²)",
            "Area of the 3-D lung mask on each slice, in mm² from the pixel spacing.",
            lambda: plot.plot_lung_area(summary.slice_areas, region="lungs"),
        )  # fmt: skip
        for scan in scans:
            if (scan.tag, "labels") not in computed:
                continue
            add(
                "lungs", f"mask_overlay_{scan.file_stem}", f"Lung mask of patient {scan.tag} ({scan.label})",
                "Right (blue) and left (orange) lung at the apex, the middle and the base, where a 2-D per-slice "
                "segmentation fails.",
                lambda scan=scan: plot.plot_mask_overlay(
                    to_hu(cohort.volumes[scan.stack_key]), image(scan.tag, "labels")
                ),
            )  # fmt: skip
    # --- longitudinal
    if not summary.longitudinal.empty:
        add(
            "longitudinal", "longitudinal", "Measures over time",
            "Each lung measure per patient against days since the patient's baseline scan, with its unit on the "
            "y axis; measures without any value get no panel and are named under the figure.",
            lambda: plot.plot_longitudinal(summary.longitudinal),
        )  # fmt: skip

    page = _render(summary, cohort, figures, notes, figdir)
    target = folder / "report.html"
    target.write_text(page, encoding="utf-8")
    return target


def _figure_html(entry: _Figure, figdir: Path) -> str:
    title = html.escape(entry.title)
    if entry.file is None:
        return f'<p class="warn">{title}: not drawn ({html.escape(_PATH.sub("<path>", entry.error or ""))})</p>'
    data = base64.b64encode((figdir / entry.file).read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{title}">'
        f"<figcaption><b>{title}.</b> {html.escape(entry.caption)} "
        f'<span class="note">(figures/{html.escape(entry.file)})</span></figcaption></figure>'
    )


def _with_scan_columns(table: pd.DataFrame, labels: dict[str, tuple[str, int]], key_column: str) -> pd.DataFrame:
    out = table.copy()
    if out.empty or key_column not in out:
        return out
    keys = out[key_column].astype(str)
    out.insert(0, "scan", [f"{labels[k][0]} scan {labels[k][1]}" if k in labels else "" for k in keys])
    out.insert(1, "series_ref", [series_reference(k) for k in keys])
    return out


def _render(summary: Any, cohort: Any, figures: list[_Figure], notes: list[str], figdir: Path) -> str:
    from ctframe import __version__

    series = summary.series
    labels = _scan_labels(cohort.selected)
    references = {str(k): series_reference(str(k)) for k in series["stack_key"]}
    order = {key: k for k, key in enumerate(cohort.selected["stack_key"])}
    chosen = series[series["selected"]]
    chosen = chosen.iloc[np.argsort([order.get(k, len(order)) for k in chosen["stack_key"]], kind="stable")]
    selected = _with_scan_columns(chosen, labels, "stack_key")
    others = _with_scan_columns(series[~series["selected"]], labels, "stack_key")
    for table in (selected, others):
        for column in ("outcome", "calibration_issue", "lung_qc_note"):
            if column in table:
                table[column] = table[column].map(lambda t: _scrub(str(t), references))
        if "selection_reason" in table:
            table["selection_reason"] = table["selection_reason"].map(lambda t: _scrub(t, references))
        if "qc_notes" in table:
            table["qc_notes"] = table["qc_notes"].map(lambda t: _scrub(t, references))
    if not others.empty:
        others["scan"] = others["patient_key"].astype(str)
    problems = summary.problems.copy()
    if not problems.empty:
        problems["series_ref"] = problems["stack_key"].astype(str).map(series_reference)
        problems["reason"] = problems["reason"].map(lambda t: _scrub(t, references))
    regions = _with_scan_columns(summary.regions, labels, "series")
    if "missing_reason" in regions:
        regions["missing_reason"] = regions["missing_reason"].map(lambda t: _scrub(str(t), references))
    longitudinal = summary.longitudinal.copy()
    if "comparability_notes" in longitudinal:
        longitudinal["comparability_notes"] = longitudinal["comparability_notes"].map(lambda t: _scrub(t, references))

    n_patients = cohort.selected["patient_key"].nunique()
    n_failed = int(series.get("outcome", pd.Series(dtype=str)).astype(str).str.startswith("failed").sum())
    cards = [
        ("patients", n_patients),
        ("studies", series["study_uid"].nunique()),
        ("scans analysed", int(series["selected"].sum()) - n_failed),
        ("scans failed", n_failed),
        ("stacks not analysed", int((~series["selected"]).sum())),
        ("problems", len(problems)),
    ]
    sections: list[tuple[str, str, str]] = []

    def figures_of(section: str) -> str:
        return "".join(_figure_html(f, figdir) for f in figures if f.section == section)

    sections.append(
        (
            "series",
            "Series and quality control",
            "<h3>Analysed scans (one per study)</h3>"
            + _table_html(selected, SERIES_COLUMNS, empty="No scan was selected.")
            + "<h3>Stacks not analysed</h3>"
            + _table_html(others, ("scan", "series_ref", *SERIES_COLUMNS[2:]), empty="Every stack was analysed.")
            + "<h3>Problems</h3>"
            + _table_html(problems, ("series_ref", "reason"), empty="No stack failed while its pixels were read."),
        )
    )
    sections.append(("histograms", "Histograms", figures_of("histograms")))
    if any(f.section == "images" for f in figures):
        sections.append(("images", "Images", figures_of("images")))
    if any(f.section == "lungs" for f in figures):
        sections.append(("lungs", "Lungs", figures_of("lungs")))
    sections.append(
        (
            "regions",
            "Region statistics",
            '<p class="note">Per scan and region: volume, HU mean, standard deviation, median and 15th percentile '
            "(Perc15), %LAA-950 (share below -950 HU, emphysema) and the high-attenuation share (ground glass "
            "range).</p>" + _table_html(regions, REGION_COLUMNS, empty="No region statistics."),
        )
    )
    sections.append(
        (
            "longitudinal",
            "Longitudinal comparison",
            figures_of("longitudinal")
            + _table_html(
                longitudinal,
                LONGITUDINAL_COLUMNS,
                empty="No patient has two or more studies with lung regions, so there is nothing to compare.",
            ),
        )
    )
    if notes:
        items = "".join(f"<li>{html.escape(_scrub(n, references))}</li>" for n in notes)
        sections.append(("notes", "Notes", f"<ul>{items}</ul>"))

    created = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    toc = "".join(f'<li><a href="#{sid}">{html.escape(title)}</a></li>' for sid, title, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{html.escape(title)}</h2>{content}</section>' for sid, title, content in sections
    )
    card_html = "".join(f'<div class="card"><b>{value:,}</b>{html.escape(name)}</div>' for name, value in cards)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="ctframe {html.escape(__version__)}">
<title>ctframe cohort report</title>
<style>{_CSS}</style>
</head>
<body>
<header><h1>ctframe cohort report</h1>
<p>{n_patients} patient(s), generated {created} by ctframe {html.escape(__version__)}.
Patients appear under pseudonymous keys only; series under short references; study dates are moved back by
one offset per patient (1 to 10 years), so intervals between a patient's scans are exact.</p></header>
<main>
<div class="cards">{card_html}</div>
<nav><ol>{toc}</ol></nav>
{body}
</main>
<footer>Self-contained report: no script, no network. Tables in full: series.csv, regions.csv, longitudinal.csv,
histograms.parquet and slice_areas.parquet beside this file.</footer>
</body>
</html>
"""
