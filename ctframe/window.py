"""Display windows (DICOM VOI LUT functions) and contrast enhancement, lazily.

:func:`apply_window` maps HU to display values in [0, 1] (float32) or 0..255
(uint8) with the functions of DICOM PS3.3 C.11.2.1.2, window width W and
centre (level) L:

``LINEAR`` (C.11.2.1.2.1, the standard's default when VOILUTFunction is absent)
    ``y = 0`` for ``x <= L - 0.5 - (W - 1) / 2``; ``y = 1`` for
    ``x > L - 0.5 + (W - 1) / 2``; otherwise ``y = (x - (L - 0.5)) / (W - 1) + 0.5``.
    Requires ``W >= 1``. Designed for integer input: the W integer values
    centred on L span the whole output range. With the lung window (W1500/L-600)
    -1350 HU maps to 0, 149 HU and above to 1, and -600 HU to 0.5 + 0.5/1499
    (0.50033), not exactly 0.5.
``LINEAR_EXACT`` (C.11.2.1.3.2)
    ``y = 0`` for ``x <= L - W/2``; ``y = 1`` for ``x > L + W/2``; otherwise
    ``y = (x - L) / W + 0.5``. Requires ``W > 0``. [L - W/2, L + W/2] maps
    exactly onto [0, 1]: lung window -600 HU to 0.5, -1350 HU to 0, 150 HU to 1.
``SIGMOID`` (C.11.2.1.3.1)
    ``y = 1 / (1 + exp(-4 (x - L) / W))``. Requires ``W > 0``. Never clips.

The default function is the configuration's ``window.function`` (``LINEAR``):
it is what the standard prescribes when a series names none, what DICOM viewers
and pydicom's ``apply_windowing`` display, so ctframe's pictures match the ones
radiologists see. Pass ``function="LINEAR_EXACT"`` for the textbook map. The
difference is at most 1/(W - 1) of the output range (0.07 % for the lung
window, 1.3 % for the brain window W80).

NaN (padding, outside the scan circle; see :func:`ctframe.to_hu`) stays NaN in
float32 output. uint8 has no NaN: it becomes 0 (black), the value the DICOM
function gives the scanners' own padding (-2048, -3024 HU lie below every
window), so uint8 output looks like a viewer's screen.

Contrast: :func:`equalize_adapthist` (CLAHE, per slice), :func:`adjust_gamma`
and :func:`rescale_intensity` (explicit input range) work on display values.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import xarray as xr
from scipy.special import expit

from ctframe.config import get_config
from ctframe.errors import ParameterError

__all__ = [
    "WINDOW_FUNCTIONS",
    "adjust_gamma",
    "apply_window",
    "dicom_windows",
    "equalize_adapthist",
    "rescale_intensity",
    "window_kernel",
    "window_presets",
]

#: The VOI LUT functions of DICOM PS3.3 C.11.2.1.2 that :func:`apply_window` implements.
WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
_OUTPUTS = ("float32", "uint8")


# --------------------------------------------------------------------------- windows


def window_kernel(
    hu: np.ndarray, *, level_hu: float, width_hu: float, function: str = "LINEAR", output: str = "float32"
) -> np.ndarray:
    """Eager DICOM VOI LUT function on one block; the body of :func:`apply_window`.

    Parameters
    ----------
    hu : ndarray
        Values in HU (any shape); NaN allowed.
    level_hu, width_hu : float
        Window centre and width.
    function : {"LINEAR", "LINEAR_EXACT", "SIGMOID"}
        See the module docstring.
    output : {"float32", "uint8"}
        [0, 1] float32 with NaN kept, or ``rint(255 y)`` as uint8 with NaN as 0.

    Returns
    -------
    ndarray
        Same shape as `hu`.
    """
    x = hu.astype(np.float64, copy=False)
    c, w = float(level_hu), float(width_hu)
    if function == "SIGMOID":
        y = expit(4.0 * (x - c) / w)
    else:
        if function == "LINEAR":
            c, w = c - 0.5, w - 1.0
        below = x <= c - w / 2.0
        above = x > c + w / 2.0
        with np.errstate(divide="ignore", invalid="ignore"):  # W = 1 (LINEAR): no value lies between
            y = (x - c) / w + 0.5
        y = np.where(below, 0.0, np.where(above, 1.0, y))
    if output == "uint8":
        return np.rint(np.nan_to_num(y, nan=0.0) * 255.0).astype(np.uint8)
    return y.astype(np.float32)


def window_presets() -> dict[str, dict[str, float]]:
    """Return the named windows of the active configuration (``window.presets``).

    Returns
    -------
    dict
        ``{name: {"level_hu": ..., "width_hu": ...}}``, a copy.

    Examples
    --------
    >>> window_presets()["lung"]
    {'level_hu': -600, 'width_hu': 1500}
    """
    return dict(get_config()["window"]["presets"])


def _split_multivalue(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [v for v in value.split("\\") if v.strip() != ""]
    if isinstance(value, Sequence):
        return list(value)
    return [value]


def dicom_windows(volume: xr.DataArray) -> list[tuple[float, float]]:
    r"""Return the series' own windows from its WindowCenter/WindowWidth attrs.

    Parameters
    ----------
    volume : DataArray
        With attrs ``window_center`` and ``window_width`` as written by
        :func:`ctframe.open_series` (DICOM multi-value strings such as
        ``"-600\\40"``, numbers or lists).

    Returns
    -------
    list of (level_hu, width_hu)
        One pair per window, in header order (empty when the header has none).

    Raises
    ------
    ParameterError
        Values that are not numbers, or different numbers of centres and widths.

    Examples
    --------
    >>> import xarray as xr
    >>> dicom_windows(xr.DataArray(0.0, attrs={"window_center": "-600\\40", "window_width": "1500\\400"}))
    [(-600.0, 1500.0), (40.0, 400.0)]
    """
    key = _series_name(volume)
    centers = _split_multivalue(volume.attrs.get("window_center", []))
    widths = _split_multivalue(volume.attrs.get("window_width", []))
    try:
        pairs = [(float(c), float(w)) for c, w in zip(centers, widths, strict=True)]
    except ValueError as exc:
        raise ParameterError(
            f"series {key}: WindowCenter {volume.attrs.get('window_center')!r} / WindowWidth "
            f"{volume.attrs.get('window_width')!r} cannot be read as pairs of numbers ({exc}); "
            "pass level_hu and width_hu or a named preset instead"
        ) from None
    return pairs


def _series_name(volume: xr.DataArray) -> str:
    return str(volume.attrs.get("stack_key", volume.attrs.get("series_uid", "(unnamed)")))


def _check_hu(volume: xr.DataArray, caller: str) -> None:
    units = volume.attrs.get("units")
    if units is not None and units != "HU":
        raise ParameterError(
            f"{caller} expects Hounsfield units, but series {_series_name(volume)} has units {units!r}; "
            "convert first with ctframe.to_hu(volume) (or volume.ct.to_hu())"
        )


def _check_not_hu(volume: xr.DataArray, caller: str) -> None:
    units = volume.attrs.get("units")
    if units in ("HU", "stored value"):
        raise ParameterError(
            f"{caller} works on display values in [0, 1], but series {_series_name(volume)} has units {units!r}; "
            "window it first, e.g. ctframe.apply_window(volume, preset='lung')"
        )


def _finite_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ParameterError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _resolve_window(
    volume: xr.DataArray,
    level_hu: float | None,
    width_hu: float | None,
    preset: str | None,
    function: str | None,
    which: int,
) -> tuple[float, float, str]:
    if preset is not None and (level_hu is not None or width_hu is not None):
        raise ParameterError("give either preset or level_hu and width_hu, not both")
    if preset != "dicom" and which != 0:
        raise ParameterError(f"which={which} picks one of the series' own windows; it needs preset='dicom'")
    if preset is None:
        if level_hu is None or width_hu is None:
            names = ", ".join(sorted(window_presets()))
            raise ParameterError(
                "apply_window needs level_hu and width_hu, or a preset "
                f"(one of: {names}, or 'dicom' for the series' own window)"
            )
        level, width = _finite_number(level_hu, "level_hu"), _finite_number(width_hu, "width_hu")
        default_function = get_config()["window"]["function"]
    elif preset == "dicom":
        windows = dicom_windows(volume)
        if not windows:
            raise ParameterError(
                f"series {_series_name(volume)} has no WindowCenter/WindowWidth in its header; "
                f"use a named preset ({', '.join(sorted(window_presets()))}) or level_hu and width_hu"
            )
        if isinstance(which, bool) or not isinstance(which, numbers.Integral) or not 0 <= which < len(windows):
            listing = ", ".join(f"{i}: L{c:g}/W{w:g}" for i, (c, w) in enumerate(windows))
            raise ParameterError(
                f"which={which!r} is not one of the {len(windows)} window(s) of series "
                f"{_series_name(volume)} ({listing}); pass which=0..{len(windows) - 1}"
            )
        level, width = windows[int(which)]
        default_function = str(volume.attrs.get("voi_lut_function") or "LINEAR").strip().upper()
    else:
        presets = window_presets()
        if preset not in presets:
            raise ParameterError(
                f"unknown window preset {preset!r}; known presets: {', '.join(sorted(presets))}, or 'dicom'. "
                "Add your own under window.presets in a config file"
            )
        level, width = float(presets[preset]["level_hu"]), float(presets[preset]["width_hu"])
        default_function = get_config()["window"]["function"]
    chosen = default_function if function is None else str(function).upper()
    if chosen not in WINDOW_FUNCTIONS:
        source = "the series' VOILUTFunction" if function is None else "function"
        raise ParameterError(
            f"{source} is {chosen!r}; supported VOI LUT functions: {', '.join(WINDOW_FUNCTIONS)}"
            + (" (pass function=... to override)" if function is None else "")
        )
    if chosen == "LINEAR" and width < 1:
        raise ParameterError(
            f"window width {width:g} HU is below 1, which the DICOM LINEAR function does not allow; "
            "use function='LINEAR_EXACT' or a wider window"
        )
    if width <= 0:
        raise ParameterError(f"window width must be > 0 HU, got {width:g}")
    return level, width, chosen


def apply_window(
    volume: xr.DataArray,
    *,
    level_hu: float | None = None,
    width_hu: float | None = None,
    preset: str | None = None,
    function: str | None = None,
    output: str = "float32",
    which: int = 0,
) -> xr.DataArray:
    """Map HU to display values with a DICOM window (VOI LUT function).

    Parameters
    ----------
    volume : DataArray (slice, row, col)
        HU from :func:`ctframe.to_hu` (any dims: planes and projections work too).
    level_hu, width_hu : float, optional
        Window centre and width in HU. Give both, or a `preset`.
    preset : str, optional
        A name from the configuration's ``window.presets`` (lung W1500/L-600,
        mediastinum W350/L50, abdomen W400/L50, liver W150/L30, bone W1800/L400,
        brain W80/L40, and any added in a config file), or ``"dicom"`` for the
        series' own WindowCenter/WindowWidth and VOILUTFunction.
    function : {"LINEAR", "LINEAR_EXACT", "SIGMOID"}, optional
        DICOM PS3.3 C.11.2.1.2 function (see the module docstring). Default: the
        series' VOILUTFunction (or LINEAR when absent) for ``preset="dicom"``,
        the configuration's ``window.function`` (LINEAR) otherwise.
    output : {"float32", "uint8"}
        [0, 1] float32 (NaN stays NaN), or 0..255 uint8 (``rint(255 y)``,
        NaN becomes 0, black).
    which : int
        Which of a multi-valued WindowCenter/WindowWidth to use with
        ``preset="dicom"`` (0 = first).

    Returns
    -------
    DataArray
        Same dims and coordinates; attrs gain ``window_level_hu``,
        ``window_width_hu``, ``window_function``, ``window_preset`` and
        ``display_range``, and ``units`` becomes ``"display"``.

    Raises
    ------
    ParameterError
        Unknown preset or function, missing or conflicting level/width, a width
        the function does not allow, `which` out of range, a series without its
        own window for ``preset="dicom"``, or a volume not in HU.

    Notes
    -----
    **Lazy**: one elementwise task per chunk. NaN is ignored in the sense
    that it never affects other voxels; it is kept (float32) or shown black (uint8).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> hu = xr.DataArray(np.array([-1400.0, -600.0, 150.0, np.nan], np.float32), dims="col")
    >>> apply_window(hu, preset="lung", function="LINEAR_EXACT").values
    array([0. , 0.5, 1. , nan], dtype=float32)
    >>> apply_window(hu, level_hu=-600, width_hu=1500, output="uint8").values
    array([  0, 128, 255,   0], dtype=uint8)
    """
    _check_hu(volume, "apply_window")
    if output not in _OUTPUTS:
        raise ParameterError(f"output must be one of {', '.join(_OUTPUTS)}, got {output!r}")
    level, width, chosen = _resolve_window(volume, level_hu, width_hu, preset, function, which)
    out_dtype = np.uint8 if output == "uint8" else np.float32
    result = xr.apply_ufunc(
        window_kernel,
        volume,
        kwargs={"level_hu": level, "width_hu": width, "function": chosen, "output": output},
        dask="parallelized",
        output_dtypes=[out_dtype],
        keep_attrs=True,
    )
    result.attrs.update(
        units="display",
        display_range=[0, 255] if output == "uint8" else [0.0, 1.0],
        window_level_hu=level,
        window_width_hu=width,
        window_function=chosen,
        window_preset=preset or "",
    )
    result.name = "display"
    return result


# --------------------------------------------------------------------------- contrast


def _plane_dims(volume: xr.DataArray) -> tuple[Hashable, Hashable]:
    if volume.ndim == 2:
        return volume.dims[0], volume.dims[1]
    if "row" in volume.dims and "col" in volume.dims:
        return "row", "col"
    raise ParameterError(
        f"equalize_adapthist works on 2-D planes; dims {volume.dims} have no ('row', 'col') plane. "
        "Pass a 2-D DataArray or a (..., row, col) volume"
    )


def _clahe_kernel(block: np.ndarray, *, kernel_size: Any, clip_limit: float, nbins: int) -> np.ndarray:
    from skimage.exposure import equalize_adapthist as _skimage_clahe

    out = np.empty(block.shape, np.float32)
    for index in np.ndindex(block.shape[:-2]):
        plane = block[index]
        missing = np.isnan(plane) if plane.dtype.kind == "f" else None
        if missing is not None and missing.any():
            plane = np.where(missing, 0.0, plane).astype(plane.dtype)
        out[index] = _skimage_clahe(plane, kernel_size=kernel_size, clip_limit=clip_limit, nbins=nbins)
        if missing is not None:
            out[index][missing] = np.nan
    return out


def equalize_adapthist(
    volume: xr.DataArray,
    *,
    kernel_size: int | tuple[int, int] | None = None,
    clip_limit: float = 0.01,
    nbins: int = 256,
) -> xr.DataArray:
    """Contrast Limited Adaptive Histogram Equalization (CLAHE), slice by slice.

    Each ``(row, col)`` plane (or the two dims of a 2-D input, e.g. a coronal
    reformat) goes through :func:`skimage.exposure.equalize_adapthist`.

    Parameters
    ----------
    volume : DataArray (slice, row, col)
        Display values in [0, 1] (float) or uint8, e.g. from :func:`apply_window`.
    kernel_size : int or (int, int), optional
        Contextual region in pixels (row, col); default 1/8 of the plane.
    clip_limit : float
        In [0, 1]; higher gives more contrast.
    nbins : int
        Histogram bins (>= 2).

    Returns
    -------
    DataArray
        float32 in [0, 1], same dims and coordinates; NaN where the input was NaN.

    Raises
    ------
    ParameterError
        Input in HU (window it first), no 2-D plane, or invalid options.

    Notes
    -----
    **Lazy**: one task per chunk of slices. A plane is the unit of work, so
    ``row`` and ``col`` are rechunked to single chunks when they are split.
    scikit-image stretches each plane's own min..max to the full range before
    and after equalising: the result of a plane depends on that plane only,
    never on the chunking. NaN is set to 0 (black, as the window shows padding)
    for the equalisation and restored afterwards. Float input outside [-1, 1]
    makes scikit-image raise ValueError when computed.

    Examples
    --------
    >>> import ctframe, tempfile
    >>> from ctframe.testing import write_phantom_series
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_phantom_series(folder, shape=(8, 64, 64))
    >>> display = apply_window(ctframe.to_hu(ctframe.open_series(folder)), preset="lung")
    >>> enhanced = equalize_adapthist(display, clip_limit=0.02)
    >>> enhanced.dtype, float(enhanced.max()) <= 1.0
    (dtype('float32'), True)
    """
    _check_not_hu(volume, "equalize_adapthist")
    core = _plane_dims(volume)
    if kernel_size is not None:
        sizes = (kernel_size, kernel_size) if isinstance(kernel_size, numbers.Integral) else tuple(kernel_size)
        valid = all(isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1 for k in sizes)
        if len(sizes) != 2 or not valid:
            raise ParameterError(f"kernel_size must be an int >= 1 or a pair (row, col) of them, got {kernel_size!r}")
        kernel_size = (int(sizes[0]), int(sizes[1]))
    if isinstance(clip_limit, bool) or not isinstance(clip_limit, numbers.Real) or not 0 <= clip_limit <= 1:
        raise ParameterError(f"clip_limit must lie in [0, 1], got {clip_limit!r}")
    if isinstance(nbins, bool) or not isinstance(nbins, numbers.Integral) or nbins < 2:
        raise ParameterError(f"nbins must be an int >= 2, got {nbins!r}")
    if volume.chunks is not None:
        volume = volume.chunk({core[0]: -1, core[1]: -1})
    result = xr.apply_ufunc(
        _clahe_kernel,
        volume,
        input_core_dims=[list(core)],
        output_core_dims=[list(core)],
        kwargs={"kernel_size": kernel_size, "clip_limit": float(clip_limit), "nbins": int(nbins)},
        dask="parallelized",
        output_dtypes=[np.float32],
        keep_attrs=True,
    ).transpose(*volume.dims)
    result.attrs.update(units="display", display_range=[0.0, 1.0], contrast="clahe")
    return result


def _gamma_kernel(block: np.ndarray, *, gamma: float, gain: float) -> np.ndarray:
    from skimage.exposure import adjust_gamma as _skimage_gamma

    return _skimage_gamma(block, gamma=gamma, gain=gain)


def adjust_gamma(volume: xr.DataArray, *, gamma: float = 1.0, gain: float = 1.0) -> xr.DataArray:
    """Gamma correction ``gain * x ** gamma`` voxel by voxel (scikit-image's ``adjust_gamma``).

    Parameters
    ----------
    volume : DataArray
        Display values: float in [0, 1] or uint8 (uint8 is scaled by 255,
        corrected and cast back, as scikit-image does).
    gamma : float
        > 0; below 1 brightens, above 1 darkens.
    gain : float
        Multiplier.

    Returns
    -------
    DataArray
        Same dtype, dims and coordinates. NaN stays NaN.

    Raises
    ------
    ParameterError
        Input in HU (window it first), or gamma not > 0.

    Notes
    -----
    **Lazy**: elementwise, one task per chunk. Negative values make
    scikit-image raise ValueError when computed.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> adjust_gamma(xr.DataArray(np.array([0.25, 1.0, np.nan], np.float32)), gamma=2.0).values
    array([0.0625, 1.    ,    nan], dtype=float32)
    """
    _check_not_hu(volume, "adjust_gamma")
    for name, value in (("gamma", gamma), ("gain", gain)):
        _finite_number(value, name)
    if gamma <= 0:
        raise ParameterError(f"gamma must be > 0, got {gamma!r}")
    return xr.apply_ufunc(
        _gamma_kernel,
        volume,
        kwargs={"gamma": float(gamma), "gain": float(gain)},
        dask="parallelized",
        output_dtypes=[volume.dtype],
        keep_attrs=True,
    )


def _rescale_kernel(block: np.ndarray, lo: Any, hi: Any, *, out_lo: float, out_hi: float) -> np.ndarray:
    lo, hi = float(lo), float(hi)
    x = np.clip(block.astype(np.float64, copy=False), lo, hi)
    return ((x - lo) / (hi - lo) * (out_hi - out_lo) + out_lo).astype(np.float32)


def _pair(value: Any, name: str) -> tuple[float, float]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ParameterError(f"{name} must be a pair (low, high) of numbers, got {value!r}")
    return _finite_number(value[0], f"{name}[0]"), _finite_number(value[1], f"{name}[1]")


def rescale_intensity(
    volume: xr.DataArray,
    *,
    in_range: tuple[float, float] | str,
    out_range: tuple[float, float] = (0.0, 1.0),
) -> xr.DataArray:
    """Clip to `in_range` and map it linearly onto `out_range` (float32).

    Parameters
    ----------
    volume : DataArray
        Any numeric values (HU, display values).
    in_range : (low, high) or "image"
        Input values mapped to ``out_range``; values outside are clipped.
        Required: there is no data-dependent default. ``"image"`` uses the
        volume's own NaN-ignoring min and max, which reads the whole volume
        (see Notes).
    out_range : (low, high)
        Output range (default [0, 1]).

    Returns
    -------
    DataArray
        float32, same dims and coordinates. NaN stays NaN.

    Raises
    ------
    ParameterError
        `in_range` or `out_range` not a pair of finite numbers with low < high
        (``out_range`` may be reversed, but not empty), or an unknown string.

    Notes
    -----
    **Lazy**. With explicit ranges: elementwise, one task per chunk. With
    ``in_range="image"``: still lazy, but the min/max is a reduction over the
    whole volume, so computing any part of the result **computes** a full pass
    over the data first. Same result as :func:`skimage.exposure.rescale_intensity`
    with a float output range.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> hu = xr.DataArray(np.array([-1200.0, -1000.0, 0.0, 500.0, np.nan], np.float32))
    >>> rescale_intensity(hu, in_range=(-1000, 0)).values
    array([ 0.,  0.,  1.,  1., nan], dtype=float32)
    """
    if isinstance(in_range, str):
        if in_range != "image":
            raise ParameterError(f"in_range must be a pair (low, high) or 'image', got {in_range!r}")
        lo: Any = volume.min(skipna=True)
        hi: Any = volume.max(skipna=True)
    else:
        lo, hi = _pair(in_range, "in_range")
        if not lo < hi:
            raise ParameterError(f"in_range must have low < high, got {in_range!r}")
    out_lo, out_hi = _pair(out_range, "out_range")
    if out_lo == out_hi:
        raise ParameterError(f"out_range must not be empty, got {out_range!r}")
    result = xr.apply_ufunc(
        _rescale_kernel,
        volume,
        lo,
        hi,
        kwargs={"out_lo": out_lo, "out_hi": out_hi},
        dask="parallelized",
        output_dtypes=[np.float32],
        keep_attrs=True,
    )
    result.attrs.update(units="display", display_range=[out_lo, out_hi])
    return result
