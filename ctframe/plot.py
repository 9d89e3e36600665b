"""Pictures: interactive hvplot views and static matplotlib figures.

Two kinds of function live here, and both import their plotting library inside
the function, so ``import ctframe`` never imports holoviews, bokeh or matplotlib.

**Views** (:func:`browse`, :func:`histogram_view`, :func:`lung_area_view`,
:func:`longitudinal_view`) return HoloViews objects built with hvplot, for a
notebook or a panel app. :func:`browse` is a ``DynamicMap``: nothing is read
when it is built, and each frame computes only the plane on screen (an axial
frame reads the chunk holding that slice; a coronal or sagittal frame reads one
row or column of every chunk).

**Figures** (``plot_*``) are sinks: each computes what it draws with one
``dask.compute`` (on the scheduler the caller has set) and returns a
:class:`matplotlib.figure.Figure` drawn on the Agg canvas, without pyplot and its
global state; :func:`save_figure` writes it as PNG. Together they reproduce the
teaching notebook's figure set, corrected: values in HU with padding excluded,
each series windowed with its own rescale, planes with their physical aspect
(image extents in mm), lung areas in mm² and volumes in mL.

Figures are labelled with pseudonymous patient keys and study dates only; never
with PatientID, names or birth dates.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ctframe.errors import ParameterError
from ctframe.geometry import POSITION_COLUMNS, orientation_label, pixel_spacing, slice_normal

__all__ = [
    "browse",
    "histogram_view",
    "longitudinal_view",
    "lung_area_view",
    "measure_label",
    "plot_axial_slice",
    "plot_histogram_grid",
    "plot_histograms",
    "plot_images",
    "plot_longitudinal",
    "plot_lung_area",
    "plot_lung_volumes",
    "plot_mask_overlay",
    "plot_mip",
    "plot_planes",
    "save_figure",
]

#: Colours of the lung labels of :func:`ctframe.lung_mask` (1 right, 2 left, 3 airways).
LABEL_COLORS: dict[int, str] = {1: "#1f77b4", 2: "#ff7f0e", 3: "#2ca02c"}
LABEL_NAMES: dict[int, str] = {1: "right lung", 2: "left lung", 3: "airways"}
#: Colour of NaN (padding, outside the scan circle) in HU pictures.
NAN_COLOR = "#2a0f4a"
_PANEL_INCHES = 4.0


# --------------------------------------------------------------------------- helpers


def _as_hu(volume: xr.DataArray) -> xr.DataArray:
    """HU of stored values (lazily); HU and other units pass through."""
    if volume.attrs.get("units") == "stored value":
        from ctframe.hu import to_hu

        return to_hu(volume)
    return volume


def _check_dataarray(obj: Any, name: str) -> None:
    if not isinstance(obj, xr.DataArray):
        raise ParameterError(f"{name} must be an xarray.DataArray, got {type(obj).__name__}")


def _check_volume(volume: Any, name: str = "volume") -> None:
    _check_dataarray(volume, name)
    if volume.dims != ("slice", "row", "col"):
        raise ParameterError(
            f"{name} must have dims ('slice', 'row', 'col'), got {volume.dims}; open it with ctframe.open_series"
        )


def _as_mapping(volumes: xr.DataArray | Mapping[str, xr.DataArray], name: str) -> dict[str, xr.DataArray]:
    if isinstance(volumes, xr.DataArray):
        return {str(volumes.attrs.get("patient_key", volumes.name or "series")): volumes}
    if not isinstance(volumes, Mapping) or not volumes:
        raise ParameterError(f"{name} must be a DataArray or a non-empty mapping of label -> DataArray")
    for label, volume in volumes.items():
        _check_dataarray(volume, f"{name}[{label!r}]")
    return {str(k): v for k, v in volumes.items()}


def _check_table(table: Any, name: str, columns: Sequence[str]) -> None:
    if not isinstance(table, pd.DataFrame):
        raise ParameterError(f"{name} must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ParameterError(
            f"{name} lacks column(s) {missing}; pass the table from ctframe.cohort.summarize (summary.{name})"
        )


#: Patient direction letters of LPS +x, +y, +z and of their opposites (DICOM PS3.3 C.7.6.1.1.1).
_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))
#: A direction cosine of at least this size adds its letter (about 15 degrees off the main axis).
_SECONDARY = 0.25


def _direction_letters(direction: np.ndarray) -> str:
    """Patient direction of an LPS vector as DICOM letters, largest component first (``L``, ``PS``...)."""
    order = np.argsort(-np.abs(direction), kind="stable")
    letters = [
        _LETTERS[axis][0 if direction[axis] > 0 else 1]
        for rank, axis in enumerate(order)
        if rank == 0 or abs(direction[axis]) >= _SECONDARY
    ]
    return "".join(letters)


def _dim_directions(image: xr.DataArray) -> dict[str, np.ndarray] | None:
    """The LPS unit vector along which each dim's coordinate increases; None without DICOM orientation.

    ``col`` runs along the row direction cosines of ImageOrientationPatient, ``row`` along the column
    direction cosines and ``slice`` (the position along the normal) along their cross product
    (:func:`ctframe.geometry.slice_normal`).
    """
    value = image.attrs.get("orientation")
    if value is None:
        return None
    try:
        orientation = np.asarray(value, float).ravel()
    except (TypeError, ValueError):
        return None
    if orientation.shape != (6,) or not np.isfinite(orientation).all():
        return None
    vectors = {"col": orientation[:3], "row": orientation[3:], "slice": _slice_direction(image)}
    out = {}
    for dim, vector in vectors.items():
        norm = float(np.linalg.norm(vector))
        if not norm > 0:
            return None
        out[dim] = vector / norm
    return out


def _slice_direction(image: xr.DataArray) -> np.ndarray:
    """LPS direction in which the ``slice`` coordinate increases, as the slices are laid out.

    From the first to the last ImagePositionPatient (the step of :func:`ctframe.geometry.affine`), oriented
    so the ``slice`` coordinate grows along it: on a gantry-tilted stack the slices step along the table,
    not along the tilted normal, and that is what a reformatted plane shows. One slice (or no positions):
    the normal (:func:`ctframe.geometry.slice_normal`).
    """
    normal = slice_normal(image)
    if "slice" not in image.dims or image.sizes["slice"] < 2 or not all(c in image.coords for c in POSITION_COLUMNS):
        return normal
    positions = np.stack([np.asarray(image[c].values, float) for c in POSITION_COLUMNS], axis=1)
    step = positions[-1] - positions[0]
    if not (np.isfinite(step).all() and np.linalg.norm(step) > 0):
        return normal
    along = _coord(image, "slice")
    sign = np.sign(along[-1] - along[0]) if "slice" in image.coords else np.sign(float(step @ normal))
    return step * (sign if sign != 0 else 1.0)


def _edge_letters(image: xr.DataArray, *, x_increases_right: bool, y_increases_up: bool) -> dict[str, str] | None:
    """Patient direction letters at the ``left``, ``right``, ``top`` and ``bottom`` edges of a drawn 2-D image."""
    directions = _dim_directions(image)
    if directions is None:
        return None
    ydim, xdim = (str(d) for d in image.dims)
    x, y = directions[xdim], directions[ydim]
    x_right = x if x_increases_right else -x
    y_top = y if y_increases_up else -y
    return {
        "left": _direction_letters(-x_right),
        "right": _direction_letters(x_right),
        "top": _direction_letters(y_top),
        "bottom": _direction_letters(-y_top),
    }


def _axis_labels(image: xr.DataArray, edges: dict[str, str] | None) -> tuple[str, str]:
    """Axis labels (x, y): the dim in mm and the patient directions from one end to the other."""
    ydim, xdim = image.dims
    if edges is None:
        unknown = "patient direction unknown (no DICOM orientation)"
        return f"{xdim} (mm), {unknown}", f"{ydim} (mm)"
    return (
        f"{xdim} (mm), {edges['left']} \u2190 \u2192 {edges['right']}",
        f"{ydim} (mm), {edges['bottom']} \u2190 \u2192 {edges['top']}",
    )


def _label_directions(ax: Any, image: xr.DataArray) -> dict[str, str] | None:
    """Write the patient directions of a drawn image on its axes: the axis labels and a letter at each edge.

    The screen direction of each axis is read from the drawn axes (their limits), so an inverted or
    flipped axis gets the letters of what is shown; the patient direction of each dim comes from the
    DICOM orientation (:func:`_dim_directions`). The edge letters are text artists with ``gid``
    ``direction-left``, ``-right``, ``-top``, ``-bottom``.
    """
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    edges = _edge_letters(image, x_increases_right=x1 > x0, y_increases_up=y1 > y0)
    xlabel, ylabel = _axis_labels(image, edges)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if edges is None:
        return None
    style = {
        "transform": ax.transAxes, "color": "#ffd21f", "fontsize": 10, "fontweight": "bold", "clip_on": True,
        "bbox": {"boxstyle": "round,pad=0.15", "facecolor": "black", "alpha": 0.55, "linewidth": 0},
    }  # fmt: skip
    ax.text(0.015, 0.5, edges["left"], ha="left", va="center", gid="direction-left", **style)
    ax.text(0.985, 0.5, edges["right"], ha="right", va="center", gid="direction-right", **style)
    ax.text(0.5, 0.985, edges["top"], ha="center", va="top", gid="direction-top", **style)
    ax.text(0.5, 0.015, edges["bottom"], ha="center", va="bottom", gid="direction-bottom", **style)
    return edges


def _plane_name(volume: xr.DataArray) -> str:
    """``axial``, ``coronal``, ``sagittal`` or ``oblique`` from the slice normal; ``axial`` without DICOM geometry."""
    if _dim_directions(volume) is None:
        return "axial"
    return orientation_label(slice_normal(volume)).lower()


def _head_up(image: xr.DataArray) -> bool:
    """Whether larger ``slice`` coordinates are further toward the head (LPS +z)."""
    if image.attrs.get("orientation") is None:
        return True  # no DICOM geometry: the slice coordinate is taken to run towards the head
    return bool(slice_normal(image)[2] >= 0)


def _step(values: np.ndarray, fallback: float = 1.0) -> float:
    if values.size < 2:
        return fallback
    return float(np.median(np.abs(np.diff(values))))


def _coord(image: xr.DataArray, dim: Hashable) -> np.ndarray:
    if dim in image.coords and image[dim].dtype.kind in "iuf":
        return image[dim].to_numpy().astype(float)
    return np.arange(image.sizes[dim], dtype=float)


def _extent(image: xr.DataArray) -> tuple[tuple[float, float, float, float], str]:
    """Return the imshow ``extent`` (mm) and ``origin`` of a 2-D image.

    Index 0 of ``row`` and ``col`` at the top and left; a vertical ``slice`` axis with the head up.
    """
    ydim, xdim = image.dims
    y, x = _coord(image, ydim), _coord(image, xdim)
    fallback = float(image.attrs.get("slice_spacing_mm", 1.0))
    hy = _step(y, fallback if ydim == "slice" else 1.0) / 2 * (1 if y[-1] >= y[0] else -1)
    hx = _step(x, fallback if xdim == "slice" else 1.0) / 2 * (1 if x[-1] >= x[0] else -1)
    left, right = x[0] - hx, x[-1] + hx
    first, last = y[0] - hy, y[-1] + hy
    first_on_top = ydim != "slice" or ((y[-1] >= y[0]) != _head_up(image))
    if first_on_top:
        return (left, right, last, first), "upper"
    return (left, right, first, last), "lower"


def _new_figure(nrows: int, ncols: int, *, panel_inches: float = _PANEL_INCHES, height_ratio: float = 1.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_inches * ncols, panel_inches * height_ratio * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _cmap(name: str, bad: str) -> Any:
    import matplotlib as mpl

    return mpl.colormaps[name].with_extremes(bad=bad)


def _show(ax: Any, image: xr.DataArray, *, cmap: Any, vmin: float, vmax: float, label: str | None = None) -> Any:
    """Draw a computed 2-D image with its extent in mm (hence its physical aspect)."""
    extent, origin = _extent(image)
    artist = ax.imshow(
        np.asarray(image.values, dtype=float),
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        extent=extent,
        origin=origin,
        aspect="equal",
        interpolation="nearest",
    )
    _label_directions(ax, image)
    if label is not None:
        ax.set_label(label)
    return artist


def _display(image: xr.DataArray, preset: str | None) -> xr.DataArray:
    from ctframe.window import apply_window

    if preset is None:
        return image
    return apply_window(_as_hu(image), preset=preset)


def _window_text(image: xr.DataArray) -> str:
    if "window_width_hu" not in image.attrs:
        return ""
    name = image.attrs.get("window_preset") or "window"
    return f"{name} W{image.attrs['window_width_hu']:g}/L{image.attrs['window_level_hu']:g}"


def _date_text(value: Any) -> str:
    """A DICOM date (YYYYMMDD) as YYYY-MM-DD; anything else as given (empty for missing)."""
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def _series_label(row: Any) -> str:
    date = str(getattr(row, "study_date", "") or "")
    return f"{row.patient_key} {date}".strip()


def save_figure(figure: Any, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Write a figure as PNG (white background).

    Parameters
    ----------
    figure : matplotlib.figure.Figure
        From one of the ``plot_*`` functions.
    path : path-like
        Target file; its folder must exist.
    dpi : int
        Pixels per inch (a 4-inch panel at 100 dpi is 400 pixels wide).

    Returns
    -------
    Path
        `path`.

    Raises
    ------
    ParameterError
        `dpi` is not a positive integer.

    Notes
    -----
    **Computes** nothing: the figure is already drawn from computed values.

    Examples
    --------
    >>> import tempfile, numpy as np, xarray as xr
    >>> fig = plot_images({"a": xr.DataArray(np.eye(4), dims=("row", "col"))}, preset=None)
    >>> save_figure(fig, tempfile.mkdtemp() + "/eye.png").suffix
    '.png'
    """
    if isinstance(dpi, bool) or not isinstance(dpi, int) or dpi < 1:
        raise ParameterError(f"dpi must be a positive integer, got {dpi!r}")
    path = Path(path)
    figure.savefig(path, dpi=dpi, format="png", facecolor="white")
    return path


