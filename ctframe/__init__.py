"""ctframe: CT analytics at cohort scale on xarray and dask.

Discovery (:func:`scan`, :func:`series_table`) reads headers into tables;
:func:`open_series` gives lazy ``(slice, row, col)`` volumes; processing steps
(:func:`to_hu`, ...) build dask graphs; cohort tables compute them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ctframe import accessor as _accessor  # noqa: F401  (registers .ct)
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
    UnsupportedDicomError,
)
from ctframe.hu import to_hu
from ctframe.io import open_series
from ctframe.masks import read_nifti_labels, read_rtstruct, read_seg
from ctframe.measure import region_stats
from ctframe.privacy import linkage_table
from ctframe.projection import aspect, mean_projection, minip, mip, plane_dim, reformat, resample_isotropic
from ctframe.scan import problems_table, scan, series_table
from ctframe.segment import body_mask, lung_mask
from ctframe.window import adjust_gamma, apply_window, equalize_adapthist, rescale_intensity

try:
    __version__ = version("ctframe")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

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
    "UnsupportedDicomError",
    "__version__",
    "adjust_gamma",
    "apply_window",
    "aspect",
    "body_mask",
    "config_context",
    "equalize_adapthist",
    "get_config",
    "linkage_table",
    "load_config",
    "lung_mask",
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
