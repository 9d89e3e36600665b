"""The ``.ct`` accessor on DataArrays: delegation only, no state.

Each method carries the name of a module function and calls it with the
DataArray as first argument, so ``volume.ct.to_hu()`` is ``ctframe.to_hu(volume)``.
"""

from __future__ import annotations

from typing import Any

import xarray as xr

__all__ = ["CTAccessor"]


@xr.register_dataarray_accessor("ct")
class CTAccessor:
    """CT operations on a ``(slice, row, col)`` DataArray; see the module functions."""

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    def to_hu(self, **kwargs: Any) -> xr.DataArray:
        """Same as :func:`ctframe.to_hu`."""
        from ctframe.hu import to_hu

        return to_hu(self._obj, **kwargs)