# --------------------------------------------------------------------------- interactive views


def browse(
    volume: xr.DataArray,
    *,
    plane: str = "axial",
    preset: str = "lung",
    mask: xr.DataArray | None = None,
    mask_alpha: float = 0.4,
    width: int = 500,
) -> Any:
    """Slice browser: a slider over the planes of one orientation and a window-preset selector.

    Parameters
    ----------
    volume : DataArray (slice, row, col)
        Stored values (converted with :func:`ctframe.to_hu`) or HU, lazy.
    plane : {"axial", "coronal", "sagittal"}
        Orientation of the planes; the slider runs over the dim
        :func:`ctframe.plane_dim` holds fixed for it.
    preset : str
        Window preset shown first; the selector offers every preset of the
        configuration's ``window.presets``.
    mask : DataArray (slice, row, col), optional
        Labels on the same grid (e.g. :func:`ctframe.lung_mask`), drawn in
        colour over the image (1 right lung, 2 left lung, 3 airways). A lazy
        mask from ``lung_mask`` is one task per series: pass
        ``mask.persist()`` (or a computed mask) so frames do not rerun the
        segmentation.
    mask_alpha : float
        Opacity of the mask colours.
    width : int
        Frame width in screen pixels; the height follows the physical aspect.

    Returns
    -------
    holoviews.DynamicMap
        kdims ``index`` (position along the fixed dim; the frame's title gives
        it in mm) and ``preset``; each frame an ``Image`` (with the mask: an
        ``Overlay`` of two) whose axes are the plane's dims in mm.

    Raises
    ------
    ParameterError
        Not a ``(slice, row, col)`` volume, unknown plane or preset, or a mask
        of another shape.

    Notes
    -----
    **Lazy**: nothing is computed when the view is built. Each frame computes
    its plane (and the mask's) with one ``dask.compute``: an axial frame reads
    the chunk holding its slice, not the series.

    Examples
    --------
    >>> import tempfile, ctframe
    >>> from ctframe.testing import write_phantom_series
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_phantom_series(folder, shape=(8, 32, 32), spacing_mm=(10.0, 10.0, 10.0))
    >>> view = browse(ctframe.open_series(folder), plane="coronal")
    >>> [d.name for d in view.kdims], [d.name for d in view[4, "bone"].kdims]
    (['index', 'preset'], ['col', 'slice'])
    """
    import dask
    import holoviews as hv
    import hvplot.xarray  # noqa: F401  (registers .hvplot)

    from ctframe.projection import plane_dim, reformat
    from ctframe.window import apply_window, window_presets

    _check_volume(volume)
    presets = list(window_presets())
    if preset not in presets:
        raise ParameterError(f"preset must be one of {', '.join(presets)}, got {preset!r}")
    if mask is not None:
        _check_volume(mask, "mask")
        if mask.shape != volume.shape:
            raise ParameterError(f"mask has shape {mask.shape}, the volume {volume.shape}; pass labels on its grid")
    dim = plane_dim(volume, plane)
    n = volume.sizes[dim]
    positions = _coord(volume, dim)
    hu = _as_hu(volume)
    name = str(volume.attrs.get("patient_key", ""))

    def frame(index: int, preset: str) -> Any:
        index = int(index)
        image = apply_window(reformat(hu, plane=plane, index=index), preset=preset)
        parts = [image] if mask is None else [image, reformat(mask, plane=plane, index=index)]
        computed = dask.compute(*parts)
        shown = computed[0]
        ydim, xdim = shown.dims
        flip = not (ydim == "slice" and _head_up(volume))
        title = f"{name} {plane} {dim}[{index}] = {positions[index]:.1f} mm, {_window_text(shown)}".strip()
        xlabel, ylabel = _axis_labels(shown, _edge_letters(shown, x_increases_right=True, y_increases_up=not flip))
        picture = shown.hvplot.image(
            x=xdim, y=ydim, cmap="gray", clim=(0.0, 1.0), data_aspect=1, flip_yaxis=flip, frame_width=width,
            colorbar=False, title=title, xlabel=xlabel, ylabel=ylabel,
        )  # fmt: skip
        if mask is None:
            return picture
        labels = computed[1].astype(np.float32)
        labels = labels.where(labels > 0)
        colors = [LABEL_COLORS[k] for k in sorted(LABEL_COLORS)]
        overlay = labels.hvplot.image(
            x=xdim, y=ydim, cmap=colors, clim=(0.5, 3.5), alpha=mask_alpha, data_aspect=1, flip_yaxis=flip,
            frame_width=width, colorbar=False,
        ).opts(clipping_colors={"NaN": (0, 0, 0, 0)})  # fmt: skip
        return picture * overlay

    index_dim = hv.Dimension("index", label=f"{dim} index", range=(0, n - 1), default=n // 2, step=1, type=int)
    preset_dim = hv.Dimension("preset", values=presets, default=preset)
    return hv.DynamicMap(frame, kdims=[index_dim, preset_dim])


def _histogram_rows(histograms: pd.DataFrame, *, level: str, region: str) -> pd.DataFrame:
    _check_table(histograms, "histograms", ["level", "patient_key", "region", "bin_left_hu", "bin_right_hu", "count"])
    rows = histograms[(histograms["level"] == level) & (histograms["region"] == region)]
    rows = rows[np.isfinite(rows["bin_left_hu"]) & np.isfinite(rows["bin_right_hu"])]
    if rows.empty:
        available = sorted(set(zip(histograms["level"], histograms["region"], strict=True)))
        raise ParameterError(
            f"the histogram table has no rows at level {level!r} for region {region!r}; it holds {available}"
        )
    return rows


def _group_label(rows: pd.DataFrame, by: str) -> pd.Series:
    if by == "patient":
        return rows["patient_key"].astype(str)
    return (rows["patient_key"].astype(str) + " " + rows["study_date"].map(_date_text)).str.strip()


def _normalized_histograms(
    histograms: pd.DataFrame, *, by: str, region: str, range_hu: Sequence[float]
) -> pd.DataFrame:
    if by not in ("patient", "series"):
        raise ParameterError(f"by must be 'patient' or 'series', got {by!r}")
    lo, hi = _range(range_hu)
    rows = _histogram_rows(histograms, level=by, region=region).copy()
    rows["label"] = _group_label(rows, by)
    rows["hu"] = (rows["bin_left_hu"] + rows["bin_right_hu"]) / 2.0
    rows["width_hu"] = rows["bin_right_hu"] - rows["bin_left_hu"]
    totals = rows.groupby("label")["count"].transform("sum").replace(0, np.nan)
    rows["percent_per_hu"] = 100.0 * rows["count"] / totals / rows["width_hu"]
    rows = rows[(rows["bin_left_hu"] >= lo) & (rows["bin_right_hu"] <= hi)]
    columns = ["label", "patient_key", "hu", "bin_left_hu", "bin_right_hu", "count", "percent_per_hu"]
    return rows.sort_values(["label", "hu"])[columns]


def _range(range_hu: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in range_hu)
    except (TypeError, ValueError):
        raise ParameterError(f"range_hu must be two numbers (low, high), got {range_hu!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ParameterError(f"range_hu must be finite with low < high, got {range_hu!r}")
    return lo, hi


def histogram_view(
    histograms: pd.DataFrame,
    *,
    by: str = "patient",
    region: str = "scan",
    range_hu: Sequence[float] = (-1100, 300),
) -> Any:
    """Overlaid HU histograms, one curve per patient or per scan, from the tidy table.

    Parameters
    ----------
    histograms : DataFrame
        ``summary.histograms`` of :func:`ctframe.cohort.summarize`.
    by : {"patient", "series"}
        One curve per patient (the ``patient`` level) or per scan (``series``).
    region : str
        ``scan``, ``body``, ``lungs``, ``right_lung`` or ``left_lung``.
    range_hu : (float, float)
        HU range shown.

    Returns
    -------
    holoviews.NdOverlay
        Of ``Curve`` (steps), key dim ``label``; y is the percent of the
        group's voxels per HU, so groups of different size compare.

    Raises
    ------
    ParameterError
        Unknown `by`, a table without that level or region, a bad range.

    Notes
    -----
    **Computes** nothing: drawn from a table (padding was never counted).

    Examples
    --------
    >>> table = pd.DataFrame({"level": "patient", "patient_key": ["P-a", "P-a", "P-b", "P-b"],
    ...     "study_date": "", "region": "scan", "bin_left_hu": [-1000, -990] * 2,
    ...     "bin_right_hu": [-990, -980] * 2, "count": [5, 1, 2, 2]})
    >>> view = histogram_view(table)
    >>> type(view).__name__, [d.name for d in view.kdims]
    ('NdOverlay', ['label'])
    """
    import hvplot.pandas  # noqa: F401  (registers .hvplot)

    rows = _normalized_histograms(histograms, by=by, region=region, range_hu=range_hu)
    return rows.hvplot.step(
        x="hu", y="percent_per_hu", by="label", where="mid", xlabel="Hounsfield units (HU)",
        ylabel="% of voxels per HU", responsive=False, width=700, height=350,
        title=f"HU histogram of each {'patient' if by == 'patient' else 'scan'}: {_region_name(region)} "
        "(padding excluded)",
    )  # fmt: skip


def lung_area_view(slice_areas: pd.DataFrame, *, region: str = "lungs") -> Any:
    """Lung area (mm²) per slice along the scan, one curve per series.

    Parameters
    ----------
    slice_areas : DataFrame
        ``summary.slice_areas`` of :func:`ctframe.cohort.summarize`.
    region : str
        Region to show (``lungs``, ``right_lung``, ``left_lung``, ``body``...).

    Returns
    -------
    holoviews.NdOverlay
        Of ``Curve``: x ``slice_position_mm``, y ``area_mm2``, key dim ``label``.

    Raises
    ------
    ParameterError
        Missing columns or no rows for `region`.

    Notes
    -----
    **Computes** nothing: drawn from a table.

    Examples
    --------
    >>> table = pd.DataFrame({"patient_key": "P-a", "study_date": "20200101", "series": "s", "region": "lungs",
    ...     "slice_position_mm": [0.0, 5.0, 10.0], "area_mm2": [0.0, 900.0, 400.0]})
    >>> lung_area_view(table).kdims
    [Dimension('label')]
    """
    import hvplot.pandas  # noqa: F401  (registers .hvplot)

    rows = _area_rows(slice_areas, region)
    return rows.hvplot.line(
        x="slice_position_mm", y="area_mm2", by="label", xlabel="slice position along the slice normal (mm)",
        ylabel="area (mm²)", title=f"Area on each slice: {_region_name(region)}", width=700, height=350,
    )  # fmt: skip


def _area_rows(slice_areas: pd.DataFrame, region: str) -> pd.DataFrame:
    _check_table(slice_areas, "slice_areas", ["patient_key", "study_date", "region", "slice_position_mm", "area_mm2"])
    rows = slice_areas[slice_areas["region"] == region].copy()
    if rows.empty:
        raise ParameterError(
            f"slice_areas has no rows for region {region!r} (regions: {sorted(set(slice_areas['region']))}); "
            "lung regions need summarize(..., regions=[..., 'lungs'])"
        )
    rows["label"] = (rows["patient_key"].astype(str) + " " + rows["study_date"].map(_date_text)).str.strip()
    return rows.sort_values(["label", "slice_position_mm"])


def _longitudinal_rows(longitudinal: pd.DataFrame, measures: Sequence[str] | None) -> tuple[pd.DataFrame, list[str]]:
    _check_table(longitudinal, "longitudinal", ["patient_key", "days_since_baseline", "measure", "value"])
    if longitudinal.empty:
        raise ParameterError("the longitudinal table is empty: no patient has two or more studies with lung regions")
    chosen = list(dict.fromkeys(longitudinal["measure"])) if measures is None else list(measures)
    unknown = sorted(set(chosen) - set(longitudinal["measure"]))
    if unknown:
        raise ParameterError(f"unknown measure(s) {unknown}; the table holds {sorted(set(longitudinal['measure']))}")
    rows = longitudinal[longitudinal["measure"].isin(chosen)]
    return rows.sort_values(["measure", "patient_key", "days_since_baseline"]), chosen


def longitudinal_view(longitudinal: pd.DataFrame, *, measures: Sequence[str] | None = None) -> Any:
    """One line plot per measure, one line per patient, over days since the baseline study.

    Parameters
    ----------
    longitudinal : DataFrame
        ``summary.longitudinal`` of :func:`ctframe.cohort.summarize`.
    measures : sequence of str, optional
        Measures to show (default: all in the table, e.g. ``lung_volume_ml``,
        ``lung_hu_mean``, ``lung_haa_pct``).

    Returns
    -------
    holoviews.NdLayout
        Key dim ``measure``; each panel an ``NdOverlay`` of curves keyed by
        ``patient_key`` (x ``days_since_baseline``, y ``value``).

    Raises
    ------
    ParameterError
        Empty table, missing columns or unknown measures.

    Notes
    -----
    **Computes** nothing: drawn from a table.

    Examples
    --------
    >>> table = pd.DataFrame({"patient_key": ["P-a", "P-a"], "days_since_baseline": [0.0, 90.0],
    ...     "measure": "lung_volume_ml", "value": [4200.0, 4000.0]})
    >>> longitudinal_view(table).kdims
    [Dimension('measure')]
    """
    import holoviews as hv
    import hvplot.pandas  # noqa: F401  (registers .hvplot)

    rows, chosen = _longitudinal_rows(longitudinal, measures)
    panels = {}
    for measure in chosen:
        part = rows[rows["measure"] == measure]
        title, unit = measure_label(measure)
        options = {"x": "days_since_baseline", "y": "value", "by": "patient_key", "width": 420, "height": 260}
        lines = part.hvplot.line(xlabel="days since baseline", ylabel=unit, title=title, **options)
        dots = part.hvplot.scatter(**options)
        panels[measure] = (lines * dots).opts(title=title)
    return hv.NdLayout(panels, kdims="measure").cols(2)


# --------------------------------------------------------------------------- static figures


def plot_axial_slice(
    volume: xr.DataArray,
    *,
    index: int | None = None,
    preset: str = "lung",
) -> Any:
    """One slice three ways: as stored, in HU, and windowed.

    Axial for an axial series; a coronal or sagittal series shows its own
    plane, and the title names it (from the slice normal).

    Parameters
    ----------
    volume : DataArray (slice, row, col)
        **Stored** values from :func:`ctframe.open_series` (lazy or computed).
    index : int, optional
        Slice index (default: the middle, ``n // 2``).
    preset : str
        Window preset of the third panel (default the lung window W1500/L-600).

    Returns
    -------
    matplotlib.figure.Figure
        Three panels with colour bars, labelled ``stored``, ``hu`` and
        ``windowed`` (``Axes.get_label()``); extents in mm, the patient
        direction (R/L, A/P, S/I) at each image edge and on each axis label.
        NaN (padding, outside the scan circle) is dark violet in HU and black
        when windowed, as on a scanner's screen.

    Raises
    ------
    ParameterError
        Not a ``(slice, row, col)`` volume of stored values, index out of range.

    Notes
    -----
    **Computes**: one slice (the chunk holding it is read).

    Examples
    --------
    >>> import tempfile, ctframe
    >>> from ctframe.testing import write_phantom_series
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_phantom_series(folder, shape=(4, 32, 32))
    >>> [ax.get_label() for ax in plot_axial_slice(ctframe.open_series(folder)).axes][:3]
    ['stored', 'hu', 'windowed']
    """
    from ctframe.hu import to_hu
    from ctframe.window import apply_window

    _check_volume(volume)
    if volume.attrs.get("units") != "stored value":
        raise ParameterError(
            f"plot_axial_slice shows stored values and their HU; got units {volume.attrs.get('units')!r}. "
            "Pass the volume from ctframe.open_series (before to_hu)"
        )
    n = volume.sizes["slice"]
    i = n // 2 if index is None else int(index)
    if not -n <= i < n:
        raise ParameterError(f"index {index} is out of range for {n} slices")
    i %= n
    (stored,) = _compute(volume.isel(slice=[i]))
    hu = to_hu(stored)
    shown = apply_window(hu, preset=preset)
    stored2, hu2, shown2 = (a.isel(slice=0) for a in (stored, hu, shown))
    fig = _new_figure(1, 3)
    axes = fig.subplots(1, 3)
    values = np.asarray(stored2.values, float)
    finite = hu2.values[np.isfinite(hu2.values)]
    hu_lo, hu_hi = (float(finite.min()), float(finite.max())) if finite.size else (-1024.0, 1024.0)
    panels = [
        (stored2, _cmap("gray", "red"), float(values.min()), float(values.max()), "stored", "stored value"),
        (hu2, _cmap("gray", NAN_COLOR), hu_lo, hu_hi, "hu", "HU (NaN: padding / fill)"),
        (shown2, _cmap("gray", "black"), 0.0, 1.0, "windowed", _window_text(shown2)),
    ]
    titles = ["as stored", "Hounsfield units", f"windowed ({_window_text(shown2)})"]
    for ax, (image, cmap, lo, hi, label, bar), title in zip(axes, panels, titles, strict=True):
        artist = _show(ax, image, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1, label=label)
        ax.set_title(title, fontsize=10)
        fig.colorbar(artist, ax=ax, shrink=0.8, label=bar)
    position = float(stored2["slice"]) if "slice" in stored2.coords else float(i)
    who = volume.attrs.get("patient_key", "")
    fig.suptitle(f"{who} {_plane_name(volume)} slice {i} of {n} at {position:.1f} mm".strip())
    return fig


def _compute(*arrays: Any) -> tuple[Any, ...]:
    import dask

    return dask.compute(*arrays)


def plot_images(
    images: xr.DataArray | Mapping[str, xr.DataArray],
    *,
    preset: str | None = "lung",
    title: str = "",
) -> Any:
    """Draw 2-D images (planes, projections) side by side with their physical aspect.

    Parameters
    ----------
    images : DataArray or mapping of label -> DataArray
        2-D, lazy or computed; HU (windowed here with `preset`) or display
        values in [0, 1] (``preset=None``). Coordinates in mm give the extent,
        so a coronal plane of a 2.5 mm series with 0.7 mm pixels is drawn 3.6
        times taller per row than wide per column; a vertical ``slice`` axis
        has the head up.
    preset : str or None
        Window preset, or None for images already in [0, 1].
    title : str
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per image, labelled with its key (``Axes.get_label()``).

    Raises
    ------
    ParameterError
        An image that is not 2-D.

    Notes
    -----
    **Computes**: every image in one ``dask.compute``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> plane = xr.DataArray(np.zeros((3, 4)), dims=("slice", "col"),
    ...                      coords={"slice": [0.0, 2.5, 5.0], "col": np.arange(4) * 0.7}, attrs={"units": "HU"})
    >>> fig = plot_images({"coronal": plane})
    >>> [ax.get_label() for ax in fig.axes]
    ['coronal']
    """
    mapping = _as_mapping(images, "images")
    for label, image in mapping.items():
        if image.ndim != 2:
            raise ParameterError(f"image {label!r} has dims {image.dims}; pass 2-D planes or projections")
    shown = _compute(*(_display(image, preset) for image in mapping.values()))
    fig = _new_figure(1, len(mapping))
    axes = np.atleast_1d(fig.subplots(1, len(mapping)))
    for ax, (label, image) in zip(axes, zip(mapping, shown, strict=True), strict=True):
        _show(ax, image, cmap=_cmap("gray", "black"), vmin=0.0, vmax=1.0, label=label)
        ax.set_title("\n".join([_wrap(str(label), 48), *_lines(_describe_parts(image), 48)]), fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def _lines(parts: Sequence[str], width: int) -> list[str]:
    """Join phrases with ", " into lines of about `width` characters, never splitting a phrase."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += ", " + part
        else:
            lines.append(part)
    return lines


def _describe_parts(image: xr.DataArray) -> list[str]:
    parts = []
    if "plane" in image.attrs:
        fixed = next((c for c in ("slice", "row", "col") if c in image.coords and c not in image.dims), None)
        where = f" at {float(image[fixed]):.1f} mm" if fixed is not None else ""
        parts.append(f"{image.attrs['plane']}{where}")
    if "projection" in image.attrs:
        parts.append(_slab_text(image))
    window = _window_text(image)
    if window:
        parts.append(window)
    return parts


def _slab_mm(image: xr.DataArray) -> float:
    """Thickness (mm) of the slab a projection was taken over: its samples times their spacing; NaN if unknown."""
    start, stop = (int(v) for v in image.attrs["slab_indices"])
    count = stop - start
    ends = image.attrs.get("slab_range_mm")
    if ends is not None and count > 1:
        return count * abs(float(ends[1]) - float(ends[0])) / (count - 1)
    dim = image.attrs.get("projection_dim")
    if dim == "slice":
        fallback = image.attrs.get("slice_spacing_mm") or image.attrs.get("slice_thickness_mm")
    else:
        pixel = image.attrs.get("pixel_spacing_mm") or (None, None)
        fallback = pixel[0] if dim == "row" else pixel[1] if dim == "col" else None
    return count * float(fallback) if fallback is not None else math.nan


def _slab_text(image: xr.DataArray) -> str:
    """``MIP of a 28.1 mm slab, row 75.2 to 102.6 mm``: the slab in mm, never in indices."""
    kind = str(image.attrs["projection"]).upper().replace("MINIP", "MinIP").replace("MEAN", "mean")
    thickness = _slab_mm(image)
    text = f"{kind} of a {thickness:.1f} mm slab" if math.isfinite(thickness) else f"{kind} (slab thickness unknown)"
    ends = image.attrs.get("slab_range_mm")
    if ends is not None:
        what = "position" if image.attrs.get("projection_dim") == "slice" else str(image.attrs.get("projection_dim"))
        text += f", {what} {float(ends[0]):.1f} to {float(ends[1]):.1f} mm"
    return text


def plot_planes(
    volumes: xr.DataArray | Mapping[str, xr.DataArray],
    *,
    plane: str = "coronal",
    index: int | None = None,
    preset: str = "lung",
) -> Any:
    """The middle (or `index`-th) plane of each volume, windowed, with the right aspect.

    Parameters
    ----------
    volumes : DataArray (slice, row, col) or mapping of label -> DataArray
        Stored values or HU, lazy.
    plane : {"axial", "coronal", "sagittal"}
        See :func:`ctframe.reformat`.
    index : int, optional
        Index along the fixed dim (default the middle).
    preset : str
        Window preset.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per volume (see :func:`plot_images`).

    Raises
    ------
    ParameterError
        Unknown plane or preset, index out of range.

    Notes
    -----
    **Computes**: one plane per volume, all in one ``dask.compute``.

    Examples
    --------
    >>> import tempfile, ctframe
    >>> from ctframe.testing import write_phantom_series
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_phantom_series(folder, shape=(8, 32, 32), spacing_mm=(10.0, 10.0, 10.0))
    >>> len(plot_planes({"A": ctframe.open_series(folder)}).axes)
    1
    """
    from ctframe.projection import reformat

    mapping = _as_mapping(volumes, "volumes")
    planes = {}
    for label, volume in mapping.items():
        _check_volume(volume, f"volumes[{label!r}]")
        planes[label] = reformat(_as_hu(volume), plane=plane, index=index)
    return plot_images(planes, preset=preset, title=f"middle {plane} planes" if index is None else f"{plane} planes")


def plot_mip(
    volumes: xr.DataArray | Mapping[str, xr.DataArray],
    *,
    plane: str = "coronal",
    slab: int | None = None,
    slab_mm: float | None = None,
    preset: str = "lung",
) -> Any:
    """Maximum intensity projection of the middle slab, as the notebook showed them.

    The notebook's two: ``plot_mip(hu, plane="coronal", slab=40)`` (the middle
    40 coronal planes) and ``plot_mip(hu, plane="axial", slab=50)``.

    Parameters
    ----------
    volumes : DataArray (slice, row, col) or mapping of label -> DataArray
        Stored values or HU, lazy.
    plane : {"axial", "coronal", "sagittal"}
        Plane of the projection; the slab runs along the dim
        :func:`ctframe.plane_dim` holds fixed for it.
    slab, slab_mm : int or float, optional
        Slab thickness in samples or in mm (default: the whole dim). Either
        way, titles state the slab in mm: its samples times their spacing,
        and where along the dim it lies.
    preset : str
        Window preset.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per volume; titles give the slab's thickness and place in
        mm; image axes carry patient directions.

    Raises
    ------
    ParameterError
        A slab thicker than the volume, both `slab` and `slab_mm`, unknown
        plane or preset.

    Notes
    -----
    **Computes**: one projection per volume, all in one ``dask.compute``
    (NaN padding never wins the maximum).

    Examples
    --------
    >>> import tempfile, ctframe
    >>> from ctframe.testing import write_phantom_series
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_phantom_series(folder, shape=(8, 32, 32), spacing_mm=(10.0, 10.0, 10.0))
    >>> fig = plot_mip({"A": ctframe.open_series(folder)}, plane="axial", slab=4)
    >>> fig.axes[0].get_title().splitlines()[1]
    'MIP of a 40.0 mm slab, position -60.0 to -30.0 mm'
    """
    from ctframe.projection import mip, plane_dim

    mapping = _as_mapping(volumes, "volumes")
    projections = {}
    for label, volume in mapping.items():
        _check_volume(volume, f"volumes[{label!r}]")
        dim = plane_dim(volume, plane)
        projections[label] = mip(_as_hu(volume), dim=dim, slab=slab, slab_mm=slab_mm)
    thicknesses = {round(_slab_mm(p), 1) for p in projections.values()}
    if slab is None and slab_mm is None:
        thickness = "the whole volume"
    elif len(thicknesses) == 1 and all(math.isfinite(t) for t in thicknesses):
        thickness = f"the middle {thicknesses.pop():.1f} mm slab"
    else:
        thickness = "the middle slab (thickness per panel)"
    return plot_images(projections, preset=preset, title=f"{plane} MIP over {thickness}")


def _centers(rows: pd.DataFrame) -> np.ndarray:
    return ((rows["bin_left_hu"] + rows["bin_right_hu"]) / 2.0).to_numpy()


def _stairs(ax: Any, counts: np.ndarray, edges: np.ndarray, **kwargs: Any) -> None:
    ax.stairs(counts, edges, fill=True, **kwargs)
    ax.set_xlabel("HU")
    ax.set_ylabel("voxels")


def plot_histogram_grid(
    histograms: pd.DataFrame,
    *,
    patients: Sequence[str] | None = None,
    slice_hu: xr.DataArray | None = None,
    region: str = "scan",
    range_hu: Sequence[float] = (-1100, 1200),
) -> Any:
    """The notebook's 2x2 histogram grid, in HU with padding excluded.

    Panels: one slice, all of patient A, all of patient B, A and B together;
    only those with something to show (one patient: no B and no comparison;
    no slice-level histogram and no `slice_hu`: no slice panel), and a note
    under the figure says which were left out.

    Parameters
    ----------
    histograms : DataFrame
        ``summary.histograms`` (needs the ``patient`` level; the ``slice``
        level feeds the first panel when `slice_hu` is not given).
    patients : (str, str), optional
        Patient keys of A and B (default: the first two in the table).
    slice_hu : DataArray (row, col), optional
        A slice in HU (lazy or computed) for the first panel, binned on the
        table's edges; NaN (padding) is left out.
    region : str
        Region of the histograms.
    range_hu : (float, float)
        HU range drawn (bins outside it, and the under/overflow bins, are
        not drawn).

    Returns
    -------
    matplotlib.figure.Figure
        Up to four panels labelled ``slice``, ``A``, ``B`` and ``both``
        (``Axes.get_label()``), y in voxels, x in HU.

    Raises
    ------
    ParameterError
        No patient-level rows for `region`, an unknown patient key.

    Notes
    -----
    **Computes** `slice_hu` when it is lazy; everything else comes from the table.

    Examples
    --------
    >>> table = pd.DataFrame({"level": "patient", "patient_key": ["P-a", "P-a", "P-b", "P-b"],
    ...     "study_date": "", "series": "", "slice_position_mm": np.nan, "region": "scan",
    ...     "bin_left_hu": [-1000, -990] * 2, "bin_right_hu": [-990, -980] * 2, "count": [5, 1, 2, 2]})
    >>> [ax.get_label() for ax in plot_histogram_grid(table).axes]
    ['A', 'B', 'both']
    """
    lo, hi = _range(range_hu)
    rows = _histogram_rows(histograms, level="patient", region=region)
    keys = list(dict.fromkeys(rows["patient_key"]))
    chosen = list(patients) if patients is not None else keys[:2]
    unknown = [p for p in chosen if p not in keys]
    if unknown:
        raise ParameterError(f"patient(s) {unknown} have no {region!r} histogram; the table holds {keys}")
    per_patient = {}
    for key in chosen:
        part = rows[rows["patient_key"] == key].sort_values("bin_left_hu")
        per_patient[key] = part
    edges_source = next(iter(per_patient.values()))
    edges = np.append(edges_source["bin_left_hu"].to_numpy(), edges_source["bin_right_hu"].to_numpy()[-1])
    keep = (edges_source["bin_left_hu"].to_numpy() >= lo) & (edges_source["bin_right_hu"].to_numpy() <= hi)
    first, last = np.flatnonzero(keep)[[0, -1]] if keep.any() else (0, len(keep) - 1)
    window_edges = edges[first : last + 2]

    def counts_of(part: pd.DataFrame) -> np.ndarray:
        return part["count"].to_numpy()[first : last + 1]

    slice_counts, slice_title = _slice_histogram(histograms, rows, chosen, slice_hu, region, edges)
    colors = ["#dd8452", "#55a868"]
    # Only panels with something to show: one patient gives no B and no "both"; no slice histogram, no slice panel.
    panels: list[tuple[str, Callable[[Any], None]]] = []
    if slice_counts is not None:

        def draw_slice(ax: Any) -> None:
            _stairs(ax, slice_counts[first : last + 1], window_edges, color="#4c72b0")
            ax.set_title(slice_title, fontsize=10)

        panels.append(("slice", draw_slice))
    for k, key in enumerate(chosen[:2]):

        def draw_patient(ax: Any, key: str = key, k: int = k) -> None:
            _stairs(ax, counts_of(per_patient[key]), window_edges, color=colors[k])
            ax.set_title(f"patient {'AB'[k]}: {key} (all scans)", fontsize=10)

        panels.append(("AB"[k], draw_patient))
    if len(chosen) > 1:

        def draw_both(ax: Any) -> None:
            total = sum(counts_of(per_patient[k]) for k in chosen)
            for key, color in zip(chosen, colors, strict=False):
                ax.stairs(counts_of(per_patient[key]), window_edges, color=color, label=key, linewidth=1.2)
            _stairs(ax, total, window_edges, color="0.6", alpha=0.5, label="together")
            ax.legend(fontsize=8)
            ax.set_title("A and B together", fontsize=10)

        panels.append(("both", draw_both))
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig = _new_figure(nrows, ncols, panel_inches=4.2 if ncols > 1 else 7.0, height_ratio=0.75 if ncols > 1 else 0.5)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (label, draw) in zip(axes, panels, strict=False):
        ax.set_label(label)
        draw(ax)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        fig.delaxes(ax)
    notes = []
    if slice_counts is None:
        notes.append("no slice-level histogram in the table: no single-slice panel")
    if len(chosen) < 2:
        notes.append("one patient: no patient B and no comparison panel")
    _note(fig, notes)
    _suptitle(fig, f"HU histograms, {_region_name(region)} (padding and outside-the-circle fill excluded)")
    return fig


def _slice_histogram(
    histograms: pd.DataFrame,
    rows: pd.DataFrame,
    chosen: Sequence[str],
    slice_hu: xr.DataArray | None,
    region: str,
    edges: np.ndarray,
) -> tuple[np.ndarray | None, str]:
    if slice_hu is not None:
        _check_dataarray(slice_hu, "slice_hu")
        (computed,) = _compute(slice_hu)
        values = np.asarray(computed.values, float).ravel()
        values = values[np.isfinite(values)]
        counts, _ = np.histogram(values, bins=edges)
        where = (
            f" at {float(computed['slice']):.1f} mm"
            if "slice" in computed.coords and computed["slice"].size == 1
            else ""
        )
        who = computed.attrs.get("patient_key", chosen[0] if chosen else "")
        return counts, f"one slice{where} ({who})"
    slices = histograms[(histograms["level"] == "slice") & (histograms["region"] == region)]
    slices = slices[slices["patient_key"] == (chosen[0] if chosen else "")]
    if slices.empty:
        return None, ""
    series = slices["series"].iloc[0]
    positions = np.sort(slices.loc[slices["series"] == series, "slice_position_mm"].unique())
    middle = positions[len(positions) // 2]
    part = slices[(slices["series"] == series) & (slices["slice_position_mm"] == middle)]
    part = part[np.isfinite(part["bin_left_hu"]) & np.isfinite(part["bin_right_hu"])].sort_values("bin_left_hu")
    return part["count"].to_numpy(), f"one slice at {middle:.1f} mm ({chosen[0]})"


def plot_histograms(
    histograms: pd.DataFrame,
    *,
    by: str = "patient",
    region: str = "scan",
    range_hu: Sequence[float] = (-1100, 300),
) -> Any:
    """Overlaid, normalised HU histograms per patient or per scan (static :func:`histogram_view`).

    Parameters
    ----------
    histograms : DataFrame
        ``summary.histograms``.
    by : {"patient", "series"}
        One curve per patient or per scan.
    region : str
        Region of the histograms.
    range_hu : (float, float)
        HU range drawn.

    Returns
    -------
    matplotlib.figure.Figure
        One axes; one step curve per group (percent of its voxels per HU).

    Raises
    ------
    ParameterError
        See :func:`histogram_view`.

    Notes
    -----
    **Computes** nothing: drawn from a table.

    Examples
    --------
    >>> table = pd.DataFrame({"level": "patient", "patient_key": ["P-a", "P-a"], "study_date": "",
    ...     "region": "scan", "bin_left_hu": [-1000, -990], "bin_right_hu": [-990, -980], "count": [5, 1]})
    >>> len(plot_histograms(table).axes[0].patches)
    1
    """
    rows = _normalized_histograms(histograms, by=by, region=region, range_hu=range_hu)
    who = "patients" if by == "patient" else "scans"
    colors, handles, notes = _curve_colors(rows, what=who)
    fig = _new_figure(1, 1, panel_inches=7.0, height_ratio=0.5)
    ax = fig.subplots()
    width = 1.3 if len(colors) <= MAX_LEGEND_ENTRIES else 0.8
    for label, part in rows.groupby("label", sort=True):
        edges = np.append(part["bin_left_hu"].to_numpy(), part["bin_right_hu"].to_numpy()[-1])
        ax.stairs(part["percent_per_hu"].to_numpy(), edges, label=str(label), linewidth=width, color=colors[str(label)])
    ax.set_xlabel("Hounsfield units (HU)")
    ax.set_ylabel("% of voxels per HU")
    ax.set_title(f"HU histogram of each {who[:-1]}: {_region_name(region)} (padding excluded)", fontsize=10)
    ax.grid(alpha=0.3)
    _legend_beside(fig, ax, handles, notes)
    return fig


#: Plain names of the regions of the tidy tables.
REGION_NAMES: dict[str, str] = {
    "scan": "whole scan", "body": "body", "lungs": "both lungs", "right_lung": "right lung", "left_lung": "left lung",
}  # fmt: skip


def _region_name(region: str) -> str:
    return REGION_NAMES.get(region, str(region).replace("_", " "))


def _curve_colors(rows: pd.DataFrame, *, what: str) -> tuple[dict[str, Any], list[Any], list[str]]:
    """Colour of each curve (``label``), the legend's entries and notes, legible however many curves there are.

    Up to :data:`MAX_LEGEND_ENTRIES` curves: one colour and legend entry each. More, from at most that many
    patients: one colour per patient, the legend names patients. More patients still: colours from a ramp in
    label order, no legend, and a note gives the count.
    """
    from matplotlib.lines import Line2D

    labels = sorted(set(rows["label"].astype(str)))
    patient_of = dict(zip(rows["label"].astype(str), rows["patient_key"].astype(str), strict=False))
    patients = sorted(set(patient_of.values()))
    if len(labels) <= MAX_LEGEND_ENTRIES:
        colors = dict(zip(labels, _colors(len(labels)), strict=True))
        return colors, [Line2D([], [], color=colors[k], label=k) for k in labels], []
    if len(patients) <= MAX_LEGEND_ENTRIES:
        by_patient = dict(zip(patients, _colors(len(patients)), strict=True))
        handles = [Line2D([], [], color=by_patient[p], label=p) for p in patients]
        note = f"{len(labels)} {what}, one curve each, coloured by patient"
        return {k: by_patient[patient_of[k]] for k in labels}, handles, [note]
    colors = dict(zip(labels, _colors(len(labels)), strict=True))
    note = (
        f"{len(labels)} {what} of {len(patients)} patients, one curve each; no legend beyond "
        f"{MAX_LEGEND_ENTRIES} entries (colours run from the first patient key to the last)"
    )
    return colors, [], [note]


def _legend_beside(fig: Any, ax: Any, handles: Sequence[Any], notes: Sequence[str]) -> None:
    """The legend right of the axes, never over the curves; notes under the figure."""
    if handles:
        ax.legend(handles=list(handles), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0, frameon=False)  # fmt: skip
    _note(fig, notes)


def plot_lung_area(slice_areas: pd.DataFrame, *, region: str = "lungs") -> Any:
    """Lung area in mm² per slice, one line per scan (the notebook's per-slice areas, in mm²).

    Parameters
    ----------
    slice_areas : DataFrame
        ``summary.slice_areas``.
    region : str
        ``lungs``, ``right_lung``, ``left_lung`` (or ``body``, ``scan``).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ParameterError
        Missing columns or no rows for `region`.

    Notes
    -----
    **Computes** nothing: drawn from a table.

    Examples
    --------
    >>> table = pd.DataFrame({"patient_key": "P-a", "study_date": "20200101", "series": "s", "region": "lungs",
    ...     "slice_position_mm": [0.0, 5.0, 10.0], "area_mm2": [0.0, 900.0, 400.0]})
    >>> len(plot_lung_area(table).axes[0].lines)
    1
    """
    rows = _area_rows(slice_areas, region)
    colors, handles, notes = _curve_colors(rows, what="scans")
    fig = _new_figure(1, 1, panel_inches=7.0, height_ratio=0.5)
    ax = fig.subplots()
    width = 1.3 if len(colors) <= MAX_LEGEND_ENTRIES else 0.8
    for label, part in rows.groupby("label", sort=True):
        ax.plot(
            part["slice_position_mm"], part["area_mm2"], label=str(label), linewidth=width, color=colors[str(label)]
        )
    ax.set_xlabel("slice position along the slice normal (mm)")
    ax.set_ylabel("area (mm²)")
    ax.set_title(f"Area on each slice: {_region_name(region)}", fontsize=10)
    ax.grid(alpha=0.3)
    _legend_beside(fig, ax, handles, notes)
    return fig


def plot_lung_volumes(regions: pd.DataFrame) -> Any:
    """Right and left lung volumes in mL per scan, grouped by patient (stacked bars).

    Parameters
    ----------
    regions : DataFrame
        ``summary.regions`` with the ``right_lung`` and ``left_lung`` regions
        (or at least ``lungs``).

    Returns
    -------
    matplotlib.figure.Figure
        One horizontal bar per scan (patient key and study date), first at
        the top, totals written beside; scans without any lung volume are left
        out.

    Raises
    ------
    ParameterError
        No lung region in the table, or no scan with a lung volume.

    Notes
    -----
    **Computes** nothing: drawn from a table.

    Examples
    --------
    >>> table = pd.DataFrame({"patient_key": "P-a", "study_date": "20200101", "series": "s",
    ...     "region": ["right_lung", "left_lung"], "volume_ml": [2100.0, 1900.0]})
    >>> len(plot_lung_volumes(table).axes[0].patches)
    2
    """
    _check_table(regions, "regions", ["patient_key", "study_date", "series", "region", "volume_ml"])
    sides = [r for r in ("right_lung", "left_lung") if r in set(regions["region"])]
    shown = sides or (["lungs"] if "lungs" in set(regions["region"]) else [])
    if not shown:
        raise ParameterError(
            "the region table has no lung regions; run summarize(..., regions=['lungs', 'right_lung', 'left_lung'])"
        )
    lung_rows = regions[regions["region"].isin(shown)]
    table = lung_rows.pivot_table(
        index=["patient_key", "study_date", "series"], columns="region", values="volume_ml", sort=True
    )  # drops the scans without any lung volume
    table = table[np.isfinite(table.to_numpy(float)).any(axis=1)]
    dropped = lung_rows["series"].nunique() - len(table)
    if table.empty:
        raise ParameterError("no scan has a lung volume (the segmentation found no lung; see regions.missing_reason)")
    labels = [f"{p}  {_date_text(d)}".strip() for p, d, _ in table.index]
    # One horizontal bar per scan, first at the top: the labels read across however many scans there are.
    height = 1.2 + 0.24 * len(labels)
    fig = _new_figure(1, 1, panel_inches=7.0, height_ratio=max(2.2, height) / 7.0)
    ax = fig.subplots()
    y = np.arange(len(labels))
    left = np.zeros(len(labels))
    colors = {"right_lung": LABEL_COLORS[1], "left_lung": LABEL_COLORS[2], "lungs": "0.5"}
    for region in shown:
        values = table[region].to_numpy(float)
        ax.barh(y, values, left=left, color=colors[region], label=_region_name(region), height=0.7)
        left = left + np.nan_to_num(values)
    for yi, total in zip(y, left, strict=True):
        ax.text(total, yi, f" {total:,.0f} mL", ha="left", va="center", fontsize=7)
    ax.set_yticks(y, labels, fontsize=7 if len(labels) > 20 else 8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel("volume (mL)")
    ax.set_xlim(0, left.max() * 1.18 if left.max() > 0 else 1)
    ax.set_title("Lung volume of each scan (patient key, study date)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    if dropped:
        _note(fig, [f"{dropped} scan(s) without a lung volume not drawn (see the region table's missing_reason)"])
    return fig


#: Plain-language name and unit of the longitudinal table's measures (``summary.longitudinal["measure"]``).
MEASURE_LABELS: dict[str, tuple[str, str]] = {
    "lung_volume_ml": ("Lung volume", "mL"),
    "right_lung_volume_ml": ("Right lung volume", "mL"),
    "left_lung_volume_ml": ("Left lung volume", "mL"),
    "lung_hu_mean": ("Mean lung density", "HU"),
    "lung_hu_p15": ("Lung density, 15th percentile", "HU"),
    "lung_laa_950_pct": ("Low-attenuation area (below -950 HU)", "% of lung"),
    "lung_laa_910_pct": ("Low-attenuation area (below -910 HU)", "% of lung"),
    "lung_laa_856_pct": ("Low-attenuation area (below -856 HU)", "% of lung"),
    "lung_haa_pct": ("High-attenuation area", "% of lung"),
    "lung_haa_volume_ml": ("High-attenuation volume", "mL"),
    "lung_emd_from_baseline_hu": ("Change of the lung histogram since baseline", "HU (earth mover's distance)"),
    "lung_emd_from_previous_hu": ("Change of the lung histogram since the last scan", "HU (earth mover's distance)"),
}
_UNIT_TOKENS = {"ml": "mL", "hu": "HU", "pct": "%", "mm2": "mm²", "mm": "mm", "days": "days"}
#: Most curves a figure gives a legend; with more, a note says how many lines there are.
MAX_LEGEND_ENTRIES = 12


def measure_label(measure: str) -> tuple[str, str]:
    """Plain-language title and unit of a measure name of the tidy tables.

    Known measures come from :data:`MEASURE_LABELS`; others are spelled out
    from their name, the unit from its last unit word (``ml`` mL, ``hu`` HU,
    ``pct`` %, ``mm2`` mm², ``mm`` mm).

    Examples
    --------
    >>> measure_label("lung_volume_ml"), measure_label("body_hu_median")
    (('Lung volume', 'mL'), ('Body median', 'HU'))
    """
    if measure in MEASURE_LABELS:
        return MEASURE_LABELS[measure]
    tokens = [t for t in str(measure).split("_") if t]
    unit = ""
    for token in reversed(tokens):
        if token in _UNIT_TOKENS:
            unit = _UNIT_TOKENS[token]
            tokens.remove(token)
            break
    words = " ".join(tokens)
    return (words[:1].upper() + words[1:]) or str(measure), unit


def plot_longitudinal(longitudinal: pd.DataFrame, *, measures: Sequence[str] | None = None) -> Any:
    """Each measure over time, one line per patient (static :func:`longitudinal_view`).

    Parameters
    ----------
    longitudinal : DataFrame
        ``summary.longitudinal``.
    measures : sequence of str, optional
        Measures to draw (default: all in the table).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per measure that has a value (``Axes.get_label()`` is the
        measure's column name), titled in plain language (:func:`measure_label`)
        with its unit on the y axis; x in days since the patient's baseline
        study. Measures without any value get no panel: a note under the
        figure names them. One legend entry per patient up to
        :data:`MAX_LEGEND_ENTRIES` patients; beyond, the note gives the count.

    Raises
    ------
    ParameterError
        Empty table, unknown measures, no measure with a value.

    Notes
    -----
    **Computes** nothing: drawn from a table.

    Examples
    --------
    >>> table = pd.DataFrame({"patient_key": ["P-a", "P-a"], "days_since_baseline": [0.0, 90.0],
    ...     "measure": "lung_volume_ml", "value": [4200.0, 4000.0]})
    >>> ax = plot_longitudinal(table).axes[0]
    >>> ax.get_label(), ax.get_title(), ax.get_ylabel()
    ('lung_volume_ml', 'Lung volume', 'mL')
    """
    rows, chosen = _longitudinal_rows(longitudinal, measures)
    has_value = {m for m in chosen if np.isfinite(rows.loc[rows["measure"] == m, "value"].to_numpy(float)).any()}
    empty = [m for m in chosen if m not in has_value]
    chosen = [m for m in chosen if m in has_value]
    if not chosen:
        raise ParameterError(
            "no measure of the longitudinal table has a value (see its comparability_notes); nothing to draw"
        )
    rows = rows[rows["measure"].isin(chosen) & np.isfinite(rows["value"].to_numpy(float))]
    patients = sorted(set(rows["patient_key"].astype(str)))
    ncols = min(3, len(chosen))
    nrows = math.ceil(len(chosen) / ncols)
    fig = _new_figure(nrows, ncols, panel_inches=3.8, height_ratio=0.8)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    colors = _colors(len(patients))
    many = len(patients) > MAX_LEGEND_ENTRIES
    for ax, measure in zip(axes, chosen, strict=False):
        ax.set_label(measure)
        title, unit = measure_label(measure)
        part = rows[rows["measure"] == measure]
        for patient, line in part.groupby("patient_key", sort=True):
            ax.plot(
                line["days_since_baseline"], line["value"], marker="o", markersize=3 if many else 4,
                linewidth=0.8 if many else 1.2, color=colors[patients.index(str(patient))], label=str(patient),
            )  # fmt: skip
        ax.set_title(_wrap(title, 38), fontsize=9)
        ax.set_xlabel("days since baseline", fontsize=8)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(_integer_locator())
        days = part["days_since_baseline"].to_numpy(float)
        if np.ptp(days) < 1:  # all on one day: a few days either side, not fractions of a day
            ax.set_xlim(days.min() - 2, days.max() + 2)
        ax.grid(alpha=0.3)
    for ax in axes[len(chosen) :]:
        fig.delaxes(ax)
    notes = []
    if many:
        notes.append(f"{len(patients)} patients, one line each (no legend beyond {MAX_LEGEND_ENTRIES})")
    else:
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=min(4, len(names)), fontsize=8)
    if empty:
        notes.append("no value, not drawn: " + ", ".join(measure_label(m)[0] for m in empty))
    _note(fig, notes)
    _suptitle(fig, "Lung measures over time, per patient")
    return fig


def _note(fig: Any, notes: Sequence[str]) -> None:
    """Say under the figure what it leaves out (``gid`` ``note``), where constrained layout keeps room for it."""
    if notes:
        width = int(fig.get_size_inches()[0] * 15)  # characters of 8 pt text per line
        text = fig.supxlabel(_wrap("; ".join(notes), width), fontsize=8, color="0.35")
        text.set_gid("note")


def _suptitle(fig: Any, title: str) -> None:
    """The figure's title, wrapped to its width."""
    fig.suptitle(_wrap(title, int(fig.get_size_inches()[0] * 9)))


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def _integer_locator() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=6, integer=True, prune=None)


def _colors(n: int) -> list[Any]:
    """Colours for n curves: tab10 up to 10, tab20 up to 20, then evenly from viridis."""
    import matplotlib as mpl

    if n <= 10:
        return [mpl.colormaps["tab10"](k) for k in range(n)]
    if n <= 20:
        return [mpl.colormaps["tab20"](k) for k in range(n)]
    return [mpl.colormaps["viridis"](k / max(1, n - 1)) for k in range(n)]


def _lung_slices(labels: np.ndarray, head_up: bool) -> dict[str, int]:
    area = (labels > 0).sum(axis=(1, 2))
    present = np.flatnonzero(area)
    if present.size == 0:
        raise ParameterError("the labels hold no lung voxel; check the segmentation (ctframe.lung_mask)")
    low, high = int(present[0]), int(present[-1])
    inset = max(1, round(0.05 * (high - low))) if high > low else 0
    top, bottom = (high - inset, low + inset) if head_up else (low + inset, high - inset)
    return {"apex": top, "middle": (low + high) // 2, "base": bottom}


def plot_mask_overlay(
    hu: xr.DataArray,
    labels: xr.DataArray,
    *,
    index: Sequence[int] | None = None,
    preset: str = "lung",
    alpha: float = 0.35,
) -> Any:
    """Lung labels over windowed axial slices at the apex, the middle and the base.

    The notebook's 2-D segmentation failed at exactly these levels (apex and
    base slices, near the trachea): this is the picture to check a mask by.

    Parameters
    ----------
    hu : DataArray (slice, row, col)
        HU (or stored values, converted), lazy.
    labels : DataArray (slice, row, col)
        Integer labels on the same grid (:func:`ctframe.lung_mask`: 1 right,
        2 left, 3 airways), lazy or computed.
    index : sequence of int, optional
        Slices to show; default three: 5 % of the lung's extent below its top
        (apex), its middle, and 5 % above its bottom (base).
    preset : str
        Window preset.
    alpha : float
        Opacity of the label colours (outlines are drawn opaque).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per slice, labelled ``apex``, ``middle``, ``base`` (or
        ``slice <i>``).

    Raises
    ------
    ParameterError
        Grids differ, labels hold no lung (with the default `index`), an index
        out of range.

    Notes
    -----
    **Computes**: the labels (once), then the chosen HU slices in one
    ``dask.compute``. Pass computed labels to avoid re-running a segmentation.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> hu = xr.DataArray(np.full((5, 8, 8), -850.0, np.float32), dims=("slice", "row", "col"),
    ...                   attrs={"units": "HU"})
    >>> labels = xr.zeros_like(hu, dtype=np.int8)
    >>> labels[1:4, 2:6, 1:4] = 1
    >>> labels[1:4, 2:6, 4:7] = 2
    >>> [ax.get_label() for ax in plot_mask_overlay(hu, labels).axes]
    ['apex', 'middle', 'base']
    """
    from matplotlib.patches import Patch

    _check_volume(hu, "hu")
    _check_volume(labels, "labels")
    if hu.shape != labels.shape:
        raise ParameterError(f"labels have shape {labels.shape}, the volume {hu.shape}; pass labels on its grid")
    (computed_labels,) = _compute(labels)
    values = np.asarray(computed_labels.values)
    n = hu.sizes["slice"]
    if index is None:
        chosen = _lung_slices(values, _head_up(hu))
    else:
        chosen = {}
        for i in index:
            if not -n <= int(i) < n:
                raise ParameterError(f"index {i} is out of range for {n} slices")
            chosen[f"slice {int(i) % n}"] = int(i) % n
    picks = list(chosen.values())
    (shown,) = _compute(_display(hu.isel(slice=picks), preset))
    fig = _new_figure(1, len(picks))
    axes = np.atleast_1d(fig.subplots(1, len(picks)))
    present = sorted(int(v) for v in np.unique(values[picks]) if v > 0)
    for k, (ax, (name, i)) in enumerate(zip(axes, chosen.items(), strict=True)):
        image = shown.isel(slice=k)
        _show(ax, image, cmap=_cmap("gray", "black"), vmin=0.0, vmax=1.0, label=name)
        extent, origin = _extent(image)
        plane = values[i]
        for value in present:
            region = (plane == value).astype(float)
            color = LABEL_COLORS.get(value, "#d62728")
            rgba = np.zeros((*plane.shape, 4))
            rgba[..., :3] = _rgb(color)
            rgba[..., 3] = region * alpha
            ax.imshow(rgba, extent=extent, origin=origin, aspect="equal", interpolation="nearest")
            if region.any():
                ax.contour(region, levels=[0.5], colors=[color], linewidths=0.8, extent=extent, origin=origin)
        pixel_area = _pixel_area(hu)
        lung = f"{(plane > 0).sum() * pixel_area:,.0f} mm²" if pixel_area else f"{(plane > 0).sum():,} pixels"
        position = float(hu["slice"][i]) if "slice" in hu.coords else float(i)
        ax.set_title(f"{name}: slice {i} at {position:.1f} mm\nlung {lung}", fontsize=9)
    handles = [Patch(color=LABEL_COLORS[v], label=LABEL_NAMES.get(v, str(v))) for v in present]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    who = hu.attrs.get("patient_key", "")
    fig.suptitle(f"{who} lung mask at apex, middle and base ({_window_text(shown)})".strip())
    return fig


def _rgb(color: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(color)


def _pixel_area(volume: xr.DataArray) -> float | None:
    """mm² per pixel (ctframe.geometry.voxel_spacing), None where the spacing is unknown (areas shown in pixels)."""
    if "row" not in volume.coords and "col" not in volume.coords and not volume.attrs.get("pixel_spacing_mm"):
        return None
    d_row, d_col = pixel_spacing(volume)
    return d_row * d_col
