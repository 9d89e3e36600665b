"""ctframe: CT analytics at cohort scale on xarray and dask.

Discovery (:func:`scan`, :func:`series_table`) reads headers into tables;
:func:`open_series` gives lazy ``(slice, row, col)`` volumes; processing steps
(:func:`to_hu`, ...) build dask graphs; cohort tables compute them.

``import ctframe`` is cheap: each public name is imported from its module on
first use (PEP 562), so ``ctframe --help`` and ``ctframe.__version__`` do not
load xarray, dask or pydicom. The ``.ct`` accessor is registered by
:mod:`ctframe.accessor`, which every module that makes volumes imports (and
first use of any name below that needs xarray): every volume ctframe gives
you has ``.ct``. For a DataArray of your own, ``import ctframe.accessor``
(or use any ctframe function first).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_SOURCES: dict[str, str] = {
    **dict.fromkeys(
        (
            "CTFrameError",
            "CTFrameWarning",
            "ConfigError",
            "DicomReadError",
            "GridMismatchError",
            "InconsistentSeriesError",
            "MultipleSeriesError",
            "NoSeriesError",
            "NotHUCalibratedError",
            "OutputExistsError",
            "ParameterError",
            "QCWarning",
            "ScanWarning",
            "ShortStackError",
            "SourceError",
            "UnsupportedDicomError",
        ),
        "ctframe.errors",
    ),
    **dict.fromkeys(("config_context", "get_config", "load_config"), "ctframe.config"),
    "to_hu": "ctframe.hu",
    "open_series": "ctframe.io",
    **dict.fromkeys(("read_nifti_labels", "read_rtstruct", "read_seg"), "ctframe.masks"),
    "region_stats": "ctframe.measure",
    "linkage_table": "ctframe.privacy",
    **dict.fromkeys(
        ("aspect", "mean_projection", "minip", "mip", "plane_dim", "reformat", "resample_isotropic"),
        "ctframe.projection",
    ),
    **dict.fromkeys(("problems_table", "scan", "series_table"), "ctframe.scan"),
    **dict.fromkeys(("body_mask", "can_segment", "lung_mask", "lung_qc"), "ctframe.segment"),
    **dict.fromkeys(("adjust_gamma", "apply_window", "equalize_adapthist", "rescale_intensity"), "ctframe.window"),
}
#: modules that need no xarray: using their names does not register the accessor
_LIGHT = frozenset({"ctframe.errors", "ctframe.config", "ctframe.privacy"})

# written out (not derived from _SOURCES) so that linters and type checkers see it; a test keeps the two equal
__all__ = [
    "CTFrameError",
    "CTFrameWarning",
    "ConfigError",
    "DicomReadError",
    "GridMismatchError",
    "InconsistentSeriesError",
    "MultipleSeriesError",
    "NoSeriesError",
    "NotHUCalibratedError",
    "OutputExistsError",
    "ParameterError",
    "QCWarning",
    "ScanWarning",
    "ShortStackError",
    "SourceError",
    "UnsupportedDicomError",
    "__version__",
    "adjust_gamma",
    "apply_window",
    "aspect",
    "body_mask",
    "can_segment",
    "config_context",
    "equalize_adapthist",
    "get_config",
    "linkage_table",
    "load_config",
    "lung_mask",
    "lung_qc",
    "mean_projection",
    "minip",
    "mip",
    "open_series",
    "plane_dim",
    "problems_table",
    "read_nifti_labels",
    "read_rtstruct",
    "read_seg",
    "reformat",
    "region_stats",
    "resample_isotropic",
    "rescale_intensity",
    "scan",
    "series_table",
    "to_hu",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("ctframe")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0.0.0+unknown"
    elif name in _SOURCES:
        module = _SOURCES[name]
        if module not in _LIGHT:
            importlib.import_module("ctframe.accessor")  # registers .ct
        value = getattr(importlib.import_module(module), name)
    else:
        raise AttributeError(f"module 'ctframe' has no attribute {name!r}")
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """The ctframe package: a submodule import never hides the function of the same name.

    Importing ``ctframe.scan`` (the module) sets ``ctframe.scan``; here that stays
    the function :func:`ctframe.scan.scan`, as it was when the package imported it.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _SOURCES.get(name) == value.__name__ and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

if "xarray" in sys.modules:  # xarray is loaded already: registering .ct costs nothing
    importlib.import_module("ctframe.accessor")

if TYPE_CHECKING:  # static tools see the names as plain imports
    from ctframe.config import config_context, get_config, load_config
    from ctframe.errors import (
        ConfigError,
        CTFrameError,
        CTFrameWarning,
        DicomReadError,
        GridMismatchError,
        InconsistentSeriesError,
        MultipleSeriesError,
        NoSeriesError,
        NotHUCalibratedError,
        OutputExistsError,
        ParameterError,
        QCWarning,
        ScanWarning,
        ShortStackError,
        SourceError,
        UnsupportedDicomError,
    )
    from ctframe.hu import to_hu
    from ctframe.io import open_series
    from ctframe.masks import read_nifti_labels, read_rtstruct, read_seg
    from ctframe.measure import region_stats
    from ctframe.privacy import linkage_table
    from ctframe.projection import aspect, mean_projection, minip, mip, plane_dim, reformat, resample_isotropic
    from ctframe.scan import problems_table, scan, series_table
    from ctframe.segment import body_mask, can_segment, lung_mask, lung_qc
    from ctframe.window import adjust_gamma, apply_window, equalize_adapthist, rescale_intensity
