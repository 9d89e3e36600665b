"""The ``.ct`` accessor on DataArrays: delegation only, no state.

Each method carries the name of a module function and calls it with the
DataArray as first argument, so ``volume.ct.to_hu()`` is ``ctframe.to_hu(volume)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

__all__ = ["CTAccessor"]


@xr.register_dataarray_accessor("ct")
class CTAccessor:
    """CT operations on a ``(slice, row, col)`` DataArray; see the module functions."""

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    @property
    def affine(self) -> np.ndarray:
        """Same as :func:`ctframe.geometry.affine`: voxel index (slice, row, col) to patient LPS mm, 4x4.

        Derived from coordinates and attrs on every access (never cached), so it
        follows ``isel``.
        """
        from ctframe.geometry import affine

        return affine(self._obj)

    def to_hu(self, **kwargs: Any) -> xr.DataArray:
        """Same as :func:`ctframe.to_hu`."""
        from ctframe.hu import to_hu

        return to_hu(self._obj, **kwargs)

    # --- window.py: display windows and contrast

    def apply_window(self, **kwargs: Any) -> xr.DataArray:
        """Call :func:`ctframe.apply_window` on this array."""
        from ctframe.window import apply_window

        return apply_window(self._obj, **kwargs)

    def equalize_adapthist(self, **kwargs: Any) -> xr.DataArray:
        """Call :func:`ctframe.equalize_adapthist` on this array."""
        from ctframe.window import equalize_adapthist

        return equalize_adapthist(self._obj, **kwargs)

    def adjust_gamma(self, **kwargs: Any) -> xr.DataArray:
        """Call :func:`ctframe.adjust_gamma` on this array."""
        from ctframe.window import adjust_gamma

        return adjust_gamma(self._obj, **kwargs)

    def rescale_intensity(self, **kwargs: Any) -> xr.DataArray:
        """Call :func:`ctframe.rescale_intensity` on this array."""
        from ctframe.window import rescale_intensity

        return rescale_intensity(self._obj, **kwargs)

    # --- projection.py: reformats and projections

    def reformat(self, **kwargs: Any) -> xr.DataArray:
        """Call :func:`ctframe.reformat` on this array."""
        from ctframe.projection import reformat

        return reformat(self._obj, **kwargs)

    def plane_dim(self, plane: str) -> Any:
        """Call :func:`ctframe.plane_dim` on this array."""
        from ctframe.projection import plane_dim

        return plane_dim(self._obj, plane)

    def aspect(self) -> float:
        """Call :func:`ctframe.aspect` on this array."""
        from ctframe.projection import aspect

        return aspect(self._obj)

    def resample_isotropic(self, **kwargs: Any) -> xr.DataArray:
        """Call :func:`ctframe.resample_isotropic` on this array."""
        from ctframe.projection import resample_isotropic

        return resample_isotropic(self._obj, **kwargs)

    def mip(self, **kwargs: Any) -> xr.DataArray:
        """Call :func:`ctframe.mip` on this array."""
        from ctframe.projection import mip

        return mip(self._obj, **kwargs)

    def minip(self, **kwargs: Any) -> xr.DataArray:
        """Call :func:`ctframe.minip` on this array."""
        from ctframe.projection import minip

        return minip(self._obj, **kwargs)

    def mean_projection(self, **kwargs: Any) -> xr.DataArray:
        """Call :func:`ctframe.mean_projection` on this array."""
        from ctframe.projection import mean_projection

        return mean_projection(self._obj, **kwargs)

    # --- segment.py and measure.py: masks and region statistics

    def body_mask(self, **kwargs: Any) -> xr.DataArray:
        """Call :func:`ctframe.body_mask` on this array."""
        from ctframe.segment import body_mask

        return body_mask(self._obj, **kwargs)

    def lung_mask(self, **kwargs: Any) -> xr.DataArray:
        """Call :func:`ctframe.lung_mask` on this array."""
        from ctframe.segment import lung_mask

        return lung_mask(self._obj, **kwargs)

    def region_stats(self, labels: xr.DataArray, **kwargs: Any) -> Any:
        """Call :func:`ctframe.region_stats` on this array (the HU volume) and `labels`."""
        from ctframe.measure import region_stats

        return region_stats(self._obj, labels, **kwargs)

    # --- plot.py: interactive views (hvplot imported when called)

    def browse(self, **kwargs: Any) -> Any:
        """Call :func:`ctframe.plot.browse` on this array (a slice browser, computing one plane per frame)."""
        from ctframe.plot import browse

        return browse(self._obj, **kwargs)
